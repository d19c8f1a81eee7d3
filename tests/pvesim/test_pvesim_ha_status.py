"""HA as PVE shows it: node maintenance, the CRM's node and service states, /cluster/ha/status/current.

Sources: pve-manager PVE/API2/Cluster.pm (a node row's hastate is the CRM's node_status, a guest's the
service_status state, else the configured state), pve-ha-manager src/PVE/HA/NodeStatus.pm (online,
maintenance, unknown), CRM.pm can_get_active (the CRM becomes active for a configured resource or a
maintenance request), Tools.pm get_verbose_service_state, Config.pm get_service_status (an ignored
resource is not managed; the group field only before 86c4db1, i.e. on PVE 8), API2/HA/Status.pm
(quorum, master, lrm:NODE "(maintenance mode, ...)", services; the fencing entry and the LRM watchdog
since 2d143ac), pve-manager PVE/API2/Nodes.pm (/nodes has no hastate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvesim.schema import SchemaNotFoundError, find_schema
from pvesim.testing import SimHandle, running, schema_available


def _have(version: str) -> bool:
    try:
        find_schema(version)
        return True
    except SchemaNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found")
VERSIONS = pytest.mark.parametrize("version", [v for v in ("8.4", "9.1") if _have(v)])


def _get(sim: SimHandle, path: str, **params: Any) -> Any:
    code, _h, body = sim.api("GET", path, params or None)
    assert code == 200, body
    return body["data"]


def _nodes(sim: SimHandle) -> dict[str, dict[str, Any]]:
    return {r["node"]: r for r in _get(sim, "/cluster/resources", type="node")}


@VERSIONS
def test_without_ha_no_node_has_a_hastate(version: str) -> None:
    with running(nodes=3, guests=2, seed=1, pve_version=version) as sim:
        assert all("hastate" not in r for r in _nodes(sim).values())
        status = _get(sim, "/cluster/ha/status/current")
        assert [e["type"] for e in status] == (["quorum", "fencing"] if version != "8.4" else ["quorum"])
        assert status[0] == {"id": "quorum", "type": "quorum", "node": "pve1", "status": "OK", "quorate": 1}
        if version != "8.4":
            assert status[1]["armed-state"] == "standby" and status[1]["status"] == "standby (CRM watchdog standby)"


@VERSIONS
def test_a_node_in_maintenance(version: str) -> None:
    with running(nodes=4, guests=8, seed=2, pve_version=version) as sim:
        sim.control("POST", "/nodes/pve2", {"maintenance": True})
        sim.control("POST", "/nodes/pve4", {"online": False})
        rows = _nodes(sim)
        # once the CRM runs, every node it knows carries its node_status
        assert {n: (r["status"], r["hastate"]) for n, r in rows.items()} == {
            "pve1": ("online", "online"), "pve2": ("online", "maintenance"), "pve3": ("online", "online"),
            "pve4": ("offline", "unknown")}
        # /nodes knows nothing of HA: the node in maintenance is simply online
        listed = {r["node"]: r for r in _get(sim, "/nodes")}
        assert listed["pve2"]["status"] == "online" and all("hastate" not in r for r in listed.values())
        status = {e["id"]: e for e in _get(sim, "/cluster/ha/status/current")}
        assert status["master"]["node"] == "pve1" and status["master"]["status"].startswith("pve1 (active, ")
        lrm = status["lrm:pve2"]["status"]
        if version == "8.4":
            assert lrm.startswith("pve2 (maintenance mode, ") and "watchdog" not in lrm
            assert status["lrm:pve1"]["status"].startswith("pve1 (idle, ")
            assert "fencing" not in status
        else:
            assert lrm.startswith("pve2 (maintenance mode, watchdog active, ")
            assert status["lrm:pve1"]["status"].startswith("pve1 (idle, watchdog standby, ")
            assert status["fencing"]["armed-state"] == "armed"
        assert status["lrm:pve4"]["status"].startswith("pve4 (old timestamp - dead?")
        assert set(status) >= {"quorum", "master", "lrm:pve1", "lrm:pve2", "lrm:pve3", "lrm:pve4"}
        # out of maintenance: online again; the manager status (and so the hastate) stays
        sim.control("POST", "/nodes/pve2", {"maintenance": False})
        assert _nodes(sim)["pve2"]["hastate"] == "online"


def test_guest_hastate_is_the_crm_service_state(pvesim_factory: Any) -> None:
    sim: SimHandle = pvesim_factory(nodes=2, guests=5, seed=3, qemu_share=0.0, running_share=1.0)
    for vmid, state in ((100, None), (101, "enabled"), (102, "disabled"), (103, "stopped"), (104, "ignored")):
        params: dict[str, Any] = {"sid": f"ct:{vmid}"}
        if state:
            params["state"] = state
        assert sim.api("POST", "/cluster/ha/resources", params)[0] == 200
    vms = {r["vmid"]: r for r in _get(sim, "/cluster/resources", type="vm")}
    assert {v: vms[v]["hastate"] for v in range(100, 105)} == {
        100: "started", 101: "started", 102: "stopped", 103: "stopped", 104: "ignored"}
    assert all(r["hastate"] == "online" for r in _nodes(sim).values())  # a resource makes the CRM active
    services = {e["sid"]: e for e in _get(sim, "/cluster/ha/status/current") if e["type"] == "service"}
    assert services["ct:100"]["crm_state"] == "started" and services["ct:100"]["state"] == "started"
    assert services["ct:102"]["crm_state"] == "stopped" and services["ct:102"]["state"] == "disabled"
    assert services["ct:102"]["request_state"] == "disabled"
    assert services["ct:104"]["state"] == "ignored" and "crm_state" not in services["ct:104"]
    node = vms[100]["node"]
    assert services["ct:100"]["status"] == f"ct:100 ({node}, started)"
    # status/current: an ignored resource is not managed, the state is the CRM's
    ha = {v: _get(sim, f"/nodes/{vms[v]['node']}/lxc/{v}/status/current")["ha"] for v in (100, 102, 104)}
    assert ha == {100: {"managed": 1, "state": "started"}, 102: {"managed": 1, "state": "stopped"},
                  104: {"managed": 0}}


def test_maintenance_ha_and_offered_upgrades_survive_a_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    with running(nodes=3, guests=2, seed=4, qemu_share=0.0, state=state) as sim:
        sim.control("POST", "/nodes/pve3", {"maintenance": True})
        sim.control("POST", "/guests/100/upgrades", {"app": {"version": "2.0", "origin": "Debian-Security:12"}})
        sim.control("POST", "/guests/100/packages", {"app": "1.0"})
    with running(nodes=3, guests=0, seed=4, state=state) as sim:
        assert _nodes(sim)["pve3"]["hastate"] == "maintenance"
        assert sim.control("GET", "/guests/100/upgrades") == {
            "app": {"version": "2.0", "origin": "Debian-Security:12"}}
        sim.control("POST", "/nodes/pve3", {"maintenance": False})
        assert _nodes(sim)["pve3"]["hastate"] == "online"


@VERSIONS
def test_status_current_names_the_group_up_to_pve_8(version: str) -> None:
    with running(nodes=2, guests=1, seed=5, qemu_share=0.0, pve_version=version) as sim:
        assert sim.api("POST", "/cluster/ha/groups", {"group": "g1", "nodes": "pve1,pve2"})[0] == 200
        assert sim.api("POST", "/cluster/ha/resources", {"sid": "ct:100", "group": "g1"})[0] == 200
        node = _get(sim, "/cluster/resources", type="vm")[0]["node"]
        ha = _get(sim, f"/nodes/{node}/lxc/100/status/current")["ha"]
        assert ha == ({"managed": 1, "state": "started", "group": "g1"} if version == "8.4"
                      else {"managed": 1, "state": "started"})
