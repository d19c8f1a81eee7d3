"""The ssh: source against a real sshd on loopback: commands, files and the facts `migrate run` reads."""

from __future__ import annotations

from pathlib import Path

from pveguard.migrate import run
from pveguard.migrate.endpoints import Ssh, listing, parse_source

from ..backup.sshd_fixture import LoopbackSshd, loopback_sshd  # noqa: F401  (fixture)


def endpoint(sshd: LoopbackSshd) -> Ssh:
    return Ssh(f"{sshd.user}@127.0.0.1", ("-p", str(sshd.port), "-i", str(sshd.client_key),
                                         "-o", f"UserKnownHostsFile={sshd.known_hosts}"))


def test_ssh_runs_reads_and_writes(loopback_sshd: LoopbackSshd, tmp_path: Path) -> None:  # noqa: F811
    ep = endpoint(loopback_sshd)
    assert ep.run(["echo", "a b", "$HOME;x"]).out == "a b $HOME;x\n"   # arguments arrive as they were
    target = tmp_path / "sub" / "f"
    ep.write_file(str(target), b"\x00bin\n", 0o600)
    assert target.read_bytes() == b"\x00bin\n" and target.stat().st_mode & 0o777 == 0o600
    assert ep.read_file(str(target)) == b"\x00bin\n"
    assert listing(ep, [str(tmp_path / "sub")]) == {str(tmp_path / "sub"), str(target)}
    assert ep.address() == "127.0.0.1"


def test_facts_of_an_ssh_source(loopback_sshd: LoopbackSshd, tmp_path: Path) -> None:  # noqa: F811
    facts, sizer = run.source_facts(endpoint(loopback_sshd), tmp_path)
    # this machine's own dpkg database, copied through ssh
    assert "dpkg" in facts.packages and facts.packages["dpkg"].installed
    assert facts.units   # unit files were copied
    size = sizer("/etc/hostname")
    assert size.exists and size.bytes == len(Path("/etc/hostname").read_bytes())
    assert not sizer("/nonexistent/path").exists


def test_parse_ssh_with_port() -> None:
    ep = parse_source("ssh:root@h:2222", "/var/lib/lxc")
    assert isinstance(ep, Ssh) and ep.host == "root@h" and ep.options[:2] == ("-p", "2222")
