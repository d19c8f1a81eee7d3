"""Fixtures for provisioning tests against pvesim: a 3-node cluster, a strategy, the CLI in-process."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.cli import run_cli

try:
    from pvesim.testing import SimHandle, pvesim, pvesim_factory  # noqa: F401 - fixtures
except ImportError:  # pvesim not merged yet / not importable: those tests skip
    SimHandle = Any  # type: ignore[misc,assignment]

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}


@dataclass
class Env:
    """A pvesim cluster plus a state dir and a strategy file, and a way to run pveguard against them."""

    sim: Any
    dir: Path
    env: dict[str, str]

    @property
    def strategy(self) -> Path:
        return self.dir / "strategy.yaml"

    def edit(self, fn: Any) -> None:
        """Change the strategy: fn(dict) edits the YAML document in place."""
        doc = yaml.safe_load(self.strategy.read_text())
        fn(doc)
        self.strategy.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        """pveguard in-process (like the console script): (exit code, stdout, stderr)."""
        return run_cli(list(argv), capsys, self.env)

    def json(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> Any:
        code, out, err = self.run(*argv, "--json", capsys=capsys)
        assert code in (0, 2), err
        return json.loads(out)

    def lxc(self) -> list[dict[str, Any]]:
        """All containers, straight from the API (not through pveguard)."""
        status, _r, body = self.sim.api("GET", "/cluster/resources", {"type": "vm"})
        assert status == 200
        return sorted((g for g in body["data"] if g["type"] == "lxc"), key=lambda g: g["vmid"])

    def config(self, vmid: int) -> dict[str, Any]:
        g = next(x for x in self.lxc() if x["vmid"] == vmid)
        status, reason, body = self.sim.api("GET", f"/nodes/{g['node']}/lxc/{vmid}/config")
        assert status == 200, reason
        return dict(body["data"])

    def calls(self) -> dict[str, int]:
        return dict(self.sim.control("GET", "/calls")["calls"])

    def reset_calls(self) -> None:
        self.sim.control("DELETE", "/calls")


def small(name: str) -> dict[str, Any]:
    """A strategy container as small as a test needs (1 core, 256M, 2G)."""
    return {"name": name, "role": "app", "resources": {"cores": 1, "memory": "256M", "storage": "2G"}}


def containers(*names: str) -> Any:
    """A strategy edit (for Env.edit) that makes these small containers the whole list."""
    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = [small(n) for n in names]
    return edit


def make_env(sim: Any, tmp_path: Path, **extra: str) -> Env:
    from pveguard.strategy.defaults import render

    (tmp_path / "strategy.yaml").write_text(render())
    env = {
        "PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"), "PVEGUARD_STATE_DIR": str(tmp_path / "state"),
        "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
        "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05", "PVEGUARD_PVE_POLL_INTERVAL": "0.1",
        "COLUMNS": "200", **extra,
    }
    return Env(sim, tmp_path, env)


@pytest.fixture
def penv(pvesim_factory: Any, tmp_path: Path) -> Iterator[Env]:
    """A fresh 3-node pvesim with fast tasks, the default strategy, an empty state dir."""
    sim = pvesim_factory(nodes=3, task_seconds=FAST)
    yield make_env(sim, tmp_path)


def pveguard_argv() -> list[str]:
    """The command line that runs pveguard in a subprocess (for kill -9 tests)."""
    return [sys.executable, "-m", "pveguard"]
