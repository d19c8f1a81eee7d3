"""Firewall isolation on a plain-LXC host: one nftables `bridge` table per container bridge.

The PVE firewall's job (guest `policy_in: DROP` plus its role's rules, VLANs kept apart) done with
nftables on the host, per container interface (the host-side veth, `veth<vmid>i0`):

* every frame leaving the host towards a container (`forward`: bridged from another port of its
  segment, `output`: routed or sent by the host) goes through `in_<vmid>`: non-IP frames (ARP) and
  replies pass, then the container's allowed rules, then everything else is dropped;
* every frame a container sends (`forward` / `input`) goes through `out_<vmid>`: on pveguard's own
  network (lxc_gateway) a packet for another segment of the pool is dropped (VLANs stay apart),
  everything else is remembered as a flow so its replies pass `in_*`;
* every drop counts into the named counter `drop_<vmid>` of the table, so `nft -j list counters`
  (and `dropped_counters()`) give the drops per container.

Replies are recognised without conntrack (the `bridge` family has none without the
nf_conntrack_bridge module, which many kernels lack): a flow a container opens, or that an allowed
rule lets in, is written into the dynamic sets `flows4` / `flows6` reversed, and a packet matching
one passes as a reply. A DHCP answer (udp 67 -> 68) and ICMP errors / echo replies pass as well.

What each container admits lives next to its config, `<lxcpath>/<vmid>/firewall.json`
(`write_policy`); the table of a bridge is rendered from the policy files of every container on that
bridge and replaced as a whole with one `nft -f` (atomic). It is (re)made by apply, by the backend
on start and destroy, and by the container's `lxc.hook.pre-start` (`restore_command`), so it comes
back after a reboot like the NAT table. Right after writing, the table is listed and the listing
kept under the run directory, so a table changed by hand shows as drift (`table_state`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pveguard.backends import lxc_net
from pveguard.errors import BackendError, ConfigError

TABLE_PREFIX = "pveguard-iso-"
POLICY_FILE = "firewall.json"
FLOW_TIMEOUT = "1d"
FLOW_SIZE = 65536
# ICMP that is an answer or an error about a flow (what conntrack's `related` would admit).
ICMP_REPLIES = "echo-reply, destination-unreachable, time-exceeded, parameter-problem"
ICMP6_PASS = ("echo-reply, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
              "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert")


# --- pure ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NftRule:
    """One inbound allow: protocol, ports in PVE's syntax (`22`, `80,443`, `1000:2000`), source ("" = any)."""

    proto: str
    dport: str
    source: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"proto": self.proto, "dport": self.dport, "source": self.source}

    def text(self) -> str:
        return f"{self.proto}/{self.dport} from {self.source or 'any'}"


@dataclass
class Entry:
    """A container's part of its bridge's table."""

    vmid: int
    rules: list[NftRule] = field(default_factory=list)
    segment: str | None = None  # its segment of pveguard's own network (cross-VLAN drops), else None
    pool: str | None = None

    @property
    def veth(self) -> str:
        return lxc_net.host_veth_name(self.vmid)


def table_name(bridge: str) -> str:
    return f"{TABLE_PREFIX}{bridge}"


def counter_name(vmid: int) -> str:
    return f"drop_{vmid}"


def nft_ports(dport: str) -> str:
    """PVE's port list (`22`, `80,443`, `1000:2000`, `1000-2000`) in nft's syntax; ConfigError when it is not one."""
    parts = []
    for part in dport.split(","):
        lo, sep, hi = part.replace("-", ":").partition(":")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError(f"port {dport!r} is not a port list like 22, 80,443 or 1000:2000") from None
        if not (1 <= a <= 65535 and 1 <= b <= 65535 and a <= b):
            raise ConfigError(f"port {dport!r} is outside 1-65535 (or a range runs backwards)")
        parts.append(str(a) if a == b else f"{a}-{b}")
    return parts[0] if len(parts) == 1 else "{ " + ", ".join(parts) + " }"


def port_allowed(dport: str, port: int) -> bool:
    """Whether `port` is in PVE's port list `dport`."""
    for part in dport.split(","):
        lo, sep, hi = part.replace("-", ":").partition(":")
        with contextlib.suppress(ValueError):
            if int(lo) <= port <= (int(hi) if sep else int(lo)):
                return True
    return False


def _flow(v: str, reverse: bool) -> str:
    """The set key of a packet's flow; `reverse` keys it as its reply will look."""
    a, b = ("daddr", "saddr") if reverse else ("saddr", "daddr")
    pa, pb = ("dport", "sport") if reverse else ("sport", "dport")
    return f"meta l4proto . {v} {a} . th {pa} . {v} {b} . th {pb}"


