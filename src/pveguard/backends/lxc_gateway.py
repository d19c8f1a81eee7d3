"""The network pveguard owns on a plain-LXC host: its bridge, DHCP on it and outbound NAT.

On a Debian host without PVE nothing provides `vmbr0`. When the strategy's bridge does not exist
there, pveguard makes it, as `lxc-net` makes `lxcbr0`:

* the bridge, with the alias `pveguard network <pool>` (the mark: only bridges carrying it, or
  lxc_net's per-VLAN alias under one of them, are ever changed or removed);
* one segment per VLAN in use: the untagged bridge itself gets the pool's first /24, VLAN n the
  per-VLAN bridge `<bridge>v<n>` (lxc_net) and the n-th /24. The host takes `.1` of a segment and a
  dnsmasq bound only to that bridge hands out `.100`-`.254` (and answers DNS), its pid and lease
  files under the run directory;
* one nftables table `ip pveguard-<bridge>`: masquerade from the pool to anything outside it, and
  no forwarding between segments (VLANs stay apart at layer 3 too); `net.ipv4.ip_forward` is
  turned on, and back to what it was when the last pveguard network goes.

Everything is (re)created idempotently by `ensure_segment` (called before a container starts,
and by the container's `lxc.hook.pre-start`, `ensure_command`, so lxc-autostart after a reboot
brings the network back) and removed by `remove_network` / `prune`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from pveguard.backends import lxc_net
from pveguard.errors import BackendError, ConfigError

RUN_DIR = Path("/run/pveguard")
NETWORK_ALIAS = "pveguard network"
TABLE_PREFIX = "pveguard-"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
SEGMENT_PREFIX = 24
DHCP_FIRST = 100  # .2-.99 stay free for static addresses (`ip: 10.101.0.5/24` in the strategy)


# --- pure ---------------------------------------------------------------------------------------


def segment_subnet(pool: str, tag: int | None) -> ipaddress.IPv4Network:
    """The /24 of a segment: the pool's first for the untagged bridge, the tag-th for a VLAN."""
    net = ipaddress.IPv4Network(pool)
    index = tag or 0
    count = 2 ** (SEGMENT_PREFIX - net.prefixlen)
    if index >= count:
        raise ConfigError(f"VLAN {index} has no /{SEGMENT_PREFIX} in target.lxc.subnet {pool} "
                          f"({count} segments: untagged and VLANs 1..{count - 1})",
                          hint="use a larger subnet (a /12 gives every VLAN its /24)")
    size = 2 ** (32 - SEGMENT_PREFIX)
    return ipaddress.IPv4Network((int(net.network_address) + index * size, SEGMENT_PREFIX))


