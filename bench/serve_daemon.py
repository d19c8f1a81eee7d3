"""`pveguard serve` against a 5,000-guest pvesim with a 15 s poll (issue #15's benchmark).

1. pvesim in its own process (3 nodes, --guests N, seed 1); `pveguard apply --yes` creates the
   strategy's four service containers there (so the status has live usage to show).
   Their health checks are left out: they run over ssh to the node, which pvesim does not have.
2. `pveguard serve` in its own process, every job on (monitor every 15 s, watchdog every 10 s,
   backups check every 5 min, audit, certificates, guard state). After a warm-up, the daemon's
   CPU (utime+stime of the daemon and of its finished child jobs, from /proc) and RSS (VmRSS every
   second) over --minutes.
3. `GET /api/v1/status` with a viewer token at 50 concurrent connections for --load-seconds with
   wrk (`wrk -t2 -c50 -d30s --latency`): p50 / p99 latency and requests per second, while the
   daemon keeps polling.

Scratch state directory; its ledger anchors to a plain file (PVEGUARD_LEDGER_ANCHORS=file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return own, children


def descendants(pid: int) -> list[int]:
    """Live child processes of pid, recursively (the worker process, running child jobs)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += [int(child), *descendants(int(child))]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and its reaped children, plus those of its live descendants."""
    own, reaped = cpu_seconds(pid)
    total = own + reaped
    for child in descendants(pid):
        try:
            c_own, c_reaped = cpu_seconds(child)
        except FileNotFoundError:
            continue
        total += c_own + c_reaped
    return total


def tree_rss(pid: int) -> tuple[float, float]:
    """(RSS of pid, RSS of pid + its live descendants) in MiB."""
    main = rss_mib(pid)
    rest = 0.0
    for child in descendants(pid):
        try:
            rest += rss_mib(child)
        except FileNotFoundError:
            continue
    return main, main + rest


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=5000)
    ap.add_argument("--poll", default="15s")
    ap.add_argument("--warmup", type=float, default=45.0, help="seconds before measuring")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--load-seconds", type=int, default=30)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        info = tmp / "sim.json"
        sim_port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pvesim", "--port", str(sim_port), "--nodes", "3", "--guests", str(args.guests),
             "--seed", "1", "--info-file", str(info), "--task-seconds", "vzcreate=0.2", "--task-seconds",
             "vzstart=0.1", "--task-seconds", "download=0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sim_pid = procs[-1].pid
        deadline = time.monotonic() + 120
        while not (info.exists() and info.read_text().strip()):
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise SystemExit("pvesim did not start (is the PVE API schema available?)")
            time.sleep(0.1)
        sim = json.loads(info.read_text())
        from pveguard.strategy.defaults import render

        doc = yaml.safe_load(render())
        doc["monitoring"]["poll_interval"] = args.poll
        # pvesim has no sshd on its node addresses: health checks inside the containers (pct exec
        # over ssh) cannot run there, and the watchdog would keep restarting healthy containers
        for c in doc["containers"]:
            c["health_checks"] = []
        strategy = tmp / "strategy.yaml"
        strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
        env = {**os.environ, "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(tmp / "state"),
               "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": f"127.0.0.1:{sim_port}",
               "PVEGUARD_PVE_TOKEN": sim["token"], "PVEGUARD_PVE_VERIFY_SSL": "0",
               "PVEGUARD_PVE_POLL_INTERVAL": "0.1", "PVEGUARD_LEDGER_ANCHORS": "file",
               "PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY": "0", "COLUMNS": "200"}
        pg = [sys.executable, "-m", "pveguard"]
        t0 = time.monotonic()
        done = subprocess.run([*pg, "apply", "--yes"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"apply failed:\n{done.stdout}\n{done.stderr}")
        print(f"pvesim {args.guests} guests; apply created the service containers in {time.monotonic() - t0:.1f}s",
              flush=True)
        token = json.loads(subprocess.run([*pg, "api-token", "create", "bench", "--role", "viewer", "--json"],
                                          env=env, capture_output=True, text=True, check=True).stdout)["secret"]
        port = free_port()
        log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed in finally with the process
        daemon = subprocess.Popen([*pg, "serve", "--listen", f"127.0.0.1:{port}"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        procs.append(daemon)
        url = f"http://127.0.0.1:{port}"
        while b"listening on" not in (tmp / "serve.log").read_bytes():
            if daemon.poll() is not None:
                raise SystemExit((tmp / "serve.log").read_text())
            time.sleep(0.1)

        def status() -> dict[str, Any]:
            req = urllib.request.Request(url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return dict(json.loads(r.read()))

        time.sleep(args.warmup)
        st = status()
        print(f"warm-up {args.warmup:.0f}s: {st['guests']['total']} guests, {len(st['containers'])} service "
              f"containers, jobs: " + ", ".join(f"{n}={j['runs']} runs ok={j['last_ok']}"
                                                 for n, j in st["jobs"].items()), flush=True)
        own0, _ = cpu_seconds(daemon.pid)
        all0 = tree_cpu(daemon.pid)
        sim0 = sum(cpu_seconds(sim_pid))
        polls0 = st["jobs"]["monitor"]["runs"]
        rss: list[float] = []
        rss_all: list[float] = []
        load0 = os.getloadavg()[0]
        start = time.monotonic()
        while time.monotonic() - start < args.minutes * 60:
            main_rss, whole = tree_rss(daemon.pid)
            rss.append(main_rss)
            rss_all.append(whole)
            time.sleep(1.0)
        wall = time.monotonic() - start
        own1, _ = cpu_seconds(daemon.pid)
        all1 = tree_cpu(daemon.pid)
        sim1 = sum(cpu_seconds(sim_pid))
        st = status()
        polls = st["jobs"]["monitor"]["runs"] - polls0
        print(f"\nidle serving over {wall:.0f}s ({polls} polls of {args.guests} guests, poll {args.poll}):")
        print(f"  serving process CPU {own1 - own0:.2f}s = {100 * (own1 - own0) / wall:.2f}% of one core; "
              f"with its worker and child jobs {all1 - all0:.2f}s = {100 * (all1 - all0) / wall:.2f}%")
        print(f"  RSS serving process mean {sum(rss) / len(rss):.0f} MiB, max {max(rss):.0f} MiB; with worker and "
              f"child jobs mean {sum(rss_all) / len(rss_all):.0f} MiB, max {max(rss_all):.0f} MiB")
        print(f"  machine load average (1 min) {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
              f"({os.cpu_count()} CPUs)")
        print(f"  pvesim CPU {sim1 - sim0:.2f}s ({100 * (sim1 - sim0) / wall:.2f}%)")
        print("  jobs: " + ", ".join(f"{n}: runs {j['runs']} failures {j['failures']}" for n, j in st["jobs"].items()))
        for n, j in st["jobs"].items():
            if j["last_error"]:
                print(f"  {n} last error: {j['last_error']}")

        cmd = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.load_seconds}s", "--latency",
               "-H", f"Authorization: Bearer {token}", url + "/api/v1/status"]
        shown = " ".join(cmd).replace(token, "$TOKEN")
        print(f"\nload: {shown}", flush=True)
        size = len(json.dumps(status()))
        own0, _ = cpu_seconds(daemon.pid)
        load0 = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        own1, _ = cpu_seconds(daemon.pid)
        print(f"machine load average (1 min) {load0:.1f} before the load, {os.getloadavg()[0]:.1f} after")
        print(out)
        lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
        rps = re.search(r"Requests/sec:\s+(\S+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        print(f"GET /api/v1/status ({size} bytes): p50 {lat.get('50')} p99 {lat.get('99')} "
              f"{rps.group(1) if rps else '?'} req/s, non-2xx {errors.group(1) if errors else 0}, "
              f"daemon CPU during the load {100 * (own1 - own0) / args.load_seconds:.0f}% of one core")
        print(f"daemon RSS after the load {rss_mib(daemon.pid):.0f} MiB")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