def _allow(rule: NftRule) -> list[str]:
    """The nft lines admitting `rule` into a container (both address families when the source is any)."""
    ports = nft_ports(rule.dport)
    out = []
    if rule.source:
        net = ipaddress.ip_network(rule.source, strict=False)
        families = [("ip" if net.version == 4 else "ip6", f"{'ip' if net.version == 4 else 'ip6'} saddr {net} ")]
    else:
        families = [("ip", "ether type ip "), ("ip6", "ether type ip6 ")]
    for v, match in families:
        sets = "flows4" if v == "ip" else "flows6"
        out.append(f"{match}{rule.proto} dport {ports} update @{sets} {{ {_flow(v, True)} }} accept")
    return out


def render(bridge: str, entries: list[Entry], chains: Iterable[str] = (), counters: Iterable[str] = ()) -> str:
    """One nft transaction that makes the bridge's table what `entries` say.

    It keeps what traffic made: the table, its counters and its flow sets are declared (a no-op when
    they exist), every chain is flushed and filled again, and the chains and counters of containers
    that left (`chains` / `counters`: what the live table has) are deleted. So rewriting the table
    when another container starts neither resets a container's drop count nor forgets the flows
    whose replies are still on their way.
    """
    table = table_name(bridge)
    decl, rules = _parts(entries)
    want_chains = [c for c, _ in decl["chains"]]
    want_counters = decl["counters"]
    lines = [f"table bridge {table} {{", f'\tcomment "managed-by: pveguard: isolation for bridge {bridge}"']
    lines += [f"\tcounter {c} {{ }}" for c in want_counters]
    for name, addr in (("flows4", "ipv4_addr"), ("flows6", "ipv6_addr")):
        lines.append(f"\tset {name} {{ type inet_proto . {addr} . inet_service . {addr} . inet_service; "
                     f"flags dynamic,timeout; timeout {FLOW_TIMEOUT}; size {FLOW_SIZE}; }}")
    lines += [f"\tchain {c} {{ {hook} }}" if hook else f"\tchain {c} {{ }}" for c, hook in decl["chains"]]
    lines.append("}")
    gone = sorted(set(chains) - set(want_chains))
    lines += [f"flush chain bridge {table} {c}" for c in [*want_chains, *gone]]
    lines += [f"delete chain bridge {table} {c}" for c in gone]
    lines += [f"delete counter bridge {table} {c}" for c in sorted(set(counters) - set(want_counters))]
    lines += [f"add rule bridge {table} {c} {r}" for c, r in rules]
    return "\n".join(lines) + "\n"


def render_fresh(bridge: str, entries: list[Entry]) -> str:
    """The table made anew (its counters and flows start empty): when the incremental write is refused."""
    table = table_name(bridge)
    return f"table bridge {table}\ndelete table bridge {table}\n" + render(bridge, entries)


