"""The watchdog job: one sweep over this installation's containers (a plain function: the CLI runs it
once or in a loop, `serve` will run it on a schedule).

Detection is the one guest listing (status, tags, lock). Only a container that looks failed -- not
running, or running with health checks to run -- costs more calls: its config is read to check the
ownership marker, `onboot` and PVE's `lock` before anything else happens. A container is touched
only when it carries this installation's marker, has `onboot=1`, holds no lock (backup, migrate,
snapshot ...) and is not in maintenance. A restart follows the seed's procedure (stop, start, then
the critical services: its health checks must pass) and is written to the ledger as an intent
before and a result after, with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pveguard.backends.base import MANAGED_TAG, Backend, Guest, not_ours_or_locked
from pveguard.errors import BackendError
from pveguard.recover import probes
from pveguard.recover.budget import Budget, Decision, RestartState, decide
from pveguard.recover.state import (
    SELF_ENV,
    SELF_REASON,
    checked,
    load_states,
    maintenance,
    own_container,
    save_state,
    set_checked,
)
from pveguard.store import Store
from pveguard.strategy.models import Container, Strategy

Record = Callable[..., None]
Alert = Callable[[dict[str, Any]], None]
# after a start, how long the health checks get to pass (beyond the container's startup.up)
HEALTHY_WITHIN = 30.0
PROBE_PAUSE = 1.0


@dataclass
class Outcome:
    """What the sweep did with one container."""

    name: str
    vmid: int
    node: str
    status: str  # from the listing
    action: str  # none | restarted | restart-failed | waiting | exhausted | quarantined | skipped | unknown
    reason: str = ""
    checks: list[probes.ProbeResult] = field(default_factory=list)
    restarts_in_window: int = 0
    retry_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.action in ("none", "restarted", "skipped")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vmid": self.vmid, "node": self.node, "status": self.status,
                "action": self.action, "reason": self.reason, "restarts_in_window": self.restarts_in_window,
                "retry_at": _iso(self.retry_at),
                "checks": [{"check": c.check, "ok": c.ok, "detail": c.detail} for c in self.checks]}


@dataclass
class SweepReport:
    ts: float
    containers: list[Outcome] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    exhaustion: list[Any] = field(default_factory=list)  # recover/exhaustion.py Handling, one per alert

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.containers) and all(h.ok for h in self.exhaustion)

    def as_dict(self) -> dict[str, Any]:
        return {"ts": _iso(self.ts), "ok": self.ok, "containers": [o.as_dict() for o in self.containers],
                "alerts": [{**a, "ts": _iso(a["ts"]), "started_at": _iso(a["started_at"])} for a in self.alerts],
                "exhaustion": [h.as_dict() for h in self.exhaustion]}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def budget_of(strategy: Strategy) -> Budget:
    cf = strategy.emergency.container_failure
    return Budget(cf.max_restarts, cf.window.total_seconds(), cf.backoff.total_seconds(),
                  quarantine=cf.on_exhausted == "quarantine")


def sweep(backend: Backend, strategy: Strategy, instance: str, store: Store, record: Record, alert: Alert,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> SweepReport:
    """One pass: detect from one listing, act on what failed, persist the budgets."""
    now = clock()
    report = SweepReport(now)
    wanted = {c.name: c for c in strategy.containers}
    guests = backend.list_guests()
    states = load_states(store)
    held = maintenance(store)
    last_checked = checked(store)
    budget = budget_of(strategy)
    restart_on = strategy.emergency.container_failure.restart
    own = own_container()
    for g in sorted(guests, key=lambda g: g.vmid):
        c = wanted.get(g.name)
        if g.type != "lxc" or MANAGED_TAG not in g.tags or c is None:
            continue  # not a candidate: never read, never touched
        out = Outcome(g.name, g.vmid, g.node, g.status, "none")
        report.containers.append(out)
        st = states.get(g.name, RestartState())
        out.restarts_in_window = len(st.in_window(budget, now))
        if g.name == own:
            out.action, out.reason = "skipped", SELF_REASON.format(env=SELF_ENV)
            continue
        if g.name in held:
            out.action, out.reason = "skipped", f"in maintenance ({held[g.name].reason})"
            continue
        if st.quarantined_at is not None:
            out.action = "quarantined"
            out.reason = f"{st.quarantine_reason}; clear with 'pveguard recover clear {g.name}'"
            continue
        if g.status == "running" and not _checks_due(c, last_checked.get(g.name), now):
            # running, and no health check due (none configured, or within their interval): healthy
            _settle(store, g.name, st, decide(st, budget, now, failing=False))
            continue
        if g.lock:
            out.action, out.reason = "skipped", f"locked ({g.lock})"
            continue
        if g.status == "unknown":  # its node does not answer: starting it elsewhere is not ours to do
            out.action, out.reason = "unknown", "state unknown (is its node offline?)"
            continue
        why = _not_ours(backend, g, instance)
        if why:
            out.action, out.reason = "skipped", why
            continue
        if g.status == "running":
            out.checks = probes.run_checks(backend, g, c.health_checks)
            set_checked(store, g.name, now)
            health = probes.verdict(out.checks)
            if health is None:
                out.action, out.reason = "unknown", "a health check could not be run"
                continue
            if health:
                _settle(store, g.name, st, decide(st, budget, now, failing=False))
                continue
            failed = next(r for r in out.checks if r.ok is False)
            reason = f"unhealthy: {failed.check} failed ({failed.detail})"
        else:
            reason = f"not running ({g.status})"
        if not restart_on:
            out.action, out.reason = "exhausted", f"{reason}; emergency.container_failure.restart is off"
            continue
        d = decide(st, budget, now, failing=True, reason=reason)
        _settle(store, g.name, st, d)
        out.restarts_in_window = len(d.state.in_window(budget, now))
        out.retry_at = d.retry_at
        if d.kind == "restart":
            _restart(backend, g, c, reason, out, record, clock, sleep)
            if out.checks:
                set_checked(store, g.name, clock())
        elif d.kind == "wait":
            out.action, out.reason = "waiting", f"{reason}; backoff until the next restart"
        else:
            spent = f"{reason}; {len(d.state.restarts)} restart(s) within {strategy.emergency.container_failure.window}"
            out.action = "quarantined" if d.kind == "quarantine" else "exhausted"
            out.reason = spent + (f"; quarantined until 'pveguard recover clear {g.name}'" if d.kind == "quarantine"
                                  else "; the restart budget is spent")
            if d.alert:
                record(f"recover.{out.action}", f"ct/{g.vmid}", name=g.name, reason=out.reason,
                       restarts=len(d.state.restarts), on_exhausted=strategy.emergency.container_failure.on_exhausted)
                event = _event(g, out, now)
                alert(event)
                report.alerts.append(event)
    return report


def _checks_due(c: Container, last: float | None, now: float) -> bool:
    """The container's health checks run again once the shortest of their `interval`s has passed."""
    if not c.health_checks:
        return False
    period = min(h.interval.total_seconds() for h in c.health_checks)
    return last is None or now - last >= period or now < last


