"""Benchmark: start-up of `pveguard --help`, shell completion and `check`, side by side with other code.

Run: .venv/bin/python bench/cli_startup.py [--runs N] [--old-src DIR]

Each case is a fresh process (`python -m pveguard ...`); the cases and the code versions alternate
within each round so machine load hits all alike. `check` reads a default strategy written by
`init` into a temporary directory. --old-src: the src/ directory of another checkout (e.g. a
`git worktree add /tmp/old <commit>`). Prints a markdown table: median and best wall time (ms), and
the median CPU time (user + system) of the process, which load from other work on the machine
changes much less than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--old-src", help="src/ of another checkout to time side by side")
    args = ap.parse_args()
    new_src = str(Path(__file__).resolve().parent.parent / "src")
    versions = {"new": new_src, **({"old": args.old_src} if args.old_src else {})}
    # as every bench: ledger anchors in a plain file (not append-only), so the directory can go
    os.environ.update(PVEGUARD_LEDGER_ANCHORS="file", PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY="0")
    with tempfile.TemporaryDirectory() as tmp:
        strategy, state = f"{tmp}/strategy.yaml", f"{tmp}/state"
        base = [sys.executable, "-m", "pveguard"]
        env0 = {**os.environ, "PYTHONPATH": new_src}
        subprocess.run([*base, "--strategy", strategy, "--state-dir", state, "init"], env=env0, check=True,
                       capture_output=True)  # fmt: skip
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], {}),
            "pveguard --help": ([*base, "--help"], {}),
            "completion (bash, `pveguard ba<TAB>`)": (
                base, {"_PVEGUARD_COMPLETE": "complete_bash", "COMP_WORDS": "pveguard ba", "COMP_CWORD": "1"}
            ),
            "pveguard check": ([*base, "--strategy", strategy, "--state-dir", state, "check"], {}),
        }
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for case, (argv, extra) in cases.items():
                for version, src in versions.items():
                    if case.startswith("python") and version != "new":
                        continue
                    env = {**os.environ, "PYTHONPATH": src, **extra}
                    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                    times.setdefault((case, version), []).append((time.perf_counter() - t0) * 1000)
                    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
                    cpu.setdefault((case, version), []).append(used * 1000)
    print(f"| case | {' | '.join(f'{v} median (ms) | {v} best (ms) | {v} CPU median (ms)' for v in versions)} |")
    print(f"|---|{'---:|---:|---:|' * len(versions)}")
    for case in cases:
        cells = []
        for version in versions:
            key = (case, version) if (case, version) in times else (case, "new")
            runs = times[key]
            cells.append(f"{statistics.median(runs):.0f} | {min(runs):.0f} | {statistics.median(cpu[key]):.0f}")
        print(f"| {case} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
