"""Firewall and VLAN isolation on the plain-LXC backend: desired rules, plan, converge, check and probes.

The rules are PVE's (security.isolation: `security.network.allowed_inbound`, then each role's
component ports from the management network), resolved for nftables: `management` becomes
`network.management.cidr` (a rule from management admits nobody while it is unset). What the host
enforces is backends.lxc_isolation's table per bridge; this module plans and checks it.

`isolation check` also probes for real, from inside the containers (lxc-attach, bash's /dev/tcp):
a port a rule admits must answer (a connection or a refusal: the firewall let it through), a port
no rule admits must not (a timeout: dropped), and a container on another VLAN must reach nothing.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pveguard.backends import lxc_isolation, lxc_net
from pveguard.backends.base import Guest
from pveguard.backends.lxc import LxcBackend, plan_net
from pveguard.errors import BackendError, ConfigError
from pveguard.security.isolation import (
    MGMT_IPSET,
    Ct,
    FwChange,
    FwPlan,
    Rule,
    Violation,
    role_rules,
    vlan_violations,
)
from pveguard.strategy.models import Strategy

NftRule = lxc_isolation.NftRule
PROBE_TIMEOUT = 2  # seconds a dropped connection is given before it counts as filtered
PROBE_WORKERS = 8
PROBE_PORT = 9  # discard: a port no default role admits, probed when the target listens on nothing else
MAX_PER_KIND = 3


Extra = dict[str, list[Rule]]   # container name -> rules beyond the strategy (security.extra_inbound)


def lxc_rules(strategy: Strategy, name: str, extra: Extra | None = None) -> list[NftRule] | None:
    """The rules a container admits on the lxc backend (None: `network.firewall: false`, no firewall):
    the strategy's, then `extra`'s for it (a migrated service's ports)."""
    c = next((c for c in strategy.containers if c.name == name), None)
    if c is None or not c.network.firewall:
        return None
    cidr = strategy.network.management.cidr
    mgmt = str(ipaddress.ip_network(cidr, strict=False)) if cidr else None
    out: list[NftRule] = []
    for r in [*role_rules(strategy, c), *(extra or {}).get(name, [])]:
        source = r.source
        if source == f"+{MGMT_IPSET}":
            if mgmt is None:
                continue  # the management network is unknown: the rule admits nobody
            source = mgmt
        try:
            lxc_isolation.nft_ports(r.dport)
        except ConfigError as e:
            raise ConfigError(f"security.network.allowed_inbound: {r.why or r.text()}: {e.message}",
                              hint="ports are 1-65535: 22, 80,443 or 1000:2000") from None
        rule = NftRule(r.proto, r.dport, source)
        if rule not in out:
            out.append(rule)
    return out


def _text(rules: list[NftRule] | None) -> str:
    if rules is None:
        return "(no firewall)"
    return "; ".join(r.text() for r in rules) or "(drop all)"


def plan_lxc(strategy: Strategy, backend: LxcBackend, cts: list[Ct], extra: Extra | None = None) -> FwPlan:
    """Each managed container's recorded rules against the strategy, and each bridge's live table."""
    out = FwPlan()
    bridges: dict[str, list[Ct]] = {}
    changed: set[str] = set()
    for ct in cts:
        want = lxc_rules(strategy, ct.name, extra)
        have = backend.isolation_policy(ct.vmid)
        bridge = backend.bridge_of(ct.vmid)
        bridges.setdefault(bridge, []).append(ct)
        if want != have:
            changed.add(bridge)
            out.changes.append(FwChange(f"ct/{ct.vmid}", ct.name, "rules", _text(have), _text(want), op="lxc-rules",
                                        data={"vmid": ct.vmid,
                                              "rules": None if want is None else [r.as_dict() for r in want]}))
    for bridge in sorted(bridges):
        state = backend.isolation_state(bridge)
        if state is not None and bridge not in changed:
            table = lxc_isolation.table_name(bridge)
            out.changes.append(FwChange(f"nft/{table}", table, "table", state, "as the containers' rules say",
                                        op="lxc-table", data={"bridge": bridge}))
    if strategy.network.management.cidr is None:
        out.notes.append("network.management.cidr is not set: rules 'from management' admit nobody until it is set")
    return out


def converge_lxc(backend: LxcBackend, plan: FwPlan, record: Callable[..., None]) -> list[str]:
    """Write each container's rules (its bridge's table follows), then rewrite drifted tables."""
    done: list[str] = []
    for c in plan.changes:
        details = {"before": {c.field: c.old}, "after": {c.field: c.new}}
        record("firewall", c.target, c.name, None, **details)
        if c.op == "lxc-rules":
            rules = c.data["rules"]
            backend.set_isolation(int(c.data["vmid"]),
                                  None if rules is None else [NftRule(**r) for r in rules])
        elif c.op == "lxc-table":
            backend.render_isolation(str(c.data["bridge"]))
        record("firewall", c.target, c.name, "ok", **details)
        done.append(c.text())
    return done


# --- check --------------------------------------------------------------------------------------


def firewall_violations(strategy: Strategy, backend: LxcBackend, cts: list[Ct],
                        extra: Extra | None = None) -> list[Violation]:
    """The nft side read back: each container's recorded rules, its chains, its bridge's table."""
    out: list[Violation] = []
    tables: dict[str, str | None] = {}
    for ct in cts:
        want = lxc_rules(strategy, ct.name, extra)
        if want is None:
            continue  # network.firewall: false -- only its VLAN is checked
        bridge = backend.bridge_of(ct.vmid)
        if bridge not in tables:
            tables[bridge] = backend.isolation_state(bridge)
            table = lxc_isolation.table_name(bridge)
            if tables[bridge] == "missing":
                out.append(Violation(table, None, "table-missing", f"the nftables table bridge {table} is missing"))
            elif tables[bridge] is not None:
                out.append(Violation(table, None, "table-changed", f"the nftables table bridge {table} is "
                                                                   f"{tables[bridge]}"))
        have = backend.isolation_policy(ct.vmid)
        if have is None:
            out.append(Violation(ct.name, ct.vmid, "rule-missing", "no firewall rules recorded for it"))
            continue
        for r in [r for r in want if r not in have]:
            out.append(Violation(ct.name, ct.vmid, "rule-missing", f"its rules lack {r.text()}"))
        for r in [r for r in have if r not in want]:
            out.append(Violation(ct.name, ct.vmid, "rule-extra", f"its rules admit {r.text()}, which the strategy "
                                                                  f"does not"))
        if tables[bridge] != "missing":
            chain, jumps = lxc_isolation.chains_present(bridge, ct.vmid)
            if not chain or not jumps:
                out.append(Violation(ct.name, ct.vmid, "rule-missing",
                                     f"its chain in_{ct.vmid} (ending in the counted drop) or the jumps to it for "
                                     f"{lxc_net.host_veth_name(ct.vmid)} are missing from the table"))
    return out


@dataclass
class Probe:
    """One connection attempt from inside a container: `expect` open (answers) or filtered (dropped)."""

    src: str
    src_vmid: int
    dst: str
    dst_vmid: int
    address: str
    port: int
    expect: str  # "answers" | "dropped"
    why: str
    result: str = ""  # "open" | "closed" (refused: passed the firewall) | "filtered" | "error: ..."

    @property
    def ok(self) -> bool | None:
        if self.result.startswith("error"):
            return None
        answered = self.result in ("open", "closed")
        return answered if self.expect == "answers" else not answered

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "address": self.address, "port": self.port, "expect": self.expect,
                "why": self.why, "result": self.result, "ok": self.ok}


