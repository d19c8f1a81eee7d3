"""The FastAPI application: /healthz, /login, /logout, /metrics and the REST API under /api/v1.

`create_app(runtime)` builds it; the web dashboard adds its pages by `register(app)` in
`pveguard.serve.dashboard` (imported when present). See docs/serve.md for the interface.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from pveguard import __version__
from pveguard.serve import auth, tokens
from pveguard.serve.runtime import Runtime

API = "/api/v1"


def create_app(runtime: Runtime, *, dashboard: bool = True) -> FastAPI:
    app = FastAPI(title="pveguard", version=__version__, openapi_url="/openapi.json", docs_url="/api/docs",
                  redoc_url=None,
                  description="pveguard's REST API. Bearer tokens from 'pveguard api-token create NAME --role "
                  "viewer|operator|admin'; roles are ordered viewer < operator < admin.")
    app.state.runtime = runtime

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        """Liveness without auth: the process answers; `stale` says whether PVE data is current."""
        return {"ok": True, "version": __version__,
                "stale": runtime.stale_since is not None or runtime.snapshot_at is None,
                "uptime_s": round(time.time() - runtime.started_at, 1)}

    @app.post("/login", tags=["session"])
    async def login(request: Request) -> Response:
        """Trade a token for a web session: form field or JSON key `token` (optional `next`, a local path).

        Sets the HttpOnly, SameSite=Strict cookie `pveguard_session` (Secure under TLS) and answers
        `{"name", "role", "csrf_token"}`, or a 303 to `next` for a form post."""
        is_form = request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data"))
        if is_form:
            form = await request.form()
            secret, nxt = form.get("token"), form.get("next")
        else:
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise HTTPException(400, 'send {"token": "pvg_..."} as JSON or a form field "token"')
            secret, nxt = body.get("token"), body.get("next")
        if not isinstance(secret, str) or not secret.strip():
            raise HTTPException(400, "the token is missing")
        who = tokens.authenticate(runtime.store, secret.strip())
        if who is None:
            raise HTTPException(401, "the token is unknown, revoked or expired")
        ttl = runtime.ctx.strategy_or_default().serve.session_ttl.total_seconds()
        sid, csrf = tokens.open_session(runtime.store, who, ttl)
        runtime.record(who, "serve.login", who.name)
        resp: Response
        if is_form and isinstance(nxt, str) and nxt.startswith("/") and not nxt.startswith("//"):
            resp = RedirectResponse(nxt, status_code=303)
        else:
            resp = JSONResponse({"name": who.name, "role": who.role, "csrf_token": csrf})
        resp.set_cookie(auth.SESSION_COOKIE, sid, max_age=int(ttl), httponly=True, samesite="strict",
                        secure=runtime.secure_cookies, path="/")
        return resp

    @app.post("/logout", tags=["session"])
    async def logout(request: Request, who: tokens.Caller = Depends(auth.caller)) -> Response:
        """End the web session (CSRF token required like every session POST)."""
        sid = request.cookies.get(auth.SESSION_COOKIE)
        if sid:
            tokens.close_session(runtime.store, sid)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(auth.SESSION_COOKIE, path="/")
        return resp

    @app.get(f"{API}/session", tags=["session"])
    async def session(who: tokens.Caller = Depends(auth.viewer)) -> dict[str, Any]:
        """Who is calling; for a web session also its CSRF token (for forms and fetch)."""
        return {"name": who.name, "role": who.role, "via": who.via, "csrf_token": who.csrf}

    @app.get(f"{API}/status", tags=["status"], dependencies=[Depends(auth.viewer)])
    async def status() -> Response:
        """Service containers with live usage, guest counts, firing alerts, compliance score, guard
        state, jobs, and `stale_since` when PVE is unreachable (the last state is kept)."""
        return Response(runtime.status_bytes(), media_type="application/json")

    from pveguard.serve import api

    api.register(app, runtime)
    if dashboard:
        try:
            mod = importlib.import_module("pveguard.serve.dashboard")
        except ModuleNotFoundError as exc:
            if exc.name != "pveguard.serve.dashboard":
                raise
        else:
            mod.register(app, runtime)
    return app
