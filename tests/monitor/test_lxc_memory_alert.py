"""Done-when on real LXC: a container running a memory hog past 85 % of its limit fires the memory
alert (LXC backend's one-sweep stats() -> monitor -> webhook). Needs root and the lxc tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.monitor.alerts import Rule
from pveguard.monitor.collector import BackendStatsSource
from pveguard.monitor.engine import Monitor, load_states
from pveguard.monitor.notify import WebhookNotifier
from pveguard.store import Store
from pveguard.strategy.models import LxcTarget

from .receivers import webhook_receiver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="real LXC containers need root"),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="lxc tools missing (apt-get install lxc)"),
]

BRIDGE = "pvgmon0"
VMID = 9710
TEMPLATES = Path(os.environ.get("PVEGUARD_TEST_CACHE", "/var/cache/pveguard-tests")) / "lxc-templates"


@pytest.fixture
def backend() -> Iterator[Any]:
    from pveguard.backends.lxc import LxcBackend

    # Not under pytest's 0700 basetemp: when /etc/subuid grants root a range the container is
    # unprivileged, and its mapped root must be able to reach its lxcpath (as tests/lxc do).
    root = Path(tempfile.mkdtemp(prefix="pveguard-mon-", dir="/var/tmp"))
    root.chmod(0o755)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    b = LxcBackend(LxcTarget(lxcpath=str(root / "lxc"), template_cache=str(TEMPLATES),
                             disk_dir=str(root / "disks")))
    try:
        yield b
    finally:
        for g in b.list_guests():
            try:
                b.stop(g)
            finally:
                b.destroy(g)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_memory_hog_fires_the_memory_alert(backend: Any) -> None:
    spec = GuestSpec(name="pvgmon-hog", role="test", cores=1, memory_mib=256, swap_mib=0, disk_gib=1,
                     net=NetSpec(bridge=BRIDGE, ip="10.251.77.2/24", firewall=False), vmid=VMID)
    guest = backend.create(spec)
    backend.start(guest)
    clock = time.time
    rules = [Rule("memory", "memory", 85, sustain=2, hysteresis=5, renotify=0)]
    with webhook_receiver() as hook:
        mon = Monitor(Store(Path(backend.lxcpath).parent / "state"),
                      BackendStatsSource(backend, [spec.name], clock=clock), rules,
                      [WebhookNotifier(hook.url, name="hook")], clock=clock)
        res = mon.poll()
        target = f"lxc/{VMID}"
        base = res.derived[target].values["memory"]
        assert base < 60, f"the idle container already uses {base:.1f}% of its memory"
        assert load_states(mon.store) == {}
        # hold anonymous memory up to ~93 % of the limit: tail keeps a newline-free stream in memory
        # until EOF, which the sleep delays
        hog_mib = int(256 * (0.93 - base / 100))
        started = backend.exec(guest, ["sh", "-c", f"setsid sh -c '(head -c {hog_mib}M /dev/zero; sleep 600) | tail' "
                                                   "</dev/null >/dev/null 2>&1 & sleep 1; ps -eo args"], timeout=30)
        assert started.ok and "head -c" in started.stdout, started
        deadline = time.monotonic() + 60
        seen: list[float] = []
        while time.monotonic() < deadline and not hook.requests:
            time.sleep(1)
            res = mon.poll()
            seen.append(res.derived[target].values.get("memory", -1))
        assert hook.requests, f"no memory alert; memory % seen: {seen}"
        (body,) = hook.bodies()
        assert body["rule"] == "memory" and body["target"] == target and body["kind"] == "firing"
        assert body["value"] >= 85
        assert load_states(mon.store)[("memory", target)].state == "firing"