def gateway_of(segment: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The host's address on a segment: its first host, e.g. 10.101.0.1/24."""
    return ipaddress.IPv4Interface(f"{segment.network_address + 1}/{segment.prefixlen}")


def dhcp_range(segment: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    return segment.network_address + DHCP_FIRST, segment.broadcast_address - 1


def table_name(bridge: str) -> str:
    return f"{TABLE_PREFIX}{bridge}"


def nft_ruleset(bridge: str, pool: str, segments: list[str] | tuple[str, ...] = ()) -> str:
    """The nftables table for a network, replacing any earlier version in one transaction.

    `segments`: the network's segment bridges. Traffic between two containers of one segment is
    bridged, not routed, but with br_netfilter on (net.bridge.bridge-nf-call-iptables, a host-wide
    switch the per-bridge setting cannot turn off) it also passes the IP forward hook, entering and
    leaving by the same bridge: it is let through before the rule that keeps segments apart.
    """
    table = table_name(bridge)
    same = ", ".join(f'"{s}" . "{s}"' for s in segments)
    bridged = f"\t\tiifname . oifname {{ {same} }} accept\n" if segments else ""
    return (
        f"table ip {table}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f'\tcomment "managed-by: pveguard: NAT for bridge {bridge} ({pool})"\n'
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f"{bridged}"
        f"\t\tip saddr {pool} ip daddr {pool} drop\n"
        "\t}\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"\t\tip saddr {pool} ip daddr != {pool} masquerade\n"
        "\t}\n"
        "}\n"
    )


def dnsmasq_files(segment_bridge: str, run_dir: Path) -> tuple[Path, Path]:
    """(pid file, lease file) of the dnsmasq serving `segment_bridge`."""
    return run_dir / f"dnsmasq-{segment_bridge}.pid", run_dir / f"dnsmasq-{segment_bridge}.leases"


def dnsmasq_argv(segment_bridge: str, segment: ipaddress.IPv4Network, run_dir: Path) -> list[str]:
    """dnsmasq as lxc-net runs it: bound only to the segment's bridge and address, no config file."""
    pid, leases = dnsmasq_files(segment_bridge, run_dir)
    first, last = dhcp_range(segment)
    return ["dnsmasq", "--conf-file=/dev/null", "--strict-order", "--bind-interfaces", f"--pid-file={pid}",
            f"--listen-address={gateway_of(segment).ip}", f"--dhcp-range={first},{last}",
            f"--dhcp-lease-max={int(last) - int(first) + 1}", "--dhcp-no-override", "--except-interface=lo",
            f"--interface={segment_bridge}", f"--dhcp-leasefile={leases}", "--dhcp-authoritative"]


def ensure_command(bridge: str, tag: int | None, pool: str, run_dir: Path) -> str:
    """The pre-start hook that runs `ensure_segment` with this very pveguard (interpreter and code)."""
    import pveguard

    code = Path(pveguard.__file__).resolve().parent.parent
    argv = ["env", f"PYTHONPATH={code}", sys.executable, "-m", "pveguard.backends.lxc_gateway", "ensure", bridge,
            str(tag) if tag is not None else "-", pool, str(run_dir)]
    return " ".join(shlex.quote(a) for a in argv)


def pool_of_alias(text: str) -> str | None:
    """The pool a pveguard network's bridge alias names (`pveguard network 10.101.0.0/16`)."""
    if not text.startswith(NETWORK_ALIAS + " "):
        return None
    return text[len(NETWORK_ALIAS) + 1:].strip() or None


# --- host I/O -----------------------------------------------------------------------------------


def _run(argv: list[str], what: str, input: str | None = None) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, check=False, timeout=60)
    except FileNotFoundError:
        package = {"nft": "nftables", "dnsmasq": "dnsmasq-base"}.get(argv[0], argv[0])
        raise BackendError(f"{argv[0]} is not installed; it is needed to {what}",
                           hint=f"apt-get install {package}") from None
    if proc.returncode != 0:
        raise BackendError(f"cannot {what}: {(proc.stderr or proc.stdout).strip()}",
                           hint="pveguard needs root (CAP_NET_ADMIN) for its network")


def owned(bridge: str) -> bool:
    """Whether `bridge` is a pveguard network's bridge."""
    return pool_of_alias(lxc_net.alias(bridge)) is not None


def ensure_bridge(bridge: str, pool: str) -> None:
    """Create the network's bridge (marked as pveguard's) when it is missing; refuse someone else's."""
    if not lxc_net.exists(bridge):
        proc = subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 and not lxc_net.exists(bridge):
            raise BackendError(f"cannot create bridge {bridge}: {proc.stderr.strip()}",
                               hint="pveguard needs root (CAP_NET_ADMIN) to create bridges")
        _run(["ip", "link", "set", "dev", bridge, "alias", f"{NETWORK_ALIAS} {pool}"], f"mark bridge {bridge}")
    elif not owned(bridge):
        raise BackendError(f"bridge {bridge} exists and is not pveguard's; pveguard does not change it")
    elif pool_of_alias(lxc_net.alias(bridge)) != pool:
        raise BackendError(f"bridge {bridge} is pveguard's network for {pool_of_alias(lxc_net.alias(bridge))}, "
                           f"not for target.lxc.subnet {pool}",
                           hint="set target.lxc.subnet back, or remove its containers (apply --prune) first")
    _segment_link_up(bridge)


def _segment_link_up(name: str) -> None:
    # Traffic inside a segment is bridged; with br_netfilter loaded it would also pass the IP
    # forward hook and meet the rule that keeps segments apart. Keep it at layer 2.
    _run(["ip", "link", "set", "dev", name, "type", "bridge", "nf_call_iptables", "0"], f"set up bridge {name}")
    _run(["ip", "link", "set", "dev", name, "up"], f"bring up bridge {name}")


def _has_address(name: str, iface: ipaddress.IPv4Interface) -> bool:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True,
                         check=False).stdout
    return f" {iface.with_prefixlen} " in out


def _dnsmasq_pid(segment_bridge: str, run_dir: Path) -> int | None:
    """The pid of the dnsmasq serving the segment, when it runs (checked against its command line)."""
    pidfile, _ = dnsmasq_files(segment_bridge, run_dir)
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dnsmasq" in cmdline and f"--pid-file={pidfile}".encode() in cmdline else None


