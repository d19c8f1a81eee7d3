"""The daemon's worker process: the CPU-heavy in-process jobs (the monitor poll, the watchdog
sweep) run here, not in a thread of the serving process. A Python thread that parses a 5,000-guest
sweep holds the GIL for a third of a second, and the event loop, which gives the GIL up at every
socket call, would wait up to 5 ms for it each time: API latency would spike at every poll.

Protocol (stdin/stdout of `python -m pveguard.serve.worker STRATEGY STATE_DIR EXPLICIT`): the
daemon writes a job name per line; the worker answers one JSON line
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. The monitor's Prometheus text
goes to <state-dir>/serve-metrics.prom (replaced atomically) instead of through the pipe.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "serve-metrics.prom"


class Work:
    def __init__(self, strategy: str, state_dir: str, explicit: bool) -> None:
        from pveguard.context import AppContext

        self.ctx = AppContext(Path(strategy), Path(state_dir), False, explicit)
        self.mon: Any = None

    def monitor(self) -> dict[str, Any]:
        from pveguard.errors import PveguardError
        from pveguard.monitor.cli import build_monitor, export_view
        from pveguard.monitor.exporter import render
        from pveguard.serve.jobs import snapshot

        if self.mon is None:
            try:
                self.mon = build_monitor(self.ctx)
            except PveguardError as exc:
                return {"ts": time.time(), "error": exc.message}
        res = self.mon.poll()
        text = render(export_view(self.mon, self.ctx.state_dir))
        target = self.ctx.state_dir / METRICS_FILE
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(text)
        os.replace(tmp, target)
        if res.error:
            return {"ts": res.ts, "error": res.error}
        return {"ts": res.ts, "error": None, "snapshot": snapshot(res, self.mon),
                "events": [{"rule": e.rule, "target": e.target, "name": e.name, "state": e.kind, "value": e.value}
                           for e in res.events]}

    def recover(self) -> dict[str, Any]:
        from pveguard.recover.cli import run_once

        return dict(run_once(self.ctx).as_dict())


def main(argv: list[str]) -> None:
    from pveguard.errors import PveguardError

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop (SIGTERM)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing but the protocol on the pipe
    work = Work(argv[0], argv[1], argv[2] == "1")
    for line in sys.stdin:
        name = line.strip()
        try:
            fn = getattr(work, name) if name in ("monitor", "recover") else None
            if fn is None:
                raise ValueError(f"unknown job {name!r}")
            reply: dict[str, Any] = {"ok": True, "result": fn()}
        except PveguardError as exc:
            reply = {"ok": False, "error": exc.message + (f" (hint: {exc.hint})" if exc.hint else "")}
        except Exception as exc:  # the job's error boundary, on this side of the pipe
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
