"""Firewall and VLAN isolation on PVE: desired state, read back, plan, converge, check.

What pveguard keeps (docs/isolation.md has the how-to and the port table):

* a cluster IP set `pveguard-mgmt` holding `network.management.cidr` (empty while it is unset, so a
  rule "from management" admits nobody rather than everybody);
* one security group per role, `pvg-<role>` (PVE allows 18 characters: `[A-Za-z][A-Za-z0-9_-]+`),
  holding the rules from `security.network.allowed_inbound` followed by the role's own ports, derived
  from the container's components (COMPONENT_PORTS), all from the management IP set; its comment carries
  the instance id, and a group of this installation's that no strategy role uses any more is removed
  (its rules, then the group) unless a rule of any guest, node or the datacenter still references it;
* per managed container: guest firewall options `enable: 1`, `policy_in: DROP`, and one enabled rule
  referencing its role's group. Rules an admin added to a guest are left alone.

PVE compiles no rule at all while the datacenter firewall is off (pve-firewall's Firewall.pm returns an
empty ruleset unless the cluster options have `enable`), so guest firewalls only take effect once it is
on. pveguard turns it on only when that cannot lock the admin out (`datacenter_decision`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import queue
import re
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pveguard.backends.inflight import IN_FLIGHT as READ_WORKERS  # per-guest reads in flight at once
from pveguard.errors import ConfigError, PveguardError
from pveguard.strategy.models import Container, Strategy

MGMT_IPSET = "pveguard-mgmt"
# PVE's own IP set: with the datacenter firewall on, each node admits its API (8006), SSH (22), the
# consoles and migration from it (Firewall.pm, "allow standard traffic for management ipset").
PVE_MGMT_IPSET = "management"
GROUP_PREFIX = "pvg-"
GROUP_MAX = 18  # pve-firewall: $max_group_name_length
COMMENT = "pveguard"
# a security group's comment: the instance id marks it as this installation's (older pveguard wrote the
# bare text: such a group the strategy still uses gets the mark, one it no longer uses is left alone)
GROUP_COMMENT = "pveguard role rules"
# the comment prefix of a guest rule pveguard keeps beyond the strategy (security.extra_inbound: the ports a
# migrated service brought); rules with it that are no longer desired are removed, others are the admin's
EXTRA_COMMENT = "pveguard-extra"
LOG_LEVEL = "info"  # guests' log_level_in while the traffic watch is on

# Component (as named in a strategy container's `components`) -> the ports it listens on.
COMPONENT_PORTS: dict[str, tuple[tuple[str, str], ...]] = {
    "grafana": (("tcp", "3000"),),
    "prometheus": (("tcp", "9090"),),
    "alertmanager": (("tcp", "9093"),),
    "node-exporter": (("tcp", "9100"),),
    "loki": (("tcp", "3100"),),
    "influxdb": (("tcp", "8086"),),
    "jenkins": (("tcp", "8080"),),
    "nginx": (("tcp", "80"), ("tcp", "443")),
    "caddy": (("tcp", "80"), ("tcp", "443")),
    "traefik": (("tcp", "80"), ("tcp", "443")),
    "haproxy": (("tcp", "80"), ("tcp", "443")),
}

_INBOUND_RE = re.compile(r"^\s*(tcp|udp)/([0-9][0-9,:-]*)\s+from\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One inbound ACCEPT rule as pveguard writes it (and compares it: comments do not count)."""

    proto: str
    dport: str
    source: str  # "" = any, "+pveguard-mgmt", or a CIDR
    why: str = dataclasses.field(default="", compare=False)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"type": "in", "action": "ACCEPT", "proto": self.proto, "dport": self.dport,
                             "enable": 1, "comment": f"{COMMENT}: {self.why}" if self.why else COMMENT}
        if self.source:
            p["source"] = self.source
        return p

    def text(self) -> str:
        return f"{self.proto}/{self.dport} from {self.source or 'any'}"


def rule_of(pve: dict[str, Any]) -> Rule | None:
    """A rule as PVE lists it, as a Rule when it is an enabled inbound ACCEPT with a port (else None)."""
    if pve.get("type") != "in" or pve.get("action") != "ACCEPT" or str(pve.get("enable", 0)) != "1":
        return None
    return Rule(str(pve.get("proto", "")), str(pve.get("dport", "")), str(pve.get("source", "")))


def parse_inbound(text: str) -> Rule:
    """`tcp/22 from management`, `tcp/443 from any`, `udp/53 from 10.0.0.0/8` -> Rule; ConfigError else."""
    m = _INBOUND_RE.match(text)
    if not m:
        raise ConfigError(f"security.network.allowed_inbound: {text!r} is not '<tcp|udp>/<port> from "
                          f"<management|any|CIDR>'", hint="e.g. 'tcp/22 from management' or 'tcp/443 from any'")
    proto, port, src = m.group(1).lower(), m.group(2).replace("-", ":"), m.group(3)
    if src.lower() == "management":
        source = f"+{MGMT_IPSET}"
    elif src.lower() == "any":
        source = ""
    else:
        try:
            source = str(ipaddress.ip_network(src, strict=False))
        except ValueError:
            raise ConfigError(f"security.network.allowed_inbound: {src!r} in {text!r} is not 'management', "
                              f"'any' or a network like 10.0.0.0/8") from None
    return Rule(proto, port, source, why=text.strip())


