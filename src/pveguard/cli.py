"""The `pveguard` command line: global options, command groups, one place for error handling.

Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 refused by policy.
"""

from __future__ import annotations

import hashlib
import os
import sys
import typing
from typing import Annotated, Any

import typer

from pveguard import __version__, doctor
from pveguard.audit import cli as audit_cli
from pveguard.backup import cli as backup_cli
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, EXIT_USAGE, PveguardError, UsageError
from pveguard.guard import cli as guard_cli
from pveguard.migrate import cli as migrate_cli
from pveguard.monitor import cli as monitor_cli
from pveguard.output import console, error, print_json, warn
from pveguard.provision import cli as provision_cli
from pveguard.recover import cli as recover_cli
from pveguard.recover import scale_cli
from pveguard.security import certs_cli, isolation_cli, tokens_cli
from pveguard.security import cli as audit_log_cli
from pveguard.serve import cli as serve_cli
from pveguard.updates import cli as updates_cli

app = typer.Typer(
    name="pveguard",
    help="Container-first guardrails for Proxmox VE hosts: audit -> plan -> apply -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,  # --install-completion / --show-completion [bash|zsh|fish|powershell]
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape, see docs/json.md).")]


def _version(value: bool) -> None:
    if value:
        console.print(f"pveguard {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    strategy: Annotated[str | None, typer.Option(
        "--strategy", envvar="PVEGUARD_STRATEGY", metavar="PATH",
        help="Strategy file [default: /etc/pveguard/strategy.yaml].")] = None,
    state_dir: Annotated[str | None, typer.Option(
        "--state-dir", envvar="PVEGUARD_STATE_DIR", metavar="DIR",
        help="State directory (SQLite database, caches) [default: /var/lib/pveguard].")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail, tracebacks for bugs.")] = False,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Global options go before the command: pveguard --strategy s.yaml --state-dir st init."""
    ctx.obj = AppContext.from_options(strategy, state_dir, verbose)
    ctx.call_on_close(ctx.obj.close)
    # `init` creates the file; `apt-hook` reads the installed policy, never the strategy.
    if ctx.invoked_subcommand not in ("init", "apt-hook"):
        ctx.obj.require_named_strategy()


def get_ctx(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


@app.command()
def init(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing strategy file.")] = False,
) -> None:
    """Write the default strategy as a commented YAML file."""
    from pveguard.provision.instance import instance_for_init
    from pveguard.strategy.defaults import render
    from pveguard.strategy.models import Strategy, Target

    app_ctx = get_ctx(ctx)
    path = app_ctx.strategy_path
    before = None
    if path.exists():
        if not force:
            raise UsageError(f"{path} already exists", hint="use 'pveguard init --force' to overwrite it")
        before = hashlib.sha256(path.read_bytes()).hexdigest()
    # the installation's identity (see provision/instance.py): the state's, or a new one kept there
    # (a state directory that cannot be used fails here, before anything is written)
    instance = instance_for_init(app_ctx.store)
    text = render(Strategy(target=Target(instance=instance)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        # The strategy is policy: 0600 whatever the umask (fchmod also fixes a leftover .tmp).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}",
                         hint="run as root or choose another path with --strategy") from None
    app_ctx.record("strategy.init", str(path), before_sha256=before,
                   after_sha256=hashlib.sha256(text.encode()).hexdigest(), instance=instance)
    console.print(f"wrote the default strategy to {path}")


@app.command()
def check(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Validate the strategy file; report every error as FILE:LINE:COL: field: message."""
    from pveguard.output import info as info_line
    from pveguard.strategy import enforcement
    from pveguard.strategy.enforcement import NOT_ENFORCED
    from pveguard.strategy.load import StrategyInvalid, check_text, read_text

    app_ctx = get_ctx(ctx)
    path = app_ctx.strategy_path
    try:
        strategy, problems = check_text(read_text(path), str(path))
    except StrategyInvalid as exc:  # too large or not UTF-8: reported like any other problem
        strategy, problems = None, exc.problems
    if strategy is not None:
        from pveguard.backends.proxmox import feature_credential_warnings
        from pveguard.provision.instance import pin_warning
        from pveguard.strategy.load import Problem

        unpinned = pin_warning(strategy, app_ctx.state_dir)
        if unpinned:
            problems.append(Problem(str(path), 0, 0, "target.instance", unpinned, "warning"))
        # what the strategy asks and the PVE credentials may not do
        problems += [Problem(str(path), 0, 0, fld, msg, "warning")
                     for fld, msg in feature_credential_warnings(strategy, os.environ)]
    if json_out:
        print_json({"file": str(path), "valid": strategy is not None,
                    "problems": [p.__dict__ for p in problems],
                    "not_enforced": [{"key": k, "issue": n} for k, n in NOT_ENFORCED.items()]})
    else:
        for p in problems:
            (warn if p.severity == "warning" else error)(p.text())
        if strategy is not None:
            console.print(f"{path}: ok ({len(strategy.containers)} containers)")
            idle = enforcement.at_default(strategy)
            if idle:
                info_line(f"note: left at their defaults, but not enforced yet: "
                          f"{', '.join(f'{k} (issue #{NOT_ENFORCED[k]})' for k in idle)}")
    if strategy is None:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def info(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the loaded strategy and what pveguard sees on this machine."""
    from pveguard.hostinfo import describe, render_info

    app_ctx = get_ctx(ctx)
    data = describe(app_ctx)
    if json_out:
        print_json(data)
    else:
        render_info(data)


# The rest of the commands, in the order of the admin's loop (typer lists them as registered):
# audit -> plan -> apply -> status; the guard; backups; monitoring; the ledger.
app.command("audit")(audit_cli.audit)
app.command("plan")(provision_cli.plan_cmd)
app.command("apply")(provision_cli.apply_cmd)
app.command("status")(provision_cli.status_cmd)
app.command("adopt")(provision_cli.adopt_cmd)
app.command("doctor")(doctor.doctor_cmd)
app.add_typer(isolation_cli.app, name="isolation")
guard_cli.register(app)
app.add_typer(backup_cli.app, name="backup")
app.add_typer(monitor_cli.monitor_app, name="monitor")
app.add_typer(monitor_cli.alerts_app, name="alerts")
app.add_typer(monitor_cli.export_app, name="export")
app.add_typer(recover_cli.app, name="recover")
app.command("maintenance")(recover_cli.maintenance_cmd)
app.command("scale")(scale_cli.scale_cmd)
app.command("rca")(scale_cli.rca_cmd)
app.command("update")(updates_cli.update_cmd)
app.command("update-timer")(updates_cli.update_timer_cmd)
app.add_typer(audit_log_cli.app, name="audit-log")
app.add_typer(certs_cli.app, name="certs")
app.add_typer(tokens_cli.app, name="tokens")
serve_cli.register(app)
app.add_typer(migrate_cli.app, name="migrate")


def command() -> Any:
    """The click command behind `app`, with every value placeholder in --help named as a word."""
    cmd = typer.main.get_command(app)
    _name_placeholders(cmd)
    return cmd


_COMPLETION_PARAMS = {"install_completion", "show_completion"}


def _name_placeholders(cmd: Any) -> None:
    """Give each parameter without a metavar one that reads as a word (REASON, DIR, N) instead of
    the type typer shows (<str>, <int range>, <path>); arguments then show only their word."""
    from typer.core import TyperArgument, TyperOption

    for param in cmd.params:
        if param.name in _COMPLETION_PARAMS or (isinstance(param, TyperOption) and (param.is_flag or param.count)):
            continue
        if param.metavar is None:
            param.metavar = _placeholder(param)
        if isinstance(param, TyperArgument):
            # The word is the placeholder: no "<str>" after it (typer adds the type to arguments).
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    for sub in getattr(cmd, "commands", {}).values():
        _name_placeholders(sub)


def _placeholder(param: Any) -> str:
    longest = max(getattr(param, "opts", None) or [param.name or "value"], key=len)
    word = longest.lstrip("-").replace("-", "_").upper()
    desc = param.type_descriptor
    annotation = desc.annotation
    if desc.is_list:
        annotation = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if annotation in (int, float) and not (word.endswith("ID") or word == "COUNT"):
        return "N" if annotation is int else "NUMBER"
    if desc.is_path:
        return "DIR" if word.endswith("DIR") else ("FILE" if "FILE" in word else word if word.endswith("PATH")
                                                   else "PATH")
    return str(word)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors become one clear message and an exit code, never a traceback."""
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
    try:
        return command()(args=argv, standalone_mode=True, prog_name="pveguard")
    except PveguardError as exc:
        error(exc.message)
        if exc.hint:
            _hint(exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # a bug: say so plainly, show the traceback only on request
        if verbose:
            raise
        error(f"internal error (this is a bug in pveguard): {type(exc).__name__}: {exc}")
        _hint("re-run with --verbose for the traceback and report it")
        sys.exit(EXIT_FAILED)


def _hint(text: str) -> None:
    from pveguard.output import err_console

    err_console.print(f"  hint: {text}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
