"""`pveguard audit`: inventory, classification, suggestions, findings and the compliance score."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pveguard.errors import StateError, UsageError

if TYPE_CHECKING:
    from pveguard.context import AppContext

FormatOpt = Annotated[str, typer.Option("--format", "-f", metavar="FORMAT",
                                        help="table, json, markdown or html.")]


def audit(
    ctx: typer.Context,
    fmt: FormatOpt = "table",
    output: Annotated[str | None, typer.Option("--output", "-o", metavar="FILE",
                                               help="Write the report to FILE instead of stdout.")] = None,
    root: Annotated[str, typer.Option("--root", metavar="PATH",
                                      help="Audit the root filesystem at PATH offline (mounted disk, chroot, "
                                           "container rootfs); live facts are only read for /.")] = "/",
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    full: Annotated[bool, typer.Option("--full", help="The table format shows the whole inventory (services, "
                                                      "dependency map, sockets...), not only the findings.")] = False,
) -> None:
    """Inventory this host, classify every service and package, suggest containers, score compliance.

    The table is a summary (score and findings) sized to the terminal; --full adds the inventory.
    JSON, Markdown and HTML are always complete. Read-only. Exit code 0 whatever the score; use the
    JSON 'score.value' in scripts.
    """
    from pveguard.audit import assemble, inventory, report, sources
    from pveguard.cli import get_ctx
    from pveguard.output import console

    fmt = "json" if json_out else fmt.lower()
    if fmt not in report.FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use one of: {', '.join(report.FORMATS)}")
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"--root {root}: not a directory", hint="pass the path of a mounted root filesystem")
    if not (root_path / "var/lib/dpkg/status").is_file():
        raise UsageError(f"--root {root}: no var/lib/dpkg/status below it, so it is not a Debian-family root",
                         hint="pass the directory that contains etc/, usr/ and var/ of the system to audit")
    app_ctx = get_ctx(ctx)
    strategy = app_ctx.strategy_or_default()
    facts = inventory.collect(root_path)
    ext = sources.external(app_ctx, strategy, facts.root)
    doc = assemble.build(facts, strategy, ext)
    if root_path == Path("/"):
        _record_score(app_ctx, doc)
    text = report.render(doc, fmt, width=console.width, full=full)
    if output is None:
        typer.echo(text, nl=False)
        return
    out = Path(output)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}", hint="choose a writable --output path") from None
    typer.echo(f"wrote the {fmt} audit report to {out} (score {doc['score']['value']}/100)", err=True)


def _record_score(app_ctx: AppContext, doc: dict[str, Any]) -> None:
    """Keep this host's score for the monitor (`score.latest`), but only in an existing state
    database: the audit itself never creates one. A store that cannot be written costs a warning,
    not the report."""
    import sqlite3

    from pveguard.audit import score
    from pveguard.output import warn
    from pveguard.store import DB_NAME

    if not (app_ctx.state_dir / DB_NAME).exists():
        return
    s = doc["score"]
    result = score.Score(s["value"], s["counts"], s["penalty"])
    try:
        score.record(app_ctx.store, result, doc["generated_at"], doc["host"]["hostname"])
    except (StateError, sqlite3.Error, OSError) as exc:
        text = exc.message if isinstance(exc, StateError) else str(exc)
        warn(f"the audit score was not recorded in {app_ctx.state_dir}: {text}")
