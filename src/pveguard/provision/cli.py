"""`pveguard plan`, `apply`, `status` and `adopt`: desired containers against what exists, like terraform."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from pveguard.backends import connect
from pveguard.backends.base import Backend, Guest, read_marker
from pveguard.backends.lxc import LxcBackend
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, PveguardError, UsageError
from pveguard.output import Col, FitTable, console, err_console, error, print_json, say, warn
from pveguard.provision import floors
from pveguard.provision.apply import Applier, ApplyInterrupted, ApplyReport, FirewallStep
from pveguard.provision.desired import actual_fields, check_limits, desired_fields, desired_state
from pveguard.provision.final_backup import data_volumes, take_final_backup
from pveguard.provision.firewall import call_of, firewall_plan, managed_cts
from pveguard.provision.instance import identity
from pveguard.provision.journal import Journal
from pveguard.provision.observe import observe
from pveguard.provision.plan import Plan, plan, resolve_journal
from pveguard.provision.rbac import deliver, early_checks, forget, guests_of, rbac_plan, remember
from pveguard.provision.runlock import apply_lock
from pveguard.provision.serve_install import converge_serve, load_doc, serve_plan
from pveguard.security import extra_inbound, rbac
from pveguard.security.isolation import FwPlan, converge, desired_firewall, enforced

EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Also delete this installation's containers that left the strategy.")]
OnlyOpt = Annotated[list[str] | None, typer.Option(
    "--only", metavar="NAME", help="Only this strategy container (repeatable).")]


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def instance_id(app: AppContext) -> str:
    """This installation's instance id (strategy, else state, else generated once)."""
    return identity(app.strategy, app.store, app.record).id


def _only(app: AppContext, only: list[str] | None) -> set[str] | None:
    """The --only names, checked against the strategy before anything is read or changed."""
    if not only:
        return None
    known = [c.name for c in app.strategy.containers]
    unknown = [n for n in dict.fromkeys(only) if n not in known]
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: no such container in the strategy {app.strategy_path}",
                         hint="the strategy's containers: " + (", ".join(known) or "(none)"))
    return set(only)


def compute_plan(app: AppContext, backend: Backend, prune: bool, only: set[str] | None = None) -> Plan:
    """Read the cluster (one listing + one config per managed guest) and plan against the strategy.

    Without automatic cyclic GC meanwhile: the 10,000-guest listing and thousands of answers are
    long-lived allocations that only make the collector walk them again and again (~0.2 s of a 1,000-guest
    plan); reference counting still frees what is dropped, and the collector resumes after."""
    from pveguard.gcpause import gc_paused

    with gc_paused():
        return _compute_plan(app, backend, prune, only)


def _compute_plan(app: AppContext, backend: Backend, prune: bool, only: set[str] | None) -> Plan:
    if isinstance(backend, ProxmoxBackend):
        # PVE hides what a token may not see instead of failing: check the privileges before planning
        backend.require_privileges()
    check_limits(app.strategy, backend, app.strategy_path)
    instance = instance_id(app)
    # RBAC's token-file checks (a process per container on the nodes) start from the listing, while the API is read
    early = early_checks(app.strategy, backend, only)
    try:
        p = plan(desired_state(app.strategy, instance, floors.load(app.store)),
                 observe(backend, early.listed if early is not None else None), instance=instance,
                 prune=prune, journal=Journal(app.store).entries())
        p = p.only(only) if only is not None else p
        if isinstance(backend, ProxmoxBackend):
            say_placement(backend, p)
        p.firewall = firewall_plan(app.strategy, backend, p, app.store, instance, whole=only is None)
        p.rbac = FwPlan(notes=[ONLY_NOTE]) if only is not None else \
            rbac_plan(app.strategy, backend, p, app.store, instance, early)
    finally:
        if early is not None:
            early.close()
    # the raw document only matters to a serve.container; parsing it again costs for nothing else
    doc = load_doc(app.strategy_path) if app.strategy.serve.container else {}
    p.serve = serve_plan(app.strategy, doc, backend, p, only)
    return p


PLACE_NOTE = "node: chosen at apply (on PVE: most free memory)"


