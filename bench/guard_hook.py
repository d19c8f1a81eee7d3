"""How much time the apt guard adds to apt, side by side with apt-listbugs' hook (same protocol, v3 on fd 20).

Runs in the guard tests' Debian 12 chroot (tests/guard/aptchroot.py: cached debootstrap root, fake
PVE repository made with dpkg-deb, a byte-compiled copy of pveguard from this checkout), extended with 300 `bulk-NNN`
packages (1.0 installed, 1.1 in the repository) and a core meta-package pulling in 300 new ones.

For each transaction apt-get runs with exactly one Pre-Install-Pkgs hook (or none), registered
like the real one (protocol v3 on fd 20) but through a tiny sh wrapper that takes the time before
and after it (`date +%s%N`): that is the time the hook adds, as apt waits for it, interpreter
start-up included. Modes are interleaved in random order per run, so load from other work on the
machine hits all of them alike. "hooks only" runs use `-o Debug::pkgDPkgPM=1`: apt resolves,
fetches (file: source) and runs the hook with the real transaction but not dpkg, so the state is the
same for every run. The "real dpkg run" installs for real and is undone with `dpkg --purge` outside
the timing (which changes the dpkg status, so pveguard's core cache is rebuilt in every such run).
apt-listbugs is answered by a fake Debian BTS (SOAP `get_bugs` -> no bugs) on 127.0.0.1 through
`http_proxy`, so its network round trip is a loopback one.

With --old-src (the src/ of another checkout, e.g. `git worktree add /tmp/old <commit>`), that
code's hook runs too, in the same rounds: byte-compiled in /opt/pveguard/old-lib, behind the launcher
its own `render_launcher` writes, reading the same installed policy and state.

    sudo .venv/bin/python bench/guard_hook.py [--runs 15] [--runs-300 7] [--old-src DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "tests"), str(_ROOT / "tests/guard")]

import aptchroot  # noqa: E402
from aptchroot import Deb  # noqa: E402

N_BULK = 300
GUARD_CONF = "etc/apt/apt.conf.d/05pveguard"
GUARD_OFF = "etc/apt/05pveguard.disabled"

EMPTY_GET_BUGS = b"""<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:xsd="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" soap:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">
<soap:Body><get_bugsResponse xmlns="Debbugs/SOAP">
<soapenc:Array soapenc:arrayType="xsd:int[0]" xsi:type="soapenc:Array"></soapenc:Array>
</get_bugsResponse></soap:Body></soap:Envelope>
"""


class FakeBts(BaseHTTPRequestHandler):
    """Answers every SOAP call (apt-listbugs only sends get_bugs when there are no bugs) with 'no bugs'."""

    requests = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        FakeBts.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(EMPTY_GET_BUGS)))
        self.end_headers()
        self.wfile.write(EMPTY_GET_BUGS)

    def log_message(self, *args: object) -> None:
        pass


def extra_debs() -> list[Deb]:
    bulk = aptchroot.bulk_debs(N_BULK, "1.0") + aptchroot.bulk_debs(N_BULK, "1.1")
    fresh = [Deb(f"bulknew-{i:03d}", "1.0") for i in range(N_BULK)]
    meta = Deb("proxmox-kernel-bulk", "1.0", ", ".join(d.name for d in fresh))  # core by the kernel rule
    return [*bulk, *fresh, meta, Deb("pve-docs", "8.2")]


WRAPPER = """#!/bin/sh
# Times the wrapped hook as apt runs it (interpreter start-up included); fd 20 is inherited.
s=$(date +%s%N)
{cmd}
rc=$?
e=$(date +%s%N)
echo "$s $e" >> /tmp/bench-hook.times
exit $rc
"""
HOOKS = {"pveguard": "/usr/local/lib/pveguard/apt-hook", "apt-listbugs": "/usr/bin/apt-listbugs apt",
         "pveguard-old": "/usr/local/lib/pveguard/apt-hook-old",
         "python3": "/usr/bin/python3 -IS -c pass"}  # the reference: a bare interpreter start
OLD_LAUNCHER = ("import sys; sys.path.insert(0, '/opt/pveguard/old-lib'); "
                "from pveguard.guard.install import render_launcher; "
                "sys.stdout.write(render_launcher(package_parent='/opt/pveguard/old-lib'))")


def add_old(base: Path, old_src: Path) -> None:
    """The other checkout's pveguard, byte-compiled, with its own launcher at HOOKS['pveguard-old']."""
    lib = base / "opt/pveguard/old-lib"
    shutil.copytree(old_src / "pveguard", lib / "pveguard", ignore=shutil.ignore_patterns("__pycache__"))
    with aptchroot.mounted(base) as ch:
        r = ch.run(["python3", "-m", "compileall", "-q", "/opt/pveguard/old-lib"])
        if r.returncode != 0:
            raise RuntimeError(f"compileall failed:\n{r.stdout}\n{r.stderr}")
        r = ch.run(["python3", "-c", OLD_LAUNCHER], env={"PYTHONPATH": "/opt/pveguard/old-lib:/opt/pveguard/site"})
        if r.returncode != 0:
            raise RuntimeError(f"the old code's render_launcher failed:\n{r.stderr}")
        launcher = ch.path(HOOKS["pveguard-old"])
        launcher.write_text(r.stdout)
        launcher.chmod(0o755)


