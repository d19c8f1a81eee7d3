"""`pveguard update` against pvesim: pending updates with the security ones marked, a snapshot first,
`apt-get upgrade` inside (pvesim's apt: available upgrades per guest, a postinst that fails, files a new
version replaces), the health checks after, a rollback to the snapshot when the upgrade or the checks
fail (the guest running and healthy again, its packages back), the update snapshots pruned to the
strategy's `keep_snapshots` after a success, a locked guest skipped; every step in the ledger."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store
from tests.provision.conftest import small

from .conftest import Env, make_env

pytest.importorskip("pvesim.testing")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local PVE backend (pvesh) runs as root only")

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1,
        "vzsnapshot": 0.1, "vzrollback": 0.1, "vzdelsnapshot": 0.1}
SECURITY = "Debian-Security:12/stable-security"
STABLE = "Debian:12.8/stable"
CHECK = {"type": "command", "command": ["test", "-f", "/etc/app/ok"], "interval": "1s"}


@pytest.fixture
def env(pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    sim = pvesim_factory(nodes=1, task_seconds=FAST)
    e = make_env(sim, tmp_path)
    # the local node's pvesh and pct (exec inside the guests without ssh), as on a PVE host
    sim_env = sim.env()
    for k in ("PVEGUARD_PVE_HOST", "PVEGUARD_PVE_TOKEN"):
        e.env.pop(k)
    e.env.update(PATH=sim_env["PATH"], PVESIM_INFO=sim_env["PVESIM_INFO"], PVESIM_NODE="pve1",
                 PVEGUARD_PVE_NODE="pve1")

    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = [{**small(n), "health_checks": [CHECK]} for n in ("app-one", "app-two")]
        doc["updates"] = {"keep_snapshots": 1, "health_timeout": "2s"}
    e.edit(edit)
    code, out, err = e.run("apply", "--yes", capsys=capsys)
    assert code == 0, out + err
    for name in ("app-one", "app-two"):
        vmid = vmid_of(e, name)
        e.sim.control("POST", f"/guests/{vmid}/files", {"path": "/etc/app/ok", "content": "ok\n"})
        e.sim.control("POST", f"/guests/{vmid}/packages", {"libssl3": "3.0.15-1~deb12u1", "tzdata": "2024a-0+deb12u1",
                                                           "app": "1.0"})
    return e


def vmid_of(env: Env, name: str) -> int:
    return int(next(g["vmid"] for g in env.lxc() if g["name"] == name))


def offer(env: Env, name: str, **upgrades: dict[str, Any]) -> None:
    env.sim.control("POST", f"/guests/{vmid_of(env, name)}/upgrades", upgrades)


def packages(env: Env, name: str) -> dict[str, str]:
    return dict(env.sim.control("GET", f"/guests/{vmid_of(env, name)}/packages"))


def snapshots(env: Env, name: str) -> list[str]:
    status, _r, body = env.sim.api("GET", f"/nodes/pve1/lxc/{vmid_of(env, name)}/snapshot")
    assert status == 200
    return sorted(s["name"] for s in body["data"] if s["name"] != "current")


def update(env: Env, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = env.run("update", *argv, "--json", capsys=capsys)
    assert "Traceback" not in err, err
    return code, json.loads(out)


def outcome(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["containers"] if c["name"] == name)


def entries(env: Env, prefix: str) -> list[Any]:
    with Store(env.dir / "state") as store:
        return [e for e in Ledger(store).entries() if e.action.startswith(prefix)]


def test_dry_run_lists_pending_updates_with_security_marked_and_changes_nothing(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    offer(env, "app-one", libssl3={"version": "3.0.15-1~deb12u2", "origin": SECURITY},
          tzdata={"version": "2025a-0+deb12u1", "origin": STABLE})
    code, doc = update(env, capsys, "--dry-run")
    assert code == 0, [c["reason"] for c in doc["containers"]]
    one, two = outcome(doc, "app-one"), outcome(doc, "app-two")
    assert one["action"] == "would-update" and two["action"] == "up-to-date"
    assert {p["name"]: p["security"] for p in one["pending"]} == {"libssl3": True, "tzdata": False}
    assert one["security_pending"] == 1 and one["selected"] == ["libssl3", "tzdata"]
    assert [p["origins"] for p in one["pending"] if p["name"] == "libssl3"] == [[SECURITY]]
    code, doc = update(env, capsys, "--dry-run", "--security-only", "app-one")
    assert [c["name"] for c in doc["containers"]] == ["app-one"]
    assert outcome(doc, "app-one")["selected"] == ["libssl3"]
    assert snapshots(env, "app-one") == [] and packages(env, "app-one")["libssl3"] == "3.0.15-1~deb12u1"
    assert entries(env, "update") == []


def test_success_upgrades_keeps_the_last_snapshot_and_records_it(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    offer(env, "app-one", libssl3={"version": "3.0.15-1~deb12u2", "origin": SECURITY},
          tzdata={"version": "2025a-0+deb12u1", "origin": STABLE})
    # the timer's run: security updates only (updates.security_only defaults to true)
    code, doc = update(env, capsys, "--scheduled", "app-one")
    assert code == 0, doc
    assert doc["security_only"] is True
    one = outcome(doc, "app-one")
    assert one["action"] == "updated" and one["snapshot"] and one["pruned"] == []
    assert [c["ok"] for c in one["checks"]] == [True]
    assert packages(env, "app-one")["libssl3"] == "3.0.15-1~deb12u2"
    assert packages(env, "app-one")["tzdata"] == "2024a-0+deb12u1"  # not a security update
    first = one["snapshot"]
    assert snapshots(env, "app-one") == [first]
    code, doc = update(env, capsys, "app-one")
    one = outcome(doc, "app-one")
    assert code == 0 and one["action"] == "updated" and one["selected"] == ["tzdata"]
    assert one["pruned"] == [first] and snapshots(env, "app-one") == [one["snapshot"]]
    assert [e.details["result"] for e in entries(env, "update") if e.action == "update"] == ["ok", "ok"]
    intents = entries(env, "update.intent")
    assert [i.details["packages"] for i in intents] == [["libssl3 3.0.15-1~deb12u1 -> 3.0.15-1~deb12u2 (security)"],
                                                        ["tzdata 2024a-0+deb12u1 -> 2025a-0+deb12u1"]]
    assert [e.details["deleted"] for e in entries(env, "update.prune")] == [[first]]
    vmid = vmid_of(env, "app-one")
    _status, _r, body = env.sim.api("GET", f"/nodes/pve1/lxc/{vmid}/config")
    assert body["data"]["parent"] == one["snapshot"] and "lock" not in body["data"]


def test_unhealthy_after_the_upgrade_is_rolled_back_and_healthy_again(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # the new app version drops the file the health check looks for
    offer(env, "app-one", app={"version": "2.0", "origin": STABLE, "files": {"/etc/app/ok": None}})
    code, doc = update(env, capsys, "app-one")
    assert code == 1
    one = outcome(doc, "app-one")
    assert one["action"] == "rolled-back"
    assert one["reason"].startswith("unhealthy after the upgrade: command test -f /etc/app/ok")
    assert [c["ok"] for c in one["checks"]] == [True]  # the checks after the rollback
    assert packages(env, "app-one")["app"] == "1.0"
    assert next(g for g in env.lxc() if g["name"] == "app-one")["status"] == "running"
    assert snapshots(env, "app-one") == [one["snapshot"]]  # kept: the state the container is back at
    results = [e.details["result"] for e in entries(env, "update") if e.action == "update"]
    assert results == ["rolled-back"]
    [rb] = entries(env, "update.rollback.intent")
    assert rb.details["snapshot"] == one["snapshot"] and rb.target == f"ct/{vmid_of(env, 'app-one')}"


def test_a_failing_postinst_is_rolled_back(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    offer(env, "app-two", app={"version": "2.0", "origin": STABLE, "postinst_fails": True},
          libssl3={"version": "3.0.15-1~deb12u2", "origin": SECURITY})
    code, doc = update(env, capsys)
    assert code == 1
    two = outcome(doc, "app-two")
    assert two["action"] == "rolled-back"
    assert two["reason"].startswith("apt-get failed (exit 100): dpkg: error processing package app (--configure)")
    assert packages(env, "app-two") == {"libssl3": "3.0.15-1~deb12u1", "tzdata": "2024a-0+deb12u1", "app": "1.0"}
    assert outcome(doc, "app-one")["action"] == "up-to-date"


def test_a_locked_guest_is_skipped(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    offer(env, "app-one", app={"version": "2.0", "origin": STABLE})
    vmid = vmid_of(env, "app-one")
    env.sim.control("POST", f"/locks/{vmid}", {"lock": "backup"})
    code, doc = update(env, capsys, "app-one")
    assert code == 0
    one = outcome(doc, "app-one")
    assert (one["action"], one["reason"]) == ("skipped", "locked (backup)")
    assert packages(env, "app-one")["app"] == "1.0" and snapshots(env, "app-one") == []
    env.sim.control("DELETE", f"/locks/{vmid}")


def test_unknown_name_is_a_usage_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = env.run("update", "nope", capsys=capsys)
    assert code == 2 and "no container 'nope' in the strategy" in err and "Traceback" not in err


def test_pvesim_refuses_snapshots_as_pve_does(env: Env) -> None:
    vmid = vmid_of(env, "app-two")
    base = f"/nodes/pve1/lxc/{vmid}/snapshot"
    status, reason, _b = env.sim.api("POST", base, {"snapname": "current"})
    assert status == 500 and "reserved name" in reason
    env.sim.control("POST", f"/locks/{vmid}", {"lock": "backup"})
    status, _r, body = env.sim.api("POST", base, {"snapname": "s1"})
    assert status == 200  # the refusal comes from the worker: a failed task
    env.sim.control("POST", "/tasks/finish")
    upid = body["data"]
    status, _r, task = env.sim.api("GET", f"/nodes/pve1/tasks/{upid}/status")
    assert task["data"]["exitstatus"] == "CT is locked (backup)"
    env.sim.control("DELETE", f"/locks/{vmid}")


def test_pending_security_updates_become_an_audit_finding_and_a_metric(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.audit.assemble import External, build
    from pveguard.audit.facts import HostFacts
    from pveguard.monitor.cli import pending_updates
    from pveguard.monitor.exporter import ExportView, render
    from pveguard.strategy.models import Strategy
    from pveguard.updates.state import findings

    offer(env, "app-one", libssl3={"version": "3.0.15-1~deb12u2", "origin": SECURITY},
          tzdata={"version": "2025a-0+deb12u1", "origin": STABLE})
    state = env.dir / "state"
    code, _doc = update(env, capsys, "--dry-run")  # a check records what is pending
    assert code == 0
    assert pending_updates(state) == {"app-one": (2, 1), "app-two": (0, 0)}
    metrics = render(ExportView(None, pending_updates=pending_updates(state))).decode()
    assert 'pveguard_container_pending_updates{kind="security",name="app-one"} 1.0' in metrics
    assert 'pveguard_container_pending_updates{kind="all",name="app-one"} 2.0' in metrics
    [f] = findings(state, {"app-one", "app-two"})
    assert (f.id, f.category, f.severity) == ("security-updates:app-one", "updates", "high")
    assert "libssl3" in f.detail and f.fix.startswith("pveguard update --security-only app-one")
    doc = build(HostFacts(root=Path("/nonexistent"), live=False), Strategy(), External(updates=[f]))
    assert "security-updates:app-one" in [x["id"] for x in doc["findings"]]

    code, _doc = update(env, capsys, "--security-only", "app-one")  # installed: no longer pending
    assert code == 0
    assert pending_updates(state) == {"app-one": (1, 0), "app-two": (0, 0)}
    assert findings(state, {"app-one", "app-two"}) == []


def test_serve_runs_the_schedule_with_due_once_per_scheduled_time(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """`update --scheduled --due` (serve's updates job, every 5 minutes): the first call runs (never
    run before), the next says not due until updates.schedule has another run (daily by default)."""
    offer(env, "app-one", libssl3={"version": "3.0.15-1~deb12u2", "origin": SECURITY})
    code, doc = update(env, capsys, "--scheduled", "--due", "app-one")
    assert code == 0 and outcome(doc, "app-one")["action"] == "updated" and "due" not in doc
    offer(env, "app-one", libssl3={"version": "3.0.15-1~deb12u3", "origin": SECURITY})
    code, doc = update(env, capsys, "--scheduled", "--due", "app-one")
    assert code == 0 and doc["due"] is False and doc["containers"] == []
    assert "not due ('daily'" in doc["reason"]
    assert packages(env, "app-one")["libssl3"] == "3.0.15-1~deb12u2"  # the second offer waits for tomorrow
    code, _out, err = env.run("update", "--due", capsys=capsys)
    assert code == 2 and "--due goes with --scheduled" in err
