"""Commands of the install guard: `guard install|uninstall|status|check`, `apt-hook`, `approve`,
`approvals`, `revoke` and the container-first `install` workflow."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pveguard.context import AppContext
from pveguard.errors import EXIT_REFUSED, OperationError, UsageError
from pveguard.output import Col, FitTable, console, print_json, say, warn

app = typer.Typer(help="The apt install guard: register, remove, inspect, dry-run a transaction.",
                  no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")]


def _ctx(ctx: typer.Context) -> AppContext:
    from pveguard.cli import get_ctx

    return get_ctx(ctx)


def _files_table(report: list[dict[str, Any]], title: str) -> None:
    table = FitTable(Col("file", 0, wrap=False), Col("role", 2, min_width=12), Col("state", 0, min_width=10),
                     title=title)
    for r in report:
        table.add_row(r["path"], r["role"], r["state"])
    console.print(table)


@app.command("install")
def guard_install(ctx: typer.Context, dry_run: DryRunOpt = False, json_out: JsonOpt = False) -> None:
    """Register the apt hook (protocol v3 on fd 20) and write the installation policy."""
    from pveguard.guard import install as inst

    app_ctx = _ctx(ctx)
    if not app_ctx.strategy_path.exists():
        warn(f"no strategy file at {app_ctx.strategy_path}; using the default installation policy")
    report = inst.install(app_ctx, dry_run=dry_run)
    if json_out:
        print_json({"dry_run": dry_run, "files": report})
        return
    _files_table(report, "would write (dry run)" if dry_run else "apt guard installed")
    if not dry_run:
        console.print("Try it safely: pveguard guard check -- apt-get install -y <package>")


@app.command("uninstall")
def guard_uninstall(ctx: typer.Context, dry_run: DryRunOpt = False, json_out: JsonOpt = False) -> None:
    """Remove the apt hook, its launcher and the policy files."""
    from pveguard.guard import install as inst

    report = inst.uninstall(_ctx(ctx), dry_run=dry_run)
    if json_out:
        print_json({"dry_run": dry_run, "files": report})
        return
    _files_table(report, "would remove (dry run)" if dry_run else "apt guard removed")


@app.command("status")
def guard_status(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Installed? Intact? The policy, tamper findings and recent decisions. Exit 1 when not intact."""
    from pveguard.guard import install as inst

    data = inst.status(_ctx(ctx))
    if json_out:
        print_json(data)
    else:
        state = "installed, intact" if data["intact"] else ("installed, NOT intact" if data["installed"]
                                                            else "not installed")
        console.print(f"apt guard: {state}")
        pol = data["policy"]
        if pol:
            say(f"policy ({pol['file']}): ALLOW_CORE_ONLY={str(pol['allow_core_only']).lower()} "
                f"REQUIRE_APPROVAL={str(pol['require_approval']).lower()} "
                f"CONTAINER_FIRST={str(pol['container_first']).lower()} "
                f"core roots: {', '.join(pol['core_roots'])}", hang=2)
        elif data["installed"]:
            say(f"policy: UNREADABLE ({data['policy_error']})", hang=2)
        for f in data["findings"]:
            say(f"{f['severity']}: {f['message']}", hang=2)
            say(f"  hint: {f['hint']}", hang=4)
        if data["break_glass_armed"]:
            console.print("break-glass file present: the next failing apt run will be let through once")
        console.print(f"active approvals: {data['active_approvals']}")
        if data["recent_decisions"]:
            # packages and the command wrap (whole) instead of being cut at 60 characters
            table = FitTable(Col("seq", 3, wrap=False, justify="right"), Col("time (UTC)", 1, min_width=10),
                             Col("verdict", 0, wrap=False), Col("packages", 0, min_width=16, words=True),
                             Col("command", 2, min_width=16), title="recent decisions")
            for d in data["recent_decisions"]:
                table.add_row(str(d["seq"]), d["ts"][:19].replace("T", " "), d["verdict"],
                              ", ".join(p for p in d["packages"] if p), d["command_line"])
            console.print(table)
    if not data["intact"]:
        raise typer.Exit(1)


