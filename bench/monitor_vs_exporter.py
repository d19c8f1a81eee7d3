"""Side by side: one pveguard poll vs one scrape of the unmodified prometheus-pve-exporter, on the
same pvesim cluster (pvesim runs as its own process so its CPU is the "PVE node" cost).

Per size it reports, medians over the runs with their range (min-max):
  * wall time and client CPU time per poll/scrape (the polling process's CPU, measured around the call);
  * pvesim CPU time per poll/scrape (what the API side pays): the pvesim process's CPU clock, to the
    nanosecond (clock_gettime on its per-process CPU clock: all threads, those that ended too; /proc's
    utime+stime come in 10 ms ticks, coarser than a poll's share), from before the sim clock moves on to
    the next status interval until pvesim is idle again after the call: the interval's stat refresh (what
    pvestatd does on a real node every 10 s, whether anyone polls or not; its own row, "no client") plus the
    requests. Each poll/scrape pays for fresh figures, and it does not matter whether pvesim's stat
    thread or the request computed them first;
  * the cost ratio per round (each poll's cost over the node=0 scrape's in the same round), median and range;
    and the same without the interval's refresh: pvesim's CPU beyond that of the round's no-client interval
    (what the call itself added; each call then pays only for its own requests);
  * API calls per poll/scrape (pvesim's request counter);
  * agreement of the overlapping metrics (same name and `id` label) with the clock frozen.

pveguard's poll is the whole daemon cycle: the /cluster/resources sweep, rates, alert evaluation,
state and series writes in SQLite, plus rendering /metrics once. The exporter's scrape is what its
/pve?target=...&cluster=1&node=1 handler does (`collect_pve` with its default collectors); the
"node=0" row is the same without the node collectors (no per-guest config reads).

The pveguard poll runs in a worker process (this script with --worker), so that with --old DIR the
same poll by another checkout's code (e.g. `git worktree add /tmp/pveguard-old <commit>`) runs side
by side against the same sim in the same run, polls alternating; client CPU is the worker's own CPU
time around each poll. With the sim clock frozen, both workers' pve_* exposition lines must be the
same (same metrics, same samples, same values), else the run fails.

    .venv/bin/python bench/monitor_vs_exporter.py --sizes 1000 5000 10000 --runs 5 --old /tmp/pveguard-old
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
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

OVERLAP = ("pve_up", "pve_cpu_usage_ratio", "pve_cpu_usage_limit", "pve_memory_usage_bytes",
           "pve_memory_size_bytes", "pve_disk_usage_bytes", "pve_disk_size_bytes", "pve_uptime_seconds",
           "pve_network_receive_bytes_total", "pve_network_transmit_bytes_total", "pve_disk_read_bytes_total",
           "pve_disk_written_bytes_total", "pve_storage_shared", "pve_guest_info")


class Sim:
    """pvesim in a child process."""

    def __init__(self, guests: int, nodes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pvesim", "--port", "0", "--nodes", str(nodes), "--guests", str(guests),
             "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("pvesim did not start (is the PVE API schema available?)")
        self.info = json.loads(line)
        self.url = self.info["url"]
        import ssl

        self.ssl = ssl.create_default_context(cafile=self.info["cafile"])

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_sim{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ssl, timeout=60) as r:
            return json.loads(r.read())["data"]

    def cpu(self) -> float:
        """The pvesim process's CPU time in seconds, to the nanosecond: the kernel's CPU clock of that process
        (Linux: clockid ((~pid) << 3) | CPUCLOCK_SCHED, what clock_getcpuclockid(pid) gives), which counts
        every thread, those that ended too."""
        return time.clock_gettime(((~self.proc.pid) << 3) | 2)

    def settle(self, since: float) -> None:
        """Wait until pvesim is idle: its stat thread (it wakes at least once a second) has refreshed the
        interval the clock moved to at `since` (time.monotonic()) and no answer is still being sent."""
        time.sleep(max(0.0, since + 1.2 - time.monotonic()))
        for _ in range(100):
            c = self.cpu()
            time.sleep(0.1)
            if self.cpu() - c < 0.001:
                return

    def calls(self) -> int:
        return int(self.control("GET", "/calls")["total"])

    def api_kwargs(self) -> dict[str, Any]:
        user, rest = self.info["token"].split("!", 1)
        name, value = rest.split("=", 1)
        host, port = self.url.split("://", 1)[1].rsplit(":", 1)
        return {"host": host, "port": int(port), "user": user, "token_name": name, "token_value": value,
                "verify_ssl": self.info["cafile"]}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Worker:
    """A pveguard poll loop in a child process (this script --worker), with a given src/ on its path."""

    def __init__(self, sim: Sim, src: str | None, state: str) -> None:
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = os.pathsep.join([src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(
            {"api": sim.api_kwargs(), "state": state})], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            text=True)

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the pveguard poll worker died")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("error"):
            raise SystemExit(f"poll failed: {reply['error']}")
        return reply

    def poll(self) -> tuple[int, float]:
        r = self.ask("poll")
        return r["length"], r["cpu"]

    def text(self) -> str:
        return str(self.ask("text")["text"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def backend_from(kw: dict[str, Any]) -> Any:
    """The backend as the daemon opens it (backends.connect: PveSettings from the strategy's target and the
    token) from Sim.api_kwargs(), so each checkout's poll goes through its own transport, not a bare
    proxmoxer object's (imported here: the worker runs with the checkout's src/ first on sys.path)."""
    from pveguard.backends.proxmox import ProxmoxBackend, PveSettings

    return ProxmoxBackend(PveSettings(mode="https", host=f"{kw['host']}:{kw['port']}", user=kw["user"],
                                      token_id=kw["token_name"], token_secret=kw["token_value"],
                                      ca_file=kw["verify_ssl"]))


def worker_main(conf: dict[str, Any]) -> None:
    """--worker: poll on each "poll" line (the whole daemon cycle plus rendering /metrics once) and
    answer with this process's CPU time for it; "text" answers with the last exposition."""
    from pveguard.monitor.alerts import rules_from_strategy
    from pveguard.monitor.collector import ProxmoxResourcesSource
    from pveguard.monitor.engine import Monitor
    from pveguard.monitor.exporter import ExportView, render
    from pveguard.store import Store
    from pveguard.strategy.models import Strategy

    backend = backend_from(conf["api"])
    mon = Monitor(Store(Path(conf["state"])), ProxmoxResourcesSource(backend),
                  rules_from_strategy(Strategy().monitoring))
    last = b""
    for line in sys.stdin:
        if line.strip() == "text":
            print(json.dumps({"text": last.decode()}), flush=True)
            continue
        c0 = time.process_time()
        res = mon.poll()
        if res.error:
            print(json.dumps({"error": res.error}), flush=True)
            continue
        last = render(ExportView(res.sweep, res.states, mon.polls, mon.errors, res.duration))
        print(json.dumps({"cpu": time.process_time() - c0, "length": len(last)}), flush=True)


