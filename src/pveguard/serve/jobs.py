"""The daemon's jobs. Each is what a CLI command does:

| job | the CLI equivalent | where it runs |
|---|---|---|
| monitor | `pveguard monitor` (one poll: alerts, notifiers, series) | the worker process (worker.py) |
| recover | `pveguard recover --once` (the watchdog sweep) | the worker process |
| backups | `pveguard backup run --due --json` (backups, verification, offsite when due) | child process |
| audit | `pveguard audit --json` (records the compliance score) | child process |
| certs | `pveguard certs check --json` | child process |
| guard | `pveguard guard status --json` | child process |
| updates | `pveguard update --scheduled --due --json` (safe updates when updates.schedule says so) | child process |
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from pveguard import subproc
from pveguard.errors import OperationError
from pveguard.serve.daemon import CHILD_TIMEOUT, Job, JobStopped
from pveguard.serve.runtime import Runtime, iso

GUARD_INTERVAL = 300.0
UPDATES_INTERVAL = 300.0  # how often serve asks whether updates.schedule has a run due
_children: set[subprocess.Popen[Any]] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def cli_argv(*args: str, rt: Runtime) -> list[str]:
    return [sys.executable, "-m", "pveguard", "--strategy", str(rt.ctx.strategy_path),
            "--state-dir", str(rt.ctx.state_dir), *args]


def run_cli(rt: Runtime, name: str, args: list[str], ok_codes: tuple[int, ...] = (0,),
            timeout: float = CHILD_TIMEOUT) -> Any:
    """Run `pveguard ARGS` as a child in its own process group; its JSON output, or OperationError
    with the child's own message (its last stderr lines)."""
    if _stopping.is_set():
        raise JobStopped(f"{name}: the daemon is stopping")
    env = {**os.environ, "PVEGUARD_ACTOR": os.environ.get("PVEGUARD_ACTOR", "pveguard-serve"),
           "COLUMNS": "200"}
    if not rt.ctx.strategy_explicit and not rt.ctx.strategy_path.exists():
        argv = [sys.executable, "-m", "pveguard", "--state-dir", str(rt.ctx.state_dir), *args]
    else:
        argv = cli_argv(*args, rt=rt)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        subproc.signal_group(proc, signal.SIGKILL)
        proc.communicate()
        raise OperationError(f"{name}: 'pveguard {' '.join(args)}' took longer than {timeout:.0f}s "
                             "and was killed") from None
    finally:
        with _children_lock:
            _children.discard(proc)
    if _stopping.is_set() and proc.returncode < 0:
        raise JobStopped(f"{name}: stopped with the daemon")
    if proc.returncode not in ok_codes:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        detail = " / ".join(lines[-3:]) or f"exit code {proc.returncode}"
        if proc.returncode < 0:
            detail = f"killed by signal {-proc.returncode}"
        raise OperationError(f"{name}: {detail}")
    text = out.decode(errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def stop_children(grace: float) -> None:
    """SIGTERM every child's process group, SIGKILL what is left after `grace` seconds."""
    _stopping.set()
    with _children_lock:
        procs = list(_children)
    for p in procs:
        subproc.signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            subproc.signal_group(p, signal.SIGKILL)


# --- the worker process (monitor, watchdog) ----------------------------------------------------


class Worker:
    """The long-lived child that runs the monitor and the watchdog (see worker.py); restarted when
    it dies. One call at a time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        ctx = self.rt.ctx
        proc = subprocess.Popen(
            [sys.executable, "-m", "pveguard.serve.worker", str(ctx.strategy_path), str(ctx.state_dir),
             "1" if ctx.strategy_explicit else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
            env={**os.environ, "PVEGUARD_ACTOR": os.environ.get("PVEGUARD_ACTOR", "pveguard-serve")})
        with _children_lock:
            if self.proc is not None:
                _children.discard(self.proc)
            _children.add(proc)
        return proc

    def call(self, name: str) -> Any:
        with self.lock:
            if _stopping.is_set():
                raise JobStopped(f"{name}: the daemon is stopping")
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(name + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                if _stopping.is_set():
                    raise JobStopped(f"{name}: stopped with the daemon")
                code = proc.poll()
                self.proc = None
                raise OperationError(f"{name}: the worker process ended (exit {code}); it is restarted "
                                     "at the next run")
            reply = json.loads(line)
        if not reply.get("ok"):
            raise OperationError(f"{name}: {reply.get('error')}")
        return reply.get("result")


class MonitorJob:
    """One `pveguard monitor` poll per run (in the worker); keeps the runtime's snapshot or marks
    it stale when PVE does not answer."""

    def __init__(self, rt: Runtime, worker: Worker) -> None:
        self.rt, self.worker = rt, worker

    def __call__(self) -> None:
        try:
            res = self.worker.call("monitor")
        except JobStopped:
            raise
        except OperationError as exc:
            self.rt.mark_stale(exc.message, time.time())
            raise
        if res.get("error"):
            self.rt.mark_stale(res["error"], float(res["ts"]))
            raise OperationError(f"monitor: PVE unreachable: {res['error']}")
        self.rt.set_snapshot(res["snapshot"], float(res["ts"]))
        for e in res.get("events", []):
            self.rt.events.publish("alert", e)


def snapshot(res: Any, mon: Any) -> dict[str, Any]:
    """The status view of one poll: the managed (service) containers with their usage, guest counts
    per state, firing alerts."""
    sweep = res.sweep
    containers: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for s in sweep.samples:
        if not s.is_guest or s.template:
            continue
        counts[s.status] = counts.get(s.status, 0) + 1
        if not s.managed:
            continue
        vals = res.derived[s.id].values if s.id in res.derived else {}
        containers.append({
            "id": s.id, "vmid": s.vmid, "name": s.name, "node": s.node, "type": s.type, "status": s.status,
            "uptime_s": s.uptime, "cores": s.maxcpu, "memory_bytes": s.mem, "maxmemory_bytes": s.maxmem,
            "usage": {k: round(v, 2) for k, v in vals.items()},
            "alerts": sorted(f"{st.rule}:{st.state}" for (r, t), st in res.states.items()
                             if t == s.id and st.state in ("pending", "firing")),
        })
    firing = [{"rule": st.rule, "target": st.target, "name": st.name, "since": iso(st.since), "value": st.value}
              for st in res.states.values() if st.state == "firing"]
    return {"containers": sorted(containers, key=lambda c: c["name"]),
            "guests": {"total": sum(counts.values()), "by_status": counts},
            "alerts_firing": sorted(firing, key=lambda a: (a["rule"], a["target"]))}


class RecoverJob:
    """One `pveguard recover --once` sweep per run (in the worker: every 10 s by default, a fresh
    child each time would cost more than the sweep)."""

    def __init__(self, rt: Runtime, worker: Worker) -> None:
        self.rt, self.worker = rt, worker

    def __call__(self) -> None:
        data = self.worker.call("recover")
        self.rt.extra["recover"] = data
        acted = [o for o in data.get("containers", []) if o.get("action") not in ("none", "skipped")]
        if acted:
            self.rt.events.publish("recover", {"containers": acted})


def build_jobs(rt: Runtime) -> list[Job]:
    strategy = rt.ctx.strategy_or_default()
    sch = strategy.serve.schedules
    monitor_every = (sch.monitor or strategy.monitoring.poll_interval).total_seconds()
    recover_every = (sch.recover or strategy.emergency.container_failure.interval).total_seconds()

    def guard() -> None:
        data = run_cli(rt, "guard", ["guard", "status", "--json"], ok_codes=(0, 1))
        if isinstance(data, dict):
            rt.extra["guard"] = {"installed": data.get("installed"), "intact": data.get("intact"),
                                 "active_approvals": data.get("active_approvals"),
                                 "findings": len(data.get("findings") or [])}

    def audit() -> None:
        data = run_cli(rt, "audit", ["audit", "--json"])
        if isinstance(data, dict) and isinstance(data.get("score"), dict):
            rt.extra["compliance_score"] = data["score"].get("value")
            rt.extra["audit"] = data

    def backups() -> None:
        data = run_cli(rt, "backups", ["backup", "run", "--due", "--json"], ok_codes=(0, 1))
        rt.extra["backups_run"] = data
        if isinstance(data, dict) and not data.get("ok", True):
            failed = [s.get("step") for s in data.get("steps", []) if s.get("status") == "failed"]
            raise OperationError(f"backups: failed steps: {', '.join(map(str, failed))}")

    def certs() -> None:
        data = run_cli(rt, "certs", ["certs", "check", "--json"], ok_codes=(0, 1))
        rt.extra["certs"] = data

    def updates() -> None:
        data = run_cli(rt, "updates", ["update", "--scheduled", "--due", "--json"], ok_codes=(0, 1))
        rt.extra["updates"] = data
        if isinstance(data, dict) and not data.get("ok", True):
            ok = ("up-to-date", "would-update", "updated", "skipped")
            failed = [c.get("name") for c in data.get("containers", []) if c.get("action") not in ok]
            raise OperationError(f"updates: not updated: {', '.join(map(str, failed)) or 'see the ledger'}")

    worker = Worker(rt)
    recover = RecoverJob(rt, worker)

    return [
        Job("monitor", monitor_every, MonitorJob(rt, worker)),
        Job("recover", recover_every, recover),
        Job("backups", sch.backups.total_seconds(), backups),
        Job("audit", sch.audit.total_seconds(), audit),
        Job("certs", sch.certs.total_seconds(), certs),
        Job("guard", GUARD_INTERVAL, guard),
        Job("updates", UPDATES_INTERVAL, updates),
    ]
