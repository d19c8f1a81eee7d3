"""Notification endpoints (sendmail, gotify, smtp, webhook), matchers, targets, and delivery records."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.state import Sim, die

KINDS = ("sendmail", "gotify", "smtp", "webhook")
_SECRET = {"token", "password", "secret"}
_LIST_KEYS = {
    "mailto",
    "mailto-user",
    "target",
    "match-field",
    "match-severity",
    "match-calendar",
    "header",
    "secret",
}
_SEVERITIES = ["info", "notice", "warning", "error", "unknown"]


def _digest(obj: Any) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()


def _as_list(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _all_targets(sim: Sim) -> dict[str, tuple[str, dict[str, Any]]]:
    return {name: (kind, e) for kind in KINDS for name, e in sim.notif_endpoints[kind].items()}


def _view(e: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in e.items() if k not in _SECRET}
    d.setdefault("origin", "user-created")
    return d


def _endpoint_handlers(kind: str) -> None:
    base = f"/cluster/notifications/endpoints/{kind}"

    def list_(ctx: Ctx) -> list[dict[str, Any]]:
        return [_view(e) for e in ctx.sim.notif_endpoints[kind].values()]

    def create(ctx: Ctx) -> None:
        name = str(ctx.p["name"])
        if name in _all_targets(ctx.sim) or name in ctx.sim.notif_matchers:
            raise die(f"{kind} '{name}' already exists")
        if kind in ("sendmail", "smtp") and not (ctx.p.get("mailto") or ctx.p.get("mailto-user")):
            raise die("must at least provide one recipient, either in mailto or in mailto-user")
        e = {k: (_as_list(v) if k in _LIST_KEYS else v) for k, v in ctx.p.items()}
        e["origin"] = "user-created"
        ctx.sim.notif_endpoints[kind][name] = e
        return None

    def get(ctx: Ctx) -> dict[str, Any]:
        e = _one(ctx)
        return {**_view(e), "digest": _digest(e)}

    def _one(ctx: Ctx) -> dict[str, Any]:
        name = str(ctx.p["name"])
        e = ctx.sim.notif_endpoints[kind].get(name)
        if e is None:
            raise die(f"endpoint '{name}' does not exist")
        return e

    def update(ctx: Ctx) -> None:
        e = _one(ctx)
        if ctx.p.get("digest") and ctx.p["digest"] != _digest(e):
            raise die("detected modified configuration - file changed by other user? Try again.")
        for k in split_list(str(ctx.p.get("delete", ""))):
            e.pop(k, None)
        for k, v in ctx.p.items():
            if k not in ("name", "delete", "digest"):
                e[k] = _as_list(v) if k in _LIST_KEYS else v
        if e.get("origin") == "builtin":
            e["origin"] = "modified-builtin"
        return None

    def delete(ctx: Ctx) -> None:
        e = _one(ctx)
        if e.get("origin") in ("builtin", "modified-builtin"):
            raise die(f"cannot delete built-in target '{ctx.p['name']}'")
        del ctx.sim.notif_endpoints[kind][str(ctx.p["name"])]
        return None

    api("GET", base)(list_)
    api("POST", base)(create)
    api("GET", base + "/{name}")(get)
    api("PUT", base + "/{name}")(update)
    api("DELETE", base + "/{name}")(delete)


for _k in KINDS:
    _endpoint_handlers(_k)


@api("GET", "/cluster/notifications/targets")
def targets(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for name, (kind, e) in sorted(_all_targets(ctx.sim).items()):
        d: dict[str, Any] = {"name": name, "type": kind, "origin": e.get("origin", "user-created")}
        if e.get("comment"):
            d["comment"] = e["comment"]
        if e.get("disable"):
            d["disable"] = 1
        out.append(d)
    return out


@api("POST", "/cluster/notifications/targets/{name}/test")
def target_test(ctx: Ctx) -> None:
    name = str(ctx.p["name"])
    t = _all_targets(ctx.sim).get(name)
    if t is None:
        raise die(f"could not notify via target '{name}': target '{name}' does not exist")
    note = {
        "severity": "info",
        "title": "Test notification",
        "message": f"This is a test of the notification target '{name}'.",
        "fields": {},
        "test": True,
    }
    _send(ctx.sim, name, t[0], t[1], note)
    return None


@api("GET", "/cluster/notifications/matchers")
def matchers(ctx: Ctx) -> list[dict[str, Any]]:
    return [{**m, "origin": m.get("origin", "user-created")} for m in ctx.sim.notif_matchers.values()]


@api("POST", "/cluster/notifications/matchers")
def matcher_create(ctx: Ctx) -> None:
    name = str(ctx.p["name"])
    if name in ctx.sim.notif_matchers:
        raise die(f"matcher '{name}' already exists")
    known = _all_targets(ctx.sim)
    for t in _as_list(ctx.p.get("target", [])):
        if t not in known:
            raise die(f"target '{t}' does not exist")
    m = {k: (_as_list(v) if k in _LIST_KEYS else v) for k, v in ctx.p.items()}
    m["origin"] = "user-created"
    ctx.sim.notif_matchers[name] = m
    return None


def _matcher(ctx: Ctx) -> dict[str, Any]:
    name = str(ctx.p["name"])
    m = ctx.sim.notif_matchers.get(name)
    if m is None:
        raise die(f"matcher '{name}' does not exist")
    return m


@api("GET", "/cluster/notifications/matchers/{name}")
def matcher_get(ctx: Ctx) -> dict[str, Any]:
    m = _matcher(ctx)
    return {**m, "digest": _digest(m)}


@api("PUT", "/cluster/notifications/matchers/{name}")
def matcher_update(ctx: Ctx) -> None:
    m = _matcher(ctx)
    if ctx.p.get("digest") and ctx.p["digest"] != _digest(m):
        raise die("detected modified configuration - file changed by other user? Try again.")
    for k in split_list(str(ctx.p.get("delete", ""))):
        m.pop(k, None)
    for k, v in ctx.p.items():
        if k not in ("name", "delete", "digest"):
            m[k] = _as_list(v) if k in _LIST_KEYS else v
    if m.get("origin") == "builtin":
        m["origin"] = "modified-builtin"
    return None


@api("DELETE", "/cluster/notifications/matchers/{name}")
def matcher_delete(ctx: Ctx) -> None:
    _matcher(ctx)
    del ctx.sim.notif_matchers[str(ctx.p["name"])]
    return None


@api("GET", "/cluster/notifications/matcher-fields")
def matcher_fields(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": n} for n in ("type", "hostname", "job-id")]


@api("GET", "/cluster/notifications/matcher-field-values")
def matcher_field_values(ctx: Ctx) -> list[dict[str, Any]]:
    out = [
        {"field": "type", "value": v} for v in ("vzdump", "replication", "fencing", "package-updates", "system-mail")
    ]
    out += [{"field": "hostname", "value": n} for n in ctx.sim.nodes]
    out += [{"field": "job-id", "value": j} for j in ctx.sim.backup_jobs]
    return out


def _matches(m: dict[str, Any], severity: str, fields: dict[str, str]) -> bool:
    checks: list[bool] = []
    for spec in m.get("match-field", []):
        kind, _, rest = spec.partition(":")
        field, _, value = rest.partition("=")
        have = fields.get(field)
        if kind == "exact":
            checks.append(have is not None and have in value.split(","))
        elif kind == "regex":
            checks.append(have is not None and re.search(value, have) is not None)
    for spec in m.get("match-severity", []):
        checks.append(severity in split_list(spec))
    ok = (any(checks) if m.get("mode") == "any" else all(checks)) if checks else True
    return not ok if m.get("invert-match") else ok


def _send(sim: Sim, name: str, kind: str, endpoint: dict[str, Any], note: dict[str, Any]) -> None:
    """Record a notification for a target and deliver it in the background (SMTP, Gotify, webhook)."""
    import threading

    from pvesim.notify_delivery import deliver

    entry = {"target": name, "type": kind, **note, "timestamp": int(sim.now()), "delivery": "pending"}
    sim.notifications_sent.append(entry)
    emails = [
        sim.access.users[u].email
        for u in endpoint.get("mailto-user", [])
        if u in sim.access.users and sim.access.users[u].email
    ]
    ep = dict(endpoint)

    def run() -> None:
        result = deliver(kind, ep, entry, emails)
        with sim.lock:
            entry["delivery"] = result

    threading.Thread(target=run, name=f"pvesim-notify-{name}", daemon=True).start()


def notify(sim: Sim, severity: str, title: str, fields: dict[str, str], message: str = "") -> None:
    """Route a notification through the matchers to targets; see GET /_sim/notifications."""
    targets_ = _all_targets(sim)
    sent: set[str] = set()
    for m in sim.notif_matchers.values():
        if m.get("disable") or not _matches(m, severity, fields):
            continue
        for t in m.get("target", []):
            if t in sent or t not in targets_ or targets_[t][1].get("disable"):
                continue
            sent.add(t)
            note = {
                "severity": severity,
                "title": title,
                "message": message or title,
                "fields": dict(fields),
                "matcher": m.get("name"),
            }
            _send(sim, t, targets_[t][0], targets_[t][1], note)
