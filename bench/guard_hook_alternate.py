"""pveguard's apt hook alone, a real dpkg run and a hooks-only run alternating, in the guard
benchmark's chroot (bench/guard_hook.py: same packages, same timing wrapper): is a real install's
hook slower than a hooks-only one when nothing else runs in between?

    sudo .venv/bin/python bench/guard_hook_alternate.py [--runs 20]

Prints, per kind, the hook's wall time (as apt waits for it) and the decision time (the ledger's
`elapsed_ms`), medians without the first two runs of each kind (warm-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import guard_hook as gh  # noqa: E402
from guard_hook import aptchroot  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each kind")
    opts = ap.parse_args()
    reason = aptchroot.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="guard-alt-bench-"))
    try:
        base = aptchroot.prepare(work / "root", extra=gh.extra_debs(),
                                 extra_install=[f"bulk-{i:03d}=1.0" for i in range(gh.N_BULK)], compiled_copy=True)
        with aptchroot.overlay(base) as ch:
            gh.setup_hooks(ch)
            gh.set_mode(ch, "pveguard")
            kinds: list[str] = []
            walls: dict[str, list[float]] = {"real dpkg run": [], "hooks only": []}
            for i in range(2 * opts.runs):
                kind = "real dpkg run" if i % 2 else "hooks only"
                args = ["install", "pve-docs"] if i % 2 else ["-o", "Debug::pkgDPkgPM=1", "install", "pve-docs"]
                gh.timed(ch, args, {})
                wall = gh.hook_time(ch)
                if wall is None:
                    raise RuntimeError("the hook did not run")
                walls[kind].append(wall * 1000)
                kinds.append(kind)
                if i % 2:
                    ch.run(["dpkg", "--purge", "pve-docs"])
            gh.set_mode(ch, "none")
            log = ch.pveguard("audit-log", "show", "--action", "guard", "--json")
            entries = [e for e in json.loads(log.stdout) if e["action"] in ("guard.decision", "guard.check")]
            entries.sort(key=lambda e: e["seq"])
            elapsed = [e["details"]["elapsed_ms"] for e in entries][-len(kinds):]
        print(f"{opts.runs} runs of each kind, alternating; medians without the first two of each, ms")
        print("| kind | hook wall time | p90 | decision (elapsed_ms) |\n|---|---:|---:|---:|")
        for kind, values in walls.items():
            rest = sorted(values[2:])
            decided = [e for e, k in zip(elapsed, kinds, strict=True) if k == kind][2:]
            print(f"| {kind} | {statistics.median(rest):.1f} | {rest[int(0.9 * (len(rest) - 1))]:.1f} | "
                  f"{statistics.median(decided):.1f} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