def group_name(role: str) -> str:
    """`pvg-<role>`; a role too long for PVE's 18 characters is cut and given a short hash (still unique)."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", role)
    name = GROUP_PREFIX + clean
    if len(name) <= GROUP_MAX:
        return name
    return f"{name[:GROUP_MAX - 5]}-{hashlib.sha1(role.encode()).hexdigest()[:4]}"


def role_rules(strategy: Strategy, c: Container) -> list[Rule]:
    """allowed_inbound, then the ports of the container's components, from the management IP set."""
    out = [parse_inbound(t) for t in strategy.security.network.allowed_inbound]
    for comp in c.components:
        for proto, port in COMPONENT_PORTS.get(comp.strip().lower(), ()):
            r = Rule(proto, port, f"+{MGMT_IPSET}", why=f"{comp} from management")
            if r not in out:
                out.append(r)
    return out


def enforced(strategy: Strategy) -> bool:
    """Firewall desired state is wanted (both switches on; either off turns it off)."""
    return strategy.network.isolation.firewall_rules and strategy.security.network.firewall_rules


# --- desired ------------------------------------------------------------------------------------


@dataclass
class FwDesired:
    mgmt: list[str]  # network.management.cidr, normalized (empty when unset)
    groups: dict[str, list[Rule]]  # group name -> rules in order
    group_of: dict[str, str]  # container name -> group name (only containers with network.firewall)
    # the guests' log_level_in while the traffic watch is on (pve-firewall logs policy drops only with
    # one set); None: left as it is
    log_level_in: str | None = None
    # container name -> its rules beyond the strategy (security.extra_inbound), as guest rules of its own
    guest_rules: dict[str, list[Rule]] = dataclasses.field(default_factory=dict)
    instance: str = ""  # this installation (in the comment of the security groups it creates)

    @property
    def group_comment(self) -> str:
        return f"{GROUP_COMMENT} instance={self.instance}" if self.instance else GROUP_COMMENT


