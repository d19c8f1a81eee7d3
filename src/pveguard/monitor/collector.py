"""Collection: one sweep per poll (one `GET /cluster/resources`, or one Backend.stats()), and the
pure arithmetic that turns two sweeps into usage percentages and byte rates.

Counters (netin/netout/diskread/diskwrite) start at zero when a guest starts, so a counter that went
down, or an uptime that went down, means a restart: the rate is then taken from zero over the new
uptime rather than reported as a negative or a huge jump. A stopped guest has no rates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pveguard.backends.base import MANAGED_TAG, Backend, GuestStats

COUNTERS = ("netin", "netout", "diskread", "diskwrite")
# The series we record and alert on, with the unit they are stored in.
SERIES_UNITS: dict[str, str] = {
    "cpu": "%", "memory": "%", "disk": "%",
    "disk_read": "B/s", "disk_write": "B/s", "net_in": "B/s", "net_out": "B/s",
}
_USAGE_FIELDS = ("cpu", "maxcpu", "mem", "maxmem", "disk", "maxdisk", "netin", "netout", "diskread",
                 "diskwrite", "uptime", "shared")
_RATE_OF = {"net_in": "netin", "net_out": "netout", "disk_read": "diskread", "disk_write": "diskwrite"}


@dataclass(frozen=True)
class Sample:
    """One resource from one sweep, in PVE's own units (cpu as a 0..1 ratio of maxcpu, bytes)."""

    id: str  # "lxc/101", "qemu/102", "node/pve1", "storage/pve1/local"
    type: str  # lxc | qemu | node | storage
    node: str
    status: str
    name: str = ""
    vmid: int | None = None
    cpu: float = 0.0
    maxcpu: float = 0.0
    mem: int = 0
    maxmem: int = 0
    disk: int = 0
    maxdisk: int = 0
    netin: int = 0
    netout: int = 0
    diskread: int = 0
    diskwrite: int = 0
    uptime: int = 0
    template: bool = False
    tags: tuple[str, ...] = ()
    managed: bool = False
    shared: bool | None = None
    plugintype: str = ""
    content: str = ""  # storage content types, sorted (PVE lists them in random order)
    # the usage fields the API reported (an offline node reports none); empty = all of its type
    fields: frozenset[str] = frozenset()

    @property
    def is_guest(self) -> bool:
        return self.type in ("lxc", "qemu")

    @property
    def up(self) -> bool:
        if self.type == "node":
            return self.status == "online"
        if self.type == "storage":
            return self.status == "available"
        return self.status == "running"


@dataclass
class Sweep:
    """Everything one poll saw, when, and what it cost."""

    ts: float
    samples: list[Sample]
    api_calls: int = 1
    duration: float = 0.0
    source: str = ""

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


@dataclass(frozen=True)
class Derived:
    """Values the alert rules and the series store use: percentages and byte rates."""

    id: str
    values: Mapping[str, float] = field(default_factory=dict)


# --- pure functions -----------------------------------------------------------------------------


def _tags(raw: Any) -> tuple[str, ...]:
    if not raw:
        return ()
    if isinstance(raw, (list, tuple)):
        return tuple(str(t) for t in raw)
    # PVE separates tags with ';' (older releases also ',' or ' ')
    return tuple(t for t in str(raw).replace(",", ";").replace(" ", ";").split(";") if t)


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _float(v: Any) -> float:
    try:
        return float(v or 0)
    except (TypeError, ValueError):
        return 0.0


def parse_resources(items: Iterable[Mapping[str, Any]], managed_names: Iterable[str] = ()) -> list[Sample]:
    """`/cluster/resources` entries -> Samples (guests, nodes, storages; pools/sdn are skipped)."""
    names = set(managed_names)
    out: list[Sample] = []
    for r in items:
        rtype = str(r.get("type", ""))
        if rtype not in ("lxc", "qemu", "node", "storage"):
            continue
        tags = _tags(r.get("tags"))
        name = str(r.get("name") or r.get("storage") or r.get("node") or "")
        vmid = _int(r["vmid"]) if r.get("vmid") is not None else None
        out.append(Sample(
            id=str(r.get("id") or (f"{rtype}/{vmid}" if vmid is not None else f"{rtype}/{name}")),
            type=rtype, node=str(r.get("node", "")), status=str(r.get("status", "unknown")),
            name=name, vmid=vmid,
            cpu=_float(r.get("cpu")), maxcpu=_float(r.get("maxcpu")),
            mem=_int(r.get("mem")), maxmem=_int(r.get("maxmem")),
            disk=_int(r.get("disk")), maxdisk=_int(r.get("maxdisk")),
            netin=_int(r.get("netin")), netout=_int(r.get("netout")),
            diskread=_int(r.get("diskread")), diskwrite=_int(r.get("diskwrite")),
            uptime=_int(r.get("uptime")), template=bool(_int(r.get("template"))),
            tags=tags,
            managed=rtype in ("lxc", "qemu") and (MANAGED_TAG in tags or name in names),
            shared=bool(_int(r.get("shared"))) if rtype == "storage" else None,
            plugintype=str(r.get("plugintype", "")),
            content=",".join(sorted(str(r.get("content", "")).split(","))) if r.get("content") else "",
            fields=frozenset(k for k in _USAGE_FIELDS if k in r),
        ))
    return out


