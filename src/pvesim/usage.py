"""The usage model: seeded, smoothly moving guest/node figures; counters only grow while running.

Pure functions of (seed, vmid, sizes, sim time, start time). Values are quantised to 10 s of
sim time, the interval pvestatd updates status in PVE, which also lets callers cache them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STAT_INTERVAL = 10  # seconds; pvestatd's update period


def _unit(*parts: int) -> float:
    """Deterministic hash of integers into [0, 1)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (p + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    return (h & 0xFFFFFFFF) / 4294967296.0


@dataclass(frozen=True)
class GuestConsts:
    """Per-guest constants of the model (derived from seed and vmid only)."""

    cpu_level: float
    phase: float
    period: float
    mem_frac: float
    disk_frac: float
    net_rate: float
    io_rate: float


def guest_consts(seed: int, vmid: int) -> GuestConsts:
    """The seeded constants for one guest (cache them: they never change)."""
    return GuestConsts(
        cpu_level=0.02 + 0.35 * _unit(seed, vmid, 1),
        phase=_unit(seed, vmid, 2) * 2 * math.pi,
        period=600 + 3000 * _unit(seed, vmid, 3),
        mem_frac=0.15 + 0.5 * _unit(seed, vmid, 4),
        disk_frac=0.1 + 0.5 * _unit(seed, vmid, 5),
        net_rate=2_000 + 200_000 * _unit(seed, vmid, 6),
        io_rate=1_000 + 100_000 * _unit(seed, vmid, 7),
    )


def usage_at(
    c: GuestConsts, vmid: int, maxmem: int, maxdisk: int, cpus: float, now: float, started: float
) -> tuple[float, int, int, int, int, int, int, int]:
    """(cpu, mem, disk, netin, netout, diskread, diskwrite, uptime) of a running guest; the hot path."""
    t = float(int(now) // STAT_INTERVAL * STAT_INTERVAL)
    age = t - started if t > started else 0.0
    # counters: rate * (age + sin(w*age)/(2w)) has derivative rate * (1 + cos(w*age)/2) > 0, so they only grow
    x = math.sin(vmid * 12.9898 + t * 0.0078233) * 43758.5453
    noise = x - math.floor(x) - 0.5
    wt = 2 * math.pi * t / c.period + c.phase
    cpu = c.cpu_level + 0.1 * math.sin(wt) + 0.04 * noise
    cpu = 0.002 if cpu < 0.002 else (1.0 if cpu > 1.0 else cpu)
    if cpus > 4:
        cpu = cpu * 4 / cpus
    mf = c.mem_frac + 0.05 * math.sin(wt / 2)
    mf = 0.01 if mf < 0.01 else (0.98 if mf > 0.98 else mf)
    df = c.disk_frac + age * 1e-9
    w = 2 * math.pi / c.period
    wave = math.sin(w * age) / (2 * w)
    net = c.net_rate * (age + wave)
    io = c.io_rate * (age + wave)
    return (
        round(cpu, 6),
        int(maxmem * mf),
        int(maxdisk * (df if df < 0.95 else 0.95)),
        int(net),
        int(net * 0.6),
        int(io),
        int(io * 0.8),
        int(age),
    )


def guest_usage(
    seed: int, vmid: int, maxmem: int, maxdisk: int, cpus: float, now: float, started: float
) -> dict[str, int | float]:
    """cpu, mem, disk, netin, netout, diskread, diskwrite, uptime for a running guest."""
    u = usage_at(guest_consts(seed, vmid), vmid, maxmem, maxdisk, cpus, now, started)
    return dict(zip(USAGE_KEYS, u, strict=True))


USAGE_KEYS = ("cpu", "mem", "disk", "netin", "netout", "diskread", "diskwrite", "uptime")


def node_usage(
    seed: int, index: int, maxmem: int, maxdisk: int, guest_cpu: float, guest_mem: int, now: float
) -> dict[str, int | float]:
    """cpu, mem, disk for a node, driven by the sum of its running guests' usage."""
    t = int(now) // STAT_INTERVAL
    noise = _unit(seed, 100000 + index, t)
    return {
        "cpu": round(max(0.0, min(1.0, 0.01 + guest_cpu + 0.02 * noise)), 6),
        "mem": int(min(maxmem * 0.97, 2 * 1024**3 + guest_mem)),
        "disk": int(maxdisk * (0.12 + 0.05 * _unit(seed, index, 9))),
    }
