"""Offsite copies: to a second directory and over SFTP to a real sshd on loopback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pveguard.backup.offsite import SftpTarget, sync_to_directory, sync_to_sftp
from pveguard.errors import OperationError, UsageError

from .sshd_fixture import LoopbackSshd, loopback_sshd  # noqa: F401  (fixture)


def _archives(dump: Path) -> list[Path]:
    dump.mkdir(parents=True, exist_ok=True)
    files = []
    for day, size in ((1, 200_000), (2, 300_000)):
        base = f"vzdump-lxc-101-2024_01_0{day}-02_00_00"
        a = dump / f"{base}.tar.zst"
        a.write_bytes(os.urandom(size))
        log = dump / f"{base}.log"
        log.write_text(f"INFO: backup day {day}\n")
        notes = dump / f"{base}.tar.zst.notes"
        notes.write_text("ct101 (pveguard)\n")
        files += [a, log, notes]
    return files


def test_sync_to_directory_incremental(tmp_path: Path) -> None:
    files = _archives(tmp_path / "dump")
    dest = tmp_path / "nas" / "pve"
    first = sync_to_directory(files, dest)
    assert sorted(first.uploaded) == sorted(f.name for f in files) and first.skipped == ()
    assert all((dest / f.name).read_bytes() == f.read_bytes() for f in files)
    second = sync_to_directory(files, dest)
    assert second.uploaded == () and len(second.skipped) == len(files)
    # a half-written earlier copy (different size) is replaced; no .part file stays behind
    (dest / files[0].name).write_bytes(b"partial")
    third = sync_to_directory(files, dest)
    assert third.uploaded == (files[0].name,)
    assert (dest / files[0].name).read_bytes() == files[0].read_bytes()
    assert not list(dest.glob(".*.part"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sftp://backup@nas.example:2222/srv/pve", ("nas.example", "/srv/pve", "backup", 2222)),
        ("sftp://nas.example/srv/pve dumps", ("nas.example", "/srv/pve dumps", None, 22)),
    ],
)
def test_sftp_target_parse(url: str, expected: tuple[str, str, str | None, int]) -> None:
    t = SftpTarget.parse(url)
    assert (t.host, t.path, t.user, t.port) == expected


@pytest.mark.parametrize("url", ["ftp://x/y", "sftp://host", "sftp:///path", "/srv/pve", "sftp://h:99999/x"])
def test_sftp_target_rejects(url: str) -> None:
    with pytest.raises(UsageError):
        SftpTarget.parse(url)


@pytest.mark.slow
def test_sync_to_real_sftp_on_loopback(tmp_path: Path, loopback_sshd: LoopbackSshd) -> None:  # noqa: F811
    files = _archives(tmp_path / "dump")
    remote_dir = tmp_path / "remote" / "pve dumps"  # the sshd runs here, so "remote" is a local path
    target = SftpTarget.parse(
        f"sftp://{loopback_sshd.user}@127.0.0.1:{loopback_sshd.port}{remote_dir}",
        identity_file=loopback_sshd.client_key, known_hosts=loopback_sshd.known_hosts,
    )  # fmt: skip
    first = sync_to_sftp(files, target)
    assert sorted(first.uploaded) == sorted(f.name for f in files)
    assert all((remote_dir / f.name).read_bytes() == f.read_bytes() for f in files)
    assert not list(remote_dir.glob(".*.part"))
    second = sync_to_sftp(files, target)
    assert second.uploaded == () and len(second.skipped) == len(files)
    # a new archive is the only upload of the next run
    new = tmp_path / "dump" / "vzdump-lxc-101-2024_01_03-02_00_00.tar.zst"
    new.write_bytes(os.urandom(50_000))
    third = sync_to_sftp([*files, new], target)
    assert third.uploaded == (new.name,)


@pytest.mark.slow
def test_sftp_unknown_host_key_is_refused(tmp_path: Path, loopback_sshd: LoopbackSshd) -> None:  # noqa: F811
    files = _archives(tmp_path / "dump")
    empty_known = tmp_path / "known_hosts_empty"
    empty_known.write_text("")
    target = SftpTarget.parse(
        f"sftp://{loopback_sshd.user}@127.0.0.1:{loopback_sshd.port}{tmp_path / 'remote'}",
        identity_file=loopback_sshd.client_key, known_hosts=empty_known,
    )  # fmt: skip
    with pytest.raises(OperationError) as info:
        sync_to_sftp(files, target)
    assert "host key" in str(info.value).lower()
    assert not (tmp_path / "remote").exists()


@pytest.mark.slow
def test_sftp_wrong_key_is_refused(tmp_path: Path, loopback_sshd: LoopbackSshd) -> None:  # noqa: F811
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    target = SftpTarget.parse(
        f"sftp://{loopback_sshd.user}@127.0.0.1:{loopback_sshd.port}{tmp_path / 'remote'}",
        identity_file=other_key, known_hosts=loopback_sshd.known_hosts,
    )  # fmt: skip
    with pytest.raises(OperationError, match="Permission denied"):
        sync_to_sftp(_archives(tmp_path / "dump"), target)
