"""Each anchor sink that can run here, for real: the append-only file (ext4 and tmpfs), syslog on
a datagram socket, journald (its own instance in a private mount namespace) and the host-config
backup (restic) carrying the anchor file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.strategies import defaults_file
from pveguard.security.anchors import (
    ANCHOR_FILE,
    FileAnchor,
    Head,
    SyslogAnchor,
    append_only_status,
    default_anchors,
)
from pveguard.security.ledger import Ledger, verify_state
from pveguard.store import Store


def clear_append_only(path: Path) -> None:
    subprocess.run(["chattr", "-R", "-a", str(path)], capture_output=True, check=False)


@pytest.fixture
def ext4_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    clear_append_only(tmp_path)


def test_anchor_file_is_made_append_only_where_the_file_system_allows(ext4_dir: Path) -> None:
    anchor = FileAnchor(ext4_dir / ANCHOR_FILE, append_only=True)
    anchor.record(Head(1, "a" * 64))
    if append_only_status(anchor.path) != "append-only":
        pytest.skip(f"cannot set append-only here: {append_only_status(anchor.path)}")
    # Appending still works (a second sink instance: a new process), rewriting does not.
    FileAnchor(anchor.path, append_only=True).record(Head(2, "b" * 64))
    assert [h.seq for h in anchor.read().heads] == [1, 2]
    with pytest.raises(PermissionError):
        anchor.path.write_text("")
    with pytest.raises(PermissionError):
        anchor.path.unlink()
    assert anchor.read().detail == "append-only"


@pytest.fixture
def ramfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: a file system without inode flags (tmpfs has them since Linux 6.0)."""
    d = tmp_path / "ramfs"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "ramfs", "ramfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a ramfs here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_verify_reports_when_append_only_cannot_be_set(ramfs_dir: Path) -> None:
    state = ramfs_dir / "state"
    led = Ledger(Store(state), anchors=[FileAnchor(state / ANCHOR_FILE, append_only=True)])
    led.append("a", "t", {})
    led.store.close()
    result = verify_state(state)
    assert result.ok, result
    file_reading = result.anchors[0]
    assert file_reading.name == "file"
    assert "not append-only: the file system does not support it" in file_reading.detail


def test_syslog_anchor_sends_one_rfc3164_line_per_append(tmp_path: Path) -> None:
    path = tmp_path / "dev-log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        state = tmp_path / "state"
        sink = SyslogAnchor(str((state / "pveguard.db").absolute()), path)
        led = Ledger(Store(state), anchors=[sink])
        entries = [led.append("a", "t", {"i": i}) for i in range(3)]
        lines = [server.recv(4096).decode() for _ in entries]
    finally:
        server.close()
    for entry, line in zip(entries, lines, strict=True):
        assert line.startswith("<14>") and " pveguard-ledger[" in line
        assert f"ledger={state.absolute() / 'pveguard.db'} seq={entry.seq} hash={entry.hash} mac=-" in line
    assert not sink.read().readable  # write-only for verify, and it says so
    assert "write-only" in sink.read().detail


def test_anchor_writes_never_fail_an_append(tmp_path: Path) -> None:
    # A sink whose socket is gone (journald stopped, /dev/log missing) is skipped silently.
    led = Ledger(Store(tmp_path / "state"), anchors=[SyslogAnchor("x", tmp_path / "no-such-socket")])
    assert led.append("a", "t", {}).seq == 1


