"""`pveguard backup ...`: schedules and retention for users (next runs, prune simulation).

Mounted by the main CLI as `pveguard backup`; also runnable alone: `python -m pveguard.backup.cli`.
Every command turns bad input into one clear message on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from pveguard.backup.calendar import local_zone, next_runs, parse
from pveguard.backup.retention import KeepPolicy, Mark, explain_archives
from pveguard.errors import PveguardError, UsageError
from pveguard.output import error, info, print_json

app = typer.Typer(
    help="Backup schedules and retention: PVE calendar events and keep-* rules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)

P = ParamSpec("P")
R = TypeVar("R")


def _user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Report PveguardError as message + hint and exit with its code (no traceback)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PveguardError as exc:
            error(exc.message)
            if exc.hint:
                info(f"  hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def parse_time(text: str, zone: tzinfo, what: str = "time") -> datetime:
    """ISO 8601 (``2021-03-04T05:06:00Z``, ``2021-03-04 05:06``, ``2021-03-04``); naive = ``zone``."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"cannot read {what} {text!r} as ISO 8601",
            hint="write e.g. 2021-03-04T05:06:00Z, 2021-03-04T05:06:00+01:00 or 2021-03-04 05:06 (local time)",
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value


def _format(t: datetime, utc: bool, zone: tzinfo) -> str:
    if utc:
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return t.astimezone(zone).isoformat()


@app.command("next-runs")
@_user_errors
def next_runs_cmd(
    expr: Annotated[str, typer.Argument(metavar="EXPR", help="PVE calendar event, e.g. 'mon..fri 21:00'.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=100000, help="How many runs.")] = 5,
    after: Annotated[str | None, typer.Option("--after", metavar="TIME", help="ISO 8601 start (default: now).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the next run times strictly after TIME, one ISO 8601 timestamp per line.

    Local time unless EXPR ends in UTC (then times are printed in UTC, with a Z).
    """
    event = parse(expr)
    zone = local_zone()
    start = parse_time(after, zone, "--after") if after is not None else datetime.now(UTC).replace(microsecond=0)
    runs = next_runs(event, start, count, zone=zone)
    lines = [_format(t, event.utc, zone) for t in runs]
    if json_out:
        print_json(
            {
                "expression": expr,
                "normalized": event.normalized(),
                "utc": event.utc,
                "after": _format(start, event.utc, zone),
                "runs": lines,
            }
        )
        return
    for line in lines:
        sys.stdout.write(line + "\n")
    if len(runs) < count:
        info(f"no further runs of {expr!r} after {lines[-1] if lines else _format(start, event.utc, zone)}")


def _read_lines(file: Path | None) -> Iterable[str]:
    if file is None:
        return sys.stdin.read().splitlines()
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"file {file} does not exist", hint="pass a readable file or pipe the list in") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None


def parse_archive_lines(lines: Iterable[str], zone: tzinfo) -> list[tuple[str, datetime, bool]]:
    """``TIMESTAMP[ protected]`` per line; blank lines and ``#`` comments are skipped."""
    out: list[tuple[str, datetime, bool]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        protected = False
        words = line.rsplit(None, 1)
        if len(words) == 2 and words[1] == "protected":
            line, protected = words[0].rstrip(), True
        try:
            when = parse_time(line, zone, "timestamp")
        except UsageError as exc:
            raise UsageError(
                f"line {number}: {exc.message}",
                hint="one ISO 8601 timestamp per line, optionally followed by ' protected', "
                "e.g. '2024-01-31T02:00:00' or '2024-01-31T02:00:00Z protected'",
            ) from None
        out.append((line, when, protected))
    return out


@app.command("prune-sim")
@_user_errors
def prune_sim(
    keep_last: Annotated[int, typer.Option("--keep-last", min=0, help="Keep the N newest.")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", min=0, help="Newest per hour, N hours.")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily", min=0, help="Newest per day, N days.")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", min=0, help="Newest per ISO week.")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", min=0, help="Newest per month.")] = 0,
    keep_yearly: Annotated[int, typer.Option("--keep-yearly", min=0, help="Newest per year.")] = 0,
    keep_all: Annotated[bool, typer.Option("--keep-all", help="Keep everything.")] = False,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", metavar="F", help="Read timestamps from F (default: stdin).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (with the rule that kept each).")] = False,
) -> None:
    """Show what PVE's prune would do: `keep|remove|protected <timestamp>` per input line, in order.

    Input: one ISO 8601 timestamp per line (naive = local time, as in vzdump archive names),
    optionally followed by ' protected'. Hours, days, ISO weeks, months and years are counted
    in local time ($TZ), exactly as PVE and PBS do.
    """
    policy = KeepPolicy(
        last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
        monthly=keep_monthly, yearly=keep_yearly, keep_all=keep_all,
    )  # fmt: skip
    zone = local_zone()
    archives = parse_archive_lines(_read_lines(file), zone)
    if policy.keeps_everything and not keep_all:
        info("note: no --keep-* option above 0, so everything is kept (as in PVE)")
    stamps = [int(when.timestamp()) for _, when, _ in archives]
    explained = explain_archives(stamps, policy, [p for _, _, p in archives], zone)
    if json_out:
        print_json(
            {
                "policy": str(policy),
                "archives": [
                    {"timestamp": text, "mark": str(mark), "rule": rule}
                    for (text, _, _), (mark, rule) in zip(archives, explained, strict=True)
                ],
            }
        )
        return
    for (text, _, _), (mark, _) in zip(archives, explained, strict=True):
        sys.stdout.write(f"{mark} {text}\n")
    removed = sum(1 for mark, _ in explained if mark is Mark.REMOVE)
    info(f"{len(archives) - removed} kept, {removed} removed ({str(policy) or 'keep everything'})")


if __name__ == "__main__":  # pragma: no cover
    app()
