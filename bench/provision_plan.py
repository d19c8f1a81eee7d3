"""Benchmark: `pveguard plan` for 1,000 desired containers against a 10,000-guest pvesim cluster.

Two cases, each run as the real CLI (`python -m pveguard plan --json`, a subprocess, so Python's start-up
is included) against pvesim over HTTPS, with the API calls counted by pvesim (GET /_sim/calls):

* fresh:     none of the 1,000 exists yet among 10,000 foreign guests -> 1,000 creates
* converged: the 1,000 exist (managed, matching) among the 10,000      -> 1,000 unchanged

Run:  .venv/bin/python bench/provision_plan.py [--desired 1000] [--guests 10000] [--nodes 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pveguard.backends.proxmox import ProxmoxBackend, PveSettings
from pveguard.provision.desired import desired_state
from pveguard.strategy.models import Strategy
from pvesim.testing import running

# A benchmark's scratch state dir must be removable afterwards and must not write to this
# machine's journal: its ledger anchors only to a plain file (as the tests do, tests/conftest.py).
os.environ.setdefault("PVEGUARD_LEDGER_ANCHORS", "file")
os.environ.setdefault("PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY", "0")

INSTANCE = "bench00000001"  # the installation whose containers make_managed writes


def strategy_doc(n: int) -> dict[str, Any]:
    roles = ["monitoring", "backup", "devtools", "gateway"]
    return {"version": 1, "target": {"instance": INSTANCE}, "containers": [
        {"name": f"svc-{i:04d}", "role": roles[i % 4], "resources": {"cores": 1 + i % 2, "memory": "512M",
                                                                      "storage": "8G"},
         "startup": {"order": 1 + i % 4}} for i in range(n)]}


def make_managed(sim: Any, doc: dict[str, Any]) -> None:
    """Turn existing LXC guests into the strategy's managed containers (white-box, in the sim's state).

    Their configs are written the way PVE stores what `pveguard apply` would have created, so the plan
    finds them unchanged; creating 1,000 through the API would only benchmark pvesim's task runner.
    """
    backend = ProxmoxBackend(PveSettings(mode="https"), api=object())
    desired = desired_state(Strategy.model_validate(doc), INSTANCE)
    with sim.sim.lock:
        lxc = sorted((g for g in sim.sim.guests.values() if g.type == "lxc"), key=lambda g: g.vmid)
        assert len(lxc) >= len(desired), "not enough LXC guests in the sim"
        for g, d in zip(lxc, desired, strict=False):
            p = backend.create_params(d.spec, g.vmid, "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
            p.pop("vmid"), p.pop("ostemplate")
            p["rootfs"] = f"local-lvm:vm-{g.vmid}-disk-0,size={d.spec.disk_gib}G"
            p["net0"] += f",hwaddr=BC:24:11:00:{g.vmid // 256 % 256:02X}:" \
                f"{g.vmid % 256:02X},type=veth"
            keep = {k: g.config[k] for k in ("arch", "ostype") if k in g.config}
            g.config.clear()
            g.config.update(keep, **p)
            g.touch()
        sim.sim.changed()


def run_plan(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pveguard", "plan", "--json"], env=env, capture_output=True,
                       text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"plan failed: {p.stderr}")
    return wall, json.loads(p.stdout)


def measure(sim: Any, env: dict[str, str], repeat: int) -> dict[str, Any]:
    walls, calls = [], None
    counts = None
    for _ in range(repeat):
        sim.control("DELETE", "/calls")
        wall, plan = run_plan(env)
        walls.append(wall)
        c = sim.control("GET", "/calls")
        calls, counts = c["total"], plan["counts"]
        per = c["calls"]
    return {"wall_median_s": round(statistics.median(walls), 2), "wall_min_s": round(min(walls), 2),
            "api_calls": calls, "calls_by_path": per, "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--desired", type=int, default=1000)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    doc = strategy_doc(args.desired)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pveguard-bench-") as tmp, \
            running(nodes=args.nodes, guests=args.guests, seed=1) as sim:
        Path(tmp, "strategy.yaml").write_text(yaml.safe_dump(doc))
        env = {**os.environ, "PVEGUARD_STRATEGY": f"{tmp}/strategy.yaml", "PVEGUARD_STATE_DIR": f"{tmp}/state",
               "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
               "PVEGUARD_PVE_VERIFY_SSL": "0", "PYTHONWARNINGS": "ignore"}
        total = len(sim.api("GET", "/cluster/resources", {"type": "vm"})[2]["data"])
        results["fresh"] = measure(sim, env, args.repeat)
        make_managed(sim, doc)
        results["converged"] = measure(sim, env, args.repeat)
    print(f"cluster: {total} guests on {args.nodes} nodes; desired: {args.desired} containers; "
          f"median of {args.repeat} runs of `pveguard plan --json` (subprocess, incl. Python start-up)")
    print("| case | plan result | wall time (median / min) | API calls |")
    print("|---|---|---|---|")
    for case, r in results.items():
        c = r["counts"]
        what = ", ".join(f"{v} {k}" for k, v in c.items() if v)
        print(f"| {case} | {what} | {r['wall_median_s']} s / {r['wall_min_s']} s | {r['api_calls']} "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(r['calls_by_path'].items()))}) |")


if __name__ == "__main__":
    main()
