"""The `pveguard` command line: global options, command groups, one place for error handling.

Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 refused by policy.
"""

from __future__ import annotations

import hashlib
import os
import sys
import typing
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.shell_completion import CompletionItem
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_path
from typer.core import TyperGroup

from pveguard.errors import EXIT_FAILED, EXIT_USAGE, PveguardError, UsageError

if typing.TYPE_CHECKING:
    from pveguard.context import AppContext

# Commands are imported when they run (or --help of theirs is asked): `pveguard --help`, shell
# completion and `check` do not load every subcommand, pydantic and the PVE client. One line per
# command: name -> "module:attribute" (a function, or a typer.Typer for a group) and the first
# paragraph of its help, which --help and completion show without importing it
# (tests/foundation/test_cli_lazy.py checks it against the loaded command). In --help order:
# typer lists commands before groups.
LAZY: dict[str, tuple[str, str, dict[str, Any]]] = {}
_ARGV: list[str] | None = None  # the words after `pveguard` (main), for pveguard.invocation


def lazy(name: str, target: str, help: str, **settings: Any) -> None:
    """Register `pveguard NAME` (``settings``: what app.command()/add_typer() take, e.g. hidden)."""
    LAZY[name] = (target, help, settings)


class LazyGroup(TyperGroup):
    """The root command: registered commands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(name for name in LAZY if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in LAZY:
            self.commands[cmd_name] = _load(cmd_name)
        cmd: Any = self.commands.get(cmd_name)
        if cmd is not None and ctx is not None and not getattr(cmd, "_plain_help", False):
            cmd._plain_help = True
            _plain_coercion(cmd, ctx)  # their --help options too
        return cmd

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _plain_params(params)
        return params

    def _short_help(self, name: str, limit: int) -> str | None:
        """The listing's help of NAME (None: hidden), without importing a lazy command."""
        from typer._click.utils import make_default_short_help

        if name in self.commands:
            cmd = self.commands[name]
            return None if cmd.hidden else cmd.get_short_help_str(limit)
        _, text, settings = LAZY[name]
        return None if settings.get("hidden") else make_default_short_help(text, limit)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        names = [n for n in self.list_commands(ctx) if self._short_help(n, 45) is not None]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        with formatter.section("Commands"):
            formatter.write_dl([(n, self._short_help(n, limit) or "") for n in names])

    def invoke(self, ctx: Any) -> Any:
        """Every command: a Ctrl-C says what the command was doing and what it changed or left
        (pveguard.invocation, from the ledger entries this run wrote), exit 130; not click's "Aborted."."""
        from typer import Abort

        from pveguard import invocation

        invocation.begin(_ARGV)  # the lock file and the Ctrl-C message name the command
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted(at_prompt=False)
        except Abort as exc:  # a question (confirm/prompt) turns Ctrl-C into Abort; a closed stdin too
            if not isinstance(exc.__context__, KeyboardInterrupt):
                raise
            _interrupted(at_prompt=True)
        raise typer.Exit(130)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[CompletionItem]:
        results = []
        for name in self.list_commands(ctx):
            if name.startswith(incomplete):
                text = self._short_help(name, 45)
                if text is not None:
                    results.append(CompletionItem(name, help=text))
        results.extend(super(TyperGroup, self).shell_complete(ctx, incomplete))
        return results


def _load(name: str) -> Any:
    """The click command of a lazy registration, as app.command()/add_typer() would have made it."""
    target, _, settings = LAZY[name]
    module, _, attr = target.partition(":")
    obj = getattr(import_module(module), attr)
    holder = typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None, add_completion=False)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name, **settings)
    else:
        holder.command(name, **settings)(obj)
    cmd = typer.main.get_group(holder).commands[name]
    _name_placeholders(cmd)
    _plain_coercion(cmd)
    return cmd


# typer 0.29 turns every option value into its Python type through a pydantic TypeAdapter, built on
# first use: resolving `--strategy` (even when it is not given) imports pydantic, ~60-80 ms that
# shell completion and `backup prune-sim` do not otherwise need. For the plain cases below the
# result is computed here exactly as that adapter would (tests/foundation/test_cli_lazy.py compares
# both on many values); anything else -- a non-digit int, a bound not met, bytes -- goes to
# typer's own adapter, so its values and error messages are unchanged.
_NOT_PLAIN = object()