@dataclass
class Seen:
    """A running container as the probes see it."""

    name: str
    vmid: int
    bridge: str
    tag: str | None
    address: str | None
    rules: list[NftRule] | None


def _admits(rules: list[NftRule], proto: str, port: int, source: str) -> bool:
    addr = ipaddress.ip_address(source)
    return any(r.proto == proto and lxc_isolation.port_allowed(r.dport, port)
               and (not r.source or addr in ipaddress.ip_network(r.source, strict=False)) for r in rules)


def plan_probes(targets: list[Seen], peers: list[Seen], listening: dict[int, list[int]]) -> list[Probe]:
    """Which connections to try: per target, its admitted ports from a peer its rules admit (answers),
    ports it listens on (or PROBE_PORT) that no rule admits from a same-VLAN peer (dropped), and one
    of its ports from a peer on each other VLAN (dropped)."""
    out: list[Probe] = []
    for t in targets:
        if t.address is None or t.rules is None:
            continue
        same = [p for p in peers if p.vmid != t.vmid and p.bridge == t.bridge and p.tag == t.tag and p.address]
        other = [p for p in peers if p.vmid != t.vmid and p.bridge == t.bridge and p.tag != t.tag and p.address]
        n = 0
        for r in t.rules:
            if r.proto != "tcp" or n >= MAX_PER_KIND:
                continue
            port = int(r.dport.split(",")[0].replace("-", ":").split(":")[0])
            src = next((p for p in same if p.address and (not r.source or ipaddress.ip_address(p.address)
                                                          in ipaddress.ip_network(r.source, strict=False))), None)
            if src is not None and src.address:
                out.append(Probe(src.name, src.vmid, t.name, t.vmid, t.address, port, "answers",
                                 f"admitted: {r.text()}"))
                n += 1
        if same and same[0].address:
            p = same[0]
            assert p.address is not None
            closed = [x for x in listening.get(t.vmid, []) if not _admits(t.rules, "tcp", x, p.address)]
            ports = closed[:MAX_PER_KIND] or ([PROBE_PORT] if not _admits(t.rules, "tcp", PROBE_PORT, p.address)
                                               else [])
            for port in ports:
                what = "listens there" if port in closed else "a port no rule admits"
                out.append(Probe(p.name, p.vmid, t.name, t.vmid, t.address, port, "dropped",
                                 f"no rule admits it from {p.address} ({what})"))
        tcp = [r for r in t.rules if r.proto == "tcp"]
        port = int(tcp[0].dport.split(",")[0].replace("-", ":").split(":")[0]) if tcp else 22
        for tag in sorted({str(p.tag) for p in other}):
            q = next(p for p in other if str(p.tag) == tag)
            out.append(Probe(q.name, q.vmid, t.name, t.vmid, t.address, port, "dropped",
                             f"across VLANs ({q.tag or 'untagged'} -> {t.tag or 'untagged'})"))
    return out