def ensure_dnsmasq(segment_bridge: str, segment: ipaddress.IPv4Network, run_dir: Path) -> None:
    if _dnsmasq_pid(segment_bridge, run_dir) is not None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    _run(dnsmasq_argv(segment_bridge, segment, run_dir), f"start DHCP (dnsmasq) on {segment_bridge}")


def stop_dnsmasq(segment_bridge: str, run_dir: Path) -> None:
    pid = _dnsmasq_pid(segment_bridge, run_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    for path in dnsmasq_files(segment_bridge, run_dir):
        path.unlink(missing_ok=True)


def _ip_forward_on(run_dir: Path) -> None:
    current = IP_FORWARD.read_text().strip()
    if current == "1":
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "ip_forward.saved"
    if not saved.exists():
        saved.write_text(current + "\n")
    IP_FORWARD.write_text("1\n")


def _tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables", "ip"], capture_output=True, text=True, check=False).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith("table ip ")]


def ensure_segment(bridge: str, tag: int | None, pool: str, run_dir: Path = RUN_DIR) -> str:
    """Bridge, segment address, DHCP and NAT for a container on `bridge` (VLAN `tag`); the link to join."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # Two starts at once (two pveguard runs) would both add the address and both start a dnsmasq.
    with open(run_dir / ".network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_segment(bridge, tag, pool, run_dir)


def _ensure_segment(bridge: str, tag: int | None, pool: str, run_dir: Path) -> str:
    ensure_bridge(bridge, pool)
    segment = segment_subnet(pool, tag)
    name = bridge
    if tag is not None:
        name = lxc_net.ensure_vlan_bridge(bridge, tag)
        _segment_link_up(name)
    gateway = gateway_of(segment)
    if not _has_address(name, gateway):
        _run(["ip", "addr", "add", gateway.with_prefixlen, "dev", name], f"give {name} the address {gateway}")
    _run(["nft", "-f", "-"], f"set up NAT for {bridge} (nftables)",
         input=nft_ruleset(bridge, pool, segments_of(bridge)))
    _ip_forward_on(run_dir)
    ensure_dnsmasq(name, segment, run_dir)
    return name


def segments_of(bridge: str) -> list[str]:
    """The network's segment bridges that exist: the bridge itself and its per-VLAN bridges."""
    prefix = f"{lxc_net.BRIDGE_ALIAS} {bridge} tag "
    vlans = sorted(p.name for p in lxc_net.SYS_NET.iterdir() if lxc_net.alias(p.name).startswith(prefix)) \
        if lxc_net.SYS_NET.is_dir() else []
    return ([bridge] if lxc_net.exists(bridge) else []) + vlans


def remove_segment(name: str, run_dir: Path = RUN_DIR) -> None:
    stop_dnsmasq(name, run_dir)
    if lxc_net.exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def prune(bridge: str, in_use: set[str], run_dir: Path = RUN_DIR) -> None:
    """Remove the segments no container is configured on; the whole network when none is left."""
    if not owned(bridge):
        return
    if not in_use:
        remove_network(bridge, run_dir)
        return
    for name in segments_of(bridge):
        if name == bridge:
            if bridge not in in_use:
                stop_dnsmasq(bridge, run_dir)  # the bridge stays: VLAN segments hang off its name
        elif name not in in_use:
            remove_segment(name, run_dir)


def remove_network(bridge: str, run_dir: Path = RUN_DIR) -> None:
    """Everything `ensure_segment` made for `bridge`; ip_forward back when no pveguard network is left."""
    if lxc_net.exists(bridge) and not owned(bridge):
        return
    for name in reversed(segments_of(bridge)):
        remove_segment(name, run_dir)
    stop_dnsmasq(bridge, run_dir)
    subprocess.run(["nft", "delete", "table", "ip", table_name(bridge)], capture_output=True, check=False)
    saved = run_dir / "ip_forward.saved"
    if saved.exists() and not any(t.startswith(TABLE_PREFIX) for t in _tables()):
        IP_FORWARD.write_text(saved.read_text())
        saved.unlink()


def main(argv: list[str]) -> int:
    """`ensure BRIDGE TAG|- POOL RUN_DIR [what LXC appends]`: the pre-start hook's entry point."""
    if len(argv) < 5 or argv[0] != "ensure":
        print("usage: python -m pveguard.backends.lxc_gateway ensure BRIDGE TAG|- POOL RUN_DIR", file=sys.stderr)
        return 2
    bridge, tag, pool, run_dir = argv[1], argv[2], argv[3], Path(argv[4])
    try:
        ensure_segment(bridge, None if tag == "-" else int(tag), pool, run_dir)
    except (BackendError, ConfigError) as e:
        print(f"pveguard network {bridge}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