def pve_cidr(text: str) -> str:
    """A network as pve-firewall stores an IP set entry: host bits cleared, a /32 or /128 as a plain address."""
    net = ipaddress.ip_network(text, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def desired_firewall(strategy: Strategy, extra: dict[str, list[Rule]] | None = None,
                     instance: str = "") -> FwDesired:
    """The strategy's firewall, plus `extra` (security.extra_inbound.by_container) on the guests it names;
    `instance` marks the security groups this installation creates as its own."""
    cidr = strategy.network.management.cidr
    mgmt = [pve_cidr(cidr)] if cidr else []
    groups: dict[str, list[Rule]] = {}
    group_of: dict[str, str] = {}
    for c in strategy.containers:
        if not c.network.firewall:
            continue  # the container opts out (net0 firewall=0): its firewall is left as it is
        g = group_name(c.role)
        rules = role_rules(strategy, c)
        for r in rules:
            if r not in groups.setdefault(g, []):
                groups[g].append(r)
        group_of[c.name] = g
    from pveguard.monitor.traffic import enabled as traffic_watch

    guest_rules = {name: list(rules) for name, rules in (extra or {}).items() if name in group_of and rules}
    return FwDesired(mgmt, groups, group_of, LOG_LEVEL if traffic_watch(strategy) else None, guest_rules,
                     instance)


# --- observed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ct:
    """A managed container as the firewall sees it."""

    name: str
    vmid: int
    node: str


@dataclass
class FwObserved:
    cluster_options: dict[str, Any]
    cluster_rules: list[dict[str, Any]]
    ipsets: dict[str, list[str]]  # cluster IP sets: name -> cidrs
    groups: dict[str, list[dict[str, Any]]]  # security group -> its rules as PVE lists them
    guest_options: dict[int, dict[str, Any]]
    guest_rules: dict[int, list[dict[str, Any]]]
    group_comments: dict[str, str] = dataclasses.field(default_factory=dict)  # every security group's comment
    # this installation's security groups the strategy no longer uses -> what still references each:
    # (vmid or None, "CT 105 (name)" / "VM 200" / "node pve1" / "datacenter"); read only when there are any
    refs: dict[str, list[tuple[int | None, str]]] = dataclasses.field(default_factory=dict)


def owns_group(comment: str, instance: str) -> bool:
    """Whether a security group's comment marks it as this installation's (GROUP_COMMENT + instance)."""
    return bool(instance) and comment.startswith(GROUP_COMMENT) and f"instance={instance}" in comment.split()


def legacy_group(comment: str) -> bool:
    """A group an older pveguard made: its comment is GROUP_COMMENT without any instance."""
    return comment.strip() == GROUP_COMMENT


def leftover_groups(seen: FwObserved, wanted: Iterable[str], instance: str) -> list[str]:
    """This installation's `pvg-` groups that the strategy no longer uses."""
    wanted = set(wanted)
    return sorted(g for g, c in seen.group_comments.items()
                  if g.startswith(GROUP_PREFIX) and g not in wanted and owns_group(c, instance))


def group_references(call: Call, groups: Iterable[str],
                     cluster_rules: list[dict[str, Any]]) -> dict[str, list[tuple[int | None, str]]]:
    """Where `groups` are still used: every guest's firewall rules (containers and VMs, anyone's), every
    node's host rules and the datacenter's. PVE deletes a group that rules still reference (Rules.pm
    delete_security_group only refuses a group that has rules), and those rules then match nothing."""
    want = set(groups)
    out: dict[str, list[tuple[int | None, str]]] = {g: [] for g in want}

    def note(rules: Iterable[dict[str, Any]], vmid: int | None, where: str) -> None:
        for r in rules or []:
            if r.get("type") == "group" and r.get("action") in want and (vmid, where) not in out[r["action"]]:
                out[str(r["action"])].append((vmid, where))

    note(cluster_rules, None, "datacenter")
    resources = call("GET", "/cluster/resources", {"type": "vm"}) or []
    nodes = sorted({str(n["node"]) for n in call("GET", "/nodes") or [] if n.get("node")})
    guests = [(str(r["node"]), str(r.get("type")), int(r["vmid"]), str(r.get("name") or ""))
              for r in resources if r.get("type") in ("lxc", "qemu") and r.get("node") and r.get("vmid") is not None]

    def rules_of(path: str) -> list[dict[str, Any]] | str:
        try:
            return list(call("GET", path) or [])
        except PveguardError as exc:  # unknown is not "unused": the groups stay, the note says why
            return exc.message

    def read(item: tuple[str, str, int, str]) -> tuple[int, str, list[dict[str, Any]] | str]:
        node, typ, vmid, name = item
        where = f"{'CT' if typ == 'lxc' else 'VM'} {vmid}" + (f" ({name})" if name else "")
        return vmid, where, rules_of(f"/nodes/{node}/{typ}/{vmid}/firewall/rules")

    def take(rules: list[dict[str, Any]] | str, vmid: int | None, where: str) -> None:
        if isinstance(rules, str):
            for g in out:
                out[g].append((vmid, f"{where}, whose firewall rules could not be read ({rules})"))
        else:
            note(rules, vmid, where)

    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        for vmid, where, rules in pool.map(read, guests):
            take(rules, vmid, where)
        for node, got in zip(nodes, pool.map(lambda n: rules_of(f"/nodes/{n}/firewall/rules"), nodes), strict=True):
            take(got, None, f"node {node}")
    return out


Call = Callable[..., Any]


def firewall_paths(cts: Iterable[Ct]) -> list[str]:
    """The paths observe_firewall reads whatever exists (for a backend that reads them all up front,
    together); an IP set's entries and a group's rules are read after the listing says they exist."""
    return ["/cluster/firewall/options", "/cluster/firewall/rules", "/cluster/firewall/ipset",
            "/cluster/firewall/groups",
            *(f"/nodes/{c.node}/lxc/{c.vmid}/firewall/{w}" for c in cts for w in ("options", "rules"))]


def observe_firewall(call: Call, cts: Iterable[Ct], group_names: Iterable[str],
                     ready: Callable[[str], bool] | None = None, instance: str = "") -> FwObserved:
    """One read per cluster collection and wanted group, two per guest (bounded concurrency).

    The cluster's collections are read one after another (each names what the next reads) while the
    guests' options and rules are read alongside them, each its own call, so no round trip waits for another.
    `ready` says which paths the backend already read up front (`firewall_paths`): those cost no thread.
    With `instance`, this installation's groups the strategy no longer uses are read too, and what still
    references them (`group_references`: every guest's rules, only when there is such a group).
    """
    group_names = list(group_names)
    ready = ready or (lambda _p: False)

    comments: dict[str, str] = {}

    def cluster() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
        options = call("GET", "/cluster/firewall/options") or {}
        rules = call("GET", "/cluster/firewall/rules") or []
        ipsets: dict[str, list[str]] = {}
        for s in call("GET", "/cluster/firewall/ipset") or []:
            if s["name"] in (MGMT_IPSET, PVE_MGMT_IPSET):
                ipsets[s["name"]] = [str(e["cidr"]) for e in call("GET", f"/cluster/firewall/ipset/{s['name']}") or []]
            else:
                ipsets[s["name"]] = []
        comments.update({str(g["group"]): str(g.get("comment") or "")
                         for g in call("GET", "/cluster/firewall/groups") or []})
        gone = [g for g in comments if g.startswith(GROUP_PREFIX) and g not in group_names
                and owns_group(comments[g], instance)]
        groups = {g: list(call("GET", f"/cluster/firewall/groups/{g}") or [])
                  for g in [*group_names, *gone] if g in comments}
        return dict(options), list(rules), ipsets, groups

    def read(item: tuple[Ct, str]) -> Any:
        ct, what = item
        got = call("GET", f"/nodes/{ct.node}/lxc/{ct.vmid}/firewall/{what}")
        return dict(got or {}) if what == "options" else list(got or [])

    cts = list(cts)
    reads = [(c, w) for c in cts for w in ("options", "rules")]
    here = [r for r in reads if ready(f"/nodes/{r[0].node}/lxc/{r[0].vmid}/firewall/{r[1]}")]
    done = set(here)
    rest = [r for r in reads if r not in done] if here else reads
    got = {(c.vmid, w): read((c, w)) for c, w in here}
    if not rest:
        options, rules, ipsets, groups = cluster()
    else:
        with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
            first = pool.submit(cluster)
            got.update(zip(((c.vmid, w) for c, w in rest), pool.map(read, rest), strict=True))
            options, rules, ipsets, groups = first.result()
    seen = FwObserved(options, rules, ipsets, groups, {c.vmid: got[(c.vmid, "options")] for c in cts},
                      {c.vmid: got[(c.vmid, "rules")] for c in cts}, comments)
    gone = leftover_groups(seen, group_names, instance)
    if gone:
        seen.refs = group_references(call, gone, rules)
    return seen


def talking_from(host: str | None) -> str | None:
    """The source address this machine uses to reach `host[:port]` (no packet is sent); None for pvesh."""
    if not host:
        return None
    h, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    h = h.strip("[]") or host
    try:
        info = socket.getaddrinfo(h, int(port or 8006), type=socket.SOCK_DGRAM)[0]
        with socket.socket(info[0], socket.SOCK_DGRAM) as s:
            s.connect(info[4])
            return str(s.getsockname()[0])
    except (OSError, ValueError):
        return None


# --- plan ---------------------------------------------------------------------------------------


@dataclass
class FwChange:
    """One firewall change: `target field: old -> new` (target: ipset/…, group/…, ct/<vmid>, datacenter)."""

    target: str
    name: str
    field: str
    old: str
    new: str
    # what apply does (see _apply_one) and with what; rules are re-read right before writing
    op: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        return f"{self.target} {self.field}: {self.old or '(unset)'} -> {self.new or '(unset)'}"

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "name": self.name, "field": self.field, "old": self.old, "new": self.new}


