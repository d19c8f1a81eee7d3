"""`pveguard migrate plan|run|status|rollback`: move one host service into a container (docs/migrate.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pveguard.context import AppContext
from pveguard.errors import UsageError
from pveguard.migrate.journal import Journal
from pveguard.output import print_json

app = typer.Typer(help="Move a service from the host into a container: plan, run (resumable), status, rollback.",
                  rich_markup_mode=None)

RootOpt = Annotated[str, typer.Option("--root", metavar="PATH",
                                      help="Read the service's facts from the root filesystem at PATH offline.")]
ToOpt = Annotated[str | None, typer.Option("--to", metavar="CONTAINER",
                                           help="Target container (default: the audit's suggestion).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document (docs/json.md).")]


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def _root(root: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"--root {root}: not a directory", hint="pass the path of a mounted root filesystem")
    if not (path / "var/lib/dpkg/status").is_file():
        raise UsageError(f"--root {root}: no var/lib/dpkg/status below it, so it is not a Debian-family root",
                         hint="pass the directory that contains etc/, usr/ and var/ of the system to migrate from")
    return path


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The systemd service (nginx or nginx.service).")],
    to: ToOpt = None,
    root: RootOpt = "/",
    json_out: JsonOpt = False,
) -> None:
    """What migrating SERVICE involves: packages, paths and sizes, ports, users, target, disk, network,
    backup, and the nine steps. Read-only."""
    from pveguard.audit import inventory
    from pveguard.migrate import plan

    app_ctx = _app(ctx)
    strategy = app_ctx.strategy_or_default()
    facts = inventory.collect(_root(root))
    memory = None
    if facts.live:   # the service's memory now, as 'migrate run' reads it (offline: unknown)
        from pveguard.migrate.endpoints import Local
        from pveguard.migrate.run import service_memory

        memory = service_memory(Local(), service if "." in service else f"{service}.service")
    doc = plan.build(facts, strategy, service, to, memory_bytes=memory)
    if json_out:
        print_json(doc)
    else:
        typer.echo(plan.render_text(doc), nl=False)


SourceOpt = Annotated[str | None, typer.Option("--source", metavar="local|lxc:NAME|ssh:HOST",
                                               help="Where the service runs now (default: this host).")]


def _say(text: str) -> None:
    from pveguard.output import info

    info(text)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The systemd service to move.")],
    to: ToOpt = None,
    source: SourceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing anything.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Migrate SERVICE step by step (create, install, migrate-data, test, switch-traffic, remove-from-host,
    validate). Each step is journaled; run it again after an interruption and it resumes."""
    from pveguard.migrate import run

    app_ctx = _app(ctx)
    app_ctx.require_named_strategy()
    with run.migrate_lock(app_ctx.state_dir):
        _run_locked(app_ctx, service, to, source, yes, json_out)


def _run_locked(app_ctx: AppContext, service: str, to: str | None, source: str | None, yes: bool,
                json_out: bool) -> None:
    import sys

    from pveguard.migrate import run

    if not yes and not sys.stdin.isatty():
        raise UsageError("migrate run changes the source and the container", hint="add --yes to go ahead")

    def confirm(doc: dict[str, Any], left: list[str]) -> bool:
        if yes:
            return True
        for s in doc["steps"]:
            if s["name"] in left:
                typer.echo(f"  {s['n']}. {s['name']}: {s['what']}")
        return typer.confirm(f"migrate {doc['service']} to {doc['target']['container']}?")

    m = run.start(app_ctx, service, to, source, _say, confirm)
    if m is None:
        raise typer.Exit(1)
    try:
        result = run.run_steps(m)
    finally:
        if json_out:
            got = run_journal(app_ctx).get(m.unit)
            if got is not None:
                print_json(status_doc(got))
    if not json_out:
        typer.echo(f"{result.service}: {result.state} ({result.source} -> {result.target})")


def run_journal(app_ctx: AppContext) -> Journal:
    from pveguard.migrate.journal import Journal

    return Journal(app_ctx.store)


def status_doc(r: object) -> dict[str, object]:
    from pveguard.migrate.journal import Run
    from pveguard.migrate.plan import RUN_STEPS

    assert isinstance(r, Run)
    st = r.data.get("state", {})
    return {
        "service": r.service, "source": r.source, "target": r.target, "state": r.state,
        "started": r.started, "updated": r.updated,
        "next_step": next((s for s in RUN_STEPS if not r.done(s)), None) if r.state != "rolled-back" else None,
        "steps": [{"name": s, "state": r.steps[s].state if s in r.steps else "pending",
                   "started": r.steps[s].started if s in r.steps else None,
                   "finished": r.steps[s].finished if s in r.steps else None,
                   "error": r.steps[s].error if s in r.steps else None,
                   "detail": r.steps[s].detail if s in r.steps else {}} for s in RUN_STEPS],
        "source_address": st.get("src_address"), "container_address": st.get("ct_address"),
        "forward_table": st.get("forward_table"),
    }


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="One service (default: every migration).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The journaled migrations: each step's state, what the next run does."""
    from pveguard.migrate.journal import Journal

    app_ctx = _app(ctx)
    journal = Journal(app_ctx.store)
    runs = journal.all()
    if service is not None:
        name = service if "." in service else f"{service}.service"
        runs = [r for r in runs if r.service == name]
        if not runs:
            raise UsageError(f"no migration of {name} in {app_ctx.state_dir}",
                             hint=f"start one with 'pveguard migrate run {service}'")
    docs = [status_doc(r) for r in runs]
    if json_out:
        print_json({"migrations": docs})
        return
    if not docs:
        typer.echo("no migrations")
    for d in docs:
        typer.echo(f"{d['service']}: {d['state']} ({d['source']} -> {d['target']})"
                   + (f", next: {d['next_step']}" if d["next_step"] and d["state"] != "done" else ""))
        for s in d["steps"]:  # type: ignore[attr-defined]
            typer.echo(f"  {s['name']:<17} {s['state']:<8} {s['finished'] or ''}"
                       + (f"  {s['error']}" if s["error"] else ""))


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The migrated service.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Undo the finished steps in reverse: data written in the container synced back, the service started
    on the source, the forward removed, the packages installed for it removed from the container."""
    import sys

    from pveguard.migrate import run

    app_ctx = _app(ctx)
    app_ctx.require_named_strategy()
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("migrate rollback changes the source and the container", hint="add --yes to go ahead")
        if not typer.confirm(f"roll back the migration of {service}?"):
            raise typer.Exit(1)
    with run.migrate_lock(app_ctx.state_dir):
        r = run.rollback(app_ctx, service, _say)
    typer.echo(f"{r.service}: {r.state} (back on {r.source})")
