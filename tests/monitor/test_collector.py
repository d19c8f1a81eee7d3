"""Pure collection arithmetic: parsing /cluster/resources, counter rates, resets, stopped guests."""

from __future__ import annotations

import pytest

from pveguard.backends.base import GuestStats
from pveguard.monitor.collector import Sweep, counter_rate, derive, parse_resources, samples_from_stats


@pytest.mark.parametrize(
    ("prev", "prev_ts", "cur", "cur_ts", "prev_up", "cur_up", "expected"),
    [
        (1000, 0, 4000, 30, 100, 130, 100.0),  # plain growth
        (1000, 0, 1000, 30, 100, 130, 0.0),  # idle
        (5000, 0, 600, 30, 1000, 10, 60.0),  # restarted 10 s ago: 600 B over 10 s
        (5000, 0, 600, 30, 0, 0, 20.0),  # counter went down, uptime unknown: over the interval
        (100, 0, 900, 30, 1000, 5, 180.0),  # uptime went down although the counter grew: a reset
        (100, 30, 900, 30, 10, 40, None),  # same timestamp: no rate
        (100, 40, 900, 30, 10, 40, None),  # clock went backwards: no rate
        (0, 0, 0, 30, 0, 30, 0.0),
    ],
)
def test_counter_rate(prev: int, prev_ts: float, cur: int, cur_ts: float, prev_up: int, cur_up: int,
                      expected: float | None) -> None:
    assert counter_rate(prev, prev_ts, cur, cur_ts, prev_up, cur_up) == expected


RESOURCES = [
    {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "pve1", "status": "running", "name": "web",
     "cpu": 0.5, "maxcpu": 2, "mem": 512, "maxmem": 1024, "disk": 90, "maxdisk": 100, "netin": 1000,
     "netout": 2000, "diskread": 0, "diskwrite": 0, "uptime": 100, "tags": "pveguard;web", "template": 0},
    {"id": "lxc/102", "type": "lxc", "vmid": 102, "node": "pve1", "status": "stopped", "name": "off",
     "cpu": 0, "maxcpu": 1, "mem": 0, "maxmem": 512, "disk": 0, "maxdisk": 100, "netin": 0, "netout": 0,
     "diskread": 0, "diskwrite": 0, "uptime": 0, "template": 0},
    {"id": "qemu/103", "type": "qemu", "vmid": 103, "node": "pve1", "status": "running", "name": "vm",
     "cpu": 0.1, "maxcpu": 4, "mem": 100, "maxmem": 1000, "disk": 0, "maxdisk": 100, "uptime": 10},
    {"id": "node/pve1", "type": "node", "node": "pve1", "status": "online", "cpu": 0.25, "maxcpu": 8,
     "mem": 4, "maxmem": 16, "disk": 1, "maxdisk": 10, "uptime": 99},
    {"id": "storage/pve1/local", "type": "storage", "node": "pve1", "storage": "local", "status": "available",
     "disk": 50, "maxdisk": 200, "shared": 0, "plugintype": "dir", "content": "iso,vztmpl"},
    {"id": "pool/x", "type": "pool", "pool": "x"},
    {"id": "sdn/pve1/localnetwork", "type": "sdn", "sdn": "localnetwork", "node": "pve1", "status": "ok"},
]


def test_parse_resources_keeps_guests_nodes_storages_and_marks_managed() -> None:
    samples = {s.id: s for s in parse_resources(RESOURCES, managed_names=["off"])}
    assert set(samples) == {"lxc/101", "lxc/102", "qemu/103", "node/pve1", "storage/pve1/local"}
    assert samples["lxc/101"].managed  # by tag
    assert samples["lxc/102"].managed  # by strategy name
    assert not samples["qemu/103"].managed
    assert samples["lxc/101"].tags == ("pveguard", "web")
    assert samples["node/pve1"].up and samples["storage/pve1/local"].up and not samples["lxc/102"].up
    assert samples["storage/pve1/local"].name == "local"


def test_derive_percentages_and_rates() -> None:
    first = Sweep(0.0, parse_resources(RESOURCES))
    later = [dict(r) for r in RESOURCES]
    later[0].update(netin=4000, netout=2000 + 30 * 50, diskwrite=300, uptime=130)
    second = Sweep(30.0, parse_resources(later))
    d = derive(first, second)
    web = d["lxc/101"].values
    assert web["cpu"] == 50.0 and web["memory"] == 50.0 and web["disk"] == 90.0
    assert web["net_in"] == 100.0 and web["net_out"] == 50.0 and web["disk_write"] == 10.0
    assert d["lxc/102"].values == {}  # stopped: no usage, no rates
    assert "disk" not in d["qemu/103"].values  # PVE reports 0 for VM disks: no false 0 %
    assert d["node/pve1"].values["cpu"] == 25.0
    assert d["storage/pve1/local"].values == {"disk": 25.0}
    assert "net_in" not in derive(None, second)["lxc/101"].values  # no previous sweep, no rate


def test_derive_no_rate_across_a_stopped_sweep() -> None:
    stopped = [dict(r) for r in RESOURCES]
    stopped[0].update(status="stopped", netin=0, uptime=0)
    restarted = [dict(r) for r in RESOURCES]
    restarted[0].update(netin=300, uptime=3)
    d = derive(Sweep(0, parse_resources(stopped)), Sweep(30, parse_resources(restarted)))
    assert "net_in" not in d["lxc/101"].values


def test_samples_from_backend_stats() -> None:
    stats = [GuestStats(vmid=200, name="db", node="host", status="running", cpu=0.2, cpus=2, mem=10, maxmem=20)]
    (s,) = samples_from_stats(stats, managed_names=["db"])
    assert s.id == "lxc/200" and s.managed and s.up and s.maxcpu == 2