def say_placement(backend: ProxmoxBackend, p: Plan) -> None:
    """Each unpinned create's note says the node apply would choose now and why others are passed over."""
    creates = [a for a in p.actions if a.kind == "create" and a.desired is not None and not a.desired.spec.node]
    if not creates:
        return
    where = backend.placements([a.desired.spec for a in creates if a.desired is not None])
    for a in creates:
        w = where.get(a.name)
        if w is None:
            continue
        note = f"node at apply: {w.why()}" if w.node is None else f"node at apply (as of now): {w.why()}"
        passed = "; ".join(f"{n} {why}" for n, why in sorted(w.skipped.items()))
        if w.node is not None and passed:
            note += f"; passed over: {passed}"
        a.notes = [note if n == PLACE_NOTE else n for n in a.notes]


ONLY_NOTE = "RBAC (users, tokens, ACLs per role) is converged by a whole apply, not with --only"


def rbac_step(app: AppContext, backend: Backend, only: set[str] | None) -> FirewallStep | None:
    """apply's very last step on PVE: read everything again and converge users, roles, tokens, ACLs."""
    call = call_of(backend)
    if call is None or only is not None or not rbac.enforced(app.strategy):
        return None

    def step(record: Callable[..., None]) -> list[str]:
        p = compute_plan(app, backend, False, None)
        guests = guests_of(p)
        wants = rbac.desired_rbac(app.strategy, managed_cts(p), instance_id(app))
        return rbac.converge(call, p.rbac, wants, record, deliver(backend, guests), remember(app.store),
                             forget(app.store))

    return step


def serve_step(app: AppContext, backend: Backend, only: set[str] | None) -> FirewallStep | None:
    """After RBAC: install or upgrade pveguard serve in serve.container (provision/serve_install.py)."""
    if not app.strategy.serve.container:
        return None

    def step(record: Callable[..., None]) -> list[str]:
        p = compute_plan(app, backend, False, only)
        return converge_serve(app.strategy, load_doc(app.strategy_path), backend, p, record)

    return step


def firewall_step(app: AppContext, backend: Backend, only: set[str] | None) -> FirewallStep | None:
    """apply's last step: read everything again and converge the firewall (PVE, lxc; None elsewhere)."""
    if not enforced(app.strategy):
        return None
    if isinstance(backend, LxcBackend):
        from pveguard.security.isolation_lxc import converge_lxc

        lxc = backend

        def lxc_step(record: Callable[..., None]) -> list[str]:
            return converge_lxc(lxc, compute_plan(app, lxc, False, only).firewall, record)

        return lxc_step
    call = call_of(backend)
    if call is None:
        return None

    def step(record: Callable[..., None]) -> list[str]:
        p = compute_plan(app, backend, False, only)
        return converge(call, p.firewall,
                        desired_firewall(app.strategy, extra_inbound.by_container(app.store), instance_id(app)),
                        record)

    return step


_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "resume": (">", "cyan"), "unchanged": ("=", "dim"),
           "delete": ("-", "red"), "conflict": ("!", "red bold"), "foreign": ("*", "dim")}