def render_decision(decision: dict[str, Any], installed: bool) -> None:
    """The guard's decision on one apt transaction, as `guard check` prints it."""
    title = "guard decision (check only)" if installed else "guard decision (preview: the guard is not installed)"
    table = FitTable(Col("package", 0, wrap=False), Col("action", 1, wrap=False), Col("version", 3, min_width=10),
                     Col("verdict", 0, wrap=False), Col("reason", 2, min_width=16), title=title)
    for i in decision["items"]:
        ver = " -> ".join(v for v in (i["old_version"], i["new_version"]) if v)
        why = i["reason"] + (f": {i['detail']}" if i["detail"] else "")
        table.add_row(i["package"], i["action"], ver, i["verdict"], why)
    console.print(table)
    console.print("the guard would ALLOW this transaction" if decision["allowed"]
                  else "the guard would REFUSE this transaction")


@app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def guard_check(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show what the guard decides for an apt command, installing nothing:
    pveguard guard check -- apt-get install -y X (apt runs with -o Debug::pkgDPkgPM=1)."""
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or Path(argv[0]).name not in ("apt-get", "apt"):
        raise UsageError("guard check needs an apt command after '--'",
                         hint="e.g. pveguard guard check -- apt-get install -y grafana")
    from pveguard.guard import install as inst

    app_ctx = _ctx(ctx)
    installed = bool(inst.status(app_ctx)["installed"])
    if not installed and not json_out:
        say("guard not installed: this is what it would decide with the strategy's policy "
            "(enforce it with 'pveguard guard install')")
    with tempfile.TemporaryDirectory(prefix="pveguard-check-") as tmp:
        result_file = Path(tmp) / "decision.json"
        env = dict(os.environ, PVEGUARD_CHECK_RESULT=str(result_file))
        # -y: with Debug::pkgDPkgPM nothing is installed, so there is nothing to confirm.
        cmd = [argv[0], "-o", "Debug::pkgDPkgPM=1", *([] if "-y" in argv else ["-y"]),
               *([] if installed else _preview_hook(app_ctx, Path(tmp))), *argv[1:]]
        try:
            proc = subprocess.run(cmd, env=env, check=False, capture_output=json_out)
        except OSError as exc:
            raise OperationError(f"cannot run {argv[0]}: {exc.strerror}") from None
        decision = json.loads(result_file.read_text()) if result_file.exists() else None
    if decision is None:
        if json_out:
            print_json({"ran_hook": False, "installed": installed, "apt_exit": proc.returncode})
        else:
            say(f"apt exited {proc.returncode} without running the guard "
                "(nothing to install, an error before dpkg, or the question was answered no)")
        raise typer.Exit(proc.returncode or 0)
    if json_out:
        print_json({"ran_hook": True, "installed": installed, "apt_exit": proc.returncode, **decision})
    else:
        render_decision(decision, installed)
    if not decision["allowed"]:
        raise typer.Exit(EXIT_REFUSED)


def _preview_hook(app_ctx: AppContext, tmp: Path) -> list[str]:
    """apt options that run the hook for this one apt command only, with the policy `guard install`
    would write, from a launcher in `tmp` (nothing is registered in /etc/apt)."""
    from pveguard.guard import install as inst

    policy = tmp / "installation_policy.conf"
    launcher = tmp / "apt-hook"
    for planned in inst.plan(app_ctx):
        if planned.role == "policy":
            policy.write_text(planned.content, encoding="utf-8")
    launcher.write_text(inst.render_launcher(policy_file=policy), encoding="utf-8")
    launcher.chmod(0o700)  # apt runs hooks as the user that runs apt, which is the one running this
    options = f"DPkg::Tools::Options::{launcher}"
    return ["-o", f"DPkg::Pre-Install-Pkgs::={launcher}", "-o", f"{options}::Version=3",
            "-o", f"{options}::InfoFD=20"]


# --- top-level commands -----------------------------------------------------------------------------


def apt_hook() -> None:
    """What apt runs (DPkg::Pre-Install-Pkgs, protocol v3 on $APT_HOOK_INFO_FD). Not for people."""
    from pveguard.guard.hook import main

    raise typer.Exit(main())


def approve(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(metavar="PKG[=VERSION]", help="Package, optionally one version.")],
    reason: Annotated[str, typer.Option("--reason", help="Why this belongs on the host (recorded).")],
    ttl: Annotated[str | None, typer.Option(
        "--ttl", help="How long it stays valid, e.g. 2h, 24h, 7d [default: the policy's approval_ttl].")] = None,
    uses: Annotated[int, typer.Option("--uses", min=1, help="How many apt runs it covers.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Approve a non-core package (or removing/downgrading a core one) on the host."""
    from pveguard.guard import approvals
    from pveguard.security.ledger import current_actor
    from pveguard.strategy.units import format_duration, parse_duration

    app_ctx = _ctx(ctx)
    try:
        package, version = approvals.parse_spec(spec)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. pveguard approve grafana=10.4.2 --reason \"...\"") from None
    if not reason.strip():
        raise UsageError("--reason is empty", hint="say why this package belongs on the hypervisor")
    if ttl is None:
        ttl_td = app_ctx.strategy_or_default().installation_policy.approval_ttl
    else:
        try:
            ttl_td = parse_duration(ttl)
        except ValueError as exc:
            raise UsageError(f"--ttl: {exc}") from None
    if ttl_td.total_seconds() <= 0:
        raise UsageError("--ttl must be longer than 0s", hint="e.g. --ttl 24h")
    policy = app_ctx.strategy_or_default().installation_policy
    if not policy.require_approval:
        warn("the policy has REQUIRE_APPROVAL=false: the guard does not consult approvals")
    record = approvals.add(app_ctx.store, package, version, reason.strip(), ttl_td.total_seconds(), uses,
                           current_actor())
    app_ctx.record("guard.approve", package, approval=record.as_dict())
    if json_out:
        print_json(record.as_dict())
    else:
        say(f"approval #{record.id}: {spec} for {uses} apt run(s), valid for "
            f"{format_duration(ttl_td)} (until {record.as_dict()['expires_at']})")


