"""`pveguard isolation check [--json]`: are this installation's containers isolated as the strategy says?"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import typer
from rich.markup import escape

from pveguard.backends import connect
from pveguard.backends.base import Guest
from pveguard.backends.inflight import IN_FLIGHT as READ_WORKERS
from pveguard.backends.lxc import LxcBackend
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.errors import EXIT_FAILED, BackendError, UsageError
from pveguard.output import console, print_json
from pveguard.security import extra_inbound
from pveguard.security.isolation import (
    Ct,
    Violation,
    check,
    desired_firewall,
    enforced,
    observe_firewall,
)

app = typer.Typer(help="Firewall and VLAN isolation of the managed containers.", no_args_is_help=True)

# Violations that only exist because the strategy asks for the firewall.
FIREWALL_KINDS = frozenset({"datacenter-firewall-off", "net-firewall-off", "firewall-off", "policy", "rule-missing"})


@app.command("check")
def check_cmd(ctx: typer.Context,
              json_out: Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")] = False,
              probes: Annotated[bool, typer.Option(
                  "--probe/--no-probe", help="lxc: also try connections between the containers (default on).")
              ] = True) -> None:
    """Exit 0 when every managed container is isolated as the strategy says, 1 naming each violation.

    On plain LXC it also probes for real from inside the containers: admitted ports answer, others
    and other VLANs do not."""
    from pveguard.cli import get_ctx
    from pveguard.provision.cli import _closing, instance_id
    from pveguard.provision.observe import observe
    from pveguard.provision.plan import managed_guests

    app_ctx = get_ctx(ctx)
    strategy = app_ctx.strategy
    backend = connect(strategy)
    with _closing(backend):
        if isinstance(backend, LxcBackend):
            _check_lxc(app_ctx, backend, json_out, probes)
            return
        if not isinstance(backend, ProxmoxBackend):
            raise UsageError(f"isolation check knows the proxmox and lxc backends, not {backend.name}",
                             hint="set target.backend to proxmox or lxc")
        instance = instance_id(app_ctx)
        seen_guests = observe(backend)
        wanted = {c.name for c in strategy.containers}
        mine = [g for g in managed_guests(seen_guests, instance) if g.name in wanted]
        cts = [Ct(g.name, g.vmid, g.node) for g in sorted(mine, key=lambda g: g.vmid)]
        want = desired_firewall(strategy, extra_inbound.by_container(app_ctx.store))
        fw = observe_firewall(backend.call, cts, want.groups)
        mine_ids = {g.vmid for g in managed_guests(seen_guests, instance)}
        # a strategy container whose config cannot be read (its node offline): unknown, not absent
        unknown = [{"name": g.name, "vmid": g.vmid, "node": g.node,
                    "reason": (f"node {g.node} offline or not reporting" if g.status == "unknown"
                               else f"config cannot be read: {seen_guests.unreadable[g.vmid]}")}
                   for g in seen_guests.guests if g.vmid in seen_guests.unreadable and g.name in wanted]
        others = [g for g in seen_guests.guests
                  if g.type == "lxc" and g.vmid not in mine_ids and g.vmid not in seen_guests.unreadable]

        def read(g: Guest) -> tuple[str, int, dict[str, Any]]:
            cfg = seen_guests.configs.get(g.vmid)
            if cfg is None:
                try:
                    cfg = backend.get_config(g)
                except BackendError:
                    cfg = {}  # gone since the listing: nothing to say about it
            return g.name, g.vmid, cfg

        with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
            other_cfgs = list(pool.map(read, others))
        violations = check(strategy, want, fw, cts, seen_guests.configs, other_cfgs)
    if not enforced(strategy):
        violations = [v for v in violations if v.kind not in FIREWALL_KINDS]
    absent = sorted(wanted - {c.name for c in cts} - {str(u["name"]) for u in unknown})
    _report(cts, absent, violations, [], json_out, unknown)


def _report(cts: list[Ct], absent: list[str], violations: list[Violation], probes: list[Any], json_out: bool,
            unknown: list[dict[str, Any]] | None = None) -> None:
    unknown = unknown or []
    if json_out:
        print_json({"ok": not violations and not unknown,
                    "checked": [{"name": c.name, "vmid": c.vmid, "node": c.node} for c in cts],
                    "absent": absent, "unknown": unknown, "violations": [v.as_dict() for v in violations],
                    "probes": [p.as_dict() for p in probes]})
    else:
        for p in probes:
            mark = {True: "ok", False: "VIOLATION", None: "not probed"}[p.ok]
            console.print(escape(f"probe {p.src} -> {p.dst} {p.address}:{p.port}: {p.result}, expected it "
                                 f"{'to answer' if p.expect == 'answers' else 'dropped'} ({p.why}) [{mark}]"),
                          soft_wrap=True, highlight=False)
        _render(cts, absent, violations)
        for u in unknown:
            console.print(escape(f"unknown (not checked): {u['name']} (CT {u['vmid']} on {u['node']}): "
                                 f"{u['reason']}"), soft_wrap=True)
    if violations or unknown:
        raise typer.Exit(EXIT_FAILED)


def _check_lxc(app_ctx: Any, backend: LxcBackend, json_out: bool, probes: bool) -> None:
    """The lxc backend's check: VLANs and the nft tables read back, then probes between the containers."""
    from pveguard.provision.cli import instance_id
    from pveguard.provision.observe import observe
    from pveguard.provision.plan import managed_guests
    from pveguard.security.isolation_lxc import check_lxc

    strategy = app_ctx.strategy
    seen = observe(backend)
    wanted = {c.name for c in strategy.containers}
    instance = instance_id(app_ctx)
    managed = managed_guests(seen, instance)
    cts = [Ct(g.name, g.vmid, g.node) for g in sorted(managed, key=lambda g: g.vmid) if g.name in wanted]
    mine = {g.vmid for g in managed}
    others = []
    for g in seen.guests:
        if g.type == "lxc" and g.vmid not in mine:
            try:
                others.append((g.name, g.vmid, backend.get_config(g)))
            except BackendError:
                continue
    by_vmid = {g.vmid: g for g in seen.guests}
    configs = {ct.vmid: seen.configs.get(ct.vmid) or backend.get_config(by_vmid[ct.vmid]) for ct in cts}
    violations, done = check_lxc(strategy, backend, cts, configs, others, seen.guests,
                                 firewall=enforced(strategy), probes=probes,
                                 extra=extra_inbound.by_container(app_ctx.store))
    absent = sorted(wanted - {c.name for c in cts})
    _report(cts, absent, violations, done, json_out)


def _render(cts: list[Ct], absent: list[str], violations: list[Violation]) -> None:
    for v in violations:
        where = f" (CT {v.vmid})" if v.vmid is not None else ""
        console.print(escape(f"VIOLATION {v.name}{where}: {v.detail} [{v.kind}]"), soft_wrap=True)
    if absent:
        console.print(escape(f"not created yet (not checked): {', '.join(absent)}"), soft_wrap=True)
    bad = {v.name for v in violations}
    ok = [c.name for c in cts if c.name not in bad]
    if violations:
        console.print(f"{len(violations)} violation(s); isolated: {', '.join(ok) or 'none'}", highlight=False)
    else:
        console.print(f"all {len(cts)} managed container(s) isolated as the strategy says", highlight=False)
