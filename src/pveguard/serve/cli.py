"""`pveguard serve [--listen HOST:PORT]` and `pveguard api-token create|list|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from pveguard.context import AppContext
from pveguard.errors import UsageError
from pveguard.output import Col, FitTable, console, print_json, say

token_app = typer.Typer(help="pveguard's own API tokens (for 'pveguard serve'): create, list, revoke.",
                        rich_markup_mode=None, no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape, see docs/json.md).")]


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


@token_app.command("create")
def create_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the token (who or what uses it).")],
    role: Annotated[str, typer.Option("--role", metavar="viewer|operator|admin",
                                      help="viewer reads; operator also approves and silences; admin also applies.")],
    ttl: Annotated[str | None, typer.Option("--ttl", help="Lifetime, e.g. 30d, 12h [default: no expiry].")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API token; its secret is printed once (only its hash is kept)."""
    from pveguard.security.ledger import current_actor
    from pveguard.serve import tokens
    from pveguard.strategy.units import format_duration, parse_duration

    if role not in tokens.ROLES:
        raise UsageError(f"--role {role!r} is not a role", hint="use --role viewer, operator or admin")
    seconds: float | None = None
    if ttl is not None:
        try:
            seconds = parse_duration(ttl).total_seconds()
        except ValueError as exc:
            raise UsageError(f"--ttl: {exc}", hint="e.g. --ttl 30d") from None
        if seconds <= 0:
            raise UsageError("--ttl must be longer than 0s", hint="e.g. --ttl 30d, or leave it out for no expiry")
    app_ctx = _app(ctx)
    try:
        token, secret = tokens.create(app_ctx.store, name, role, seconds, current_actor())
    except ValueError as exc:
        raise UsageError(str(exc), hint=f"revoke it first ('pveguard api-token revoke {name}') or pick "
                         "another name" if "already" in str(exc) else None) from None
    app_ctx.record("serve.token.create", name, role=role, expires_at=token.as_dict()["expires_at"])
    if json_out:
        print_json({**token.as_dict(), "secret": secret})
        return
    console.print(f"API token {name!r} ({role}) created"
                  + (f", valid for {format_duration(parse_duration(ttl))}" if ttl else ", no expiry"))
    say("secret (shown only now; store it safely):")
    console.print(secret, markup=False, highlight=False, soft_wrap=True)
    say("use it as 'Authorization: Bearer <secret>', or log in with it on the web page")


@token_app.command("list")
def list_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List API tokens (never their secrets)."""
    from pveguard.serve import tokens

    items = [t.as_dict() for t in tokens.listing(_app(ctx).store)]
    if json_out:
        print_json({"tokens": items})
        return
    if not items:
        console.print("no API tokens; create one with 'pveguard api-token create NAME --role viewer'")
        return
    table = FitTable(Col("name", 0, wrap=False), Col("role", 0, wrap=False), Col("state", 0, wrap=False),
                     Col("expires (UTC)", 1, wrap=False), Col("last used (UTC)", 2, wrap=False),
                     Col("created by", 3, min_width=10), title="API tokens")

    def short(iso: str | None) -> str:
        return iso[:16].replace("T", " ") if iso else "never"

    for t in items:
        table.add_row(t["name"], t["role"], t["state"], short(t["expires_at"]), short(t["last_used_at"]),
                      t["created_by"])
    console.print(table)


@token_app.command("revoke")
def revoke_cmd(ctx: typer.Context,
               name: Annotated[str, typer.Argument(help="The token's name (see 'pveguard api-token list').")]) -> None:
    """Revoke an API token at once (its web sessions end with it)."""
    from pveguard.security.ledger import current_actor
    from pveguard.serve import tokens

    app_ctx = _app(ctx)
    try:
        token = tokens.revoke(app_ctx.store, name, current_actor())
    except LookupError as exc:
        raise UsageError(str(exc.args[0]), hint="list them with 'pveguard api-token list'") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app_ctx.record("serve.token.revoke", name, role=token.role)
    console.print(f"API token {name!r} revoked")


def serve_cmd(
    ctx: typer.Context,
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="HOST:PORT",
        help="Address to serve on [default: the strategy's serve.listen, 127.0.0.1:8450].")] = None,
    print_unit: Annotated[bool, typer.Option(
        "--print-unit", help="Print a systemd unit that runs this serve (same options) and exit.")] = False,
) -> None:
    """Run the daemon: jobs on the strategy's schedules, the REST API and the dashboard (docs/serve.md)."""
    from pveguard.serve.daemon import run

    app_ctx = _app(ctx)
    if print_unit:
        import shutil
        import sys
        from pathlib import Path

        from pveguard.serve.deploy import render_unit

        exe = shutil.which("pveguard") or str(Path(sys.executable).with_name("pveguard"))
        typer.echo(render_unit(str(Path(exe).absolute()), str(app_ctx.strategy_path.absolute()),
                               str(app_ctx.state_dir.absolute()), listen), nl=False)
        return
    run(app_ctx, listen)

