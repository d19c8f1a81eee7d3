"""The usage model: seeded, smoothly moving guest/node figures; counters only grow while running.

Pure functions of (seed, vmid, sizes, sim time, start time). Values are quantised to 10 s of
sim time, the interval pvestatd updates status in PVE, which also lets callers cache them.
"""

from __future__ import annotations

import math

STAT_INTERVAL = 10  # seconds; pvestatd's update period


def _unit(*parts: int) -> float:
    """Deterministic hash of integers into [0, 1)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (p + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    return (h & 0xFFFFFFFF) / 4294967296.0


def _counter(rate: float, age: float, period: float) -> int:
    # rate*t + rate*period/(4*pi)*sin(...) has derivative rate*(1 + cos/2) > 0: strictly growing.
    w = 2 * math.pi / period
    return int(rate * age + rate / (2 * w) * math.sin(w * age))


def guest_usage(
    seed: int, vmid: int, maxmem: int, maxdisk: int, cpus: float, now: float, started: float
) -> dict[str, int | float]:
    """cpu, mem, disk, netin, netout, diskread, diskwrite, uptime for a running guest."""
    t = float(int(now) // STAT_INTERVAL * STAT_INTERVAL)
    age = max(0.0, t - started)
    base = _unit(seed, vmid, 1)
    phase = _unit(seed, vmid, 2) * 2 * math.pi
    period = 600 + 3000 * _unit(seed, vmid, 3)
    noise = _unit(seed, vmid, int(t) // STAT_INTERVAL) - 0.5
    cpu_level = 0.02 + 0.35 * base
    cpu = max(0.002, min(1.0, cpu_level + 0.1 * math.sin(2 * math.pi * t / period + phase) + 0.04 * noise))
    mem_frac = 0.15 + 0.5 * _unit(seed, vmid, 4) + 0.05 * math.sin(2 * math.pi * t / (period * 2) + phase)
    disk_frac = min(0.95, 0.1 + 0.5 * _unit(seed, vmid, 5) + age * 1e-9)
    net_rate = 2_000 + 200_000 * _unit(seed, vmid, 6)
    io_rate = 1_000 + 100_000 * _unit(seed, vmid, 7)
    return {
        "cpu": round(cpu * min(cpus, 4) / max(cpus, 1), 6),
        "mem": int(maxmem * max(0.01, min(0.98, mem_frac))),
        "disk": int(maxdisk * disk_frac),
        "netin": _counter(net_rate, age, period),
        "netout": _counter(net_rate * 0.6, age, period),
        "diskread": _counter(io_rate, age, period),
        "diskwrite": _counter(io_rate * 0.8, age, period),
        "uptime": int(age),
    }


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
