"""The web dashboard: server-rendered pages (jinja2), a small static script for live updates over
SSE, forms with the session's CSRF token. `register(app, runtime)` is called by `create_app`.

Pages: / (overview), /containers/{id}, /alerts, /approvals, /audit, /ledger, /login. Every page
needs a web session (or a bearer token); without one a page answers 303 to /login?next=PATH.
Forms post to the page routes below, which act like the API (same roles, same ledger entries)
and answer 303 back to the page with a notice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from pveguard import __version__
from pveguard.errors import PveguardError
from pveguard.serve import auth, tokens
from pveguard.serve.dashboard import data
from pveguard.serve.dashboard.charts import svg_chart
from pveguard.serve.runtime import Runtime
from pveguard.serve.tokens import Caller

HERE = Path(__file__).parent
# Pages never cached, never framed (clickjacking on the approve buttons), scripts only from here.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGES = ("/", "/containers", "/alerts", "/approvals", "/audit", "/ledger")

env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)
env.filters["pct"] = lambda v: "–" if v is None else f"{float(v):.0f}%"
env.filters["bytes"] = data.human_bytes
env.filters["ago"] = data.ago
env.filters["duration"] = data.duration


def _is_page(request: Request) -> bool:
    path = request.url.path
    return request.method == "GET" and (path == "/" or any(path.startswith(p + "/") or path == p
                                                            for p in PAGES[1:]))


def register(app: FastAPI, rt: Runtime) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 401 and _is_page(request):
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": nxt}), status_code=303)
        if exc.status_code == 401 and request.url.path == "/login" and request.method == "POST" \
                and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = await request.form()
            sent = form.get("next")
            return render(request, "login.html", None, status=401, error=str(exc.detail),
                          next=sent if isinstance(sent, str) else "/")
        if exc.status_code == 403 and request.method == "POST" and not request.url.path.startswith("/api/") \
                and request.url.path != "/logout":
            return render(request, "error.html", None, status=403, title="Not allowed", error=str(exc.detail))
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, on_http_error)

    def render(request: Request, template: str, who: Caller | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        st = rt.status()
        html = env.get_template(template).render(
            request=request, who=who, version=__version__, path=request.url.path, stale=st["stale"],
            stale_since=st["stale_since"], pve_error=st["pve_error"], snapshot_at=st["snapshot_at"],
            notice=request.query_params.get("notice"), error_msg=request.query_params.get("error"), **ctx)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def back(path: str, **params: str) -> RedirectResponse:
        return RedirectResponse(path + ("?" + urlencode(params) if params else ""), status_code=303)

    # --- login / logout -----------------------------------------------------------------------

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request, next: str = "/") -> Response:
        if not (next.startswith("/") and not next.startswith("//")):
            next = "/"
        return render(request, "login.html", None, next=next, error=None)

    @app.post("/ui/logout", include_in_schema=False)
    async def ui_logout(request: Request, who: Caller = Depends(auth.caller)) -> Response:
        sid = request.cookies.get(auth.SESSION_COOKIE)
        if sid:
            tokens.close_session(rt.store, sid)
        resp = back("/login")
        resp.delete_cookie(auth.SESSION_COOKIE, path="/")
        return resp

    # --- pages -------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def overview(request: Request, who: Caller = Depends(auth.viewer)) -> Response:
        st = rt.status()
        backups = await data.backups(rt)
        pending = data.pending_requests(rt)
        ledger = data.ledger_entries(rt, limit=8)
        return render(request, "overview.html", who, st=st, backups=backups, pending=pending, ledger=ledger)

    @app.get("/containers/{kind}/{vmid}", include_in_schema=False)
    async def container(request: Request, kind: str, vmid: int, since: str = "6h",
                        who: Caller = Depends(auth.viewer)) -> Response:
        cid = f"{kind}/{vmid}"
        st = rt.status()
        live = next((c for c in st["containers"] if c["id"] == cid), None)
        try:
            seconds = data.parse_since(since)
        except ValueError as exc:
            return render(request, "error.html", who, status=422, title="Bad range", error=str(exc))
        target, series = data.history(rt, cid, seconds)
        if live is None and target is None:
            return render(request, "error.html", who, status=404, title="No such container",
                          error=f"{cid} is not a service container pveguard watches and has no recorded history")
        now = time.time()
        charts = [(label, svg_chart(label, pts, unit, now - seconds, now), tier)
                  for label, unit, pts, tier in series]
        alerts = [a for a in data.alert_states(rt) if a["target"] == cid]
        return render(request, "container.html", who, cid=cid, live=live, target=target, charts=charts,
                      since=since, ranges=data.RANGES, alerts=alerts)

    @app.get("/alerts", include_in_schema=False)
    async def alerts_page(request: Request, who: Caller = Depends(auth.viewer)) -> Response:
        return render(request, "alerts.html", who, alerts=data.alert_states(rt), silences=data.silences(rt),
                      target=request.query_params.get("target", ""))

    @app.get("/approvals", include_in_schema=False)
    async def approvals_page(request: Request, who: Caller = Depends(auth.viewer)) -> Response:
        return render(request, "approvals.html", who, approvals=data.approvals(rt, include_all=True),
                      pending=data.pending_requests(rt), package=request.query_params.get("package", ""))

    @app.get("/audit", include_in_schema=False)
    async def audit_page(request: Request, refresh: bool = False, who: Caller = Depends(auth.viewer)) -> Response:
        report, err = rt.extra.get("audit"), None
        if refresh or not isinstance(report, dict):
            try:
                report = await data.run_audit(rt)
            except PveguardError as exc:
                err = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        return render(request, "audit.html", who, report=report if isinstance(report, dict) else None,
                      audit_error=err)

    @app.get("/ledger", include_in_schema=False)
    async def ledger_page(request: Request, action: str = "", actor: str = "", target: str = "",
                          before: int | None = None, who: Caller = Depends(auth.viewer)) -> Response:
        page = data.ledger_page(rt, action=action or None, actor=actor or None, target=target or None,
                                before=before, limit=50)
        verify = await data.ledger_verify(rt)
        more = None
        if page["next_before"] is not None:
            more = "/ledger?" + urlencode({k: v for k, v in (("action", action), ("actor", actor),
                                                             ("target", target)) if v}
                                          | {"before": page["next_before"]})
        return render(request, "ledger.html", who, entries=page["entries"], verify=verify, more=more,
                      f_action=action, f_actor=actor, f_target=target)

    # --- forms (the API's operations, for the pages) ------------------------------------------

    @app.post("/ui/approvals", include_in_schema=False)
    async def approve_form(request: Request, who: Caller = Depends(auth.operator)) -> Response:
        form = await request.form()
        package, reason = str(form.get("package") or "").strip(), str(form.get("reason") or "").strip()
        ttl = str(form.get("ttl") or "").strip()
        try:
            record = data.approve(rt, who, package, reason, ttl or None)
        except ValueError as exc:
            return back("/approvals", error=str(exc), package=package)
        return back("/approvals", notice=f"approved {record['package']} (#{record['id']}) until "
                    f"{record['expires_at']}")

    @app.post("/ui/approvals/{approval_id}/revoke", include_in_schema=False)
    async def revoke_form(approval_id: int, who: Caller = Depends(auth.operator)) -> Response:
        try:
            record = data.revoke(rt, who, approval_id)
        except ValueError as exc:
            return back("/approvals", error=str(exc))
        return back("/approvals", notice=f"revoked approval #{approval_id} ({record['package']})")

    @app.post("/ui/silences", include_in_schema=False)
    async def silence_form(request: Request, who: Caller = Depends(auth.operator)) -> Response:
        form = await request.form()
        target, reason = str(form.get("target") or "").strip(), str(form.get("reason") or "").strip()
        duration, rule = str(form.get("duration") or "2h").strip(), str(form.get("rule") or "").strip() or None
        try:
            sil = data.silence(rt, who, target, reason, duration, rule)
        except ValueError as exc:
            return back("/alerts", error=str(exc), target=target)
        return back("/alerts", notice=f"silenced {sil['target']} until {sil['until']}")

    @app.post("/ui/silences/{silence_id}/end", include_in_schema=False)
    async def unsilence_form(silence_id: int, who: Caller = Depends(auth.operator)) -> Response:
        try:
            data.unsilence(rt, who, silence_id)
        except ValueError as exc:
            return back("/alerts", error=str(exc))
        return back("/alerts", notice=f"ended silence #{silence_id}")

