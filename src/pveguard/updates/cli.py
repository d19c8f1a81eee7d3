"""`pveguard update [NAME...] [--security-only] [--dry-run] [--json]` and `pveguard update-timer`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from pveguard.backends import connect
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, UsageError
from pveguard.output import console, info, iso_utc, print_json
from pveguard.provision.runlock import apply_lock
from pveguard.updates import run as job


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


_STYLE = {"up-to-date": "green", "updated": "green", "would-update": "yellow", "skipped": "dim"}


def render(report: job.Report) -> None:
    if not report.containers:
        console.print("no running containers of this installation in the strategy's list were found")
    for o in report.containers:
        style = _STYLE.get(o.action, "red")
        sec = f", {o.security_pending} security" if o.security_pending else ""
        head = f"[{style}]{escape(o.name)}[/] (CT {o.vmid} on {escape(o.node)}): {o.action}"
        if o.action != "skipped":
            head += f" ({len(o.pending)} pending{sec})"
        console.print(head + (f" - {escape(o.reason)}" if o.reason else ""), soft_wrap=True)
        chosen = {p.name for p in o.selected}
        for p in o.pending:
            mark = "security " if p.security else ""
            skip = "" if p.name in chosen else "  (not selected: --security-only)"
            console.print(f"  {escape(p.name)} {escape(p.installed)} -> {escape(p.candidate)} "
                          f"[dim]{mark}{escape(', '.join(p.origins))}[/]{skip}", soft_wrap=True, highlight=False)
        if o.snapshot:
            console.print(f"  snapshot {o.snapshot}" + (f"; pruned {', '.join(o.pruned)}" if o.pruned else ""))
        for c in o.checks:
            console.print(f"  check {escape(c.check)}: {'ok' if c.ok else escape(c.detail or 'unknown')}",
                          soft_wrap=True)


def update_cmd(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Containers of the strategy to update [default: all].")] = None,
    security_only: Annotated[bool, typer.Option(
        "--security-only", help="Install only updates from a security archive (e.g. Debian-Security).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the pending updates; change nothing.")] = False,
    scheduled: Annotated[bool, typer.Option(
        "--scheduled", help="The timer's run: --security-only when updates.security_only says so.")] = False,
    due: Annotated[bool, typer.Option(
        "--due", help="With --scheduled: only when updates.schedule has a run due since the last scheduled "
        "one (how 'pveguard serve' runs it).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (stable shape, see docs/json.md).")] = False,
) -> None:
    """Update the managed containers safely: snapshot, apt-get upgrade inside, health checks, and a
    rollback to the snapshot when the upgrade or the checks fail (docs/updates.md)."""
    from pveguard.provision.cli import instance_id

    app_ctx = _app(ctx)
    strategy = app_ctx.strategy
    known = [c.name for c in strategy.containers]
    unknown = [n for n in dict.fromkeys(names or []) if n not in known]
    if unknown:
        raise UsageError(f"no container {', '.join(map(repr, unknown))} in the strategy {app_ctx.strategy_path}",
                         hint="the strategy's containers: " + (", ".join(known) or "(none)"))
    if due and not scheduled:
        raise UsageError("--due goes with --scheduled", hint="pveguard update --scheduled --due")
    if scheduled and strategy.updates.security_only:
        security_only = True
    if scheduled and not _scheduled_run_due(app_ctx, strategy, due, json_out):
        return
    backend = connect(strategy)
    try:
        if dry_run:
            report = job.run(backend, strategy, instance_id(app_ctx), app_ctx.record, names=names,
                             security_only=security_only, dry_run=True)
        else:
            # not while an apply or a watchdog sweep runs on this state directory (both start and stop guests)
            with apply_lock(app_ctx.state_dir, "update"):
                report = job.run(backend, strategy, instance_id(app_ctx), app_ctx.record, names=names,
                                 security_only=security_only)
    finally:
        backend.close()
    remember(app_ctx, report)
    if json_out:
        print_json(report.as_dict())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _scheduled_run_due(app_ctx: AppContext, strategy: Any, due: bool, json_out: bool) -> bool:
    """A scheduled run is recorded when it starts; with --due it runs only when updates.schedule has
    a run due since the last one (never: not at all). Says why when it does not run."""
    import time
    from datetime import UTC, datetime

    from pveguard.backup.run import is_due
    from pveguard.updates.state import last_scheduled, mark_scheduled

    now = time.time()
    if due:
        schedule = strategy.updates.schedule
        last = last_scheduled(app_ctx.store)
        when = None if last is None else datetime.fromtimestamp(last, UTC)
        if schedule == "never" or not is_due(schedule, when, datetime.fromtimestamp(now, UTC)):
            why = ("updates.schedule is never" if schedule == "never"
                   else f"not due ({schedule!r}, last scheduled run {iso_utc(last)})")
            if json_out:
                print_json({**job.Report(now, strategy.updates.security_only, False).as_dict(), "due": False,
                            "reason": why})
            else:
                info(f"scheduled update {why}")
            return False
    mark_scheduled(app_ctx.store, now)
    return True


def remember(app_ctx: AppContext, report: job.Report) -> None:
    """Keep what each container still has pending, for the audit finding and the exporter's metric."""
    from pveguard.updates.state import Checked, save

    rows = []
    for o in report.containers:
        if not o.checked:
            continue
        left = o.left_pending()
        rows.append(Checked(o.name, o.vmid, report.ts, len(left), sum(1 for p in left if p.security),
                            sorted(p.name for p in left if p.security)))
    save(app_ctx.store, rows)


def update_timer_cmd(
    ctx: typer.Context,
    unit_dir: Annotated[Path, typer.Option("--unit-dir", help="Where to write the units.")] = Path(
        "/etc/systemd/system"),
    pveguard_bin: Annotated[str | None, typer.Option(
        "--pveguard", help="Path of the pveguard command [default: found in PATH].")] = None,
) -> None:
    """Write the systemd timer that runs 'pveguard update --scheduled' at the strategy's updates.schedule."""
    from pveguard.backup.calendar import parse
    from pveguard.backup.timers import find_command, install_units, render_units, unit_settings

    app_ctx = _app(ctx)
    strategy = app_ctx.strategy
    schedule = strategy.updates.schedule
    if schedule == "never":
        raise UsageError("updates.schedule is 'never': there is no timer to write",
                         hint="set updates.schedule in the strategy (e.g. daily, or 'sun 04:00')")
    command = [*find_command(pveguard_bin), "--strategy", str(Path(app_ctx.strategy_path).absolute()),
               "--state-dir", str(Path(app_ctx.state_dir).absolute())]
    units = render_units("pveguard-update", [parse(schedule)], [*command, "update", "--scheduled"],
                         "pveguard safe updates", settings=unit_settings(strategy, os.environ),
                         written_by="update-timer")
    written = install_units([units], unit_dir)
    app_ctx.record("update.install-timer", str(unit_dir), files=[str(p) for p in written], schedule=schedule)
    for p in written:
        sys.stdout.write(f"wrote {p}\n")
    info("enable with: systemctl daemon-reload && systemctl enable --now pveguard-update.timer")
