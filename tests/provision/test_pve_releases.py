"""pveguard against PVE 8.4 and 9.1 (pvesim --pve-version) in one run, where the releases differ:

* 9.x creates unprivileged containers when `unprivileged` is not sent (8.x: privileged): pveguard sends
  it always, so `unprivileged: false` and the default give the same containers on both;
* 9.1's unfiltered /cluster/resources carries `type: network` rows (8.4: `type: sdn`): the monitor's
  sweep and the backend's listing take them in their stride.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pveguard.monitor.collector import parse_resources

from .conftest import FAST, Env, make_env, small

pytest.importorskip("pvesim.testing")
BOTH = pytest.mark.parametrize("version", ["8.4", "9.1"])


def _env(pvesim_factory: Any, tmp_path: Path, version: str) -> Env:
    return make_env(pvesim_factory(nodes=3, task_seconds=FAST, pve_version=version), tmp_path)


@BOTH
def test_unprivileged_is_what_the_strategy_says_on_either_release(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str) -> None:
    env = _env(pvesim_factory, tmp_path, version)
    assert env.sim.api("GET", "/version")[2]["data"]["release"] == version

    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = [small("ct-default"), {**small("ct-priv"), "unprivileged": False, "features": {}}]

    env.edit(edit)
    code, _out, err = env.run("apply", capsys=capsys)
    assert code == 0, err
    got = {g["name"]: env.config(g["vmid"]) for g in env.lxc()}
    assert got["ct-default"]["unprivileged"] == 1
    assert got["ct-priv"].get("unprivileged", 0) == 0  # 9.x would make it unprivileged had pveguard not said so
    plan = env.json("plan", capsys=capsys)
    assert [a["action"] for a in plan["actions"]] == ["unchanged", "unchanged"]


@BOTH
def test_network_rows_in_cluster_resources_are_ignored(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str) -> None:
    env = _env(pvesim_factory, tmp_path, version)
    env.edit(lambda doc: doc.update(containers=[small("ct-a")]))
    assert env.run("apply", capsys=capsys)[0] == 0
    rows = env.sim.api("GET", "/cluster/resources")[2]["data"]
    extra = {r["type"] for r in rows} - {"lxc", "qemu", "node", "storage"}
    assert extra == ({"sdn"} if version == "8.4" else {"network"})
    samples = parse_resources(rows)
    assert {s.type for s in samples} == {"lxc", "node", "storage"}
    assert [s.name for s in samples if s.type == "lxc"] == ["ct-a"]
    code, out, err = env.run("status", capsys=capsys)
    assert code == 0 and "ct-a" in out and "Traceback" not in out + err
