"""`pveguard monitor`, `pveguard alerts` and `pveguard export`: the monitoring commands."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live

from pveguard.errors import UsageError
from pveguard.output import Col, FitTable, console, info, iso_utc, print_json

if TYPE_CHECKING:
    from pveguard.monitor.alerts import AlertState, Event, Silence

monitor_app = typer.Typer(help="Poll the containers, keep series and alerts, serve /metrics.",
                          invoke_without_command=True)
alerts_app = typer.Typer(help="Alert states and silences.", invoke_without_command=True)
export_app = typer.Typer(help="Export monitoring configuration for the pve-monitoring container.",
                         no_args_is_help=True)

SPARK = "▁▂▃▄▅▆▇█"
RULE_NAMES = ("cpu", "memory", "disk", "down", "fw_drops", "new_destination")
METRIC_NAMES = ("cpu", "memory", "disk", "disk_read", "disk_write", "net_in", "net_out")


def _app_ctx(ctx: typer.Context) -> Any:
    from pveguard.cli import get_ctx

    return get_ctx(ctx)


def _duration(text: str, option: str) -> float:
    from pveguard.strategy.units import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{option} must be longer than 0s", hint="e.g. 30m, 6h or 2d")
    return seconds


def sparkline(values: list[float], lo: float = 0.0, hi: float = 100.0) -> str:
    """Values as block characters between lo and hi (percent by default)."""
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, max(0, int((v - lo) / span * len(SPARK))))] for v in values)


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if abs(v) < 1024:
            return f"{v:.0f} {unit}" if unit == "B/s" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB/s"


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


# --- building the monitor -----------------------------------------------------------------------


def build_monitor(app_ctx: Any, source: Any = None, clock: Any = time.time) -> Any:
    """A Monitor for the strategy's target, rules and notifiers."""
    from pveguard.monitor import traffic
    from pveguard.monitor.alerts import rules_from_strategy
    from pveguard.monitor.collector import open_source
    from pveguard.monitor.engine import Monitor, series_for
    from pveguard.monitor.notify import notifiers_from_strategy

    strategy = app_ctx.strategy_or_default()
    m = strategy.monitoring
    source = source or open_source(strategy, clock=clock)
    rules = rules_from_strategy(m)
    watch = None
    if traffic.enabled(strategy):
        backend = getattr(source, "backend", None)
        if backend is not None:
            rules += traffic.traffic_rules(m)
            watch = traffic.TrafficWatch(app_ctx.store, traffic.open_reader(strategy, backend),
                                         m.traffic.read_every.total_seconds(), m.traffic.learning.total_seconds(),
                                         clock)
    return Monitor(app_ctx.store, source, rules,
                   notifiers_from_strategy(m.notify, m.renotify.total_seconds()), clock=clock,
                   series_metrics=series_for(m.metrics), traffic=watch)


def export_view(mon: Any, state_dir: Path | None = None) -> Any:
    """What /metrics shows now: the last good sweep, alert states, poll counters and, when
    `pveguard audit` has recorded one in `state_dir`, the compliance score."""
    from pveguard.monitor.exporter import ExportView

    last = mon.last
    return ExportView(sweep=mon.last_good, states=last.states if last else {}, polls=mon.polls, errors=mon.errors,
                      poll_duration=last.duration if last else 0.0,
                      severities={r.name: r.severity for r in mon.rules}, traffic=mon.last_traffic,
                      compliance_score=compliance_score(state_dir) if state_dir else None,
                      pending_updates=pending_updates(state_dir) if state_dir else {})