@dataclass
class FwPlan:
    changes: list[FwChange] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [c.as_dict() for c in self.changes], "notes": list(self.notes)}


def _rules_text(rules: Iterable[Rule]) -> str:
    return "; ".join(r.text() for r in rules)


def datacenter_decision(options: dict[str, Any], cluster_rules: list[dict[str, Any]], mgmt: list[str],
                        source: str | None, local: bool) -> str | None:
    """None when pveguard may turn the datacenter firewall on, else why it will not."""
    if not mgmt:
        return ("network.management.cidr is not set, so pveguard cannot tell which addresses must keep "
                "reaching the nodes' API (8006) and SSH (22)")
    if not local:
        if source is None:
            return "pveguard cannot tell which address it talks to PVE from"
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return f"pveguard talks to PVE from {source}, which is not an IP address"
        if not any(addr in ipaddress.ip_network(n) for n in mgmt):
            return (f"pveguard talks to PVE from {source}, outside network.management.cidr ({', '.join(mgmt)}); "
                    f"turning the firewall on would cut this connection")
    for r in cluster_rules:
        ports = str(r.get("dport", ""))
        if str(r.get("enable", 0)) == "1" and r.get("type") == "in" and r.get("action") in ("DROP", "REJECT") \
                and any(p in re.split(r"[,:]", ports) for p in ("22", "8006")):
            return f"a datacenter rule {r.get('action')}s port {ports}, which would close the nodes' API or SSH"
    return None