def probe(backend: LxcBackend, p: Probe) -> Probe:
    """Try the connection from inside `p.src`: open, closed (refused) or filtered (no answer in time)."""
    script = f"exec 3<>/dev/tcp/{p.address}/{p.port}"
    try:
        r = backend.exec(_guest(backend, p.src_vmid), ["timeout", str(PROBE_TIMEOUT), "bash", "-c", script],
                         timeout=PROBE_TIMEOUT + 20)
    except BackendError as e:
        p.result = f"error: {e.message}"
        return p
    if r.returncode == 0:
        p.result = "open"
    elif r.returncode == 124:
        p.result = "filtered"
    elif "refused" in r.stderr:
        p.result = "closed"
    elif r.returncode in (126, 127):
        p.result = "error: the container has no bash or timeout to probe with"
    else:
        p.result = "filtered"  # unreachable: no route, or an ICMP error on the way: nothing answered
    return p


def _guest(backend: LxcBackend, vmid: int) -> Guest:
    return Guest(vmid=vmid, name=str(vmid), node=backend.node, type="lxc", status="running")


def listening_ports(backend: LxcBackend, vmid: int) -> list[int]:
    """TCP ports a container listens on beyond loopback (`ss`, when it has it)."""
    try:
        r = backend.exec(_guest(backend, vmid), ["ss", "-Htln"], timeout=20)
    except BackendError:
        return []
    ports = set()
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            local = parts[3]
            host, _, port = local.rpartition(":")
            if port.isdigit() and not host.startswith(("127.", "[::1]")):
                ports.add(int(port))
    return sorted(ports)


def ipv4_of(backend: LxcBackend, vmid: int) -> str | None:
    proc = subprocess.run(["lxc-info", "-P", str(backend.lxcpath), "-n", str(vmid), "-iH"], capture_output=True,
                          text=True, check=False, timeout=30)
    for word in proc.stdout.split():
        try:
            if ipaddress.ip_address(word).version == 4:
                return word
        except ValueError:
            continue
    return None


