"""Plan and apply through the API against pvesim: apply needs admin and the digest of the plan the
caller saw; a plan that changed since is refused (409) and nothing is created."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from pveguard.serve import tokens
from pveguard.serve.app import create_app

from .conftest import Api, make_runtime

testing = pytest.importorskip("pvesim.testing")
pytestmark = pytest.mark.skipif(not testing.schema_available(), reason="PVE API schema not found (pvesim)")
FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}


def small(name: str) -> dict[str, Any]:
    return {"name": name, "role": "app", "resources": {"cores": 1, "memory": "256M", "storage": "2G"}}


def write_strategy(path: Path, *names: str) -> None:
    from pveguard.strategy.defaults import render

    doc = yaml.safe_load(render())
    doc["containers"] = [small(n) for n in names]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def sim_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Api, Path]]:
    with testing.running(nodes=1, guests=2, seed=5, task_seconds=FAST) as sim:
        for k, v in {"PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
                     "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
                     "PVEGUARD_PVE_POLL_INTERVAL": "0.1"}.items():
            monkeypatch.setenv(k, v)
        strategy = tmp_path / "strategy.yaml"
        write_strategy(strategy, "sv-app1")
        rt = make_runtime(tmp_path / "state", str(strategy))
        secrets = {r: tokens.create(rt.ctx.store, r, r, None, "test")[1] for r in tokens.ROLES}
        with TestClient(create_app(rt, dashboard=False)) as client:
            yield sim, Api(rt, client, secrets), strategy
        rt.ctx.close()


def names_in(sim: Any) -> set[str]:
    status, _r, body = sim.api("GET", "/cluster/resources", {"type": "vm"})
    assert status == 200
    return {g.get("name") for g in body["data"] if g["type"] == "lxc"}


def test_apply_needs_admin_and_the_digest_of_the_plan_seen(sim_api: tuple[Any, Api, Path]) -> None:
    sim, api, strategy = sim_api
    r = api.client.get("/api/v1/plan", headers=api.h("viewer"))
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["plan"]["counts"]["create"] == 1 and len(seen["digest"]) == 64
    # the same cluster and strategy give the same digest
    assert api.client.get("/api/v1/plan", headers=api.h("viewer")).json()["digest"] == seen["digest"]

    body = {"digest": seen["digest"]}
    assert api.client.post("/api/v1/apply", json=body, headers=api.h("viewer")).status_code == 403
    assert api.client.post("/api/v1/apply", json=body, headers=api.h("operator")).status_code == 403
    r = api.client.post("/api/v1/apply", json={"digest": "0" * 64}, headers=api.h("admin"))
    assert r.status_code == 409 and "changed" in r.json()["detail"]

    # the strategy changes after the admin looked: their digest no longer applies, nothing is created
    write_strategy(strategy, "sv-app1", "sv-app2")
    r = api.client.post("/api/v1/apply", json=body, headers=api.h("admin"))
    assert r.status_code == 409, r.text
    assert not names_in(sim) & {"sv-app1", "sv-app2"}

    fresh = api.client.get("/api/v1/plan", headers=api.h("viewer")).json()
    assert fresh["digest"] != seen["digest"] and fresh["plan"]["counts"]["create"] == 2
    r = api.client.post("/api/v1/apply", json={"digest": fresh["digest"]}, headers=api.h("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert {"sv-app1", "sv-app2"} <= names_in(sim)
    # now there is nothing left to do
    after = api.client.get("/api/v1/plan", headers=api.h("viewer")).json()["plan"]
    assert after["changes"] is False, {k: v for k, v in after.items() if k != "actions"}

    entries = api.client.get("/api/v1/ledger", params={"limit": 200}, headers=api.h("viewer")).json()["entries"]
    by_action = {e["action"]: e for e in reversed(entries)}
    assert by_action["serve.apply.refused"]["actor"] == "api:admin (admin)"
    assert by_action["serve.apply"]["actor"] == "api:admin (admin)"
    done = [e for e in entries if e["action"].startswith("provision.")]
    assert {e["action"] for e in done} >= {"provision.create"}, sorted({e["action"] for e in done})
    # the first plan (a viewer's) pinned the installation's identity; apply's steps are the admin's
    assert {(e["action"], e["actor"]) for e in done if e["action"] == "provision.instance"} == {
        ("provision.instance", "api:viewer (viewer)")}
    assert [e for e in done if e["action"] != "provision.instance" and e["actor"] != "api:admin (admin)"] == []
