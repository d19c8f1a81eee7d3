"""`pveguard audit-log show|verify`: read and check the hash-chained ledger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pveguard.output import Col, FitTable, console, err_console, error, print_json

if TYPE_CHECKING:
    from pveguard.security.ledger import Entry

app = typer.Typer(help="Read and verify the audit ledger.", no_args_is_help=True)


def _ctx(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from pveguard.cli import get_ctx

    return get_ctx(ctx)


@app.command("show")
def show(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Only entries at or after this ISO 8601 time.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (or prefix, e.g. 'guard').")] = None,
    target: Annotated[str | None, typer.Option(help="Only entries about this target.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the newest N entries.", min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List ledger entries, oldest first."""
    if since:
        since = _normalise_since(since)
    entries = _ctx(ctx).ledger.entries(since=since, action=action, target=target, limit=limit)
    if json_out:
        print_json([e.as_dict() for e in entries])
        return
    console.print(ledger_table(entries))


def ledger_table(entries: Sequence[Entry]) -> FitTable:
    """Ledger entries as a table that fits the terminal: the action and target stay whole; the time
    folds to two lines, then seq, actor and details go first when it is narrow."""
    table = FitTable(Col("seq", 3, wrap=False, justify="right"), Col("time (UTC)", 1, min_width=10),
                     Col("actor", 4, wrap=False), Col("action", 0, wrap=False), Col("target", 0, wrap=False),
                     Col("details", 2, min_width=20))
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items())
        table.add_row(str(e.seq), e.ts[:19].replace("T", " "), e.actor, e.action, e.target, details)
    return table


@app.command("verify")
def verify(
    ctx: typer.Context,
    anchor: Annotated[list[Path] | None, typer.Option(
        "--anchor", metavar="FILE",
        help="Also compare with this copy of the anchor file (e.g. restored from a host-config backup).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the hash chain against its head and every anchor; exit 1 naming the first bad entry."""
    result = _ctx(ctx).verify_ledger(anchor)
    if json_out:
        print_json(result.as_dict())
    else:
        if result.ok:
            console.print(f"ledger intact: {result.entries} entries")
        elif result.first_bad is None or result.reason.startswith("no ledger"):
            error(result.reason)
            if result.reason.startswith("no ledger"):
                err_console.print("  hint: point --state-dir / PVEGUARD_STATE_DIR at the pveguard state directory; "
                                  "if an anchor has seen entries, restore the database from a backup",
                                  markup=False, highlight=False)
        else:
            error(f"ledger damaged at entry {result.first_bad}: {result.reason} "
                  f"({result.entries} entries verified before it)")
        for a in result.anchors:
            detail = f"; {a.detail}" if a.detail else ""
            console.print(f"  anchor {a.name} ({a.where}): {a.verdict or 'not read'}{detail}",
                          markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def _normalise_since(value: str) -> str:
    """Accept an ISO time or a relative age like 6h / 7d; return an ISO UTC timestamp."""
    from datetime import UTC, datetime

    from pveguard.errors import UsageError
    from pveguard.strategy.units import parse_duration

    try:
        return (datetime.now(UTC) - parse_duration(value)).isoformat()
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r} is neither a time nor an age",
                         hint="use e.g. 2026-11-26T10:00:00Z or 6h") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt.astimezone(UTC).isoformat()
