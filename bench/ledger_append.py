"""Benchmark: the cost of one audit-ledger append (SQLite transaction + head + anchors).

Run: .venv/bin/python bench/ledger_append.py [--count N] [--repeat R] [--dir DIR]

Each run appends N entries in one process to a fresh state directory (under --dir, default
/var/tmp, on the same file system as /var/lib here), unkeyed and keyed (HMAC), and prints one
markdown table row per mode: best and median microseconds per append over R runs, and the anchors
that were written (PVEGUARD_LEDGER_ANCHORS chooses them; the default is all that the host has).
A second table times each anchor sink alone (N heads written): the append-only file, syslog on a
datagram socket this script drains, and journald when it runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pveguard.security.ledger import Ledger
from pveguard.store import Store

try:
    from pveguard.security.anchors import JOURNAL_SOCKET, AnchorSink, FileAnchor, Head, JournalAnchor, SyslogAnchor
except ImportError:  # a pveguard from before the anchors: time the append alone, for comparison
    AnchorSink = None  # type: ignore[assignment,misc]


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


DRAIN = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    s.recv(4096)
"""


def sink_cost(sink: AnchorSink, count: int) -> tuple[float, int]:
    dropped = 0
    t0 = time.perf_counter()
    for i in range(count):
        try:
            sink.record(Head(i + 1, "ab" * 32, "cd" * 32))
        except OSError:  # as in Ledger.append: a full socket drops the line, never blocks
            dropped += 1
    return (time.perf_counter() - t0) / count * 1e6, dropped


def sinks(base: Path, count: int, repeat: int) -> None:
    server_path = base / "bench-dev-log"
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, str(server_path)], stdout=subprocess.PIPE, text=True)
    assert drain.stdout is not None and drain.stdout.readline().strip() == "ready"
    makers: dict[str, Callable[[], AnchorSink]] = {
        "file (chattr +a)": lambda: FileAnchor(Path(tempfile.mkdtemp(dir=base)) / "ledger.anchor"),
        "syslog (datagram socket, drained by another process)":
            lambda: SyslogAnchor("/var/lib/pveguard/pveguard.db", server_path),
    }
    if JOURNAL_SOCKET.exists():
        makers["journal (journald)"] = lambda: JournalAnchor("/var/lib/pveguard/pveguard.db")
    print()
    print("| sink | heads | best (µs/head) | median (µs/head) | dropped (worst run) |")
    print("|---|---:|---:|---:|---:|")
    try:
        for name, make in makers.items():
            runs = [sink_cost(make(), count) for _ in range(repeat)]
            per = [r[0] for r in runs]
            print(f"| {name} | {count:,} | {min(per):.1f} | {statistics.median(per):.1f} | "
                  f"{max(r[1] for r in runs)} |")
    finally:
        drain.kill()
        drain.wait()


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
        if AnchorSink is not None:
            sinks(base, args.count, args.repeat)
    finally:
        subprocess.run(["chattr", "-R", "-a", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
