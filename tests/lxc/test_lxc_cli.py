"""End to end on real LXC through the CLI: `plan` / `apply` / `status` with PVEGUARD_BACKEND=lxc (slow).

The issue's "Real LXC" done-when as a user runs it: a strategy with three small containers (256 MB,
1 core; two on VLAN 10, one on VLAN 20) is applied, re-applying does nothing, a memory change is
exactly one live update, and `apply --prune` removes everything again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.backends import lxc_net

from .conftest import pveguard as run_pveguard

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def container(name: str, vlan: int, ip: str) -> dict[str, Any]:
    return {"name": name, "role": "test", "resources": {"cores": 1, "memory": "256M", "swap": "256M",
                                                         "storage": "1G"},
            # no firewall (it would drop the pings below, as PVE's policy_in DROP does): this test is about
            # VLANs, limits and convergence; the firewall on plain LXC is test_lxc_isolation.py's
            "network": {"vlan": vlan, "ip": ip, "firewall": False}}


pveguard = partial(run_pveguard, timeout=900)


def test_plan_apply_converge_update_prune_through_the_cli(lxc_env: Any) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("e")
    strategy = lxc_env.root / "strategy.yaml"
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 10},
        "containers": [container("pgt-web", 10, "10.250.10.21/24"), container("pgt-api", 10, "10.250.10.22/24"),
                       container("pgt-db", 20, "10.250.10.23/24")],
        "target": {"backend": "lxc", "lxc": {"lxcpath": b.config.lxcpath, "disk_dir": b.config.disk_dir,
                                             "template_cache": b.config.template_cache}},
    }
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
           "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(lxc_env.root / "state")}

    code, out, err = pveguard(env, "plan", "--json")
    assert code == 0, err
    assert [(a["action"], a["name"]) for a in json.loads(out)["actions"]] == [
        ("create", "pgt-web"), ("create", "pgt-api"), ("create", "pgt-db")]

    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    guests = {g.name: g for g in b.list_guests()}
    assert sorted(guests) == ["pgt-api", "pgt-db", "pgt-web"]
    assert all(g.status == "running" and g.managed for g in guests.values())
    for g in guests.values():
        conf = b.get_config(g)
        assert (conf["cores"], conf["memory"], conf["swap"]) == (1, 256, 256)
        assert b.exec(g, ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes" if b.facts.layout.version == 1
                          else "/sys/fs/cgroup/memory.max"]).stdout.strip() == str(256 * MIB)
    web, api = guests["pgt-web"], guests["pgt-api"]
    assert b.exec(web, ["ping", "-c", "1", "-W", "2", "10.250.10.22"]).ok
    assert not b.exec(web, ["ping", "-c", "1", "-W", "1", "10.250.10.23"]).ok

    # Re-apply does nothing (on a host without a subuid range the plan notes the privileged fallback).
    code, out, err = pveguard(env, "plan", "--detailed-exitcode")
    assert code == 0, out + err
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0 and [g.vmid for g in b.list_guests()] == sorted(g.vmid for g in guests.values())

    # A memory change is exactly one update, applied live.
    doc["containers"][1]["resources"]["memory"] = "384M"
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "plan", "--json")
    changes = [(a["name"], c["field"], c["old"], c["new"]) for a in json.loads(out)["actions"] for c in a["changes"]
               if c["possible"]]
    assert changes == [("pgt-api", "memory", "256", "384")]
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    key = "memory.limit_in_bytes" if b.facts.layout.version == 1 else "memory.max"
    assert b.cgroup_value(api, key) == str(384 * MIB)
    assert pveguard(env, "plan", "--detailed-exitcode")[0] == 0

    code, out, err = pveguard(env, "status", "--json")
    assert code == 0, err
    assert "pgt-api" in out

    # Everything leaves the strategy: prune removes containers, VLAN bridges, disks.
    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--prune", "--yes")
    assert code == 0, out + err
    assert b.list_guests() == []
    assert not lxc_net.exists(lxc_net.vlan_bridge_name(br, 10))
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []
    assert not any(Path(b.config.disk_dir).iterdir())


def test_apply_killed_during_create_then_apply_again_converges(lxc_env: Any) -> None:
    """kill -9 of `pveguard apply` while a root disk is being filled; the next apply makes each container once."""
    b = lxc_env.backend
    br = lxc_env.bridge("k")
    strategy = lxc_env.root / "strategy.yaml"
    doc = {"version": 1, "network": {"bridge": br, "container_vlan": 10},
           "containers": [container("pgt-k1", 10, "10.250.10.31/24"), container("pgt-k2", 10, "10.250.10.32/24")],
           "target": {"backend": "lxc", "lxc": {"lxcpath": b.config.lxcpath, "disk_dir": b.config.disk_dir,
                                                "template_cache": b.config.template_cache}}}
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
           "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(lxc_env.root / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "pveguard", "apply", "--yes"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    disks = str(Path(b.config.disk_dir))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(disks in line for line in Path("/proc/self/mounts").read_text().splitlines()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "apply finished before it could be killed"
    proc.kill()
    proc.wait()

    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    guests = b.list_guests()
    assert sorted(g.name for g in guests) == ["pgt-k1", "pgt-k2"]
    assert all(g.status == "running" and g.lock is None for g in guests)
    assert len({g.vmid for g in guests}) == 2
    assert pveguard(env, "plan", "--detailed-exitcode")[0] == 0
    for g in guests:
        b.destroy(g)
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []
