"""The scaling arithmetic (step, cap, revert), the process list parser, the migration target choice and
the host OOM line filter: pure functions, checked with tables and a property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pveguard.recover.exhaustion import NodeRoom, parse_ps, pick_target
from pveguard.recover.rca import host_oom_lines
from pveguard.recover.scale import Size, cap_of, current_size, increment, revert_target, step_up

MIB = 1 << 20


@pytest.mark.parametrize(("resource", "current", "base", "step", "max_", "expected"), [
    ("memory", 256, 256, 0.25, 2.0, 320),   # +64 MiB
    ("memory", 448, 256, 0.25, 2.0, 512),   # the last step reaches the cap
    ("memory", 480, 256, 0.25, 2.0, 512),   # a step is clipped at the cap
    ("memory", 512, 256, 0.25, 2.0, None),  # at the cap: capped
    ("memory", 600, 256, 0.25, 2.0, None),  # above it (set by hand): capped, never lowered
    ("memory", 4096, 4096, 0.25, 2.0, 5120),
    ("memory", 256, 256, 0.25, 1.0, None),  # scale_max 1: no room at all
    ("cores", 1, 1, 0.25, 2.0, 2),          # at least one core per step
    ("cores", 2, 2, 0.25, 2.0, 3),
    ("cores", 4, 2, 0.25, 2.0, None),
    ("cores", 4, 4, 0.5, 1.5, 6),
    ("cores", 1, 1, 0.25, 1.5, None),       # cap floor(1.5) = 1
    ("disk", 8, 8, 0.25, 2.0, 10),
    ("disk", 2, 2, 0.1, 2.0, 3),            # a disk step rounds up to whole GiB
    ("disk", 16, 8, 0.25, 2.0, None),
])
def test_step_up(resource: str, current: int, base: int, step: float, max_: float, expected: int | None) -> None:
    assert step_up(resource, current, base, step, max_) == expected  # type: ignore[arg-type]


@given(base=st.integers(1, 65536), step=st.floats(0.01, 4), max_=st.floats(1, 16),
       resource=st.sampled_from(["memory", "cores", "disk"]))
def test_steps_grow_to_the_cap_and_stop(base: int, step: float, max_: float, resource: str) -> None:
    cap = cap_of(resource, base, max_)  # type: ignore[arg-type]
    assert base <= cap <= base * max_ + 1e-6
    cur, n = base, 0
    while (nxt := step_up(resource, cur, base, step, max_)) is not None:  # type: ignore[arg-type]
        assert cur < nxt <= cap and nxt - cur <= increment(resource, base, step)  # type: ignore[arg-type]
        cur, n = nxt, n + 1
        assert n <= 100000
    assert cur == cap


def test_revert_restores_memory_and_cores_but_never_shrinks_a_disk() -> None:
    base = Size(256, 1, 2)
    changes, notes = revert_target(Size(512, 2, 4), base)
    assert changes == {"memory": 256, "cores": 1}
    assert notes == ["disk stays at 4 GiB (the strategy says 2 GiB): disks cannot shrink"]
    assert revert_target(base, base) == ({}, [])
    assert revert_target(Size(128, 1, 2), base) == ({"memory": 256}, [])  # below the strategy: back up to it


def test_current_size_reads_pve_and_lxc_configs() -> None:
    assert current_size({"memory": 320, "cores": 2, "rootfs": "local-lvm:vm-101-disk-0,size=8G"}) == Size(320, 2, 8)
    assert current_size({"memory": "256", "cores": "1", "rootfs": "local:101/x.raw,size=512M"}) == Size(256, 1, 1)


def test_parse_ps_orders_by_resident_memory() -> None:
    text = ("    1  9000  0.0 systemd /sbin/init\n"
            "  77 230000 12.5 memhog memhog --big\n"
            "garbage line\n"
            "  80  1200  0.1 sleep sleep 600\n")
    procs = parse_ps(text)
    assert [(p.pid, p.comm, p.args) for p in procs] == [(77, "memhog", "memhog --big"), (1, "systemd", "/sbin/init"),
                                                        (80, "sleep", "sleep 600")]
    assert procs[0].as_dict()["rss_mib"] == round(230000 / 1024, 1)


def node(name: str, free_mib: int, maxmem_mib: int = 65536, online: bool = True, cpus: float = 8) -> NodeRoom:
    return NodeRoom(name, online, maxmem_mib * MIB, (maxmem_mib - free_mib) * MIB, cpus)


def test_pick_target_takes_the_node_with_the_most_free_memory_that_has_room() -> None:
    nodes = [node("pve1", 100), node("pve2", 9000), node("pve3", 30000), node("pve4", 60000, online=False)]
    assert pick_target(nodes, "pve1", 512 * MIB, 2, 2048 * MIB)[0] == "pve3"
    # the current node is never the target, even with the most room
    assert pick_target([node("pve1", 60000), node("pve2", 9000)], "pve1", 512 * MIB, 1, 0)[0] == "pve2"


@pytest.mark.parametrize(("nodes", "why"), [
    ([node("pve1", 100)], "a single node: there is nowhere to migrate to"),
    ([node("pve1", 100), node("pve2", 9000, online=False)], "no other node is online"),
    ([node("pve1", 100), node("pve2", 1000)], "no node has room: it needs 2560 MiB free"),
    ([node("pve1", 100), node("pve2", 9000, cpus=1)], "no node has room"),
])
def test_pick_target_says_why_not(nodes: list[NodeRoom], why: str) -> None:
    target, reason = pick_target(nodes, "pve1", 512 * MIB, 2, 2048 * MIB)
    assert target is None and reason.startswith(why)


def test_host_oom_lines_keep_only_the_containers_cgroup() -> None:
    log = "\n".join([
        "kernel: memhog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "kernel: oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=ns,mems_allowed=0,"
        "oom_memcg=/lxc.payload.104,task_memcg=/lxc.payload.104/ns/user.slice,task=memhog,pid=9,uid=100000",
        "kernel: Memory cgroup out of memory: Killed process 9 (memhog) total-vm:300000kB, anon-rss:260000kB",
        "kernel: oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/lxc.payload.1040,task=other,pid=10",
        "kernel: Memory cgroup out of memory: Killed process 10 (other) total-vm:1kB",
    ])
    lines = host_oom_lines(log, 104)
    assert len(lines) == 2 and "task=memhog" in lines[0] and "Killed process 9 (memhog)" in lines[1]
    assert host_oom_lines(log, 105) == []


def test_dmesg_lines_are_cut_to_the_window() -> None:
    from datetime import UTC, datetime

    from pveguard.recover.rca import _since_iso

    since = datetime(2026, 12, 6, 16, 25, tzinfo=UTC).timestamp()
    text = ("2026-12-06T16:29:33,490617+00:00 new\nnot a stamped line\n"
            "2026-12-06T16:20:00,000000+00:00 old\n2026-12-06T16:25:00,000001+00:00 edge")
    assert _since_iso(text, since).splitlines() == ["2026-12-06T16:29:33,490617+00:00 new",
                                                   "2026-12-06T16:25:00,000001+00:00 edge"]