def _settle(store: Store, name: str, old: RestartState, d: Decision) -> None:
    if d.state != old:
        save_state(store, name, d.state)


def _not_ours(backend: Backend, g: Guest, instance: str) -> str | None:
    """Why the watchdog must leave this guest alone (read from its config), or None."""
    try:
        cfg = backend.get_config(g)
    except BackendError as exc:
        return f"config unreadable: {exc.message}"
    why = not_ours_or_locked(cfg, instance)
    if why is not None:
        return why
    if str(cfg.get("onboot", "0")) not in ("1", "true", "True"):
        return "onboot is off (not meant to run)"
    return None


def _restart(backend: Backend, g: Guest, c: Container, reason: str, out: Outcome, record: Record,
             clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """Stop (when not stopped), start, then wait for the health checks; intent and result in the ledger."""
    target = f"ct/{g.vmid}"  # as provisioning writes it, so one --target finds a container's whole story
    record("recover.restart.intent", target, name=g.name, reason=reason, status=g.status,
           attempt=out.restarts_in_window)
    started = clock()
    try:
        if g.status != "stopped":
            backend.stop(g)
        backend.start(g)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM half-way: the intent gets its result all the same
        record("recover.restart", target, name=g.name, reason=reason, result="interrupted")
        raise
    except BackendError as exc:
        out.action, out.reason = "restart-failed", f"{reason}; {exc.message}"
        record("recover.restart", target, name=g.name, reason=reason, result="failed", error=exc.message)
        return
    checks: list[probes.ProbeResult] = []
    if c.health_checks:
        deadline = clock() + HEALTHY_WITHIN + float(c.startup.up or 0)
        while True:
            checks = probes.run_checks(backend, g, c.health_checks)
            if probes.verdict(checks) or clock() >= deadline:
                break
            sleep(PROBE_PAUSE)
    out.checks = checks
    healthy = probes.verdict(checks) if checks else True
    seconds = round(clock() - started, 3)
    if healthy:
        out.action, out.reason = "restarted", reason
        record("recover.restart", target, name=g.name, reason=reason, result="ok", seconds=seconds)
    else:
        bad = [f"{r.check}: {r.detail}" for r in checks if r.ok is not True]
        out.action, out.reason = "restart-failed", f"{reason}; running but not healthy: {'; '.join(bad)}"
        record("recover.restart", target, name=g.name, reason=reason, result="unhealthy", checks=bad,
               seconds=seconds)


def _event(g: Guest, out: Outcome, now: float) -> dict[str, Any]:
    """A notification in the monitor's event shape (monitor/alerts.py Event.to_dict)."""
    rule = "container-quarantined" if out.action == "quarantined" else "restart-budget-exhausted"
    started = now
    return {"id": f"{rule}:lxc/{g.vmid}:{started:.3f}:firing", "kind": "firing", "rule": rule,
            "target": f"lxc/{g.vmid}", "name": g.name, "severity": "critical", "value": float(out.restarts_in_window),
            "threshold": float(out.restarts_in_window), "ts": now, "started_at": started,
            "description": out.reason, "repeat": False}
