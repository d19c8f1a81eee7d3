"""Container networking for the plain-LXC backend: PVE's `net0` strings, VLAN bridges, counters.

A VLAN tag is carried one of two ways, chosen per host (reported by `capabilities()`):

* `vlan_filtering` — the bridge is VLAN-aware (`/sys/class/net/<br>/bridge/vlan_filtering` = 1);
  the veth port gets the tag as its untagged PVID (`lxc.net.N.veth.vlan.id`), as PVE does on a
  VLAN-aware bridge.
* `bridge_per_vlan` — one extra bridge per tag, `<bridge>v<tag>` (PVE's own name for the
  non-VLAN-aware case). Containers on the same tag share a segment; different tags share nothing.
  Without the `8021q` module the per-VLAN bridge is not connected to the uplink: it is a
  host-local segment (the kernel cannot tag frames), which is what isolation needs here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import subprocess
from pathlib import Path
from typing import Literal

from pveguard.errors import BackendError, ConfigError

IFNAMSIZ = 15  # usable characters of a Linux interface name
VlanMode = Literal["vlan_filtering", "bridge_per_vlan"]
BRIDGE_ALIAS = "pveguard vlan bridge"
SYS_NET = Path("/sys/class/net")

NET0_FIRST = ("name",)


# --- pure ---------------------------------------------------------------------------------------


def vlan_bridge_name(bridge: str, tag: int) -> str:
    """`<bridge>v<tag>`, shortened with a stable hash when that exceeds 15 characters."""
    name = f"{bridge}v{tag}"
    if len(name) <= IFNAMSIZ:
        return name
    suffix = f"v{tag}"
    digest = hashlib.sha256(bridge.encode()).hexdigest()[:4]
    return f"{bridge[: IFNAMSIZ - len(suffix) - len(digest)]}{digest}{suffix}"


def host_veth_name(vmid: int, index: int = 0) -> str:
    """PVE's host-side veth name, `veth<vmid>i<n>`."""
    return f"veth{vmid}i{index}"


def resolve_vlan_mode(configured: str, bridge_filters: bool) -> VlanMode:
    """The VLAN mode to use: the configured one, or for `auto` whatever the bridge supports."""
    if configured == "vlan_filtering":
        return "vlan_filtering"
    if configured == "bridge_per_vlan":
        return "bridge_per_vlan"
    return "vlan_filtering" if bridge_filters else "bridge_per_vlan"


def parse_net0(text: str) -> dict[str, str]:
    """`name=eth0,bridge=vmbr0,tag=10` -> dict (a bare first value is the name)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
        else:
            out["name"] = key.strip()
    return out


def format_net0(values: dict[str, str]) -> str:
    """The inverse of parse_net0 in PVE's order: name first, then the keys sorted."""
    keys = [k for k in NET0_FIRST if k in values] + sorted(k for k in values if k not in NET0_FIRST)
    return ",".join(f"{k}={values[k]}" for k in keys)


def random_hwaddr() -> str:
    """A MAC address in the OUI PVE uses for guests (BC:24:11)."""
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))


def validate_ip(ip: str, gateway: str | None) -> None:
    """Refuse an address or gateway that cannot be written into the container."""
    if ip not in ("dhcp", "manual"):
        try:
            iface = ipaddress.ip_interface(ip)
        except ValueError:
            raise ConfigError(f"ip {ip!r} is not 'dhcp', 'manual' or an address like 10.0.0.5/24") from None
        if "/" not in ip:
            raise ConfigError(f"ip {ip!r} needs a prefix length, e.g. {ip}/24")
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError:
                raise ConfigError(f"gateway {gateway!r} is not an IP address") from None
            if gw not in iface.network:
                raise ConfigError(f"gateway {gateway} is not inside {iface.network} (ip {ip})",
                                  hint="use a gateway in the container's subnet, or none")


BRIDGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def validate_bridge(name: str) -> None:
    """Refuse a bridge name Linux would not accept (it also ends up in a shell hook)."""
    if not BRIDGE_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid bridge name",
                          hint="use up to 15 letters, digits, '.', '_' or '-', like vmbr0")