def approvals_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Also expired, used-up and revoked approvals.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List active approvals (or all of them)."""
    from pveguard.guard import approvals

    now = time.time()
    records = approvals.listing(_ctx(ctx).store, include_all=all_, now=now)
    if json_out:
        print_json([r.as_dict(now) for r in records])
        return
    if not records:
        console.print("no approvals" if all_ else "no active approvals (--all shows the others)")
        return
    table = FitTable(Col("id", 0, wrap=False, justify="right"), Col("package", 0, wrap=False),
                     Col("version", 3, min_width=8), Col("state", 1, wrap=False), Col("uses left", 4, wrap=False),
                     Col("expires (UTC)", 2, min_width=10), Col("by", 5, min_width=8), Col("reason", 3, min_width=12))
    for r in records:
        d = r.as_dict(now)
        table.add_row(str(r.id), r.package, r.version or "any", str(d["state"]), f"{r.uses_left}/{r.uses_total}",
                      str(d["expires_at"])[:19].replace("T", " "), r.created_by, r.reason)
    console.print(table)


def revoke(
    ctx: typer.Context,
    approval_id: Annotated[int, typer.Argument(metavar="ID", help="The approval's id (see 'pveguard approvals').")],
) -> None:
    """Revoke an approval."""
    from pveguard.guard import approvals
    from pveguard.security.ledger import current_actor

    app_ctx = _ctx(ctx)
    try:
        record = approvals.revoke(app_ctx.store, approval_id, current_actor())
    except LookupError as exc:
        raise UsageError(str(exc.args[0]), hint="list them with 'pveguard approvals --all'") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app_ctx.record("guard.revoke", record.package, approval=record.as_dict())
    console.print(f"approval #{approval_id} ({record.package}) revoked")


def install_cmd(
    ctx: typer.Context,
    packages: Annotated[list[str], typer.Argument(metavar="PKG...", help="Packages to install.")],
    container: Annotated[str | None, typer.Option(
        "--container", help="Install non-core packages in this strategy container.")] = None,
    dry_run: DryRunOpt = False,
    on_host: Annotated[bool, typer.Option(
        "--on-host", help="Install the packages that are core on the host itself (with apt-get).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Container-first install: core packages fit the host, everything else goes into the strategy
    container whose components match (or --container), created first when it does not exist."""
    from pveguard.guard import workflow

    app_ctx = _ctx(ctx)
    result = workflow.run(app_ctx, packages, container=container, dry_run=dry_run, on_host=on_host,
                          progress=None if json_out else (lambda m: console.print(m)))
    if json_out:
        print_json(result.as_dict())
    else:
        workflow.render(result)
    if not result.ok:
        raise typer.Exit(result.exit_code)


__all__ = ["app"]
