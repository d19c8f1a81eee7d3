"""`pveguard migrate plan|run|status|rollback`: move one host service into a container (docs/migrate.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pveguard.context import AppContext
from pveguard.errors import UsageError
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
    doc = plan.build(facts, strategy, service, to)
    if json_out:
        print_json(doc)
    else:
        typer.echo(plan.render_text(doc), nl=False)
