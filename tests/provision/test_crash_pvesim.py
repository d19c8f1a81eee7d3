"""kill -9 during apply, then apply again: converges, nothing created twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from .conftest import Env, pveguard_argv

pytest.importorskip("pvesim.testing")

NAMES = ["pve-monitoring", "pve-backup-manager", "pve-dev-tools", "pve-api-gateway"]


def start_apply(penv: Env) -> subprocess.Popen[str]:
    return subprocess.Popen([*pveguard_argv(), "apply"], env={**os.environ, **penv.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> list[str]:
    """Read apply's progress lines until `marker` shows up, then kill -9 it."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            seen.append(line.rstrip())
            if marker in line or time.monotonic() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert any(marker in s for s in seen), seen
    return seen


def assert_converged(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    guests = penv.lxc()
    assert Counter(g["name"] for g in guests) == Counter(NAMES)  # each exactly once
    assert all(g["status"] == "running" for g in guests)
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out


def test_kill_after_create_before_start_resumes(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzstart": 5}})
    kill_when(start_apply(penv), "created pve-monitoring")
    # the four creates ran at once: pve-monitoring is created, the others created or still creating
    made = sorted(g["name"] for g in penv.lxc())
    assert "pve-monitoring" in made and all(g["status"] == "stopped" for g in penv.lxc())
    plan = penv.json("plan", capsys=capsys)
    assert sorted(a["name"] for a in plan["actions"] if a["action"] == "resume") == made
    status = penv.json("status", capsys=capsys)
    steps = {j["name"]: j["step"] for j in status["unfinished"]}
    assert sorted(steps) == made and steps["pve-monitoring"] == "created"
    assert set(steps.values()) <= {"created", "creating"}
    penv.sim.control("POST", "/tasks", {"seconds": {"vzstart": 0.1}})
    assert_converged(penv, capsys)


def test_kill_during_create_task_waits_and_converges(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 3}})
    kill_when(start_apply(penv), "creating pve-monitoring as CT")
    time.sleep(0.3)  # the POST is on its way; PVE keeps creating without us
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.2}})
    assert_converged(penv, capsys)


@pytest.mark.parametrize("delays", [(0.4, 0.8, 1.2, 1.6)])
def test_repeated_kills_at_any_point_converge(penv: Env, capsys: pytest.CaptureFixture[str],
                                              delays: tuple[float, ...]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.5, "vzstart": 0.5}})
    for delay in delays:
        proc = start_apply(penv)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        names = [g["name"] for g in penv.lxc()]
        assert len(names) == len(set(names)), names
    assert_converged(penv, capsys)


def test_stale_journal_row_is_cleared_without_work(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.provision.journal import Journal
    from pveguard.store import Store

    assert penv.run("apply", capsys=capsys)[0] == 0
    g = next(x for x in penv.lxc() if x["name"] == "pve-monitoring")
    with Store(penv.dir / "state") as store:  # as if killed between start and journal.done
        Journal(store).set("pve-monitoring", "started", g["vmid"], g["node"])
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0  # no packages: nothing to do
    penv.reset_calls()
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert not any(k.startswith(("POST", "PUT", "DELETE")) for k in penv.calls())
    with Store(penv.dir / "state") as store:
        assert Journal(store).entries() == []


def test_second_concurrent_apply_is_refused(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 3}})
    proc = start_apply(penv)
    kill_when_seen = "creating pve-monitoring as CT"
    assert proc.stderr is not None
    for line in proc.stderr:
        if kill_when_seen in line:
            break
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "another pveguard apply is running" in err
    proc.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
    proc.wait(timeout=10)
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.2}})
    assert_converged(penv, capsys)