def measure(sim: Sim, fn: Any, own_cpu: bool = False) -> dict[str, float]:
    """Run fn once; wall, client CPU, server CPU and API calls it cost.

    The sim clock first moves on by one PVE status interval (10 s), so the sweep cannot be served
    from pvesim's per-interval cache: each poll/scrape pays for fresh figures, as after a real poll
    interval. pvesim's CPU is counted from before that move until pvesim is idle after the call (see
    Sim.settle): the interval's stat refresh and the requests, whichever of them computed the figures."""
    calls0 = sim.calls()  # control calls (/_sim) are not counted by pvesim
    sim.settle(0.0)
    scpu0 = sim.cpu()
    sim.control("POST", "/clock", {"advance": 10})  # its own CPU (~1 ms) is in every row alike
    moved = time.monotonic()
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, ccpu = time.perf_counter() - w0, time.process_time() - c0
    if own_cpu:  # fn ran in a worker and says what CPU it used
        out, ccpu = out
    sim.settle(moved)
    scpu = sim.cpu() - scpu0
    calls = sim.calls() - calls0
    return {"wall": wall, "client_cpu": ccpu, "server_cpu": scpu, "calls": calls, "out": out}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in OVERLAP:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pve_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("pve_")]


def run_size(guests: int, nodes: int, runs: int, exporter_runs: int, old_src: str | None) -> dict[str, Any]:
    from proxmoxer import ProxmoxAPI
    from pve_exporter.collector import CollectorsOptions, collect_pve

    sim = Sim(guests, nodes)
    workers: dict[str, Worker] = {}
    try:
        kw = sim.api_kwargs()
        host = kw.pop("host")
        ProxmoxAPI(host, **kw)
        with tempfile.TemporaryDirectory() as state:
            workers["pveguard"] = Worker(sim, None, f"{state}/new")
            if old_src:
                workers["old"] = Worker(sim, old_src, f"{state}/old")
            exporter_cfg = dict(kw)
            # the exporter's default collectors, minus any whose endpoint pvesim does not implement
            names = CollectorsOptions._fields
            skipped = []
            for name in names:
                only = CollectorsOptions(**{n: n == name for n in names})
                try:
                    collect_pve(exporter_cfg, host, True, True, only)
                except Exception as exc:
                    skipped.append(f"{name} ({str(exc).splitlines()[0][:80]})")
            options = CollectorsOptions(**{n: not any(x.startswith(n + " ") for x in skipped) for n in names})

            def exporter_scrape() -> bytes:
                return bytes(collect_pve(exporter_cfg, host, True, True, options))

            def exporter_cluster_only() -> bytes:  # /pve?target=...&node=0: no per-guest config reads
                return bytes(collect_pve(exporter_cfg, host, True, False, options))

            for w in workers.values():  # warm-up: connection, schema migration, first sweep
                w.poll()
            polls: dict[str, list[dict[str, float]]] = {k: [] for k in workers}
            lean = []
            idle = []  # an interval nobody polls: pvesim's own refresh (the baseline in every row)
            for _ in range(runs):  # alternating, so a machine that gets busier slows all alike
                for k, w in workers.items():
                    polls[k].append(measure(sim, w.poll, own_cpu=True))
                lean.append(measure(sim, exporter_cluster_only))
                idle.append(measure(sim, lambda: None))
            theirs = [measure(sim, exporter_scrape) for _ in range(exporter_runs)]
            # agreement: freeze the sim clock so all read the same values
            sim.control("POST", "/clock", {"time_scale": 0})
            texts = {}
            for k, w in workers.items():
                w.poll()
                texts[k] = w.text()
            a = samples(texts["pveguard"])
            b = samples(exporter_scrape().decode())
            sim.control("POST", "/clock", {"time_scale": 1})
            same_as_old = None
            if old_src:
                mine, old = pve_lines(texts["pveguard"]), pve_lines(texts["old"])
                same_as_old = mine == old
                if not same_as_old:
                    first = next(((x, y) for x, y in zip(mine, old, strict=False) if x != y), "past the end")
                    raise SystemExit(f"the pve_* exposition differs from the old code's: {len(mine)} vs "
                                     f"{len(old)} lines, first difference {first}")
    finally:
        for w in workers.values():
            w.close()
        sim.close()
    common = set(a) & set(b)
    equal = sum(1 for k in common if a[k] == b[k] or abs(a[k] - b[k]) <= 1e-9 * max(abs(a[k]), abs(b[k])))

    idle_median = statistics.median(r["server_cpu"] for r in idle)

    def stats(rows: list[dict[str, float]], rounds: bool = True) -> dict[str, Any]:
        """Median of each figure, with its min and max over the runs. "own": pvesim's CPU beyond the
        interval's stat refresh (the no-client interval of the same round; its median for the default scrape,
        which runs after the rounds), and the cost with that."""
        for i, r in enumerate(rows):
            r["cost"] = r["client_cpu"] + r["server_cpu"]
            r["server_own"] = r["server_cpu"] - (idle[i]["server_cpu"] if rounds else idle_median)
            r["own_cost"] = r["client_cpu"] + r["server_own"]
        got: dict[str, Any] = {}
        for k in ("wall", "client_cpu", "server_cpu", "cost", "server_own", "own_cost", "calls"):
            xs = [r[k] for r in rows]
            got[k], got[k + "_range"] = statistics.median(xs), [min(xs), max(xs)]
        return got

    def ratios(rows: list[dict[str, float]]) -> dict[str, Any]:
        """Per round: this poll's cost over the node=0 scrape's of the same round."""
        xs = [r["cost"] / n["cost"] for r, n in zip(rows, lean, strict=True)]
        own = [r["own_cost"] / n["own_cost"] for r, n in zip(rows, lean, strict=True)]
        return {"ratio": statistics.median(xs), "ratio_range": [min(xs), max(xs)], "ratios": xs,
                "own_ratio": statistics.median(own), "own_ratio_range": [min(own), max(own)], "own_ratios": own}

    out: dict[str, Any] = {
        "guests": guests, "nodes": nodes,
        "exporter_node0": stats(lean),
        "pveguard": {**stats(polls["pveguard"]), **ratios(polls["pveguard"])},
        "exporter": stats(theirs, rounds=False),
        "idle_interval": stats(idle),
        "pve_lines": len(pve_lines(texts["pveguard"])),
        "overlap_series": len(common), "agree": equal,
        "only_pveguard": len(set(a) - set(b)), "only_exporter": len(set(b) - set(a)),
        "runs": runs, "exporter_runs": exporter_runs, "exporter_collectors_skipped": skipped,
    }
    if old_src:
        out["old"] = {**stats(polls["old"]), **ratios(polls["old"])}
        out["same_pve_lines_as_old"] = same_as_old
    return out


