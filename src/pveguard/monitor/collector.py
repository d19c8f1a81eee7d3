"""Collection: one sweep per poll (one `GET /cluster/resources`, or one Backend.stats()), and the
pure arithmetic that turns two sweeps into usage percentages and byte rates.

Counters (netin/netout/diskread/diskwrite) start at zero when a guest starts, so a counter that went
down, or an uptime that went down, means a restart: the rate is then taken from zero over the new
uptime rather than reported as a negative or a huge jump. A stopped guest has no rates.
"""

from __future__ import annotations

import operator
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

    @property
    def usage(self) -> Mapping[str, float]:
        """The percentages (cpu, memory, disk); the values may hold the byte rates too."""
        return self.values


RATE_SERIES = frozenset(("net_in", "net_out", "disk_read", "disk_write"))


class _LazyRates(Derived):
    """A running guest's Derived whose values are computed only when read: at 10,000 guests the alert
    rules read the percentages (`usage`) of the few guests near a threshold (the engine picks them with
    `alert_candidates`), and the series, the status view and the table read the values of a few hundred.
    `_deltas` are the four counters' differences and the interval; `_s` is the Sample, whose percentages
    are rounded at the first read. `usage` and
    `values` are what derive(lazy_rates=False) gives, the same dict each time they are read."""

    @property
    def usage(self) -> Mapping[str, float]:
        d = self.__dict__
        got: dict[str, float] | None = d.get("_usage")
        if got is None:  # the expressions of derive()'s eager path
            s = d["_s"]
            got = d["_usage"] = {"cpu": round(s.cpu * 100, 3), "memory": round(s.mem * 100 / s.maxmem, 3),
                                 "disk": round(s.disk * 100 / s.maxdisk, 3)}
        return got

    @property  # a read-only field, computed once
    def values(self) -> Mapping[str, float]:
        d = self.__dict__
        got: dict[str, float] | None = d.get("_values")
        if got is None:
            da, db, dc, de, dt = d["_deltas"]
            got = d["_values"] = {**self.usage, "net_in": round(da / dt, 3), "net_out": round(db / dt, 3),
                                  "disk_read": round(dc / dt, 3), "disk_write": round(de / dt, 3)}
        return got


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


_KINDS = frozenset(("lxc", "qemu", "node", "storage"))
_GUEST_KINDS = frozenset(("lxc", "qemu"))
_FIELD_SETS: dict[tuple[str, ...], frozenset[str]] = {}  # key order -> usage fields: a sweep has a few


def _present(keys: tuple[str, ...]) -> frozenset[str]:
    got = _FIELD_SETS.get(keys)
    if got is None:
        if len(_FIELD_SETS) > 1024:
            _FIELD_SETS.clear()
        got = _FIELD_SETS[keys] = frozenset(k for k in _USAGE_FIELDS if k in keys)
    return got


def parse_resources(items: Iterable[Mapping[str, Any]], managed_names: Iterable[str] = ()) -> list[Sample]:
    """`/cluster/resources` entries -> Samples (guests, nodes, storages; pools/sdn are skipped).

    This runs for every entry of every poll (10,000 guests = 10,000 entries), so it fills each
    Sample's fields directly: numbers PVE sent as JSON numbers are taken as they are, anything else
    (a numeric string, null) goes through the tolerant _int/_float, which give what the plain
    constructor got (tests/monitor/test_collector.py compares both)."""
    names = set(managed_names)
    out: list[Sample] = []
    append = out.append
    new = object.__new__
    for r in items:
        rtype = r.get("type")
        if rtype not in _KINDS:
            continue
        get = r.get
        try:  # a guest's or node's row has them all: one C call instead of eleven get()s
            mem, maxmem, disk, maxdisk, netin, netout, dread, dwrite, uptime, cpu, maxcpu = _USAGE_OF(r)
            fields = _ALL_BUT_SHARED if "shared" not in r else _ALL_USAGE  # = _present(tuple(r))
        except KeyError:
            fields = _present(tuple(r))
            mem, maxmem, disk, maxdisk = get("mem", 0), get("maxmem", 0), get("disk", 0), get("maxdisk", 0)
            netin, netout, dread, dwrite = get("netin", 0), get("netout", 0), get("diskread", 0), get("diskwrite", 0)
            uptime, cpu, maxcpu = get("uptime", 0), get("cpu", 0.0), get("maxcpu", 0.0)
        raw_tags = get("tags")
        tags = _tags(raw_tags) if raw_tags else ()
        name = get("name") or get("storage") or get("node") or ""
        if name.__class__ is not str:
            name = str(name)
        node, status = get("node", ""), get("status", "unknown")
        raw_vmid = get("vmid")
        vmid = (raw_vmid if raw_vmid.__class__ is int else _int(raw_vmid)) if raw_vmid is not None else None
        rid = get("id")
        content = get("content")
        template = get("template")
        s = new(Sample)
        s.__dict__.update({  # every field of Sample (test_parse_resources_fast_path_equals_the_constructor)
            "id": str(rid) if rid else (f"{rtype}/{vmid}" if vmid is not None else f"{rtype}/{name}"),
            "type": rtype, "node": node if node.__class__ is str else str(node),
            "status": status if status.__class__ is str else str(status),
            "name": name, "vmid": vmid,
            "cpu": float(cpu) if cpu.__class__ in _NUMBER else _float(cpu),
            "maxcpu": float(maxcpu) if maxcpu.__class__ in _NUMBER else _float(maxcpu),
            "mem": mem if mem.__class__ is int else _int(mem),
            "maxmem": maxmem if maxmem.__class__ is int else _int(maxmem),
            "disk": disk if disk.__class__ is int else _int(disk),
            "maxdisk": maxdisk if maxdisk.__class__ is int else _int(maxdisk),
            "netin": netin if netin.__class__ is int else _int(netin),
            "netout": netout if netout.__class__ is int else _int(netout),
            "diskread": dread if dread.__class__ is int else _int(dread),
            "diskwrite": dwrite if dwrite.__class__ is int else _int(dwrite),
            "uptime": uptime if uptime.__class__ is int else _int(uptime),
            "template": bool(template if template.__class__ is int else _int(template)) if template else False,
            "tags": tags,
            "managed": rtype in _GUEST_KINDS and (MANAGED_TAG in tags or name in names),
            "shared": bool(_int(get("shared"))) if rtype == "storage" else None,
            "plugintype": str(get("plugintype", "")),
            "content": ",".join(sorted(str(content).split(","))) if content else "",
            "fields": fields,
        })
        append(s)
    return out


