"""Benchmark: `pveguard plan` for 1,000 desired containers against a 10,000-guest pvesim cluster.

Two cases, each run as the real CLI (`python -m pveguard plan --json`, a subprocess, so Python's start-up
is included) against pvesim over HTTPS, with the API calls counted by pvesim (GET /_sim/calls):

* fresh:     none of the 1,000 exists yet among 10,000 foreign guests -> 1,000 creates
* converged: the 1,000 exist (managed, matching) among the 10,000      -> 1,000 unchanged
             (their firewall written by one untimed `pveguard apply`; RBAC off, see strategy_doc; the run
             stops unless every converged plan has nothing to change)

at each network latency of --latency (pvesim waits that many ms before answering every API call, as a node
over a LAN or WAN does), and with --old DIR also the same plan run by another checkout's code (e.g. the code
before the speed work: `git worktree add /tmp/pveguard-old 6b58b3a`) against the same sim in the same run,
alternating old and new, so a loaded machine slows both alike. Each version runs once untimed first
(bytecode caches written, as an installed pveguard has them).

With --rbac, RBAC stays on (the default): the converged plan also checks each running container's token
file over one ssh session per node (a fake ssh here: the node's commands run on this machine as that node):
`lxc-attach -n VMID --clear-env -- grep -q -s -F -x -e PVE_TOKEN_ID=... /etc/pveguard/pve-token` each, where
the node has lxc-attach (what `pct exec VMID --keep-env 0` runs; the code before this change, and --old, ran
`pct exec` itself).
pvesim's own `pct` and `lxc-attach` are a Python process per call (~70 ms of CPU on THIS machine, the
emulator's cost, not PVE's); on a real node a `pct exec` is a Perl start (~0.3 s) and lxc-attach a C program
(5.8 ms a call measured with the real one, bench/lxc_attach_cost.sh; the model's default is 10 ms) on the
node's CPUs. --pct-ms MS and --attach-ms MS model those: each token-file check sleeps MS and
answers from the files the converging apply delivered (every other call still goes to pvesim's tools).
The table then also shows the plan's own CPU (the pveguard process, without ssh/sh/pct/lxc-attach).

Run:  .venv/bin/python bench/provision_plan.py [--desired 1000] [--guests 10000] [--nodes 10] [--repeat 3]
                                              [--latency 0,5,20] [--old /tmp/pveguard-old]
                                              [--rbac [--pct-ms 300 [--attach-ms 10]]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import stat
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


def strategy_doc(n: int, rbac: bool = False) -> dict[str, Any]:
    roles = ["monitoring", "backup", "devtools", "gateway"]
    # RBAC off unless --rbac: its token-file check is one `pct exec` per running container (over ssh, one session
    # per node), which pvesim's fake pct (a Python process per call) cannot time as a node would (--pct-ms models
    # it); see docs/benchmarks.md
    access = {} if rbac else {"security": {"access": {"rbac": False}}}
    return {"version": 1, "target": {"instance": INSTANCE}, **access, "containers": [
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


def node_tools(sim: Any, tmp: str, pct_ms: float, attach_ms: float = 0) -> dict[str, str]:
    """PATH and PVESIM_INFO for `pct` and `lxc-attach` on the sim's nodes: a fake ssh (runs the command here as
    the node its address belongs to) and pvesim's pct and lxc-attach, or with pct_ms / attach_ms > 0 a model of
    each for the token-file check."""
    nodes = {r["ip"]: r["name"] for r in sim.api("GET", "/cluster/status")[2]["data"] if r["type"] == "node"}
    bindir = Path(tmp, "nodebin")
    bindir.mkdir()
    mapping = " ".join(f"{ip}={name}" for ip, name in nodes.items())
    tools = {"ssh": f"""#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -o) shift 2;; -*) shift;; *) break;; esac; done
host="${{1#*@}}"; shift
for pair in {mapping}; do [ "${{pair%%=*}}" = "$host" ] && PVESIM_NODE="${{pair#*=}}"; done
export PVESIM_NODE
exec sh -c "$*"
"""}
    sim_env = sim.env()
    real_pct = Path(sim_env["PATH"].split(os.pathsep)[0], "pct")
    if pct_ms > 0:
        # `pct exec VMID --keep-env 0 -- grep -q -s -F -x -e ID_LINE PATH` (`test -s PATH` without an expected
        # id): MS of the node's time, then the answer the sim's files give (after apply: the role's own files)
        tools["pct"] = f"""#!/bin/sh
if [ "$1" = exec ] && [ "$5" = -- ] && {{ [ "$6" = grep ] || [ "$6" = test ]; }}; then
  sleep {pct_ms / 1000:.3f}; [ -e "{tmp}/has-token/$2" ]; exit $?
