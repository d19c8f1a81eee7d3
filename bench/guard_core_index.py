"""The apt hook's core index after a dpkg run: incremental update against a full rebuild.

Each run is a fresh `python3 -IS` (as the hook's launcher runs it) that copies the status file
(default: this machine's /var/lib/dpkg/status) and times `pveguard.guard.hook.core_index` in five
states: first run (no cache: full rebuild), warm (the status file's identity matches the cache), the
same bytes rewritten (dpkg ran, nothing changed for us), one paragraph added (a one-package install),
and a full rebuild (no stored base). Medians over the runs, in ms, cache writes included:

    python bench/guard_core_index.py [--status FILE] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = r"""
import os, shutil, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pveguard.guard import hook
from pveguard.guard.decide import Policy
work = Path(sys.argv[3])
status, state = work / "status", work / "state"
shutil.copy(sys.argv[2], status)
state.mkdir()
policy = Policy(state_dir=str(state))
def timed():
    s = time.perf_counter()
    hook.core_index(status, state, policy)
    return (time.perf_counter() - s) * 1000
out = [timed(), timed()]
os.utime(status, ns=(1, 1))
out.append(timed())
raw = status.read_bytes()
cut = raw.find(b"\n\n", len(raw) // 2) + 2
status.write_bytes(raw[:cut] + b"Package: bench-new\nStatus: install ok installed\nVersion: 1\n\n" + raw[cut:])
out.append(timed())
(state / hook.CORE_BASE_NAME).unlink()
os.utime(status, ns=(2, 2))
out.append(timed())
print(" ".join(f"{v:.3f}" for v in out))
"""

LABELS = ["first run (full rebuild, no cache)", "warm (status unchanged)", "dpkg rewrote the same bytes",
          "one paragraph added (one-package install)", "full rebuild (no stored base)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status", default="/var/lib/dpkg/status", help="a dpkg status file to copy")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--python", default="/usr/bin/python3", help="the interpreter the hook runs on")
    opts = ap.parse_args()
    rows: list[list[float]] = []
    for _ in range(opts.runs):
        with tempfile.TemporaryDirectory(prefix="core-index-bench-") as work:
            r = subprocess.run([opts.python, "-IS", "-c", CHILD, str(SRC), opts.status, work],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            rows.append([float(v) for v in r.stdout.split()])
    text = Path(opts.status).read_bytes()
    print(f"{opts.status}: {len(text):,} bytes, {text.count(b'Package: '):,} paragraphs; {opts.runs} runs")
    print("| state | median ms | min ms |\n|---|---:|---:|")
    for i, label in enumerate(LABELS):
        values = [row[i] for row in rows]
        print(f"| {label} | {statistics.median(values):.1f} | {min(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
