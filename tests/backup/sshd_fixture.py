"""A real OpenSSH sshd on a loopback port, with its own host key, client key and config.

Runs in a private mount namespace (unshare -m) with a tmpfs on /run, because sshd needs
/run/sshd for privilege separation and this machine's /run must not be changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.processes import stop

SSHD = "/usr/sbin/sshd"


@dataclass
class LoopbackSshd:
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    root: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sshd_available() -> str | None:
    """None when a loopback sshd can be started here, else the reason why not."""
    if not os.path.exists(SSHD):
        return "openssh-server is not installed (apt install openssh-server)"
    for tool in ("ssh-keygen", "sftp", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "starting sshd with privilege separation needs root"
    return None


@pytest.fixture
def loopback_sshd(tmp_path: Path) -> Iterator[LoopbackSshd]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "sshd"
    root.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = _free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text()}")
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    log = (root / "sshd.log").open("w")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec {SSHD} -D -e -f {config}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("sshd did not start listening within 15 s")
                time.sleep(0.1)
        yield LoopbackSshd(port, "root", root / "client_key", root / "known_hosts", root)
    finally:
        stop(proc)
        log.close()
