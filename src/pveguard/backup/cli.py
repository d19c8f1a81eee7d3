"""`pveguard backup ...`: schedules and retention for users (next runs, prune simulation).

Mounted by the main CLI as `pveguard backup`; also runnable alone: `python -m pveguard.backup.cli`.
Every command turns bad input into one clear message on stderr and exit code 2.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from pveguard.backup.calendar import local_zone, next_runs, parse
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import PveguardError, UsageError
from pveguard.output import Col, FitTable, console, error, info, print_json, say, warn

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
    try:
        if utc:
            return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return t.astimezone(zone).isoformat()
    except OverflowError:
        return t.isoformat()


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


def _read_input(file: Path | None) -> str | bytes:
    """prune-sim's input: UTF-8 bytes with newlines as text mode gives them (\\r\\n and \\r -> \\n)
    when the file or this process's stdin is UTF-8 text, read in one go without decoding it into a
    str that the fast reader would only encode again; else stdin's own text."""
    if file is None:
        stdin = sys.stdin
        if not isinstance(stdin, io.TextIOWrapper) or stdin is not sys.__stdin__ or os.name != "posix" \
                or stdin.errors != "strict" or codecs.lookup(stdin.encoding).name != "utf-8":
            return stdin.read()  # a replaced stream, or one with its own decoding: as it reads
        data: bytes = stdin.buffer.read()  # POSIX stdin splits lines at \n only: no newline translation
        where = "standard input"
    else:
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"file {file} does not exist", hint="pass a readable file or pipe the list in") from None
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc}") from None
        if b"\r" in data:  # text mode's universal newlines
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        where = str(file)
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"cannot read {where}: {exc}", hint="the list must be UTF-8 text") from None
    return data


def parse_archive_lines(
    lines: Iterable[str], zone: tzinfo, first_number: int = 1
) -> list[tuple[str, datetime, bool, str]]:
    """``TIMESTAMP[ protected]`` or a vzdump archive name per line; blank lines and ``#`` comments
    are skipped. Returns (text, time, protected, group): archive names are grouped per guest as in
    PVE, plain timestamps form one group. ``first_number``: the line number of the first line."""
    from pveguard.backup.archive import parse_archive_name

    out: list[tuple[str, datetime, bool, str]] = []
    for number, raw in enumerate(lines, first_number):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        protected = False
        words = line.rsplit(None, 1)
        if len(words) == 2 and words[1] == "protected":
            line, protected = words[0].rstrip(), True
        archive = parse_archive_name(line.rsplit("/", 1)[-1])
        if archive is not None and archive.local_time is not None:
            # The name holds local wall-clock time; the earlier instant in a repeated DST hour.
            when = archive.local_time.replace(tzinfo=zone, fold=0)
            _check_year(number, line, when, zone)
            out.append((line, when, protected, f"{archive.type}/{archive.vmid}"))
            continue
        if archive is not None:
            raise UsageError(
                f"line {number}: {line!r} is a renamed archive (no standard time in its name); PVE never prunes it",
                hint="leave it out of the list",
            )
        try:
            when = parse_time(line, zone, "timestamp")
        except UsageError as exc:
            raise UsageError(
                f"line {number}: {exc.message}",
                hint="one ISO 8601 timestamp or vzdump archive name per line, optionally followed by "
                "' protected', e.g. '2024-01-31T02:00:00' or 'vzdump-lxc-101-2024_01_31-02_00_00.tar.zst protected'",
            ) from None
        _check_year(number, line, when, zone)
        out.append((line, when, protected, ""))
    return out


def _check_year(number: int, line: str, when: datetime, zone: tzinfo) -> None:
    try:
        in_range = 1900 <= when.astimezone(UTC).year <= 9998 and 1900 <= when.astimezone(zone).year <= 9998
    except (OverflowError, ValueError):
        in_range = False
    if not in_range:
        raise UsageError(f"line {number}: {line!r} is outside the years 1900..9998", hint="check the date")


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

    Input: one ISO 8601 timestamp per line (naive = local time, as in vzdump archive names) or a
    vzdump archive name (grouped per guest, like PVE), optionally followed by ' protected'.
    Hours, days, ISO weeks, months and years are counted in local time ($TZ), as PVE and PBS do.
    """
    policy = KeepPolicy(
        last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
        monthly=keep_monthly, yearly=keep_yearly, keep_all=keep_all,
    )  # fmt: skip
    zone = local_zone()
    from pveguard.backup.prunesim import simulate

    result = simulate(_read_input(file), policy, zone)
    if policy.keeps_everything and not keep_all:
        info("note: no --keep-* option above 0, so everything is kept (as in PVE)")
    if json_out:
        print_json({"policy": str(policy), "archives": list(result.json_rows())})
        return
    result.write(sys.stdout)
    removed = result.removed()
    info(f"{len(result) - removed} kept, {removed} removed ({str(policy) or 'keep everything'})")


# ------------------------------------------------------------------------------------------------
# Shared helpers for commands that act: the main CLI's context when mounted (strategy, state
# directory, ledger), plain defaults when this app runs alone.


def _app_context(ctx: typer.Context) -> Any | None:
    obj = ctx.find_root().obj
    from pveguard.context import AppContext

    return obj if isinstance(obj, AppContext) else None


def _record(ctx: typer.Context, action: str, target: str, **details: Any) -> None:
    app_ctx = _app_context(ctx)
    if app_ctx is not None:
        app_ctx.record(action, target, **details)


def _state_dir(ctx: typer.Context) -> Path:
    from pveguard.store import resolve_state_dir

    app_ctx = _app_context(ctx)
    return Path(app_ctx.state_dir) if app_ctx is not None else resolve_state_dir(None)


def _host_config_settings(ctx: typer.Context) -> Any | None:
    app_ctx = _app_context(ctx)
    return app_ctx.strategy_or_default().backup.host_config if app_ctx is not None else None


hostconfig_app = typer.Typer(
    help="Host-configuration backups with restic (deduplicated, local repository).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(hostconfig_app, name="host-config")

RepoOpt = Annotated[
    str | None, typer.Option("--repo", metavar="DIR", help="restic repository [default: <state-dir>/restic].")
]
PassOpt = Annotated[
    Path | None,
    typer.Option("--password-file", metavar="FILE", help="[default: <state-dir>/restic.pass, created by init]."),
]


def _host_config(ctx: typer.Context, repo: str | None, password_file: Path | None) -> Any:
    from pveguard.backup.hostconfig import HostConfigBackup, Restic
    from pveguard.security.anchors import ANCHOR_FILE

    settings = _host_config_settings(ctx)
    state = _state_dir(ctx)
    repository = repo or (settings.repository if settings is not None and settings.repository else None)
    password = password_file or (
        Path(settings.password_file) if settings is not None and settings.password_file else None
    )
    return HostConfigBackup(
        Restic(
            repository=repository or str(state / "restic"),
            password_file=password or state / "restic.pass",
            cache_dir=state / "restic-cache",
        ),
        # Mounted in pveguard (the only way that records to a ledger), snapshots carry its anchor.
        ledger_anchor=state / ANCHOR_FILE if _app_context(ctx) is not None else None,
    )


@hostconfig_app.command("init")
@_user_errors
def hc_init(ctx: typer.Context, repo: RepoOpt = None, password_file: PassOpt = None) -> None:
    """Create the password file and the repository (an existing one is left alone)."""
    backup = _host_config(ctx, repo, password_file)
    created = backup.init()
    where = backup.restic.repository
    if created:
        _record(ctx, "backup.host-config.init", where, password_file=str(backup.restic.password_file))
        info(f"created restic repository {where}; keep {backup.restic.password_file} safe (and a copy offsite)")
    else:
        info(f"restic repository {where} already exists")


@hostconfig_app.command("run")
@_user_errors
def hc_run(
    ctx: typer.Context,
    paths: Annotated[list[str] | None, typer.Argument(help="Paths [default: the strategy's list].")] = None,
    repo: RepoOpt = None,
    password_file: PassOpt = None,
    retention: Annotated[
        str | None, typer.Option("--retention", help="Forget snapshots older than this, e.g. 30d [strategy].")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Back up the host configuration now, then apply the retention (restic forget --prune)."""
    from pveguard.strategy.units import parse_duration

    settings = _host_config_settings(ctx)
    backup = _host_config(ctx, repo, password_file)
    if not backup.is_initialised():
        backup.init()
    wanted = list(paths or (settings.paths if settings is not None else []))
    if not wanted:
        raise UsageError("no paths to back up", hint="pass paths or set backup.host_config.paths in the strategy")
    try:
        keep_for = parse_duration(retention) if retention else (settings.retention if settings else None)
    except ValueError as exc:
        raise UsageError(f"--retention: {exc}", hint="e.g. 30d or 36h") from None
    result = backup.backup(wanted)
    forgotten = backup.forget(keep_for) if keep_for is not None else None
    _record(
        ctx, "backup.host-config.run", backup.restic.repository, snapshot=result.snapshot_id,
        skipped_missing=list(result.skipped_missing), forgotten=len(forgotten.removed) if forgotten else 0,
    )  # fmt: skip
    if json_out:
        print_json({"snapshot": result.snapshot_id, "backed_up": list(result.backed_up),
                    "skipped_missing": list(result.skipped_missing), "files_new": result.files_new,
                    "files_changed": result.files_changed, "data_added": result.data_added,
                    "incomplete": result.incomplete, "warnings": list(result.warnings),
                    "forgotten": list(forgotten.removed) if forgotten else []})  # fmt: skip
        return
    sys.stdout.write(f"snapshot {result.snapshot_id}: {result.files_new} new, {result.files_changed} changed, "
                     f"{result.data_added} bytes added\n")  # fmt: skip
    if result.skipped_missing:
        info(f"skipped (not present): {', '.join(result.skipped_missing)}")
    for w in result.warnings:
        info(f"warning: {w}")
    if forgotten is not None and forgotten.removed:
        info(f"retention: forgot {len(forgotten.removed)} snapshot(s)")


