"""Crash -> running-and-healthy on real LXC: `pveguard recover` (loop) against the seed's cron watchdog.

Run as root:  flock /tmp/pveguard-slow.lock .venv/bin/python bench/recover_crash.py --crashes 10

One small container (1 core, 256 MiB, 1G disk) made by `pveguard apply` on a private lxcpath and a
bridge this script creates, with one health check (its critical service: `systemctl is-active
systemd-journald` inside). Then, alternately on that same container, --crashes times each:

* **pveguard**: `pveguard recover` runs as a loop the whole time (default interval 10 s; on LXC it also
  wakes when lxc-monitor reports a container STOPPED). kill -9 of the container's init.
* **seed cron script**: the container in `pveguard maintenance` (the loop leaves it alone); the seed's
  procedure as a shell script (`seed-watchdog.sh` below: a container that is not running is
  stopped, started and its critical services checked), fired at every minute boundary as cron
  does. kill -9 of init at a uniformly random moment in the rest of the current minute.

The time measured is kill -9 -> the container runs AND its health check passes, as an observer
outside both watchers sees it (lxc-info, then lxc-attach of the check, every 0.2 s). Everything
made is removed at the end, also on failure. Prints the Markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("PVEGUARD_LEDGER_ANCHORS", "file")
os.environ.setdefault("PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY", "0")

CACHE = Path("/var/cache/pveguard-tests/lxc-templates")
NAME = "pgrb-web"
CHECK = ["systemctl", "is-active", "--quiet", "systemd-journald"]
HA_ROW = ("PVE HA (documented, not measured here)", "≈ 120", "",
          "pve-docs `ha-manager.adoc` (<https://pve.proxmox.com/pve-docs/ha-manager.1.html>): \"ha-manager has "
          "typical error detection and failover times of about 2 minutes\"; "
          "needs a quorate cluster of 3 nodes")

# The seed's emergency procedure for container failure, as a cron job would run it (plain LXC here;
# on PVE the same with `pct status/stop/start/exec`).
SEED_SCRIPT = """#!/bin/sh
# seed watchdog: a container that is not running gets stopped, started and its critical services checked
LXCPATH="$1"; CT="$2"; shift 2   # the rest: the critical-service check to run inside
state=$(lxc-info -P "$LXCPATH" -n "$CT" -s -H 2>/dev/null)
[ "$state" = RUNNING ] && exit 0
echo "$(date +%s.%N) $CT is $state: restarting"
lxc-stop -P "$LXCPATH" -n "$CT" -k >/dev/null 2>&1
lxc-start -P "$LXCPATH" -n "$CT" || { echo "start failed"; exit 1; }
lxc-wait -P "$LXCPATH" -n "$CT" -s RUNNING -t 30
i=0
while [ $i -lt 30 ]; do
    if lxc-attach -P "$LXCPATH" -n "$CT" --clear-env --set-var PATH=/usr/sbin:/usr/bin:/sbin:/bin -- "$@"; then
        echo "$(date +%s.%N) $CT services ok"; exit 0
    fi
    i=$((i + 1)); sleep 1
