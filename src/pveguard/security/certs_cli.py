"""`pveguard certs`, `certs check` and `certs renew NODE`: certificates and their expiry."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pveguard.errors import EXIT_FAILED, PveguardError
from pveguard.output import Col, FitTable, console, info, print_json

if TYPE_CHECKING:
    from pveguard.security.certs import Report

app = typer.Typer(help="Node certificates, ACME and the containers' TLS endpoints, with days left.",
                  invoke_without_command=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _app_ctx(ctx: typer.Context) -> Any:
    from pveguard.cli import get_ctx

    return get_ctx(ctx)


def _report(app_ctx: Any) -> Report:
    from pveguard.backends import connect
    from pveguard.security.certs import collect

    strategy = app_ctx.strategy_or_default()
    backend = None
    try:
        backend = connect(strategy)
    except PveguardError as exc:
        return collect(strategy, None, backend_error=exc.message)
    try:
        return collect(strategy, backend)
    finally:
        with contextlib.suppress(Exception):  # closing a broken connection has nothing left to report
            backend.close()


@app.callback()
def certs(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List every node's certificates, the ACME configuration and the containers' https endpoints.

    Read-only; exit 0. Certificates inside security.access.certificates.warn_before are marked; use
    'pveguard certs check' to raise the expiry alert (exit 1 while any is inside it)."""
    if ctx.invoked_subcommand:
        return
    report = _report(_app_ctx(ctx))
    if json_out:
        print_json(report.as_dict())
        return
    _print(report)


@app.command("check")
def check_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Raise or clear the certificate expiry alert (shown by 'pveguard alerts', sent to the strategy's
    notifiers); with security.access.certificates.manage, first renew the ACME certificates of nodes
    inside warn_before (each in the ledger). Exit 1 while any certificate is inside warn_before."""
    from pveguard.monitor.notify import notifiers_from_strategy
    from pveguard.security.certs import check

    app_ctx = _app_ctx(ctx)
    strategy = app_ctx.strategy_or_default()
    report = _report(app_ctx)
    renewals: list[dict[str, Any]] = []
    if strategy.security.access.certificates.manage:
        renewals = _renew_due(app_ctx, report)
        if renewals:
            report = _report(app_ctx)  # the alert follows what the nodes serve now
    m = strategy.monitoring
    states, events, _delivery = check(app_ctx.store, report, strategy,
                                      notifiers_from_strategy(m.notify, m.renotify.total_seconds()))
    firing = sorted(t for (_r, t), s in states.items() if s.state == "firing")
    if json_out:
        print_json({**report.as_dict(), "alerts_firing": firing, "notifications": len(events),
                    "renewals": renewals})
    else:
        _print(report)
        for r in renewals:
            info(f"ACME certificate of {r['node']}: {r['action']} done" if r["ok"]
                 else f"ACME certificate of {r['node']}: renewal failed: {r['error']}")
        for target in firing:
            info(f"alert firing: certificate {target}")
    if report.expiring():
        raise typer.Exit(EXIT_FAILED)


def _renew_due(app_ctx: Any, report: Report) -> list[dict[str, Any]]:
    """security.access.certificates.manage: renew the ACME certificates inside warn_before, each
    recorded in the ledger; a failure is reported (the alert stays) and the others go on."""
    from pveguard.backends import connect
    from pveguard.security.certs import due_renewals, renew

    due = due_renewals(report)
    if not due:
        return []
    done: list[dict[str, Any]] = []
    backend = connect(app_ctx.strategy_or_default())
    try:
        for node, force in due:
            app_ctx.record("certs.renew.intent", node, force=force, by="certificates.manage")
            try:
                action, upid = renew(backend, node, force)
            except PveguardError as exc:
                app_ctx.record("certs.renew.result", node, ok=False, error=exc.message)
                done.append({"node": node, "ok": False, "action": None, "upid": None, "error": exc.message})
                continue
            app_ctx.record("certs.renew.result", node, ok=True, order=action, upid=upid)
            done.append({"node": node, "ok": True, "action": action, "upid": upid, "error": None})
    finally:
        with contextlib.suppress(Exception):
            backend.close()
    return done


@app.command("renew")
def renew_cmd(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The PVE node whose ACME certificate to renew.")],
    force: Annotated[bool, typer.Option("--force", help="Renew even when expiry is more than 30 days away "
                                                        "(PVE's own rule), or replace a custom certificate.")] = False,
) -> None:
    """Order a new ACME certificate for NODE (renewal when it has one); refused with a clear message
    when ACME is not configured on the node."""
    from pveguard.backends import connect
    from pveguard.security.certs import renew

    app_ctx = _app_ctx(ctx)
    backend = connect(app_ctx.strategy_or_default())
    try:
        app_ctx.record("certs.renew.intent", node, force=force)
        try:
            action, upid = renew(backend, node, force)
        except PveguardError as exc:
            app_ctx.record("certs.renew.result", node, ok=False, error=exc.message)
            raise
        app_ctx.record("certs.renew.result", node, ok=True, order=action, upid=upid)
    finally:
        with contextlib.suppress(Exception):
            backend.close()
    info(f"ACME certificate of {node}: {action} done (task {upid}); pveproxy serves it from now on")


def _print(report: Report) -> None:
    table = FitTable(Col("where", 0, wrap=False), Col("certificate", 0, min_width=16), Col("days left", 0,
                     wrap=False, justify="right"), Col("not after (UTC)", 1, wrap=False),
                     Col("subject", 3, min_width=30), Col("fingerprint", 4, min_width=16),
                     title=f"certificates (warn {report.warn_before / 86400:g} days before expiry)")
    for c in report.certs:
        left = c.days_left(report.now)
        after = c.as_dict(report.now, report.warn_before)["not_after"] or "-"
        style = "red" if c.expiring(report.now, report.warn_before) else ("yellow" if c.error else None)
        table.add_row(c.where, c.name, "-" if left is None else str(left), after.replace("T", " ").rstrip("Z"),
                      c.error or c.subject or "-", c.fingerprint or "-", style=style)
    console.print(table)
    if report.nodes_reason:
        info(f"node certificates: {report.nodes_reason}")
    for a in report.acme:
        if a.error:
            info(f"ACME on {a.node}: unknown ({a.error})")
        elif a.configured:
            info(f"ACME on {a.node}: account {a.account}, domains {', '.join(d for d, _p in a.domains)}")
        else:
            info(f"ACME on {a.node}: not configured")
    n = len(report.expiring())
    if n:
        info(f"{n} certificate(s) expire within {report.warn_before / 86400:g} days")