def render_plan(p: Plan) -> None:
    """Terraform-like text: one block per container, `field: old -> new` for updates. Every line
    wraps at words at the terminal's width, its continuation indented under it (a long
    `features`/`net0`/`description` change stays readable at 80 columns, never cut)."""
    for a in p.actions:
        sym, style = _SYMBOL[a.kind]
        where = f" (CT {a.vmid} on {a.node})" if a.vmid is not None and a.node else ""
        say(Text.assemble((f"{sym} {a.kind} {a.name}", style), where), hang=4)
        if a.kind == "create" and a.desired is not None:
            f = desired_fields(a.desired.spec)
            say(f"    cores {f['cores']}, memory {f['memory']} MiB, swap {f['swap']} MiB, "
                f"rootfs {f['rootfs']}, net0 {f['net0']}", hang=6)
            say(f"    unprivileged {f['unprivileged']}, features {f['features'] or '-'}, onboot "
                f"{f['onboot']}, startup {f['startup'] or '-'}, tags {f['tags']}", hang=6)
            if a.desired.packages:
                say(f"    packages: {' '.join(a.desired.packages)}", hang=6)
        for c in a.changes:
            flag = "" if c.possible else "  [not possible in place]"
            flag = flag or ("" if c.live else "  [after restart]")
            say(f"    {c.text()}{flag}", hang=6)
        if a.resume and a.kind != "create":
            say(f"    finish interrupted creation: {', '.join(a.resume)}", hang=6)
        for n in a.notes:
            say(f"    {n}", hang=6, style="dim")
    if p.firewall.changes or p.firewall.notes:
        console.print("[yellow]~ firewall[/]" if p.firewall.changes else "[dim]= firewall[/]")
    for fc in p.firewall.changes:
        say(f"    {fc.text()}" + (f" ({fc.name})" if fc.target.startswith("ct/") else ""), hang=6)
    for n in p.firewall.notes:
        say(f"    {n}", hang=6, style="dim")
    if p.rbac.changes or p.rbac.notes:
        console.print("[yellow]~ rbac[/]" if p.rbac.changes else "[dim]= rbac[/]")
    for rc in p.rbac.changes:
        say(f"    {rc.text()} (role {rc.name})", hang=6)
    for n in p.rbac.notes:
        say(f"    {n}", hang=6, style="dim")
    if p.serve.changes or p.serve.notes:
        console.print("[yellow]~ serve[/]" if p.serve.changes else "[dim]= serve[/]")
    for sc in p.serve.changes:
        say(f"    {sc.name} ({sc.target}) {sc.op}: {sc.old or '(none)'} -> {sc.new}", hang=6)
    for n in p.serve.notes:
        say(f"    {n}", hang=6, style="dim")
    cnt = p.counts()
    say(f"Plan: {cnt['create']} to create, {cnt['update']} to update, {cnt['resume']} to finish, "
        f"{cnt['delete']} to delete, {cnt['unchanged']} unchanged"
        + (f", {cnt['conflict']} conflict(s)" if cnt["conflict"] else "")
        + (f", {cnt['foreign']} not this installation's" if cnt["foreign"] else "")
        + (f", {len(p.firewall.changes)} firewall change(s)" if p.firewall.changes else "")
        + (f", {len(p.rbac.changes)} RBAC change(s)" if p.rbac.changes else "")
        + (f", serve to {p.serve.changes[0].op}" if p.serve.changes else "") + ".")
    if not p.has_changes:
        console.print("Nothing to do.")


def plan_cmd(
    ctx: typer.Context,
    json_out: JsonOpt = False,
    detailed_exitcode: Annotated[bool, typer.Option(
        "--detailed-exitcode", help="Exit 0 when nothing would change, 2 when something would.")] = False,
    prune: PruneOpt = False,
    only: OnlyOpt = None,
) -> None:
    """Show what apply would do: creates, updates (field: old -> new), unchanged, deletes (--prune)."""
    app = _app(ctx)
    try:
        names = _only(app, only)
        backend = connect(app.strategy)
        with _closing(backend):
            p = with_feature_notes(compute_plan(app, backend, prune, names), backend)
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


def _confirm_deletes(p: Plan, yes: bool, i_mean_it: list[str]) -> None:
    """--yes (or a terminal) for every delete; the typed name (or --i-mean-it NAME) for data volumes."""
    deletes = p.of("delete")
    if not deletes:
        return
    names = ", ".join(f"{a.name} (CT {a.vmid})" for a in deletes)
    with_data = [a for a in deletes if data_volumes(a.config)]
    tty = sys.stdin.isatty()
    if not yes:
        if not tty:
            extra = "; containers with data volumes also need --i-mean-it NAME" if with_data else ""
            raise UsageError(f"apply --prune would delete {names}; that needs confirmation",
                             hint=f"run it in a terminal to confirm, or pass --yes{extra}")
        if not typer.confirm(f"Delete {names}? Their disks are destroyed.", default=False):
            raise UsageError("nothing applied: the deletes were not confirmed")
    for a in with_data:
        if a.name in i_mean_it:
            continue
        vols = data_volumes(a.config)
        what = ", ".join(f"{k}: {v}" for k, v in vols.items())
        if not tty:
            raise UsageError(f"nothing applied: {a.name} (CT {a.vmid}) has data volumes ({what}) that its "
                             f"delete destroys", hint=f"type its name in a terminal, or pass --yes --i-mean-it "
                                                      f"{a.name} in scripts")
        typed = typer.prompt(f"{a.name} (CT {a.vmid}) has data volumes: {what}. A final backup is taken, then "
                             f"they are destroyed. Type the container's name to delete it", default="",
                             show_default=False)
        if typed.strip() != a.name:
            raise UsageError(f"nothing applied: {typed.strip()!r} is not {a.name}",
                             hint="run apply again and type the name exactly, or leave it in the strategy")


