"""The LXC backend against real containers (slow; root, lxc and debootstrap needed).

The issue's "Real LXC" check, driven through the Backend interface: three small containers
(256 MB, 1 core; two on VLAN 10, one on VLAN 20, all in one IP subnet so only the VLAN separates
them), running systemd, limited in their cgroups (and in `free` through lxcfs), reachable on their
VLAN and unreachable across it, changed live, destroyed without a trace. Addresses exist only
inside the containers, on bridges the test creates.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends import cgroups, lxc_net
from pveguard.backends.base import GrowTo, Guest, GuestSpec, NetSpec
from pveguard.backends.lxc import LxcBackend
from pveguard.errors import BackendError, ConfigError

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def small(name: str, bridge: str, vlan: int, ip: str, **kw: object) -> GuestSpec:
    return GuestSpec(name=name, role="test", cores=1, memory_mib=256, swap_mib=256, disk_gib=1,
                     net=NetSpec(bridge=bridge, vlan=vlan, ip=ip), **kw)  # type: ignore[arg-type]


def sh(b: LxcBackend, g: Guest, script: str, timeout: float = 60) -> tuple[int, str]:
    r = b.exec(g, ["sh", "-c", script], timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def limit_keys(b: LxcBackend) -> tuple[str, str]:
    """The memory limit's cgroup file, on the host side and as seen inside the container."""
    if b.facts.layout.version == 2:
        return "memory.max", "/sys/fs/cgroup/memory.max"
    return "memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.limit_in_bytes"


def free_total_mib(b: LxcBackend, g: Guest) -> int:
    rc, out = sh(b, g, "free -m")
    assert rc == 0, out
    return int(next(line for line in out.splitlines() if line.startswith("Mem:")).split()[1])


