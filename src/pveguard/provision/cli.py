"""`pveguard plan`, `apply` and `status`: desired containers against what exists, like terraform."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pveguard.backends import connect
from pveguard.backends.base import Backend
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, PveguardError, UsageError
from pveguard.output import console, err_console, error, print_json
from pveguard.provision.apply import Applier, ApplyReport
from pveguard.provision.desired import actual_fields, desired_fields, desired_state, is_managed_description
from pveguard.provision.journal import Journal
from pveguard.provision.observe import observe
from pveguard.provision.plan import Plan, plan
from pveguard.provision.runlock import apply_lock

EXIT_CHANGES = 2

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")]
PruneOpt = Annotated[bool, typer.Option("--prune", help="Also delete managed containers that left the strategy.")]


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def compute_plan(app: AppContext, backend: Backend, prune: bool) -> Plan:
    """Read the cluster (one listing + one config per managed guest) and plan against the strategy."""
    if isinstance(backend, ProxmoxBackend):
        # PVE hides what a token may not see instead of failing: check the privileges before planning
        backend.require_privileges()
    return plan(desired_state(app.strategy), observe(backend), prune=prune, journal=Journal(app.store).entries())


_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "resume": (">", "cyan"), "unchanged": ("=", "dim"),
           "delete": ("-", "red"), "conflict": ("!", "red bold")}


def render_plan(p: Plan) -> None:
    """Terraform-like text: one block per container, `field: old -> new` for updates."""
    for a in p.actions:
        sym, style = _SYMBOL[a.kind]
        where = f" (CT {a.vmid} on {a.node})" if a.vmid is not None and a.node else ""
        console.print(f"[{style}]{sym} {a.kind} {escape(a.name)}[/]{escape(where)}", soft_wrap=True)
        if a.kind == "create" and a.desired is not None:
            f = desired_fields(a.desired.spec)
            console.print(escape(f"    cores {f['cores']}, memory {f['memory']} MiB, swap {f['swap']} MiB, "
                                 f"rootfs {f['rootfs']}, net0 {f['net0']}"), soft_wrap=True)
            console.print(escape(f"    unprivileged {f['unprivileged']}, features {f['features'] or '-'}, onboot "
                                 f"{f['onboot']}, startup {f['startup'] or '-'}, tags {f['tags']}"), soft_wrap=True)
            if a.desired.packages:
                console.print(escape(f"    packages: {' '.join(a.desired.packages)}"))
        for c in a.changes:
            flag = "" if c.possible else "  [not possible in place]"
            flag = flag or ("" if c.live else "  [after restart]")
            console.print(escape(f"    {c.text()}{flag}"), soft_wrap=True)
        if a.resume and a.kind != "create":
            console.print(escape(f"    finish interrupted creation: {', '.join(a.resume)}"))
        for n in a.notes:
            console.print(f"    [dim]{escape(n)}[/]", soft_wrap=True)
    cnt = p.counts()
    console.print(f"Plan: {cnt['create']} to create, {cnt['update']} to update, {cnt['resume']} to finish, "
                  f"{cnt['delete']} to delete, {cnt['unchanged']} unchanged"
                  + (f", {cnt['conflict']} conflict(s)" if cnt["conflict"] else "") + ".")
    if not p.has_changes:
        console.print("Nothing to do.")


def plan_cmd(
    ctx: typer.Context,
    json_out: JsonOpt = False,
    detailed_exitcode: Annotated[bool, typer.Option(
        "--detailed-exitcode", help="Exit 0 when nothing would change, 2 when something would.")] = False,
    prune: PruneOpt = False,
) -> None:
    """Show what apply would do: creates, updates (field: old -> new), unchanged, deletes (--prune)."""
    app = _app(ctx)
    try:
        backend = connect(app.strategy)
        with _closing(backend):
            p = compute_plan(app, backend, prune)
    except PveguardError as exc:
        if detailed_exitcode:
            # 2 means "changes pending" here, so a broken strategy must not exit 2 (like terraform: 1)
            exc.exit_code = EXIT_FAILED
        raise
    if json_out:
        print_json(p.as_dict())
    else:
        render_plan(p)
    conflicts = p.of("conflict")
    if conflicts:
        # the strategy cannot be reached as it stands: say so in the exit code too
        error(f"{len(conflicts)} container(s) cannot be provided: {', '.join(a.name for a in conflicts)} "
              f"(see the notes above)")
        raise typer.Exit(EXIT_FAILED)
    if detailed_exitcode and p.has_changes:
        raise typer.Exit(EXIT_CHANGES)


def _confirm_deletes(p: Plan, yes: bool) -> None:
    deletes = p.of("delete")
    if not deletes or yes:
        return
    names = ", ".join(f"{a.name} (CT {a.vmid})" for a in deletes)
    if not sys.stdin.isatty():
        raise UsageError(f"apply --prune would delete {names}; that needs confirmation",
                         hint="run it in a terminal to confirm, or pass --yes")
    if not typer.confirm(f"Delete {names}? Their disks are destroyed.", default=False):
        raise UsageError("nothing applied: the deletes were not confirmed")


def render_report(r: ApplyReport) -> None:
    parts = [f"{len(r.created)} created", f"{len(r.updated)} updated", f"{len(r.resumed)} finished",
             f"{len(r.deleted)} deleted"]
    console.print("Apply: " + ", ".join(parts) + (f", {len(r.failed)} failed" if r.failed else "") + ".")
    for name, keys in sorted(r.restart_needed.items()):
        console.print(escape(f"  {name}: restart needed for {', '.join(keys)} "
                             f"(pct reboot, or 'pveguard apply' after the next restart shows nothing)"))
    for name in r.skipped:
        err_console.print(escape(f"  {name}: not provided (conflict, see the plan above)"), style="red")
    for name, msg in sorted(r.failed.items()):
        err_console.print(escape(f"  {name}: {msg}"), style="red")


def apply_cmd(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting (with --prune).")] = False,
    prune: PruneOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Carry out the plan: create, converge and (with --prune) delete managed containers."""
    app = _app(ctx)
    backend = connect(app.strategy)
    with apply_lock(app.state_dir), _closing(backend):
        p = compute_plan(app, backend, prune)
        if not json_out:
            render_plan(p)
        if not p.has_changes:
            # nothing to change; this only forgets journal rows of creates that had finished
            report = Applier(backend, app, Journal(app.store)).apply(p)
        else:
            _confirm_deletes(p, yes)
            with err_console.status("applying") as status:
                def progress(msg: str) -> None:
                    # a spinner in a terminal; plain lines in logs and CI, where a spinner shows nothing
                    if err_console.is_terminal:
                        status.update(escape(msg))
                    else:
                        err_console.print(escape(msg), highlight=False, soft_wrap=True)

                def done(msg: str) -> None:
                    err_console.print(escape(msg), highlight=False)

                report = Applier(backend, app, Journal(app.store), progress=progress, done=done).apply(p)
    if json_out:
        print_json({"plan": p.as_dict(), "result": report.as_dict()})
    else:
        render_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@contextmanager