def _fig(row: dict[str, Any], key: str, digits: int = 3) -> str:
    """median (min-max) of one figure."""
    lo, hi = row[key + "_range"]
    if lo == hi:
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| guests | tool | API calls | wall (s) | client CPU (s) | pvesim CPU (s) | cost (CPU-s) "
             "| cost / exporter node=0 cost | pvesim CPU beyond the refresh (s) | that cost / node=0's "
             "| overlapping series agreeing |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n = r["exporter_node0"]
        rows = [("pveguard poll", r["pveguard"], f"{r['agree']:,}/{r['overlap_series']:,}")]
        if "old" in r:
            rows.append(("pveguard poll, before (old code)", r["old"], "same pve_* lines" if
                         r.get("same_pve_lines_as_old") else "DIFFERENT"))
        rows += [("exporter scrape, node=0", n, ""), ("exporter scrape (defaults)", r["exporter"], ""),
                 ("no client (the interval's stat refresh alone)", r["idle_interval"], "")]
        for name, row, agree in rows:
            if "ratio" in row:  # per round, against that round's node=0 scrape
                lo, hi = row["ratio_range"]
                ratio = f"{row['ratio']:.3f}x ({lo:.3f}-{hi:.3f})"
                lo, hi = row["own_ratio_range"]
                own = f"{row['own_ratio']:.3f}x ({lo:.3f}-{hi:.3f})"
            else:
                ratio = f"{row['cost'] / max(n['cost'], 1e-9):.3f}x"
                own = f"{row['own_cost'] / max(n['own_cost'], 1e-9):.3f}x" if row is not r["idle_interval"] else ""
            own_cpu = _fig(row, "server_own") if row is not r["idle_interval"] else ""
            lines.append(f"| {r['guests']:,} | {name} | {row['calls']:.0f} | {row['wall']:.3f} | "
                         f"{_fig(row, 'client_cpu')} | {_fig(row, 'server_cpu')} | {_fig(row, 'cost')} | "
                         f"{ratio} | {own_cpu} | {own} | {agree} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="pveguard polls per size")
    ap.add_argument("--exporter-runs", type=int, default=1, help="exporter scrapes per size (slow: one call per guest)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--old", help="another checkout (its src/ is used) to poll side by side, e.g. /tmp/pveguard-old")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    results = []
    for n in args.sizes:
        r = run_size(n, args.nodes, args.runs, args.exporter_runs, str(Path(args.old, "src")) if args.old else None)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
