"""`pveguard install PKG` against pvesim: the package lands in the matching container, not on the host.

pveguard runs as a subprocess with pvesim's fake `pvesh` and `pct` first on PATH (the local-node
mode of the proxmox backend); the fake pct simulates apt-get and dpkg-query per container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    from pvesim.testing import pvesim_factory  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - pvesim is part of the editable install
    pytest.skip("pvesim is not importable", allow_module_level=True)

from pveguard.strategy.defaults import render

pytestmark = pytest.mark.slow

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}


class Env:
    def __init__(self, sim: Any, tmp: Path) -> None:
        self.sim = sim
        (tmp / "strategy.yaml").write_text(render())
        self.state = tmp / "state"
        self.env = {**sim.env(), "PVEGUARD_STRATEGY": str(tmp / "strategy.yaml"), "PVEGUARD_STATE_DIR": str(self.state),
                    "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
                    "PVEGUARD_PVE_POLL_INTERVAL": "0.1", "COLUMNS": "200"}
        for var in ("PVEGUARD_PVE_HOST", "PVEGUARD_PVE_TOKEN"):
            self.env.pop(var, None)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pveguard", *argv], env=self.env, capture_output=True,
                              text=True, timeout=300)

    def containers(self) -> dict[str, int]:
        status, _r, body = self.sim.api("GET", "/cluster/resources", {"type": "vm"})
        assert status == 200
        return {g["name"]: g["vmid"] for g in body["data"] if g["type"] == "lxc"}

    def packages(self, vmid: int) -> dict[str, str]:
        with self.sim.sim.lock:
            return dict(self.sim.sim.guest_packages.get(vmid, {}))


@pytest.fixture
def penv(pvesim_factory: Any, tmp_path: Path) -> Env:
    if os.geteuid() != 0:
        pytest.skip("the local PVE backend (pvesh/pct) runs as root")
    return Env(pvesim_factory(nodes=1, task_seconds=FAST), tmp_path)


def ledger(env: Env, action: str) -> list[dict[str, Any]]:
    r = env.run("audit-log", "show", "--action", action, "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def test_non_core_package_lands_in_the_matching_container(penv: Env) -> None:
    assert penv.containers() == {}
    r = penv.run("install", "grafana", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    [item] = result["packages"]
    assert (item["core"], item["target"], item["container"], item["status"]) == \
        (False, "container", "pve-monitoring", "installed")
    vmid = penv.containers()["pve-monitoring"]  # created first, because it did not exist
    assert "grafana" in penv.packages(vmid)
    assert item["version"] == penv.packages(vmid)["grafana"]
    # Nothing on the host: the workflow never ran the host's apt.
    assert [e["target"] for e in ledger(penv, "guard.workflow.container")] == ["pve-monitoring"]
    assert not ledger(penv, "guard.workflow.host")
    decision = ledger(penv, "guard.workflow.decision")[0]["details"]
    assert decision["goes_to"] == "container" and decision["container"] == "pve-monitoring"


def test_existing_container_is_reused_and_container_option_wins(penv: Env) -> None:
    assert penv.run("install", "prometheus-node-exporter").returncode == 0
    first = penv.containers()
    r = penv.run("install", "htop", "--container", "pve-monitoring")
    assert r.returncode == 0, r.stdout + r.stderr
    assert penv.containers() == first  # no second container
    assert {"prometheus-node-exporter", "htop"} <= set(penv.packages(first["pve-monitoring"]))


def test_restic_goes_to_the_backup_container(penv: Env) -> None:
    assert penv.run("install", "restic").returncode == 0
    assert "restic" in penv.packages(penv.containers()["pve-backup-manager"])


def test_dry_run_changes_nothing(penv: Env) -> None:
    r = penv.run("install", "grafana", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["packages"][0]["message"].startswith("would install in container pve-monitoring")
    assert penv.containers() == {}


def test_core_package_is_fit_for_the_host_and_not_installed_without_on_host(penv: Env) -> None:
    r = penv.run("install", "pve-manager", "--json")
    assert r.returncode == 0, r.stderr
    [item] = json.loads(r.stdout)["packages"]
    assert (item["core"], item["target"], item["status"]) == (True, "host", "fit-for-host")
    assert penv.containers() == {}


def test_unmatched_package_asks_for_a_container(penv: Env) -> None:
    r = penv.run("install", "htop")
    assert r.returncode == 3  # refused per package, nothing created
    assert "no strategy container lists a component matching 'htop'" in r.stdout
    assert "--container NAME" in r.stdout
    assert penv.containers() == {}
    r = penv.run("install", "htop", "--container", "nope")
    assert r.returncode == 2 and "the strategy has no container named 'nope'" in r.stderr


def test_unavailable_package_is_a_clear_failure(penv: Env) -> None:
    penv.sim.sim.unavailable_packages.add("grafana")
    r = penv.run("install", "grafana")
    assert r.returncode == 1
    out = " ".join((r.stdout + r.stderr).split())
    assert "grafana is not in the container's apt sources" in out and "apt-cache search grafana" in out
    assert "Traceback" not in r.stdout + r.stderr
