"""RBAC token files checked by their token id (not only `test -s` and the state's delivery record): with the
delivery records lost, a container whose file holds another role's token is stale, the plan says so, apply
rewrites it, and the next plan is clean -- through lxc-attach and through `pct exec` alone. The secret never
reaches a command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pveguard.security import rbac_state
from pveguard.store import Store

from .conftest import Env
from .test_exec_pvesim import fake_ssh
from .test_has_files_pvesim import without_lxc_attach
from .test_rbac_pvesim import NAMES, SECRET, token_file, vmids

pytest.importorskip("pvesim.testing")


@pytest.mark.parametrize("tool", ["lxc-attach", "pct"])
def test_another_roles_token_file_is_stale_without_the_state(penv: Env, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str], tool: str) -> None:
    sim_env = penv.sim.env()
    sim_bin = sim_env["PATH"].split(os.pathsep)[0]
    path = sim_env["PATH"] if tool == "lxc-attach" else without_lxc_attach(tmp_path, sim_bin)
    penv.env.update(PATH=f"{fake_ssh(tmp_path, penv)}{os.pathsep}{path}", PVESIM_INFO=sim_env["PVESIM_INFO"])
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    ids = vmids(penv)
    mon, bak = ids[NAMES["monitoring"]], ids[NAMES["backup"]]
    files = {role: token_file(penv, ids[name]) for role, name in NAMES.items()}
    # the state database's delivery records are lost, and backup's token file was copied into monitoring's CT
    with Store(penv.dir / "state") as store:
        for role in NAMES:
            rbac_state.forget(store, role)
    copied = "".join(f"{k}={v}\n" for k, v in files["backup"].items())
    penv.sim.control("POST", f"/guests/{mon}/files", {"path": SECRET, "content": copied})
    penv.sim.control("DELETE", "/pct/log")

    plan = penv.json("plan", capsys=capsys)
    assert [(c["target"], c["field"], c["old"]) for c in plan["rbac"]["changes"]] == [
        ("token/pveguard-monitoring@pve!pveguard", "secret", "missing or old in pve-monitoring")]
    log = penv.sim.control("GET", "/pct/log")
    greps = {e["vmid"]: e for e in log if e["argv"][:1] == ["grep"]}
    assert set(greps) == set(ids.values())
    assert greps[mon]["argv"] == ["grep", "-q", "-s", "-F", "-x", "-e",
                                  "PVE_TOKEN_ID=pveguard-monitoring@pve!pveguard", SECRET]
    assert all((e.get("tool") == "lxc-attach") == (tool == "lxc-attach") for e in greps.values())

    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    now = token_file(penv, mon)
    assert now["PVE_TOKEN_ID"] == "pveguard-monitoring@pve!pveguard"
    assert now["PVE_TOKEN_SECRET"] != files["monitoring"]["PVE_TOKEN_SECRET"]  # a new secret, rewritten
    assert token_file(penv, bak) == files["backup"]  # the other role's own file is left alone
    status, _r, _b = penv.sim.api("GET", "/version",
                                  token=f"{now['PVE_TOKEN_ID']}={now['PVE_TOKEN_SECRET']}")
    assert status == 200
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out

    # an empty file is stale as before (the grep finds no id line)
    penv.sim.control("POST", f"/guests/{bak}/files", {"path": SECRET, "content": ""})
    plan = penv.json("plan", capsys=capsys)
    assert [(c["target"], c["old"]) for c in plan["rbac"]["changes"]] == [
        ("token/pveguard-backup@pve!pveguard", "missing or old in pve-backup-manager")]

    secrets = [f["PVE_TOKEN_SECRET"] for f in files.values()] + [now["PVE_TOKEN_SECRET"]]
    dump = json.dumps(penv.sim.control("GET", "/pct/log"))
    assert all(s not in dump for s in secrets)  # never on a command line in a container
