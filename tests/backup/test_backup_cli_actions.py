"""`backup host-config ...`, `backup archives verify|prune`, `backup install-timers` through the CLI,
standalone (CliRunner on the backup app) and mounted in `pveguard` (as a process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pveguard.backup.cli import app

from .test_verify import _flip_byte, _make, _rootfs

runner = CliRunner()
needs_restic = pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed")


@pytest.mark.slow
@needs_restic
def test_host_config_round_trip(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "network").mkdir(parents=True)
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "network" / "interfaces").write_text("auto lo\niface lo inet loopback\n")
    opts = ["--repo", str(tmp_path / "repo"), "--password-file", str(tmp_path / "pass")]
    r = runner.invoke(app, ["host-config", "init", *opts])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["host-config", "run", str(etc), str(tmp_path / "missing"), "--retention", "30d",
                            "--json", *opts])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["skipped_missing"] == [str(tmp_path / "missing")] and first["files_new"] == 2
    (etc / "network" / "interfaces").unlink()
    r = runner.invoke(app, ["host-config", "run", str(etc), *opts])
    assert r.exit_code == 0 and r.stdout.startswith("snapshot ")
    r = runner.invoke(app, ["host-config", "list", "--json", *opts])
    snaps = json.loads(r.stdout)
    assert len(snaps) == 2
    r = runner.invoke(app, ["host-config", "diff", snaps[0]["id"], snaps[1]["id"], *opts])
    assert f"- {etc / 'network' / 'interfaces'}" in r.stdout.splitlines()
    r = runner.invoke(app, ["host-config", "restore", snaps[0]["id"], "--target", str(tmp_path / "out"),
                            "--path", str(etc / "network" / "interfaces"), *opts])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / str(etc / "network" / "interfaces").lstrip("/")).read_text().startswith("auto lo")
    r = runner.invoke(app, ["host-config", "check", *opts])
    assert r.exit_code == 0 and "no errors were found" in r.stdout
    r = runner.invoke(app, ["host-config", "check", "--json", *opts])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["problems"] == [] and "no errors were found" in doc["report"]
    assert doc["repository"] == str(tmp_path / "repo") and doc["read_data_subset"] is None
    # errors a user can meet: wrong password, unknown snapshot
    (tmp_path / "wrong").write_text("nope\n")
    r = runner.invoke(app, ["host-config", "list", "--repo", str(tmp_path / "repo"), "--password-file",
                            str(tmp_path / "wrong")])  # fmt: skip
    assert r.exit_code == 1 and "password" in r.stderr and "Traceback" not in r.stderr
    # a script gets the failed check as a document too, with the exit code of the failure
    r = runner.invoke(app, ["host-config", "check", "--json", "--repo", str(tmp_path / "repo"), "--password-file",
                            str(tmp_path / "wrong")])  # fmt: skip
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["ok"] is False and "password" in doc["problems"][0], r.stdout
    r = runner.invoke(app, ["host-config", "run", str(etc), "--retention", "soon", *opts])
    assert r.exit_code == 2 and "--retention" in r.stderr


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd missing")
def test_archives_verify_and_prune(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    src = _rootfs(tmp_path / "rootfs")
    names = [f"vzdump-lxc-101-2024_01_0{d}-02_00_00.tar.zst" for d in (1, 2, 3, 4)]
    for n in names:
        _make(dump, n, src)
        (dump / n.replace(".tar.zst", ".log")).write_text("log\n")
    (dump / f"{names[1]}.protected").write_text("")
    r = runner.invoke(app, ["archives", "verify", str(dump)])
    assert r.exit_code == 0, r.stdout + r.stderr
    _flip_byte(dump / names[2])
    r = runner.invoke(app, ["archives", "verify", str(dump), "--json"])
    assert r.exit_code == 1
    bad = [a["filename"] for a in json.loads(r.stdout)["archives"] if not a["ok"]]
    assert bad == [names[2]] and names[2] in r.stderr

    env = {"TZ": "UTC"}
    before = sorted(os.listdir(dump))
    r = runner.invoke(app, ["archives", "prune", str(dump), "--keep-last", "1", "--dry-run"], env=env)
    assert r.exit_code == 0 and f"keep {names[3]}" in r.stdout and f"protected {names[1]}" in r.stdout
    assert sorted(os.listdir(dump)) == before  # a dry run touches nothing
    r = runner.invoke(app, ["archives", "prune", str(dump), "--keep-last", "1"], env=env)
    assert r.exit_code == 0, r.stderr
    left = sorted(n for n in os.listdir(dump) if not n.startswith("."))
    assert left == sorted([names[1], f"{names[1]}.protected", names[1].replace(".tar.zst", ".log"),
                           names[3], names[3].replace(".tar.zst", ".log")])  # fmt: skip
    r = runner.invoke(app, ["archives", "prune", str(dump)])
    assert r.exit_code == 2 and "no --keep-*" in r.stderr
    r = runner.invoke(app, ["archives", "verify", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.stderr


def test_install_timers(tmp_path: Path) -> None:
    r = runner.invoke(app, ["install-timers", "--unit-dir", str(tmp_path), "--pveguard", "/bin/true"])
    assert r.exit_code == 0, r.stderr
    timer = (tmp_path / "pveguard-backup.timer").read_text()
    assert "OnCalendar=*-*-* *:00:00\n" in timer
    service = (tmp_path / "pveguard-backup.service").read_text()
    assert "ExecStart=/bin/true backup run --due\n" in service


def test_mounted_in_pveguard_with_strategy_and_ledger(tmp_path: Path) -> None:
    """Through the main CLI: the strategy's schedule and the state directory are used, the
    action lands in the ledger."""
    state = tmp_path / "state"
    strategy = tmp_path / "strategy.yaml"
    env = {**os.environ, "PVEGUARD_STATE_DIR": str(state), "PVEGUARD_STRATEGY": str(strategy)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pveguard", *args], capture_output=True, text=True, env=env,
                              timeout=120, check=False)  # fmt: skip

    assert run("init").returncode == 0
    text = strategy.read_text()
    assert "schedule: hourly" in text
    strategy.write_text(text.replace("schedule: hourly", "schedule: '*/20'", 1))
    proc = run("backup", "install-timers", "--unit-dir", str(tmp_path / "units"), "--pveguard", "/bin/true")
    assert proc.returncode == 0, proc.stderr
    timer = (tmp_path / "units" / "pveguard-backup.timer").read_text()
    # one OnCalendar= per schedule: host config, containers (daily), verification (weekly)
    assert "OnCalendar=*-*-* *:00,20,40:00\nOnCalendar=*-*-* 00:00:00\nOnCalendar=Mon *-*-* 00:00:00\n" in timer
    ledger = run("audit-log", "show", "--json")
    assert any(e["action"] == "backup.install-timers" for e in json.loads(ledger.stdout))
    bad = run("backup", "next-runs", "*/61")
    assert bad.returncode == 2 and "61 is too large" in bad.stderr and "Traceback" not in bad.stderr


def test_archives_status(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from pveguard.backup.archive import archive_name

    dump = tmp_path / "dump"
    dump.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    # guest 101: a backup every day at 00:00 UTC for 9 days (two more than keep-daily=7)
    midnight = now.replace(hour=0, minute=0, second=0)
    for d in range(9):
        (dump / archive_name("lxc", 101, midnight - timedelta(days=d), zone=UTC)).write_bytes(b"x")
    # guest 102: last backup 5 days ago
    (dump / archive_name("lxc", 102, midnight - timedelta(days=5), zone=UTC)).write_bytes(b"x")
    r = runner.invoke(app, ["archives", "status", str(dump), "--schedule", "daily UTC", "--keep", "keep-daily=7",
                            "--json"], env={"TZ": "UTC"})  # fmt: skip
    assert r.exit_code == 1
    by_guest = {s["guest"]: s for s in json.loads(r.stdout)}
    assert by_guest["lxc/101"]["archives"] == 9
    assert by_guest["lxc/101"]["problems"] == [
        "9 unprotected archives, more than the retention keeps (keep-daily=7): is pruning running?"
    ]
    assert "older than the scheduled run" in by_guest["lxc/102"]["problems"][0]
    r = runner.invoke(app, ["archives", "status", str(dump), "--schedule", "daily UTC", "--keep", "keep-daily=10"],
                      env={"TZ": "UTC"})  # fmt: skip
    rows = {cells[1]: cells[0] for cells in (line.strip("│").split("│") for line in r.stdout.splitlines()
                                              if line.startswith("│")) if cells[1].strip()}
    assert {g.strip(): v.strip() for g, v in rows.items()} == {"lxc/101": "ok", "lxc/102": "BAD"}, r.stdout


def test_archives_offsite_to_directory(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    names = ["vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_01-02_00_00.log",
             "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes", "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.protected",
             "unrelated.txt", "vzdump-lxc-101-2024_01_02-02_00_00.tar.dat"]  # fmt: skip
    for n in names:
        (dump / n).write_bytes(os.urandom(100))
    r = runner.invoke(app, ["archives", "offsite", str(dump), "--to", str(tmp_path / "nas")])
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "nas")) == sorted(names[:3])  # archives and companions only
    r = runner.invoke(app, ["archives", "offsite", str(dump), "--to", str(tmp_path / "nas")])
    assert r.stdout == "" and "0 copied, 3 already there" in r.stderr
    r = runner.invoke(app, ["archives", "offsite", str(dump)])
    assert r.exit_code == 2 and "no offsite target" in r.stderr
    r = runner.invoke(app, ["archives", "offsite", str(dump), "--to", "rclone://x"])
    assert r.exit_code == 2 and "unsupported offsite target" in r.stderr
