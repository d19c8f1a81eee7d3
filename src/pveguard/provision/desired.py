"""Desired state: the strategy's containers as GuestSpecs, and both sides of a comparison in one form.

PVE reports a container's configuration as key/value pairs with property strings
(`net0: name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:..,ip=dhcp,tag=100,type=veth`). The
planner compares *normalized fields*: only what pveguard manages, defaults filled in the way PVE
fills them, so that an absent `onboot` equals `onboot: 0` and a `hwaddr` PVE made up is not a change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pveguard.backends.base import MANAGED_TAG, Backend, DataVolume, GuestSpec, NetSpec, marker_line
from pveguard.errors import ConfigError
from pveguard.provision.floors import Additions, Floor
from pveguard.strategy.models import Container, Strategy
from pveguard.strategy.units import GIB, MIB

# The fields the planner compares, in display order.
FIELDS = ("hostname", "cores", "memory", "swap", "cpulimit", "cpuunits", "hard_limits", "rootfs", "mp0", "net0",
          "unprivileged", "features", "onboot", "startup", "tags", "description")

# Keys PVE applies to a running container at once (pve-container LXC/Config.pm: LXC_FASTPLUG_OPTIONS
# plus what vmconfig_hotplug_pending hot-plugs: a new mount point too); disks grow online through resize.
LIVE_FIELDS = frozenset({"hostname", "cores", "memory", "swap", "cpulimit", "cpuunits", "hard_limits", "net0", "onboot",
                         "startup", "tags", "description", "rootfs", "mp0"})
# Keys of mp0 that pveguard manages (the volume id is PVE's).
MP_KEYS = ("mp", "size", "backup")
# `unprivileged` is read-only after creation: a change needs a new container.
IMMUTABLE_FIELDS = frozenset({"unprivileged"})

# Keys of net0 that pveguard manages; the rest (name, hwaddr, type, mtu...) is left as PVE has it.
NET_KEYS = ("bridge", "firewall", "gw", "ip", "tag")

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class Desired:
    """One container the strategy asks for: its spec plus what is installed inside after creation."""

    spec: GuestSpec
    packages: list[str] = field(default_factory=list)
    # why it differs from the strategy (a floor or a container added by migrate): shown by plan
    notes: list[str] = field(default_factory=list)


def description_for(c: Container, instance: str) -> str:
    """The description written to PVE: the purpose, then this instance's managed marker on its own line."""
    purpose = c.purpose.strip()
    return f"{purpose}\n{marker_line(instance)}" if purpose else marker_line(instance)


def tags_for(c: Container) -> list[str]:
    """`pveguard`, the role and any extra tags: lower-case, de-duplicated and sorted, as PVE stores them."""
    return sorted({MANAGED_TAG, c.role.lower(), *(t.lower() for t in c.tags)})


def check_limits(strategy: Strategy, backend: Backend, where: object) -> None:
    """Refuse `resources.hard_limits: false` on a backend without soft limits, before anything changes."""
    if not strategy.resources.hard_limits and not backend.soft_limits:
        raise ConfigError(f"{where}: resources.hard_limits: false cannot be met on Proxmox VE: PVE always applies "
                          "memory, swap and cores as hard cgroup limits and has no soft mode",
                          hint="set resources.hard_limits: true (or remove it), or use the lxc backend, where "
                               "false means memory.high instead of memory.max and no cpulimit quota")


def desired_state(strategy: Strategy, instance: str, additions: Additions | None = None) -> list[Desired]:
    """One Desired per strategy container, in strategy order, marked as this instance's; with
    `additions` (provision/floors.py, from the store) the containers migrate added after them and
    every container at least as large as its floor."""
    pinned = strategy.target.proxmox.node
    out = []
    names = {c.name for c in strategy.containers}
    extras = [e for e in (additions.extras if additions else []) if e.container.name not in names]
    for c in [*strategy.containers, *(e.container for e in extras)]:
        net = NetSpec(bridge=strategy.container_bridge(c), vlan=strategy.container_vlan(c), ip=c.network.ip,
                      gateway=c.network.gateway, firewall=c.network.firewall)
        spec = GuestSpec(
            name=c.name, role=c.role, cores=c.resources.cores,
            memory_mib=c.resources.memory // MIB, swap_mib=c.resources.swap // MIB,
            disk_gib=max(1, -(-c.resources.storage // GIB)), net=net, template=c.template,
            storage=c.storage, cpulimit=c.resources.cpulimit, cpuunits=c.resources.cpuunits,
            hard_limits=strategy.resources.hard_limits,
            unprivileged=c.unprivileged, features=dict(c.features), onboot=c.onboot,
            startup_order=c.startup.order, startup_up=c.startup.up, startup_down=c.startup.down,
            tags=tags_for(c), node=c.node or pinned, vmid=c.vmid, description=description_for(c, instance),
        )
        bv = c.backup_volume
        if bv is not None:
            spec.backup_volume = DataVolume(size_gib=max(1, -(-bv.size // GIB)), mountpoint=bv.mountpoint,
                                            storage=bv.storage or c.storage)
        d = Desired(spec=spec, packages=list(c.packages))
        extra = next((e for e in extras if e.container is c), None)
        if extra is not None:
            d.notes.append(f"{extra.reason}; not in the strategy: add it there to manage it as the others")
        floor = additions.floors.get(c.name) if additions else None
        if floor is not None:
            _apply_floor(d, floor)
        out.append(d)
    return out


def _apply_floor(d: Desired, floor: Floor) -> None:
    spec = d.spec
    grown = []
    if floor.disk_gib is not None and floor.disk_gib > spec.disk_gib:
        grown.append(f"rootfs {spec.disk_gib}G -> {floor.disk_gib}G")
        spec.disk_gib = floor.disk_gib
    if floor.memory_mib is not None and floor.memory_mib > spec.memory_mib:
        grown.append(f"memory {spec.memory_mib} -> {floor.memory_mib} MiB")
        spec.memory_mib = floor.memory_mib
    if floor.cores is not None and floor.cores > spec.cores:
        grown.append(f"cores {spec.cores} -> {floor.cores}")
        spec.cores = floor.cores
    if grown:
        d.notes.append(f"{floor.reason}: {', '.join(grown)} above the strategy's size (kept: the container "
                       "never shrinks back; raise the strategy's resources to make this note go)")


# --- property strings ---------------------------------------------------------------------------


def parse_propstring(text: str, default_key: str | None = None) -> dict[str, str]:
    """`a=1,b=x` -> {'a': '1', 'b': 'x'}; a leading bare value goes to `default_key`."""
    out: dict[str, str] = {}
    for part in str(text).split(","):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif default_key is not None:
            out[default_key] = part.strip()
    return out


def format_propstring(values: dict[str, str], first: tuple[str, ...] = ()) -> str:
    """The inverse of parse_propstring: keys in `first` order, then the rest sorted."""
    keys = [k for k in first if k in values] + sorted(k for k in values if k not in first)
    return ",".join(f"{k}={values[k]}" for k in keys)


def _bool01(value: Any) -> str:
    """PVE booleans in every spelling it accepts inside property strings, as '0'/'1'."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return "1" if str(value).strip().lower() in ("1", "on", "yes", "true") else "0"


def size_gib(text: str) -> float:
    """`20G`, `8192M`, `1T` or bytes -> GiB."""
    m = _SIZE_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"not a PVE size: {text!r}")
    return float(m.group(1)) * _SIZE_FACTORS[m.group(2).upper()] / GIB


def _fmt_gib(g: float) -> str:
    return f"{int(g)}G" if g == int(g) else f"{g:.2f}G"


def _num(value: Any) -> str:
    """Numbers as PVE prints them: '2', '0.5' (never '2.0')."""
    f = float(value)
    return str(int(f)) if f == int(f) else repr(f)


# --- both sides in one form ---------------------------------------------------------------------


def _net_fields(net: dict[str, str]) -> str:
    managed = {k: net[k] for k in NET_KEYS if k in net and net[k] != ""}
    managed["firewall"] = _bool01(managed.get("firewall", "0"))
    return format_propstring(managed, first=NET_KEYS)


def _startup(order: int | None, up: int | None, down: int | None) -> str:
    parts = {k: str(v) for k, v in (("order", order), ("up", up), ("down", down)) if v is not None}
    return format_propstring(parts, first=("order", "up", "down"))


def _mp_fields(text: str) -> str:
    """A mount point's managed keys: path, size, and backup (PVE's default for a volume is 0)."""
    mp = parse_propstring(text, default_key="volume")
    out = {"mp": mp.get("mp", ""), "backup": _bool01(mp.get("backup", "0"))}
    try:
        out["size"] = _fmt_gib(size_gib(mp["size"])) if "size" in mp else ""
    except ValueError:
        out["size"] = mp["size"]
    return format_propstring(out, first=MP_KEYS)


def mp_change_possible(old: str, new: str) -> bool:
    """A data volume is added, or grows; it never shrinks, moves or disappears in place."""
    if not old:
        return True
    if not new:
        return False
    a, b = parse_propstring(old), parse_propstring(new)
    try:
        grows = size_gib(b.get("size", "0")) >= size_gib(a.get("size", "0"))
    except ValueError:
        return False
    return grows and a.get("mp") == b.get("mp") and a.get("backup") == b.get("backup")


def desired_fields(spec: GuestSpec) -> dict[str, str]:
    """The spec in the normalized field form the planner compares."""
    net: dict[str, str] = {"bridge": spec.net.bridge, "ip": spec.net.ip, "firewall": _bool01(spec.net.firewall)}
    if spec.net.vlan is not None:
        net["tag"] = str(spec.net.vlan)
    if spec.net.gateway:
        net["gw"] = spec.net.gateway
    return {
        "hostname": spec.name,
        "cores": str(spec.cores),
        "memory": str(spec.memory_mib),
        "swap": str(spec.swap_mib),
        "cpulimit": _num(spec.cpulimit),
        "cpuunits": str(spec.cpuunits),
        "hard_limits": _bool01(spec.hard_limits),
        "rootfs": _fmt_gib(spec.disk_gib),
        "mp0": format_propstring({"mp": spec.backup_volume.mountpoint, "size": _fmt_gib(spec.backup_volume.size_gib),
                                  "backup": "1"}, first=MP_KEYS) if spec.backup_volume else "",
        "net0": _net_fields(net),
        "unprivileged": _bool01(spec.unprivileged),
        "features": format_propstring({k: "1" for k, v in spec.features.items() if v}),
        "onboot": _bool01(spec.onboot),
        "startup": _startup(spec.startup_order, spec.startup_up, spec.startup_down),
        "tags": ";".join(sorted({t.lower() for t in spec.tags})),
        "description": spec.description.strip(),
    }


def actual_fields(config: dict[str, Any]) -> dict[str, str]:
    """A PVE container config (GET .../config) in the same normalized form, with PVE's defaults."""
    rootfs = parse_propstring(str(config.get("rootfs", "")), default_key="volume")
    try:
        disk = _fmt_gib(size_gib(rootfs["size"])) if "size" in rootfs else "4G"
    except ValueError:
        disk = rootfs["size"]
    startup = parse_propstring(str(config.get("startup", "")), default_key="order")
    features = {k: "1" for k, v in parse_propstring(str(config.get("features", ""))).items() if _bool01(v) == "1"}
    raw_tags = str(config.get("tags", "") or "")
    tags = sorted({t.lower() for t in re.split(r"[;, ]+", raw_tags) if t})
    return {
        "hostname": str(config.get("hostname", "")),
        "cores": str(config.get("cores", "")) or "unlimited",
        "memory": str(config.get("memory", 512)),
        "swap": str(config.get("swap", 512)),
        "cpulimit": _num(config.get("cpulimit", 0) or 0),
        "cpuunits": str(config.get("cpuunits", 100)),
        # pveguard's lxc backend stores 0 for soft limits; a PVE config never has it (always hard)
        "hard_limits": _bool01(config.get("hard_limits", 1)),
        "rootfs": disk,
        "mp0": _mp_fields(str(config["mp0"])) if config.get("mp0") else "",
        "net0": _net_fields(parse_propstring(str(config.get("net0", "")))) if config.get("net0") else "",
        "unprivileged": _bool01(config.get("unprivileged", 0)),
        "features": format_propstring(features),
        "onboot": _bool01(config.get("onboot", 0)),
        "startup": format_propstring(startup, first=("order", "up", "down")),
        "tags": ";".join(tags),
        "description": str(config.get("description", "") or "").strip(),
    }
