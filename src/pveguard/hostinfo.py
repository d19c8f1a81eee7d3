"""What pveguard sees on this machine: PVE or not, LXC tools, cgroups, apt, the state store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rich.text import Text

from pveguard.context import AppContext
from pveguard.output import Col, FitTable, console, say, warn
from pveguard.strategy.units import format_size


def _cmd_version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


def cgroup_mode() -> str:
    """'v2' (unified), 'hybrid' (v1 controllers plus a v2 mount) or 'v1'."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "unified").is_dir():
        return "hybrid"
    return "v1"


def describe(ctx: AppContext) -> dict[str, Any]:
    """A JSON-able picture of the strategy and the host (documented in docs/json.md)."""
    strategy_error = None
    try:
        strategy = ctx.strategy_or_default()
        source = str(ctx.strategy_path) if ctx.strategy_path.exists() else "built-in defaults"
    except Exception as exc:  # reported, not raised: info must work on a broken strategy too
        from pveguard.strategy.models import Strategy

        strategy, source, strategy_error = Strategy(), "built-in defaults", str(exc)
    pve = Path("/etc/pve").is_dir()
    ledger_entries = None
    if (ctx.state_dir / "pveguard.db").exists():
        try:
            ledger_entries = len(ctx.ledger.entries())
        except Exception:  # pragma: no cover - reported as unknown
            ledger_entries = None
    return {
        "strategy": {
            "source": source,
            "error": strategy_error,
            "policy": {
                "ALLOW_CORE_ONLY": strategy.installation_policy.allow_core_only,
                "REQUIRE_APPROVAL": strategy.installation_policy.require_approval,
                "CONTAINER_FIRST": strategy.installation_policy.container_first,
            },
            "containers": [
                {"name": c.name, "role": c.role, "cores": c.resources.cores,
                 "memory": format_size(c.resources.memory), "storage": format_size(c.resources.storage),
                 "bridge": strategy.container_bridge(c), "vlan": strategy.container_vlan(c)}
                for c in strategy.containers
            ],
            "thresholds": strategy.monitoring.thresholds.model_dump(),
            "backend": strategy.target.backend,
        },
        "host": {
            "hostname": os.uname().nodename,
            "kernel": os.uname().release,
            "pve": pve,
            "pveversion": _cmd_version(["pveversion"]) if pve else None,
            "lxc": _cmd_version(["lxc-create", "--version"]),
            "cgroup": cgroup_mode(),
            "apt": _cmd_version(["apt-get", "--version"]),
            "systemd": _cmd_version(["systemctl", "--version"]),
            "cpus": os.cpu_count(),
        },
        "state": {"dir": str(ctx.state_dir), "ledger_entries": ledger_entries},
        "backend": _backend_facts(strategy),
    }


def _backend_facts(strategy: Any) -> dict[str, Any]:
    from pveguard.backends import facts

    data = facts(strategy)
    if data["resolved"] == "lxc":
        data["lxc"] = {"version": _cmd_version(["lxc-create", "--version"])}
    return data


def render_info(data: dict[str, Any]) -> None:
    s, h = data["strategy"], data["host"]
    if s["error"]:
        warn(f"strategy not loaded, showing the defaults: {s['error']}")
    say(Text.assemble(("strategy", "bold"), f": {s['source']}"), hang=2)
    say("policy: " + "  ".join(f"{k}={'true' if v else 'false'}" for k, v in s["policy"].items()), hang=2)
    table = FitTable(Col("container", 0, wrap=False), Col("role", 3, min_width=10),
                     Col("cores", 1, wrap=False, justify="right"), Col("memory", 1, wrap=False, justify="right"),
                     Col("storage", 2, wrap=False), Col("bridge", 2, wrap=False), Col("vlan", 4, wrap=False))
    for c in s["containers"]:
        table.add_row(c["name"], c["role"], str(c["cores"]), c["memory"], c["storage"], c["bridge"],
                      str(c["vlan"]))
    console.print(table)
    t = s["thresholds"]
    console.print(f"alerts at cpu {t['cpu']:g} %, memory {t['memory']:g} %, disk {t['disk']:g} %")
    say(Text.assemble(("host", "bold"), f": {h['hostname']} (kernel {h['kernel']}, {h['cpus']} cpus, "
                                        f"cgroup {h['cgroup']})"), hang=2)
    console.print(f"  Proxmox VE: {h['pveversion'] or ('present' if h['pve'] else 'not detected')}")
    console.print(f"  LXC tools: {h['lxc'] or 'not installed'}")
    console.print(f"  apt: {h['apt'] or 'not found'}   systemd: {h['systemd'] or 'not found'}")
    _render_backend(data["backend"])
    st = data["state"]
    ledger = "no state yet" if st["ledger_entries"] is None else f"{st['ledger_entries']} ledger entries"
    say(Text.assemble(("state", "bold"), f": {st['dir']} ({ledger})"), hang=2)


def _render_backend(b: dict[str, Any]) -> None:
    asked = "" if b["wanted"] == b["resolved"] else f" (from {b['wanted']})"
    console.print(f"[bold]backend[/]: {b['resolved'] or 'none'}{asked}", highlight=False)
    pve = b.get("proxmox")
    if pve is not None:
        if pve["api"]:
            say(f"  api: {pve['api']}", hang=4)
        if pve["reachable"]:
            nodes = ", ".join(f"{n['name']} ({'online' if n['online'] else 'offline'})" for n in pve["nodes"])
            quorum = {True: "quorate", False: "NOT quorate", None: "quorum unknown"}[pve["quorate"]]
            support = f" ({pve['support']})" if pve.get("support") else ""
            say(f"  Proxmox VE {pve['version']}{support}; nodes: {nodes or 'none visible'}; {quorum}", hang=4)
    if b.get("lxc"):
        console.print(f"  LXC {b['lxc']['version'] or 'version unknown'}", highlight=False)
    if b["error"]:
        what = "unreachable" if b["resolved"] else "not available"
        say(f"  {what}: {b['error']}", hang=4)
        if b["hint"]:
            say(f"  hint: {b['hint']}", hang=4)

