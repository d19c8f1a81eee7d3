"""Benchmark: `pveguard backup prune-sim` as users run it, and the prune algorithm alone.

Run: .venv/bin/python bench/backup_retention.py [--count N] [--repeat R] [--old-src DIR]
     [--command-only] [--guests G --step-minutes M]

The command (first table): N names `vzdump-lxc-101-YYYY_MM_DD-HH_MM_SS.tar.zst`, one a minute from
2020-01-01 (every 100th with ' protected'), TZ=Europe/Berlin,
`pveguard backup prune-sim --keep-last 3 --keep-daily 7 --keep-monthly 12 -f FILE` in a fresh
process: wall time and peak RSS from /usr/bin/time. With --old-src (the src/ directory of another
checkout, e.g. a `git worktree add /tmp/old <commit>`), that code runs the same command in the same
loop, alternating, and its output must be byte-identical. --guests G --step-minutes M: names of G
guests (vmids 101...), N/G each, one every M minutes, guest after guest.

The algorithm (second table):

Scenarios (all in Europe/Berlin, so DST changes are in the data; 1% of archives protected):
* typical   - one archive a minute (~1.9 years), keep-last=3,hourly=24,daily=7,weekly=4,monthly=12,yearly=5
* deep      - every pass walks the whole list: one archive every 2 min over 3.8 years and large
              counts (keep-hourly=100000, keep-daily=2000, ...)
* shuffled  - the typical case with the input in random order (sorting cost included)
Prints one markdown table row per scenario: best and median wall time of R runs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
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


def _names(path: Path, count: int, guests: int = 1, step: int = 1) -> None:
    """count // guests names per guest (vmids 101...), one every `step` minutes from 2020-01-01,
    guest after guest as `ls` lists a dump directory; every 100th of a guest protected."""
    with path.open("w") as fh:
        for vmid in range(101, 101 + guests):
            t = datetime(2020, 1, 1)
            for i in range(count // guests):
                fh.write(f"vzdump-lxc-{vmid}-{t:%Y_%m_%d-%H_%M_%S}.tar.zst{' protected' if i % 100 == 0 else ''}\n")
                t += timedelta(minutes=step)


def _command(src: str, names: Path, out: Path) -> tuple[float, int, float]:
    """(wall seconds, peak RSS MB, CPU seconds: user + system) of one prune-sim run with `src` on PYTHONPATH."""
    argv = ["/usr/bin/time", "-f", "%e %M %U %S", sys.executable, "-m", "pveguard", "backup", "prune-sim"]
    argv += ["--keep-last", "3", "--keep-daily", "7", "--keep-monthly", "12", "-f", str(names)]
    env = {**os.environ, "PYTHONPATH": src, "TZ": "Europe/Berlin"}
    with out.open("w") as fh:
        done = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.PIPE, text=True, check=True)
    wall, rss_kb, user, system = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) // 1024, float(user) + float(system)


def command_table(count: int, repeat: int, old_src: str | None, guests: int = 1, step: int = 1) -> None:
    new_src = str(Path(__file__).resolve().parent.parent / "src")
    with tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "names.txt"
        _names(names, count, guests, step)
        runs: dict[str, list[tuple[float, int, float]]] = {"new": [], "old": []}
        for _ in range(repeat):
            runs["new"].append(_command(new_src, names, Path(tmp) / "new.out"))
            if old_src:
                runs["old"].append(_command(old_src, names, Path(tmp) / "old.out"))
                if (Path(tmp) / "new.out").read_bytes() != (Path(tmp) / "old.out").read_bytes():
                    raise SystemExit("old and new output differ")
    shape = f", {guests} guests, one name every {step} min each" if guests > 1 or step > 1 else ""
    policy = "keep-last 3, keep-daily 7, keep-monthly 12"
    print(f"`backup prune-sim` over {count:,} names{shape} ({policy}), {repeat} runs\n")
    print("| code | best (s) | median (s) | CPU median (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in runs.items():
        if rows:
            walls = [w for w, _, _ in rows]
            cpu, rss = statistics.median(c for _, _, c in rows), max(r for _, r, _ in rows)
            print(f"| {name} | {min(walls):.2f} | {statistics.median(walls):.2f} | {cpu:.2f} | {rss} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--old-src", help="src/ of another checkout to run side by side (same output required)")
    ap.add_argument("--command-only", action="store_true", help="skip the algorithm-only table")
    ap.add_argument("--guests", type=int, default=1, help="names of this many guests, guest after guest")
    ap.add_argument("--step-minutes", type=int, default=1, help="minutes between a guest's names")
    args = ap.parse_args()
    command_table(args.count, args.repeat, args.old_src, args.guests, args.step_minutes)
    if args.command_only:
        return
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
