"""The hint for a failed container install fits the failure (issue 11): real ssh against a closed
port and against a real sshd on loopback (host key unknown, key refused), real apt in the Debian
chroot with an unreachable mirror, and apt's "Unable to locate package". `explain` sees exactly what
`install_packages` would get from the backend's exec."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aptchroot import AptChroot

from pveguard.backends.base import ExecResult
from pveguard.provision.aptfailure import explain

OK = ExecResult(0, "", "")
PCT = ["pct", "exec", "101", "--", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh(port: int, known_hosts: Path, identity: Path, strict: str = "yes") -> ExecResult:
    """The command the proxmox backend runs for a guest on another node (ssh -o BatchMode=yes ...)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-p", str(port), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"StrictHostKeyChecking={strict}", "-o", "IdentitiesOnly=yes", "-i", str(identity),
            "-o", "ConnectTimeout=5", "root@127.0.0.1", *PCT]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return ExecResult(p.returncode, p.stdout, p.stderr)


def why(update: ExecResult, install: ExecResult | None = None) -> tuple[str, str, str]:
    f = explain(update, install, container="pve-monitoring", vmid=101, node="pve2", packages=["grafana"])
    return f.kind, f.message, f.hint


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@contextlib.contextmanager
def sshd(tmp_path: Path) -> Iterator[int]:
    """A real sshd on a loopback port that accepts no key (AuthorizedKeysFile none)."""
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and openssh-server")
    hostkey = tmp_path / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    privsep = Path("/run/sshd")  # sshd's privilege separation directory; made here only if missing
    made = not privsep.exists()
    if made:
        privsep.mkdir(mode=0o755)
    port = free_port()
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-h", str(hostkey), "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", "AuthorizedKeysFile=none",
                             "-o", "PasswordAuthentication=no", "-o", "PidFile=none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if made:
            shutil.rmtree(privsep, ignore_errors=True)


def test_node_unreachable(tmp_path: Path, client_key: Path) -> None:
    r = ssh(free_port(), tmp_path / "known_hosts", client_key)
    assert r.returncode == 255, r
    kind, message, hint = why(r)
    assert kind == "node-unreachable" and "node pve2 cannot be reached over ssh" in message
    assert "apt sources" not in hint and "/cluster/status" in hint


def test_unknown_host_key_and_refused_key(tmp_path: Path, client_key: Path) -> None:
    with sshd(tmp_path) as port:
        kind, message, hint = why(ssh(port, tmp_path / "known_hosts", client_key))
        assert kind == "ssh-host-key" and "host key of node pve2" in message and "fingerprint" in hint
        kind, message, hint = why(ssh(port, tmp_path / "known_hosts", client_key, strict="accept-new"))
        assert kind == "ssh-auth" and "authentication failed" in message
        assert "authorized_keys" in hint and "ssh-copy-id root@pve2" in hint


@pytest.mark.slow
@pytest.mark.root
def test_container_without_its_mirror_and_missing_package(chroot: AptChroot) -> None:
    def run(*argv: str) -> ExecResult:
        p = chroot.run(list(argv))
        return ExecResult(p.returncode, p.stdout, p.stderr)

    # The local repository has no 'nosuch-package': apt's own words for a name its sources lack.
    update = run("apt-get", "update", "-q")
    assert update.ok, update
    kind, message, hint = why(update, run("apt-get", "install", "-y", "-q", "nosuch-package"))
    assert kind == "package-not-found" and "nosuch-package is not in the container's apt sources" in message
    assert "apt-cache search nosuch-package" in hint
    # Now the only source is a mirror nobody answers for: update warns, install cannot find grafana.
    chroot.path("/etc/apt/sources.list").write_text(f"deb [trusted=yes] http://127.0.0.1:{free_port()}/debian ./\n")
    shutil.rmtree(chroot.path("/var/lib/apt/lists"))
    chroot.path("/var/lib/apt/lists/partial").mkdir(parents=True)
    update = run("apt-get", "update", "-q")
    install = run("apt-get", "install", "-y", "-q", "grafana") if update.ok else None
    kind, message, hint = why(update, install)
    assert kind == "container-network", (update, install)
    assert "cannot reach its apt mirror" in message and "getent hosts" in hint
