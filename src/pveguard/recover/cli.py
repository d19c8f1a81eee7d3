"""`pveguard recover [--once] [--json]`, `recover clear NAME` and `maintenance NAME on|off`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from pveguard.backends import connect
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, PveguardError, UsageError
from pveguard.output import console, info, print_json
from pveguard.provision.runlock import apply_lock
from pveguard.recover.budget import RestartState
from pveguard.recover.exhaustion import handle as handle_exhaustion
from pveguard.recover.state import load_states, save_state, set_maintenance
from pveguard.recover.watchdog import SweepReport, sweep
from pveguard.strategy.models import Strategy

app = typer.Typer(help="The watchdog: restart this installation's failed containers within a budget.",
                  rich_markup_mode=None)


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def _alert_through_monitor(app_ctx: AppContext, strategy: Strategy) -> Any:
    """Queue an event in the monitor's outbox and deliver it to `monitoring.notify`, like a monitor alert."""
    from pveguard.monitor.notify import Dispatcher, enqueue, notifiers_from_strategy
    from pveguard.monitor.series import open_monitor_store

    notifiers = notifiers_from_strategy(strategy.monitoring.notify)

    def send(event: dict[str, Any]) -> None:
        store = open_monitor_store(app_ctx.store)
        now = time.time()
        with store.transaction() as conn:
            enqueue(conn, [event], [n.name for n in notifiers], now)
        Dispatcher(app_ctx.store, notifiers).deliver(now)
    return send


def run_once(app_ctx: AppContext) -> SweepReport:
    """One sweep, not while an apply runs on this state directory (both would start and stop guests)."""
    from pveguard.provision.cli import instance_id

    strategy = app_ctx.strategy
    backend = connect(strategy)
    try:
        with apply_lock(app_ctx.state_dir, "watchdog sweep"):
            instance = instance_id(app_ctx)
            report = sweep(backend, strategy, instance, app_ctx.store, app_ctx.record,
                           _alert_through_monitor(app_ctx, strategy))
            # the same sweep acts on the monitor's sustained cpu/memory/disk alerts (recover/exhaustion.py)
            report.exhaustion = handle_exhaustion(backend, strategy, instance, app_ctx.store, app_ctx.record,
                                                  Path(app_ctx.state_dir))
            return report
    finally:
        backend.close()


def _watch_stops(app_ctx: AppContext, wake: threading.Event) -> Callable[[], None] | None:
    """The backend's stop events (if it has any) wake the loop early; the sweep still reads one listing.
    PVEGUARD_RECOVER_EVENTS=0 turns that off (sweeps at the interval only)."""
    if os.environ.get("PVEGUARD_RECOVER_EVENTS", "1") == "0":
        return None
    try:
        backend = connect(app_ctx.strategy)
    except PveguardError:
        return None  # the first sweep says what is wrong
    try:
        end = backend.watch_stops(wake.set)
    except OSError:
        end = None
    if end is None:
        backend.close()
        return None

    def finish() -> None:
        end()
        backend.close()
    return finish


def render(report: SweepReport) -> None:
    if not report.containers:
        console.print("no containers of this installation in the strategy's list were found")
    for o in report.containers:
        style = {"none": "green", "restarted": "yellow", "skipped": "dim"}.get(o.action, "red")
        what = "ok" if o.action == "none" else o.action
        console.print(f"[{style}]{escape(o.name)}[/] (CT {o.vmid} on {escape(o.node)}): {what}"
                      + (f" - {escape(o.reason)}" if o.reason else ""), soft_wrap=True)
    for h in report.exhaustion:
        style = {"scaled": "yellow", "migrated": "yellow", "waiting": "dim", "skipped": "dim"}.get(h.action, "red")
        console.print(f"[{style}]{escape(h.name)}[/] (CT {h.vmid}) {escape(h.rule)}: {h.action} - {escape(h.reason)}"
                      + (f"; report {escape(h.report)}" if h.report else ""), soft_wrap=True)
    for a in report.alerts:
        console.print(f"[red]alert[/] {escape(a['rule'])} {escape(a['name'])}: {escape(a['description'])}",
                      soft_wrap=True)


@app.callback(invoke_without_command=True)
def recover(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="One sweep, then exit (for a timer).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --once: print the sweep as JSON.")] = False,
) -> None:
    """Restart this installation's containers that stopped or fail their health checks (budgeted)."""
    if ctx.invoked_subcommand:
        return
    app_ctx = _app(ctx)
    if json_out and not once:
        raise UsageError("--json needs --once (the loop prints one line per action)")
    if once:
        report = run_once(app_ctx)
        if json_out:
            print_json(report.as_dict())
        else:
            render(report)
        if not report.ok:
            raise typer.Exit(EXIT_FAILED)
        return
    every = app_ctx.strategy.emergency.container_failure.interval.total_seconds()
    stop = threading.Event()
    wake = threading.Event()  # set by SIGTERM and by the backend's stop events (LXC: lxc-monitor)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    end_watch = _watch_stops(app_ctx, wake)
    info(f"watching every {every:g}s (emergency.container_failure.interval)"
         + (" and at once when a container stops" if end_watch else "") + "; Ctrl-C or SIGTERM stops")
    try:
        while not stop.is_set():
            wake.clear()  # a stop seen from here on makes the next wait return at once
            try:
                report = run_once(app_ctx)
            except UsageError:
                raise
            except PveguardError as exc:  # API down, apply running...: say so, try again next time
                info(f"sweep failed: {exc.message}")
            else:
                acted = [o for o in report.containers if o.action != "none"]
                handled = [h for h in report.exhaustion if h.action not in ("waiting", "skipped")]
                if acted or report.alerts or handled:  # a quiet sweep prints nothing
                    render(SweepReport(report.ts, acted, report.alerts, handled))
            wake.wait(every)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if end_watch:
            end_watch()
    info("stopped")


def _known(app_ctx: AppContext, name: str) -> None:
    names = [c.name for c in app_ctx.strategy.containers]
    if name not in names:
        raise UsageError(f"no container {name!r} in the strategy {app_ctx.strategy_path}",
                         hint="the strategy's containers: " + (", ".join(names) or "(none)"))


@app.command("clear")
def clear_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The container to take out of quarantine.")],
) -> None:
    """Take NAME out of quarantine with a fresh restart budget."""
    app_ctx = _app(ctx)
    _known(app_ctx, name)
    st = load_states(app_ctx.store).get(name, RestartState())
    save_state(app_ctx.store, name, RestartState())
    app_ctx.record("recover.clear", name, was_quarantined=st.quarantined_at is not None,
                   reason=st.quarantine_reason, restarts=len(st.restarts))
    console.print(f"{name}: " + ("out of quarantine" if st.quarantined_at is not None else "not quarantined")
                  + "; restart budget reset")


def maintenance_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A container of the strategy.")],
    state: Annotated[str, typer.Argument(
        metavar="on|off", help="on: the watchdog leaves it alone; off: watch it again.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the flag and in the ledger).")] = "",
) -> None:
    """Put NAME in maintenance (the watchdog never touches it) or take it out."""
    app_ctx = _app(ctx)
    if state not in ("on", "off"):
        raise UsageError(f"{state!r} is neither on nor off", hint=f"pveguard maintenance {name} on|off")
    _known(app_ctx, name)
    changed = set_maintenance(app_ctx.store, name, state == "on", time.time(), reason or "set by an admin")
    if changed:
        app_ctx.record("recover.maintenance", name, state=state, reason=reason or None)
    console.print(f"{name}: maintenance {state}" + ("" if changed else " (already)"))
