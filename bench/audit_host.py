"""Benchmark: how long `pveguard audit` takes on this machine (target: under 2 s end to end).

End to end = a fresh `python -m pveguard audit` process (interpreter start, imports, inventory,
classification, report), as an admin runs it. The phase rows time the same work in-process.

    .venv/bin/python bench/audit_host.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pveguard.audit import assemble, inventory, report, sources
from pveguard.audit.findings import GuestView
from pveguard.context import AppContext
from pveguard.strategy.models import Strategy

# A benchmark's scratch state dir must be removable afterwards and must not write to this
# machine's journal: its ledger anchors only to a plain file (as the tests do, tests/conftest.py).
os.environ.setdefault("PVEGUARD_LEDGER_ANCHORS", "file")
os.environ.setdefault("PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY", "0")

GOLDEN = Path(__file__).resolve().parents[1] / "tests/audit/golden/pve-fake/root"


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs), statistics.median(runs)


def cli(fmt: str, root: str = "/") -> None:
    subprocess.run([sys.executable, "-m", "pveguard", "--strategy", "/nonexistent/strategy.yaml",
                    "--state-dir", "/nonexistent/state", "audit",
                    "--format", fmt, "--root", root], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "COLUMNS": "160"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    facts = inventory.collect(Path("/"))
    sizes = (f"{sum(p.installed for p in facts.packages.values())} packages, {len(facts.units)} units, "
             f"{sum(len(v) for v in facts.package_files.values())} dpkg file-list lines, {len(facts.sockets)} sockets")
    ext = assemble.External(GuestView(False, "bench"), None, "bench", None, "bench")
    doc = assemble.build(facts, Strategy(), ext)
    rows = [
        ("end to end: `pveguard audit --json` (new process)", lambda: cli("json")),
        ("end to end: `pveguard audit` (table, new process)", lambda: cli("table")),
        ("end to end: `pveguard audit --root <pve-fake golden root> --json`", lambda: cli("json", str(GOLDEN))),
        ("phase: inventory.collect(/)", lambda: inventory.collect(Path("/"))),
        ("phase: sources.external (backend guests, guard, backup coverage)",
         lambda: sources.external(AppContext(Path("/nonexistent/s.yaml"), Path("/nonexistent/state")), Strategy(),
                                  Path("/"))),
        ("phase: assemble.build (classify, suggest, depmap, findings, score)",
         lambda: assemble.build(facts, Strategy(), ext)),
        ("phase: render table", lambda: report.render(doc, "table")),
        ("phase: render html", lambda: report.render(doc, "html")),
    ]
    ext_now = sources.external(AppContext(Path("/nonexistent/s.yaml"), Path("/nonexistent/state")), Strategy(),
                               Path("/"))
    guests = (f"backend {ext_now.guests.backend}: {len(ext_now.guests.guests)} guests" if ext_now.guests.available
              else f"guests unavailable ({ext_now.guests.reason})")
    print(f"host: {os.uname().nodename}, {sizes}, {guests}; repeat {args.repeat}\n")
    print("| what | best (s) | median (s) |\n|---|---:|---:|")
    for label, fn in rows:
        best, median = timed(fn, args.repeat)
        print(f"| {label} | {best:.3f} | {median:.3f} |")


if __name__ == "__main__":
    main()