done
echo "$(date +%s.%N) $CT services FAILED"; exit 1
"""


def sh(*argv: str, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, env=env, timeout=600)


class Bench:
    def __init__(self, root: Path, bridge: str) -> None:
        self.root, self.bridge = root, bridge
        self.lxcpath = root / "lxc"
        self.strategy = root / "strategy.yaml"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
                    "PVEGUARD_STRATEGY": str(self.strategy), "PVEGUARD_STATE_DIR": str(root / "state")}
        self.ct = ""
        self.cron_on = threading.Event()
        self.cron_log = root / "cron.log"
        self.done = threading.Event()

    def pveguard(self, *argv: str) -> subprocess.CompletedProcess[str]:
        proc = sh(sys.executable, "-m", "pveguard", *argv, env=self.env)
        if proc.returncode != 0:
            raise SystemExit(f"pveguard {' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def setup(self) -> None:
        doc: dict[str, Any] = {
            "version": 1,
            "network": {"bridge": self.bridge, "container_vlan": 31},
            "containers": [{"name": NAME, "role": "bench", "onboot": True,
                            "resources": {"cores": 1, "memory": "256M", "swap": "256M", "storage": "1G"},
                            "network": {"ip": "10.250.31.21/24"},
                            "health_checks": [{"type": "command", "command": CHECK, "interval": "30s"}]}],
            # budget wide enough for the bench's crashes (the default is 3 per hour, then an alert)
            "emergency": {"container_failure": {"max_restarts": 100, "window": "1h", "backoff": "0s"}},
            "target": {"backend": "lxc", "lxc": {"lxcpath": str(self.lxcpath), "disk_dir": str(self.root / "disks"),
                                                 "template_cache": str(CACHE)}},
        }
        self.strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.pveguard("apply", "--yes")
        names = sh("lxc-ls", "-P", str(self.lxcpath), "-1").stdout.split()
        if len(names) != 1:
            raise SystemExit(f"expected one container after apply, found {names}")
        self.ct = names[0]
        (self.root / "seed-watchdog.sh").write_text(SEED_SCRIPT)
        (self.root / "seed-watchdog.sh").chmod(0o755)

    def init_pid(self) -> int:
        out = sh("lxc-info", "-P", str(self.lxcpath), "-n", self.ct, "-p", "-H").stdout.strip()
        return int(out) if out.isdigit() else 0

    def healthy(self) -> bool:
        if sh("lxc-info", "-P", str(self.lxcpath), "-n", self.ct, "-s", "-H").stdout.strip() != "RUNNING":
            return False
        return sh("lxc-attach", "-P", str(self.lxcpath), "-n", self.ct, "--clear-env", "--set-var",
                  "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--", *CHECK).returncode == 0

    def crash_and_time(self, limit: float) -> float:
        """kill -9 of init; seconds until running and healthy again, as seen from outside."""
        pid = self.init_pid()
        if not pid or not self.healthy():
            raise SystemExit("the container is not running and healthy before the crash")
        t0 = time.monotonic()
        os.kill(pid, 9)
        while self.init_pid() == pid:  # gone first
            time.sleep(0.05)
        while time.monotonic() - t0 < limit:
            if self.init_pid() not in (0, pid) and self.healthy():
                return time.monotonic() - t0
            time.sleep(0.2)
        raise SystemExit(f"not running and healthy {limit:.0f} s after the crash")

    def cron(self) -> None:
        """Fire the seed script at every minute boundary while cron_on is set (as cron does)."""
        script = str(self.root / "seed-watchdog.sh")
        while not self.done.is_set():
            if self.done.wait(60 - time.time() % 60):
                return
            if self.cron_on.is_set():
                proc = sh(script, str(self.lxcpath), self.ct, *CHECK)
                with self.cron_log.open("a") as f:
                    f.write(f"{time.time():.3f} fired rc={proc.returncode}\n{proc.stdout}{proc.stderr}")


def cleanup(root: Path, bridge: str) -> None:
    lxcpath = root / "lxc"
    for name in sh("lxc-ls", "-P", str(lxcpath), "-1").stdout.split():
        sh("lxc-stop", "-P", str(lxcpath), "-n", name, "-k")
    sh("lxc-monitor", "-P", str(lxcpath), "--quit")
    for line in sh("cat", "/proc/self/mounts").stdout.splitlines():
        parts = line.split()
        if len(parts) > 1 and str(root) in parts[1]:
            sh("umount", "-l", parts[1])
    for line in sh("losetup", "-a").stdout.splitlines():
        if str(root) in line:
            sh("losetup", "-d", line.split(":", 1)[0])
    for pidfile in Path("/run/pveguard").glob(f"dnsmasq-{bridge}*.pid"):
        pid = pidfile.read_text().strip()
        if pid.isdigit() and b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes():
            sh("kill", pid)
        pidfile.unlink(missing_ok=True)
    for line in sh("nft", "list", "tables", "ip").stdout.splitlines():
        if bridge in line:
            sh("nft", "delete", "table", "ip", line.split()[-1])
    for line in sh("ip", "-o", "link").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(bridge):
            sh("ip", "link", "del", name)
    shutil.rmtree(root, ignore_errors=True)


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crashes", type=int, default=10, help="crashes per watcher (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="random seed for the cron-side crash moments")
    ap.add_argument("--no-cron", action="store_true", help="measure pveguard only")
    ap.add_argument("--no-events", action="store_true",
                    help="the loop without lxc-monitor wake-ups (PVEGUARD_RECOVER_EVENTS=0): interval sweeps only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (real LXC containers and a bridge)")
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="pveguard-rb-", dir="/var/tmp"))
    root.chmod(0o755)
    bridge = f"pgrb{secrets.token_hex(2)}"
    sh("ip", "link", "add", bridge, "type", "bridge", check=True)
    sh("ip", "link", "set", bridge, "up", check=True)
    bench = Bench(root, bridge)
    loop: subprocess.Popen[bytes] | None = None
    cron: threading.Thread | None = None
    started = time.monotonic()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        bench.setup()
        loop_env = {**bench.env, "PVEGUARD_RECOVER_EVENTS": "0" if args.no_events else "1"}
        with (root / "recover.log").open("wb") as log:
            loop = subprocess.Popen([sys.executable, "-m", "pveguard", "recover"], env=loop_env, stdout=log,
                                    stderr=subprocess.STDOUT)
        cron = threading.Thread(target=bench.cron, daemon=True)
        cron.start()
        time.sleep(3)  # the loop's first sweep
        for i in range(args.crashes):
            # pveguard's turn: the cron script is off
            bench.cron_on.clear()
            bench.pveguard("maintenance", NAME, "off")
            ours.append(bench.crash_and_time(90))
            if args.no_cron:
                print(f"crash {i + 1}: pveguard {ours[-1]:.1f} s", file=sys.stderr, flush=True)
                time.sleep(rnd.uniform(0, 10))  # a crash at any moment of the loop's interval
                continue
            # the seed script's turn: the loop leaves the container alone (maintenance), cron fires it
            bench.pveguard("maintenance", NAME, "on", "--reason", "bench: the seed's cron script's turn")
            bench.cron_on.set()
            left = 60 - time.time() % 60
            if left < 3:  # too close to the boundary to be sure which firing sees it
                time.sleep(left + 1)
                left = 60 - time.time() % 60
            time.sleep(rnd.uniform(0, left - 2))
            theirs.append(bench.crash_and_time(150))
            print(f"crash {i + 1}: pveguard {ours[-1]:.1f} s, seed cron script {theirs[-1]:.1f} s",
                  file=sys.stderr, flush=True)
        bench.cron_on.clear()
    finally:
        bench.done.set()
        if cron is not None:
            cron.join(120)  # a firing in flight finishes before its container goes away
        if loop is not None:
            loop.terminate()
            try:
                loop.wait(30)
            except subprocess.TimeoutExpired:
                loop.kill()
                loop.wait()
        if os.environ.get("PVEGUARD_BENCH_KEEP_LOGS"):
            for f in ("recover.log", "cron.log"):
                if (root / f).exists():
                    shutil.copy(root / f, Path(os.environ["PVEGUARD_BENCH_KEEP_LOGS"]) / f)
        cleanup(root, bridge)
    n = args.crashes
    wall = time.monotonic() - started
    print(f"{n} crashes each (kill -9 of init), alternating on one container; wall {wall:.0f} s\n")
    print("| watcher | median (s) | p90 (s) | max (s) | how it detects |\n|---|---:|---:|---:|---|")
    how = "one listing per sweep, every 10 s" + ("" if args.no_events else
                                                 " and at once on an lxc-monitor STOPPED event")
    label = "pveguard recover (loop" + (", PVEGUARD_RECOVER_EVENTS=0)" if args.no_events else ")")
    print(f"| {label} | {statistics.median(ours):.1f} | {p90(ours):.1f} | {max(ours):.1f} | {how} |")
    if args.no_cron:
        return
    print(f"| seed script from cron, each minute | {statistics.median(theirs):.1f} | {p90(theirs):.1f} "
          f"| {max(theirs):.1f} | lxc-info at each minute boundary |")
    print(f"| {' | '.join(HA_ROW[:2])} | | | {HA_ROW[3]} |")


if __name__ == "__main__":
    main()
