"""`pveguard backup apply` and `backup status` against pvesim, through the real CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.backup.conftest import pve_backend
from tests.provision.conftest import Env, make_env

pytest.importorskip("pvesim.testing")


@pytest.fixture
def benv(pvesim_factory: Any, tmp_path: Any) -> Env:
    sim = pvesim_factory(nodes=2, guests=0, task_seconds={"vzcreate": 0.1, "vzstart": 0.1, "vzdump": 0,
                                                          "download": 0.1})  # fmt: skip
    return make_env(sim, tmp_path)


def test_apply_reapply_status(benv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # no managed containers yet: a clear message, nothing created
    code, _out, err = benv.run("backup", "apply", capsys=capsys)
    assert code == 2 and "no guests to back up" in err
    code, out, err = benv.run("apply", capsys=capsys)  # provision the strategy's containers
    assert code == 0, out + err
    managed = [g["vmid"] for g in benv.lxc() if "pveguard" in g.get("tags", "")]
    assert len(managed) == 4

    code, out, err = benv.run("backup", "apply", "--dry-run", "--json", capsys=capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert [c["action"] for c in plan["changes"]] == ["create"] and plan["dry_run"]
    assert benv.sim.api("GET", "/cluster/backup")[2]["data"] == []  # a dry run sends nothing

    code, out, err = benv.run("backup", "apply", capsys=capsys)
    assert code == 0, err
    jobs = benv.sim.api("GET", "/cluster/backup")[2]["data"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["id"].startswith("pveguard-") and job["schedule"] == "daily" and job["prune-backups"] == "keep-daily=7"
    assert sorted(int(v) for v in job["vmid"].split(",")) == sorted(managed)
    code, out, _ = benv.run("backup", "apply", capsys=capsys)
    assert code == 0 and "nothing to do" in out  # re-apply does nothing

    # status: job covers them, but no archives yet
    code, out, _ = benv.run("backup", "status", "--json", capsys=capsys)
    assert code == 1
    rows = {r["guest"]: r for r in json.loads(out)}
    assert all(r["problems"] == ["no backup at all"] and r["in_backup_job"] for r in rows.values())

    # a vzdump of one guest through the API: status shows its archive and a small age
    first = managed[0]
    node = next(g["node"] for g in benv.lxc() if g["vmid"] == first)
    px = benv.sim.proxmoxer()
    upid = px.nodes(node).vzdump.post(vmid=str(first), storage="local", compress="zstd", mode="snapshot")
    pve_backend(benv.sim).wait_task(upid, "vzdump", timeout=60)
    code, out, _ = benv.run("backup", "status", "--json", capsys=capsys)
    rows = {r["guest"]: r for r in json.loads(out)}
    mine = rows[f"lxc/{first}"]
    assert mine["archives"] == 1 and mine["compliant"] and 0 <= mine["age_seconds"] < 600
    assert code == 1  # the other three still have none

    # the LXC-only commands refuse cleanly here, and the PVE ones refuse without a strategy context
    from typer.testing import CliRunner

    from pveguard.backup.cli import app

    r = CliRunner().invoke(app, ["apply"])
    assert r.exit_code == 2 and "needs the strategy" in r.stderr
