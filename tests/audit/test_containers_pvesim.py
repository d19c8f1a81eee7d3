"""Strategy-container findings through the real Proxmox backend against pvesim: containers created
by `pveguard apply`, then changed behind pveguard's back through the API, then audited.

Skipped only when the PVE API schema pvesim reads is not available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pvesim import testing

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}


def _wait(sim: Any, node: str, upid: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _r, body = sim.api("GET", f"/nodes/{node}/tasks/{upid}/status")
        if status == 200 and body["data"]["status"] == "stopped":
            assert body["data"].get("exitstatus") == "OK", body
            return
        time.sleep(0.05)
    raise AssertionError(f"task {upid} did not finish")


def test_container_findings_from_a_pve_api(tmp_path: Path) -> None:
    if not testing.schema_available():
        pytest.skip("the PVE API schema is not available")
    from pveguard.strategy.defaults import render

    with testing.running(nodes=1, task_seconds=FAST) as sim:
        (tmp_path / "strategy.yaml").write_text(render())
        env = {**os.environ, "PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"),
               "PVEGUARD_STATE_DIR": str(tmp_path / "state"), "PVEGUARD_BACKEND": "proxmox",
               "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token, "PVEGUARD_PVE_VERIFY_SSL": "0",
               "PVEGUARD_PVE_RETRY_WAIT": "0.05", "PVEGUARD_PVE_POLL_INTERVAL": "0.1", "COLUMNS": "200"}

        def pveguard(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "pveguard", *argv], env=env, capture_output=True,
                                  text=True, check=False, timeout=300)

        applied = pveguard("apply")
        assert applied.returncode == 0, applied.stderr
        before = json.loads(pveguard("audit", "--json").stdout)
        assert before["guests"]["available"] and before["guests"]["backend"]
        assert not [f for f in before["findings"] if f["category"] == "containers"
                    and "pve-dev-tools" not in f["id"]], before["findings"]

        status, _r, body = sim.api("GET", "/cluster/resources", {"type": "vm"})
        guests = {g["name"]: g for g in body["data"] if g["type"] == "lxc"}
        node = guests["pve-monitoring"]["node"]

        def vmid(name: str) -> int:
            return int(guests[name]["vmid"])

        # behind pveguard's back: off the VLAN and no firewall, wrong memory, stopped, deleted
        status, reason, _ = sim.api("PUT", f"/nodes/{node}/lxc/{vmid('pve-backup-manager')}/config",
                                    {"net0": "name=eth0,bridge=vmbr0,ip=dhcp"})
        assert status == 200, reason
        status, reason, _ = sim.api("PUT", f"/nodes/{node}/lxc/{vmid('pve-monitoring')}/config", {"memory": 1024})
        assert status == 200, reason
        status, _r, task = sim.api("POST", f"/nodes/{node}/lxc/{vmid('pve-api-gateway')}/status/stop")
        _wait(sim, node, task["data"])
        gw = guests["pve-dev-tools"]
        if gw.get("status") == "running":
            status, _r, task = sim.api("POST", f"/nodes/{node}/lxc/{vmid('pve-dev-tools')}/status/stop")
            _wait(sim, node, task["data"])
        status, _r, task = sim.api("DELETE", f"/nodes/{node}/lxc/{vmid('pve-dev-tools')}")
        _wait(sim, node, task["data"])

        proc = pveguard("audit", "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
    got = {f["id"]: f["severity"] for f in doc["findings"] if f["category"] == "containers"}
    assert got == {
        "container-vlan:pve-backup-manager": "high",
        "container-firewall:pve-backup-manager": "high",
        "container-resources:pve-monitoring": "medium",
        "container-stopped:pve-api-gateway": "medium",
        "container-missing:pve-dev-tools": "high",
    }
    assert {g["name"] for g in doc["guests"]["items"]} == {"pve-monitoring", "pve-backup-manager", "pve-api-gateway"}
    from pveguard.audit import report

    md = report.render(doc, "markdown")
    assert "pve-backup-manager (lxc, running)" in md and "pve-api-gateway (lxc, stopped)" in md
    assert "pve-backup-manager is off the container VLAN" in report.render(doc, "html")