def _plain_value(desc: TypeDescriptor, value: Any) -> Any:
    """``value`` as typer's adapter for ``desc`` returns it, or _NOT_PLAIN to ask the adapter."""
    info = desc.parameter_info
    if info.parser is not None:
        return _NOT_PLAIN
    annotation = desc.annotation
    if annotation is bool:
        return value if type(value) is bool else _NOT_PLAIN
    if annotation is str:
        return value if type(value) is str else _NOT_PLAIN  # typer's str adapter: str(value)
    if annotation is int and not info.clamp:
        if type(value) is int:  # a default
            number = value
        elif type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18:
            number = int(value)
        else:
            return _NOT_PLAIN
        if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            return _NOT_PLAIN  # the adapter says why
        return number
    return _NOT_PLAIN


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """A parameter's coercion: the plain cases here, the rest through typer's adapter."""

    descriptor: TypeDescriptor | None = None

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        assert self.descriptor is not None
        desc = self.descriptor
        if desc.annotation is Path and desc.parameter_info.path_type is None and type(value) is str \
                and "\0" not in value:
            # typer's path adapter: pydantic's str -> Path, then the same checks (exists, ...)
            return coerce_cli_path(Path(value), desc.parameter_info, path_type=Path, param=param, ctx=ctx)
        plain = _plain_value(desc, value)
        if plain is not _NOT_PLAIN:
            return plain
        return build_runtime_param(desc)._coerce_value(value, param=param, ctx=ctx)


def _plain_params(params: Any) -> None:
    for param in params:
        desc = getattr(param, "type_descriptor", None)
        if desc is None or getattr(param, "_runtime_param", None) is not None or param.multiple \
                or param.nargs != 1 or desc.file_annotation is not None:
            continue
        if desc.annotation in (str, int, bool, Path) and desc.parameter_info.parser is None:
            param._runtime_param = _PlainRuntimeParam(parameter_info=desc.parameter_info,
                                                      annotation=desc.annotation, descriptor=desc)


def _plain_coercion(cmd: Any, ctx: Any = None) -> None:
    """Give the single-value str, int, bool and Path parameters of ``cmd`` and its subcommands
    (with ``ctx``: their --help options too) the plain coercion above."""
    params = list(getattr(cmd, "params", ()))
    if ctx is not None and getattr(cmd, "get_help_option", None) is not None:
        params.append(cmd.get_help_option(ctx))
    _plain_params(p for p in params if p is not None)
    for sub in getattr(cmd, "commands", {}).values():
        _plain_coercion(sub, ctx)


