"""`pveguard tokens [--json]` and `pveguard tokens rotate [ROLE]`: the per-role PVE API tokens (no secrets)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from pveguard.backends import connect
from pveguard.backends.base import Backend, Guest
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.context import AppContext
from pveguard.errors import UsageError
from pveguard.output import console, print_json
from pveguard.security import rbac, rbac_state
from pveguard.security.isolation import Ct

app = typer.Typer(help="The PVE API token of each container role (security.access.rbac).",
                  invoke_without_command=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")]

LXC_NOTE = ("RBAC applies to the proxmox backend; the lxc backend has no PVE users or API tokens, so there "
            "are none to list")
OFF_NOTE = "security.access.rbac is false: pveguard keeps no role tokens"


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _read(app_ctx: AppContext, backend: Backend) -> tuple[list[rbac.RoleWant], dict[int, Guest]]:
    from pveguard.provision.cli import instance_id
    from pveguard.provision.observe import observe
    from pveguard.provision.plan import managed_guests

    wanted = {c.name for c in app_ctx.strategy.containers}
    mine = [g for g in managed_guests(observe(backend), instance_id(app_ctx)) if g.name in wanted]
    cts = [Ct(g.name, g.vmid, g.node) for g in sorted(mine, key=lambda g: g.vmid)]
    return rbac.desired_rbac(app_ctx.strategy, cts, instance_id(app_ctx)), {g.vmid: g for g in mine}


def _rows(app_ctx: AppContext, backend: ProxmoxBackend) -> list[dict[str, Any]]:
    wants, _guests = _read(app_ctx, backend)
    seen = rbac.observe_rbac(backend.call, wants, None)
    states = rbac_state.load(app_ctx.store)
    rows = []
    for w in wants:
        tok = seen.tokens.get(w.full_tokenid)
        holder = w.full_tokenid if tok is not None and int(tok.get("privsep", 1)) else w.userid
        acls = [{"path": str(e["path"]), "role": str(e["roleid"]),
                 "privileges": seen.roles.get(str(e["roleid"]), [])}
                for e in sorted(seen.acl, key=lambda e: (str(e["path"]), str(e["roleid"]))) if e["ugid"] == holder]
        st = states.get(w.role)
        if w.userid in seen.users and w not in rbac.owned([w], seen.users)[0]:
            tok = None  # someone else's user: not listed as ours
        rows.append({"role": w.role, "user": w.userid, "token": w.full_tokenid, "exists": tok is not None,
                     "privsep": bool(int(tok.get("privsep", 1))) if tok is not None else w.privsep,
                     "expire": _when(float(tok.get("expire") or 0)) if tok is not None else None,
                     "privileges": acls, "delivered": st.delivered if st else [],
                     "rotated": _when(st.rotated_at) if st else None})
    return rows


@app.callback()
def tokens_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List each container role's PVE user and API token: privileges, where the secret is, last rotation."""
    if ctx.invoked_subcommand is not None:
        return
    from pveguard.cli import get_ctx
    from pveguard.provision.cli import _closing

    app_ctx = get_ctx(ctx)
    backend = connect(app_ctx.strategy)
    note = None
    rows: list[dict[str, Any]] = []
    with _closing(backend):
        if not isinstance(backend, ProxmoxBackend):
            note = LXC_NOTE
        elif not rbac.enforced(app_ctx.strategy):
            note = OFF_NOTE
        else:
            rows = _rows(app_ctx, backend)
    if json_out:
        print_json({"backend": "proxmox" if isinstance(backend, ProxmoxBackend) else "lxc", "note": note,
                    "tokens": rows})
        return
    if note:
        console.print(escape(note), soft_wrap=True)
        return
    for r in rows:
        state = ("privsep" if r["privsep"] else "no privsep") if r["exists"] else "not created yet (run apply)"
        console.print(escape(f"{r['role']}: {r['token']} ({state}, expires {r['expire'] or 'never'})"),
                      soft_wrap=True, highlight=False)
        for a in r["privileges"]:
            console.print(escape(f"    {a['path']}: {', '.join(a['privileges'])} ({a['role']})"), soft_wrap=True,
                          highlight=False)
        where = ", ".join(f"{d['container']} (CT {d['vmid']}):{d['path']}" for d in r["delivered"]) or "(nowhere)"
        console.print(escape(f"    secret in {where}; last rotated {r['rotated'] or 'unknown'}"), soft_wrap=True,
                      highlight=False)


@app.command("rotate")
def rotate_cmd(ctx: typer.Context,
               role: Annotated[str | None, typer.Argument(help="The container role (default: every role).")] = None,
               json_out: JsonOpt = False) -> None:
    """Give role tokens a new secret (PVE: delete and re-create the token), delivered into their containers."""
    from pveguard.cli import get_ctx
    from pveguard.provision.cli import _closing
    from pveguard.provision.rbac import deliver, remember, running_of
    from pveguard.provision.runlock import apply_lock

    app_ctx = get_ctx(ctx)
    backend = connect(app_ctx.strategy)
    done: list[dict[str, Any]] = []
    with apply_lock(app_ctx.state_dir, "tokens rotate"), _closing(backend):
        if not isinstance(backend, ProxmoxBackend):
            raise UsageError("tokens rotate: " + LXC_NOTE, hint="RBAC needs target.backend: proxmox")
        if not rbac.enforced(app_ctx.strategy):
            raise UsageError("tokens rotate: " + OFF_NOTE, hint="set security.access.rbac: true and run apply")
        backend.require_privileges()
        wants, guests = _read(app_ctx, backend)
        roles = [w.role for w in wants]
        if role is not None and role not in roles:
            raise UsageError(f"tokens rotate {role}: no container of the strategy has that role",
                             hint="the strategy's roles: " + (", ".join(roles) or "(none)"))
        chosen = [w for w in wants if role is None or w.role == role]
        seen = rbac.observe_rbac(backend.call, chosen, None)
        chosen, others = rbac.owned(chosen, seen.users)
        if others and role is not None:
            raise UsageError(f"tokens rotate {role}: the user {others[0].userid} is not this installation's",
                             hint="'pveguard plan' says whose it is; give the role another name")
        absent = [w.role for w in chosen if w.full_tokenid not in seen.tokens]
        if absent:
            raise UsageError(f"tokens rotate: no token yet for role(s) {', '.join(absent)}",
                             hint="'pveguard apply' creates them (with their secrets delivered)")

        def record(step: str, target: str, name: str, result: str | None, **details: Any) -> None:
            app_ctx.record("tokens.rotate" + (".intent" if result is None else ""), target, name=name,
                           **({"result": result} if result else {}), **details)

        running = running_of(guests)
        for w in chosen:
            reached = running(w)
            rbac.new_secret(backend.call, w, deliver(backend, guests), record, remember(app_ctx.store), reached,
                            recreate=True)
            rbac.converge_acls(backend.call, [w], record)
            skipped = [c.name for c in w.containers if c not in reached]
            done.append({"role": w.role, "token": w.full_tokenid,
                         "delivered": [{"container": c.name, "vmid": c.vmid, "path": rbac.SECRET_PATH}
                                       for c in reached], "not_running": skipped})
    if json_out:
        print_json({"rotated": done})
        return
    for d in done:
        where = ", ".join(f"{x['container']}:{x['path']}" for x in d["delivered"]) or "no running container"
        console.print(escape(f"rotated {d['token']}: new secret in {where}"), soft_wrap=True, highlight=False)
        if d["not_running"]:
            late = ", ".join(d["not_running"])
            console.print(escape(f"    not running, gets a new secret at the next apply: {late}"),
                          soft_wrap=True, highlight=False)
