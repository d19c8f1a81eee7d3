"""A ledger that cannot be cut short: truncation with a rewound head, a wipe, a 0-byte or missing
database and a dropped table all fail `audit-log verify` (exit 1, never "ledger intact"), with and
without the HMAC key; a keyed ledger read without its key says so; verify creates nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from infra.strategies import defaults_file
from pveguard.security.ledger import CHECKPOINT_EVERY, Ledger
from pveguard.store import Store

KEY = "k3y-for-the-ledger-tests"


def verify(state: Path, key: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PVEGUARD_LEDGER_KEY_FILE"}
    if key is not None:
        env["PVEGUARD_LEDGER_KEY_FILE"] = str(key)
    return subprocess.run(
        [sys.executable, "-m", "pveguard", "--state-dir", str(state), "--strategy", defaults_file(),
         "audit-log", "verify", *extra],
        capture_output=True, text=True, env=env, timeout=120,
    )


def build(tmp_path: Path, keyed: bool, count: int = 10) -> tuple[Path, Path | None]:
    state = tmp_path / "state"
    key = None
    if keyed:
        key = tmp_path / "ledger.key"
        key.write_text(KEY)
    led = Ledger(Store(state), key)
    for i in range(1, count + 1):
        led.append("test.action", f"target-{i}", {"i": i})
    led.store.close()
    return state, key


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "pveguard.db", isolation_level=None)


def assert_failed(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "ledger intact" not in out and "Traceback" not in out and "internal error" not in out, out
    for w in words:
        assert w in out, (w, out)


keyed_or_not = pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])


@keyed_or_not
def test_intact_ledger_verifies_and_lists_its_anchor(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    proc = verify(state, key)
    assert proc.returncode == 0, proc.stderr
    assert "ledger intact: 10 entries" in proc.stdout
    assert "anchor file" in proc.stdout and "agrees (highest entry 10)" in proc.stdout


@keyed_or_not
def test_truncation_with_rewound_head_is_caught_by_the_anchor(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    conn = db(state)
    conn.execute("DELETE FROM ledger WHERE seq > 7")
    h = conn.execute("SELECT hash FROM ledger WHERE seq = 7").fetchone()[0]
    conn.execute("UPDATE ledger_head SET seq = 7, hash = ?", (h,))
    conn.close()
    proc = verify(state, key)
    assert_failed(proc, "the ledger ends at entry 7 but anchor 'file'", "has seen entry 10", "truncated")
    data = json.loads(verify(state, key, "--json").stdout)
    assert data["ok"] is False and data["first_bad"] == 8
    assert data["anchors"][0]["name"] == "file" and data["anchors"][0]["highest"] == 10


def test_truncation_below_a_checkpoint_with_head_and_checkpoints_rewound(tmp_path: Path) -> None:
    state, key = build(tmp_path, False, CHECKPOINT_EVERY + 5)
    conn = db(state)
    conn.execute("DELETE FROM ledger WHERE seq > 50")
    conn.execute("DELETE FROM ledger_checkpoint")
    h = conn.execute("SELECT hash FROM ledger WHERE seq = 50").fetchone()[0]
    conn.execute("UPDATE ledger_head SET seq = 50, hash = ?", (h,))
    conn.close()
    assert_failed(verify(state, key), "ends at entry 50 but anchor 'file'", f"has seen entry {CHECKPOINT_EVERY + 5}")


@keyed_or_not
def test_wiped_rows_are_not_intact(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    conn = db(state)
    for table in ("ledger", "ledger_head", "ledger_checkpoint"):
        conn.execute(f"DELETE FROM {table}")
    conn.close()
    assert_failed(verify(state, key), "no entries but anchor 'file'", "has seen entry 10", "wiped")


@keyed_or_not
def test_wiped_rows_and_anchor_file_are_still_not_intact(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    conn = db(state)
    for table in ("ledger", "ledger_head", "ledger_checkpoint"):
        conn.execute(f"DELETE FROM {table}")
    conn.close()
    (state / "ledger.anchor").unlink()
    assert_failed(verify(state, key), "has no entries")


@keyed_or_not
def test_zero_byte_database_is_no_ledger(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    for name in ("pveguard.db-wal", "pveguard.db-shm"):
        (state / name).unlink(missing_ok=True)
    (state / "pveguard.db").write_bytes(b"")
    assert_failed(verify(state, key), "no ledger", "is empty (0 bytes)", "has seen entry 10")
    assert (state / "pveguard.db").stat().st_size == 0, "verify must not write into the empty file"


@keyed_or_not
def test_missing_database_is_no_ledger_and_verify_creates_nothing(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    for name in ("pveguard.db", "pveguard.db-wal", "pveguard.db-shm"):
        (state / name).unlink(missing_ok=True)
    assert_failed(verify(state, key), "no ledger", "has seen entry 10", "removed")
    assert sorted(p.name for p in state.iterdir()) == ["ledger.anchor"]


def test_missing_state_dir_is_no_ledger_and_is_not_created(tmp_path: Path) -> None:
    state = tmp_path / "nowhere" / "state"
    assert_failed(verify(state, None), "no ledger", "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_state_dir_without_database_is_not_given_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert_failed(verify(state, None), "no ledger")
    assert list(state.iterdir()) == []


@keyed_or_not
def test_dropped_table_is_a_clear_error(tmp_path: Path, keyed: bool) -> None:
    state, key = build(tmp_path, keyed)
    db(state).execute("DROP TABLE ledger")
    assert_failed(verify(state, key), "the ledger table was dropped", "has seen entry 10")


def test_dropped_head_table_is_a_clear_error(tmp_path: Path) -> None:
    state, key = build(tmp_path, False)
    db(state).execute("DROP TABLE ledger_head")
    assert_failed(verify(state, key), "the ledger_head table was dropped")


def test_keyed_ledger_without_its_key_says_so(tmp_path: Path) -> None:
    state, _ = build(tmp_path, True)
    proc = verify(state, None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "this ledger is keyed: set PVEGUARD_LEDGER_KEY_FILE or security.ledger_hmac_key_file" in out
    assert "modified" not in out and "intact" not in out and "Traceback" not in out


def test_keyed_ledger_without_its_key_says_so_from_the_anchor_alone(tmp_path: Path) -> None:
    # A ledger from before the key fingerprint was stored, or one whose fingerprint was removed:
    # the anchor's signed heads still show it is keyed.
    state, _ = build(tmp_path, True)
    db(state).execute("DROP TABLE ledger_meta")
    proc = verify(state, None)
    assert proc.returncode == 2 and "this ledger is keyed" in proc.stderr, proc.stderr


def test_keyed_ledger_with_another_key_says_so(tmp_path: Path) -> None:
    state, _ = build(tmp_path, True)
    other = tmp_path / "other.key"
    other.write_text("not-the-key")
    proc = verify(state, other)
    assert proc.returncode == 2 and "keyed with another key" in proc.stderr, proc.stderr


def test_unkeyed_chain_rewritten_from_an_entry_on_is_caught_by_the_anchor(tmp_path: Path) -> None:
    # An attacker without a key can recompute every hash from entry 4 on and the head; the anchor
    # still has the original hashes.
    from pveguard.security.ledger import _canonical

    state, key = build(tmp_path, False)
    conn = db(state)
    prev = conn.execute("SELECT hash FROM ledger WHERE seq = 3").fetchone()[0]
    for seq in range(4, 11):
        ts, actor, action, target, details = conn.execute(
            "SELECT ts, actor, action, target, details FROM ledger WHERE seq = ?", (seq,)).fetchone()
        if seq == 4:
            details = json.dumps({"i": 400}, separators=(",", ":"))
        digest = hashlib.sha256(_canonical(seq, ts, actor, action, target, details, prev)).hexdigest()
        conn.execute("UPDATE ledger SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (details, prev, digest, seq))
        prev = digest
    conn.execute("UPDATE ledger_head SET hash = ?", (prev,))
    conn.close()
    assert_failed(verify(state, key), "entry 4 differs from what anchor 'file'", "rewritten")


def test_forged_anchor_line_is_named_when_keyed(tmp_path: Path) -> None:
    state, key = build(tmp_path, True)
    with open(state / "ledger.anchor", "a") as f:
        f.write(json.dumps({"seq": 99, "hash": "0" * 64, "mac": "f" * 64}) + "\n")
    assert_failed(verify(state, key), "entry 99 that this key did not sign")


def test_a_copy_of_the_anchor_file_catches_a_rewritten_local_one(tmp_path: Path) -> None:
    # The local anchor file was cut too (after 'chattr -a'); the copy restored from a host-config
    # backup still knows the old head.
    state, key = build(tmp_path, False)
    copy = tmp_path / "restored.anchor"
    shutil.copy(state / "ledger.anchor", copy)
    conn = db(state)
    conn.execute("DELETE FROM ledger WHERE seq > 6")
    h = conn.execute("SELECT hash FROM ledger WHERE seq = 6").fetchone()[0]
    conn.execute("UPDATE ledger_head SET seq = 6, hash = ?", (h,))
    conn.close()
    lines = (state / "ledger.anchor").read_text().splitlines()[:6]
    (state / "ledger.anchor").write_text("\n".join(lines) + "\n")
    assert verify(state, key).returncode == 0  # the local evidence agrees with itself
    assert_failed(verify(state, key, "--anchor", str(copy)), f"anchor 'copy {copy}'", "has seen entry 10")


def test_show_and_append_after_a_dropped_table_are_clear_errors(tmp_path: Path) -> None:
    state, _ = build(tmp_path, False)
    db(state).execute("DROP TABLE ledger")
    proc = subprocess.run(
        [sys.executable, "-m", "pveguard", "--state-dir", str(state), "--strategy", defaults_file(),
         "audit-log", "show"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stderr
    assert "the ledger in" in proc.stderr and "is damaged: no such table: ledger" in proc.stderr
    from pveguard.errors import StateError

    with pytest.raises(StateError, match="damaged"):
        Ledger(Store(state)).append("a", "t", {})


def test_an_unreadable_anchor_copy_is_a_usage_error_not_a_pass(tmp_path: Path) -> None:
    state, key = build(tmp_path, False)
    proc = verify(state, key, "--anchor", str(tmp_path / "no-such-copy"))
    assert proc.returncode == 2 and "cannot read the anchor copy" in proc.stderr, proc.stderr
