"""How long the LXC backend's verbs take on this host, for N small real containers.

Run as root:  .venv/bin/python bench/lxc_lifecycle.py --count 10
Creates a private lxcpath under /var/tmp and one bridge (pgbench<hex>), N containers (128 MiB,
1 core, 1G disk, two VLANs), and removes all of it at the end, also on failure. The template comes
from the test cache (built once with debootstrap; --cold builds a fresh one into a temporary cache
and reports that time too).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pveguard.backends import lxc_template
from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.lxc import LxcBackend
from pveguard.strategy.models import LxcTarget

CACHE = Path("/var/cache/pveguard-tests/lxc-templates")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="also time a template build from scratch")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pveguard-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    bridge = f"pgbench{secrets.token_hex(2)}"
    cache = root / "templates" if args.cold else CACHE
    rows: list[tuple[str, str]] = []
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    b = LxcBackend(LxcTarget(lxcpath=str(root / "lxc"), disk_dir=str(root / "disks"), template_cache=str(cache)))
    try:
        if args.cold or lxc_template.find(cache, "debian-12-standard") is None:
            secs, path = timed(lambda: lxc_template.ensure(cache, "debian-12-standard"))
            rows.append(("template build (debootstrap + zstd)", f"{secs:.1f} s, {path.stat().st_size / 2**20:.0f} MiB"))
        creates, starts = [], []
        guests = []
        for i in range(args.count):
            spec = GuestSpec(name=f"bench-{i}", role="bench", cores=1, memory_mib=128, swap_mib=0, disk_gib=1,
                             net=NetSpec(bridge=bridge, vlan=10 + i % 2, ip=f"10.250.{10 + i % 2}.{10 + i}/24"))
            secs, g = timed(lambda spec=spec: b.create(spec))  # type: ignore[misc]
            creates.append(secs)
            guests.append(g)
        for g in guests:
            secs, _ = timed(lambda g=g: b.start(g))  # type: ignore[misc]
            starts.append(secs)
        list_s = min(timed(b.list_guests)[0] for _ in range(5))
        b.stats()
        time.sleep(1)
        stats_s = min(timed(b.stats)[0] for _ in range(5))
        exec_s = min(timed(lambda: b.exec(guests[0], ["true"]))[0] for _ in range(5))
        upd_s = timed(lambda: b.update(guests[0], {"memory": 192}))[0]
        destroys = [timed(lambda g=g: b.destroy(g))[0] for g in guests]  # type: ignore[misc]
        n = args.count
        rows += [
            (f"create (1G disk from template), median of {n}", f"{statistics.median(creates):.2f} s"),
            (f"start incl. systemd boot wait, median of {n}", f"{statistics.median(starts):.2f} s"),
            (f"list_guests, {n} running (best of 5)", f"{list_s * 1000:.0f} ms"),
            (f"stats sweep, {n} running (best of 5)", f"{stats_s * 1000:.0f} ms"),
            ("exec `true` (lxc-attach, best of 5)", f"{exec_s * 1000:.0f} ms"),
            ("live memory update (cgroup write + config)", f"{upd_s * 1000:.0f} ms"),
            (f"destroy (stop + remove), median of {n}", f"{statistics.median(destroys):.2f} s"),
        ]
    finally:
        lxcpath = root / "lxc"
        names = subprocess.run(["lxc-ls", "-P", str(lxcpath), "-1"], capture_output=True, text=True).stdout.split()
        for name in names:
            subprocess.run(["lxc-stop", "-P", str(lxcpath), "-n", name, "-k"], capture_output=True, check=False)
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(bridge):
                subprocess.run(["ip", "link", "del", name], check=False)
        for line in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines():
            if str(root) in line:
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        shutil.rmtree(root, ignore_errors=True)
    print("| step | time |\n|---|---:|")
    for step, value in rows:
        print(f"| {step} | {value} |")


if __name__ == "__main__":
    main()