@hostconfig_app.command("list")
@_user_errors
def hc_list(
    ctx: typer.Context,
    repo: RepoOpt = None,
    password_file: PassOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List host-configuration snapshots, oldest first."""
    snaps = _host_config(ctx, repo, password_file).snapshots()
    if json_out:
        print_json([{"id": s.id, "short_id": s.short_id, "time": s.time.isoformat(), "paths": list(s.paths),
                     "host": s.hostname} for s in snaps])  # fmt: skip
        return
    table = FitTable(Col("snapshot", 0, wrap=False), Col("time (UTC)", 1, min_width=10),
                     Col("paths", 0, min_width=16, words=True))
    for s in snaps:
        table.add_row(s.short_id, f"{s.time.astimezone(UTC):%Y-%m-%d %H:%M:%S}", " ".join(s.paths))
    console.print(table)


@hostconfig_app.command("diff")
@_user_errors
def hc_diff(
    ctx: typer.Context,
    first: Annotated[str, typer.Argument(help="Older snapshot id.")],
    second: Annotated[str, typer.Argument(help="Newer snapshot id.")],
    repo: RepoOpt = None,
    password_file: PassOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What changed between two snapshots: '+' added, '-' removed, 'M' modified, 'T'/'U' type/metadata."""
    entries = _host_config(ctx, repo, password_file).diff(first, second)
    if json_out:
        print_json([{"path": e.path, "change": e.modifier} for e in entries])
        return
    for e in entries:
        sys.stdout.write(f"{e.modifier} {e.path}\n")


@hostconfig_app.command("restore")
@_user_errors
def hc_restore(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id (or 'latest').")],
    target: Annotated[Path, typer.Option("--target", metavar="DIR", help="Empty or new directory to restore into.")],
    path: Annotated[list[str] | None, typer.Option("--path", help="Only this file or directory (repeatable).")] = None,
    repo: RepoOpt = None,
    password_file: PassOpt = None,
) -> None:
    """Restore a snapshot (or some paths of it) into a directory; nothing on the host is overwritten."""
    backup = _host_config(ctx, repo, password_file)
    out = backup.restore(snapshot, target, include=path or ())
    _record(ctx, "backup.host-config.restore", str(out), snapshot=snapshot, paths=list(path or []))
    info(f"restored into {out} (files keep their absolute paths below it)")


@hostconfig_app.command("check")
@_user_errors
def hc_check(
    ctx: typer.Context,
    read_data_subset: Annotated[
        str | None, typer.Option("--read-data-subset", help="Also read this share of the data, e.g. 5%.")
    ] = None,
    repo: RepoOpt = None,
    password_file: PassOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (see docs/json.md).")] = False,
) -> None:
    """restic check of the repository (structure; with --read-data-subset also data). Exit 1 when
    restic finds errors or cannot read the repository."""
    backup = _host_config(ctx, repo, password_file)
    if not json_out:
        sys.stdout.write(backup.check(read_data_subset))
        return
    doc = {"repository": backup.restic.repository, "read_data_subset": read_data_subset}
    try:
        report = backup.check(read_data_subset)
    except PveguardError as exc:
        # A script reads the verdict from the document, as for 'backup verify --json'.
        print_json({**doc, "ok": False, "problems": [exc.message], "report": ""})
        raise typer.Exit(exc.exit_code) from None
    print_json({**doc, "ok": True, "problems": [], "report": report})


@hostconfig_app.command("copy")
@_user_errors
def hc_copy(
    ctx: typer.Context,
    to_repo: Annotated[str, typer.Option("--to-repo", help="Offsite restic repository (path or restic URL).")],
    to_password_file: Annotated[Path, typer.Option("--to-password-file", help="Its password file.")],
    repo: RepoOpt = None,
    password_file: PassOpt = None,
) -> None:
    """Copy snapshots to a second restic repository (restic copy; incremental)."""
    from pveguard.backup.hostconfig import Restic

    backup = _host_config(ctx, repo, password_file)
    copied = backup.copy_to(Restic(to_repo, to_password_file, cache_dir=backup.restic.cache_dir))
    _record(ctx, "backup.host-config.copy", to_repo, snapshots=len(copied))
    info(f"copied {len(copied)} snapshot(s) to {to_repo}")


# ------------------------------------------------------------------------------------------------
# Archives in a dump directory (vzdump naming): verify and prune.

archives_app = typer.Typer(
    help="vzdump-style archives in a dump directory: verify and prune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(archives_app, name="archives")

DirArg = Annotated[Path, typer.Argument(metavar="DUMP_DIR", help="Directory holding vzdump-*.tar.* archives.")]


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory", hint="pass the dump directory, e.g. /var/lib/vz/dump")


@archives_app.command("verify")
@_user_errors
def archives_verify(
    ctx: typer.Context,
    dump_dir: DirArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read every archive: decompression test, tar listing, size and SHA-256 against the catalogue.

    Exit 1 when any archive is bad (each is named). This is pveguard's own check; PVE keeps no
    checksums for file archives.
    """
    from pveguard.backup.verify import verify_directory

    _check_dir(dump_dir)
    results = verify_directory(dump_dir)
    bad = [r for r in results if not r.ok]
    _record(ctx, "backup.archives.verify", str(dump_dir), checked=len(results), bad=[r.filename for r in bad])
    if json_out:
        print_json({"directory": str(dump_dir), "archives": [r.as_dict() for r in results]})
    else:
        table = FitTable(Col("result", 0, wrap=False), Col("archive", 0, wrap=False),
                         Col("bytes", 2, wrap=False, justify="right"), Col("entries", 3, wrap=False, justify="right"),
                         Col("problems", 1, min_width=16))
        for r in results:
            table.add_row("ok" if r.ok else "BAD", r.filename, str(r.size), str(r.entries), "\n".join(r.problems),
                          style=None if r.ok else "red")
        console.print(table)
    if bad:
        error(f"{len(bad)} of {len(results)} archive(s) failed verification: {', '.join(r.filename for r in bad)}")
        raise typer.Exit(1)


@archives_app.command("prune")
@_user_errors
def archives_prune(
    ctx: typer.Context,
    dump_dir: DirArg,
    keep_last: Annotated[int, typer.Option("--keep-last", min=0)] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", min=0)] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily", min=0)] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", min=0)] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", min=0)] = 0,
    keep_yearly: Annotated[int, typer.Option("--keep-yearly", min=0)] = 0,
    guest: Annotated[int | None, typer.Option("--vmid", help="Only this guest's archives.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
) -> None:
    """Prune archives per guest exactly like PVE (protected sentinels honoured, .log/.notes removed too)."""
    import os

    from pveguard.backup.archive import plan_prune

    _check_dir(dump_dir)
    policy = KeepPolicy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                        monthly=keep_monthly, yearly=keep_yearly)  # fmt: skip
    if policy.keeps_everything:
        raise UsageError("no --keep-* option above 0: nothing would be pruned", hint="e.g. --keep-daily 7")
    names = os.listdir(dump_dir)
    mtimes = {n: (dump_dir / n).stat().st_mtime for n in names}
    plan = plan_prune(names, policy, local_zone(), guest=("lxc", guest) if guest else None, mtimes=mtimes)
    for name, mark in sorted(plan.marks.items()):
        sys.stdout.write(f"{mark} {name}\n")
    if dry_run:
        info(f"dry run: would delete {len(plan.delete)} file(s)")
        return
    removed = []
    for name in plan.delete:
        path = dump_dir / name
        # Re-check the sentinel right before deleting: it may have appeared since the listing.
        if (dump_dir / f"{name}.protected").exists():
            info(f"skipped {name}: protected since the listing")
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot delete {path}: {exc.strerror}", hint="run as the owner of the dump directory"
            ) from None
        removed.append(name)
    _record(ctx, "backup.archives.prune", str(dump_dir), policy=str(policy), removed=removed)
    info(f"deleted {len(removed)} file(s)")


@archives_app.command("dump-lxc")
@_user_errors
def archives_dump_lxc(
    ctx: typer.Context,
    dump_dir: DirArg,
    name: Annotated[str, typer.Option("--name", help="LXC container name.")],
    vmid: Annotated[int, typer.Option("--vmid", min=100, max=999999999, help="Guest id for the archive name.")],
    lxcpath: Annotated[Path, typer.Option("--lxcpath", help="LXC path.")] = Path("/var/lib/lxc"),
    mode: Annotated[str, typer.Option("--mode", help="snapshot, suspend or stop [strategy: snapshot].")] = "",
    notes: Annotated[str | None, typer.Option("--notes", help="Text for the .notes file.")] = None,
) -> None:
    """Back up one LXC container into DUMP_DIR as a vzdump-style archive (with .log and .notes)."""
    from pveguard.backup.lxcdump import dump_container

    _check_dir(dump_dir)
    app_ctx = _app_context(ctx)
    if not mode:
        mode = app_ctx.strategy_or_default().backup.containers.mode if app_ctx is not None else "snapshot"
    result = dump_container(name, vmid, dump_dir, lxcpath, mode=mode, notes=notes)
    _record(ctx, "backup.archives.dump", str(result.archive), container=name, mode=result.mode, size=result.size)
    sys.stdout.write(f"{result.archive}\n")
    info(f"{result.size} bytes in {result.seconds:.1f} s ({result.mode} mode)")


@archives_app.command("restore-test")
@_user_errors
def archives_restore_test(
    ctx: typer.Context,
    archive: Annotated[Path, typer.Argument(help="vzdump-lxc-*.tar.* archive.")],
    lxcpath: Annotated[Path, typer.Option("--lxcpath", help="Where the throwaway container lives.")] = Path(
        "/var/lib/pveguard/restore-test"
    ),
    check: Annotated[
        list[str] | None, typer.Option("--check", help="Health-check command word (repeat for each word).")
    ] = None,
) -> None:
    """Restore ARCHIVE into a throwaway container (no network), start it, health-check, destroy it."""
    from pveguard.backup.lxcdump import restore_test

    if not archive.is_file():
        raise UsageError(f"{archive} is not a file", hint="pass the path of a vzdump-lxc archive")
    result = restore_test(archive, lxcpath, check) if check else restore_test(archive, lxcpath)
    _record(ctx, "backup.archives.restore-test", archive.name, ok=result.ok, problems=result.problems)
    if result.ok:
        sys.stdout.write(f"restore test of {archive.name} passed ({result.seconds:.1f} s)\n")
        return
    error(f"restore test of {archive.name} failed: {'; '.join(result.problems)}")
    raise typer.Exit(1)


@archives_app.command("offsite")
@_user_errors
def archives_offsite(
    ctx: typer.Context,
    dump_dir: DirArg,
    to: Annotated[
        str | None, typer.Option("--to", help="sftp://user@host[:port]/path or a directory [strategy offsite].")
    ] = None,
    identity: Annotated[Path | None, typer.Option("--identity", help="SSH private key for SFTP.")] = None,
    known_hosts: Annotated[Path | None, typer.Option("--known-hosts", help="known_hosts with the server key.")] = None,
) -> None:
    """Copy the archives (with .log and .notes) the offsite target lacks; never deletes there."""
    import os

    from pveguard.backup.archive import classify
    from pveguard.backup.offsite import SftpTarget, sync_to_directory, sync_to_sftp

    _check_dir(dump_dir)
    if to is None:
        app_ctx = _app_context(ctx)
        offsite = app_ctx.strategy_or_default().backup.offsite if app_ctx is not None else None
        if offsite is None or offsite.type not in ("sftp", "directory") or not offsite.target:
            raise UsageError("no offsite target", hint="pass --to, or set backup.offsite (type sftp or directory)")
        to = offsite.target if offsite.type == "directory" or offsite.target.startswith("sftp://") else (
            f"sftp://{offsite.target}")  # fmt: skip
    listing = classify(os.listdir(dump_dir))
    names = [a.filename for items in listing.archives.values() for a in items] + [a.filename for a in listing.renamed]
    names += [n for n in listing.companions if not n.endswith(".protected")]
    files = [dump_dir / n for n in sorted(names)]
    if to.startswith("sftp://"):
        result = sync_to_sftp(files, SftpTarget.parse(to, identity_file=identity, known_hosts=known_hosts))
    elif "://" in to:
        raise UsageError(f"unsupported offsite target {to!r}", hint="use sftp://user@host/path or a directory")
    else:
        result = sync_to_directory(files, Path(to))
    _record(ctx, "backup.archives.offsite", to, uploaded=list(result.uploaded))
    for n in result.uploaded:
        sys.stdout.write(f"copied {n}\n")
    info(f"{len(result.uploaded)} copied, {len(result.skipped)} already there")


@archives_app.command("status")
@_user_errors
def archives_status(
    ctx: typer.Context,
    dump_dir: DirArg,
    schedule: Annotated[str | None, typer.Option("--schedule", help="Backup schedule [strategy: daily].")] = None,
    prune_backups: Annotated[
        str | None, typer.Option("--keep", help="Retention as PVE prune-backups, e.g. keep-daily=7 [strategy].")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per guest in DUMP_DIR: newest archive and its age against the schedule, count against the
    retention, last verification (from the catalogue). Exit 1 when any guest is not compliant."""
    import json
    import os

    from pveguard.backup.archive import classify
    from pveguard.backup.compliance import Archive, evaluate
    from pveguard.backup.verify import CATALOGUE_NAME

    _check_dir(dump_dir)
    app_ctx = _app_context(ctx)
    strategy = app_ctx.strategy_or_default() if app_ctx is not None else None
    containers = strategy.backup.containers if strategy is not None else None
    event = parse(schedule or (containers.schedule if containers is not None else "daily"))
    keep = KeepPolicy.parse(prune_backups) if prune_backups is not None else _keep_from(containers)
    verify_event = None
    if strategy is not None and strategy.backup.verification.enabled:
        verify_event = parse(strategy.backup.verification.schedule)
    zone = local_zone()
    names = os.listdir(dump_dir)
    listing = classify(names)
    present = set(names)
    archives: dict[str, list[Archive]] = {}
    for (guest_type, vmid), items in listing.archives.items():
        archives[f"{guest_type}/{vmid}"] = [
            Archive(datetime.fromtimestamp(a.timestamp(zone) or 0, UTC), protected=a.protected_filename in present)
            for a in items
        ]
    verified: dict[str, datetime] = {}
    catalogue = dump_dir / CATALOGUE_NAME
    if catalogue.exists():
        try:
            entries = json.loads(catalogue.read_text(encoding="utf-8")).get("archives", {})
        except (OSError, ValueError):
            entries = {}
        for (guest_type, vmid), items in listing.archives.items():
            checks = [entries.get(a.filename, {}) for a in items]
            times = [c["last_checked"] for c in checks if c.get("last_ok") and c.get("last_checked")]
            if times:
                verified[f"{guest_type}/{vmid}"] = datetime.fromisoformat(max(times).replace("Z", "+00:00"))
    now = datetime.now(UTC)
    statuses = evaluate(archives, archives, event, now, keep=keep, last_verified=verified,
                        verify_schedule=verify_event, zone=zone)  # fmt: skip
    if json_out:
        print_json([
            {"guest": s.guest, "archives": s.archives, "newest": s.newest.isoformat() if s.newest else None,
             "age_seconds": int(s.age.total_seconds()) if s.age else None,
             "last_verified": s.last_verified.isoformat() if s.last_verified else None,
             "compliant": s.compliant, "problems": s.problems}
            for s in statuses
        ])  # fmt: skip
    else:
        console.print(_compliance_table(statuses, {}))
    if any(not s.compliant for s in statuses):
        raise typer.Exit(1)


def _compliance_table(statuses: Iterable[Any], names: dict[str, str]) -> FitTable:
    """One row per guest: verdict, guest (and its name), archives, newest's age, problems (whole, wrapped)."""
    cols = [Col("result", 0, wrap=False), Col("guest", 0, wrap=False)]
    cols += [Col("name", 0, wrap=False)] if names else []
    table = FitTable(*cols, Col("archives", 2, wrap=False, justify="right"), Col("newest", 1, wrap=False),
                     Col("problems", 0, min_width=16))
    for s in statuses:
        age = f"{s.age.days}d {s.age.seconds // 3600}h ago" if s.age else "-"
        cells = [s.guest, *([names[s.guest]] if names else [])]
        table.add_row("ok" if s.compliant else "BAD", *cells, str(s.archives), age, "\n".join(s.problems),
                      style=None if s.compliant else "red")
    return table


def _keep_from(containers: Any | None) -> KeepPolicy:
    from pveguard.backup.coverage import keep_policy

    return keep_policy(containers)


def _proxmox(ctx: typer.Context, command: str) -> tuple[Any, Any]:
    """(strategy, ProxmoxBackend) or a clear error when this is not a PVE target."""
    app_ctx = _app_context(ctx)
    if app_ctx is None:
        raise UsageError(f"'backup {command}' needs the strategy", hint=f"run it as 'pveguard backup {command}'")
    from pveguard.backends import connect
    from pveguard.backends.proxmox import ProxmoxBackend

    strategy = app_ctx.strategy
    backend = connect(strategy)
    if not isinstance(backend, ProxmoxBackend):
        raise UsageError(
            f"'backup {command}' works on Proxmox VE's vzdump jobs, but the backend here is {backend.name}",
            hint="on plain LXC use 'pveguard backup archives dump-lxc' / 'archives status' with a timer",
        )
    return strategy, backend


def _instance(ctx: typer.Context) -> str:
    """This installation's instance id (the one its containers' markers carry)."""
    from pveguard.provision.instance import identity

    app_ctx = _app_context(ctx)
    assert app_ctx is not None  # _proxmox refused already
    return identity(app_ctx.strategy, app_ctx.store, app_ctx.record).id


def _own_containers(backend: Any, instance: str) -> list[int]:
    """This installation's containers (their marker names this instance), as `pveguard plan` finds them:
    another installation's guests carry the same tag but are backed up by that installation's job."""
    from pveguard.errors import OperationError
    from pveguard.provision.observe import observe
    from pveguard.provision.plan import managed_guests

    observed = observe(backend)
    if observed.unreadable:
        gone = ", ".join(f"CT {vmid} ({why})" for vmid, why in sorted(observed.unreadable.items()))
        raise OperationError(f"cannot tell whose containers these are: {gone}",
                             hint="the job would leave them out; run 'pveguard backup apply' again once their "
                                  "node answers")
    return [g.vmid for g in managed_guests(observed, instance) if g.type == "lxc"]


@app.command("apply")
@_user_errors
def apply_jobs(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Converge this installation's vzdump job in /cluster/backup with the strategy's container-backup policy.
    Jobs of the user, of another pveguard installation or of an older pveguard are never changed."""
    from pveguard.backup.jobs import apply_plan, container_job, plan_jobs

    strategy, backend = _proxmox(ctx, "apply")
    try:
        instance = _instance(ctx)
        c = strategy.backup.containers
        vmids = None
        if c.guests == "managed":
            vmids = _own_containers(backend, instance)
        job = container_job(c.schedule, c.storage, _keep_from(c), vmids, c.mode, c.compress, c.notes_template,
                            instance=instance)
        plan = plan_jobs([job], backend.call("GET", "/cluster/backup", what="reading the vzdump jobs"), instance)
        if json_out:
            print_json({"changes": [{"action": ch.action, "id": ch.id, "params": ch.params, "delete": list(ch.delete)}
                                    for ch in plan.changes], "unmanaged_jobs": list(plan.unmanaged),
                        "foreign_jobs": plan.foreign, "legacy_jobs": list(plan.legacy), "instance": instance,
                        "dry_run": dry_run})  # fmt: skip
        else:
            for ch in plan.changes:
                sys.stdout.write(ch.describe() + "\n")
            if plan.empty:
                sys.stdout.write("backup jobs match the policy; nothing to do\n")
            if plan.unmanaged:
                info(f"left alone (not managed by pveguard): {', '.join(plan.unmanaged)}")
            for jid, owner in plan.foreign.items():
                info(f"left alone: {jid} (owned by another pveguard instance {owner})")
            if plan.legacy:
                # after an upgrade the old job still runs next to this instance's: say what to do about it
                warn(f"left alone (made by an older pveguard, no instance id): {', '.join(plan.legacy)}; they still "
                     "run: 'pveguard backup adopt JOBID' makes one this installation's (apply then replaces or "
                     "removes it), or delete it in PVE")
        if dry_run or plan.empty:
            return
        apply_plan(backend, plan, lambda action, target, **d: _record(ctx, action, target, **d))
    finally:
        backend.close()


@app.command("adopt")
@_user_errors
def adopt_job_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOBID", help="The vzdump job to make this installation's.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Make an existing vzdump job this installation's: its comment's marker names this instance (recorded).
    From then on 'backup apply' updates it, or deletes it when the policy does not want it."""
    from pveguard.backup.jobs import adopt_job, job_adoption, job_id_for

    _strategy, backend = _proxmox(ctx, "adopt")
    try:
        instance = _instance(ctx)
        a = job_adoption(backend.call("GET", "/cluster/backup", what="reading the vzdump jobs"), job_id, instance)
        if not a.needed:
            sys.stdout.write(f"vzdump job {job_id} is already this installation's (instance {instance}); "
                             "nothing to do\n")
            return
        sys.stdout.write(f"adopt vzdump job {job_id}: now {a.previous}; its comment becomes {a.after!r}\n")
        if a.previous.startswith("instance "):
            warn(f"job {job_id} belongs to another pveguard {a.previous}; that installation will no longer "
                 "manage it")
        if job_id != job_id_for(instance):
            warn(f"once adopted, 'pveguard backup apply' deletes {job_id}: this installation's policy job is "
                 f"{job_id_for(instance)}")
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"adopting vzdump job {job_id} needs confirmation",
                                 hint="run it in a terminal to confirm, or pass --yes")
            if not typer.confirm("Adopt it?", default=False):
                raise UsageError("nothing adopted")
        adopt_job(backend, a, lambda action, target, **d: _record(ctx, action, target, **d), instance)
    finally:
        backend.close()
    sys.stdout.write(f"adopted vzdump job {job_id} as instance {instance}; "
                     "'pveguard backup apply --dry-run' shows what apply would change\n")


@app.command("status")
@_user_errors
def backup_status(
    ctx: typer.Context,
    dump_dir: Annotated[
        Path | None, typer.Option("--dump-dir", help="Plain LXC: the archives [default: <state-dir>/dump].")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per guest: the last backup's age against the schedule, archive count against the retention,
    guests in no backup job (Proxmox VE), last verification and offsite copy (plain LXC).
    Exit 1 when a guest is not compliant. The same verdicts become findings in 'pveguard audit'."""
    from pveguard.backends import connect
    from pveguard.backup.coverage import collect
    from pveguard.provision.instance import known_instance

    app_ctx = _app_context(ctx)
    if app_ctx is None:
        raise UsageError("'backup status' needs the strategy", hint="run it as 'pveguard backup status'")
    strategy = app_ctx.strategy
    backend = connect(strategy)
    try:
        # this installation's containers only: another's carry the same tag (provision/instance.py)
        coverage = collect(strategy, backend, _state_dir(ctx), dump_dir,
                           instance=known_instance(strategy, _state_dir(ctx)))
    finally:
        backend.close()
    if json_out:
        print_json(coverage.rows())
    else:
        if not coverage.statuses:
            info("no guests to report on (no managed containers)")
        else:
            console.print(_compliance_table(coverage.statuses, coverage.names))
    if not coverage.compliant:
        raise typer.Exit(1)


@app.command("run")
@_user_errors
def run_cmd(
    ctx: typer.Context,
    due: Annotated[bool, typer.Option("--due", help="Only the steps whose schedule says so (for a timer).")] = False,
    dump_dir: Annotated[
        Path | None, typer.Option("--dump-dir", help="Container archives (LXC) [default: <state-dir>/dump].")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the backup policy: host-config backup + retention, container archives + prune (plain LXC),
    verification, offsite copies. Every step runs even if another fails; exit 1 if any failed."""
    from pveguard.backends import connect
    from pveguard.backup.run import run_backups

    app_ctx = _app_context(ctx)
    if app_ctx is None:
        raise UsageError("'backup run' needs the strategy", hint="run it as 'pveguard backup run'")
    strategy = app_ctx.strategy
    try:
        backend = connect(strategy)
    except PveguardError as exc:
        info(f"no container backend ({exc.message}); only host-config, verification and offsite run")
        backend = None
    report = run_backups(strategy, _host_config(ctx, None, None), backend, dump_dir or _state_dir(ctx) / "dump",
                         due, markers=_state_dir(ctx), record=lambda *a, **k: _record(ctx, *a, **k))  # fmt: skip
    if json_out:
        print_json({"ok": report.ok, "steps": [s.__dict__ for s in report.steps]})
    else:
        table = FitTable(Col("step", 0, wrap=False), Col("status", 0, wrap=False), Col("detail", 0, min_width=20))
        for s in report.steps:
            table.add_row(s.step, s.status, s.detail, style="red" if s.status == "failed" else None)
        console.print(table)
    if not report.ok:
        raise typer.Exit(1)


@app.command("verify")
@_user_errors
def verify_cmd(
    ctx: typer.Context,
    restore_test: Annotated[
        bool,
        typer.Option("--restore-test", help="Also restore the newest archive per guest into a throwaway container."),
    ] = False,
    dump_dir: Annotated[Path | None, typer.Option("--dump-dir", help="[default: <state-dir>/dump].")] = None,
    read_data_subset: Annotated[
        str | None, typer.Option("--read-data-subset", help="restic check data share [strategy: 5%].")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (see docs/json.md).")] = False,
) -> None:
    """Verify the archives (decompression, tar, SHA-256 catalogue), restic check the host-config
    repository, optionally test-restore. Exit 1 naming what failed; results go to the ledger."""
    from pveguard.backup.run import VERIFY_MARKER, _Failed, _write_time, verify_all
    from pveguard.output import iso_utc

    app_ctx = _app_context(ctx)
    subset = read_data_subset
    if subset is None and app_ctx is not None:
        subset = app_ctx.strategy_or_default().backup.verification.restic_read_data_subset or None
    state = _state_dir(ctx)
    try:
        detail = verify_all(_host_config(ctx, None, None), dump_dir or state / "dump", subset,
                            state / "restore-test" if restore_test else None,
                            lambda *a, **k: _record(ctx, *a, **k))  # fmt: skip
    except _Failed as exc:
        if not json_out:
            raise
        print_json({"ok": False, "summary": "", "problems": [exc.message], "verified_at": None})
        raise typer.Exit(exc.exit_code) from None
    # Only a passed verification counts for 'backup status' and the audit (verify_all raised otherwise).
    now = datetime.now(UTC)
    _write_time(state / VERIFY_MARKER, now)
    if json_out:
        print_json({"ok": True, "summary": detail, "problems": [], "verified_at": iso_utc(now)})
    else:
        say(detail, hang=2)


@app.command("install-timers")
@_user_errors
def install_timers(
    ctx: typer.Context,
    unit_dir: Annotated[Path, typer.Option("--unit-dir", help="Where to write the units.")] = Path(
        "/etc/systemd/system"
    ),
    pveguard_bin: Annotated[
        str | None, typer.Option("--pveguard", help="Path of the pveguard command [default: found in PATH].")
    ] = None,
) -> None:
    """Write a systemd timer that runs 'pveguard backup run --due' at every time of the strategy's
    backup schedules (one OnCalendar= per schedule, exactly the PVE calendar events). The service
    loads the strategy's secret files as credentials; it never holds a secret itself."""
    import os

    from pveguard.backup.timers import find_command, install_units, render_units, unit_settings
    from pveguard.strategy.models import Strategy

    app_ctx = _app_context(ctx)
    strategy = app_ctx.strategy_or_default() if app_ctx is not None else Strategy()
    b = strategy.backup
    schedules = [b.host_config.schedule, b.containers.schedule]
    if b.verification.enabled:
        schedules.append(b.verification.schedule)
    if b.offsite.type != "none":
        schedules.append(b.offsite.schedule)
    command = find_command(pveguard_bin)
    if app_ctx is not None:
        command += ["--strategy", str(Path(app_ctx.strategy_path).absolute()),
                    "--state-dir", str(Path(app_ctx.state_dir).absolute())]
    units = [
        render_units("pveguard-backup", [parse(s) for s in schedules], [*command, "backup", "run", "--due"],
                     "pveguard backups", settings=unit_settings(strategy, os.environ)),
    ]  # fmt: skip
    written = install_units(units, unit_dir)
    _record(ctx, "backup.install-timers", str(unit_dir), files=[str(p) for p in written])
    for p in written:
        sys.stdout.write(f"wrote {p}\n")
    info("enable with: systemctl daemon-reload && systemctl enable --now pveguard-backup.timer")


if __name__ == "__main__":  # pragma: no cover
    app()