def test_three_containers_vlan_isolation_live_memory_and_clean_destroy(lxc_env: Any, lxcfs: bool) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("a")
    specs = [small("pgt-a1", br, 10, "10.250.10.11/24"), small("pgt-a2", br, 10, "10.250.10.12/24"),
             small("pgt-b1", br, 20, "10.250.10.13/24")]
    guests = [b.create(s) for s in specs]
    assert [g.vmid for g in guests] == sorted(g.vmid for g in guests)
    for g in guests:
        b.start(g)

    listed = {g.name: g for g in b.list_guests()}
    assert sorted(listed) == ["pgt-a1", "pgt-a2", "pgt-b1"]
    assert all(g.status == "running" and g.managed and "pveguard" in g.tags for g in listed.values())
    a1, a2, b1 = (listed[n] for n in ("pgt-a1", "pgt-a2", "pgt-b1"))

    # PVE-form config, as the planner reads it.
    conf = b.get_config(a1)
    assert (conf["cores"], conf["memory"], conf["swap"], conf["hostname"]) == (1, 256, 256, "pgt-a1")
    assert conf["rootfs"].endswith(",size=1G")
    net0 = lxc_net.parse_net0(conf["net0"])
    assert (net0["bridge"], net0["tag"], net0["firewall"], net0["ip"]) == (br, "10", "1", "10.250.10.11/24")
    assert "managed-by: pveguard" in conf["description"]
    assert conf.get("unprivileged", 0) == (1 if b.facts.unprivileged_ok else 0)
    # Nothing to change when asked for what is there: no restart, no rewrite.
    assert b.update(a1, {"memory": 256, "cores": 1, "net0": conf["net0"]}) == []
    assert b.get_config(a1)["digest"] == conf["digest"]

    # systemd booted inside; the limit sits in the container's own cgroup.
    host_key, inside_file = limit_keys(b)
    for g in (a1, a2, b1):
        rc, out = sh(b, g, "systemctl is-system-running; readlink /proc/1/exe; cat " + inside_file)
        state, init, limit = out.split()[:3]
        assert state in ("running", "degraded"), out
        assert init.endswith("systemd"), out
        assert int(limit) == 256 * MIB
        assert b.cgroup_value(g, host_key) == str(256 * MIB)
    if lxcfs:
        assert free_total_mib(b, a1) == 256
    # cores -> a cpuset: one CPU each, spread over the host's CPUs.
    cpusets = [b.cgroup_value(g, "cpuset.cpus") for g in (a1, a2, b1)]
    assert all(c is not None and len(cgroups.parse_cpulist(c)) == 1 for c in cpusets), cpusets
    if len(b.facts.cpus) >= 2:
        assert cpusets[0] != cpusets[1]
    assert sh(b, a1, "nproc")[1].strip() == "1"

    # Isolation: VLAN 10 reaches VLAN 10, VLAN 20 reaches nothing, though all share one subnet.
    rc, out = sh(b, a1, "ping -c 2 -W 2 10.250.10.12")
    assert rc == 0, out
    rc, out = sh(b, a1, "ping -c 2 -W 1 10.250.10.13")
    assert rc != 0, "VLAN 10 reached VLAN 20:\n" + out
    rc, out = sh(b, b1, "ping -c 2 -W 1 10.250.10.12")
    assert rc != 0, "VLAN 20 reached VLAN 10:\n" + out
    rc, out = sh(b, a2, "setsid nc -lk 5000 </dev/null >/tmp/got 2>&1 & sleep 0.5; echo started")
    assert rc == 0, out
    rc, out = sh(b, a1, "echo hello-from-a1 | nc -N -w 3 10.250.10.12 5000")
    assert rc == 0, out
    rc, out = sh(b, b1, "echo hello-from-b1 | nc -N -w 2 10.250.10.12 5000")
    assert rc != 0, "TCP crossed VLANs:\n" + out
    time.sleep(0.5)
    rc, out = sh(b, a2, "cat /tmp/got")
    assert out.split() == ["hello-from-a1"]

    # One stats sweep sees all three, with traffic on the VLAN 10 pair.
    stats = {s.name: s for s in b.stats()}
    assert sorted(stats) == ["pgt-a1", "pgt-a2", "pgt-b1"]
    for s in stats.values():
        assert s.status == "running" and s.maxmem == 256 * MIB and s.maxdisk == 1024 * MIB
        assert 0 < s.mem < 256 * MIB and s.disk > 50 * MIB and s.uptime >= 0
    assert stats["pgt-a1"].netout > 0 and stats["pgt-a2"].netin > 0

    # Memory changes live: same init process, new limit inside and through lxcfs.
    pid_before = sh(b, a1, "cat /proc/1/stat")[1].split()[21]
    assert b.update(a1, {"memory": 384, "swap": 128}) == []
    assert b.cgroup_value(a1, host_key) == str(384 * MIB)
    assert sh(b, a1, "cat " + inside_file)[1].strip() == str(384 * MIB)
    if b.facts.layout.version == 1 and b.facts.layout.memsw:
        assert b.cgroup_value(a1, "memory.memsw.limit_in_bytes") == str(512 * MIB)
    if lxcfs:
        assert free_total_mib(b, a1) == 384
    assert sh(b, a1, "cat /proc/1/stat")[1].split()[21] == pid_before
    assert b.get_config(a1)["memory"] == 384
    # Shrinking back works as well (the v1 memsw/limit order matters here).
    assert b.update(a1, {"memory": 256, "swap": 256}) == []
    assert b.cgroup_value(a1, host_key) == str(256 * MIB)

    vlan_bridges = {lxc_net.vlan_bridge_name(br, 10), lxc_net.vlan_bridge_name(br, 20)}
    if b.capabilities().vlan_mode == "bridge_per_vlan":
        assert all(lxc_net.exists(n) for n in vlan_bridges)
    for g in (a1, a2, b1):
        b.destroy(g)
    assert b.list_guests() == []
    assert not any(lxc_net.exists(n) for n in vlan_bridges)
    assert not any(Path(b.config.disk_dir).iterdir())
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []


def test_stop_push_pull_hostname_and_disk_growth(lxc_env: Any) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("b")
    g = b.create(GuestSpec(name="pgt-one", role="test", cores=1, memory_mib=128, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=br, ip="10.250.30.2/24", gateway="10.250.30.1")))
    src = lxc_env.root / "payload"
    src.write_bytes(b"\x00binary\xffdata\n")
    b.push(g, str(src), "/root/payload", mode=0o600)  # stopped: through a temporary mount
    b.start(g)
    assert sh(b, g, "stat -c %a /root/payload")[1].strip() == "600"
    assert "inet 10.250.30.2/24" in sh(b, g, "ip -4 -o addr show eth0")[1]
    assert "default via 10.250.30.1" in sh(b, g, "ip route")[1]
    back = lxc_env.root / "back"
    b.pull(g, "/root/payload", str(back))
    assert back.read_bytes() == src.read_bytes()

    # Keys LXC reads only at start are reported, and take effect after a restart.
    pending = b.update(g, {"hostname": "pgt-renamed", "rootfs": "local:x,size=2G"})
    assert pending == ["hostname", "rootfs"]
    b.shutdown(g, timeout=30)
    assert b.list_guests()[0].status == "stopped"
    b.start(g)
    assert sh(b, g, "hostname")[1].strip() == "pgt-renamed"
    size_kib = int(sh(b, g, "df -k --output=size / | tail -1")[1])
    assert size_kib > 1.5 * 1024 * 1024
    with pytest.raises(BackendError, match="cannot shrink"):
        b.update(g, {"rootfs": "local:x,size=1G"})
    # cpulimit and cores change live: quota and cpuset of the running container.
    assert b.update(g, {"cpulimit": 0.5, "cores": 2}) == []
    if b.facts.layout.version == 2:
        assert b.cgroup_value(g, "cpu.max") == "50000 100000"
    else:
        assert b.cgroup_value(g, "cpu.cfs_quota_us") == "50000"
    assert len(cgroups.parse_cpulist(b.cgroup_value(g, "cpuset.cpus") or "")) == min(2, len(b.facts.cpus))
    assert sh(b, g, "nproc")[1].strip() == str(min(2, len(b.facts.cpus)))
    assert b.update(g, {"cores": 1}, delete=["cpulimit"]) == []
    assert b.cgroup_value(g, "cpu.max" if b.facts.layout.version == 2 else "cpu.cfs_quota_us") in ("max 100000", "-1")
    assert "cpulimit" not in b.get_config(g)
    r = b.exec(g, ["sh", "-c", "exit 3"])
    assert r.returncode == 3 and not r.ok
    b.stop(g)
    with pytest.raises(BackendError, match="not running"):
        b.exec(g, ["true"])
    b.destroy(g)
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []


def test_bad_input_fails_cleanly_and_leaves_nothing(lxc_env: Any) -> None:
    b = lxc_env.backend
    b.pve_dir = lxc_env.root  # as on a PVE node, where a missing bridge is the admin's to make
    with pytest.raises(BackendError, match="does not exist") as e:
        b.create(small("pgt-x", f"{lxc_env.prefix}none", 10, "10.250.40.2/24"))
    assert "ip link add" in str(e.value)
    br = lxc_env.bridge("c")
    with pytest.raises(BackendError, match="not in") as e:
        b.create(small("pgt-x", br, 10, "10.250.40.2/24", template="alpine-3.19-default"))
    assert "vztmpl" in str(e.value)
    with pytest.raises(ConfigError):
        b.create(small("Bad_Name", br, 10, "10.250.40.2/24"))
    assert b.list_guests() == []
    assert not (Path(b.config.disk_dir).exists() and any(Path(b.config.disk_dir).iterdir()))
    g = b.create(small("pgt-y", br, 10, "10.250.40.3/24", vmid=4321))
    assert g.vmid == 4321
    with pytest.raises(BackendError, match="already in use"):
        b.create(small("pgt-z", br, 10, "10.250.40.4/24", vmid=4321))
    with pytest.raises(ConfigError, match="at least 16"):
        b.update(g, {"memory": 4})
    b.destroy(g)
    assert b.list_guests() == []


