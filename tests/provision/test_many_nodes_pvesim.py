"""A 16-node pvesim cluster with an offline node, a node in HA maintenance and a node short of memory.

Placement (most free memory) passes over the unfit nodes and the plan says why (text and --json); what
sits on the offline node is "unknown" for status, plan and monitor, never missing or recreated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.provision.conftest import FAST, Env, containers, make_env

GIB = 1 << 30
OFFLINE, MAINT, SHORT = "pve5", "pve7", "pve9"
NAMES = ("app-a", "app-b", "app-c", "app-d")


@pytest.fixture
def big(pvesim_factory: Any, tmp_path: Path) -> Env:
    sim = pvesim_factory(nodes=16, guests=64, seed=7, task_seconds=FAST)
    # the offline and the maintenance node would win on free memory if they were fit
    sim.control("POST", f"/nodes/{OFFLINE}", {"maxmem": 4096 * GIB})
    sim.control("POST", f"/nodes/{MAINT}", {"maxmem": 4096 * GIB, "maintenance": True})
    sim.control("POST", f"/nodes/{OFFLINE}", {"online": False})
    env = make_env(sim, tmp_path)
    env.edit(containers(*NAMES))
    # the short node: sized below what it already uses, so it has less free than one container needs
    used = next(r for r in env.sim.api("GET", "/cluster/resources", {"type": "node"})[2]["data"]
                if r["node"] == SHORT)["mem"]
    sim.control("POST", f"/nodes/{SHORT}", {"maxmem": used + (128 << 20)})
    return env


def test_maintenance_shows_as_hastate_on_the_node_row(big: Env) -> None:
    rows = {r["node"]: r for r in big.sim.api("GET", "/cluster/resources", {"type": "node"})[2]["data"]}
    assert len(rows) == 16
    assert rows[MAINT].get("hastate") == "maintenance" and rows[MAINT]["status"] == "online"
    # the CRM's node_status for every node it knows (pve-ha-manager NodeStatus.pm; test_pvesim_ha_status.py)
    assert rows["pve1"]["hastate"] == "online" and rows[OFFLINE]["status"] == "offline"
    assert rows[OFFLINE]["hastate"] == "unknown"


def test_placement_passes_over_unfit_nodes_and_says_why(big: Env, capsys: pytest.CaptureFixture[str]) -> None:
    plan = big.json("plan", capsys=capsys)
    creates = [a for a in plan["actions"] if a["action"] == "create"]
    assert sorted(a["name"] for a in creates) == list(NAMES)
    for a in creates:
        note = next(n for n in a["notes"] if n.startswith("node at apply"))
        assert f"{OFFLINE} offline" in note and f"{MAINT} in maintenance" in note, note
        assert f"{SHORT} short of memory" in note and "needs 0.2 GiB" in note, note
        chosen = note.split(": ", 1)[1].split(" ", 1)[0]
        assert chosen not in (OFFLINE, MAINT, SHORT)
    code, out, _ = big.run("plan", capsys=capsys)
    assert code in (0, 2) and "in maintenance" in out and "short of memory" in out
    assert big.run("apply", capsys=capsys)[0] == 0
    placed = {g["name"]: g["node"] for g in big.lxc() if g["name"] in NAMES}
    assert sorted(placed) == list(NAMES)
    assert not set(placed.values()) & {OFFLINE, MAINT, SHORT}, placed


def test_pinned_to_a_node_in_maintenance_is_refused_with_a_way_out(
        big: Env, capsys: pytest.CaptureFixture[str]) -> None:
    big.edit(lambda d: d["containers"][0].update(node=MAINT))
    code, _out, err = big.run("apply", capsys=capsys)
    assert code == 1 and f"node {MAINT} (pinned for app-a) is in maintenance" in err
    assert "node-maintenance disable" in err and "Traceback" not in err


def test_everything_on_the_offline_node_is_unknown(big: Env, capsys: pytest.CaptureFixture[str]) -> None:
    big.edit(lambda d: d["containers"][0].update(node="pve3"))
    assert big.run("apply", capsys=capsys)[0] == 0
    big.sim.control("POST", "/nodes/pve3", {"online": False})
    big.reset_calls()
    st = big.json("status", capsys=capsys)
    rows = {r["name"]: r for r in st["containers"]}
    assert st["missing"] == [] and rows["app-a"]["state"] == "unknown"
    assert "node pve3 offline" in rows["app-a"]["reason"]
    assert all(rows[n]["state"] != "unknown" for n in NAMES[1:])
    code, out, err = big.run("plan", "--json", capsys=capsys)
    assert code == 1 and "cannot be provided: app-a" in err  # a plan that cannot be carried out says so
    plan = json.loads(out)
    a = next(x for x in plan["actions"] if x["name"] == "app-a")
    assert a["action"] not in ("create", "delete"), a  # never recreated while its node is away
    assert any("pve3" in n and "cannot be read" in n for n in a["notes"]), a
    assert not [x for x in plan["actions"] if x["action"] == "create"]
    code, out, err = big.run("isolation", "check", "--json", capsys=capsys)
    iso = json.loads(out)
    assert code == 1 and not iso["ok"] and "app-a" not in iso["absent"], iso
    assert [(u["name"], u["node"]) for u in iso["unknown"]] == [("app-a", "pve3")], iso
    assert sorted(c["name"] for c in iso["checked"]) == list(NAMES[1:])
    code, out, _ = big.run("isolation", "check", capsys=capsys)
    assert code == 1 and "unknown (not checked): app-a" in out and "not created yet" not in out
    big.reset_calls()
    code, out, err = big.run("monitor", "--json", capsys=capsys)
    assert code == 0, err
    calls = big.calls()
    mon = json.loads(out)
    # the sweep is one listing on 16 nodes too (per-guest reads: none; the traffic watch reads each
    # online node's firewall log on its own)
    assert calls.get("GET /cluster/resources") == 1 and mon["api_calls"] == 1, calls
    assert not [k for k in calls if "/lxc/" in k], calls
    rows = {g["name"]: g for g in mon["guests"] if g["name"] in NAMES}
    assert rows["app-a"]["status"] == "unknown" and rows["app-a"]["values"] == {}
    assert all(rows[n]["status"] == "running" and rows[n]["values"] for n in NAMES[1:])
    # unknown is not down: no alert claims app-a stopped while nothing is known about it
    assert not [al for al in mon["alerts"] if al["name"] == "app-a" and al["rule"] == "down"], mon["alerts"]