def setup_hooks(ch: aptchroot.AptChroot) -> None:
    """Switch off the registered hooks; each mode gets a timing wrapper registered instead."""
    for on, off in ((GUARD_CONF, GUARD_OFF), (aptchroot.LISTBUGS_CONF, aptchroot.LISTBUGS_OFF)):
        if (ch.root / on).exists():
            (ch.root / on).rename(ch.root / off)
    for name, cmd in HOOKS.items():
        w = ch.root / f"usr/local/bin/bench-hook-{name}"
        w.write_text(WRAPPER.format(cmd=cmd))
        w.chmod(0o755)


def set_mode(ch: aptchroot.AptChroot, mode: str) -> None:
    """Exactly one Pre-Install-Pkgs hook ('pveguard', 'apt-listbugs') or none, protocol v3 on fd 20."""
    conf = ch.root / "etc/apt/apt.conf.d/05bench"
    name = mode.split(" ")[0]
    if name not in HOOKS:
        conf.unlink(missing_ok=True)
        return
    w = f"/usr/local/bin/bench-hook-{name}"
    conf.write_text(f'DPkg::Pre-Install-Pkgs {{"{w}";}};\nDPkg::Tools::Options::{w}::Version "3";\n'
                    f'DPkg::Tools::Options::{w}::InfoFD "20";\n')


def hook_time(ch: aptchroot.AptChroot) -> float | None:
    f = ch.root / "tmp/bench-hook.times"
    if not f.exists():
        return None
    lines = f.read_text().split()
    f.unlink()
    return (int(lines[-1]) - int(lines[-2])) / 1e9


def timed(ch: aptchroot.AptChroot, args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = ch.run(["apt-get", "-y", "-q", *args], env=env)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"apt-get {' '.join(args)} exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return elapsed


MODES = ["none", "pveguard", "pveguard (cold core cache)", "apt-listbugs", "python3 -IS -c pass"]
OLD_MODES = ["pveguard-old", "pveguard-old (cold core cache)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="runs per cell for the one-package cases")
    ap.add_argument("--runs-300", type=int, default=7, help="runs per cell for the 300-package cases")
    ap.add_argument("--old-src", type=Path, help="src/ of another checkout: its hook runs in the same rounds")
    ap.add_argument("--one-package-only", action="store_true", help="only the two one-package transactions")
    opts = ap.parse_args()
    modes = MODES[:3] + (OLD_MODES if opts.old_src else []) + MODES[3:]
    reason = aptchroot.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    work = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    rng = random.Random(5)
    try:
        base = aptchroot.prepare(work / "root", extra=extra_debs(),
                                 extra_install=[f"bulk-{i:03d}=1.0" for i in range(N_BULK)], compiled_copy=True)
        if opts.old_src:
            add_old(base, opts.old_src)
        dry = ["-o", "Debug::pkgDPkgPM=1"]
        cases = {
            "install 1 package (real dpkg run)": (["install", "pve-docs"], opts.runs, True),
            "install 1 package (hooks only)": ([*dry, "install", "pve-docs"], opts.runs, False),
            "upgrade 300 packages (hooks only)": ([*dry, "install", *[f"bulk-{i:03d}" for i in range(N_BULK)]],
                                                  opts.runs_300, False),
            "install 300 new packages (hooks only)": ([*dry, "install", "proxmox-kernel-bulk"], opts.runs_300, False),
        }
        if opts.one_package_only:
            cases = {k: v for k, v in cases.items() if k.startswith("install 1 ")}
        apt_times: dict[str, dict[str, list[float]]] = {}
        hook_times: dict[str, dict[str, list[float]]] = {}
        internal: dict[str, list[float]] = {}
        with aptchroot.overlay(base) as ch:
            setup_hooks(ch)
            env = {"http_proxy": proxy}
            cache = ch.root / "var/lib/pveguard/guard-core-cache.json"
            for case, (args, runs, real) in cases.items():
                for mode in modes:  # warm-up: page cache, our core cache, ruby's gems
                    set_mode(ch, mode)
                    timed(ch, args, env)
                    if real:
                        ch.run(["dpkg", "--purge", "pve-docs"])
                for _ in range(runs):
                    order = modes[:]
                    rng.shuffle(order)  # interleaved, so load from elsewhere hits every mode alike
                    for mode in order:
                        set_mode(ch, mode)
                        if "cold" in mode:  # no cache at all: neither the index nor the base it is updated from
                            cache.unlink(missing_ok=True)
                            cache.with_name("guard-core-cache.base").unlink(missing_ok=True)
                        apt_times.setdefault(case, {}).setdefault(mode, []).append(timed(ch, args, env))
                        ht = hook_time(ch)
                        if ht is not None:
                            hook_times.setdefault(case, {}).setdefault(mode, []).append(ht)
                        if real:  # undo outside the timing (dpkg runs no apt hooks)
                            ch.run(["dpkg", "--purge", "pve-docs"])
                print(f"{case}: done", file=sys.stderr)
            set_mode(ch, "none")
            log = ch.pveguard("audit-log", "show", "--action", "guard", "--json")
            for e in json.loads(log.stdout):
                if e["action"] in ("guard.decision", "guard.check"):
                    internal.setdefault(str(len(e["details"]["packages"])), []).append(e["details"]["elapsed_ms"])
        print_table(apt_times, hook_times, cases, internal, opts, modes)
        print(f"\nfake BTS answered {FakeBts.requests} SOAP requests", file=sys.stderr)
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(apt_times: dict[str, dict[str, list[float]]], hook_times: dict[str, dict[str, list[float]]],
                cases: dict[str, tuple[list[str], int, bool]], internal: dict[str, list[float]],
                opts: argparse.Namespace, modes: list[str]) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:.0f}"

    hooked = modes[1:]
    old = f" --old-src {opts.old_src}" if opts.old_src else ""
    old += " --one-package-only" if opts.one_package_only else ""
    print(f"Command: `sudo .venv/bin/python bench/guard_hook.py --runs {opts.runs} --runs-300 {opts.runs_300}{old}`\n")
    print("Time the hook adds (its wall time as apt runs it, start-up included), median (p90) in ms:\n")
    print("| transaction | runs | " + " | ".join(hooked) + " |")
    print("|---|---:|" + "---:|" * len(hooked))
    for case, (_args, runs, _real) in cases.items():
        cells = []
        for mode in hooked:
            v = sorted(hook_times[case][mode])
            cells.append(f"{ms(statistics.median(v))} ({ms(v[min(len(v) - 1, int(len(v) * 0.9))])})")
        print(f"| {case} | {runs} | " + " | ".join(cells) + " |")
    print("\nWhole apt-get run, median ms (same runs, interleaved):\n")
    print("| transaction | " + " | ".join(modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for case in cases:
        print(f"| {case} | " + " | ".join(ms(statistics.median(apt_times[case][m])) for m in modes) + " |")
    print("\nDecision time inside pveguard's hook (the ledger's `elapsed_ms`: from reading fd 20 to the "
          "ledger write; no interpreter start-up, no imports):\n")
    print("| packages in the transaction | runs | median ms | max ms |")
    print("|---:|---:|---:|---:|")
    for n, vals in sorted(internal.items(), key=lambda kv: int(kv[0])):
        print(f"| {n} | {len(vals)} | {statistics.median(vals):.1f} | {max(vals):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