def plan_firewall(want: FwDesired, seen: FwObserved, cts: list[Ct], *, source: str | None = None,
                  local: bool = False, going: Iterable[int] = ()) -> FwPlan:
    """What converging the firewall would change. Containers not created yet get theirs after creation.
    `going`: guests the same apply deletes first (their references to a group do not keep it)."""
    out = FwPlan()
    have_mgmt = seen.ipsets.get(MGMT_IPSET)
    if have_mgmt is None:
        out.changes.append(FwChange(f"ipset/{MGMT_IPSET}", MGMT_IPSET, "entries", "(no such IP set)",
                                    ", ".join(want.mgmt) or "(empty)", op="ipset-create"))
    elif sorted(have_mgmt) != sorted(want.mgmt):
        out.changes.append(FwChange(f"ipset/{MGMT_IPSET}", MGMT_IPSET, "entries", ", ".join(sorted(have_mgmt)),
                                    ", ".join(want.mgmt), op="ipset-entries",
                                    data={"add": [c for c in want.mgmt if c not in have_mgmt],
                                          "remove": [c for c in have_mgmt if c not in want.mgmt]}))
    if not want.mgmt:
        out.notes.append("network.management.cidr is not set: the IP set pveguard-mgmt stays empty and rules "
                         "'from management' admit nobody until it is set")
    for g, rules in want.groups.items():
        if g not in seen.groups:
            out.changes.append(FwChange(f"group/{g}", g, "rules", "(no such group)", _rules_text(rules),
                                        op="group-rules", data={"create": True}))
            continue
        comment = seen.group_comments.get(g, "")
        if want.instance and legacy_group(comment):
            # made by a pveguard before groups carried the instance: the strategy uses it, so it is ours
            out.changes.append(FwChange(f"group/{g}", g, "comment", comment, want.group_comment,
                                        op="group-comment"))
        have = [rule_of(r) for r in seen.groups[g]]
        if have != rules:
            out.changes.append(FwChange(f"group/{g}", g, "rules",
                                        _rules_text(r for r in have if r is not None) or "(none)",
                                        _rules_text(rules), op="group-rules"))
    for ct in cts:
        if ct.name not in want.group_of:
            continue
        target = f"ct/{ct.vmid}"
        opts = seen.guest_options.get(ct.vmid, {})
        if str(opts.get("enable", 0)) != "1":
            out.changes.append(FwChange(target, ct.name, "firewall", "off", "on", op="options",
                                        data={"node": ct.node, "vmid": ct.vmid}))
        if opts.get("policy_in") != "DROP":
            out.changes.append(FwChange(target, ct.name, "policy_in", str(opts.get("policy_in", "")), "DROP",
                                        op="options", data={"node": ct.node, "vmid": ct.vmid}))
        if want.log_level_in and str(opts.get("log_level_in") or "nolog") == "nolog":
            out.changes.append(FwChange(target, ct.name, "log_level_in", str(opts.get("log_level_in", "")),
                                        want.log_level_in, op="options", data={"node": ct.node, "vmid": ct.vmid}))
        group = want.group_of.get(ct.name)
        on_guest = seen.guest_rules.get(ct.vmid, [])
        if group is not None and not _has_group(on_guest, group):
            out.changes.append(FwChange(target, ct.name, "rules", _guest_rules_text(on_guest), f"group {group}",
                                        op="guest-group", data={"node": ct.node, "vmid": ct.vmid, "group": group}))
        wanted = want.guest_rules.get(ct.name, [])
        ours = [r for r in on_guest if _is_extra(r)]
        have_extra: list[Rule] = [x for x in map(rule_of, ours) if x is not None]
        add = [r for r in wanted if r not in have_extra]
        remove = [_key(r) for r in ours if rule_of(r) is None or rule_of(r) not in wanted]
        if add or remove:
            out.changes.append(FwChange(target, ct.name, "extra rules", _rules_text(have_extra) or "(none)",
                                        _rules_text(wanted) or "(none)", op="guest-extra",
                                        data={"node": ct.node, "vmid": ct.vmid,
                                              "add": [{**dataclasses.asdict(r)} for r in add], "remove": remove}))
    _plan_leftovers(out, want, seen, set(going))
    if str(seen.cluster_options.get("enable", 0)) != "1":
        why = datacenter_decision(seen.cluster_options, seen.cluster_rules, want.mgmt, source, local)
        if why is None:
            missing = [c for c in want.mgmt if c not in seen.ipsets.get(PVE_MGMT_IPSET, [])]
            if missing:
                out.changes.append(FwChange(f"ipset/{PVE_MGMT_IPSET}", PVE_MGMT_IPSET, "entries",
                                            ", ".join(seen.ipsets.get(PVE_MGMT_IPSET, [])) or "(none)",
                                            ", ".join([*seen.ipsets.get(PVE_MGMT_IPSET, []), *missing]),
                                            op="pve-mgmt", data={"add": missing,
                                                                 "exists": PVE_MGMT_IPSET in seen.ipsets}))
            out.changes.append(FwChange("datacenter", "datacenter", "firewall", "off", "on", op="datacenter"))
        else:
            out.notes.append("the datacenter firewall is off, so no guest firewall rule takes effect; pveguard "
                             f"will not turn it on: {why}. Turn it on at Datacenter > Firewall > Options once "
                             f"the nodes' API and SSH stay reachable")
    return out


