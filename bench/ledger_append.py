"""Benchmark: the cost of one audit-ledger append (SQLite transaction + head + anchors).

Run: .venv/bin/python bench/ledger_append.py [--count N] [--repeat R] [--dir DIR]

Each run appends N entries in one process to a fresh state directory (under --dir, default a
temporary directory on the same file system as /var/lib), unkeyed and keyed (HMAC), and prints one
markdown table row per mode: best and median microseconds per append over R runs, and the anchors
that were written.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pveguard.security.ledger import Ledger
from pveguard.store import Store


def run(base: Path, count: int, keyed: bool) -> tuple[float, str]:
    state = Path(tempfile.mkdtemp(dir=base))
    key = None
    if keyed:
        key = state.parent / f"{state.name}.key"
        key.write_text("bench-key-0123456789abcdef")
    ledger = Ledger(Store(state), key)
    ledger.append("bench.warmup", "", {})
    t0 = time.perf_counter()
    for i in range(count):
        ledger.append("bench.append", f"target-{i % 10}", {"i": i, "note": "x" * 40})
    elapsed = time.perf_counter() - t0
    anchors = ", ".join(a.name for a in getattr(ledger, "anchors", [])) or "none"
    ledger.store.close()
    # The anchor file may be append-only (chattr +a): clear it so the directory can be removed.
    subprocess.run(["chattr", "-R", "-a", str(state)], capture_output=True, check=False)
    shutil.rmtree(state)
    if key is not None:
        key.unlink()
    return elapsed / count * 1e6, anchors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pveguard-bench-ledger.", dir=args.dir))
    try:
        print("| mode | appends | best (µs/append) | median (µs/append) | anchors |")
        print("|---|---:|---:|---:|---|")
        for keyed in (False, True):
            results = [run(base, args.count, keyed) for _ in range(args.repeat)]
            per = [r[0] for r in results]
            print(f"| {'keyed (HMAC)' if keyed else 'unkeyed'} | {args.count:,} | {min(per):.0f} | "
                  f"{statistics.median(per):.0f} | {results[0][1]} |")
    finally:
        subprocess.run(["chattr", "-R", "-a", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
