"""PVE's container resource limits as cgroup settings, for cgroup v1 and v2, and usage reads.

The mapping follows pve-container's `update_lxc_config` and pve-common's `PVE::CGroup`
(pve-container `src/PVE/LXC.pm`, pve-common `src/PVE/CGroup.pm`): memory -> `memory.max`
(+ `memory.high` at ~99.2 %), swap ->
`memory.swap.max`, cpulimit -> `cpu.max "<quota> 100000"`, cpuunits -> `cpu.weight`, cores -> a
`cpuset.cpus` subset. On a v1 (or hybrid) host the same limits use PVE's v1 names:
`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes = memory + swap`, `cpu.cfs_quota_us` /
`cpu.cfs_period_us`, `cpu.shares`.

The parsing and mapping here are pure functions; the readers at the end take a root directory
so tests can point them at fixtures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MIB = 1024 * 1024
CFS_PERIOD_US = 100_000
CgroupVersion = Literal[1, 2]


@dataclass(frozen=True)
class Limits:
    """The limits pveguard manages, in PVE's units (MiB, cores, cpulimit, cpuunits)."""

    memory_mib: int
    swap_mib: int
    cpulimit: float = 0
    cpuunits: int = 100
    cpuset: str | None = None  # "0-1,3"; None = no pinning
    # False (strategy `resources.hard_limits: false`): memory is a reclaim target, not a cap, and
    # cpulimit is not applied; cpuunits (the share under contention) and the cpuset stay.
    hard: bool = True


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cgroup hierarchies are mounted and which one carries the controllers."""

    version: CgroupVersion
    v1: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    v2: str | None = None  # cgroup2 mount point
    memsw: bool = False  # v1: swap accounting (memory.memsw.*) is available


# --- layout -------------------------------------------------------------------------------------


def parse_layout(mountinfo: str, memsw: bool = False) -> CgroupLayout:
    """The cgroup layout from /proc/self/mountinfo text.

    A pure v2 host (cgroup2 mounted on /sys/fs/cgroup) gives version 2. A v1 or hybrid host (v1
    controllers plus cgroup2 at /sys/fs/cgroup/unified, as systemd's "hybrid" mode and this
    project's CI machine have) gives version 1: the controllers that limits need live on v1 there,
    and `lxc.cgroup2.*` keys would land on a hierarchy without them.
    """
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        mountpoint, fstype, super_opts = fields[4], rest[0], rest[2]
        if fstype == "cgroup2":
            if v2 is None or mountpoint == "/sys/fs/cgroup":
                v2 = mountpoint
        elif fstype == "cgroup":
            for opt in super_opts.split(","):
                if opt in ("memory", "cpu", "cpuacct", "cpuset", "blkio", "pids", "devices", "freezer"):
                    v1.setdefault(opt, mountpoint)
    if "memory" in v1 or "cpu" in v1:
        return CgroupLayout(version=1, v1=v1, v2=v2, memsw=memsw)
    return CgroupLayout(version=2, v1=v1, v2=v2)


def detect_layout() -> CgroupLayout:
    """This host's cgroup layout."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    layout = parse_layout(mountinfo)
    if layout.version == 1 and "memory" in layout.v1:
        memsw = Path(layout.v1["memory"], "memory.memsw.limit_in_bytes").exists()
        layout = parse_layout(mountinfo, memsw=memsw)
    return layout


# --- limits -> settings -------------------------------------------------------------------------


def memory_high_bytes(memory_mib: int) -> int:
    """PVE's `memory.high`: throttle at ~99.2 % below 16 GiB, else 128 MiB below the limit."""
    if memory_mib < 16 * 1024:
        return memory_mib * 1024 * 1016
    return (memory_mib - 128) * MIB


def v1_cpu_shares(cpuunits: int) -> int:
    """cpuunits (v2 scale: 1..10000, default 100) as v1 `cpu.shares` (default 1024).

    PVE writes cpuunits unchanged on v1 with a v1 default of 1024; the strategy's cpuunits are on
    the v2 scale, so they are rescaled to keep "default" meaning the kernel default on both.
    """
    return max(2, min(262144, round(cpuunits * 1024 / 100)))


def settings(limits: Limits, version: CgroupVersion, *, memsw: bool = True) -> list[tuple[str, str]]:
    """(cgroup file, value) pairs for a container's limits, in the order they must be applied."""
    mem = limits.memory_mib * MIB
    quota = limits.cpulimit > 0 and limits.hard
    out: list[tuple[str, str]] = []
    if version == 2:
        # soft: no cap (memory.max), the kernel reclaims and throttles above memory.high instead
        out.append(("memory.max", str(mem) if limits.hard else "max"))
        out.append(("memory.high", str(memory_high_bytes(limits.memory_mib) if limits.hard else mem)))
        out.append(("memory.swap.max", str(limits.swap_mib * MIB)))
        out.append(("cpu.max", f"{int(CFS_PERIOD_US * limits.cpulimit)} {CFS_PERIOD_US}"
                    if quota else f"max {CFS_PERIOD_US}"))
        out.append(("cpu.weight", str(max(1, min(10000, limits.cpuunits)))))
        if limits.cpuset:
            out.append(("cpuset.cpus", limits.cpuset))
        return out
    out.append(("memory.limit_in_bytes", str(mem) if limits.hard else "-1"))
    if memsw:
        out.append(("memory.memsw.limit_in_bytes", str(mem + limits.swap_mib * MIB) if limits.hard else "-1"))
    if not limits.hard:  # v1's reclaim target under memory pressure (PVE never sets it)
        out.append(("memory.soft_limit_in_bytes", str(mem)))
    out.append(("cpu.cfs_period_us", str(CFS_PERIOD_US)))
    out.append(("cpu.cfs_quota_us", str(int(CFS_PERIOD_US * limits.cpulimit)) if quota else "-1"))
    out.append(("cpu.shares", str(v1_cpu_shares(limits.cpuunits))))
    if limits.cpuset:
        out.append(("cpuset.cpus", limits.cpuset))
    return out


def lxc_config_lines(limits: Limits, version: CgroupVersion, *, memsw: bool = True) -> list[str]:
    """The `lxc.cgroup.*` (v1) or `lxc.cgroup2.*` (v2) lines of a container's config."""
    prefix = "lxc.cgroup2" if version == 2 else "lxc.cgroup"
    lines = []
    for key, value in settings(limits, version, memsw=memsw):
        if version == 2 and key == "cpu.max" and (limits.cpulimit <= 0 or not limits.hard):
            continue  # PVE writes no cpu.max without a cpulimit
        lines.append(f"{prefix}.{key} = {value}")
    return lines


def live_writes(old: Limits, new: Limits, version: CgroupVersion, *, memsw: bool = True) -> list[tuple[str, str]]:
    """The cgroup writes that take a running container from `old` to `new`, in a safe order.

    The kernel rejects a v1 `memory.limit_in_bytes` above `memory.memsw.limit_in_bytes`, so memsw
    goes first when memory grows and last when it shrinks; on v2 `memory.high` goes before
    `memory.max` when shrinking (as PVE::CGroup does) so the guest is throttled, not OOM-killed.
    """
    before = dict(settings(old, version, memsw=memsw))
    after = settings(new, version, memsw=memsw)
    changed = [(k, v) for k, v in after if before.get(k) != v]
    if "memory.soft_limit_in_bytes" in before and new.hard:
        changed.append(("memory.soft_limit_in_bytes", "-1"))  # back to hard: unset the v1 soft target
    if not changed:
        return []
    mem_keys = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if version == 1 \
        else ("memory.high", "memory.max")
    mem_changes = {k: v for k, v in changed if k in mem_keys}
    others = [(k, v) for k, v in changed if k not in mem_keys]
    ordered: list[tuple[str, str]] = []
    if version == 1:
        # memsw first when either total grows; limit first when everything shrinks.
        grow = (new.memory_mib + new.swap_mib > old.memory_mib + old.swap_mib or new.memory_mib > old.memory_mib
                or not new.hard)  # soft lifts both caps (-1): memsw first, or the kernel refuses the limit
        order = ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"] if grow \
            else ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    else:
        shrink = new.memory_mib < old.memory_mib or (new.hard and not old.hard)
        order = ["memory.high", "memory.max"] if shrink else ["memory.max", "memory.high"]
    ordered += [(k, mem_changes[k]) for k in order if k in mem_changes]
    return ordered + others


# --- cpusets ------------------------------------------------------------------------------------


def parse_cpulist(text: str) -> list[int]:
    """`0-2,5` -> [0, 1, 2, 5]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            cpus.extend(range(int(a), int(b) + 1))
        else:
            cpus.append(int(part))
    return sorted(set(cpus))


def format_cpulist(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> `0-2,5`."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def choose_cpuset(cores: int, host_cpus: list[int], in_use: list[list[int]]) -> list[int]:
    """`cores` host CPUs for a container: the least used by other containers, lowest id first.

    PVE picks a random subset and lets pvestatd rebalance; a deterministic least-loaded choice
    spreads small containers the same way without a balancing daemon.
    """
    if cores >= len(host_cpus):
        return sorted(host_cpus)
    load = dict.fromkeys(host_cpus, 0)
    for cpus in in_use:
        for c in cpus:
            if c in load:
                load[c] += 1
    return sorted(sorted(host_cpus, key=lambda c: (load[c], c))[:cores])


def host_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


# --- where a running container's cgroups are ----------------------------------------------------


def container_paths(proc_cgroup: str, name: str) -> dict[str, str]:
    """Controller -> cgroup path of container `name` (the `lxc.payload.<name>` level).

    Read from /proc/<init pid>/cgroup; systemd inside creates `init.scope` below the payload
    cgroup, and limits belong on the payload cgroup itself. The v2 entry has key "".
    """
    marker = f"lxc.payload.{name}"
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        comps = path.split("/")
        if marker in comps:
            path = "/".join(comps[: comps.index(marker) + 1])
        for ctrl in controllers.split(",") if controllers else [""]:
            out[ctrl] = path
    return out


def file_path(layout: CgroupLayout, paths: dict[str, str], key: str) -> Path | None:
    """The host path of cgroup file `key` (e.g. memory.max) for a container, None when unknown."""
    controller = key.split(".", 1)[0]
    if layout.version == 2:
        if layout.v2 is None or "" not in paths:
            return None
        return Path(layout.v2 + paths[""], key)
    mount = layout.v1.get(controller)
    rel = paths.get(controller)
    if mount is None or rel is None:
        return None
    return Path(mount + rel, key)


# --- usage --------------------------------------------------------------------------------------


@dataclass
class Usage:
    """What a container's cgroups say it uses."""

    cpu_ns: int = 0
    mem: int = 0
    diskread: int = 0
    diskwrite: int = 0


def parse_kv(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat) -> dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_blkio_v1(text: str) -> tuple[int, int]:
    """(read, write) bytes from v1 `blkio.throttle.io_service_bytes[_recursive]`."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
    return read, write


def parse_io_stat_v2(text: str) -> tuple[int, int]:
    """(read, write) bytes from v2 `io.stat` (`8:0 rbytes=1 wbytes=2 ...`)."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            k, _, v = item.partition("=")
            if k == "rbytes" and v.isdigit():
                read += int(v)
            elif k == "wbytes" and v.isdigit():
                write += int(v)
    return read, write


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError:
        return ""


def read_usage(layout: CgroupLayout, paths: dict[str, str]) -> Usage:
    """A running container's cpu time, memory in use (without page cache) and block I/O bytes."""
    u = Usage()
    if layout.version == 2:
        cpu = parse_kv(_read(file_path(layout, paths, "cpu.stat")))
        u.cpu_ns = cpu.get("usage_usec", 0) * 1000
        current = _read(file_path(layout, paths, "memory.current")).strip()
        stat = parse_kv(_read(file_path(layout, paths, "memory.stat")))
        if current.isdigit():
            u.mem = max(0, int(current) - stat.get("inactive_file", 0))
        u.diskread, u.diskwrite = parse_io_stat_v2(_read(file_path(layout, paths, "io.stat")))
        return u
    usage_ns = _read(file_path(layout, paths, "cpuacct.usage")).strip()
    u.cpu_ns = int(usage_ns) if usage_ns.isdigit() else 0
    current = _read(file_path(layout, paths, "memory.usage_in_bytes")).strip()
    stat = parse_kv(_read(file_path(layout, paths, "memory.stat")))
    if current.isdigit():
        u.mem = max(0, int(current) - stat.get("total_inactive_file", 0))
    blk = _read(file_path(layout, paths, "blkio.throttle.io_service_bytes_recursive")) \
        or _read(file_path(layout, paths, "blkio.throttle.io_service_bytes"))
    u.diskread, u.diskwrite = parse_blkio_v1(blk)
    return u


def read_setting(layout: CgroupLayout, paths: dict[str, str], key: str) -> str | None:
    """The current value of one cgroup file of a running container."""
    text = _read(file_path(layout, paths, key)).strip()
    return text or None


def write_setting(layout: CgroupLayout, paths: dict[str, str], key: str, value: str) -> None:
    """Write one cgroup file of a running container (OSError when the kernel refuses)."""
    path = file_path(layout, paths, key)
    if path is None:
        raise OSError(f"no cgroup file {key} for this container")
    path.write_text(value)
