"""Real LXC for the backend tests: a private lxcpath and disk dir, test-made bridges, lxcfs.

Everything a test makes is removed afterwards, even when it fails: containers (stopped and
destroyed), loop devices and mounts backed by files under the test's directory, every bridge
whose name starts with the test's prefix, and lxcfs when this fixture started it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.processes import stop
from infra.rootfs import CACHE
from pveguard.backends import lxc_gateway, lxc_isolation
from pveguard.backends.lxc import LxcBackend
from pveguard.strategy.models import LxcTarget

TEMPLATE_CACHE = CACHE / "lxc-templates"
LXCFS_DIR = Path("/var/lib/lxcfs")


def lxc_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates containers, bridges and loop mounts)"
    for tool in ("lxc-start", "lxc-attach", "mkfs.ext4", "debootstrap", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/debian-packages.txt lists what the setup installs)"
    return None


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def pveguard(env: dict[str, str], *argv: str, timeout: float = 1800) -> tuple[int, str, str]:
    """`python -m pveguard ARGV` as a child with `env`: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "pveguard", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class LxcEnv:
    """A backend on a private lxcpath plus the names the test may create."""

    backend: LxcBackend
    root: Path
    prefix: str  # every bridge this test makes starts with it
    bridges: list[str] = field(default_factory=list)

    def cli_env(self, doc: dict[str, Any]) -> dict[str, str]:
        """Write `doc` as this test's strategy, its `target` set (in `doc` too, for later rewrites) to
        this env's private lxcpath, disks and template cache, and return the environment a
        `python -m pveguard` child needs to use it."""
        c = self.backend.config
        doc["target"] = {"backend": "lxc", "lxc": {"lxcpath": c.lxcpath, "disk_dir": c.disk_dir,
                                                   "template_cache": c.template_cache}}
        strategy = self.root / "strategy.yaml"
        strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
        return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
                "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(self.root / "state")}

    def init_env(self) -> dict[str, str]:
        """The environment a `python -m pveguard` child needs for this test's strategy file
        (`root/strategy.yaml`) and state dir, after `pveguard init` wrote the default strategy there;
        the backend is left to the strategy."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
               "PVEGUARD_STRATEGY": str(self.root / "strategy.yaml"), "PVEGUARD_STATE_DIR": str(self.root / "state")}
        env.pop("PVEGUARD_BACKEND", None)
        code, _, err = pveguard(env, "init")
        assert code == 0, err
        return env

    def bridge(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        self.bridges.append(name)
        return name

    def leftovers(self, keep: list[str] | None = None) -> list[str]:
        """What is still on the host from this test (empty when everything is gone), except `keep` links."""
        out = []
        names = run("lxc-ls", "-P", str(self.root / "lxc"), "-1").split()
        out += [f"container {n}" for n in names]
        links = [line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link").splitlines()]
        out += [f"link {n}" for n in links if n.startswith(self.prefix) and n not in (keep or [])]
        out += [f"loop {line}" for line in run("losetup", "-a").splitlines() if str(self.root) in line]
        out += [f"mount {line}" for line in run("cat", "/proc/self/mounts").splitlines() if str(self.root) in line]
        out += [f"nft table {t}" for t in _own_tables(self.prefix)]
        out += [f"dnsmasq {p.name}" for p in _own_pidfiles(self.prefix)]
        return out


def _own_tables(prefix: str) -> list[str]:
    """nftables tables of pveguard networks (`ip`) and isolation (`bridge`) on this test's bridges."""
    out = run("nft", "list", "tables") if shutil.which("nft") else ""
    mine = (lxc_gateway.table_name(prefix), lxc_isolation.table_name(prefix))
    return [f"{line.split()[1]} {line.split()[2]}" for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] in ("ip", "bridge") and line.split()[2].startswith(mine)]


def _own_pidfiles(prefix: str) -> list[Path]:
    run_dir = lxc_gateway.RUN_DIR
    return sorted(run_dir.glob(f"dnsmasq-{prefix}*.pid")) if run_dir.is_dir() else []


def _cleanup(env: LxcEnv) -> None:
    lxcpath = env.root / "lxc"
    for name in run("lxc-ls", "-P", str(lxcpath), "-1").split():
        subprocess.run(["lxc-stop", "-P", str(lxcpath), "-n", name, "-k"], capture_output=True, check=False)
    for line in run("cat", "/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) > 1 and str(env.root) in parts[1]:
            subprocess.run(["umount", "-l", parts[1]], capture_output=True, check=False)
    for line in run("losetup", "-a").splitlines():
        if str(env.root) in line:
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True, check=False)
    for pidfile in _own_pidfiles(env.prefix):  # dnsmasq of a network pveguard made on a test bridge
        pid = pidfile.read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline")
        if pid.isdigit() and cmdline.exists() and b"dnsmasq" in cmdline.read_bytes():
            subprocess.run(["kill", pid], capture_output=True, check=False)
        pidfile.unlink(missing_ok=True)
        pidfile.with_suffix(".leases").unlink(missing_ok=True)
    for table in _own_tables(env.prefix):
        subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True, check=False)
    for snap in lxc_gateway.RUN_DIR.glob(f"*{lxc_isolation.table_name(env.prefix)}*"):
        snap.unlink(missing_ok=True)
    for line in run("ip", "-o", "link").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(env.prefix):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    shutil.rmtree(env.root, ignore_errors=True)


@pytest.fixture(scope="module")
def lxcfs() -> Iterator[bool]:
    """lxcfs mounted at /var/lib/lxcfs (as on PVE); started here when it is not running, stopped after."""
    if (LXCFS_DIR / "proc/meminfo").exists():
        yield True
        return
    if shutil.which("lxcfs") is None or os.geteuid() != 0:
        yield False
        return
    LXCFS_DIR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["lxcfs", str(LXCFS_DIR)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if (LXCFS_DIR / "proc/meminfo").exists():
            break
        time.sleep(0.1)
    try:
        yield (LXCFS_DIR / "proc/meminfo").exists()
    finally:
        stop(proc)
        if any(line.split()[1] == str(LXCFS_DIR) for line in Path("/proc/self/mounts").read_text().splitlines()):
            subprocess.run(["umount", "-l", str(LXCFS_DIR)], check=False)


@pytest.fixture
def lxc_env(lxcfs: bool) -> Iterator[LxcEnv]:
    reason = lxc_skip_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's 0700 basetemp: an unprivileged container's mapped root must be able to
    # reach its lxcpath, as it can reach /var/lib/lxc.
    root = Path(tempfile.mkdtemp(prefix="pveguard-lxc-", dir="/var/tmp"))
    root.chmod(0o755)
    target = LxcTarget(lxcpath=str(root / "lxc"), disk_dir=str(root / "disks"), template_cache=str(TEMPLATE_CACHE))
    env = LxcEnv(LxcBackend(target), root, prefix=f"pgt{secrets.token_hex(2)}")
    try:
        yield env
    finally:
        _cleanup(env)
