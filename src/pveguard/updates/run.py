"""The update job: for each managed container, pending updates -> snapshot -> upgrade -> health checks,
rolled back to the snapshot when the upgrade or the checks fail (a plain function: the CLI runs it,
the timer runs the CLI, `serve` will run it on the strategy's schedule).

A container is touched only when it is in the strategy, carries this installation's marker, runs (apt
runs inside it) and holds no lock (backup, migrate, snapshot ...). A container that fails its health
checks *before* the update is left alone: a rollback could not tell the update's fault from the
one already there. Every step that changes something is in the ledger: the intent (snapshot name and
packages) before, the result (ok, rolled back, rollback failed) after, the pruned snapshots.
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
from pveguard.strategy.models import Container, Strategy
from pveguard.updates import apt

Record = Callable[..., None]
SNAP_PREFIX = "pveguard_upd_"  # PVE snapshot names are config ids: letters, digits, _ (pve-configid)
PROBE_PAUSE = 1.0
REFRESH_TIMEOUT = 300.0
UPGRADE_TIMEOUT = 3600.0


@dataclass
class Outcome:
    """What the run did with one container."""

    name: str
    vmid: int
    node: str
    status: str
    # up-to-date | would-update | updated | rolled-back | rollback-failed | failed | skipped
    action: str = "up-to-date"
    reason: str = ""
    pending: list[apt.Pending] = field(default_factory=list)
    selected: list[apt.Pending] = field(default_factory=list)
    snapshot: str | None = None
    pruned: list[str] = field(default_factory=list)
    checks: list[probes.ProbeResult] = field(default_factory=list)
    seconds: float = 0.0
    checked: bool = False  # the pending updates were read

    def left_pending(self) -> list[apt.Pending]:
        """What is still pending after this run (the installed ones are gone when the update succeeded)."""
        if self.action != "updated":
            return list(self.pending)
        done = {p.name for p in self.selected}
        return [p for p in self.pending if p.name not in done]

    @property
    def ok(self) -> bool:
        return self.action in ("up-to-date", "would-update", "updated", "skipped")

    @property
    def security_pending(self) -> int:
        return sum(1 for p in self.pending if p.security)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vmid": self.vmid, "node": self.node, "status": self.status,
                "action": self.action, "reason": self.reason, "pending": [p.as_dict() for p in self.pending],
                "security_pending": self.security_pending, "selected": [p.name for p in self.selected],
                "snapshot": self.snapshot, "pruned": self.pruned, "seconds": self.seconds,
                "checks": [{"check": c.check, "ok": c.ok, "detail": c.detail} for c in self.checks]}


@dataclass
class Report:
    ts: float
    security_only: bool
    dry_run: bool
    containers: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.containers)

    def as_dict(self) -> dict[str, Any]:
        return {"ts": datetime.fromtimestamp(self.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "ok": self.ok,
                "security_only": self.security_only, "dry_run": self.dry_run,
                "containers": [o.as_dict() for o in self.containers]}


def snapshot_name(now: float) -> str:
    return SNAP_PREFIX + datetime.fromtimestamp(now, UTC).strftime("%Y%m%d_%H%M%S")


def candidates(backend: Backend, strategy: Strategy, names: list[str] | None) -> list[tuple[Guest, Container]]:
    """This strategy's containers as the one listing shows them (only those named, when names are given)."""
    wanted = {c.name: c for c in strategy.containers if not names or c.name in names}
    return [(g, wanted[g.name]) for g in sorted(backend.list_guests(), key=lambda g: g.vmid)
            if g.type == "lxc" and MANAGED_TAG in g.tags and g.name in wanted]


def why_not(backend: Backend, g: Guest, instance: str) -> str | None:
    """Why this run must leave the guest alone, or None."""
    if g.lock:
        return f"locked ({g.lock})"
    if g.status != "running":
        return f"not running ({g.status}): apt runs inside the container; start it first"
    try:
        cfg = backend.get_config(g)
    except BackendError as exc:
        return f"config unreadable: {exc.message}"
    return not_ours_or_locked(cfg, instance)