def test_sinks_default_to_the_anchor_file_plus_journal_or_syslog(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVEGUARD_LEDGER_ANCHORS", raising=False)
    names = [s.name for s in default_anchors(tmp_path, tmp_path / "pveguard.db")]
    assert names[0] == "file"
    if Path("/run/systemd/journal/socket").exists():
        assert names[1:] == ["journal"]
    elif Path("/dev/log").exists():
        assert names[1:] == ["syslog"]
    else:
        assert names[1:] == []
    monkeypatch.setenv("PVEGUARD_LEDGER_ANCHORS", "file")
    assert [s.name for s in default_anchors(tmp_path, tmp_path / "pveguard.db")] == ["file"]


# --- journald, for real, in a private mount namespace -------------------------------------------

JOURNAL_SCRIPT = textwrap.dedent("""
    set -e
    mkdir -p /run/systemd /var/log/journal
    mount -t tmpfs tmpfs /run/systemd
    mount -t tmpfs tmpfs /var/log/journal
    {journald} & JP=$!
    trap 'kill $JP' EXIT
    for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
    export PVEGUARD_LEDGER_ANCHORS=file,journal
    {python} -c "$APPEND" {state} 12
    sleep 0.5
    # The database is cut short, its head rewound, and the anchor file is rewritten to match:
    # only the journal still knows how far the ledger went.
    {python} -c "$TRUNCATE" {state} 5
    set +e
    PVEGUARD_LEDGER_KEY_FILE={key} {python} -m pveguard --state-dir {state} --strategy {strategy} \\
        audit-log verify --json > {out}
    echo $? > {rc}
""")

APPEND = """
import sys
from pathlib import Path
from pveguard.security.ledger import Ledger
from pveguard.store import Store
import os
led = Ledger(Store(Path(sys.argv[1])), os.environ.get("KEY"))
assert [a.name for a in led.anchors] == ["file", "journal"], led.anchors
for i in range(int(sys.argv[2])):
    led.append("journal.test", "t", {"i": i})
"""

TRUNCATE = """
import sqlite3, sys, json
from pathlib import Path
state, keep = Path(sys.argv[1]), int(sys.argv[2])
conn = sqlite3.connect(state / "pveguard.db", isolation_level=None)
conn.execute("DELETE FROM ledger WHERE seq > ?", (keep,))
h = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (keep,)).fetchone()[0]
conn.execute("UPDATE ledger_head SET seq = ?, hash = ?", (keep, h))
lines = (state / "ledger.anchor").read_text().splitlines()
(state / "ledger.anchor").write_text("\\n".join(l for l in lines if json.loads(l)["seq"] <= keep) + "\\n")
"""


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_journal_anchor_catches_truncation_the_local_anchors_hide(tmp_path: Path, keyed: bool) -> None:
    journald = Path("/usr/lib/systemd/systemd-journald")
    if os.geteuid() != 0 or not journald.exists() or not shutil.which("unshare") or not shutil.which("journalctl"):
        pytest.skip("needs root, unshare, journalctl and systemd-journald")
    state, out, rc = tmp_path / "state", tmp_path / "out.json", tmp_path / "rc"
    key = tmp_path / "key"
    key.write_text("journal-test-key")
    script = JOURNAL_SCRIPT.format(journald=journald, python=sys.executable, state=state, out=out, rc=rc,
                                   key=key if keyed else "", strategy=defaults_file())
    env = {**os.environ, "APPEND": APPEND, "TRUNCATE": TRUNCATE, "KEY": str(key) if keyed else ""}
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert rc.read_text().strip() == "1", out.read_text()
    result = json.loads(out.read_text())
    by_name = {a["name"]: a for a in result["anchors"]}
    assert by_name["file"]["verdict"].startswith("agrees"), by_name
    assert by_name["journal"]["readable"] and by_name["journal"]["highest"] == 12, by_name
    assert result["first_bad"] == 6
    assert "the ledger ends at entry 5 but anchor 'journal'" in result["reason"]


# --- host-config backups carry the anchor file ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (apt install restic)")
def test_host_config_backup_carries_the_anchor_and_a_restored_copy_catches_truncation(tmp_path: Path) -> None:
    from pveguard.backup.hostconfig import HostConfigBackup, Restic

    state = tmp_path / "state"
    led = Ledger(Store(state))
    for i in range(8):
        led.append("a", "t", {"i": i})
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    backup = HostConfigBackup(Restic(str(tmp_path / "repo"), tmp_path / "restic.pass", cache_dir=tmp_path / "cache"),
                              hostname="pve-test", ledger_anchor=state / ANCHOR_FILE)
    backup.init()
    result = backup.backup([str(etc)])
    assert str((state / ANCHOR_FILE).absolute()) in result.backed_up

    # Later: the database and its anchor file are both cut back to entry 3.
    conn = sqlite3.connect(state / "pveguard.db", isolation_level=None)
    conn.execute("DELETE FROM ledger WHERE seq > 3")
    h = conn.execute("SELECT hash FROM ledger WHERE seq = 3").fetchone()[0]
    conn.execute("UPDATE ledger_head SET seq = 3, hash = ?", (h,))
    conn.close()
    lines = (state / ANCHOR_FILE).read_text().splitlines()[:3]
    (state / ANCHOR_FILE).write_text("\n".join(lines) + "\n")
    assert verify_state(state).ok

    restored = backup.restore(result.snapshot_id, tmp_path / "restored",
                              include=[str((state / ANCHOR_FILE).absolute())])
    copy = restored / str((state / ANCHOR_FILE).absolute()).lstrip("/")
    verdict = verify_state(state, None, [copy])
    assert not verdict.ok and verdict.first_bad == 4
    assert "has seen entry 8" in verdict.reason and f"copy {copy}" in verdict.reason


def test_a_stuck_log_daemon_never_hangs_appends(tmp_path: Path) -> None:
    # A socket nobody reads: its queue fills, one send waits out the short timeout, and the sink
    # then stops trying for this process; every append still lands in the database.
    path = tmp_path / "stuck-dev-log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    try:
        sink = SyslogAnchor("x", path)
        led = Ledger(Store(tmp_path / "state"), anchors=[sink])
        for i in range(300):
            led.append("a", "t", {"i": i})
        assert sink._stalled
        assert len(led.entries()) == 300
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (apt install restic)")
def test_pveguard_backup_host_config_run_includes_the_anchor_file(tmp_path: Path) -> None:
    state, strategy = tmp_path / "state", tmp_path / "strategy.yaml"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    base = [sys.executable, "-m", "pveguard", "--state-dir", str(state), "--strategy", str(strategy)]
    assert subprocess.run([*base, "init"], capture_output=True, timeout=120).returncode == 0
    proc = subprocess.run([*base, "backup", "host-config", "run", str(etc), "--repo", str(tmp_path / "repo"),
                           "--password-file", str(tmp_path / "pass"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str((state / ANCHOR_FILE).absolute()) in json.loads(proc.stdout)["backed_up"]
