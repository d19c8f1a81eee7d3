"""A converged plan's per-guest reads (config, firewall options, firewall rules) go through the lean GET
transport, many in flight: each still notices a change made by hand, on whichever guest it is."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Env, containers
from .test_apply_pvesim import managed

pytest.importorskip("pvesim.testing")

NAMES = [f"rd-{i:02d}" for i in range(12)]


def _api(penv: Env, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
    status, reason, body = penv.sim.api(method, path, params)
    assert status == 200, (method, path, status, reason, body)
    return body["data"] if body else None


def test_every_read_still_sees_a_hand_made_change(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(containers(*NAMES))
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    penv.reset_calls()
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out
    calls = penv.calls()
    for what in ("config", "firewall/options", "firewall/rules"):  # one read of each per managed guest
        assert calls[f"GET /nodes/{{node}}/lxc/{{vmid}}/{what}"] == len(NAMES), (what, calls)

    g = managed(penv)
    mem, off, rule = g["rd-03"], g["rd-07"], g["rd-10"]
    _api(penv, "PUT", f"/nodes/{mem['node']}/lxc/{mem['vmid']}/config", {"memory": 512})
    _api(penv, "PUT", f"/nodes/{off['node']}/lxc/{off['vmid']}/firewall/options", {"enable": 0})
    rules = _api(penv, "GET", f"/nodes/{rule['node']}/lxc/{rule['vmid']}/firewall/rules")
    assert rules, "apply put the role's group on the guest"
    _api(penv, "DELETE", f"/nodes/{rule['node']}/lxc/{rule['vmid']}/firewall/rules/{rules[0]['pos']}")

    plan = penv.json("plan", capsys=capsys)
    updates = {a["name"]: a["changes"] for a in plan["actions"] if a["action"] == "update"}
    assert list(updates) == ["rd-03"]
    assert [(c["field"], c["old"], c["new"]) for c in updates["rd-03"]] == [("memory", "512", "256")]
    fw = {(c["target"], c["field"]): (c["old"], c["new"]) for c in plan["firewall"]["changes"]}
    assert fw[(f"ct/{off['vmid']}", "firewall")] == ("off", "on")
    assert fw[(f"ct/{rule['vmid']}", "rules")][0] == "(none)"
    assert len(fw) == 2, fw