def test_unprivileged_container_with_an_id_range(lxc_env: Any) -> None:
    """An unprivileged container: root inside is uid 100000 outside, files are shifted, systemd boots.

    This host's /etc/subuid grants root no range (containers run privileged, see capabilities), so
    the scenario runs in a private mount namespace with `root:100000:65536` bind-mounted over
    /etc/subuid and /etc/subgid: the host's files stay untouched and vanish with the namespace.
    """
    b = lxc_env.backend
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    br = lxc_env.bridge("u")
    argv = [sys.executable, str(Path(__file__).with_name("unpriv_scenario.py")), str(lxc_env.root),
            b.config.template_cache, br]
    if not b.facts.unprivileged_ok:
        if not (Path("/etc/subuid").is_file() and Path("/etc/subgid").is_file()):
            pytest.skip("no /etc/subuid and /etc/subgid to overlay with an id range")
        ids = lxc_env.root / "subid"
        ids.write_text("root:100000:65536\n")
        script = (f"mount --bind {ids} /etc/subuid && mount --bind {ids} /etc/subgid && "
                  + " ".join(shlex.quote(a) for a in argv))
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert seen["unprivileged_ok"] is True
    assert seen["config_unprivileged"] == 1
    assert seen["lxc_config_idmap"] == ["lxc.idmap = u 0 100000 65536", "lxc.idmap = g 0 100000 65536"]
    assert seen["uid_map"] == ["0", "100000", "65536"]
    assert seen["whoami"] == "0"
    assert seen["host_uid_of_init"] == "100000"
    assert seen["passwd_owner"] == "0"  # unpacked inside the map: root-owned as seen from inside
    assert seen["system"] in ("running", "degraded")
    assert seen["limit"] == str(192 * MIB)
    assert seen["after_destroy"] == []
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []


def _process_start(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])


KILLED_CREATE = """
import sys
from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.lxc import LxcBackend
from pveguard.strategy.models import LxcTarget
root, cache, bridge = sys.argv[1:4]
b = LxcBackend(LxcTarget(lxcpath=root + "/lxc", disk_dir=root + "/disks", template_cache=cache))
b.create(GuestSpec(name="pgt-killed", role="test", cores=1, memory_mib=128, swap_mib=0, disk_gib=1,
                   net=NetSpec(bridge=bridge, vlan=40, ip="10.250.40.9/24")))
"""


def test_create_killed_half_way_leaves_no_guest_and_is_redone(lxc_env: Any) -> None:
    """kill -9 during create: the half-made container is not listed, and the next create clears it."""
    b = lxc_env.backend
    br = lxc_env.bridge("k")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CREATE, str(lxc_env.root), b.config.template_cache, br],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    image_dir = lxc_env.root / "disks"
    deadline = time.monotonic() + 60
    # Kill it once the root disk is being filled (mounted on the host), the messiest moment.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(str(image_dir) in line for line in Path("/proc/self/mounts").read_text().splitlines()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the create finished before it could be killed"
    proc.kill()
    proc.wait()
    meta = next((lxc_env.root / "lxc").glob("*/pveguard.json"))
    assert json.loads(meta.read_text())["lock"] == "create"
    assert b.list_guests() == []
    half = Guest(vmid=int(meta.parent.name), name="pgt-killed", node=b.node, type="lxc", status="stopped")
    with pytest.raises(BackendError, match="was interrupted"):
        b.wait_unlocked(half, "waiting")
    g = b.create(small("pgt-killed", br, 40, "10.250.40.9/24"))
    # The stale one is gone and its VMID (the lowest free) is used again.
    assert [x.vmid for x in b.list_guests()] == [g.vmid] == [int(meta.parent.name)]
    assert b.wait_unlocked(g, "waiting")["hostname"] == "pgt-killed"
    # A create still running in a live process is waited for, not treated as dead.
    data = json.loads((Path(b.config.lxcpath) / str(g.vmid) / "pveguard.json").read_text())
    (Path(b.config.lxcpath) / str(g.vmid) / "pveguard.json").write_text(
        json.dumps({**data, "lock": "create", "creator": [os.getpid(), _process_start(os.getpid())]}))
    assert [x.lock for x in b.list_guests()] == ["create"]
    with pytest.raises(BackendError, match="still locked"):
        b.wait_unlocked(g, "waiting", timeout=1)
    (Path(b.config.lxcpath) / str(g.vmid) / "pveguard.json").write_text(json.dumps(data))
    b.start(g)
    assert b.exec(g, ["hostname"]).stdout.strip() == "pgt-killed"

    # After a reboot the per-VLAN bridge is gone; LXC itself (lxc-autostart for onboot) recreates it.
    b.stop(g)
    vbr = lxc_net.vlan_bridge_name(br, 40)
    if b.capabilities().vlan_mode == "bridge_per_vlan":
        subprocess.run(["ip", "link", "del", vbr], check=True)
        lxcpath = b.config.lxcpath
        subprocess.run(["lxc-start", "-P", lxcpath, "-n", str(g.vmid)], check=True)
        subprocess.run(["lxc-wait", "-P", lxcpath, "-n", str(g.vmid), "-s", "RUNNING", "-t", "30"], check=True)
        assert lxc_net.bridge_ports(vbr) == [lxc_net.host_veth_name(g.vmid)]
        assert lxc_net.alias(vbr).startswith(lxc_net.BRIDGE_ALIAS)
    b.destroy(g)
    assert not lxc_net.exists(vbr)
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []


def test_backup_volume_and_soft_limits(lxc_env: Any) -> None:
    """backup_volume: a directory bind-mounted at its mount point, removed with the container;
    hard_limits false: no memory cap, memory.high (v1: the soft limit) instead, switched live."""
    from pveguard.backends.base import DataVolume

    b = lxc_env.backend
    br = lxc_env.bridge("v")
    g = b.create(GuestSpec(name="pgt-vol", role="test", cores=1, memory_mib=128, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=br, ip="10.250.31.2/24"), hard_limits=False,
                           backup_volume=DataVolume(2, "/srv/backup")))
    assert "mp=/srv/backup,backup=1,size=2G" in b.get_config(g)["mp0"]
    b.start(g)
    rc, out = sh(b, g, "echo archive > /srv/backup/a && stat -c %U /srv/backup/a && findmnt -n /srv/backup")
    assert rc == 0 and out.startswith("root"), out
    on_host = Path(b.disk_dir) / str(g.vmid) / "mp0" / "a"
    assert on_host.read_text() == "archive\n"
    v2 = b.facts.layout.version == 2
    if v2:
        assert (b.cgroup_value(g, "memory.max"), b.cgroup_value(g, "memory.high")) == ("max", str(128 * MIB))
    else:
        assert int(b.cgroup_value(g, "memory.limit_in_bytes") or 0) > 1 << 40  # unlimited
        assert b.cgroup_value(g, "memory.soft_limit_in_bytes") == str(128 * MIB)
    # back to hard limits, live
    assert b.update(g, {"hard_limits": 1}) == []
    assert "hard_limits" not in b.get_config(g)
    assert b.cgroup_value(g, "memory.max" if v2 else "memory.limit_in_bytes") == str(128 * MIB)
    # the volume grows (recorded; a directory has no size) and never shrinks
    b.update(g, {"mp0": GrowTo("3G")})
    assert "size=3G" in b.get_config(g)["mp0"]
    with pytest.raises(BackendError, match="cannot shrink"):
        b.update(g, {"mp0": GrowTo("1G")})
    # the final backup before a delete (and every lxc dump) holds the volume where the container sees it
    from pveguard.backup.lxcdump import dump_container

    for state in ("running", "stopped"):
        dump = dump_container(str(g.vmid), g.vmid, lxc_env.root / f"dump-{state}", b.lxcpath, mode="suspend")
        listing = subprocess.run(["tar", "--zstd", "-tvf", str(dump.archive)], capture_output=True, text=True,
                                 check=True).stdout
        assert "./srv/backup/a" in listing and "./etc/vzdump/pveguard.json" in listing, (state, listing[-2000:])
        b.stop(g)
    b.destroy(g)
    assert not on_host.exists()
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []
