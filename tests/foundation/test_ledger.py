"""The ledger detects and locates edits, deletions, reordering, insertion and tail truncation."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from infra.strategies import defaults_file
from pveguard.errors import ConfigError
from pveguard.security.ledger import CHECKPOINT_EVERY, Ledger
from pveguard.store import Store


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    store = Store(tmp_path)
    led = Ledger(store)
    for i in range(1, 11):
        led.append("test.action", f"target-{i}", {"i": i})
    return led


def raw(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "pveguard.db", isolation_level=None)
    return conn


def test_intact_chain_verifies(ledger: Ledger) -> None:
    result = ledger.verify()
    assert result.ok and result.entries == 10


def test_edit_is_located(ledger: Ledger, tmp_path: Path) -> None:
    raw(tmp_path).execute("UPDATE ledger SET details = ? WHERE seq = 4", (json.dumps({"i": 400}),))
    result = ledger.verify()
    assert not result.ok and result.first_bad == 4 and "modified" in result.reason


def test_edit_with_recomputed_hash_is_located_at_the_next_entry(ledger: Ledger, tmp_path: Path) -> None:
    # An attacker who rewrites entry 4 and its hash (unkeyed chain) still breaks entry 5's link.
    import hashlib

    from pveguard.security.ledger import _canonical

    conn = raw(tmp_path)
    row = conn.execute("SELECT seq, ts, actor, action, target, prev_hash FROM ledger WHERE seq = 4").fetchone()
    details = json.dumps({"i": 400}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(_canonical(row[0], row[1], row[2], row[3], row[4], details, row[5])).hexdigest()
    conn.execute("UPDATE ledger SET details = ?, hash = ? WHERE seq = 4", (details, digest))
    result = ledger.verify()
    assert not result.ok and result.first_bad == 5


def test_delete_is_located(ledger: Ledger, tmp_path: Path) -> None:
    raw(tmp_path).execute("DELETE FROM ledger WHERE seq = 6")
    result = ledger.verify()
    assert not result.ok and result.first_bad == 6 and "missing" in result.reason


def test_reorder_is_located(ledger: Ledger, tmp_path: Path) -> None:
    conn = raw(tmp_path)
    a = conn.execute("SELECT ts, actor, action, target, details, prev_hash, hash FROM ledger WHERE seq=3").fetchone()
    b = conn.execute("SELECT ts, actor, action, target, details, prev_hash, hash FROM ledger WHERE seq=7").fetchone()
    sql = "UPDATE ledger SET ts=?, actor=?, action=?, target=?, details=?, prev_hash=?, hash=? WHERE seq=?"
    conn.execute(sql, (*b, 3))
    conn.execute(sql, (*a, 7))
    result = ledger.verify()
    assert not result.ok and result.first_bad == 3


def test_insert_is_located(ledger: Ledger, tmp_path: Path) -> None:
    conn = raw(tmp_path)
    # Shift entries 5..10 up by one and put a forged entry at 5.
    for seq in range(10, 4, -1):
        conn.execute("UPDATE ledger SET seq = seq + 1 WHERE seq = ?", (seq,))
    prev = conn.execute("SELECT hash FROM ledger WHERE seq = 4").fetchone()[0]
    conn.execute("INSERT INTO ledger VALUES (5, '2026-01-01T00:00:00+00:00', 'mallory', 'forged', '', '{}', ?, ?)",
                 (prev, "f" * 64))
    result = ledger.verify()
    assert not result.ok and result.first_bad == 5


def test_tail_truncation_is_detected(ledger: Ledger, tmp_path: Path) -> None:
    raw(tmp_path).execute("DELETE FROM ledger WHERE seq > 7")
    result = ledger.verify()
    assert not result.ok and result.first_bad == 8 and "truncated" in result.reason


def test_truncation_below_checkpoint_with_forged_head(tmp_path: Path) -> None:
    led = Ledger(Store(tmp_path))
    for i in range(CHECKPOINT_EVERY + 5):
        led.append("a", "", {"i": i})
    conn = raw(tmp_path)
    conn.execute("DELETE FROM ledger WHERE seq > 50")
    h = conn.execute("SELECT hash FROM ledger WHERE seq = 50").fetchone()[0]
    conn.execute("UPDATE ledger_head SET seq = 50, hash = ?", (h,))
    result = led.verify()
    assert not result.ok and "truncated" in result.reason and result.first_bad == 51


def test_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret-key")
    led = Ledger(Store(tmp_path / "st"), key)
    led.append("a", "t", {})
    assert led.verify().ok
    other = tmp_path / "other"
    other.write_text("another-key")
    with pytest.raises(ConfigError, match="keyed with another key"):
        Ledger(Store(tmp_path / "st"), other).verify()


APPENDER = """
import sys
from pathlib import Path
from pveguard.store import Store
from pveguard.security.ledger import Ledger
led = Ledger(Store(Path(sys.argv[1])))
for i in range(int(sys.argv[2])):
    led.append("concurrent", sys.argv[3], {"i": i})
"""


def test_two_processes_appending_1000_each(tmp_path: Path) -> None:
    # No schema yet: both processes race to create it as well as to append.
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), "1000", name],
                              stderr=subprocess.PIPE, text=True)
             for name in ("p1", "p2")]
    outcomes = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in outcomes] == [0, 0], outcomes
    led = Ledger(Store(tmp_path))
    result = led.verify()
    assert result.ok, result
    assert result.entries == 2000
    counts = {t: len(led.entries(target=t)) for t in ("p1", "p2")}
    assert counts == {"p1": 1000, "p2": 1000}


def test_cli_verify_names_first_bad_entry(ledger: Ledger, tmp_path: Path) -> None:
    raw(tmp_path).execute("UPDATE ledger SET action = 'x' WHERE seq = 2")
    proc = subprocess.run([sys.executable, "-m", "pveguard", "--state-dir", str(tmp_path),
                           "--strategy", defaults_file(), "audit-log", "verify"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "entry 2" in proc.stderr and "Traceback" not in proc.stderr


def test_digests_are_hashlibs_sha256_and_hmac(tmp_path: Path) -> None:
    """The ledger hashes with CPython's built-in SHA-256 (no OpenSSL import on the apt hook's path):
    the same digests as hashlib's and hmac's, keyed and unkeyed."""
    import hashlib
    import hmac

    from pveguard.security import ledger as ledger_mod

    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    with Store(tmp_path / "st") as store:
        plain, keyed = Ledger(store), Ledger(store, str(key_file))
        for payload in (b"", b"pveguard", bytes(range(256)) * 50):
            assert plain._digest(payload) == hashlib.sha256(payload).hexdigest()
            assert keyed._digest(payload) == hmac.new(keyed._key or b"", payload, hashlib.sha256).hexdigest()
    assert ledger_mod._same("ab", "ab") and not ledger_mod._same("ab", "ac")
