"""serve.container against pvesim: apply installs `pveguard serve` in pve-api-gateway with the gateway
role's token (delivered by RBAC, read in the container), each step in the ledger, then the plan is empty."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env
from .test_rbac_pvesim import SECRET, token_file, vmids, with_pct

pytest.importorskip("pvesim.testing")

GW = "pve-api-gateway"
UNIT = "/etc/systemd/system/pveguard-serve.service"
MANIFEST = "/etc/pveguard/serve.manifest"


def use_wheel(penv: Env, tmp_path: Path, version: str) -> Path:
    wheel = tmp_path / f"pveguard-{version}-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04 a wheel " + version.encode())
    penv.env["PVEGUARD_SERVE_WHEEL"] = str(wheel)
    return wheel


def setup(penv: Env, tmp_path: Path) -> Path:
    with_pct(penv, tmp_path)
    wheel = use_wheel(penv, tmp_path, "0.1.0")

    def edit(doc: dict[str, Any]) -> None:
        doc["serve"]["container"] = GW
        doc["serve"]["listen"] = "0.0.0.0:8450"
    penv.edit(edit)
    return wheel


def files(penv: Env, vmid: int) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in penv.sim.control("GET", f"/guests/{vmid}/files").items()}


def ran(penv: Env, vmid: int) -> list[str]:
    return [" ".join(e["argv"]) for e in penv.sim.control("GET", "/pct/log") if e["vmid"] == vmid]


def test_apply_installs_serve_with_the_role_token_and_then_plans_nothing(
        penv: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup(penv, tmp_path)
    plan = penv.json("plan", capsys=capsys)
    (change,) = plan["serve"]["changes"]
    assert (change["name"], change["field"], change["new"]) == (
        GW, "serve", f"pveguard 0.1.0, after {GW} is created")
    # the container has no venv module yet: apply installs python3 and python3-venv with apt inside
    penv.sim.control("POST", "/pct/scripts", {"match": "ensurepip", "exit": 1, "times": 1})
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert "serve installed" in out
    gw = vmids(penv)[GW]
    got = files(penv, gw)
    modes = penv.sim.control("GET", f"/guests/{gw}/modes")
    assert {p: modes[p] for p in ("/etc/pveguard/strategy.yaml", "/etc/pveguard/serve.env", UNIT, MANIFEST,
                                  SECRET)} == {"/etc/pveguard/strategy.yaml": "0600",
                                               "/etc/pveguard/serve.env": "0600", UNIT: "0644",
                                               MANIFEST: "0644", SECRET: "0600"}
    # the pushed strategy reaches PVE with the gateway role's own token, whose secret stays in its file
    copy = yaml.safe_load(got["/etc/pveguard/strategy.yaml"])
    px = copy["target"]["proxmox"]
    assert (copy["target"]["backend"], px["host"], px["user"], px["token_id"], px["token_secret_file"]) == (
        "proxmox", penv.sim.host, "pveguard-gateway@pve", "pveguard", SECRET)
    assert b"PVEGUARD_SELF_CONTAINER=pve-api-gateway" in got["/etc/pveguard/serve.env"]
    assert b"ExecStart=/opt/pveguard/bin/pveguard --strategy /etc/pveguard/strategy.yaml" in got[UNIT]
    assert json.loads(got[MANIFEST])["version"] == "0.1.0"
    cmds = ran(penv, gw)
    order = [next(i for i, c in enumerate(cmds) if want in c) for want in (
        "apt-get install -y -q --no-install-recommends python3 python3-venv", "python3 -m venv /opt/pveguard",
        "/opt/pveguard/bin/pip install --quiet --upgrade /root/pveguard-0.1.0-py3-none-any.whl",
        "systemctl daemon-reload", "systemctl enable pveguard-serve.service",
        "systemctl restart pveguard-serve.service")]
    order.append(max(i for i, c in enumerate(cmds) if c.startswith("<push>") and c.endswith(MANIFEST)))
    assert order == sorted(order), cmds
    # the token the daemon uses is the one RBAC delivered (no new token, never the admin's)
    tok = token_file(penv, gw)
    assert tok["PVE_TOKEN_ID"] == "pveguard-gateway@pve!pveguard"
    secret = tok["PVE_TOKEN_SECRET"]
    with Store(penv.dir / "state") as store:
        entries = [e for e in Ledger(store).entries() if e.action.startswith("provision.serve.")]
    acts = [e.action for e in entries]
    assert acts[:2] == ["provision.serve.packages.intent", "provision.serve.packages"]
    pushed = [e.details["path"] for e in entries if e.action == "provision.serve.push"]
    assert pushed[-1] == MANIFEST and UNIT in pushed and SECRET not in pushed
    assert [e.details["command"] for e in entries if e.action == "provision.serve.run"][-1] == \
        "systemctl restart pveguard-serve.service"
    assert all(e.target == f"ct/{gw}" and e.details.get("result") in (None, "ok") for e in entries)
    assert secret not in json.dumps([e.details for e in entries]) and secret not in out + err

    # converged: the second plan is empty, a second apply changes nothing in the container
    code, out, _err = penv.run("plan", capsys=capsys)
    assert code == 0 and "Nothing to do." in out, out
    again = penv.json("plan", capsys=capsys)
    assert again["serve"] == {"changes": [], "notes": []} and again["changes"] is False

    # a rendered file that differs (serve.listen) is an upgrade naming the file
    penv.edit(lambda d: d["serve"].update(listen="0.0.0.0:8451"))
    (change,) = penv.json("plan", capsys=capsys)["serve"]["changes"]
    assert (change["old"], change["new"]) == ("pveguard 0.1.0", "pveguard 0.1.0 (changed: strategy.yaml)")
    # a new wheel version is an upgrade too
    use_wheel(penv, tmp_path, "0.2.0")
    (change,) = penv.json("plan", capsys=capsys)["serve"]["changes"]
    assert change["new"].startswith("pveguard 0.2.0")
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert json.loads(files(penv, gw)[MANIFEST])["version"] == "0.2.0"
    assert yaml.safe_load(files(penv, gw)["/etc/pveguard/strategy.yaml"])["serve"]["listen"] == "0.0.0.0:8451"
    assert penv.json("plan", capsys=capsys)["serve"]["changes"] == []


def test_a_stopped_container_is_a_clear_error(penv: Env, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    setup(penv, tmp_path)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    gw = vmids(penv)[GW]
    penv.sim.control("POST", f"/guests/{gw}/crash")
    penv.edit(lambda d: d["serve"].update(listen="0.0.0.0:8452"))
    (change,) = penv.json("plan", capsys=capsys)["serve"]["changes"]
    assert change["old"] == f"(unknown: {GW} is stopped)"
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "Traceback" not in err
    assert f"cannot install serve in {GW}: the container is stopped" in err
    assert "pct start" in err


def test_a_failing_pip_is_a_clear_error_and_apply_tries_again(penv: Env, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    setup(penv, tmp_path)
    penv.sim.control("POST", "/pct/scripts", {"match": "pip install", "exit": 1, "times": 1,
                                              "stderr": "ERROR: Could not find a version that satisfies typer\n"})
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "Traceback" not in err
    assert "'/opt/pveguard/bin/pip install" in err and "Could not find a version" in err
    # no manifest: the next plan still installs, and the next apply does
    assert penv.json("plan", capsys=capsys)["serve"]["changes"][0]["old"] == "(not installed)"
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert penv.json("plan", capsys=capsys)["serve"]["changes"] == []


def test_serve_in_the_container_never_recovers_its_own_container(
        penv: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup(penv, tmp_path)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    gw = vmids(penv)[GW]
    penv.sim.control("POST", f"/guests/{gw}/crash")
    penv.env["PVEGUARD_SELF_CONTAINER"] = GW  # what the env file apply pushed sets for the daemon
    code, out, err = penv.run("recover", "--once", "--json", capsys=capsys)
    mine = next(c for c in json.loads(out)["containers"] if c["name"] == GW)
    assert mine["action"] == "skipped" and "never acts on its own container" in mine["reason"], mine
    assert next(g for g in penv.lxc() if g["vmid"] == gw)["status"] == "stopped"
    # nor does its plan try to converge its own installation
    penv.edit(lambda d: d["serve"].update(listen="0.0.0.0:8453"))
    serve = penv.json("plan", capsys=capsys)["serve"]
    assert serve["changes"] == [] and "never by itself" in serve["notes"][0]
    # the admin's pveguard (outside) does restart it
    del penv.env["PVEGUARD_SELF_CONTAINER"]
    code, out, err = penv.run("recover", "--once", "--json", capsys=capsys)
    mine = next(c for c in json.loads(out)["containers"] if c["name"] == GW)
    assert mine["action"] == "restarted", mine