def _plan_leftovers(out: FwPlan, want: FwDesired, seen: FwObserved, going: set[int]) -> None:
    """This installation's groups that no strategy role uses any more go, unless a rule still uses them;
    `pvg-` groups without any instance mark (an older pveguard's, or anyone's) are left alone."""
    for g in leftover_groups(seen, want.groups, want.instance):
        if g not in seen.refs:
            continue  # what references it was not read (observe_firewall without the instance: --only)
        users = [where for vmid, where in seen.refs.get(g, []) if vmid is None or vmid not in going]
        if users:
            out.notes.append(f"security group {g} is no longer used by the strategy but is kept: still referenced "
                             f"by {', '.join(users)}; remove the 'group {g}' rule there (or 'apply --prune' the "
                             f"container), then apply again")
            continue
        have = [r for r in (rule_of(x) for x in seen.groups.get(g, [])) if r is not None]
        out.changes.append(FwChange(f"group/{g}", g, "group", _rules_text(have) or "(no rules)", "(none)",
                                    op="group-remove"))
    for g in sorted(seen.group_comments):
        if g.startswith(GROUP_PREFIX) and g not in want.groups and legacy_group(seen.group_comments[g]):
            out.notes.append(f"security group {g} is no longer used by the strategy; it carries no installation's "
                             f"mark (an older pveguard made it), so it is left alone: delete it at Datacenter > "
                             f"Firewall > Security Group once no other pveguard installation uses it")


def _is_extra(pve: dict[str, Any]) -> bool:
    return str(pve.get("comment") or "").startswith(EXTRA_COMMENT)


def _key(pve: dict[str, Any]) -> dict[str, str]:
    return {k: str(pve.get(k, "")) for k in ("proto", "dport", "source")}


def extra_params(r: Rule) -> dict[str, Any]:
    """A guest rule beyond the strategy as pveguard writes it (its comment marks it as pveguard's)."""
    return {**r.params(), "comment": f"{EXTRA_COMMENT}: {r.why}" if r.why else EXTRA_COMMENT}


def _has_group(rules: list[dict[str, Any]], group: str) -> bool:
    return any(r.get("type") == "group" and r.get("action") == group and str(r.get("enable", 0)) == "1"
               for r in rules)


def _guest_rules_text(rules: list[dict[str, Any]]) -> str:
    parts = [f"{'group ' if r.get('type') == 'group' else ''}{r.get('action')}"
             f"{'' if str(r.get('enable', 0)) == '1' else ' (disabled)'}" for r in rules]
    return "; ".join(parts) or "(none)"


# --- apply --------------------------------------------------------------------------------------


Record = Callable[..., None]


def converge(call: Call, plan: FwPlan, want: FwDesired, record: Record) -> list[str]:
    """Carry out the firewall changes in order (IP sets, groups, guests, datacenter last), each with its
    intent before and result after (`record(step, target, name, result|None, **details)`). Returns texts.

    The guests' own changes (options, their group rule) touch one guest's firewall file each, so
    different guests are written READ_WORKERS at a time (a guest's own changes stay in order); every
    ledger record is made in the calling thread. After apply created 50 containers that is 200 calls:
    4 s one after another at 20 ms a round trip.
    """
    units: list[tuple[FwChange, list[FwChange]]] = []
    handled: set[tuple[str, str]] = set()
    for c in plan.changes:
        key = (c.target, c.op)
        if key in handled:
            continue  # one options write carries both enable and policy_in
        handled.add(key)
        units.append((c, [x for x in plan.changes if (x.target, x.op) == key]))
    done: list[str] = []
    i = 0
    while i < len(units):
        j = i
        while j < len(units) and units[j][0].target.startswith("ct/"):
            j += 1
        if j - i > 1:
            _converge_guests(call, units[i:j], want, record, done)
            i = j
            continue
        c, same = units[i]
        details = _details(same)
        record("firewall", c.target, c.name, None, **details)
        _apply_one(call, c, want)
        record("firewall", c.target, c.name, "ok", **details)
        done.extend(x.text() for x in same)
        i += 1
    return done


def _details(same: list[FwChange]) -> dict[str, Any]:
    return {"before": {x.field: x.old for x in same}, "after": {x.field: x.new for x in same}}


def _converge_guests(call: Call, units: list[tuple[FwChange, list[FwChange]]], want: FwDesired,
                     record: Record, done: list[str]) -> None:
    """Guests' changes, guests in parallel. Every record is made here, in the calling thread: a worker
    asks for its change's intent and waits until it is written before its request, then reports the
    result. On a failure the other guests finish, then the first error is raised (its intent is left
    open for the caller to close as failed)."""
    by_target: dict[str, list[tuple[FwChange, list[FwChange]]]] = {}
    for u in units:
        by_target.setdefault(u[0].target, []).append(u)
    events: queue.Queue[tuple[str, FwChange, list[FwChange], Any]] = queue.Queue()

    def run(todo: list[tuple[FwChange, list[FwChange]]]) -> None:
        for c, same in todo:
            recorded = threading.Event()
            events.put(("intent", c, same, recorded))
            while not recorded.wait(0.1):
                if abort.is_set():  # the calling thread stopped (Ctrl-C, a ledger error): no more requests
                    return
            try:
                _apply_one(call, c, want)
            except BaseException as exc:
                events.put(("error", c, same, exc))
                return
            events.put(("ok", c, same, None))
        events.put(("end", todo[0][0], [], None))

    abort = threading.Event()
    first: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(by_target)))
    try:
        for todo in by_target.values():
            pool.submit(run, todo)
        left = len(by_target)
        while left:
            kind, c, same, extra = events.get()
            if kind == "intent":
                record("firewall", c.target, c.name, None, **_details(same))
                extra.set()
            elif kind == "ok":
                record("firewall", c.target, c.name, "ok", **_details(same))
                done.extend(x.text() for x in same)
            else:
                left -= 1
                if kind == "error" and first is None:
                    first = extra
    finally:
        abort.set()
        pool.shutdown(wait=False, cancel_futures=True)
    if first is not None:
        raise first