def pending(backend: Backend, g: Guest, refresh: bool = True) -> list[apt.Pending]:
    """The upgrades apt inside the container would make (after `apt-get update` when `refresh`)."""
    if refresh:
        r = backend.exec(g, apt.REFRESH, timeout=REFRESH_TIMEOUT)
        if not r.ok:
            raise BackendError(f"apt-get update inside {g.name} failed (exit {r.returncode}): "
                               f"{_last(r.stderr or r.stdout)}",
                               hint=f"look at the container's apt sources (pct enter {g.vmid}; apt-get update)")
    r = backend.exec(g, apt.SIMULATE, timeout=REFRESH_TIMEOUT)
    if not r.ok:
        raise BackendError(f"apt-get -s upgrade inside {g.name} failed (exit {r.returncode}): "
                           f"{_last(r.stderr or r.stdout)}",
                           hint="a half-done dpkg run? run 'dpkg --configure -a' inside the container")
    return apt.parse_simulation(r.stdout)


def apt_error(text: str) -> str:
    """The line that says why apt failed: dpkg's own error (a failing maintainer script), else apt's first
    `E:` line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("dpkg: error processing"):
            detail = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith(("dpkg:", "E:")) else ""
            return (ln.rstrip(":") + (f": {detail}" if detail else ""))[:300]
    return next((ln[:300] for ln in lines if ln.startswith("E:")), _last(text))


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def wait_healthy(backend: Backend, g: Guest, c: Container, within: float, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> list[probes.ProbeResult]:
    """The container's health checks, repeated until they pass or `within` seconds have gone by."""
    if not c.health_checks:
        return []
    deadline = clock() + within
    while True:
        checks = probes.run_checks(backend, g, c.health_checks)
        if probes.verdict(checks) or clock() >= deadline:
            return checks
        sleep(PROBE_PAUSE)


