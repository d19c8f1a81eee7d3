"""`pveguard doctor`: every preflight in one place, one line per check with its fix.

The checks that do not depend on where containers live are here (strategy, state directory, apt
guard); the backend's own come from `Backend.preflight()` (PVE: TLS, connection, version,
privileges, nodes, storages, templates, bridges, VMIDs; LXC: its tools, config includes, bridges,
id maps, cgroups). Nothing here changes the machine or the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pveguard.backends import choose, connect
from pveguard.backends.base import Preflight
from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, PveguardError
from pveguard.output import print_json, say
from pveguard.strategy import load as strategy_load
from pveguard.strategy.models import Strategy

_MARK = {True: ("ok", "green"), False: ("FAIL", "red bold"), None: ("skip", "dim")}


def check_strategy(ctx: AppContext) -> tuple[Strategy, Preflight]:
    """The strategy file loads and validates; on failure the rest runs with the built-in defaults."""
    path = ctx.strategy_path
    try:
        strategy, problems = strategy_load.load(path)
    except strategy_load.StrategyInvalid as exc:
        errors = [p.text() for p in exc.problems if p.severity == "error"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return Strategy(), Preflight("strategy", False, f"{errors[0] if errors else exc.message}{more}",
                                     f"run 'pveguard check' for every problem with its position, fix {path}")
    except PveguardError as exc:
        return Strategy(), Preflight("strategy", False, exc.message, exc.hint or "")
    warnings = [p for p in problems if p.severity == "warning"]
    detail = f"{path}: valid, {len(strategy.containers)} containers"
    if warnings:
        detail += f", {len(warnings)} warning(s) ('pveguard check' lists them)"
    return strategy, Preflight("strategy", True, detail)


def check_state_dir(state_dir: Path) -> Preflight:
    """The state directory is (or can be created as) a writable directory."""
    if state_dir.exists():
        if not state_dir.is_dir():
            return Preflight("state-dir", False, f"{state_dir} exists but is not a directory",
                             "move it away, or choose another with --state-dir / PVEGUARD_STATE_DIR")
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return Preflight("state-dir", False, f"{state_dir} is not writable for this user",
                             "run pveguard as root, or choose another with --state-dir / PVEGUARD_STATE_DIR")
        return Preflight("state-dir", True, f"{state_dir} is writable")
    parent = state_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Preflight("state-dir", True, f"{state_dir} does not exist yet; it will be created")
    return Preflight("state-dir", False, f"{state_dir} does not exist and {parent} is not a writable directory",
                     f"create it (mkdir -p {state_dir}) as root, or choose another with --state-dir")


def check_guard(ctx: AppContext, strategy: Strategy, state_ok: bool) -> Preflight:
    """The apt guard's own findings (changed, removed, disabled...), through guard.install."""
    from pveguard.guard.install import GuardFinding, guard_findings

    if not state_ok:
        return Preflight("guard", None, "skipped: the state directory is not usable")
    policy = strategy.installation_policy
    enforced = policy.allow_core_only or policy.require_approval
    if (ctx.state_dir / "pveguard.db").exists():
        try:
            findings = guard_findings(ctx)
        except PveguardError as exc:
            return Preflight("guard", False, f"cannot read the guard's state: {exc.message}", exc.hint or "")
    else:  # nothing was ever installed; do not create the database just to look
        findings = [GuardFinding("not-installed", "", "the apt install guard is not installed",
                                 "run 'pveguard guard install'", "warning")]
    if not findings:
        return Preflight("guard", True, "the apt install guard is installed and intact")
    if all(f.kind == "not-installed" for f in findings):
        if not enforced:
            return Preflight("guard", None, "the apt install guard is not installed (the policy asks for "
                                            "neither allow_core_only nor require_approval)")
        return Preflight("guard", False, "the apt install guard is not installed, so installation_policy "
                                         "(allow_core_only / require_approval) is not enforced",
                         "run 'pveguard guard install'")
    bad = [f for f in findings if f.kind != "not-installed"]
    return Preflight("guard", False, "; ".join(f.message for f in bad), bad[0].hint)


def check_backend(strategy: Strategy, env: Mapping[str, str]) -> list[Preflight]:
    """Which backend, then its own preflights."""
    try:
        name = choose(strategy, env)
    except PveguardError as exc:
        return [Preflight("backend", False, exc.message, exc.hint or "")]
    wanted = env.get("PVEGUARD_BACKEND") or strategy.target.backend
    out = [Preflight("backend", True, name + ("" if wanted == name else f" (from {wanted})"))]
    try:
        backend = connect(strategy, env)
    except PveguardError as exc:
        return [*out, Preflight(f"{name}-connection", False, exc.message, exc.hint or "")]
    try:
        out += backend.preflight()
    finally:
        backend.close()
    return out


def run_checks(ctx: AppContext, env: Mapping[str, str] | None = None) -> list[Preflight]:
    env = os.environ if env is None else env
    strategy, first = check_strategy(ctx)
    state = check_state_dir(ctx.state_dir)
    return [first, state, check_guard(ctx, strategy, bool(state.ok)), *check_backend(strategy, env)]


def passed(checks: list[Preflight]) -> bool:
    return all(c.ok is not False for c in checks)


def render(checks: list[Preflight]) -> None:
    for c in checks:
        mark, style = _MARK[c.ok] if not (c.ok and c.fix) else ("WARN", "yellow bold")  # passed, with advice
        # one entry per check; at a narrow terminal it wraps at words, indented under the check's name
        line = Text.assemble((f"{mark:4}", style), f" {c.name}: {c.detail}")
        if c.ok is not None and c.fix:
            line.append("  ").append("fix:", "bold").append(f" {c.fix}")
        say(line, hang=5)
    failed = [c.name for c in checks if c.ok is False]
    say(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; failing: {', '.join(failed)}" if failed else ""))


def doctor_cmd(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (stable shape, see docs/json.md).")] = False,
) -> None:
    """Run every preflight (strategy, state, guard, backend: TLS, privileges, storages, templates,
    bridges, VMIDs, LXC includes...) and print one line per check with its fix; exit 1 if one fails."""
    app = ctx.find_root().obj
    assert isinstance(app, AppContext)
    checks = run_checks(app)
    ok = passed(checks)
    if json_out:
        print_json({"ok": ok, "checks": [c.as_dict() for c in checks]})
    else:
        render(checks)
    if not ok:
        raise typer.Exit(EXIT_FAILED)