app = typer.Typer(
    cls=LazyGroup,
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
        from pveguard import __version__
        from pveguard.output import console

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
    from pveguard.context import AppContext

    ctx.obj = AppContext.from_options(strategy, state_dir, verbose)
    ctx.call_on_close(ctx.obj.close)
    # `init` creates the file; `apt-hook` reads the installed policy, never the strategy.
    if ctx.invoked_subcommand not in ("init", "apt-hook"):
        ctx.obj.require_named_strategy()


def get_ctx(ctx: typer.Context) -> AppContext:
    from pveguard.context import AppContext

    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


@app.command()
def init(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing strategy file.")] = False,
) -> None:
    """Write the default strategy as a commented YAML file."""
    from pveguard.output import console
    from pveguard.provision.instance import instance_for_init
    from pveguard.strategy.defaults import render
    from pveguard.strategy.models import Strategy, Target

    app_ctx = get_ctx(ctx)
    path = app_ctx.strategy_path
    before = None
    if path.exists():
        # The Debian package ships the default strategy unpinned (a conffile, the same on every host):
        # replacing that pristine copy with a pinned one loses nothing, so it needs no --force.
        if not force and path.read_bytes() != render(Strategy()).encode():
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
    from pveguard.output import console, error, print_json, warn
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
        from pveguard.backends import choose
        from pveguard.provision.instance import pin_warning
        from pveguard.strategy.load import Problem

        unpinned = pin_warning(strategy, app_ctx.state_dir)
        if unpinned:
            problems.append(Problem(str(path), 0, 0, "target.instance", unpinned, "warning"))
        # what the strategy asks and the PVE credentials may not do (the PVE client is loaded
        # only when the target is PVE)
        try:
            on_pve = choose(strategy, os.environ) == "proxmox"
        except PveguardError:
            on_pve = False  # reported by the commands that connect
        if on_pve:
            from pveguard.backends.proxmox import feature_credential_warnings

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
    from pveguard.output import print_json

    app_ctx = get_ctx(ctx)
    data = describe(app_ctx)
    if json_out:
        print_json(data)
    else:
        render_info(data)


# The rest of the commands, in the order of the admin's loop: audit -> plan -> apply -> status;
# the guard; backups; monitoring; the ledger (commands first, then groups, as typer lists them).
lazy("audit", "pveguard.audit.cli:audit",
     "Inventory this host, classify every service and package, suggest containers, score compliance.")
lazy("plan", "pveguard.provision.cli:plan_cmd",
     "Show what apply would do: creates, updates (field: old -> new), unchanged, deletes (--prune).")
lazy("apply", "pveguard.provision.cli:apply_cmd",
     "Carry out the plan: create, converge and (with --prune) delete this installation's containers.")
lazy("status", "pveguard.provision.cli:status_cmd",
     "Managed containers: node, state, configured vs used resources; backend capabilities.")
lazy("adopt", "pveguard.provision.cli:adopt_cmd",
     "Make an existing container this installation's: its marker names this instance (recorded).")
lazy("doctor", "pveguard.doctor:doctor_cmd",
     "Run every preflight (strategy, state, guard, backend: TLS, privileges, storages, templates,\n"
     "bridges, VMIDs, LXC includes...) and print one line per check with its fix; exit 1 if one fails.")
lazy("apt-hook", "pveguard.guard.cli:apt_hook",
     "What apt runs (DPkg::Pre-Install-Pkgs, protocol v3 on $APT_HOOK_INFO_FD). Not for people.", hidden=False)
lazy("approve", "pveguard.guard.cli:approve",
     "Approve a non-core package (or removing/downgrading a core one) on the host.")
lazy("approvals", "pveguard.guard.cli:approvals_list", "List active approvals (or all of them).")
lazy("revoke", "pveguard.guard.cli:revoke", "Revoke an approval.")
lazy("install", "pveguard.guard.cli:install_cmd",
     "Container-first install: core packages fit the host, everything else goes into the strategy\n"
     "container whose components match (or --container), created first when it does not exist.")
lazy("maintenance", "pveguard.recover.cli:maintenance_cmd",
     "Put NAME in maintenance (the watchdog never touches it) or take it out.")
lazy("scale", "pveguard.recover.scale_cli:scale_cmd",
     "Resize NAME live where the backend can (memory, cores; disk grows only), with a receipt in the ledger.")
lazy("rca", "pveguard.recover.scale_cli:rca_cmd",
     "A root-cause report: metrics, alerts, OOM and journal lines, top processes, package and config changes.")
lazy("isolation", "pveguard.security.isolation_cli:app", "Firewall and VLAN isolation of the managed containers.")
lazy("guard", "pveguard.guard.cli:app", "The apt install guard: register, remove, inspect, dry-run a transaction.")
lazy("backup", "pveguard.backup.cli:app", "Backup schedules and retention: PVE calendar events and keep-* rules.")
lazy("monitor", "pveguard.monitor.cli:monitor_app", "Poll the containers, keep series and alerts, serve /metrics.")
lazy("alerts", "pveguard.monitor.cli:alerts_app", "Alert states and silences.")
lazy("export", "pveguard.monitor.cli:export_app", "Export monitoring configuration for the pve-monitoring container.")
lazy("recover", "pveguard.recover.cli:app",
     "The watchdog: restart this installation's failed containers within a budget.")
lazy("audit-log", "pveguard.security.cli:app", "Read and verify the audit ledger.")
lazy("certs", "pveguard.security.certs_cli:app",
     "Node certificates, ACME and the containers' TLS endpoints, with days left.")
lazy("tokens", "pveguard.security.tokens_cli:app", "The PVE API token of each container role (security.access.rbac).")
lazy("update", "pveguard.updates.cli:update_cmd",
     "Update the managed containers safely: snapshot, apt-get upgrade inside, health checks, and a\n"
     "rollback to the snapshot when the upgrade or the checks fail (docs/updates.md).")
lazy("update-timer", "pveguard.updates.cli:update_timer_cmd",
     "Write the systemd timer that runs 'pveguard update --scheduled' at the strategy's updates.schedule.")
lazy("serve", "pveguard.serve.cli:serve_cmd",
     "Run the daemon: jobs on the strategy's schedules, the REST API and the dashboard (docs/serve.md).")
lazy("api-token", "pveguard.serve.cli:token_app",
     "pveguard's own API tokens (for 'pveguard serve'): create, list, revoke.")
lazy("migrate", "pveguard.migrate.cli:app",
     "Move a service from the host into a container: plan, run (resumable), status, rollback.")


def command(eager: bool = False) -> Any:
    """The click command behind `app`, with every value placeholder in --help named as a word.

    ``eager``: load every lazily registered command now (tests compare both ways).
    """
    cmd: Any = typer.main.get_command(app)
    _name_placeholders(cmd)
    _plain_coercion(cmd)
    if eager:
        for name in LAZY:
            cmd.get_command(None, name)
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
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        return command()(args=argv, standalone_mode=True, prog_name="pveguard")
    except PveguardError as exc:
        from pveguard.output import error

        error(exc.message)
        if exc.hint:
            _hint(exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # before a command started (parsing its options)
        _interrupted(at_prompt=False)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # a bug: say so plainly, show the traceback only on request
        if verbose:
            raise
        from pveguard.output import error

        error(f"internal error (this is a bug in pveguard): {type(exc).__name__}: {exc}")
        _hint("re-run with --verbose for the traceback and report it")
        sys.exit(EXIT_FAILED)


def _interrupted(at_prompt: bool) -> None:
    from pveguard import invocation
    from pveguard.output import err_console

    err_console.print(invocation.interrupted_message(at_prompt), style="red", markup=False, highlight=False,
                      soft_wrap=True)


def _hint(text: str) -> None:
    from pveguard.output import err_console

    err_console.print(f"  hint: {text}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
