"""Honest status and planning against pvesim: unknown is not absent, the journal is resolved against
what exists, intents are recorded before requests, --only, and Ctrl-C says what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env, pveguard_argv

pytest.importorskip("pvesim.testing")

NAMES = ["pve-monitoring", "pve-backup-manager", "pve-dev-tools", "pve-api-gateway"]


def entries(env: Env, prefix: str = "provision") -> list[Any]:
    with Store(env.dir / "state") as store:
        return list(Ledger(store).entries(action=prefix))


def test_status_with_a_node_offline_says_unknown_not_missing(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d["containers"][0].update(node="pve1"))  # the others go to pve2 (most free memory)
    assert penv.run("apply", capsys=capsys)[0] == 0
    on_pve2 = sorted(g["name"] for g in penv.lxc() if g["node"] == "pve2")
    assert on_pve2
    penv.sim.control("POST", "/nodes/pve2", {"online": False})
    st = penv.json("status", capsys=capsys)
    assert st["missing"] == []
    rows = {r["name"]: r for r in st["containers"]}
    assert sorted(rows) == sorted(NAMES)
    for name in on_pve2:
        assert rows[name]["state"] == "unknown" and "node pve2 offline" in rows[name]["reason"]
    assert rows["pve-monitoring"]["state"] == "running"
    code, out, _ = penv.run("status", capsys=capsys)
    assert code == 0 and "not created yet" not in out
    assert f"unknown: {on_pve2[0]} (CT" in out and "node pve2 offline" in out


def test_a_create_that_failed_before_its_vmid_leaves_nothing_unfinished(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/nodes/pve2", {"online": False})
    penv.env["PVEGUARD_PVE_NODE"] = "pve2"  # placement fails: no VMID, nothing sent
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "is offline" in err
    st = penv.json("status", capsys=capsys)
    assert st["unfinished"] == [] and sorted(st["missing"]) == sorted(NAMES)
    del penv.env["PVEGUARD_PVE_NODE"]
    penv.sim.control("POST", "/nodes/pve2", {"online": True})
    assert penv.run("apply", capsys=capsys)[0] == 0
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "resume" not in out


def test_stale_journal_rows_are_resolved_and_cleared(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.provision.journal import Journal

    assert penv.run("apply", capsys=capsys)[0] == 0
    with Store(penv.dir / "state") as store:  # rows an older pveguard or a failed create left behind
        j = Journal(store)
        j.set("pve-monitoring", "creating")  # no VMID: "CT ?" forever before
        j.set("removed-later", "created", 4242, "pve1")  # its guest no longer exists
        g = next(x for x in penv.lxc() if x["name"] == "pve-dev-tools")
        j.set("pve-dev-tools", "creating", g["vmid"], g["node"])  # runs already: nothing left to do
    st = penv.json("status", capsys=capsys)
    assert st["unfinished"] == []
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "resume" not in out and "finish interrupted" not in out
    penv.reset_calls()
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert not any(k.startswith(("POST", "PUT", "DELETE")) for k in penv.calls())
    with Store(penv.dir / "state") as store:
        assert Journal(store).entries() == []


def test_only_plans_and_applies_the_named_containers(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    plan = penv.json("plan", "--only", "pve-monitoring", "--only", "pve-api-gateway", capsys=capsys)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("create", "pve-monitoring"),
                                                                    ("create", "pve-api-gateway")]
    code, out, err = penv.run("apply", "--only", "pve-monitoring", capsys=capsys)
    assert code == 0, out + err
    assert [g["name"] for g in penv.lxc()] == ["pve-monitoring"]
    for cmd in ("plan", "apply"):
        code, out, err = penv.run(cmd, "--only", "pve-monitorin", capsys=capsys)
        assert code == 2 and "--only pve-monitorin: no such container in the strategy" in err
        assert "pve-monitoring, pve-backup-manager, pve-dev-tools, pve-api-gateway" in err
        assert "Traceback" not in out + err
    assert [g["name"] for g in penv.lxc()] == ["pve-monitoring"]


def test_every_mutation_has_an_intent_before_and_a_result_after(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("apply", capsys=capsys)[0] == 0
    log = [(e.action, e.target) for e in entries(penv)]
    for g in penv.lxc():
        mine = [a for a, t in log if t == f"ct/{g['vmid']}"]
        # then its firewall (options, then the rule for its role's group), each an intent and a result
        assert mine == ["provision.create.intent", "provision.create", "provision.start.intent", "provision.start",
                        *["provision.firewall.intent", "provision.firewall"] * 2]


def start_apply(penv: Env) -> subprocess.Popen[str]:
    # SIGINT back to its default in the child: a suite started in the background (`cmd &`) has it
    # ignored, and Python keeps an inherited SIG_IGN, so the Ctrl-C below would never arrive
    return subprocess.Popen([*pveguard_argv(), "apply"], env={**os.environ, **penv.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(proc: subprocess.Popen[str], *markers: str, timeout: float = 60) -> None:
    """Read apply's progress lines until every marker was shown (creates run at once: in any order)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    left = set(markers)
    for line in proc.stderr:
        left = {m for m in left if m not in line}
        if not left or time.monotonic() > deadline:
            break
    if left:
        raise AssertionError(f"{sorted(left)!r} never shown")


def test_kill_during_create_leaves_its_intent_with_the_vmid(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 3}})
    proc = start_apply(penv)
    wait_for(proc, "creating pve-monitoring as CT")
    time.sleep(0.5)  # the POSTs are on their way (all four at once); PVE keeps creating without us
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    penv.sim.control("POST", "/tasks/finish")
    guests = penv.lxc()
    assert "pve-monitoring" in [g["name"] for g in guests]
    log = [(e.action, e.target, e.details.get("result")) for e in entries(penv)]
    # each creation is visible as begun and not finished: an intent with its VMID, no result
    for g in guests:
        assert ("provision.create.intent", f"ct/{g['vmid']}", None) in log
    assert not any(a == "provision.create" for a, _t, _r in log)
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.2}})
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert sorted(x["name"] for x in penv.lxc()) == sorted(NAMES)


def test_ctrl_c_during_apply_says_what_it_left(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 3}})
    penv.env["PVEGUARD_PVE_CREATE_CONCURRENCY"] = "2"  # two creates run, two wait their turn
    proc = start_apply(penv)
    wait_for(proc, "creating pve-monitoring as CT", "creating pve-backup-manager as CT")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted (Ctrl-C) during: create pve-monitoring, create pve-backup-manager" in err
    assert "not started: create pve-dev-tools, create pve-api-gateway" in err
    assert "run 'pveguard apply' again to converge" in err
    results = sorted((e.action, e.target, e.details.get("result")) for e in entries(penv, "provision.create"))
    vmids = sorted(f"ct/{g['vmid']}" for g in penv.lxc())
    assert len(vmids) == 2
    assert results == sorted([("provision.create.intent", t, None) for t in vmids]
                             + [("provision.create", t, "interrupted") for t in vmids])
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.2}})
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert sorted(x["name"] for x in penv.lxc()) == sorted(NAMES)
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0
