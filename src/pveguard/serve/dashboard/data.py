"""What the pages show, read from the runtime and the store (event-loop thread), and the form
operations, which do what the API's routes do (same checks, same ledger entries)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from pveguard.errors import PveguardError
from pveguard.serve.runtime import Runtime
from pveguard.serve.tokens import Caller

RANGES = ("1h", "6h", "24h", "7d", "30d")
METRICS = (("CPU", "cpu", "%"), ("Memory", "memory", "%"), ("Disk", "disk", "%"),
           ("Network in", "net_in", "B/s"), ("Network out", "net_out", "B/s"))
PENDING_WINDOW = 7 * 86400.0


def human_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"


def _ts(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    s = int(seconds)
    for div, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= div:
            return f"{s // div}{unit}"
    return f"{s}s"


def ago(value: Any) -> str:
    """'3m ago' for an ISO time or epoch; 'in 2h' for a future one."""
    ts = _ts(value)
    if ts is None:
        return "–"
    delta = time.time() - ts
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def parse_since(text: str) -> float:
    from pveguard.strategy.units import parse_duration

    seconds = parse_duration(text).total_seconds()
    if seconds <= 0 or seconds > 31 * 86400:
        raise ValueError(f"range {text!r}: use one of {', '.join(RANGES)}")
    return seconds


# --- reads -------------------------------------------------------------------------------------


async def backups(rt: Runtime) -> dict[str, Any]:
    """Backup compliance per guest, the API's 60 s cache ('pveguard backup status --json')."""
    from pveguard.serve.jobs import run_cli

    cached = rt.extra.get("backup_status")
    if not (isinstance(cached, tuple) and time.time() - cached[0] < 60):
        try:
            rows = await asyncio.to_thread(run_cli, rt, "backups", ["backup", "status", "--json"], (0, 1))
        except PveguardError as exc:
            return {"error": exc.message, "guests": [], "compliant": None}
        cached = (time.time(), rows)
        rt.extra["backup_status"] = cached
    rows = [r for r in cached[1] if isinstance(r, dict)] if isinstance(cached[1], list) else []
    return {"error": None, "guests": rows, "compliant": all(r.get("compliant", True) for r in rows),
            "failing": [r for r in rows if r.get("compliant") is False]}


def alert_states(rt: Runtime) -> list[dict[str, Any]]:
    from pveguard.monitor.cli import alert_json
    from pveguard.monitor.engine import load_states

    now = time.time()
    states = sorted(load_states(rt.ctx.store).values(), key=lambda s: (s.state != "firing", s.rule, s.target))
    return [alert_json(s, now) for s in states if s.state in ("pending", "firing")]


def silences(rt: Runtime) -> list[dict[str, Any]]:
    from pveguard.monitor.cli import silence_json
    from pveguard.monitor.engine import load_silences

    return [silence_json(s) for s in load_silences(rt.ctx.store, time.time())]


def approvals(rt: Runtime, include_all: bool = False) -> list[dict[str, Any]]:
    from pveguard.guard import approvals as mod

    now = time.time()
    return [r.as_dict(now) for r in mod.listing(rt.ctx.store, include_all=include_all, now=now)]


def pending_requests(rt: Runtime) -> list[dict[str, Any]]:
    """Packages the apt guard refused in the last 7 days that no active approval covers since: what
    an operator is being asked to approve (newest first, one row per package)."""
    active = {a["package"] for a in approvals(rt) if a["state"] == "active"}
    cut = datetime.fromtimestamp(time.time() - PENDING_WINDOW, UTC).isoformat()
    rt.ctx.ledger  # noqa: B018 - makes sure the ledger tables exist
    rows = rt.ctx.store.conn.execute(
        "SELECT seq, ts, actor, details FROM ledger WHERE action = 'guard.decision' AND ts >= ? "
        "ORDER BY seq DESC LIMIT 500", (cut,)).fetchall()
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        try:
            details = json.loads(row["details"]) if isinstance(row["details"], str) else row["details"]
        except ValueError:
            continue
        if not isinstance(details, dict) or details.get("verdict") != "refused":
            continue
        reasons = {p.get("package"): p.get("reason") for p in details.get("packages", []) if isinstance(p, dict)}
        for pkg in details.get("refused", []):
            if isinstance(pkg, str) and pkg not in active and pkg not in seen:
                seen[pkg] = {"package": pkg, "ts": row["ts"], "actor": row["actor"], "seq": row["seq"],
                             "reason": reasons.get(pkg) or "", "command": details.get("apt_command_line") or ""}
    return list(seen.values())


