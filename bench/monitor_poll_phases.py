"""Where one pveguard poll's client CPU goes: the poll + one /metrics render (as monitor_vs_exporter.py's
worker runs them) against pvesim, each phase's thread CPU time summed over the runs (wrappers around
the functions, no profiler: cProfile's per-call cost would triple the many small calls).

    .venv/bin/python bench/monitor_poll_phases.py --guests 10000 --runs 9

Run it with PYTHONPATH set to another checkout's src/ to see that code's phases (a phase it lacks shows 0).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from monitor_vs_exporter import Sim, backend_from


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()

    import pveguard.backends.proxmox as proxmox
    import pveguard.monitor.collector as collector
    import pveguard.monitor.engine as engine
    import pveguard.monitor.exporter as exporter
    import pveguard.monitor.notify as notify
    import pveguard.monitor.series as series
    from pveguard.monitor.alerts import rules_from_strategy
    from pveguard.store import Store
    from pveguard.strategy.models import Strategy

    acc: dict[str, float] = {}

    def wrap(owner: Any, name: str, label: str | None = None) -> None:
        f = getattr(owner, name, None)
        if f is None:
            return
        key = label or name

        @functools.wraps(f)
        def timed(*a: Any, **k: Any) -> Any:
            c0 = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.thread_time() - c0
        setattr(owner, name, timed)

    wrap(proxmox.ProxmoxBackend, "call", "GET + JSON (ProxmoxBackend.call)")
    wrap(proxmox.ProxmoxBackend, "resources", "ProxmoxBackend.resources (GET + shape check)")
    wrap(collector, "parse_resources", "parse_resources (Samples)")
    for name in ("derive", "alert_candidates", "observations", "evaluate", "load_states", "save_states", "enqueue",
                 "save_counters", "series_targets", "load_silences"):
        wrap(engine, name)
    wrap(series.SeriesStore, "record", "SeriesStore.record (SQLite)")
    wrap(notify.Dispatcher, "deliver", "Dispatcher.deliver")
    wrap(exporter, "_static_blocks", "render: static lines (key compare)")
    wrap(exporter, "_varying_lines", "render: varying values")
    wrap(engine.Monitor, "_poll", "POLL (all of the above but render)")
    wrap(exporter, "_render", "RENDER /metrics")

    sim = Sim(args.guests, args.nodes)
    try:
        backend = backend_from(sim.api_kwargs())
        with tempfile.TemporaryDirectory() as state:
            mon = engine.Monitor(Store(Path(state)), collector.ProxmoxResourcesSource(backend),
                                 rules_from_strategy(Strategy().monitoring))

            def one() -> None:
                res = mon.poll()
                exporter.render(exporter.ExportView(res.sweep, res.states, mon.polls, mon.errors, res.duration))

            for _ in range(2):  # warm-up: connection, schema, the first rates and static lines
                sim.control("POST", "/clock", {"advance": 10})
                sim.settle(time.monotonic())
                one()
            acc.clear()
            whole = []
            for _ in range(args.runs):
                sim.control("POST", "/clock", {"advance": 10})
                sim.settle(time.monotonic())  # the stat refresh done: the poll's own CPU only
                c0 = time.process_time()
                one()
                whole.append(time.process_time() - c0)
    finally:
        sim.close()
    print(f"{args.guests:,} guests, {args.runs} polls; CPU ms per poll")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {k:46s} {1000 * v / args.runs:7.1f}")
    print(f"  {'poll + render, process CPU (median, min-max)':46s} {1000 * statistics.median(whole):7.1f} "
          f"({1000 * min(whole):.1f}-{1000 * max(whole):.1f})")


if __name__ == "__main__":
    main()