def digest_of(entries: list[Entry]) -> str:
    """What the table should hold, in 16 hex digits (kept with the listing: `table_state`)."""
    decl, rules = _parts(entries)
    text = json.dumps([decl, rules], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parts(entries: list[Entry]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(declarations: counters and chains with their hook, rules as (chain, rule))."""
    entries = sorted(entries, key=lambda e: e.vmid)
    chains: list[tuple[str, str]] = [(h, f"type filter hook {h} priority filter; policy accept;")
                                     for h in ("forward", "input", "output")]
    rules: list[tuple[str, str]] = []
    ins = ", ".join(f'"{e.veth}" : jump in_{e.vmid}' for e in entries)
    outs = ", ".join(f'"{e.veth}" : jump out_{e.vmid}' for e in entries)
    for hook, to_ct, from_ct in (("forward", True, True), ("input", False, True), ("output", True, False)):
        if from_ct and entries:
            rules.append((hook, f"iifname vmap {{ {outs} }}"))
        if to_ct and entries:
            rules.append((hook, f"oifname vmap {{ {ins} }}"))
    for e in entries:
        chains += [(f"out_{e.vmid}", ""), (f"in_{e.vmid}", "")]
        count = f'counter name "{counter_name(e.vmid)}" drop'
        out, inn = f"out_{e.vmid}", f"in_{e.vmid}"
        if e.segment and e.pool:
            rules.append((out, f"ip daddr {e.pool} ip daddr != {e.segment} {count}"))
        rules += [(out, f"ether type ip meta l4proto {{ tcp, udp }} update @flows4 {{ {_flow('ip', True)} }}"),
                  (out, f"ether type ip6 meta l4proto {{ tcp, udp }} update @flows6 {{ {_flow('ip6', True)} }}"),
                  (inn, "ether type != { ip, ip6 } accept"),
                  (inn, f"ether type ip meta l4proto {{ tcp, udp }} {_flow('ip', False)} @flows4 accept"),
                  (inn, f"ether type ip6 meta l4proto {{ tcp, udp }} {_flow('ip6', False)} @flows6 accept")]
        if e.segment and e.pool:
            rules.append((inn, f"ip saddr {e.pool} ip saddr != {e.segment} {count}"))
        rules += [(inn, "udp sport 67 udp dport 68 accept"),
                  (inn, f"icmp type {{ {ICMP_REPLIES} }} accept"),
                  (inn, f"icmpv6 type {{ {ICMP6_PASS} }} accept")]
        rules += [(inn, line) for r in e.rules for line in _allow(r)]
        rules.append((inn, count))
    return {"counters": [counter_name(e.vmid) for e in entries], "chains": chains}, rules


def names_in(listing: str) -> tuple[list[str], list[str]]:
    """(chains, counters) a table listing declares."""
    return (re.findall(r"^\s*chain (\S+) \{", listing, re.M), re.findall(r"^\s*counter (\S+) \{", listing, re.M))


def policy_of(data: Any) -> list[NftRule] | None:
    """A policy file's rules (None when the file says nothing usable)."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        return None
    out = []
    for r in data["rules"]:
        if isinstance(r, dict) and r.get("proto") in ("tcp", "udp") and isinstance(r.get("dport"), str):
            out.append(NftRule(str(r["proto"]), str(r["dport"]), str(r.get("source") or "")))
    return out


def normalize(listing: str) -> str:
    """A table listing without what traffic changes: counter values and the flow sets' elements."""
    out: list[str] = []
    skipping = False
    for line in listing.splitlines():
        s = line.strip()
        if skipping:
            if s.endswith("}"):
                skipping = False
            continue
        if s.startswith("elements = {"):
            skipping = not s.endswith("}")
            continue
        if re.fullmatch(r"packets \d+ bytes \d+", s):
            continue
        out.append(re.sub(r" counter packets \d+ bytes \d+", " counter", line.rstrip()))
    return "\n".join(line for line in out if line.strip()) + "\n"


def chain_block(listing: str, chain: str) -> str | None:
    """The text of `chain NAME { ... }` in a listing, None when it is not there."""
    m = re.search(rf"^\s*chain {re.escape(chain)} {{\n(.*?)^\s*}}", listing, re.S | re.M)
    return m.group(1) if m else None


# --- host I/O -----------------------------------------------------------------------------------


def _nft(argv: list[str], what: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["nft", *argv], capture_output=True, text=True, input=input, check=False, timeout=60)
    except FileNotFoundError:
        raise BackendError(f"nft is not installed; it is needed to {what}", hint="apt-get install nftables") from None
    if check and proc.returncode != 0:
        raise BackendError(f"cannot {what}: {(proc.stderr or proc.stdout).strip()}",
                           hint="pveguard needs root (CAP_NET_ADMIN) for its firewall tables")
    return proc


def policy_path(lxcpath: Path, vmid: int) -> Path:
    return lxcpath / str(vmid) / POLICY_FILE


def read_policy(lxcpath: Path, vmid: int) -> list[NftRule] | None:
    """The rules a container admits, None when it has no policy (pveguard keeps no firewall for it)."""
    try:
        return policy_of(json.loads(policy_path(lxcpath, vmid).read_text()))
    except (OSError, ValueError):
        return None


def write_policy(lxcpath: Path, vmid: int, rules: list[NftRule] | None) -> None:
    path = policy_path(lxcpath, vmid)
    if rules is None:
        path.unlink(missing_ok=True)
        return
    for r in rules:
        nft_ports(r.dport)  # refuse a port list nft would not take, before anything is written
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "rules": [r.as_dict() for r in rules]}, indent=1) + "\n")
    tmp.replace(path)


def entries_of(lxcpath: Path, bridge: str, segment_of: Any = None) -> list[Entry]:
    """Every container in `lxcpath` on `bridge` with a policy. `segment_of(tag) -> (segment, pool) | None`."""
    out: list[Entry] = []
    if not lxcpath.is_dir():
        return out
    for d in sorted(p for p in lxcpath.iterdir() if p.name.isdigit()):
        rules = read_policy(lxcpath, int(d.name))
        if rules is None:
            continue
        try:
            meta = json.loads((d / "pveguard.json").read_text())
        except (OSError, ValueError):
            continue
        net0 = lxc_net.parse_net0(str(meta.get("config", {}).get("net0", "")))
        if net0.get("bridge") != bridge:
            continue
        seg = segment_of(int(net0["tag"]) if net0.get("tag") else None) if segment_of else None
        out.append(Entry(int(d.name), rules, *(seg or (None, None))))
    return out


def snapshot_path(run_dir: Path, bridge: str) -> Path:
    return run_dir / f"{table_name(bridge)}.nft"


