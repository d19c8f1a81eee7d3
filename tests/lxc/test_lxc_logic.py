"""The LXC backend's pure parts: PVE's cgroup mapping, VLAN bridge names, config rendering. No I/O."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends import cgroups, lxc_gateway, lxc_net
from pveguard.backends.base import MANAGED_MARKER, GuestSpec, NetSpec
from pveguard.backends.lxc import (
    HostFacts,
    IdRange,
    NetPlan,
    _checked_value,
    _process_id,
    _stale_create,
    _validate_spec,
    format_features,
    next_free_vmid,
    parse_features,
    parse_lxc_info,
    parse_lxc_ls,
    parse_subid,
    plan_net,
    pve_config,
    render_lxc_config,
    rootfs_size_gib,
)
from pveguard.errors import BackendError, ConfigError

MIB = 1024 * 1024

HYBRID_MOUNTINFO = """\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:8 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/cpuset rw,nosuid shared:9 - cgroup cgroup rw,cpuset
36 30 0:32 / /sys/fs/cgroup/blkio rw,nosuid shared:10 - cgroup cgroup rw,blkio
"""
V2_MOUNTINFO = """\
25 20 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
26 20 0:5 / /proc rw,nosuid shared:5 - proc proc rw
"""


def test_layout_hybrid_uses_v1_controllers() -> None:
    layout = cgroups.parse_layout(HYBRID_MOUNTINFO)
    assert layout.version == 1
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v2 == "/sys/fs/cgroup/unified"


def test_layout_pure_v2() -> None:
    layout = cgroups.parse_layout(V2_MOUNTINFO)
    assert (layout.version, layout.v2, layout.v1) == (2, "/sys/fs/cgroup", {})


@pytest.mark.parametrize(("memory", "expected"), [
    (256, 256 * 1024 * 1016),
    (16 * 1024 - 1, (16 * 1024 - 1) * 1024 * 1016),
    (16 * 1024, (16 * 1024 - 128) * MIB),
])
def test_memory_high_follows_pve(memory: int, expected: int) -> None:
    assert cgroups.memory_high_bytes(memory) == expected


@pytest.mark.parametrize(("limits", "version", "memsw", "expected"), [
    (cgroups.Limits(256, 512, 0, 100, "0"), 2, True, [
        ("memory.max", str(256 * MIB)), ("memory.high", str(256 * 1024 * 1016)),
        ("memory.swap.max", str(512 * MIB)), ("cpu.max", "max 100000"), ("cpu.weight", "100"),
        ("cpuset.cpus", "0")]),
    (cgroups.Limits(1024, 0, 1.5, 20000, None), 2, True, [
        ("memory.max", str(1024 * MIB)), ("memory.high", str(1024 * 1024 * 1016)),
        ("memory.swap.max", "0"), ("cpu.max", "150000 100000"), ("cpu.weight", "10000")]),
    (cgroups.Limits(256, 512, 0, 100, "0-1"), 1, True, [
        ("memory.limit_in_bytes", str(256 * MIB)), ("memory.memsw.limit_in_bytes", str(768 * MIB)),
        ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1"), ("cpu.shares", "1024"),
        ("cpuset.cpus", "0-1")]),
    (cgroups.Limits(256, 512, 0.5, 50, None), 1, False, [
        ("memory.limit_in_bytes", str(256 * MIB)),
        ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000"), ("cpu.shares", "512")]),
])
def test_settings_follow_pve_mapping(limits: cgroups.Limits, version: cgroups.CgroupVersion, memsw: bool,
                                     expected: list[tuple[str, str]]) -> None:
    assert cgroups.settings(limits, version, memsw=memsw) == expected


def test_lxc_config_lines_v2_omit_cpu_max_without_cpulimit() -> None:
    lines = cgroups.lxc_config_lines(cgroups.Limits(512, 512), 2)
    assert "lxc.cgroup2.memory.max = 536870912" in lines
    assert not any("cpu.max" in line for line in lines)
    v1 = cgroups.lxc_config_lines(cgroups.Limits(512, 512, 2), 1)
    assert "lxc.cgroup.memory.memsw.limit_in_bytes = 1073741824" in v1
    assert "lxc.cgroup.cpu.cfs_quota_us = 200000" in v1


@pytest.mark.parametrize(("old", "new", "version", "expected_keys"), [
    # v1 grow: memsw must rise before the limit or the kernel refuses the limit.
    ((256, 0), (512, 0), 1, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
    ((512, 0), (256, 0), 1, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
    ((512, 0), (512, 256), 1, ["memory.memsw.limit_in_bytes"]),
    ((512, 512), (1024, 0), 1, ["memory.limit_in_bytes"]),  # total unchanged: only the limit moves
    # v2 shrink: memory.high first so the guest is throttled, not OOM-killed.
    ((1024, 0), (512, 0), 2, ["memory.high", "memory.max"]),
    ((512, 0), (1024, 0), 2, ["memory.max", "memory.high"]),
    ((512, 0), (512, 0), 2, []),
])
def test_live_writes_order(old: tuple[int, int], new: tuple[int, int], version: cgroups.CgroupVersion,
                           expected_keys: list[str]) -> None:
    writes = cgroups.live_writes(cgroups.Limits(*old), cgroups.Limits(*new), version)
    assert [k for k, _ in writes] == expected_keys


def test_live_writes_include_cpu_changes() -> None:
    writes = cgroups.live_writes(cgroups.Limits(256, 0, 0, 100, "0"), cgroups.Limits(256, 0, 1, 100, "1"), 2)
    assert writes == [("cpu.max", "100000 100000"), ("cpuset.cpus", "1")]


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,5,7-8", [0, 1, 5, 7, 8]), ("", []), ("3,1", [1, 3]),
])
def test_cpulist_round_trip(text: str, cpus: list[int]) -> None:
    assert cgroups.parse_cpulist(text) == cpus
    assert cgroups.parse_cpulist(cgroups.format_cpulist(cpus)) == cpus


@pytest.mark.parametrize(("cores", "host", "in_use", "expected"), [
    (1, [0, 1], [], [0]),
    (1, [0, 1], [[0]], [1]),
    (1, [0, 1], [[0], [1]], [0]),
    (2, [0, 1, 2, 3], [[0, 1], [0]], [2, 3]),
    (4, [0, 1], [], [0, 1]),  # more cores than the host has: all of them
])
def test_choose_cpuset_least_used(cores: int, host: list[int], in_use: list[list[int]],
                                  expected: list[int]) -> None:
    assert cgroups.choose_cpuset(cores, host, in_use) == expected


def test_container_paths_stop_at_payload_cgroup() -> None:
    text = ("4:memory:/lxc.payload.101/init.scope\n2:cpu,cpuacct:/lxc.payload.101\n"
            "1:name=systemd:/lxc.payload.101/init.scope\n0::/lxc.payload.101/init.scope\n")
    paths = cgroups.container_paths(text, "101")
    assert paths["memory"] == "/lxc.payload.101"
    assert paths["cpu"] == paths["cpuacct"] == "/lxc.payload.101"
    assert paths[""] == "/lxc.payload.101"
    layout = cgroups.parse_layout(HYBRID_MOUNTINFO)
    assert cgroups.file_path(layout, paths, "memory.limit_in_bytes") == \
        Path("/sys/fs/cgroup/memory/lxc.payload.101/memory.limit_in_bytes")
    assert cgroups.file_path(layout, paths, "cpuacct.usage") == \
        Path("/sys/fs/cgroup/cpu,cpuacct/lxc.payload.101/cpuacct.usage")


def test_usage_parsers() -> None:
    assert cgroups.parse_blkio_v1("7:0 Read 4096\n7:0 Write 8192\n7:0 Total 12288\n8:0 Read 1\nTotal 12289\n") \
        == (4097, 8192)
    assert cgroups.parse_io_stat_v2("7:0 rbytes=10 wbytes=20 rios=1\n8:0 rbytes=1 wbytes=2\n") == (11, 22)
    assert cgroups.parse_kv("usage_usec 123\nuser_usec 100\nbad line here\n") == {"usage_usec": 123,
                                                                                   "user_usec": 100}


def test_usage_readers_on_fixture_tree(tmp_path: Path) -> None:
    mem = tmp_path / "memory/lxc.payload.101"
    cpu = tmp_path / "cpuacct/lxc.payload.101"
    blk = tmp_path / "blkio/lxc.payload.101"
    for d in (mem, cpu, blk):
        d.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("1000000\n")
    (mem / "memory.stat").write_text("cache 5\ntotal_inactive_file 400000\n")
    (cpu / "cpuacct.usage").write_text("5000000000\n")
    (blk / "blkio.throttle.io_service_bytes_recursive").write_text("7:0 Read 10\n7:0 Write 20\nTotal 30\n")
    layout = cgroups.CgroupLayout(1, {c: str(tmp_path / c) for c in ("memory", "cpuacct", "blkio")})
    paths = dict.fromkeys(("memory", "cpuacct", "blkio"), "/lxc.payload.101")
    u = cgroups.read_usage(layout, paths)
    assert (u.cpu_ns, u.mem, u.diskread, u.diskwrite) == (5_000_000_000, 600000, 10, 20)


# --- networking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("bridge", "tag", "expected"), [
    ("vmbr0", 10, "vmbr0v10"),
    ("vmbr0", 4094, "vmbr0v4094"),
    ("br-services1", 10, "br-services1v10"),  # exactly 15: kept
])
def test_vlan_bridge_name_short(bridge: str, tag: int, expected: str) -> None:
    assert lxc_net.vlan_bridge_name(bridge, tag) == expected


def test_vlan_bridge_name_long_is_shortened_stably_and_uniquely() -> None:
    a = lxc_net.vlan_bridge_name("br-services-01", 4094)
    b = lxc_net.vlan_bridge_name("br-services-02", 4094)
    assert len(a) <= 15 and len(b) <= 15
    assert a != b
    assert a.endswith("v4094") and a.startswith("br-ser")
    assert a == lxc_net.vlan_bridge_name("br-services-01", 4094)


@pytest.mark.parametrize(("configured", "filters", "expected"), [
    ("auto", False, "bridge_per_vlan"), ("auto", True, "vlan_filtering"),
    ("bridge_per_vlan", True, "bridge_per_vlan"), ("vlan_filtering", False, "vlan_filtering"),
])
def test_resolve_vlan_mode(configured: str, filters: bool, expected: str) -> None:
    assert lxc_net.resolve_vlan_mode(configured, filters) == expected


@pytest.mark.parametrize(("net0", "mode", "filters", "expected"), [
    ({"bridge": "vmbr0"}, "auto", False, NetPlan("vmbr0", None, "untagged")),
    ({"bridge": "vmbr0", "tag": "10"}, "auto", False, NetPlan("vmbr0v10", None, "bridge_per_vlan")),
    ({"bridge": "vmbr0", "tag": "10"}, "auto", True, NetPlan("vmbr0", 10, "vlan_filtering")),
])
def test_plan_net(net0: dict[str, str], mode: str, filters: bool, expected: NetPlan) -> None:
    assert plan_net(net0, mode, filters) == expected


def test_net0_round_trip_in_pve_order() -> None:
    text = "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,tag=10,type=veth"
    assert lxc_net.format_net0(lxc_net.parse_net0(text)) == text
    assert lxc_net.parse_net0("eth0,bridge=vmbr0")["name"] == "eth0"


def test_interfaces_files() -> None:
    static = lxc_net.render_interfaces("10.250.1.2/24", "10.250.1.1")
    assert "iface eth0 inet static\n\taddress 10.250.1.2/24\n\tgateway 10.250.1.1\n" in static
    assert "iface eth0 inet dhcp" in lxc_net.render_interfaces("dhcp", None)
    assert "inet6 static" in lxc_net.render_interfaces("fd00::5/64", None)
    assert "10.250.1.2\tweb\n" in lxc_net.render_hosts("web", "10.250.1.2/24")


@pytest.mark.parametrize(("ip", "gw", "message"), [
    ("10.0.0.5", None, "prefix length"),
    ("ten", None, "not 'dhcp'"),
    ("10.0.0.5/24", "10.0.1.1", "not inside 10.0.0.0/24"),
    ("10.0.0.5/24", "gateway", "not an IP address"),
])
def test_validate_ip_rejects(ip: str, gw: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lxc_net.validate_ip(ip, gw)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("root:100000:65536\n", IdRange(100000, 65536)),
    ("alice:100000:65536\nroot:200000:65536\n", IdRange(200000, 65536)),
    ("root:100000:1000\n", None),  # too small for a full map
    ("", None),
    ("# comment\nroot:x:65536\n", None),
])
def test_parse_subid(text: str, expected: IdRange | None) -> None:
    assert parse_subid(text) == expected


def spec(**kw: Any) -> GuestSpec:
    base: dict[str, Any] = dict(name="web", role="Gateway", cores=1, memory_mib=256, swap_mib=512, disk_gib=4,
                                net=NetSpec(bridge="vmbr0", vlan=10, ip="10.250.1.2/24", gateway="10.250.1.1"),
                                features={"nesting": True}, tags=["extra"], startup_order=2,
                                description="front door\n" + MANAGED_MARKER)
    base.update(kw)
    return GuestSpec(**base)


def test_pve_config_from_spec() -> None:
    conf = pve_config(spec(), 105, unprivileged=True, hwaddr="BC:24:11:AA:BB:CC")
    assert conf["rootfs"] == "local:105/vm-105-disk-0.raw,size=4G"
    assert conf["net0"] == ("name=eth0,bridge=vmbr0,firewall=1,gw=10.250.1.1,hwaddr=BC:24:11:AA:BB:CC,"
                            "ip=10.250.1.2/24,tag=10,type=veth")
    assert conf["tags"] == "extra;gateway;pveguard"
    assert conf["description"] == "front door\nmanaged-by: pveguard\n"
    assert (conf["cores"], conf["memory"], conf["swap"], conf["unprivileged"], conf["onboot"]) == (1, 256, 512, 1, 1)
    assert conf["features"] == "nesting=1"
    assert conf["startup"] == "order=2"
    assert "cpulimit" not in conf
    privileged = pve_config(spec(description="", onboot=False, cpulimit=1.5), 105, unprivileged=False, hwaddr="x")
    assert "unprivileged" not in privileged and "onboot" not in privileged
    assert privileged["description"] == "managed-by: pveguard\n"
    assert privileged["cpulimit"] == 1.5


def facts(version: cgroups.CgroupVersion, *, ids: bool, apparmor: bool = False) -> HostFacts:
    layout = cgroups.parse_layout(V2_MOUNTINFO if version == 2 else HYBRID_MOUNTINFO, memsw=True)
    r = IdRange(100000, 65536) if ids else None
    return HostFacts(layout=layout, uid_range=r, gid_range=r, apparmor=apparmor, lxcfs=True, vlan_module=False,
                     cpus=[0, 1])


def test_render_v2_unprivileged_vlan_filtering() -> None:
    conf = pve_config(spec(), 105, unprivileged=True, hwaddr="BC:24:11:AA:BB:CC")
    text = render_lxc_config(105, conf, facts(2, ids=True, apparmor=True), image=Path("/d/105.raw"),
                             net=NetPlan("vmbr0", 10, "vlan_filtering"), cpuset="1")
    lines = text.splitlines()
    for expected in ("lxc.uts.name = web", "lxc.rootfs.path = loop:/d/105.raw", "lxc.idmap = u 0 100000 65536",
                     "lxc.idmap = g 0 100000 65536", "lxc.include = /usr/share/lxc/config/debian.userns.conf",
                     "lxc.net.0.link = vmbr0", "lxc.net.0.veth.vlan.id = 10", "lxc.net.0.veth.pair = veth105i0",
                     "lxc.net.0.hwaddr = BC:24:11:AA:BB:CC", "lxc.cgroup2.memory.max = 268435456",
                     "lxc.cgroup2.memory.swap.max = 536870912", "lxc.cgroup2.cpuset.cpus = 1",
                     "lxc.apparmor.profile = generated", "lxc.apparmor.allow_nesting = 1", "lxc.start.auto = 1",
                     "lxc.start.order = 2", "lxc.signal.halt = SIGRTMIN+3"):
        assert expected in lines, expected
    assert not any(line.startswith("lxc.cgroup.") for line in lines)


def test_bridge_per_vlan_adds_a_pre_start_hook_that_makes_the_bridge() -> None:
    conf = pve_config(spec(), 105, unprivileged=False, hwaddr="BC:24:11:AA:BB:CC")
    text = render_lxc_config(105, conf, facts(1, ids=False), image=Path("/d/105.raw"),
                             net=NetPlan("vmbr0v10", None, "bridge_per_vlan"), cpuset="0")
    hook = next(line for line in text.splitlines() if line.startswith("lxc.hook.pre-start"))
    assert "ip link add vmbr0v10 type bridge" in hook and "ip link set dev vmbr0v10 up" in hook
    untagged = render_lxc_config(105, conf, facts(1, ids=False), image=Path("/d/105.raw"),
                                 net=NetPlan("vmbr0", None, "untagged"), cpuset="0")
    assert "lxc.hook.pre-start" not in untagged


def test_pveguards_own_network_gets_a_hook_that_brings_it_back() -> None:
    conf = pve_config(spec(), 105, unprivileged=False, hwaddr="BC:24:11:AA:BB:CC")
    hook = lxc_gateway.ensure_command("vmbr0", 10, "10.101.0.0/16", Path("/run/pveguard"))
    text = render_lxc_config(105, conf, facts(1, ids=False), image=Path("/d/105.raw"),
                             net=NetPlan("vmbr0v10", None, "bridge_per_vlan"), cpuset="0", network_hook=hook)
    hooks = [line for line in text.splitlines() if line.startswith("lxc.hook.pre-start")]
    assert hooks == [f"lxc.hook.pre-start = {hook}"]
    assert hook.endswith("-m pveguard.backends.lxc_gateway ensure vmbr0 10 10.101.0.0/16 /run/pveguard")
    assert lxc_gateway.main(["ensure"]) == 2


def test_render_v1_without_subuid_runs_privileged() -> None:
    conf = pve_config(spec(), 105, unprivileged=True, hwaddr="BC:24:11:AA:BB:CC")
    text = render_lxc_config(105, conf, facts(1, ids=False), image=Path("/d/105.raw"),
                             net=NetPlan("vmbr0v10", None, "bridge_per_vlan"), cpuset="0")
    lines = text.splitlines()
    assert not any(line.startswith("lxc.idmap") for line in lines)
    assert "lxc.net.0.link = vmbr0v10" in lines
    assert not any("vlan.id" in line for line in lines)
    assert "lxc.cgroup.memory.limit_in_bytes = 268435456" in lines
    assert "lxc.cgroup.memory.memsw.limit_in_bytes = 805306368" in lines
    assert "lxc.cgroup.cpuset.cpus = 0" in lines
    assert "lxc.apparmor.profile = unconfined" in lines


@pytest.mark.parametrize(("taken", "expected"), [
    (set(), 100), ({100, 101}, 102), ({100, 102}, 101), ({5, 99}, 100),
])
def test_next_free_vmid(taken: set[int], expected: int) -> None:
    assert next_free_vmid(taken) == expected


def test_lxc_tool_output_parsers() -> None:
    assert parse_lxc_ls("NAME STATE   PID\n100  RUNNING 8800\n101  STOPPED -\n") == {
        "100": ("RUNNING", 8800), "101": ("STOPPED", None)}
    assert parse_lxc_info("State:          RUNNING\nPID:            8800\n") == {"State": "RUNNING", "PID": "8800"}


@pytest.mark.parametrize(("rootfs", "gib"), [
    ("local:101/vm-101-disk-0.raw,size=8G", 8), ("x,size=512M", 1), ("x,size=1T", 1024), ("x,size=1.5G", 2),
])
def test_rootfs_size(rootfs: str, gib: int) -> None:
    assert rootfs_size_gib(rootfs) == gib


def test_rootfs_without_size_is_an_error() -> None:
    with pytest.raises(ConfigError, match="size="):
        rootfs_size_gib("local:101/vm-101-disk-0.raw")


def test_features_round_trip() -> None:
    assert parse_features("nesting=1,fuse=0") == {"nesting": True, "fuse": False}
    assert format_features({"nesting": True, "fuse": False, "keyctl": True}) == "keyctl=1,nesting=1"


@pytest.mark.parametrize(("key", "value", "error", "message"), [
    ("memory", 8, ConfigError, "at least 16"),
    ("cores", "two", ConfigError, "must be a number"),
    ("cpulimit", 9000, ConfigError, "between 0 and 8192"),
    ("hostname", "Not_Valid", ConfigError, "not a valid hostname"),
    ("net0", "name=eth0,ip=dhcp", ConfigError, "no bridge"),
    ("net0", "bridge=vmbr0,tag=5000", ConfigError, "not a VLAN id"),
    ("net0", "bridge=$(reboot)", ConfigError, "not a valid bridge name"),
    ("features", "mknod=1", ConfigError, "not supported"),
    ("unprivileged", 1, BackendError, "cannot change"),
    ("arch", "arm64", ConfigError, "cannot change 'arch'"),
])
def test_update_values_are_checked(key: str, value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _checked_value(key, value, {"unprivileged": 0, "net0": "name=eth0,bridge=vmbr0"})


def test_update_net0_keeps_hwaddr() -> None:
    old = {"net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth"}
    assert _checked_value("net0", "bridge=vmbr1,ip=10.0.0.2/24,tag=5", old) == \
        "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:01,ip=10.0.0.2/24,tag=5,type=veth"


@pytest.mark.parametrize(("kw", "message"), [
    ({"name": "Web_1"}, "not a valid hostname"),
    ({"memory_mib": 8}, "minimum of 16"),
    ({"cores": 0}, "at least 1"),
    ({"disk_gib": 0}, "at least 1G"),
    ({"vmid": 42}, "below 100"),
    ({"features": {"mknod": True}}, "not supported"),
    ({"net": NetSpec(bridge="vmbr0", vlan=5000)}, "outside 1..4094"),
    ({"net": NetSpec(bridge="vmbr0", ip="10.0.0.1")}, "prefix length"),
    ({"net": NetSpec(bridge="vmbr0'; reboot")}, "not a valid bridge name"),
    ({"net": NetSpec(bridge="a-very-long-bridge-name")}, "not a valid bridge name"),
])
def test_bad_specs_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _validate_spec(spec(**kw))


def test_stale_create_only_when_the_creator_is_gone() -> None:
    me = _process_id(os.getpid())
    assert not _stale_create({"lock": "create", "creator": me})
    assert _stale_create({"lock": "create", "creator": [me[0], me[1] + 1]})  # same pid, another process
    assert _stale_create({"lock": "create", "creator": [2**22 + 12345, 1]})  # no such pid
    assert not _stale_create({"creator": [2**22 + 12345, 1]})  # finished creates carry no lock
    assert not _stale_create({"lock": "create"})  # unknown creator: never assumed dead


# --- resources.hard_limits: false (soft limits) ----------------------------------------------------


def test_soft_limits_lift_the_caps_and_keep_the_targets() -> None:
    soft = cgroups.Limits(1024, 512, 1.5, 200, "0", hard=False)
    assert cgroups.settings(soft, 2) == [
        ("memory.max", "max"), ("memory.high", str(1024 * MIB)), ("memory.swap.max", str(512 * MIB)),
        ("cpu.max", "max 100000"), ("cpu.weight", "200"), ("cpuset.cpus", "0")]
    assert cgroups.settings(soft, 1) == [
        ("memory.limit_in_bytes", "-1"), ("memory.memsw.limit_in_bytes", "-1"),
        ("memory.soft_limit_in_bytes", str(1024 * MIB)), ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "-1"), ("cpu.shares", "2048"), ("cpuset.cpus", "0")]
    lines = cgroups.lxc_config_lines(soft, 2)
    assert "lxc.cgroup2.memory.max = max" in lines and f"lxc.cgroup2.memory.high = {1024 * MIB}" in lines
    assert not any("cpu.max" in line for line in lines)  # cpulimit is not applied as a quota


@pytest.mark.parametrize(("old_hard", "new_hard", "version", "expected"), [
    # to soft on v1: memsw is lifted before the limit (the kernel refuses a limit above memsw)
    (True, False, 1, [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1"),
                      ("memory.soft_limit_in_bytes", str(512 * MIB)), ("cpu.cfs_quota_us", "-1")]),
    # back to hard on v1: the limit first (below the unlimited memsw), then memsw, then the soft target unset
    (False, True, 1, [("memory.limit_in_bytes", str(512 * MIB)), ("memory.memsw.limit_in_bytes", str(512 * MIB)),
                      ("cpu.cfs_quota_us", "100000"), ("memory.soft_limit_in_bytes", "-1")]),
    # back to hard on v2: memory.high before memory.max, as when shrinking
    (False, True, 2, [("memory.high", str(512 * 1024 * 1016)), ("memory.max", str(512 * MIB)),
                      ("cpu.max", "100000 100000")]),
])
def test_live_writes_switch_between_hard_and_soft(old_hard: bool, new_hard: bool, version: cgroups.CgroupVersion,
                                                  expected: list[tuple[str, str]]) -> None:
    old, new = cgroups.Limits(512, 0, 1, hard=old_hard), cgroups.Limits(512, 0, 1, hard=new_hard)
    assert cgroups.live_writes(old, new, version) == expected


def test_soft_limits_from_the_spec_reach_the_lxc_config() -> None:
    conf = pve_config(spec(hard_limits=False, cpulimit=1.0), 105, unprivileged=True, hwaddr="BC:24:11:AA:BB:CC")
    assert conf["hard_limits"] == 0
    text = render_lxc_config(105, conf, facts(2, ids=True), image=Path("/d/105.raw"),
                             net=NetPlan("vmbr0", 10, "vlan_filtering"), cpuset="1")
    assert "lxc.cgroup2.memory.max = max" in text.splitlines()
    assert "cpu.max" not in text
    assert "hard_limits" not in pve_config(spec(), 105, unprivileged=True, hwaddr="x")  # hard: the default
    assert _checked_value("hard_limits", "0", {}) == 0
    with pytest.raises(ConfigError, match="0 or 1"):
        _checked_value("hard_limits", "soft", {})


def test_backup_volume_is_mp0_and_a_bind_mounted_directory() -> None:
    from pveguard.backends.base import DataVolume
    from pveguard.provision.final_backup import data_volumes, left_out_of_backups

    conf = pve_config(spec(backup_volume=DataVolume(100, "/srv/backup")), 105, unprivileged=True, hwaddr="x")
    assert conf["mp0"] == "local:105/vm-105-disk-1,mp=/srv/backup,backup=1,size=100G"
    # what a delete of this container sees: a data volume, in backups
    assert list(data_volumes(conf)) == ["mp0"] and left_out_of_backups(data_volumes(conf)) == []
    text = render_lxc_config(105, conf, facts(2, ids=True), image=Path("/d/105/vm-105-disk-0.raw"),
                             net=NetPlan("vmbr0", 10, "vlan_filtering"), cpuset="1")
    assert "lxc.mount.entry = /d/105/mp0 srv/backup none bind,create=dir 0 0" in text.splitlines()
    assert "mp0" not in pve_config(spec(), 105, unprivileged=True, hwaddr="x")