def run(backend: Backend, strategy: Strategy, instance: str, record: Record, *, names: list[str] | None = None,
        security_only: bool = False, dry_run: bool = False, refresh: bool = True,
        clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> Report:
    report = Report(clock(), security_only, dry_run)
    for g, c in candidates(backend, strategy, names):
        out = Outcome(g.name, g.vmid, g.node, g.status)
        report.containers.append(out)
        why = why_not(backend, g, instance)
        if why:
            out.action, out.reason = "skipped", why
            continue
        try:
            out.pending = pending(backend, g, refresh)
        except BackendError as exc:
            out.action, out.reason = "failed", exc.message
            continue
        out.checked = True
        out.selected = [p for p in out.pending if p.security] if security_only else list(out.pending)
        if not out.selected:
            out.action = "up-to-date"
            out.reason = (f"{len(out.pending)} update(s) pending, none from a security archive"
                          if out.pending else "")
            continue
        if dry_run:
            out.action = "would-update"
            out.reason = f"would snapshot, then upgrade {len(out.selected)} package(s)"
            continue
        before = probes.run_checks(backend, g, c.health_checks) if c.health_checks else []
        if probes.verdict(before) is not True and before:
            out.checks = before
            bad = next(r for r in before if r.ok is not True)
            out.action = "skipped"
            out.reason = f"unhealthy before the update ({bad.check}: {bad.detail or 'could not be run'}): not updated"
            continue
        update_one(backend, strategy, g, c, out, record, security_only, clock, sleep)
    return report


def update_one(backend: Backend, strategy: Strategy, g: Guest, c: Container, out: Outcome, record: Record,
               security_only: bool, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    target = f"ct/{g.vmid}"
    started = clock()
    snap = out.snapshot = snapshot_name(started)
    try:
        taken = {s.name for s in backend.snapshots(g)}
    except BackendError as exc:
        out.snapshot = None
        out.action, out.reason = "failed", f"cannot list its snapshots, nothing changed: {exc.message}"
        return
    n = 1
    while snap in taken:  # a second run within the same second
        n += 1
        snap = out.snapshot = f"{snapshot_name(started)}_{n}"
    packages = [f"{p.name} {p.installed} -> {p.candidate}" + (" (security)" if p.security else "")
                for p in out.selected]
    record("update.intent", target, name=g.name, snapshot=snap, security_only=security_only, packages=packages)
    try:
        backend.snapshot(g, snap, f"pveguard update: before upgrading {len(out.selected)} package(s)")
    except BackendError as exc:
        out.snapshot = None
        out.action, out.reason = "failed", f"snapshot failed, nothing changed: {exc.message}"
        record("update", target, name=g.name, result="snapshot-failed", error=exc.message)
        return
    within = strategy.updates.health_timeout.total_seconds() + float(c.startup.up or 0)
    why = ""
    try:
        res = backend.exec(g, apt.upgrade_argv(out.selected if security_only else None), timeout=UPGRADE_TIMEOUT)
        if not res.ok:
            why = f"apt-get failed (exit {res.returncode}): {apt_error(res.stdout + chr(10) + res.stderr)}"
        else:
            out.checks = wait_healthy(backend, g, c, within, clock, sleep)
            if out.checks and probes.verdict(out.checks) is not True:
                bad = next(r for r in out.checks if r.ok is not True)
                why = f"unhealthy after the upgrade: {bad.check} ({bad.detail or 'could not be run'})"
    except BackendError as exc:
        why = f"upgrade failed: {exc.message}"
    except KeyboardInterrupt:
        record("update", target, name=g.name, result="interrupted", snapshot=snap)
        raise
    if why:
        rollback(backend, g, c, out, record, why, within, clock, sleep)
    else:
        out.action = "updated"
        out.seconds = round(clock() - started, 3)
        record("update", target, name=g.name, result="ok", snapshot=snap, packages=packages, seconds=out.seconds)
        prune(backend, g, strategy.updates.keep_snapshots, out, record)
    out.seconds = round(clock() - started, 3)


def rollback(backend: Backend, g: Guest, c: Container, out: Outcome, record: Record, why: str, within: float,
             clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """Back to the snapshot, started again, then the health checks once more; all in the ledger."""
    target = f"ct/{g.vmid}"
    snap = str(out.snapshot)
    record("update.rollback.intent", target, name=g.name, snapshot=snap, reason=why)
    try:
        backend.rollback(g, snap, start=True)
    except BackendError as exc:
        out.action = "rollback-failed"
        out.reason = (f"{why}; the rollback to {snap} failed: {exc.message} -- roll back by hand "
                      f"(pct rollback {g.vmid} {snap})")
        record("update", target, name=g.name, result="rollback-failed", snapshot=snap, reason=why, error=exc.message)
        return
    after = wait_healthy(backend, g, c, within, clock, sleep)
    healthy = probes.verdict(after) if after else True
    out.checks = after
    out.action = "rolled-back" if healthy else "rollback-failed"
    out.reason = why + ("" if healthy else "; still unhealthy after the rollback: look at the container")
    record("update", target, name=g.name, result="rolled-back" if healthy else "rolled-back-unhealthy",
           snapshot=snap, reason=why, checks=[f"{r.check}: {'ok' if r.ok else r.detail}" for r in after])


def prune(backend: Backend, g: Guest, keep: int, out: Outcome, record: Record) -> None:
    """Delete this tool's update snapshots beyond the newest `keep` (other snapshots are never touched)."""
    try:
        ours = [s for s in backend.snapshots(g) if s.name.startswith(SNAP_PREFIX)]
    except BackendError as exc:
        out.reason = f"snapshots not pruned: {exc.message}"
        return
    ours.sort(key=lambda s: (s.snaptime, s.name))
    doomed = ours[:max(0, len(ours) - keep)]
    for s in doomed:
        try:
            backend.delete_snapshot(g, s.name)
        except BackendError as exc:
            out.reason = f"snapshot {s.name} not deleted: {exc.message}"
            continue
        out.pruned.append(s.name)
    if out.pruned:
        record("update.prune", f"ct/{g.vmid}", name=g.name, deleted=out.pruned, keep=keep)