def render_interfaces(ip: str, gateway: str | None, name: str = "eth0") -> str:
    """/etc/network/interfaces for the container (ifupdown), as PVE writes it."""
    lines = ["# written by pveguard from net0; changes here are overwritten", "auto lo",
             "iface lo inet loopback", "", f"auto {name}"]
    if ip == "dhcp":
        lines.append(f"iface {name} inet dhcp")
    elif ip == "manual":
        lines.append(f"iface {name} inet manual")
    else:
        family = "inet6" if ipaddress.ip_interface(ip).version == 6 else "inet"
        lines.append(f"iface {name} {family} static")
        lines.append(f"\taddress {ip}")
        if gateway:
            lines.append(f"\tgateway {gateway}")
    return "\n".join(lines) + "\n"


def render_hosts(hostname: str, ip: str) -> str:
    """/etc/hosts for the container."""
    addr = "127.0.1.1" if ip in ("dhcp", "manual") else str(ipaddress.ip_interface(ip).ip)
    return f"127.0.0.1\tlocalhost\n{addr}\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


# --- host I/O -----------------------------------------------------------------------------------


def _ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(f"'ip {' '.join(argv)}' failed: {proc.stderr.strip()}")


def exists(ifname: str) -> bool:
    return (SYS_NET / ifname).exists()


def is_bridge(ifname: str) -> bool:
    return (SYS_NET / ifname / "bridge").is_dir()


def vlan_filtering(bridge: str) -> bool:
    """Whether `bridge` is VLAN-aware."""
    try:
        return (SYS_NET / bridge / "bridge/vlan_filtering").read_text().strip() == "1"
    except OSError:
        return False


def bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(p.name for p in (SYS_NET / bridge / "brif").iterdir())
    except OSError:
        return []


def alias(ifname: str) -> str:
    try:
        return (SYS_NET / ifname / "ifalias").read_text().strip()
    except OSError:
        return ""


def ensure_vlan_bridge(bridge: str, tag: int) -> str:
    """Create (if missing) and bring up the per-VLAN bridge for `bridge`/`tag`; return its name.

    The bridge carries an alias naming its origin, so only bridges pveguard made are ever removed.
    """
    name = vlan_bridge_name(bridge, tag)
    if not exists(name):
        proc = subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 and not exists(name):  # a parallel start may have created it
            raise BackendError(f"cannot create VLAN bridge {name}: {proc.stderr.strip()}",
                               hint="pveguard needs root (CAP_NET_ADMIN) to create bridges")
        _ip("link", "set", "dev", name, "alias", f"{BRIDGE_ALIAS} {bridge} tag {tag}")
    elif not is_bridge(name):
        raise BackendError(f"{name} exists but is not a bridge; it is needed for VLAN {tag} on {bridge}",
                           hint=f"rename or remove the interface {name}")
    _ip("link", "set", "dev", name, "up")
    return name


def ensure_bridge_command(bridge: str, tag: int) -> str:
    """A shell command (for `lxc.hook.pre-start`) that does what ensure_vlan_bridge does.

    LXC runs hooks through the shell and appends the container name and hook type as arguments;
    `sh -c '...'` takes those as $0.. and ignores them.
    """
    name = vlan_bridge_name(bridge, tag)
    script = (f"[ -d /sys/class/net/{name} ] || {{ ip link add {name} type bridge && "
              f"ip link set dev {name} alias \"{BRIDGE_ALIAS} {bridge} tag {tag}\"; }}; ip link set dev {name} up")
    return f"/bin/sh -c '{script}'"


def remove_vlan_bridge_if_unused(name: str) -> bool:
    """Delete a per-VLAN bridge pveguard created once no port is left on it."""
    if not exists(name) or not alias(name).startswith(BRIDGE_ALIAS) or bridge_ports(name):
        return False
    proc = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def counters(ifname: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host interface; zeros when it is gone."""
    out = []
    for key in ("rx_bytes", "tx_bytes"):
        try:
            out.append(int((SYS_NET / ifname / "statistics" / key).read_text()))
        except (OSError, ValueError):
            out.append(0)
    return out[0], out[1]