def pending_updates(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Each container's (pending, security) updates at the last `pveguard update` check."""
    from pveguard.updates.state import latest

    return {c.name: (c.pending, c.security) for c in latest(state_dir)}


def compliance_score(state_dir: Path) -> float | None:
    """The newest audit score recorded in the state directory, if any."""
    from pveguard.audit import score

    recorded = score.latest(state_dir)
    return float(recorded.value) if recorded is not None else None


def status_table(mon: Any, limit: int = 40) -> FitTable:
    """Guests with current values, sparklines and alert states (alerting and managed first).

    At 80 columns the guest, name, state, cpu, memory, disk and alerts stay; trends and rates go."""
    res = mon.last
    table = FitTable(Col("guest", 0, wrap=False), Col("name", 0, wrap=False), Col("status", 1, wrap=False),
                     Col("cpu %", 1, wrap=False, justify="right"), Col("cpu trend", 5, wrap=False),
                     Col("mem %", 1, wrap=False, justify="right"), Col("mem trend", 5, wrap=False),
                     Col("disk %", 2, wrap=False, justify="right"),
                     Col("net in", 4, wrap=False, justify="right"), Col("net out", 4, wrap=False, justify="right"),
                     Col("disk r", 6, wrap=False, justify="right"), Col("disk w", 6, wrap=False, justify="right"),
                     Col("alerts", 1, min_width=10), title=_title(mon))
    if res is None or res.sweep is None:
        return table
    alerts: dict[str, list[str]] = {}
    for (rule, target), st in sorted(res.states.items()):
        if st.state != "inactive":
            tag = "" if not st.flapping(res.ts) else " (flapping)"
            # "memory firing": words the column can wrap between, never fold inside
            # a new destination's alert (lxc/101>tcp/...) shows on its container's row
            alerts.setdefault(target.split(">", 1)[0], []).append(f"{rule} {st.state}{tag}")
    guests = [s for s in res.sweep.samples if s.is_guest and not s.template]
    guests.sort(key=lambda s: (s.id not in alerts, not s.managed, -s.cpu, s.id))
    for s in guests[:limit]:
        v = res.derived.get(s.id).values if s.id in res.derived else {}
        state = ", ".join(alerts.get(s.id, [])) or "ok"
        style = "red" if "firing" in state else ("yellow" if "pending" in state else None)
        table.add_row(
            s.id, s.name + (" *" if s.managed else ""), s.status,
            f"{v['cpu']:.1f}" if "cpu" in v else "-", sparkline(mon.series.latest(s.id, "cpu", 20)),
            f"{v['memory']:.1f}" if "memory" in v else "-", sparkline(mon.series.latest(s.id, "memory", 20)),
            f"{v['disk']:.1f}" if "disk" in v else "-",
            _rate(v.get("net_in")), _rate(v.get("net_out")), _rate(v.get("disk_read")), _rate(v.get("disk_write")),
            state, style=style)
    if len(guests) > limit:
        table.caption = f"{len(guests) - limit} more guests not shown (--limit); * = managed by pveguard"
    else:
        table.caption = "* = managed by pveguard"
    return table


def _title(mon: Any) -> str:
    res = mon.last
    if res is None:
        return "pveguard monitor"
    if res.error:
        return f"pveguard monitor - last poll FAILED: {res.error}"
    calls = res.sweep.api_calls if res.sweep else 0
    # An alert event is only a notification when something is configured to send it.
    sent = (f"{len(res.events)} notification(s)" if mon.notifiers
            else f"{len(res.events)} alert event(s), not sent: no notifier configured")
    return f"pveguard monitor - {_iso(res.ts)} UTC, poll {res.duration * 1000:.0f} ms, {calls} API call(s), {sent}"


# --- pveguard monitor ---------------------------------------------------------------------------


@monitor_app.callback()
def monitor(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Poll once, show the table and exit (the default).")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep polling and redraw the table.")] = False,
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="HOST:PORT", help="Serve Prometheus /metrics here and keep polling.")] = None,
    interval: Annotated[str | None, typer.Option(
        "--interval", metavar="DURATION", help="Poll interval, e.g. 10s [default: monitoring.poll_interval].")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Rows in the table.")] = 40,
    json_out: Annotated[bool, typer.Option("--json", help="With --once: print the poll as JSON.")] = False,
) -> None:
    """Poll the guests (one API call per poll), evaluate alerts, notify, record series."""
    if ctx.invoked_subcommand:
        return
    if once and (watch or listen):
        raise UsageError("--once cannot be combined with --watch or --listen")
    app_ctx = _app_ctx(ctx)
    every = _duration(interval, "--interval") if interval else \
        app_ctx.strategy_or_default().monitoring.poll_interval.total_seconds()
    mon = build_monitor(app_ctx)
    if not (watch or listen):
        res = mon.poll()
        if json_out:
            print_json(_poll_json(res))
        elif not res.error:  # a failed poll shows no table: an empty one would read as "no guests"
            console.print(status_table(mon, limit))
            if res.traffic is not None and res.traffic.errors:
                info("traffic watch: " + "; ".join(res.traffic.errors))
        if res.error:  # an operational failure (exit 1), not a usage error
            from pveguard.errors import OperationError

            raise OperationError(f"the poll failed: {res.error}",
                                 hint="check the target settings and the API, then run the command again")
        return
    stop = threading.Event()
    if listen:
        from pveguard.monitor.exporter import serve

        state_dir = Path(app_ctx.state_dir)
        # rendered once per poll (or when `pveguard audit` records a new score), not per scrape
        serve(listen, lambda: export_view(mon, state_dir),
              get_key=lambda: (mon.polls, mon.errors, compliance_score(state_dir)))
        info(f"serving /metrics on http://{listen}/metrics (poll every {every:g}s; Ctrl-C stops)")
    try:
        if watch:
            with Live(status_table(mon, limit), console=console, refresh_per_second=1) as live:
                while not stop.is_set():
                    _poll_and_report(mon, quiet=True)
                    live.update(status_table(mon, limit))
                    stop.wait(every)
        else:
            while not stop.is_set():
                _poll_and_report(mon)
                stop.wait(every)
    except KeyboardInterrupt:
        return


