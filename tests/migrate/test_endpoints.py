"""The source interface: argv wrapping per kind, file read/write and --source parsing (local runs for real)."""

from __future__ import annotations

import os
import shlex
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from pveguard.errors import OperationError, UsageError
from pveguard.migrate.endpoints import Local, Lxc, Ssh, listing, parse_source, require_tar_meta, tar_copy


def test_local_runs_reads_and_writes(tmp_path: Path) -> None:
    ep = Local()
    assert ep.run(["sh", "-c", "echo $LANG"]).out.strip() == "C.UTF-8"
    target = tmp_path / "d" / "f.conf"
    ep.write_file(str(target), b"a\0b\n", 0o640)
    assert target.read_bytes() == b"a\0b\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert ep.read_file(str(target)) == b"a\0b\n"
    assert ep.read_file(str(tmp_path / "missing")) is None
    assert listing(ep, [str(tmp_path / "d")]) == {str(tmp_path / "d"), str(target)}


def test_wrapping() -> None:
    lxc = Lxc("host1", "/var/tmp/x")
    assert lxc.wrap(["true"])[:5] == ["lxc-attach", "-P", "/var/tmp/x", "-n", "host1"]
    assert lxc.wrap(["a b"])[-1] == "a b"
    ssh = Ssh("root@10.0.0.5")
    argv = ssh.wrap(["cat", "a file; rm -rf /"])
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert shlex.split(argv[-1])[-2:] == ["cat", "a file; rm -rf /"]   # one argument on the far side
    assert ssh.address() == "10.0.0.5"


def test_parse_source(tmp_path: Path) -> None:
    assert isinstance(parse_source("local", str(tmp_path)), Local)
    (tmp_path / "web").mkdir()
    (tmp_path / "web/config").write_text("lxc.uts.name = web\n")
    src = parse_source("lxc:web", str(tmp_path))
    assert isinstance(src, Lxc) and src.name == "web" and src.lxcpath == str(tmp_path)
    with pytest.raises(UsageError, match="no LXC container nope"):
        parse_source("lxc:nope", str(tmp_path))
    with pytest.raises(UsageError, match="not local, lxc:NAME or ssh:HOST"):
        parse_source("docker:x", str(tmp_path))
    assert isinstance(parse_source("ssh:root@h", str(tmp_path)), Ssh)


class Rooted(Local):
    """This machine, with `/` of tar's -C and of the shell's `cd /` pointed at a directory: two
    "machines" for one tar stream."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def wrap(self, argv: Sequence[str]) -> list[str]:
        out = [a.replace("cd / ", f"cd {self.root} ") for a in argv]
        if out[:1] == ["tar"] and "-C" in out:
            out[out.index("-C") + 1] = str(self.root)
        return super().wrap(out)


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The kernel's system.posix_acl_access value (linux/posix_acl_xattr.h): version 2, then
    (tag, perm, id) entries sorted by tag."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def test_tar_copy_keeps_acls_and_extended_attributes(tmp_path: Path) -> None:
    src_root, dst_root = tmp_path / "src", tmp_path / "dst"
    data = src_root / "srv/app"
    data.mkdir(parents=True)
    f = data / "notes.txt"
    f.write_text("hello\n")
    undefined = 0xFFFFFFFF
    acl = posix_acl((0x01, 6, undefined), (0x02, 6, 65534), (0x04, 4, undefined), (0x10, 6, undefined),
                    (0x20, 4, undefined))   # user::rw- user:nobody:rw- group::r-- mask::rw- other::r--
    try:
        os.setxattr(f, "user.origin", b"the host")
        os.setxattr(f, "system.posix_acl_access", acl)
    except OSError as e:
        pytest.skip(f"{tmp_path}'s filesystem keeps no user xattrs or ACLs here: {e}")
    dst_root.mkdir()
    n = tar_copy(Rooted(src_root), Rooted(dst_root), ["/srv/app"])
    got = dst_root / "srv/app/notes.txt"
    assert n > 0 and got.read_text() == "hello\n"
    assert os.getxattr(got, "user.origin") == b"the host"
    assert os.getxattr(got, "system.posix_acl_access") == acl


def test_a_tar_without_acls_and_xattrs_is_refused(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "tar").write_text("#!/bin/sh\necho 'BusyBox v1.36.1 multi-call binary. Usage: tar c|x|t [-f FILE]'\n")
    (bindir / "tar").chmod(0o755)

    class Busybox(Local):
        label = "busybox-box"

        def wrap(self, argv: Sequence[str]) -> list[str]:
            return ["env", f"PATH={bindir}:/usr/bin:/bin", *argv]

    (tmp_path / "x").write_text("x")
    with pytest.raises(OperationError, match="busybox-box: tar cannot keep POSIX ACLs and extended attributes"):
        tar_copy(Local(), Busybox(), [str(tmp_path / "x")])
    require_tar_meta(Local())   # GNU tar here: accepted