def run_probes(strategy: Strategy, backend: LxcBackend, cts: list[Ct], guests: list[Guest],
               extra: Extra | None = None) -> list[Probe]:
    """Probe the running managed containers from each other (all on this host)."""
    running = {g.vmid for g in guests if g.status == "running"}
    seen: list[Seen] = []
    for ct in cts:
        if ct.vmid not in running:
            continue
        conf = backend.get_config(_guest(backend, ct.vmid))
        net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
        seen.append(Seen(ct.name, ct.vmid, net0.get("bridge", ""), net0.get("tag"), ipv4_of(backend, ct.vmid),
                         lxc_rules(strategy, ct.name, extra)))
    with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as pool:
        listening = dict(zip([s.vmid for s in seen], pool.map(lambda s: listening_ports(backend, s.vmid), seen),
                             strict=True))
        probes = plan_probes(seen, seen, listening)
        return list(pool.map(lambda p: probe(backend, p), probes))


def probe_violations(probes: list[Probe]) -> list[Violation]:
    out = []
    for p in probes:
        if p.ok is not False:
            continue
        if p.expect == "answers":
            out.append(Violation(p.dst, p.dst_vmid, "allowed-dropped",
                                 f"port {p.port} does not answer {p.src} though {p.why.removeprefix('admitted: ')} "
                                 f"admits it ({p.result})"))
        elif p.why.startswith("across VLANs"):
            out.append(Violation(p.dst, p.dst_vmid, "cross-vlan-open",
                                 f"{p.src} reaches {p.address}:{p.port} {p.why} ({p.result})"))
        else:
            out.append(Violation(p.dst, p.dst_vmid, "disallowed-open",
                                 f"port {p.port} answers {p.src} though {p.why} ({p.result})"))
    return out


def segment_intruders(backend: LxcBackend, cts: list[Ct], configs: dict[int, dict[str, Any]],
                      container_vlans: set[str]) -> list[Violation]:
    """Interfaces on a container VLAN's segment bridge that are not a managed container's (another
    LXC's container, a hand-made veth): on a host, whatever joins the segment is on the VLAN."""
    out: list[Violation] = []
    ours = {lxc_net.host_veth_name(ct.vmid) for ct in cts}
    links: dict[str, str] = {}
    for ct in cts:
        net0 = lxc_net.parse_net0(str(configs.get(ct.vmid, {}).get("net0", "")))
        plan = plan_net(net0, backend.config.vlan_mode, lxc_net.vlan_filtering(net0.get("bridge", "")))
        if net0.get("tag") in container_vlans and plan.mode == "bridge_per_vlan":
            links[plan.link] = str(net0["tag"])
    for link, tag in sorted(links.items()):
        for port in lxc_net.bridge_ports(link):
            if port not in ours:
                m = re.fullmatch(r"veth(\d+)i\d+", port)
                out.append(Violation(port, int(m.group(1)) if m else None, "unmanaged-on-vlan",
                                     f"interface {port} on {link} (VLAN {tag}) is not one of this installation's "
                                     f"containers"))
    return out


def check_lxc(strategy: Strategy, backend: LxcBackend, cts: list[Ct], configs: dict[int, dict[str, Any]],
              others: list[tuple[str, int, dict[str, Any]]], guests: list[Guest], *, firewall: bool,
              probes: bool = True, extra: Extra | None = None) -> tuple[list[Violation], list[Probe]]:
    """Every violation on the lxc backend (read back, then probed) and the probes made."""
    out = vlan_violations(strategy, cts, configs, others)
    vlans = {str(v) for v in (strategy.container_vlan(c) for c in strategy.containers) if v is not None}
    named = {v.vmid for v in out if v.kind == "unmanaged-on-vlan"}  # by its config already: not twice
    out += [v for v in segment_intruders(backend, cts, configs, vlans) if v.vmid is None or v.vmid not in named]
    done: list[Probe] = []
    if firewall:
        out += firewall_violations(strategy, backend, cts, extra)
        if probes:
            done = run_probes(strategy, backend, cts, guests, extra)
            out += probe_violations(done)
    return out, done
