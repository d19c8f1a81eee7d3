"""Containers made straight through pvesim's API, for tests of pvesim's own rules."""

from __future__ import annotations

from typing import Any

from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def wait_task(sim: SimHandle, upid: str) -> dict[str, Any]:
    """The task's final status, polled as proxmoxer does."""
    return dict(Tasks.blocking_status(sim.proxmoxer(), upid, polling_interval=0.05))


def create_ct(sim: SimHandle, vmid: int = 300, **extra: Any) -> None:
    """Create a container with the root token on pve1 and wait until its task ended OK."""
    status, reason, body = sim.api("POST", "/nodes/pve1/lxc", {"vmid": vmid, "ostemplate": TEMPLATE,
                                                               "rootfs": "local-lvm:4", **extra})
    assert status == 200, reason
    assert body is not None and wait_task(sim, body["data"])["exitstatus"] == "OK"
