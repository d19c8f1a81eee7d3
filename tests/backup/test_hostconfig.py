"""Host-configuration backups with the real restic: dedup over 48 hourly runs, retention, restore,
diff, wrong password, offsite copy."""

from __future__ import annotations

import os
import random
import shutil
import stat
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pveguard.backup.hostconfig import HostConfigBackup, Restic, forget_args, restic_duration
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import OperationError, UsageError

needs_restic = pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (apt install restic)")

_WORDS = ["enable", "listen", "address", "server", "timeout", "user", "group", "path", "allow", "deny",
          "interface", "gateway", "option", "include", "log", "level", "port", "proto", "mode", "key"]  # fmt: skip


def _config_text(rng: random.Random, lines: int) -> str:
    out = []
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.1:
            out.append("# " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))))
        elif kind < 0.25:
            # key material and hashes: incompressible, so compression cannot hide missing dedup
            out.append("".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(64)))
        else:
            value = "".join(rng.choice(string.hexdigits) for _ in range(rng.randint(8, 40)))
            out.append(f"{rng.choice(_WORDS)}_{rng.randint(0, 999)} = {value}")
    return "\n".join(out) + "\n"


def make_etc_tree(root: Path, seed: int = 1, target_bytes: int = 3_000_000) -> int:
    """An /etc-like tree of config files (~target_bytes); returns its total size."""
    rng = random.Random(seed)
    dirs = ["network", "network/interfaces.d", "apt", "apt/sources.list.d", "apt/apt.conf.d", "pve",
            "pve/lxc", "pve/qemu-server", "pve/priv", "systemd/system", "systemd/system/multi-user.target.wants",
            "ssh", "ssl/certs", "ssl/private", "cron.d", "modprobe.d", "sysctl.d", "lvm", "corosync",
            "default"]  # fmt: skip
    total = 0
    i = 0
    while total < target_bytes:
        d = root / rng.choice(dirs)
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{rng.choice(_WORDS)}-{i}.conf"
        f.write_text(_config_text(rng, rng.randint(5, 400)))
        total += f.stat().st_size
        i += 1
    for name, text in (("hosts", "127.0.0.1 localhost\n10.0.0.2 pve1.example pve1\n"), ("hostname", "pve1\n"),
                       ("fstab", "proc /proc proc defaults 0 0\n")):  # fmt: skip
        (root / name).write_text(text)
        total += len(text)
    return total


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _small_change(root: Path, rng: random.Random, hour: int) -> None:
    files = sorted(p for p in root.rglob("*.conf"))
    for f in rng.sample(files, 3):
        with f.open("a") as fh:
            fh.write(f"changed_at_hour_{hour} = {rng.randrange(1 << 30):x}\n")
    if hour % 6 == 0:
        (root / "pve" / "lxc" / f"{200 + hour}.conf").write_text(_config_text(rng, 20))
    if hour % 10 == 5:
        victim = rng.choice(files)
        victim.unlink()


@pytest.fixture
def repo(tmp_path: Path) -> HostConfigBackup:
    restic = Restic(repository=str(tmp_path / "repo"), password_file=tmp_path / "secret" / "restic.pass",
                    cache_dir=tmp_path / "cache")  # fmt: skip
    backup = HostConfigBackup(restic, hostname="pve-test")
    assert backup.init() is True
    return backup


def test_restic_duration_and_forget_args() -> None:
    assert restic_duration(timedelta(days=30)) == "30d"
    assert restic_duration(timedelta(hours=36)) == "1d12h"
    assert forget_args(timedelta(days=30)) == ["--keep-within", "30d"]
    assert forget_args(None, KeepPolicy(daily=7, weekly=4)) == ["--keep-daily", "7", "--keep-weekly", "4"]
    with pytest.raises(UsageError, match="whole number of hours"):
        restic_duration(timedelta(minutes=90))
    with pytest.raises(UsageError, match="forget every snapshot"):
        forget_args(None, None)


@pytest.mark.slow
@needs_restic
def test_init_creates_private_password_and_is_idempotent(repo: HostConfigBackup) -> None:
    pw = repo.restic.password_file
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600 and len(pw.read_text().strip()) >= 32
    assert repo.init() is False  # existing repository left alone
    assert repo.is_initialised()