def _apply_one(call: Call, c: FwChange, want: FwDesired) -> None:
    if c.op == "ipset-create":
        call("POST", "/cluster/firewall/ipset", {"name": MGMT_IPSET, "comment": "pveguard: network.management"})
        for cidr in want.mgmt:
            call("POST", f"/cluster/firewall/ipset/{MGMT_IPSET}", {"cidr": cidr})
    elif c.op == "ipset-entries":
        for cidr in c.data["add"]:
            call("POST", f"/cluster/firewall/ipset/{MGMT_IPSET}", {"cidr": cidr})
        for cidr in c.data["remove"]:
            # a CIDR's '/' would split the path: PVE takes the entry as one %2F-escaped segment
            call("DELETE", f"/cluster/firewall/ipset/{MGMT_IPSET}/{quote(cidr, safe='')}")
    elif c.op == "group-rules":
        if c.data.get("create"):
            call("POST", "/cluster/firewall/groups", {"group": c.name, "comment": want.group_comment})
        _replace_rules(call, f"/cluster/firewall/groups/{c.name}", want.groups[c.name])
    elif c.op == "group-comment":
        # Groups.pm: 'rename' set to the group's own name updates only its comment
        call("POST", "/cluster/firewall/groups", {"group": c.name, "rename": c.name, "comment": want.group_comment})
    elif c.op == "group-remove":
        # PVE deletes only an empty group: its rules go first (last first, each with the digest just listed)
        base = f"/cluster/firewall/groups/{c.name}"
        while have := call("GET", base) or []:
            call("DELETE", f"{base}/{have[-1]['pos']}", {"digest": have[-1]["digest"]})
        call("DELETE", base)
    elif c.op == "options":
        base = f"/nodes/{c.data['node']}/lxc/{c.data['vmid']}/firewall/options"
        current = call("GET", base) or {}
        digest = current.get("digest")
        params: dict[str, Any] = {"enable": 1, "policy_in": "DROP", **({"digest": digest} if digest else {})}
        if want.log_level_in and str(current.get("log_level_in") or "nolog") == "nolog":
            params["log_level_in"] = want.log_level_in
        call("PUT", base, params)
    elif c.op == "guest-group":
        base = f"/nodes/{c.data['node']}/lxc/{c.data['vmid']}/firewall/rules"
        rules = call("GET", base) or []
        for r in rules:
            if r.get("type") == "group" and r.get("action") == c.data["group"]:
                # there but disabled: enable it where it is
                call("PUT", f"{base}/{r['pos']}", {"enable": 1, "digest": r["digest"]})
                return
        # PVE puts a new rule first (create_rule unshifts), ahead of the admin's own
        call("POST", base, {"type": "group", "action": c.data["group"], "enable": 1, "comment": COMMENT})
    elif c.op == "guest-extra":
        base = f"/nodes/{c.data['node']}/lxc/{c.data['vmid']}/firewall/rules"
        for key in c.data["remove"]:
            # positions shift with each delete: read again and delete by the digest just listed
            rules = call("GET", base) or []
            found = next((r for r in rules if _is_extra(r) and _key(r) == key), None)
            if found is not None:
                call("DELETE", f"{base}/{found['pos']}", {"digest": found["digest"]})
        for r in reversed(c.data["add"]):
            call("POST", base, extra_params(Rule(**r)))
    elif c.op == "pve-mgmt":
        if not c.data["exists"]:
            call("POST", "/cluster/firewall/ipset", {"name": PVE_MGMT_IPSET})
        for cidr in c.data["add"]:
            call("POST", f"/cluster/firewall/ipset/{PVE_MGMT_IPSET}",
                 {"cidr": cidr, "comment": "pveguard: network.management"})
    elif c.op == "datacenter":
        digest = (call("GET", "/cluster/firewall/options") or {}).get("digest")
        call("PUT", "/cluster/firewall/options", {"enable": 1, **({"digest": digest} if digest else {})})


