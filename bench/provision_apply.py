"""Benchmark: `pveguard apply` creating 50 containers on a pvesim cluster, at network latency.

Each run is the real CLI (`python -m pveguard apply --json`, a subprocess, Python's start-up included)
against a fresh pvesim over HTTPS (--nodes nodes, --guests foreign guests already there) whose tasks take
--create-seconds for a create (vzcreate) and --start-seconds for a start (vzstart): apply creates and
starts each container, then converges the firewall. pvesim waits --latency ms before answering every API
call (a node over a LAN or WAN). With --old DIR the same apply runs with another checkout's code (e.g. the
code before concurrent creates: `git worktree add /tmp/pveguard-old 6b58b3a`) in the same run,
alternating old and new, so a loaded machine slows both alike.

The stderr line "converging the firewall" marks the end of the creates and starts (the firewall, RBAC and
serve steps follow). The floor: the task time of 50 creates and starts split over the creates in flight
(PVEGUARD_PVE_CREATE_CONCURRENCY, 8): ceil(50 / 8) x (create + start).

Run:  .venv/bin/python bench/provision_apply.py [--creates 50] [--latency 0,5,20] [--repeat 1]
                                               [--create-seconds 2] [--start-seconds 1] [--old /tmp/pveguard-old]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pvesim.testing import running

# A benchmark's scratch state dir must be removable afterwards and must not write to this
# machine's journal: its ledger anchors only to a plain file (as the tests do, tests/conftest.py).
os.environ.setdefault("PVEGUARD_LEDGER_ANCHORS", "file")
os.environ.setdefault("PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY", "0")


def strategy_doc(n: int) -> dict[str, Any]:
    return {"version": 1, "target": {"instance": "bench00000002"}, "containers": [
        {"name": f"app-{i:03d}", "role": "app", "resources": {"cores": 1, "memory": "512M", "storage": "4G"}}
        for i in range(n)]}


def run_apply(env: dict[str, str]) -> tuple[float, float, float, dict[str, Any]]:
    """One `pveguard apply --json`: wall time (incl. Python's start-up), the time its creates were done
    (its "converging the firewall" progress line), its CPU time, the result."""
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen([sys.executable, "-m", "pveguard", "apply", "--json"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None and p.stdout is not None
    creates_done = 0.0
    err: list[str] = []
    for line in p.stderr:
        err.append(line)
        if not creates_done and "converging the firewall" in line:
            creates_done = time.perf_counter() - t0
    out = p.stdout.read()
    p.wait()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"apply failed ({p.returncode}): {''.join(err)[-3000:]}")
    return wall, creates_done, cpu, json.loads(out)["result"]


def one(args: argparse.Namespace, src: str, ms: float) -> dict[str, Any]:
    """A fresh sim and state dir, one apply of --creates containers; its time, CPU and API calls."""
    doc = strategy_doc(args.creates)
    seconds = {"vzcreate": args.create_seconds, "vzstart": args.start_seconds}
    with tempfile.TemporaryDirectory(prefix="pveguard-bench-") as tmp, \
            running(nodes=args.nodes, guests=args.guests, seed=1, task_seconds=seconds) as sim:
        Path(tmp, "strategy.yaml").write_text(yaml.safe_dump(doc))
        env = {**os.environ, "PVEGUARD_STRATEGY": f"{tmp}/strategy.yaml", "PVEGUARD_STATE_DIR": f"{tmp}/state",
               "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
               "PVEGUARD_PVE_VERIFY_SSL": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": src}
        sim.control("POST", "/options", {"latency": ms})
        wall, creates_done, cpu, result = run_apply(env)
        calls = sim.control("GET", "/calls")
        made = [g for g in sim.api("GET", "/cluster/resources", {"type": "vm"})[2]["data"]
                if str(g.get("name", "")).startswith("app-")]
    assert len(result["created"]) == args.creates and len(made) == args.creates, result
    assert len({g["vmid"] for g in made}) == args.creates
    polls = sum(v for k, v in calls["calls"].items() if k.endswith("/tasks/{upid}/status"))
    return {"wall": wall, "creates": creates_done, "cpu": cpu, "calls": calls["total"], "polls": polls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--creates", type=int, default=50)
    ap.add_argument("--guests", type=int, default=500, help="foreign guests already on the cluster")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--latency", default="0,5,20", help="comma-separated ms per API call")
    ap.add_argument("--create-seconds", type=float, default=2.0, help="pvesim's vzcreate task time")
    ap.add_argument("--start-seconds", type=float, default=1.0, help="pvesim's vzstart task time")
    ap.add_argument("--old", help="another checkout (its src/ is used) to run side by side, e.g. /tmp/pveguard-old")
    args = ap.parse_args()
    latencies = [float(x) for x in args.latency.split(",")]
    codes = {"this code": str(Path(__file__).resolve().parent.parent / "src")}
    if args.old:
        codes = {"old": str(Path(args.old, "src")), **codes}
    runs: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for ms in latencies:
            for label, src in codes.items():
                runs.setdefault((ms, label), []).append(one(args, src, ms))
    width = int(os.environ.get("PVEGUARD_PVE_CREATE_CONCURRENCY", "8"))
    task = args.create_seconds + args.start_seconds
    floor_old = args.creates * task
    floor_new = math.ceil(args.creates / width) * task
    print(f"{args.creates} creates (each created, then started) on {args.nodes} nodes with {args.guests} guests; "
          f"pvesim task times: vzcreate {args.create_seconds:g} s, vzstart {args.start_seconds:g} s; "
          f"median of {args.repeat} run(s) of `pveguard apply --json` (subprocess, incl. Python start-up)")
    print(f"task-time floor: one after another {floor_old:g} s; {width} at once "
          f"ceil({args.creates}/{width}) x {task:g} s = {floor_new:g} s")
    print("| latency | code | wall time (median) | creates and starts done at | over the task-time floor | "
          "apply's CPU | API calls | task polls |")
    print("|---|---|---|---|---|---|---|---|")
    for (ms, label), rs in runs.items():
        wall = statistics.median(r["wall"] for r in rs)
        floor = floor_old if label == "old" else floor_new
        creates = statistics.median(r["creates"] for r in rs)
        print(f"| {ms:g} ms | {label} | {wall:.1f} s | {creates:.1f} s | +{wall - floor:.1f} s | "
              f"{statistics.median(r['cpu'] for r in rs):.1f} s | {rs[-1]['calls']} | {rs[-1]['polls']} |")


if __name__ == "__main__":
    main()
