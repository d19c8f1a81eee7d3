"""FastAPI dependencies: who is calling (bearer token or web session) and may they.

* `caller` — the `Caller` (name, role) from `Authorization: Bearer pvg_...` or the session cookie;
  401 without either (or with a revoked / expired one).
* `require("operator")` — the caller when their role is at least that, else 403.
* Session callers must send the session's CSRF token on every request that is not GET/HEAD/OPTIONS:
  header `X-CSRF-Token`, or form field `csrf_token`. Bearer callers need none (browsers never
  send a bearer header by themselves). A missing or wrong one is 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Depends, HTTPException, Request

from pveguard.serve import tokens
from pveguard.serve.tokens import Caller, Role

SESSION_COOKIE = "pveguard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _runtime(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime


async def caller(request: Request) -> Caller:
    """The authenticated caller; 401 (with WWW-Authenticate) when there is none."""
    cached = getattr(request.state, "caller", None)
    if isinstance(cached, Caller):
        return cached
    rt = _runtime(request)
    header = request.headers.get("authorization", "")
    found: Caller | None = None
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HTTPException(401, "use 'Authorization: Bearer <token>' (create one with 'pveguard api-token "
                                "create NAME --role viewer')", headers={"WWW-Authenticate": "Bearer"})
        found = tokens.authenticate(rt.store, secret.strip())
        if found is None:
            raise HTTPException(401, "the token is unknown, revoked or expired",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    else:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            found = tokens.session_caller(rt.store, sid)
        if found is None:
            raise HTTPException(401, "log in (POST /login with a token) or send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method not in SAFE_METHODS:
            await _check_csrf(request, found)
    request.state.caller = found
    return found


async def _check_csrf(request: Request, who: Caller) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or who.csrf is None or not hmac.compare_digest(sent, who.csrf):
        raise HTTPException(403, f"CSRF check failed: send the session's CSRF token as the {CSRF_HEADER} header "
                            f"or the '{CSRF_FIELD}' form field")


async def optional_caller(request: Request) -> Caller | None:
    """The caller, or None instead of 401 (for pages that redirect to a login form). A session
    caller's unsafe request without the CSRF token still gets 403."""
    try:
        return await caller(request)
    except HTTPException as exc:
        if exc.status_code == 401:
            return None
        raise


def require(role: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller when their role is `role` or above, else 403 naming both roles."""

    async def check(who: Caller = Depends(caller)) -> Caller:
        if not who.may(role):
            raise HTTPException(403, f"this needs the {role} role; token {who.name!r} has {who.role}")
        return who

    check.__name__ = f"require_{role}"
    return check


viewer = require("viewer")
operator = require("operator")
admin = require("admin")