def render_report(r: ApplyReport) -> None:
    parts = [f"{len(r.created)} created", f"{len(r.updated)} updated", f"{len(r.resumed)} finished",
             f"{len(r.deleted)} deleted"] + ([f"{len(r.firewall)} firewall change(s)"] if r.firewall else []) \
        + ([f"{len(r.rbac)} RBAC change(s)"] if r.rbac else []) + (["serve installed"] if r.serve else [])
    console.print("Apply: " + ", ".join(parts) + (f", {len(r.failed)} failed" if r.failed else "") + ".")
    for name, keys in sorted(r.restart_needed.items()):
        console.print(escape(f"  {name}: restart needed for {', '.join(keys)} "
                             f"(pct reboot, or 'pveguard apply' after the next restart shows nothing)"))
    for name, where in sorted(r.final_backups.items()):
        console.print(escape(f"  {name}: final backup {where}"))
    for name in r.skipped:
        err_console.print(escape(f"  {name}: not provided (conflict, see the plan above)"), style="red")
    for name, msg in sorted(r.failed.items()):
        err_console.print(escape(f"  {name}: {msg}"), style="red")
    if r.interrupted:
        err_console.print(escape(f"interrupted (Ctrl-C) during: {r.interrupted} -- its start is in the ledger "
                                 f"and the journal, its end is not known"), style="red", soft_wrap=True)
        if r.not_started:
            err_console.print(escape(f"  not started: {', '.join(r.not_started)}"), soft_wrap=True)
        err_console.print("run 'pveguard apply' again to converge", highlight=False)


