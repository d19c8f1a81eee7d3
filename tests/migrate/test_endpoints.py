"""The source interface: argv wrapping per kind, file read/write and --source parsing (local runs for real)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pveguard.errors import UsageError
from pveguard.migrate.endpoints import Local, Lxc, Ssh, listing, parse_source


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