@pytest.mark.slow
@needs_restic
def test_48_hourly_snapshots_stay_under_three_full_copies(repo: HostConfigBackup, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    make_etc_tree(etc)
    rng = random.Random(7)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    results = []
    for hour in range(48):
        if hour:
            _small_change(etc, rng, hour)
        results.append(repo.backup([str(etc)], time=start + timedelta(hours=hour)))
    full_copy = _tree_size(etc)
    repo_size = _dir_size(Path(repo.restic.repository))
    print(f"tree {full_copy} bytes, repository after 48 snapshots {repo_size} bytes "
          f"({repo_size / full_copy:.2f}x)")  # fmt: skip
    assert full_copy > 2_000_000
    assert repo_size < 3 * full_copy
    # The changes were small: after the first run each snapshot added little data.
    assert all(r.data_added < 0.05 * full_copy for r in results[1:])
    assert results[0].files_new > 100 and results[1].files_changed >= 3
    snaps = repo.snapshots()
    assert len(snaps) == 48 and snaps[0].time == start and snaps[-1].time == start + timedelta(hours=47)

    # 30 days relative to the newest snapshot: nothing goes.
    assert repo.forget(timedelta(days=30)).removed == ()
    # 12 hours: restic keeps snapshots newer than newest - 12 h.
    result = repo.forget(timedelta(hours=12))
    assert len(result.removed) == 48 - len(result.kept)
    kept_times = sorted(s.time for s in repo.snapshots())
    assert kept_times[0] > start + timedelta(hours=47) - timedelta(hours=12)
    assert len(kept_times) == 12
    repo.check(read_data_subset="10%")


@pytest.mark.slow
@needs_restic
def test_restore_a_deleted_file_and_diff(repo: HostConfigBackup, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    make_etc_tree(etc, target_bytes=200_000)
    victim = etc / "network" / "interfaces"
    victim.write_text("auto vmbr0\niface vmbr0 inet static\n    address 10.0.0.2/24\n")
    original = victim.read_bytes()
    first = repo.backup([str(etc)])
    victim.unlink()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    second = repo.backup([str(etc)])

    changes = {(d.path, d.modifier) for d in repo.diff(first.snapshot_id, second.snapshot_id)}
    assert (f"{victim}", "-") in changes
    assert (f"{etc / 'hosts'}", "M") in changes

    one = repo.restore(first.snapshot_id, tmp_path / "restore-one", include=[str(victim)])
    restored = one / str(victim).lstrip("/")
    assert restored.read_bytes() == original
    assert not (one / str(etc / "hosts").lstrip("/")).exists()  # only the one file

    everything = repo.restore(first.snapshot_id, tmp_path / "restore-all")
    assert (everything / str(etc / "hosts").lstrip("/")).read_text().startswith("127.0.0.1 localhost\n10.0.0.2")
    assert restored.read_bytes() == original

    with pytest.raises(UsageError, match="not empty"):
        repo.restore(first.snapshot_id, tmp_path / "restore-all")
    with pytest.raises(OperationError, match="holds none of"):
        repo.restore(second.snapshot_id, tmp_path / "restore-missing", include=[str(victim)])


@pytest.mark.slow
@needs_restic
def test_missing_paths_are_skipped_and_named(repo: HostConfigBackup, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("pve1\n")
    result = repo.backup([str(etc / "hostname"), str(tmp_path / "no-such-dir"), "/nonexistent/pve"])
    assert result.skipped_missing == (str(tmp_path / "no-such-dir"), "/nonexistent/pve")
    assert result.backed_up == (str(etc / "hostname"),)
    with pytest.raises(UsageError, match="none of the host-config paths exists"):
        repo.backup(["/nonexistent/a", "/nonexistent/b"])
    with pytest.raises(UsageError, match="must be absolute"):
        repo.backup(["etc/hosts"])


@pytest.mark.slow
@needs_restic
def test_wrong_password_is_a_clear_error(repo: HostConfigBackup, tmp_path: Path) -> None:
    other = tmp_path / "other.pass"
    other.write_text("not the password\n")
    wrong = HostConfigBackup(Restic(repo.restic.repository, other, cache_dir=tmp_path / "cache"), hostname="x")
    with pytest.raises(OperationError) as info:
        wrong.snapshots()
    assert "password" in str(info.value).lower()
    # and init refuses to touch a non-empty directory it cannot open
    with pytest.raises(UsageError, match="not a restic repository this password opens"):
        wrong.init()


@pytest.mark.slow
@needs_restic
def test_offsite_copy_to_second_repository(repo: HostConfigBackup, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    make_etc_tree(etc, target_bytes=300_000)
    repo.backup([str(etc)], time=datetime(2024, 5, 1, 10, tzinfo=UTC))
    (etc / "hostname").write_text("pve2\n")
    repo.backup([str(etc)], time=datetime(2024, 5, 1, 11, tzinfo=UTC))
    offsite_pw = tmp_path / "offsite.pass"
    offsite_pw.write_text("offsite secret\n")
    os.chmod(offsite_pw, 0o600)
    offsite = Restic(str(tmp_path / "offsite"), offsite_pw, cache_dir=tmp_path / "cache")
    copied = repo.copy_to(offsite)
    assert len(copied) == 2
    assert repo.copy_to(offsite) == []  # nothing new the second time
    far = HostConfigBackup(offsite, hostname="pve-test")
    snaps = far.snapshots()
    assert [s.time for s in snaps] == [datetime(2024, 5, 1, 10, tzinfo=UTC), datetime(2024, 5, 1, 11, tzinfo=UTC)]
    out = far.restore(snaps[-1].id, tmp_path / "from-offsite", include=[str(etc / "hostname")])
    assert (out / str(etc / "hostname").lstrip("/")).read_text() == "pve2\n"
    far.check()