fi
exec {real_pct} "$@"
"""
    if attach_ms > 0:
        # `lxc-attach -n VMID --clear-env -- grep ... PATH` (or `test -s PATH`): MS of the node's time, then the
        # sim's files' answer
        real_attach = Path(sim_env["PATH"].split(os.pathsep)[0], "lxc-attach")
        tools["lxc-attach"] = f"""#!/bin/sh
if [ "$1" = -n ] && [ "$3" = --clear-env ] && [ "$4" = -- ] && {{ [ "$5" = grep ] || [ "$5" = test ]; }}; then
  sleep {attach_ms / 1000:.3f}; [ -e "{tmp}/has-token/$2" ]; exit $?
fi
exec {real_attach} "$@"
"""
    for name, text in tools.items():
        f = bindir / name
        f.write_text(text)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}{os.pathsep}{sim_env['PATH']}", "PVESIM_INFO": sim_env["PVESIM_INFO"]}


def snapshot_tokens(sim: Any, tmp: str) -> int:
    """For the pct model: which containers hold a non-empty token file now (after the converging apply)."""
    d = Path(tmp, "has-token")
    d.mkdir(exist_ok=True)
    with sim.sim.lock:
        held = [v for v, files in sim.sim.guest_files.items() if files.get("/etc/pveguard/pve-token")]
    for v in held:
        (d / str(v)).touch()
    return len(held)


# the plan as `python -m pveguard plan --json` runs it, printing its own CPU (not its children's) at exit
SELF_CPU = ("import atexit, resource, runpy, sys\n"
            "def own():\n"
            "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    sys.stderr.write(f'pveguard-bench-self-cpu {r.ru_utime + r.ru_stime}\\n')\n"
            "atexit.register(own)\n"
            "sys.argv = ['pveguard', 'plan', '--json']\n"
            "runpy.run_module('pveguard', run_name='__main__', alter_sys=True)\n")


def converge(env: dict[str, str]) -> None:
    """`pveguard apply` once, untimed: it writes what a converged installation has beyond the containers
    (the IP set, a security group per role, each guest's firewall options and rules). The containers
    already match (make_managed), so apply changes nothing else; the plan after it must be empty."""
    p = subprocess.run([sys.executable, "-m", "pveguard", "apply", "--yes"], env=env, capture_output=True,
                       text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"apply (converging the firewall) failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")


def run_plan(env: dict[str, str]) -> tuple[float, float, float, dict[str, Any]]:
    """One `pveguard plan --json` as a user runs it: wall time (incl. Python's start-up), its CPU time with
    its children's (sh, ssh, pct), its own CPU time, the plan."""
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-c", SELF_CPU], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"plan failed: {p.stderr}")
    own = [float(x.split()[1]) for x in p.stderr.splitlines() if x.startswith("pveguard-bench-self-cpu ")]
    return wall, cpu, own[-1] if own else cpu, json.loads(p.stdout)


def measure(sim: Any, envs: dict[str, dict[str, str]], repeat: int, converged: bool) -> dict[str, dict[str, Any]]:
    """Each code version (envs: label -> environment) `repeat` times, interleaved."""
    walls: dict[str, list[float]] = {k: [] for k in envs}
    cpus: dict[str, list[float]] = {k: [] for k in envs}
    owns: dict[str, list[float]] = {k: [] for k in envs}
    out: dict[str, dict[str, Any]] = {}
    for env in envs.values():  # untimed: writes the bytecode caches, warms the sim's answers alike for each
        run_plan(env)
    for _ in range(repeat):
        for label, env in envs.items():
            sim.control("DELETE", "/calls")
            wall, cpu, own, plan = run_plan(env)
            walls[label].append(wall)
            cpus[label].append(cpu)
            owns[label].append(own)
            c = sim.control("GET", "/calls")
            if converged and (plan["changes"] or plan["counts"]["unchanged"] != len(plan["actions"])):
                raise SystemExit(f"{label}: the converged plan is not empty: counts {plan['counts']}, "
                                 f"firewall {plan['firewall']['changes'][:3]}, rbac {plan['rbac']['changes'][:3]}")
            out[label] = {"api_calls": c["total"], "calls_by_path": c["calls"], "counts": plan["counts"]}
    for label, r in out.items():
        r.update(wall_median_s=round(statistics.median(walls[label]), 2), wall_min_s=round(min(walls[label]), 2),
                 cpu_median_s=round(statistics.median(cpus[label]), 2),
                 own_cpu_median_s=round(statistics.median(owns[label]), 2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--desired", type=int, default=1000)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency", default="0", help="comma-separated ms per API call, e.g. 0,5,20")
    ap.add_argument("--old", help="another checkout (its src/ is used) to run side by side, e.g. /tmp/pveguard-old")
    ap.add_argument("--cases", default="fresh,converged")
    ap.add_argument("--rbac", action="store_true", help="RBAC on (the default): the plan checks token files too")
    ap.add_argument("--pct-ms", type=float, default=0,
                    help="with --rbac: model a node's `pct exec` for the token-file check as MS of the node's time "
                         "(0: pvesim's own pct, a Python process here per call)")
    ap.add_argument("--attach-ms", type=float, default=None,
                    help="with --rbac: model a node's `lxc-attach` for the token-file check as MS of the node's time "
                         "(default: 10 with --pct-ms, else 0: pvesim's own lxc-attach, a Python process here)")
    args = ap.parse_args()
    if args.attach_ms is None:
        args.attach_ms = 10.0 if args.pct_ms > 0 else 0.0
    latencies = [float(x) for x in args.latency.split(",")]
    cases = args.cases.split(",")
    doc = strategy_doc(args.desired, args.rbac)
    results: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pveguard-bench-") as tmp, \
            running(nodes=args.nodes, guests=args.guests, seed=1) as sim:
        Path(tmp, "strategy.yaml").write_text(yaml.safe_dump(doc))
        # bytecode cached as an installed pveguard has it (a PYTHONDONTWRITEBYTECODE=1 environment would make
        # every run compile pveguard from source: ~0.2 s), kept in the scratch dir, not in the checkouts
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env = {**base, "PYTHONPYCACHEPREFIX": f"{tmp}/pycache",
               "PVEGUARD_STRATEGY": f"{tmp}/strategy.yaml", "PVEGUARD_STATE_DIR": f"{tmp}/state",
               "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
               "PVEGUARD_PVE_VERIFY_SSL": "0", "PYTHONWARNINGS": "ignore"}
        if args.rbac:
            env.update(node_tools(sim, tmp, args.pct_ms, args.attach_ms))
        here = str(Path(__file__).resolve().parent.parent / "src")
        envs = {"this code": {**env, "PYTHONPATH": here}}
        if args.old:
            envs = {"old": {**env, "PYTHONPATH": str(Path(args.old, "src")),
                            "PVEGUARD_STATE_DIR": f"{tmp}/state-old"}, **envs}
        total = len(sim.api("GET", "/cluster/resources", {"type": "vm"})[2]["data"])
        for case in ("fresh", "converged"):
            if case == "converged":
                make_managed(sim, doc)
                converge(envs["this code"])
                if args.rbac:
                    print(f"token files delivered to {snapshot_tokens(sim, tmp)} running containers", file=sys.stderr)
            if case not in cases:
                continue
            for ms in latencies:
                sim.control("POST", "/options", {"latency": ms})
                results[(case, ms)] = measure(sim, envs, args.repeat, case == "converged")
                sim.control("POST", "/options", {"latency": 0})
    rbac = ("RBAC off" if not args.rbac else "RBAC on, token-file checks by " +
            (f"a model of pct ({args.pct_ms:g} ms a call on the node)" if args.pct_ms else "pvesim's pct (Python)") +
            " and (this code) " + (f"a model of lxc-attach ({args.attach_ms:g} ms a call)" if args.attach_ms
                                   else "pvesim's lxc-attach (Python)"))
    print(f"cluster: {total} guests on {args.nodes} nodes; desired: {args.desired} containers; {rbac}; "
          f"median of {args.repeat} runs of `pveguard plan --json` (subprocess, incl. Python start-up)")
    print("| case | latency | code | plan result | wall time (median / min) | plan's CPU (median) "
          "| of which its own | API calls |")
    print("|---|---|---|---|---|---|---|---|")
    for (case, ms), by in results.items():
        for label, r in by.items():
            c = r["counts"]
            what = ", ".join(f"{v} {k}" for k, v in c.items() if v)
            print(f"| {case} | {ms:g} ms | {label} | {what} | {r['wall_median_s']} s / {r['wall_min_s']} s | "
                  f"{r['cpu_median_s']} s | {r['own_cpu_median_s']} s | {r['api_calls']} |")
    print()
    print("API calls by path (last run of each):")
    for (case, ms), by in results.items():
        for label, r in by.items():
            per = sorted(r["calls_by_path"].items())
            print(f"* {case}, {ms:g} ms, {label}: " + ", ".join(f"{k}: {v}" for k, v in per))


if __name__ == "__main__":
    main()
