"""Benchmark: the prune algorithm over 1,000,000 archives of one group.

Run: .venv/bin/python bench/backup_retention.py [--count N] [--repeat R]

Scenarios (all in Europe/Berlin, so DST changes are in the data; 1% of archives protected):
* typical   - one archive a minute (~1.9 years), keep-last=3,hourly=24,daily=7,weekly=4,monthly=12,yearly=5
* deep      - every pass walks the whole list: one archive every 2 min over 3.8 years and large
              counts (keep-hourly=100000, keep-daily=2000, ...)
* shuffled  - the typical case with the input in random order (sorting cost included)
Prints one markdown table row per scenario: best and median wall time of R runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from zoneinfo import ZoneInfo

from pveguard.backup.retention import KeepPolicy, Mark, mark_archives

ZONE = ZoneInfo("Europe/Berlin")
START = 1577836800  # 2020-01-01T00:00:00Z


def scenario(name: str, count: int) -> tuple[list[int], list[bool], KeepPolicy]:
    rng = random.Random(1)
    protected = [rng.random() < 0.01 for _ in range(count)]
    if name == "deep":
        times = [START + 120 * i for i in range(count)]
        return (
            times,
            protected,
            KeepPolicy(last=10, hourly=100000, daily=2000, weekly=300, monthly=60, yearly=10),
        )
    times = [START + 60 * i for i in range(count)]
    if name == "shuffled":
        rng.shuffle(times)
    return times, protected, KeepPolicy(last=3, hourly=24, daily=7, weekly=4, monthly=12, yearly=5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("| scenario | archives | kept | best (s) | median (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in ("typical", "deep", "shuffled"):
        times, protected, policy = scenario(name, args.count)
        runs = []
        kept = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            marks = mark_archives(times, policy, protected, ZONE)
            runs.append(time.perf_counter() - t0)
            kept = sum(1 for m in marks if m is Mark.KEEP)
        print(
            f"| {name} ({policy}) | {args.count:,} | {kept:,} "
            f"| {min(runs):.3f} | {statistics.median(runs):.3f} |"
        )


if __name__ == "__main__":
    main()
