"""The REST API under /api/v1 (beyond /status and /session, which live in app.py).

Reads need the viewer role; silencing alerts and approving/revoking packages the operator role;
apply the admin role. Every mutating call writes one ledger entry with the API caller as actor.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from pveguard.errors import PveguardError
from pveguard.serve import auth
from pveguard.serve.runtime import Runtime
from pveguard.serve.tokens import Caller

API = "/api/v1"


class SilenceIn(BaseModel):
    target: str = Field(..., min_length=1, description="guest name, id (lxc/101) or a glob (pve-*)")
    reason: str = Field(..., min_length=1)
    duration: str = Field("2h", description="how long, e.g. 30m, 2h, 1d")
    rule: str | None = Field(None, description="only this rule: cpu, memory, disk, down")


class ApprovalIn(BaseModel):
    package: str = Field(..., min_length=1, description="PKG or PKG=VERSION")
    reason: str = Field(..., min_length=1)
    ttl: str | None = Field(None, description="e.g. 2h, 1d; default: the policy's approval_ttl")
    uses: int = Field(1, ge=1, le=1000)


class ApplyIn(BaseModel):
    digest: str = Field(..., min_length=64, max_length=64, description="the plan digest from GET /api/v1/plan")
    prune: bool = False


def _duration(text: str, what: str) -> float:
    from pveguard.strategy.units import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise HTTPException(422, f"{what}: {exc}") from None
    if seconds <= 0:
        raise HTTPException(422, f"{what} must be longer than 0s")
    return seconds


def _user_error(exc: PveguardError) -> HTTPException:
    return HTTPException(422 if exc.exit_code == 2 else 409 if exc.exit_code == 3 else 502,
                         exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))


def register(app: FastAPI, rt: Runtime) -> None:
    viewer, _operator = Depends(auth.viewer), Depends(auth.operator)

    # --- alerts ------------------------------------------------------------------------------

    @app.get(f"{API}/alerts", tags=["alerts"], dependencies=[viewer])
    async def alerts(all: bool = Query(False, description="resolved ones too")) -> dict[str, Any]:
        """Alert states (firing and pending; `all` adds resolved) and the silences in force."""
        from pveguard.monitor.cli import alert_json, silence_json
        from pveguard.monitor.engine import load_silences, load_states

        now = time.time()
        states = sorted(load_states(rt.ctx.store).values(), key=lambda s: (s.state != "firing", s.rule, s.target))
        return {"alerts": [alert_json(s, now) for s in states if all or s.state in ("pending", "firing")],
                "silences": [silence_json(s) for s in load_silences(rt.ctx.store, now)]}

    @app.post(f"{API}/alerts/silences", tags=["alerts"], status_code=201)
    async def silence(body: SilenceIn, who: Caller = Depends(auth.operator)) -> dict[str, Any]:
        """Hold notifications for a target (operator)."""
        from pveguard.monitor.cli import silence_json
        from pveguard.monitor.engine import add_silence
        from pveguard.output import iso_utc

        if body.rule is not None and body.rule not in ("cpu", "memory", "disk", "down"):
            raise HTTPException(422, f"unknown rule {body.rule!r}: use cpu, memory, disk or down")
        try:
            sil = add_silence(rt.ctx.store, body.target, _duration(body.duration, "duration"), body.reason,
                              time.time(), body.rule)
        except PveguardError as exc:
            raise _user_error(exc) from None
        rt.record(who, "alerts.silence", body.target, silence_id=sil.id, rule=body.rule,
                  until=iso_utc(sil.until), reason=body.reason)
        return silence_json(sil)

    @app.delete(f"{API}/alerts/silences/{{silence_id}}", tags=["alerts"])
    async def unsilence(silence_id: int, who: Caller = Depends(auth.operator)) -> dict[str, Any]:
        """End a silence now (operator)."""
        from pveguard.monitor.cli import silence_json
        from pveguard.monitor.engine import end_silence

        try:
            sil = end_silence(rt.ctx.store, silence_id, time.time())
        except PveguardError as exc:
            raise HTTPException(404, exc.message) from None
        rt.record(who, "alerts.unsilence", sil.target, silence_id=sil.id)
        return silence_json(sil)

    # --- history ------------------------------------------------------------------------------

    @app.get(f"{API}/history/{{guest:path}}", tags=["status"], dependencies=[viewer])
    async def history(guest: str, metric: str = Query("cpu", description="cpu, memory, disk, disk_read, "
                                                      "disk_write, net_in, net_out"),
                      since: str = Query("6h", description="how far back: 30m, 6h, 7d")) -> dict[str, Any]:
        """A guest's recorded series (as 'pveguard monitor history --json'): name, vmid or id (lxc/101)."""
        from pveguard.monitor.collector import SERIES_UNITS
        from pveguard.monitor.series import SeriesStore
        from pveguard.output import iso_utc

        if metric not in SERIES_UNITS:
            raise HTTPException(422, f"unknown metric {metric!r}: use one of {', '.join(SERIES_UNITS)}")
        seconds = _duration(since, "since")
        series = SeriesStore(rt.ctx.store)
        target = series.resolve(guest)
        if target is None:
            raise HTTPException(404, f"no recorded series for guest {guest!r}")
        now = time.time()
        tier, points = series.history(target.id, metric, now - seconds, now)
        return {"guest": target.id, "name": target.name, "metric": metric, "unit": SERIES_UNITS[metric],
                "tier": tier,
                "points": [{"ts": iso_utc(p.ts), "value": p.value, "min": p.min, "max": p.max} for p in points]}

    # --- approvals ---------------------------------------------------------------------------

    @app.get(f"{API}/approvals", tags=["approvals"], dependencies=[viewer])
    async def approvals_list(all: bool = Query(False, description="expired, used-up and revoked ones too")
                             ) -> dict[str, Any]:
        """Package approvals (active ones unless `all`)."""
        from pveguard.guard import approvals

        now = time.time()
        return {"approvals": [r.as_dict(now) for r in approvals.listing(rt.ctx.store, include_all=all, now=now)]}

    @app.post(f"{API}/approvals", tags=["approvals"], status_code=201)
    async def approve(body: ApprovalIn, who: Caller = Depends(auth.operator)) -> dict[str, Any]:
        """Approve a package for the host with a reason and a TTL (operator)."""
        from pveguard.guard import approvals

        try:
            package, version = approvals.parse_spec(body.package)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        policy = rt.ctx.strategy_or_default().installation_policy
        ttl = _duration(body.ttl, "ttl") if body.ttl else policy.approval_ttl.total_seconds()
        record = approvals.add(rt.ctx.store, package, version, body.reason.strip(), ttl, body.uses, who.actor)
        rt.record(who, "guard.approve", package, approval=record.as_dict())
        return record.as_dict()

    @app.delete(f"{API}/approvals/{{approval_id}}", tags=["approvals"])
    async def revoke(approval_id: int, who: Caller = Depends(auth.operator)) -> dict[str, Any]:
        """Revoke an approval (operator)."""
        from pveguard.guard import approvals

        try:
            record = approvals.revoke(rt.ctx.store, approval_id, who.actor)
        except LookupError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        rt.record(who, "guard.revoke", record.package, approval=record.as_dict())
        return record.as_dict()

    # --- plan and apply ----------------------------------------------------------------------

    @app.get(f"{API}/plan", tags=["plan"])
    async def plan(prune: bool = False, who: Caller = Depends(auth.viewer)) -> dict[str, Any]:
        """What apply would do (read-only, as 'pveguard plan --json') and its `digest`."""
        from pveguard.serve.planning import plan_now

        try:
            return await asyncio.to_thread(plan_now, rt.ctx, prune, who.actor)
        except PveguardError as exc:
            raise _user_error(exc) from None

    @app.post(f"{API}/apply", tags=["plan"])
    async def apply(body: ApplyIn, who: Caller = Depends(auth.admin)) -> dict[str, Any]:
        """Apply the plan (admin), only when its digest is still the one sent: 409 when the plan changed.
        Deletes only with `prune`, never of containers with data volumes (the CLI's --i-mean-it)."""
        from pveguard.serve.planning import PlanChanged, apply_if_unchanged

        try:
            result = await asyncio.to_thread(apply_if_unchanged, rt.ctx, body.digest, body.prune, who.actor)
        except PlanChanged as exc:
            rt.record(who, "serve.apply.refused", "plan", digest=body.digest, reason=exc.message)
            raise HTTPException(409, exc.message + f" (hint: {exc.hint})") from None
        except PveguardError as exc:
            raise _user_error(exc) from None
        except KeyboardInterrupt as exc:  # ApplyInterrupted: a step was cut short; the journal resumes it
            raise HTTPException(500, f"apply was interrupted: {exc}; run it again to finish") from None
        rt.record(who, "serve.apply", "plan", digest=body.digest, ok=result["ok"], counts=result["plan"]["counts"])
        return result

    # --- audit, backups ------------------------------------------------------------------------

    @app.get(f"{API}/audit", tags=["audit"], dependencies=[viewer])
    async def audit(refresh: bool = False) -> dict[str, Any]:
        """The host audit report ('pveguard audit --json'): the daemon's latest, or a fresh one."""
        from pveguard.serve.jobs import run_cli

        if refresh or not isinstance(rt.extra.get("audit"), dict):
            try:
                data = await asyncio.to_thread(run_cli, rt, "audit", ["audit", "--json"])
            except PveguardError as exc:
                raise _user_error(exc) from None
            rt.extra["audit"] = data
            if isinstance(data, dict) and isinstance(data.get("score"), dict):
                rt.extra["compliance_score"] = data["score"].get("value")
        return dict(rt.extra["audit"])

    @app.get(f"{API}/backups", tags=["backups"], dependencies=[viewer])
    async def backups() -> dict[str, Any]:
        """Backup compliance per guest ('pveguard backup status --json') and the daemon's last
        'backup run --due' result."""
        from pveguard.serve.jobs import run_cli

        cached = rt.extra.get("backup_status")
        if not (isinstance(cached, tuple) and time.time() - cached[0] < 60):
            try:
                rows = await asyncio.to_thread(run_cli, rt, "backups", ["backup", "status", "--json"], (0, 1))
            except PveguardError as exc:
                raise _user_error(exc) from None
            cached = (time.time(), rows)
            rt.extra["backup_status"] = cached
        rows = cached[1] if isinstance(cached[1], list) else []
        return {"compliant": all(r.get("compliant", True) for r in rows if isinstance(r, dict)),
                "guests": rows, "last_run": rt.extra.get("backups_run")}

    # --- ledger ------------------------------------------------------------------------------

    @app.get(f"{API}/ledger", tags=["ledger"], dependencies=[viewer])
    async def ledger(
        action: str | None = Query(None, description="exact action or a prefix such as 'guard'"),
        target: str | None = None,
        actor: str | None = Query(None, description="substring of the actor"),
        since: str | None = Query(None, description="ISO time or a duration back from now (6h)"),
        before: int | None = Query(None, description="page: entries with seq below this"),
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Ledger entries, newest first, `limit` per page; `next_before` pages on."""
        return ledger_page(rt, action=action, target=target, actor=actor, since=since, before=before, limit=limit)

    @app.get(f"{API}/ledger/verify", tags=["ledger"], dependencies=[viewer])
    async def ledger_verify() -> dict[str, Any]:
        """Verify the chain, its head and anchors (as 'pveguard audit-log verify --json')."""
        return (await asyncio.to_thread(rt.ctx.verify_ledger)).as_dict()

    # --- events and metrics -------------------------------------------------------------------

    @app.get(f"{API}/events", tags=["events"], dependencies=[viewer])
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: `status` (new snapshot), `stale` (PVE unreachable), `job`, `alert`,
        `ledger`; a comment line every 15 s keeps proxies from closing the stream."""

        async def stream() -> AsyncIterator[bytes]:
            q = rt.events.attach()
            try:
                yield b"retry: 3000\n\n"
                while not await request.is_disconnected():
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if ev["type"] == "_close":  # the daemon is stopping
                        return
                    yield (f"id: {ev['id']}\nevent: {ev['type']}\n"
                           f"data: {json.dumps(ev, separators=(',', ':'))}\n\n").encode()
            finally:
                rt.events.detach(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics", tags=["metrics"], dependencies=[viewer])
    async def metrics() -> Response:
        """The Prometheus exposition of the exporter (`pveguard monitor --exporter`), from the daemon's
        last poll (written by its worker process)."""
        from pveguard.monitor.exporter import ExportView, render
        from pveguard.serve.worker import METRICS_FILE

        try:
            body = (rt.ctx.state_dir / METRICS_FILE).read_bytes()
        except FileNotFoundError:  # no poll yet
            body = render(ExportView(sweep=None, states={}, polls=0, errors=0))
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def ledger_page(rt: Runtime, *, action: str | None, target: str | None, actor: str | None, since: str | None,
                before: int | None, limit: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    from pveguard.strategy.units import parse_duration

    cut = None
    if since:
        try:
            cut = datetime.fromtimestamp(time.time() - parse_duration(since).total_seconds(), UTC).isoformat()
        except ValueError:
            try:
                cut = datetime.fromisoformat(since.replace("Z", "+00:00")).astimezone(UTC).isoformat()
            except ValueError:
                raise HTTPException(422, f"since: {since!r} is neither a duration (6h) nor an ISO time") from None
    # one more than a page, newest first: the extra one says whether an older page exists
    rows = rt.ctx.ledger.entries(since=cut, action=action, target=target, actor=actor, before=before,
                                 limit=limit + 1)[::-1]
    entries = [e.as_dict() for e in rows[:limit]]
    return {"entries": entries, "next_before": entries[-1]["seq"] if len(rows) > limit else None}