_NUMBER = (int, float)
_ALL_USAGE = frozenset(_USAGE_FIELDS)
_ALL_BUT_SHARED = _ALL_USAGE - {"shared"}
_USAGE_OF = operator.itemgetter("mem", "maxmem", "disk", "maxdisk", "netin", "netout", "diskread", "diskwrite",
                                "uptime", "cpu", "maxcpu")


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


def derive(prev: Sweep | None, cur: Sweep, lazy_rates: bool = False) -> dict[str, Derived]:
    """Per resource: cpu/memory/disk in percent and the four byte rates (running guests only).

    The same arithmetic as `counter_rate` and `Sample.up`, written out inline: it runs for every
    resource of every poll (tests/monitor/test_collector.py checks it against counter_rate).
    `lazy_rates`: a running guest's rates and percentages (the common case: no counter went back) are
    divided and rounded when its `usage` or `values` are first read, not here (`_LazyRates`)."""
    before = {s.id: s for s in prev.samples} if prev else {}
    dt = cur.ts - prev.ts if prev is not None else 0.0
    out: dict[str, Derived] = {}
    new = object.__new__
    get = before.get
    for s in cur.samples:
        stype, status = s.type, s.status
        if stype == "lxc" or stype == "qemu":
            if status == "running":
                maxmem, maxdisk, disk = s.maxmem, s.maxdisk, s.disk
                p = get(s.id) if dt > 0 else None
                if maxmem > 0 and maxdisk > 0 and disk > 0 and p is not None and p.status == "running":
                    up, pup = s.uptime, p.uptime
                    a, b, c, e = s.netin, s.netout, s.diskread, s.diskwrite
                    pa, pb, pc, pe = p.netin, p.netout, p.diskread, p.diskwrite
                    if not ((up < pup and up > 0 and pup > 0) or a < pa or b < pb or c < pc or e < pe):
                        if lazy_rates:
                            lazy = new(_LazyRates)
                            dd = lazy.__dict__
                            dd["id"] = s.id
                            dd["_s"] = s
                            dd["_deltas"] = (a - pa, b - pb, c - pc, e - pe, dt)
                            out[s.id] = lazy
                            continue
                        # the common case, as one literal: every value, no counter went back
                        values = {"cpu": round(s.cpu * 100, 3), "memory": round(s.mem * 100 / maxmem, 3),
                                  "disk": round(disk * 100 / maxdisk, 3),
                                  "net_in": round((a - pa) / dt, 3), "net_out": round((b - pb) / dt, 3),
                                  "disk_read": round((c - pc) / dt, 3), "disk_write": round((e - pe) / dt, 3)}
                        d = new(Derived)
                        dd = d.__dict__  # two stores: cheaper than an update() from a dict literal
                        dd["id"] = s.id
                        dd["values"] = values
                        out[s.id] = d
                        continue
                values = {"cpu": round(s.cpu * 100, 3)}
                if maxmem > 0:
                    values["memory"] = round(s.mem * 100 / maxmem, 3)
                if maxdisk > 0 and disk > 0:
                    values["disk"] = round(disk * 100 / maxdisk, 3)
                if p is not None and p.status == "running":
                    up, pup = s.uptime, p.uptime
                    for series, cur_v, prev_v in (("net_in", s.netin, p.netin), ("net_out", s.netout, p.netout),
                                                  ("disk_read", s.diskread, p.diskread),
                                                  ("disk_write", s.diskwrite, p.diskwrite)):
                        r = counter_rate(prev_v, prev.ts, cur_v, cur.ts, pup, up)  # type: ignore[union-attr]
                        if r is not None:
                            values[series] = round(r, 3)
            else:
                values = {}
        else:
            running = status == "online" if stype == "node" else status == "available"
            values = {}
            if running and stype != "storage":
                values["cpu"] = round(s.cpu * 100, 3)
                if s.maxmem > 0:
                    values["memory"] = round(s.mem * 100 / s.maxmem, 3)
            if s.maxdisk > 0 and s.disk > 0 and (running or stype == "storage"):
                values["disk"] = round(s.disk * 100 / s.maxdisk, 3)
        d = new(Derived)
        dd = d.__dict__
        dd["id"] = s.id
        dd["values"] = values
        out[s.id] = d
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
