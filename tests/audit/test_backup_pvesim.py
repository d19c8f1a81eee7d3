"""Backup findings in `pveguard audit` against a 3-node pvesim, through the real CLI and the real
proxmox backend: containers applied, then no backup job -> `backup apply` -> no backup at all ->
vzdump through the API -> compliant -> judged past the next scheduled run -> late.

Skipped only when the PVE API schema pvesim reads is not available.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvesim import testing

from .test_json_shape import assert_conforms

pytestmark = pytest.mark.slow

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1,
        "vzdump": 0}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Any]:
    if not testing.schema_available():
        pytest.skip("the PVE API schema is not available")
    from tests.provision.conftest import make_env

    with testing.running(nodes=3, task_seconds=FAST) as sim:
        yield make_env(sim, tmp_path)


def _backup(doc: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in doc["findings"] if f["category"] == "backup"}


def _audit(env: Any, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = env.run("audit", "--json", capsys=capsys)
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert_conforms(doc)
    return doc


def test_backup_findings_follow_the_backups(env: Any, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pveguard.audit import score

    code, out, err = env.run("apply", "--yes", capsys=capsys)
    assert code == 0, out + err
    managed = {g["name"]: g for g in env.lxc() if "pveguard" in g.get("tags", "")}
    names = sorted(managed)
    assert len(names) == 4

    # 1. no backup job: one high finding per container (not a second "no backup at all")
    doc = _audit(env, capsys)
    assert _backup(doc) == {f"backup-no-job:{n}": "high" for n in names}
    f = next(f for f in doc["findings"] if f["id"] == "backup-no-job:pve-monitoring")
    vmid = managed["pve-monitoring"]["vmid"]
    assert f["title"] == f"guest {vmid} (pve-monitoring) is in no backup job"
    assert f["fix"].startswith("pveguard backup apply") and "no backup at all" in f["detail"]
    assert doc["backup"]["available"] and doc["backup"]["backend"] == "proxmox"
    assert doc["backup"]["source"] == "storage local on 3 node(s)"
    assert {r["name"]: r["kinds"] for r in doc["backup"]["items"]} == {n: ["no-job", "no-backup"] for n in names}
    high_before = doc["score"]["counts"]["high"]
    from pveguard.audit import report

    line = f"{vmid} pve-monitoring (not in any backup job; no backup at all)"
    assert line in report.render(doc, "table", width=400, full=True)
    assert f"lxc/{vmid} pve-monitoring: not in any backup job; no backup at all" in report.render(doc, "markdown")
    assert f"lxc/{vmid} pve-monitoring: not in any backup job; no backup at all" in report.render(doc, "html")
    # the audit recorded its score in the state database `apply` created, for the monitor
    recorded = score.latest(Path(env.env["PVEGUARD_STATE_DIR"]))
    assert recorded is not None and recorded.value == doc["score"]["value"]
    assert recorded.generated_at == datetime.fromisoformat(doc["generated_at"])

    # 2. the vzdump job exists, but has not run: "no backup at all" instead
    code, out, err = env.run("backup", "apply", capsys=capsys)
    assert code == 0, out + err
    doc = _audit(env, capsys)
    assert _backup(doc) == {f"backup-no-backup:{n}": "high" for n in names}
    f = next(f for f in doc["findings"] if f["id"] == "backup-no-backup:pve-monitoring")
    assert f["fix"].startswith(f"run the job for it now: vzdump {vmid} --storage local")
    assert doc["score"]["counts"]["high"] == high_before  # one finding per guest each time

    # 3. vzdump through the API (per node, as PVE's job would): compliant, the findings are gone
    by_node: dict[str, list[int]] = {}
    for g in managed.values():
        by_node.setdefault(g["node"], []).append(int(g["vmid"]))
    for node, vmids in by_node.items():
        status, reason, body = env.sim.api("POST", f"/nodes/{node}/vzdump",
                                           {"vmid": ",".join(map(str, vmids)), "storage": "local",
                                            "mode": "snapshot", "compress": "zstd"})
        assert status == 200, reason
        from tests.backup.conftest import pve_backend

        pve_backend(env.sim).wait_task(body["data"], "vzdump", timeout=60)
    env.reset_calls()
    doc = _audit(env, capsys)
    assert _backup(doc) == {}
    # the backup check costs a constant number of calls (guests listed once, for both checks); the
    # certificate check one node listing, two calls per node and the ACME account list
    assert env.calls() == {"GET /cluster/resources": 3, "GET /nodes/{node}/lxc/{vmid}/config": 4,
                           "GET /cluster/backup-info/not-backed-up": 1,
                           "GET /nodes/{node}/storage/{storage}/content": 3,
                           "GET /nodes/{node}/certificates/info": 3, "GET /nodes/{node}/config": 3,
                           "GET /cluster/acme/account": 1}
    assert all(r["compliant"] and r["archives"] == 1 for r in doc["backup"]["items"])
    assert doc["score"]["counts"]["high"] == high_before - 4
    assert score.latest(Path(env.env["PVEGUARD_STATE_DIR"])).value == doc["score"]["value"]  # type: ignore[union-attr]
    code, out, _ = env.run("backup", "status", "--json", capsys=capsys)
    assert code == 0 and all(r["compliant"] for r in json.loads(out))  # the same verdict as the audit

    # 4. judged two days later (past the next daily run): every backup is late (medium)
    from pveguard.audit import assemble, inventory, sources
    from pveguard.context import AppContext

    for k, v in env.env.items():
        monkeypatch.setenv(k, v)
    ctx = AppContext.from_options(None, None)
    later = datetime.now(UTC) + timedelta(days=2)
    strategy = ctx.strategy
    ext = sources.external(ctx, strategy, Path("/"), now=later)
    doc = assemble.build(inventory.collect(Path("/")), strategy, ext, now=later)
    ctx.close()
    assert _backup(doc) == {f"backup-late:{n}": "medium" for n in names}
    f = next(f for f in doc["findings"] if f["id"] == "backup-late:pve-monitoring")
    assert "is older than the scheduled run of" in f["detail"] and "(daily)" in f["detail"]
    assert f"vzdump {vmid} --storage local" in f["fix"] and "pveguard-<instance>" in f["fix"]