def listing(bridge: str) -> str | None:
    """`nft list table bridge pveguard-iso-<bridge>`, None when there is no such table (or no nft)."""
    try:
        proc = _nft(["list", "table", "bridge", table_name(bridge)], "read the isolation table", check=False)
    except BackendError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def apply_table(bridge: str, entries: list[Entry], run_dir: Path) -> None:
    """Make the bridge's table exactly what `entries` say (none: no table), and keep its listing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f".{table_name(bridge)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        snap = snapshot_path(run_dir, bridge)
        live = listing(bridge)
        if not entries:
            if live is not None:
                _nft(["delete", "table", "bridge", table_name(bridge)], f"remove the isolation table of {bridge}")
            snap.unlink(missing_ok=True)
            return
        what = f"write the isolation table of {bridge} (nftables)"
        try:
            _nft(["-f", "-"], what, input=render(bridge, entries, *names_in(live or "")))
        except BackendError:
            if live is None:
                raise
            _nft(["-f", "-"], what, input=render_fresh(bridge, entries))  # changed by hand beyond a rewrite
        text = listing(bridge)
        if text is not None:
            snap.write_text(f"# digest {digest_of(entries)}\n" + normalize(text))


def table_state(bridge: str, entries: list[Entry], run_dir: Path) -> str | None:
    """None when the live table is what `entries` render to, else what is wrong with it."""
    live = listing(bridge)
    if not entries:
        return "present but no container on it has rules" if live is not None else None
    if live is None:
        return "missing"
    try:
        head, _, snap = snapshot_path(run_dir, bridge).read_text().partition("\n")
    except OSError:
        return "not written by this boot's pveguard (no snapshot)"
    if head != f"# digest {digest_of(entries)}":
        return "out of date"
    return None if normalize(live) == snap else "changed by hand"


def chains_present(bridge: str, vmid: int) -> tuple[bool, bool]:
    """(in_<vmid> with its final counted drop, its veth in the jump maps) in the live table."""
    live = listing(bridge) or ""
    block = chain_block(live, f"in_{vmid}") or ""
    has_drop = f'counter name "{counter_name(vmid)}" drop' in block
    veth = lxc_net.host_veth_name(vmid)
    return has_drop, f'"{veth}" : jump in_{vmid}' in live and f'"{veth}" : jump out_{vmid}' in live


def dropped_counters() -> dict[int, int]:
    """Packets dropped per container (vmid -> packets) by every pveguard isolation table on this host."""
    try:
        proc = _nft(["-j", "list", "counters"], "read the drop counters", check=False)
    except BackendError:
        return {}
    if proc.returncode != 0:
        return {}
    try:
        items = json.loads(proc.stdout).get("nftables", [])
    except ValueError:
        return {}
    out: dict[int, int] = {}
    for item in items:
        c = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(c, dict) or not str(c.get("table", "")).startswith(TABLE_PREFIX):
            continue
        m = re.fullmatch(r"drop_(\d+)", str(c.get("name", "")))
        if m:
            out[int(m.group(1))] = out.get(int(m.group(1)), 0) + int(c.get("packets", 0))
    return out


def restore_command(lxcpath: Path, bridge: str, pool: str | None, run_dir: Path) -> str:
    """The pre-start hook that re-renders the bridge's table with this very pveguard."""
    import pveguard

    code = Path(pveguard.__file__).resolve().parent.parent
    argv = ["env", f"PYTHONPATH={code}", sys.executable, "-m", "pveguard.backends.lxc_isolation", "restore",
            str(lxcpath), bridge, pool or "-", str(run_dir)]
    return " ".join(shlex.quote(a) for a in argv)


def segment_lookup(pool: str | None) -> Any:
    """`tag -> (segment, pool)` for pveguard's own network on `pool` (None: the bridge is not pveguard's)."""
    if not pool:
        return None
    from pveguard.backends import lxc_gateway

    def lookup(tag: int | None) -> tuple[str, str]:
        return str(lxc_gateway.segment_subnet(pool, tag)), pool

    return lookup


def main(argv: list[str]) -> int:
    """`restore LXCPATH BRIDGE POOL|- RUN_DIR [what LXC appends]`: the pre-start hook's entry point."""
    if len(argv) < 5 or argv[0] != "restore":
        print("usage: python -m pveguard.backends.lxc_isolation restore LXCPATH BRIDGE POOL|- RUN_DIR",
              file=sys.stderr)
        return 2
    lxcpath, bridge, pool, run_dir = Path(argv[1]), argv[2], argv[3], Path(argv[4])
    try:
        apply_table(bridge, entries_of(lxcpath, bridge, segment_lookup(None if pool == "-" else pool)), run_dir)
    except (BackendError, ConfigError) as e:
        print(f"pveguard isolation {bridge}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
