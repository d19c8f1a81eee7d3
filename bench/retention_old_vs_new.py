"""Benchmark: the prune algorithm (`mark_archives`) of this checkout against another one, in one process.

Run: .venv/bin/python bench/retention_old_vs_new.py --old-src /tmp/old/src

1,000,000 archives in Europe/Berlin, 1% protected; the scenarios of bench/backup_retention.py plus
the prune-sim benchmark's policy. Old and new alternate (3 runs each, best shown) and must give the
same marks. Times are this process's CPU time (time.process_time), which load from other work on
the machine moves less than wall time. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import pveguard.backup.retention as new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-src", required=True, help="src/ of the other checkout")
    ap.add_argument("--count", type=int, default=1_000_000)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("old_retention", f"{args.old_src}/pveguard/backup/retention.py")
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_retention"] = old
    spec.loader.exec_module(old)
    zone = ZoneInfo("Europe/Berlin")
    rng = random.Random(1)
    n = args.count
    protected = [rng.random() < 0.01 for _ in range(n)]
    minutes = [1577836800 + 60 * i for i in range(n)]
    shuffled = minutes[:]
    rng.shuffle(shuffled)
    usual = {"last": 3, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 5}
    cases = {
        "typical": (minutes, usual),
        "deep": ([1577836800 + 120 * i for i in range(n)],
                 {"last": 10, "hourly": 100000, "daily": 2000, "weekly": 300, "monthly": 60, "yearly": 10}),
        "shuffled": (shuffled, usual),
        "prune-sim policy (last 3, daily 7, monthly 12)": (minutes, {"last": 3, "daily": 7, "monthly": 12}),
    }  # fmt: skip
    print("| scenario | old best CPU (s) | new best CPU (s) |")
    print("|---|---:|---:|")
    for name, (times, counts) in cases.items():
        best: dict[str, float] = {}
        marks: dict[str, list[str]] = {}
        for label, mod in (("old", old), ("new", new)) * 3:
            policy = mod.KeepPolicy(**counts)
            t0 = time.process_time()
            result = mod.mark_archives(times, policy, protected, zone)
            best[label] = min(best.get(label, 1e9), time.process_time() - t0)
            marks[label] = [str(m) for m in result]
        if marks["old"] != marks["new"]:
            raise SystemExit(f"{name}: old and new marks differ")
        print(f"| {name} | {best['old']:.3f} | {best['new']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