def ledger_entries(rt: Runtime, limit: int) -> list[dict[str, Any]]:
    return list(ledger_page(rt, action=None, actor=None, target=None, before=None, limit=limit)["entries"])


def ledger_page(rt: Runtime, **kw: Any) -> dict[str, Any]:
    from pveguard.serve.api import ledger_page as api_page

    return api_page(rt, since=None, **kw)


async def ledger_verify(rt: Runtime) -> dict[str, Any]:
    """'audit-log verify' of the whole chain, again only when the ledger grew or after 60 s (a long
    ledger takes a while and the page refreshes on every new entry)."""
    rt.ctx.ledger  # noqa: B018 - makes sure the ledger tables exist
    head = rt.ctx.store.conn.execute("SELECT MAX(seq) FROM ledger").fetchone()[0]
    cached = rt.extra.get("dashboard_verify")
    if isinstance(cached, tuple) and cached[0] == head and time.time() - cached[1] < 60:
        return dict(cached[2])
    result = (await asyncio.to_thread(rt.ctx.verify_ledger)).as_dict()
    rt.extra["dashboard_verify"] = (head, time.time(), result)
    return result


def history(rt: Runtime, cid: str, seconds: float) -> tuple[Any, list[tuple[str, str, list[Any], str]]]:
    from pveguard.monitor.series import SeriesStore

    series = SeriesStore(rt.ctx.store)
    target = series.resolve(cid)
    now = time.time()
    out = []
    for label, metric, unit in METRICS:
        tier, points = series.history(cid, metric, now - seconds, now)
        if len(points) > 600:  # at most ~one point per pixel column
            step = len(points) / 600
            points = [points[int(i * step)] for i in range(600)]
        out.append((label, unit, points, tier))
    return target, out


async def run_audit(rt: Runtime) -> dict[str, Any] | None:
    from pveguard.serve.jobs import run_cli

    report = await asyncio.to_thread(run_cli, rt, "audit", ["audit", "--json"])
    if isinstance(report, dict):
        rt.extra["audit"] = report
        if isinstance(report.get("score"), dict):
            rt.extra["compliance_score"] = report["score"].get("value")
        return report
    return None


# --- the form operations (as the API's routes) ----------------------------------------------------


def _seconds(text: str, what: str) -> float:
    from pveguard.strategy.units import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"{what} must be longer than 0s")
    return seconds


def approve(rt: Runtime, who: Caller, spec: str, reason: str, ttl: str | None) -> dict[str, Any]:
    from pveguard.guard import approvals as mod

    if not spec:
        raise ValueError("name the package to approve (PKG or PKG=VERSION)")
    if not reason:
        raise ValueError("say why the package is approved (the reason goes to the ledger)")
    package, version = mod.parse_spec(spec)
    policy = rt.ctx.strategy_or_default().installation_policy
    seconds = _seconds(ttl, "ttl") if ttl else policy.approval_ttl.total_seconds()
    record = mod.add(rt.ctx.store, package, version, reason, seconds, 1, who.actor)
    rt.record(who, "guard.approve", package, approval=record.as_dict())
    return record.as_dict()


def revoke(rt: Runtime, who: Caller, approval_id: int) -> dict[str, Any]:
    from pveguard.guard import approvals as mod

    try:
        record = mod.revoke(rt.ctx.store, approval_id, who.actor)
    except LookupError as exc:
        raise ValueError(str(exc.args[0])) from None
    rt.record(who, "guard.revoke", record.package, approval=record.as_dict())
    return record.as_dict()


def silence(rt: Runtime, who: Caller, target: str, reason: str, dur: str, rule: str | None) -> dict[str, Any]:
    from pveguard.monitor.cli import silence_json
    from pveguard.monitor.engine import add_silence
    from pveguard.output import iso_utc

    if not target:
        raise ValueError("name the target to silence: a guest name, id (lxc/101) or a glob (pve-*)")
    if rule is not None and rule not in ("cpu", "memory", "disk", "down"):
        raise ValueError(f"unknown rule {rule!r}: use cpu, memory, disk or down")
    try:
        sil = add_silence(rt.ctx.store, target, _seconds(dur, "duration"), reason, time.time(), rule)
    except PveguardError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    rt.record(who, "alerts.silence", target, silence_id=sil.id, rule=rule, until=iso_utc(sil.until), reason=reason)
    return silence_json(sil)


def unsilence(rt: Runtime, who: Caller, silence_id: int) -> None:
    from pveguard.monitor.engine import end_silence

    try:
        sil = end_silence(rt.ctx.store, silence_id, time.time())
    except PveguardError as exc:
        raise ValueError(exc.message) from None
    rt.record(who, "alerts.unsilence", sil.target, silence_id=sil.id)