def _poll_and_report(mon: Any, quiet: bool = False) -> None:
    """One poll of a long-running monitor: a failure is reported and the loop goes on."""
    from pveguard.errors import PveguardError

    try:
        res = mon.poll()
    except PveguardError as exc:  # e.g. the state database busy for longer than its timeout
        info(f"poll failed: {exc.message}")
        return
    if res.error and not quiet:
        info(f"poll failed: {res.error}")


def _poll_json(res: Any) -> dict[str, Any]:
    samples = res.sweep.samples if res.sweep else []
    return {
        "ts": iso_utc(res.ts), "error": res.error, "duration": res.duration,
        "api_calls": res.sweep.api_calls if res.sweep else 0,
        "guests": [{"id": s.id, "name": s.name, "status": s.status, "managed": s.managed,
                    "values": dict(res.derived[s.id].values) if s.id in res.derived else {}}
                   for s in samples if s.is_guest],
        "alerts": [alert_json(st, res.ts) for st in res.states.values()],
        "notifications": [event_json(e) for e in res.events],
    }


# The state machines keep epoch floats (their persisted form); JSON for people's scripts uses the
# one convention of docs/json.md: ISO 8601 UTC with a Z, null for "never".
def alert_json(st: AlertState, now: float) -> dict[str, Any]:
    d = st.to_dict()
    for key in ("since", "started_at", "last_notified", "flapping_until", "resolved_at"):
        d[key] = iso_utc(d[key])
    d["changes"] = [iso_utc(t) for t in d["changes"]]
    d["flapping"] = st.flapping(now)
    return d


def event_json(e: Event) -> dict[str, Any]:
    d = e.to_dict()
    d["ts"], d["started_at"] = iso_utc(d["ts"]), iso_utc(d["started_at"])
    return d


def silence_json(s: Silence) -> dict[str, Any]:
    return {"id": s.id, "target": s.target, "rule": s.rule, "reason": s.reason, "created": iso_utc(s.created),
            "until": iso_utc(s.until)}