def _closing(backend: Backend) -> Iterator[None]:
    try:
        yield
    finally:
        backend.close()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}"


def status_data(app: AppContext, backend: Backend) -> dict[str, Any]:
    """Managed containers with configured vs used resources, plus the backend's capabilities."""
    obs = observe(backend)
    desired = {d.spec.name: d for d in desired_state(app.strategy)}
    stats = {s.vmid: s for s in backend.stats()}
    caps = backend.capabilities()
    rows = []
    seen = set()
    for g in obs.guests:
        cfg = obs.configs.get(g.vmid)
        if cfg is None or g.type != "lxc":
            continue
        f = actual_fields(cfg)
        if not is_managed_description(f["description"]):
            continue
        seen.add(g.name)
        s = stats.get(g.vmid)
        rows.append({
            "name": g.name, "vmid": g.vmid, "node": g.node, "state": s.status if s else g.status,
            "in_strategy": g.name in desired,
            "configured": {"cores": f["cores"], "memory_mib": int(f["memory"]), "swap_mib": int(f["swap"]),
                           "rootfs": f["rootfs"]},
            "used": {"cpu_ratio": round(s.cpu, 4), "memory_bytes": s.mem, "disk_bytes": s.disk,
                     "maxdisk_bytes": s.maxdisk, "uptime": s.uptime} if s else None,
        })
    missing = [n for n in desired if n not in seen]
    unfinished = [{"name": j.name, "vmid": j.vmid, "node": j.node, "step": j.step}
                  for j in Journal(app.store).entries()]
    backend_info = {"name": caps.name, "vlan_mode": caps.vlan_mode, "live_memory_update": caps.live_memory_update,
                    "live_cpu_update": caps.live_cpu_update, "backups": caps.backups, "notes": caps.notes}
    return {"backend": backend_info, "containers": sorted(rows, key=lambda r: str(r["name"])),
            "missing": missing, "unfinished": unfinished}


def status_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Managed containers: node, state, configured vs used resources; backend capabilities."""
    app = _app(ctx)
    backend = connect(app.strategy_or_default())
    try:
        data = status_data(app, backend)
    finally:
        backend.close()
    if json_out:
        print_json(data)
        return
    b = data["backend"]
    console.print(escape(f"backend: {b['name']}, vlan mode: {b['vlan_mode']}"))
    for n in b["notes"]:
        console.print(escape(f"  {n}"))
    t = Table("name", "vmid", "node", "state", "cores", "cpu", "memory MiB (used/conf)", "disk GiB (used/conf)")
    for r in data["containers"]:
        c, u = r["configured"], r["used"] or {}
        t.add_row(r["name"] + ("" if r["in_strategy"] else " (not in strategy)"), str(r["vmid"]), r["node"],
                  r["state"], c["cores"], f"{100 * u.get('cpu_ratio', 0):.0f}%",
                  f"{_mib(u.get('memory_bytes', 0))}/{c['memory_mib']}",
                  f"{_gib(u.get('disk_bytes', 0))}/{c['rootfs'].rstrip('G')}")
    console.print(t)
    if data["missing"]:
        console.print(escape("not created yet: " + ", ".join(data["missing"]) + " (run 'pveguard apply')"))
    for j in data["unfinished"]:
        console.print(escape(f"unfinished create: {j['name']} (CT {j['vmid'] or '?'}, reached '{j['step']}'; "
                             f"'pveguard apply' finishes it)"))
