"""Container backups on real LXC: archive a running container holding data, verify it, corrupt a
byte, test-restore into a throwaway container, prune by PVE's rules."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.rootfs import extract, have_debootstrap, rootfs_tarball
from pveguard.backup.cli import app
from pveguard.backup.lxcdump import container_state, dump_container, restore_test
from pveguard.backup.verify import verify_archive, verify_directory
from pveguard.errors import UsageError

from .test_verify import _flip_byte

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="LXC containers need root"),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="lxc is not installed (apt install lxc)"),
    pytest.mark.skipif(not have_debootstrap(), reason="debootstrap missing (needed for the container root)"),
]

DATA = secrets.token_hex(32)


def _lxc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A running privileged container (Debian 12 minbase, PID 1 a sleep, no network) with data."""
    lxcpath = tmp_path_factory.mktemp("lxc")
    name = f"pvg-bk-{secrets.token_hex(3)}"
    rootfs = extract(rootfs_tarball(), lxcpath / name / "rootfs")
    (lxcpath / name / "config").write_text(
        f"lxc.uts.name = {name}\nlxc.rootfs.path = dir:{rootfs}\n"
        "lxc.include = /usr/share/lxc/config/common.conf\nlxc.net.0.type = empty\n"
        "lxc.apparmor.profile = unconfined\nlxc.init.cmd = /bin/sleep infinity\n"
    )
    try:
        proc = _lxc("lxc-start", "-P", str(lxcpath), "-n", name, "-d")
        assert proc.returncode == 0, proc.stderr
        assert _lxc("lxc-wait", "-P", str(lxcpath), "-n", name, "-s", "RUNNING", "-t", "30").returncode == 0
        wrote = _lxc("lxc-attach", "-P", str(lxcpath), "-n", name, "--", "sh", "-c",
                     f"mkdir -p /srv/app && echo {DATA} > /srv/app/data.txt && echo junk > /tmp/scratch")  # fmt: skip
        assert wrote.returncode == 0, wrote.stderr
        yield name, lxcpath
    finally:
        _lxc("lxc-stop", "-P", str(lxcpath), "-n", name, "-k")
        shutil.rmtree(lxcpath, ignore_errors=True)


def test_backup_running_container_verify_restore_and_corruption(container: tuple[str, Path], tmp_path: Path) -> None:
    name, lxcpath = container
    dump = tmp_path / "dump"
    start = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    result = dump_container(name, 101, dump, lxcpath, mode="snapshot", notes="ct101 (pveguard)", start=start,
                            zone=UTC)  # fmt: skip
    assert result.archive.name == "vzdump-lxc-101-2024_05_01-02_00_00.tar.zst"
    assert result.mode == "suspend" and any("falling back to suspend" in ln for ln in result.log_lines)
    assert result.log.name == "vzdump-lxc-101-2024_05_01-02_00_00.log"
    assert result.notes is not None and result.notes.read_text() == "ct101 (pveguard)\n"
    assert container_state(name, lxcpath) == "RUNNING"  # unfrozen again
    assert not list(dump.glob("*.dat")) and not list(dump.glob(".pveguard-stage-*"))

    listing = subprocess.run(["tar", "--zstd", "-tf", str(result.archive)], capture_output=True, text=True,
                             check=True).stdout.splitlines()  # fmt: skip
    assert "./srv/app/data.txt" in listing and "./etc/vzdump/lxc.conf" in listing
    assert "./tmp/scratch" not in listing  # vzdump's default excludes

    assert verify_archive(result.archive).ok
    restored = restore_test(result.archive, tmp_path / "restore-lxc", ["cat", "/srv/app/data.txt"], expect_output=DATA)
    assert restored.ok, restored.problems
    assert not (tmp_path / "restore-lxc" / restored.container).exists()  # the throwaway container is gone

    # One flipped byte: verification fails and names the archive; the restore test fails cleanly.
    bad_copy = dump / "vzdump-lxc-101-2024_05_01-03_00_00.tar.zst"
    shutil.copy(result.archive, bad_copy)
    _flip_byte(bad_copy)
    results = {r.filename: r for r in verify_directory(dump)}
    assert results[result.archive.name].ok and not results[bad_copy.name].ok
    failed = restore_test(bad_copy, tmp_path / "restore-lxc", ["cat", "/srv/app/data.txt"], expect_output=DATA)
    assert not failed.ok and failed.problems
    assert list((tmp_path / "restore-lxc").iterdir()) == []


def test_stop_mode_restarts_and_retention_removes_the_right_archives(
    container: tuple[str, Path], tmp_path: Path
) -> None:
    name, lxcpath = container
    dump = tmp_path / "dump"
    first = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    archives = [dump_container(name, 101, dump, lxcpath, mode="stop", start=first, zone=UTC)]
    assert container_state(name, lxcpath) == "RUNNING"
    for day in range(1, 4):
        archives.append(dump_container(name, 101, dump, lxcpath, start=first + timedelta(days=day), zone=UTC))
    (dump / f"{archives[0].archive.name}.protected").write_text("")
    r = CliRunner().invoke(app, ["archives", "prune", str(dump), "--keep-last", "2"], env={"TZ": "UTC"})
    assert r.exit_code == 0, r.stderr
    left = sorted(p.name for p in dump.glob("vzdump-lxc-101-*.tar.zst"))
    # newest two kept, the protected oldest kept, the one in between removed with its log
    assert left == sorted([archives[0].archive.name, archives[2].archive.name, archives[3].archive.name])
    assert not archives[1].log.exists() and archives[2].log.exists()


def test_errors_are_clear(container: tuple[str, Path], tmp_path: Path) -> None:
    _, lxcpath = container
    with pytest.raises(UsageError, match="no LXC container"):
        dump_container("no-such-ct", 101, tmp_path, lxcpath)
    with pytest.raises(UsageError, match="backup mode"):
        dump_container("x", 101, tmp_path, lxcpath, mode="fast")
    with pytest.raises(UsageError, match="not an LXC vzdump archive"):
        restore_test(tmp_path / "vzdump-qemu-101-2024_01_01-00_00_00.vma.zst", tmp_path)


def test_cli_dump_and_restore_test(container: tuple[str, Path], tmp_path: Path) -> None:
    name, lxcpath = container
    dump = tmp_path / "dump"
    dump.mkdir()
    runner = CliRunner()
    r = runner.invoke(app, ["archives", "dump-lxc", str(dump), "--name", name, "--vmid", "250", "--lxcpath",
                            str(lxcpath), "--mode", "suspend", "--notes", "cli"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    archive = Path(r.stdout.strip())
    assert archive.name.startswith("vzdump-lxc-250-") and archive.exists()
    r = runner.invoke(app, ["archives", "restore-test", str(archive), "--lxcpath", str(tmp_path / "rt"),
                            "--check", "cat", "--check", "/srv/app/data.txt"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    _flip_byte(archive)
    r = runner.invoke(app, ["archives", "restore-test", str(archive), "--lxcpath", str(tmp_path / "rt")])
    assert r.exit_code == 1 and archive.name in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(app, ["archives", "dump-lxc", str(dump), "--name", "nope", "--vmid", "250", "--lxcpath",
                            str(lxcpath)])  # fmt: skip
    assert r.exit_code == 2 and "no LXC container" in r.stderr