@monitor_app.command("history")
def history(
    ctx: typer.Context,
    guest: Annotated[str, typer.Argument(help="Guest name, vmid or id (lxc/101).")],
    metric: Annotated[str, typer.Option("--metric", help=f"One of: {', '.join(METRIC_NAMES)}.")] = "cpu",
    since: Annotated[str, typer.Option("--since", metavar="DURATION", help="How far back, e.g. 30m, 6h, 7d.")] = "6h",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a guest's recorded series (raw for the last day, 5-minute buckets beyond)."""
    from pveguard.monitor.series import SeriesStore

    if metric not in METRIC_NAMES:
        raise UsageError(f"unknown metric {metric!r}", hint=f"use one of: {', '.join(METRIC_NAMES)}")
    seconds = _duration(since, "--since")
    series = SeriesStore(_app_ctx(ctx).store)
    target = series.resolve(guest)
    if target is None:
        known = ", ".join(t.name or t.id for t in series.targets()[:10]) or "none yet"
        raise UsageError(f"no recorded series for guest {guest!r}",
                         hint=f"run 'pveguard monitor' first; known guests: {known}")
    now = time.time()
    tier, points = series.history(target.id, metric, now - seconds, now)
    if json_out:
        print_json({"guest": target.id, "name": target.name, "metric": metric, "tier": tier,
                    "points": [{"ts": iso_utc(p.ts), "value": p.value, "min": p.min, "max": p.max} for p in points]})
        return
    from pveguard.monitor.collector import SERIES_UNITS

    unit = SERIES_UNITS[metric]
    console.print(f"{target.id} ({target.name}) {metric} [{unit}], last {since}, {tier} tier, {len(points)} points")
    if not points:
        return
    vals = [p.value for p in points]
    lo, hi = (0.0, 100.0) if unit == "%" else (min(vals), max(vals))
    console.print(sparkline(vals[-120:], lo, hi))
    table = FitTable(Col("time (UTC)", 0, min_width=10), Col("value", 0, wrap=False, justify="right"),
                     Col("min", 1, wrap=False, justify="right"), Col("max", 1, wrap=False, justify="right"))
    for p in points[-30:]:
        table.add_row(_iso(p.ts), f"{p.value:.2f}", f"{p.min:.2f}" if p.min is not None else "",
                      f"{p.max:.2f}" if p.max is not None else "")
    console.print(table)


# --- pveguard alerts ----------------------------------------------------------------------------


@alerts_app.callback()
def alerts(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List pending and firing alerts, active silences and undelivered notifications."""
    if ctx.invoked_subcommand:
        return
    from pveguard.monitor.alerts import event_id
    from pveguard.monitor.engine import load_silences, load_states
    from pveguard.monitor.notify import NO_NOTIFIER_HINT, Dispatcher

    app_ctx = _app_ctx(ctx)
    store = app_ctx.store
    now = time.time()
    states = sorted(load_states(store).values(), key=lambda s: (s.state != "firing", s.rule, s.target))
    active = [s for s in states if s.state != "inactive"]
    silences = load_silences(store, now)
    dispatcher = Dispatcher(store, [])
    undelivered = dispatcher.undelivered()
    configured = len(app_ctx.strategy_or_default().monitoring.notify)
    delivered = {s.key: dispatcher.delivered_to(event_id(s.rule, s.target, s.started_at, "firing"))
                 for s in active if s.notified}
    notification = {s.key: _notification(s.notified, configured, delivered.get(s.key, [])) for s in active}
    if json_out:
        print_json({"alerts": [dict(alert_json(s, now), notified=bool(delivered.get(s.key)),
                                    notification=notification[s.key], delivered_to=delivered.get(s.key, []))
                               for s in active],
                    "notifiers_configured": configured,
                    "silences": [silence_json(s) for s in silences], "undelivered": undelivered})
        return
    if not active:
        console.print("no pending or firing alerts")
    else:
        console.print(alerts_table(active, now, notification))
    if not configured:
        console.print(f"nothing is configured to notify: alerts are only shown here; {NO_NOTIFIER_HINT}",
                      soft_wrap=False)  # a sentence: wrap at words to the terminal's width
    if silences:
        console.print(silences_table(silences))
    if undelivered:
        console.print(f"{len(undelivered)} notification(s) not delivered yet; last error: "
                      f"{undelivered[-1]['last_error'] or 'not tried yet'}")


def alerts_table(active: list[Any], now: float, notification: dict[Any, str]) -> FitTable:
    """Pending and firing alerts; the rule, target and name stay whole at any width."""
    table = FitTable(Col("rule", 0, wrap=False), Col("target", 0, wrap=False), Col("name", 0, wrap=False),
                     Col("state", 1, wrap=False), Col("since (UTC)", 2, min_width=10),
                     Col("value", 1, wrap=False, justify="right"), Col("notified", 3, wrap=False),
                     Col("flapping", 4, wrap=False))
    for s in active:
        table.add_row(s.rule, s.target, s.name, s.state, _iso(s.since),
                      f"{s.value:.1f}" if s.value is not None else "-", notification[s.key],
                      "yes" if s.flapping(now) else "", style="red" if s.state == "firing" else "yellow")
    return table


def silences_table(silences: list[Any]) -> FitTable:
    """Active silences; the reason wraps, the target stays whole."""
    table = FitTable(Col("silence", 0, wrap=False, justify="right"), Col("target", 0, wrap=False),
                     Col("rule", 2, wrap=False), Col("until (UTC)", 1, min_width=10), Col("reason", 3, min_width=12),
                     title="silences")
    for sil in silences:
        table.add_row(str(sil.id), sil.target, sil.rule or "any", _iso(sil.until), sil.reason)
    return table


def _notification(produced: bool, configured: int, delivered: list[str]) -> str:
    """What happened to an alert's firing notification, in a word or two."""
    if not produced:
        return "no"  # pending, silenced or flapping: nothing was due yet
    if not configured:
        return "no notifier"
    return "yes" if delivered else "queued"


@alerts_app.command("silence")
def silence(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Guest name, id (lxc/101) or a glob (pve-*).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit ledger).")],
    for_: Annotated[str, typer.Option("--for", metavar="DURATION", help="How long, e.g. 30m, 2h, 1d.")] = "2h",
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule: " + ", ".join(RULE_NAMES) + ".")] = None,
) -> None:
    """Hold notifications for TARGET; alerts still change state and show in 'pveguard alerts'."""
    from pveguard.monitor.engine import add_silence

    if rule is not None and rule not in RULE_NAMES:
        raise UsageError(f"unknown rule {rule!r}", hint=f"use one of: {', '.join(RULE_NAMES)}")
    if not reason.strip():
        raise UsageError("a silence needs --reason", hint="e.g. --reason 'planned kernel update'")
    seconds = _duration(for_, "--for")
    app_ctx = _app_ctx(ctx)
    sil = add_silence(app_ctx.store, target, seconds, reason, time.time(), rule)
    app_ctx.record("alerts.silence", target, silence_id=sil.id, rule=rule, until=iso_utc(sil.until),
                   reason=reason)
    console.print(f"silence {sil.id}: {target} ({rule or 'all rules'}) until {_iso(sil.until)} UTC")


@alerts_app.command("unsilence")
def unsilence(
    ctx: typer.Context,
    silence_id: Annotated[int, typer.Argument(help="The silence's number (see 'pveguard alerts').")],
) -> None:
    """End a silence now."""
    from pveguard.monitor.engine import end_silence

    app_ctx = _app_ctx(ctx)
    sil = end_silence(app_ctx.store, silence_id, time.time())
    app_ctx.record("alerts.unsilence", sil.target, silence_id=sil.id)
    console.print(f"silence {sil.id} for {sil.target} ended")


# --- pveguard export ----------------------------------------------------------------------------


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    info(f"wrote {output}")


OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")]


@export_app.command("prometheus-rules")
def export_prometheus_rules(ctx: typer.Context, output: OutputOpt = None) -> None:
    """The strategy's thresholds as Prometheus alerting rules (check with 'promtool check rules')."""
    from pveguard.monitor.rules import prometheus_rules_yaml

    _write(prometheus_rules_yaml(_app_ctx(ctx).strategy_or_default()), output)


@export_app.command("grafana-dashboard")
def export_grafana_dashboard(ctx: typer.Context, output: OutputOpt = None) -> None:
    """A Grafana dashboard (JSON) with a panel per strategy metric."""
    from pveguard.monitor.rules import grafana_dashboard

    _write(json.dumps(grafana_dashboard(_app_ctx(ctx).strategy_or_default()), indent=2) + "\n", output)


# --- pveguard monitor traffic -------------------------------------------------------------------

traffic_app = typer.Typer(help="The traffic watch: dropped connections and each container's destination "
                               "baseline.", invoke_without_command=True)
monitor_app.add_typer(traffic_app, name="traffic")


def traffic_json(view: Any, learning: float) -> dict[str, Any]:
    return {
        "last_read": iso_utc(view.last_read) if view.last_read else None, "source": view.source,
        "errors": list(view.errors), "api_calls": view.api_calls,
        "containers": [{
            "id": c.target, "vmid": c.vmid, "name": c.name, "learning": c.learning,
            "learning_until": iso_utc(c.learn_start + learning),
            "dropped_total": c.dropped_total, "drops_per_minute": c.drop_rate, "new_total": c.new_total,
            "destinations": [{"dest": d["dest"], "state": d["state"], "first_seen": iso_utc(d["first_seen"]),
                              "last_seen": iso_utc(d["last_seen"]), "hits": d["hits"]} for d in c.destinations],
        } for c in view.containers],
    }


def _traffic_view(app_ctx: Any) -> tuple[Any, float]:
    from pveguard.monitor import traffic

    strategy = app_ctx.strategy_or_default()
    if not traffic.enabled(strategy):
        raise UsageError("the traffic watch is off (network.isolation.traffic_monitoring or "
                         "security.network.traffic_monitoring is false)",
                         hint="set both to true in the strategy, then run 'pveguard monitor'")
    learning = strategy.monitoring.traffic.learning.total_seconds()
    now = time.time()
    return traffic.traffic_view(app_ctx.store, now, learning), learning


@traffic_app.callback()
def traffic_cmd(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each container's dropped connections and destinations (baseline, accepted, new) as the last
    'pveguard monitor' poll recorded them."""
    if ctx.invoked_subcommand:
        return
    view, learning = _traffic_view(_app_ctx(ctx))
    if json_out:
        print_json(traffic_json(view, learning))
        return
    if view.last_read is None:
        console.print("the traffic watch has not read the firewall yet: run 'pveguard monitor' first")
        return
    console.print(f"last read {_iso(view.last_read)} UTC from {view.source}"
                  + (f"; errors: {'; '.join(view.errors)}" if view.errors else ""), soft_wrap=False)
    table = FitTable(Col("container", 0, wrap=False), Col("dropped", 1, wrap=False, justify="right"),
                     Col("drops/min", 2, wrap=False, justify="right"), Col("baseline", 1, wrap=False),
                     Col("new destinations", 0, min_width=16), title="traffic")
    for c in view.containers:
        known = sum(1 for d in c.destinations if d["state"] != "new")
        base = f"{known} learning until {_iso(c.learn_start + learning)}" if c.learning else f"{known}"
        table.add_row(c.name or c.target,
                      f"{c.dropped_total:.0f}" if c.dropped_total is not None else "-",
                      f"{c.drop_rate:.1f}" if c.drop_rate is not None else "-", base,
                      ", ".join(c.new()) or "-", style="red" if c.new() else None)
    console.print(table)


@traffic_app.command("accept")
def traffic_accept(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Container name, vmid or id (lxc/101).")],
    dest: Annotated[list[str], typer.Argument(help="Destination(s) like tcp/10.0.0.5:443, or 'new' for all of the "
                                                   "container's new ones.")],
) -> None:
    """Accept destinations into NAME's baseline: their new_destination alerts resolve at the next poll."""
    from pveguard.monitor import traffic

    app_ctx = _app_ctx(ctx)
    view, _ = _traffic_view(app_ctx)
    c = traffic.find_container(view, name)
    if c is None:
        known = ", ".join(x.name or x.target for x in view.containers[:10]) or "none yet"
        raise UsageError(f"the traffic watch knows no container {name!r}",
                         hint=f"run 'pveguard monitor' first; known: {known}")
    wanted: list[str] = []
    for d in dest:
        if d == "new":
            wanted += c.new()
            continue
        try:
            wanted.append(traffic.parse_dest(d))
        except ValueError as exc:
            raise UsageError(str(exc), hint="e.g. tcp/10.0.0.5:443, udp/10.0.0.1:53 or icmp/10.0.0.1") from None
    changed, unseen = traffic.accept(app_ctx.store, c.target, wanted, time.time())
    if changed:
        app_ctx.record("monitor.traffic.accept", c.name or c.target, destinations=changed, not_seen_yet=unseen)
    label = c.name or c.target
    if not changed:
        console.print(f"{label}: nothing to accept (already in the baseline)")
        return
    console.print(f"{label}: accepted {', '.join(changed)}")
    if unseen:
        console.print(f"{label}: not seen yet, added to the baseline ahead of time: {', '.join(unseen)} "
                      f"(new ones: {', '.join(c.new()) or 'none'})", soft_wrap=False)