def _replace_rules(call: Call, base: str, rules: list[Rule]) -> None:
    """The group's rules become exactly `rules`, never fewer than either set meanwhile: the new ones are
    created last-first (PVE puts each new rule first, so they end up on top in order), then the old ones
    below them go, last first, each deleted with the digest it was listed with."""
    for r in reversed(rules):
        call("POST", base, r.params())
    while True:
        have = call("GET", base) or []
        if len(have) <= len(rules):
            break
        last = have[-1]
        call("DELETE", f"{base}/{last['pos']}", {"digest": last["digest"]})


# --- isolation check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    name: str
    vmid: int | None
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vmid": self.vmid, "kind": self.kind, "detail": self.detail}


def check(strategy: Strategy, want: FwDesired, seen: FwObserved, cts: list[Ct],
          configs: dict[int, dict[str, Any]], others: list[tuple[str, int, dict[str, Any]]]) -> list[Violation]:
    """Every way the managed containers are not isolated as the strategy says.

    `configs`: managed vmid -> its PVE config; `others`: (name, vmid, config) of every other container.
    """
    from pveguard.provision.desired import parse_propstring

    out: list[Violation] = []
    if str(seen.cluster_options.get("enable", 0)) != "1":
        out.append(Violation("datacenter", None, "datacenter-firewall-off",
                             "the datacenter firewall is off: no guest firewall rule takes effect"))
    out += vlan_violations(strategy, cts, configs, [])
    for ct in cts:
        net = parse_propstring(str(configs.get(ct.vmid, {}).get("net0", "")))
        if ct.name not in want.group_of:
            continue  # network.firewall: false -- only its VLAN is checked
        if net.get("firewall") not in ("1", "on", "yes", "true"):
            out.append(Violation(ct.name, ct.vmid, "net-firewall-off", "net0 has firewall=0"))
        opts = seen.guest_options.get(ct.vmid, {})
        if str(opts.get("enable", 0)) != "1":
            out.append(Violation(ct.name, ct.vmid, "firewall-off", "the guest firewall is off"))
        policy = str(opts.get("policy_in") or "DROP")  # PVE's default for a guest's input policy
        if policy != "DROP":
            out.append(Violation(ct.name, ct.vmid, "policy", f"policy_in is {policy}, not DROP"))
        g = want.group_of[ct.name]
        if not _has_group(seen.guest_rules.get(ct.vmid, []), g):
            out.append(Violation(ct.name, ct.vmid, "rule-missing", f"no enabled rule for security group {g}"))
        have = [rule_of(r) for r in seen.groups.get(g, [])]
        for r in [r for r in want.groups.get(g, []) if r not in have]:
            out.append(Violation(ct.name, ct.vmid, "rule-missing", f"security group {g} lacks {r.text()}"))
        extra = [rule_of(r) for r in seen.guest_rules.get(ct.vmid, []) if _is_extra(r)]
        for r in [r for r in want.guest_rules.get(ct.name, []) if r not in extra]:
            out.append(Violation(ct.name, ct.vmid, "rule-missing", f"its guest rules lack {r.text()} ({r.why})"))
    return out + vlan_violations(strategy, [], {}, others)


def vlan_violations(strategy: Strategy, cts: list[Ct], configs: dict[int, dict[str, Any]],
                    others: list[tuple[str, int, dict[str, Any]]]) -> list[Violation]:
    """The VLAN part of the check, on both backends: each managed container's net0 tag against the strategy,
    and other containers on a container VLAN (nothing when the strategy wants no VLANs)."""
    from pveguard.provision.desired import parse_propstring

    out: list[Violation] = []
    mgmt_bridge, mgmt_vlan = strategy.network.management.bridge, strategy.network.management.vlan
    by_name = {c.name: c for c in strategy.containers}
    for ct in cts:
        c = by_name.get(ct.name)
        net = parse_propstring(str(configs.get(ct.vmid, {}).get("net0", "")))
        tag = net.get("tag")
        if c is None:
            continue
        want_tag = strategy.container_vlan(c)
        if want_tag is None:
            continue  # VLANs not wanted (security.network.vlans / separate_vlans false)
        if tag is None:
            what = " on the management bridge" if net.get("bridge") == mgmt_bridge else ""
            out.append(Violation(ct.name, ct.vmid, "untagged", f"net0 has no VLAN tag{what} (wants {want_tag})"))
        elif tag != str(want_tag):
            out.append(Violation(ct.name, ct.vmid, "wrong-vlan", f"net0 is on VLAN {tag}, wants {want_tag}"))
        elif mgmt_vlan is not None and tag == str(mgmt_vlan):
            out.append(Violation(ct.name, ct.vmid, "management-vlan", f"net0 is on the management VLAN {tag}"))
    container_vlans = {str(v) for v in (strategy.container_vlan(c) for c in strategy.containers) if v is not None}
    for name, vmid, cfg in others:
        net = parse_propstring(str(cfg.get("net0", "")))
        if net.get("tag") in container_vlans:
            out.append(Violation(name, vmid, "unmanaged-on-vlan",
                                 f"not managed by this installation but on the container VLAN {net['tag']}"))
    return out
