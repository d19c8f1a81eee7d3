"""Crashes through the control API: a running CT becomes `stopped` as PVE shows a crashed one (no task,
no lock, uptime gone), now, once after a delay, or on a schedule driven by the sim clock."""

from __future__ import annotations

from typing import Any

import pytest

from pvesim.testing import SimHandle


def _ct(sim: SimHandle) -> dict[str, Any]:
    [g] = [r for r in sim.api("GET", "/cluster/resources", {"type": "vm"})[2]["data"] if r["type"] == "lxc"]
    return dict(g)


def test_crash_now_later_and_on_a_schedule(pvesim_factory: Any) -> None:
    sim: SimHandle = pvesim_factory(guests=1, seed=1, running_share=1.0, qemu_share=0.0)
    vmid = _ct(sim)["vmid"]
    tasks = len(sim.api("GET", "/nodes/pve1/tasks")[2]["data"])

    c = sim.control("POST", f"/guests/{vmid}/crash")
    assert (c["status"], c["crashes"], c["scheduled"]) == ("stopped", 1, [])
    g = _ct(sim)
    assert g["status"] == "stopped" and not g.get("lock") and not g.get("uptime")
    assert len(sim.api("GET", "/nodes/pve1/tasks")[2]["data"]) == tasks  # no task: nobody asked for a stop

    sim.control("POST", f"/guests/{vmid}", {"status": "running"})
    sim.control("POST", f"/guests/{vmid}/crash", {"after": 30})
    sim.control("POST", "/clock", {"advance": 29})
    assert _ct(sim)["status"] == "running"
    sim.control("POST", "/clock", {"advance": 2})
    assert _ct(sim)["status"] == "stopped"
    assert sim.control("GET", f"/guests/{vmid}/crash")["scheduled"] == []

    # every 60 s, three times; a restart in between is crashed again at the next due time
    sim.control("POST", f"/guests/{vmid}", {"status": "running"})
    sim.control("POST", f"/guests/{vmid}/crash", {"after": 10, "every": 60, "times": 3})
    for _ in range(3):
        sim.control("POST", "/clock", {"advance": 15})
        assert _ct(sim)["status"] == "stopped"
        sim.control("POST", f"/guests/{vmid}", {"status": "running"})
        sim.control("POST", "/clock", {"advance": 45})
    assert _ct(sim)["status"] == "running"
    assert sim.control("GET", f"/guests/{vmid}/crash") == {"vmid": vmid, "status": "running", "crashes": 5,
                                                           "scheduled": []}

    sim.control("POST", f"/guests/{vmid}/crash", {"every": 5})
    assert sim.control("DELETE", f"/guests/{vmid}/crash")["scheduled"] == []
    with pytest.raises(RuntimeError, match=r"400.*every must be > 0"):
        sim.control("POST", f"/guests/{vmid}/crash", {"every": 0})