def samples_from_stats(stats: Iterable[GuestStats], managed_names: Iterable[str] = (),
                       managed_vmids: Iterable[int] = ()) -> list[Sample]:
    """Backend.stats() (the lxc backend's cgroup//proc sweep) -> Samples of type lxc."""
    names, vmids = set(managed_names), set(managed_vmids)
    return [Sample(
        id=f"lxc/{s.vmid}", type="lxc", node=s.node, status=s.status, name=s.name, vmid=s.vmid,
        cpu=s.cpu, maxcpu=s.cpus, mem=s.mem, maxmem=s.maxmem, disk=s.disk, maxdisk=s.maxdisk,
        netin=s.netin, netout=s.netout, diskread=s.diskread, diskwrite=s.diskwrite, uptime=s.uptime,
        managed=s.name in names or s.vmid in vmids,
    ) for s in stats]


def counter_rate(prev: int, prev_ts: float, cur: int, cur_ts: float,
                 prev_uptime: int = 0, cur_uptime: int = 0) -> float | None:
    """Bytes per second between two readings of a counter; None when it cannot be known.

    A counter or uptime that went down means the guest restarted between the readings: the counter
    then counted from zero for `cur_uptime` seconds (or the whole interval, if that is shorter).
    """
    dt = cur_ts - prev_ts
    if dt <= 0:
        return None
    reset = cur < prev or (cur_uptime > 0 and prev_uptime > 0 and cur_uptime < prev_uptime)
    if not reset:
        return (cur - prev) / dt
    span = min(dt, float(cur_uptime)) if cur_uptime > 0 else dt
    return cur / span if span > 0 else None


def derive(prev: Sweep | None, cur: Sweep) -> dict[str, Derived]:
    """Per resource: cpu/memory/disk in percent and the four byte rates (running guests only)."""
    before = prev.by_id() if prev else {}
    out: dict[str, Derived] = {}
    for s in cur.samples:
        values: dict[str, float] = {}
        running = s.up
        if s.type != "storage" and running:
            values["cpu"] = round(s.cpu * 100, 3)
            if s.maxmem > 0:
                values["memory"] = round(s.mem * 100 / s.maxmem, 3)
        if s.maxdisk > 0 and (running or s.type == "storage") and s.disk > 0:
            values["disk"] = round(s.disk * 100 / s.maxdisk, 3)
        p = before.get(s.id)
        if s.is_guest and running and p is not None and p.up and prev is not None:
            for series, counter in _RATE_OF.items():
                r = counter_rate(getattr(p, counter), prev.ts, getattr(s, counter), cur.ts,
                                 p.uptime, s.uptime)
                if r is not None:
                    values[series] = round(r, 3)
        out[s.id] = Derived(s.id, values)
    return out


# --- sources (I/O) ------------------------------------------------------------------------------


class Source(Protocol):
    """Something that returns every resource in one sweep."""

    name: str

    def sweep(self) -> Sweep: ...


class ProxmoxResourcesSource:
    """One `GET /cluster/resources` per sweep, through the proxmox backend's call path: transient
    failures are retried like every other read, and a malformed answer is an error, never "no guests".

    `api` is a ProxmoxBackend, or a bare proxmoxer API object (wrapped in one with default settings).
    """

    name = "proxmox"

    def __init__(self, api: Any, managed_names: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        from pveguard.backends.proxmox import ProxmoxBackend, PveSettings

        self.backend = api if isinstance(api, ProxmoxBackend) else ProxmoxBackend(PveSettings(mode="https"), api=api)
        self.managed_names = tuple(managed_names)
        self.clock = clock

    def sweep(self) -> Sweep:
        started = time.perf_counter()
        items = self.backend.resources(what="reading the cluster's resources")
        return Sweep(ts=self.clock(), samples=parse_resources(items, self.managed_names),
                     api_calls=1, duration=time.perf_counter() - started, source=self.name)


class BackendStatsSource:
    """One Backend.stats() per sweep (the lxc backend reads cgroups and /proc for all guests)."""

    name = "backend"

    def __init__(self, backend: Backend, managed_names: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.managed_names = tuple(managed_names)
        self.clock = clock
        self.name = backend.name

    def sweep(self) -> Sweep:
        from pveguard.errors import BackendError

        started = time.perf_counter()
        try:
            stats = self.backend.stats()
        except OSError as exc:  # a container vanishing mid-sweep, an unreadable cgroup file
            raise BackendError(f"{self.name} stats sweep failed: {exc}",
                               hint="the next poll retries; check the backend if this persists") from None
        return Sweep(ts=self.clock(), samples=samples_from_stats(stats, self.managed_names),
                     api_calls=0, duration=time.perf_counter() - started, source=self.name)


def open_source(strategy: Any, env: Mapping[str, str] | None = None,
                clock: Callable[[], float] = time.time) -> Source:
    """The sweep source for the strategy's target: one /cluster/resources call on the proxmox
    backend's API object, else the backend's own stats() sweep (lxc)."""
    from pveguard.backends import connect
    from pveguard.backends.proxmox import ProxmoxBackend

    backend = connect(strategy, env)
    names = [c.name for c in strategy.containers]
    if isinstance(backend, ProxmoxBackend):
        return ProxmoxResourcesSource(backend, names, clock)
    return BackendStatsSource(backend, names, clock)


def with_managed(samples: list[Sample], managed_names: Iterable[str]) -> list[Sample]:
    """Mark guests whose names the strategy declares as managed (for sources that lack tags)."""
    names = set(managed_names)
    return [replace(s, managed=True) if s.is_guest and s.name in names and not s.managed else s
            for s in samples]