def apply_cmd(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting (with --prune).")] = False,
    prune: PruneOpt = False,
    only: OnlyOpt = None,
    i_mean_it: Annotated[list[str] | None, typer.Option(
        "--i-mean-it", metavar="NAME",
        help="With --yes: delete this container although it has data volumes (repeatable).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Carry out the plan: create, converge and (with --prune) delete this installation's containers."""
    app = _app(ctx)
    names = _only(app, only)
    backend = connect(app.strategy)
    p: Plan | None = None
    try:
        with apply_lock(app.state_dir), _closing(backend):
            p = with_feature_notes(compute_plan(app, backend, prune, names), backend)
            if not json_out:
                render_plan(p)
            policy = app.strategy.backup.containers

            def final_backup(g: Guest) -> str | None:
                from pveguard.backup.coverage import policy_guest

                if not policy_guest(g, policy):
                    return None
                return take_final_backup(backend, g, policy, app.state_dir / "dump")

            if not p.has_changes:
                # nothing to change; this only forgets journal rows with nothing left to finish
                report = Applier(backend, app, Journal(app.store)).apply(p)
            else:
                _confirm_deletes(p, yes, i_mean_it or [])
                with err_console.status("applying") as status:
                    def progress(msg: str) -> None:
                        # a spinner in a terminal; plain lines in logs and CI, where a spinner shows nothing
                        if err_console.is_terminal:
                            status.update(escape(msg))
                        else:
                            err_console.print(escape(msg), highlight=False, soft_wrap=True)

                    def done(msg: str) -> None:
                        err_console.print(escape(msg), highlight=False)

                    report = Applier(backend, app, Journal(app.store), progress=progress, done=done,
                                     final_backup=final_backup,
                                     firewall=firewall_step(app, backend, names),
                                     rbac=rbac_step(app, backend, names),
                                     serve=serve_step(app, backend, names)).apply(p)
    except ApplyInterrupted as exc:
        if json_out and p is not None:
            print_json({"plan": p.as_dict(), "result": exc.report.as_dict()})
        else:
            render_report(exc.report)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        err_console.print("interrupted (Ctrl-C) before anything was changed; run 'pveguard apply' again",
                          style="red", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        print_json({"plan": p.as_dict(), "result": report.as_dict()})
    else:
        render_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def adopt_cmd(
    ctx: typer.Context,
    guest_ref: Annotated[str, typer.Argument(metavar="VMID|NAME", help="The container to make this installation's.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Make an existing container this installation's: its marker names this instance (recorded)."""
    from pveguard.provision.adopt import adopt, adoption, find_guest

    app = _app(ctx)
    backend = connect(app.strategy)
    with apply_lock(app.state_dir), _closing(backend):
        instance = instance_id(app)
        guest = find_guest(backend.list_guests(), guest_ref)
        a = adoption(guest, backend.get_config(guest), instance)
        where = f"CT {guest.vmid} ({guest.name} on {guest.node})"
        if not a.needed:
            say(f"{where} is already this installation's (instance {instance}); nothing to do", hang=2)
            return
        say(f"adopt {where}: now {a.previous}; its marker becomes "
            f"'{a.after['description'].splitlines()[-1]}', tags {a.after['tags']}", hang=2)
        if a.previous.startswith("instance "):
            warn(f"{where} belongs to another pveguard {a.previous}; that installation will no longer manage it")
        if guest.name not in {c.name for c in app.strategy.containers}:
            warn(f"{guest.name} is not in the strategy: once adopted, 'pveguard apply --prune' deletes it")
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"adopting {where} needs confirmation",
                                 hint="run it in a terminal to confirm, or pass --yes")
            if not typer.confirm("Adopt it?", default=False):
                raise UsageError("nothing adopted")
        adopt(backend, a, app, instance)
    say(f"adopted {where} as instance {instance}; 'pveguard plan' shows what apply would change", hang=2)


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
    """This installation's containers with configured vs used resources, plus the backend's capabilities.

    A container that cannot be read (node offline, not visible) is shown as unknown, never as missing.
    """
    instance = instance_id(app)
    obs = observe(backend)
    wanted = desired_state(app.strategy, instance, floors.load(app.store))
    desired = {d.spec.name: d for d in wanted}
    stats = {s.vmid: s for s in backend.stats()}
    caps = backend.capabilities()
    rows = []
    seen = set()
    unknown: set[str] = set()
    not_ours = []
    for g in obs.guests:
        if g.type != "lxc":
            continue
        if g.vmid in obs.unreadable:
            unknown.add(g.name)
            reason = (f"node {g.node} offline or not reporting" if g.status == "unknown"
                      else f"config cannot be read: {obs.unreadable[g.vmid]}")
            if g.name not in desired:
                reason += " (whose container it is shows once it can be read)"
            rows.append({"name": g.name, "vmid": g.vmid, "node": g.node, "state": "unknown", "reason": reason,
                         "in_strategy": g.name in desired, "configured": None, "used": None})
            continue
        cfg = obs.configs.get(g.vmid)
        if cfg is None:
            continue
        f = actual_fields(cfg)
        marker = read_marker(f["description"])
        if marker is None:
            continue
        if marker.instance != instance:
            not_ours.append({"name": g.name, "vmid": g.vmid, "node": g.node, "owner": marker.instance})
            continue
        seen.add(g.name)
        s = stats.get(g.vmid)
        state = s.status if s else g.status
        rows.append({
            "name": g.name, "vmid": g.vmid, "node": g.node, "state": state,
            "reason": f"node {g.node} offline or not reporting" if state == "unknown" else None,
            "in_strategy": g.name in desired,
            # numbers as numbers (docs/json.md); no cores limit in the config is null (all host cores)
            "configured": {"cores": int(f["cores"]) if f["cores"].isdigit() else None,
                           "memory_mib": int(f["memory"]), "swap_mib": int(f["swap"]),
                           "rootfs": f["rootfs"]},
            "used": {"cpu_ratio": round(s.cpu, 4), "memory_bytes": s.mem, "disk_bytes": s.disk,
                     "maxdisk_bytes": s.maxdisk, "uptime": s.uptime} if s else None,
        })
    missing = [n for n in desired if n not in seen and n not in unknown]
    entries = Journal(app.store).entries()
    left, stale = resolve_journal(entries, obs, wanted, instance)
    unfinished = [{"name": j.name, "vmid": j.vmid, "node": j.node, "step": j.step, "left": left.get(j.name)}
                  for j in entries if j.name not in stale]
    backend_info = {"name": caps.name, "vlan_mode": caps.vlan_mode, "live_memory_update": caps.live_memory_update,
                    "live_cpu_update": caps.live_cpu_update, "backups": caps.backups, "notes": caps.notes}
    return {"backend": backend_info, "instance": instance,
            "containers": sorted(rows, key=lambda r: str(r["name"])), "missing": missing,
            "unfinished": unfinished, "not_ours": sorted(not_ours, key=lambda r: (str(r["name"]), r["vmid"]))}


def status_table(containers: list[dict[str, Any]]) -> FitTable:
    """The managed containers; the name stays whole, node and usage go first on a narrow terminal."""
    t = FitTable(Col("name", 0, wrap=False), Col("vmid", 1, wrap=False, justify="right"), Col("node", 3, wrap=False),
                 Col("state", 1, wrap=False), Col("cores", 2, wrap=False, justify="right"),
                 Col("cpu", 4, wrap=False, justify="right"),
                 Col("memory MiB (used/conf)", 2, wrap=False, justify="right"),
                 Col("disk GiB (used/conf)", 3, wrap=False, justify="right"))
    for r in containers:
        c, u = r["configured"], r["used"] or {}
        if c is None:  # unknown: nothing was read
            t.add_row(r["name"] + ("" if r["in_strategy"] else " (not in strategy)"), str(r["vmid"]), r["node"],
                      r["state"], "?", "?", "?", "?")
            continue
        t.add_row(r["name"] + ("" if r["in_strategy"] else " (not in strategy)"), str(r["vmid"]), r["node"],
                  r["state"], "all" if c["cores"] is None else str(c["cores"]), f"{100 * u.get('cpu_ratio', 0):.0f}%",
                  f"{_mib(u.get('memory_bytes', 0))}/{c['memory_mib']}",
                  f"{_gib(u.get('disk_bytes', 0))}/{c['rootfs'].rstrip('G')}")
    return t


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
    say(f"backend: {b['name']}, vlan mode: {b['vlan_mode']}", hang=2)
    for n in b["notes"]:
        say(f"  {n}", hang=4)
    console.print(status_table(data["containers"]))
    for r in data["containers"]:
        if r.get("reason"):
            say(f"unknown: {r['name']} (CT {r['vmid']}): {r['reason']}", hang=2)
    if data["missing"]:
        say("not created yet: " + ", ".join(data["missing"]) + " (run 'pveguard apply')", hang=2)
    for j in data["unfinished"]:
        say(f"unfinished create: {j['name']} (CT {j['vmid'] or '?'}, reached '{j['step']}'; "
            f"'pveguard apply' finishes it)", hang=2)
    for o in data["not_ours"]:
        owner = f"pveguard instance {o['owner']}" if o["owner"] else "an older pveguard (no instance id)"
        say(f"not this installation's: {o['name']} (CT {o['vmid']} on {o['node']}), managed by "
            f"{owner}; 'pveguard adopt {o['vmid']}' takes it over", hang=2)


def with_feature_notes(p: Plan, backend: Backend) -> Plan:
    """Note on each create/update the feature flags PVE will refuse to these credentials (root@pam's alone)."""
    feature_note = getattr(backend, "feature_note", None)  # the proxmox backend's; plain LXC has no such rule
    if feature_note is None:
        return p
    for a in p.actions:
        if a.kind in ("create", "update") and a.desired is not None:
            cfg = (a.config or {}) if a.guest else {}
            # an existing guest keeps its unprivileged flag (it cannot change in place)
            unpriv = bool(int(cfg["unprivileged"])) if "unprivileged" in cfg else a.desired.spec.unprivileged
            note = feature_note(a.desired.spec.features, cfg.get("features"), a.vmid, unpriv)
            if note:
                a.notes.append(note)
    return p
