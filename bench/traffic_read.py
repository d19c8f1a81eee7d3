"""What one traffic-watch read costs (monitor/traffic.py).

PVE: a pvesim cluster (in this process) with every guest's firewall on and `log_level_in: info`, and
`--lines` dropped connections logged since the last read, spread over the guests; one read is one
`GET /nodes/{node}/firewall/log?since=` per node, paged by 1000 lines. Reported: wall time of the read
(API + parsing + store), API calls, and the same read again with nothing new (the steady state).

lxc: parsing a conntrack table of `--conntrack` entries and mapping them to 100 containers by source.

    .venv/bin/python bench/traffic_read.py --nodes 3 --guests 300 --lines 10000 --conntrack 65536
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pveguard.backends.proxmox import ProxmoxBackend, PveSettings
from pveguard.monitor.collector import ProxmoxResourcesSource
from pveguard.monitor.traffic import PveFirewallLog, TrafficWatch, parse_conntrack
from pveguard.store import Store


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--guests", type=int, default=300)
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--conntrack", type=int, default=65536)
    args = ap.parse_args()

    from pvesim import testing

    with testing.running(nodes=args.nodes, guests=args.guests, seed=5, running_share=1.0, qemu_share=0.0) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        sim.api("PUT", "/cluster/firewall/options", {"enable": 1})
        guests = sim.control("GET", "/guests")
        for g in guests:
            sim.api("PUT", f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall/options",
                    {"enable": 1, "policy_in": "DROP", "log_level_in": "info"})
        backend = ProxmoxBackend(PveSettings(mode="https"), api=sim.proxmoxer("token"))
        source = ProxmoxResourcesSource(backend)
        store = Store(Path(tmp))
        watch = TrafficWatch(store, PveFirewallLog(backend.call), every=0, learning=0)
        now = sim.sim.now()
        watch.observe(now, source.sweep())
        per = max(1, args.lines // len(guests))
        for g in guests:
            sim.control("POST", "/firewall/connect", {"vmid": g["vmid"], "direction": "in", "src": "198.51.100.9",
                                                      "dst": "10.0.0.5", "proto": "tcp", "dport": 5432,
                                                      "count": per})
        logged = per * len(guests)
        sweep = source.sweep()
        sim.control("DELETE", "/calls")
        t0 = time.perf_counter()
        view = watch.observe(sim.sim.now() + 1, sweep)
        read_ms = (time.perf_counter() - t0) * 1000
        calls = sim.control("GET", "/calls")["total"]
        counted = sum(c.dropped_total or 0 for c in view.containers)
        sim.control("DELETE", "/calls")
        t0 = time.perf_counter()
        watch.observe(sim.sim.now() + 2, sweep)
        idle_ms = (time.perf_counter() - t0) * 1000
        idle_calls = sim.control("GET", "/calls")["total"]
        store.close()
    print(f"PVE: {args.nodes} nodes, {len(guests)} guests, {logged} new log lines: read {read_ms:.0f} ms, "
          f"{calls} API calls, {counted:.0f} drops counted; next read with nothing new {idle_ms:.0f} ms, "
          f"{idle_calls} API calls")

    lines = [f"ipv4     2 tcp      6 117 TIME_WAIT src=10.0.0.{i % 100 + 2} dst=93.184.{i % 200}.{i % 250} "
             f"sport={1024 + i % 60000} dport={443 if i % 3 else 53} src=93.184.{i % 200}.{i % 250} dst=10.0.0.2 "
             f"sport=443 dport=51000 [ASSURED] mark=0 zone=0 use=2" for i in range(args.conntrack)]
    text = "\n".join(lines) + "\n"
    owner = {f"10.0.0.{i + 2}": 100 + i for i in range(100)}
    t0 = time.perf_counter()
    dests: dict[int, set[str]] = {}
    for src, dest in parse_conntrack(text):
        vmid = owner.get(src)
        if vmid is not None:
            dests.setdefault(vmid, set()).add(dest)
    ct_ms = (time.perf_counter() - t0) * 1000
    print(f"lxc: {args.conntrack} conntrack entries parsed and mapped to {len(dests)} containers "
          f"({sum(len(d) for d in dests.values())} destinations) in {ct_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
