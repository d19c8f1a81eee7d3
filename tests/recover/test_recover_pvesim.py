"""The watchdog against pvesim (issue 14's "done when"): a managed CT stopped through /_sim is running
again after `recover --once`, with ledger entries; stopped more often than the budget allows it is
restarted exactly `max_restarts` times, then quarantined with an alert through the monitor's notifiers;
an unmanaged guest, another installation's, a locked one and one in maintenance stay stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store
from tests.monitor.receivers import WebhookReceiver, webhook_receiver
from tests.provision.conftest import small

from .conftest import Env, make_env

pytest.importorskip("pvesim.testing")

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}
OTHER = "0th3r1n5t4nc"
MAX = 2


@pytest.fixture
def hook() -> Any:
    with webhook_receiver() as rec:
        yield rec


@pytest.fixture
def env(pvesim_factory: Any, tmp_path: Path, hook: WebhookReceiver, capsys: pytest.CaptureFixture[str]) -> Env:
    sim = pvesim_factory(nodes=1, task_seconds=FAST)
    e = make_env(sim, tmp_path)

    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = [small(n) for n in ("app-one", "app-locked", "app-held", "app-foreign")]
        doc["emergency"]["container_failure"].update(max_restarts=MAX, window="1h", backoff="0s",
                                                     on_exhausted="quarantine")
        doc["monitoring"]["notify"] = [{"type": "webhook", "name": "hook", "url": hook.url}]
    e.edit(edit)
    code, out, err = e.run("apply", "--yes", capsys=capsys)
    assert code == 0, out + err
    return e


def vmid_of(env: Env, name: str) -> int:
    return int(next(g["vmid"] for g in env.lxc() if g["name"] == name))


def status(env: Env, name: str) -> str:
    return str(next(g["status"] for g in env.lxc() if g["name"] == name))


def crash(env: Env, name: str) -> None:
    """What a crashed container looks like in PVE: it is simply `stopped` (no task, no lock)."""
    env.sim.control("POST", f"/guests/{vmid_of(env, name)}/crash")
    assert status(env, name) == "stopped"


def recover(env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    import json

    code, out, err = env.run("recover", "--once", "--json", capsys=capsys)
    assert "Traceback" not in err, err
    return code, json.loads(out)


def outcome(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["containers"] if c["name"] == name)


def entries(env: Env, prefix: str) -> list[Any]:
    with Store(env.dir / "state") as store:
        return [e for e in Ledger(store).entries() if e.action.startswith(prefix)]


def test_a_crashed_container_is_restarted_with_ledger_entries(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = recover(env, capsys)
    assert code == 0 and {c["action"] for c in doc["containers"]} == {"none"}
    assert not entries(env, "recover.")
    crash(env, "app-one")
    env.reset_calls()
    code, doc = recover(env, capsys)
    calls = env.calls()
    assert code == 0, doc
    one = outcome(doc, "app-one")
    assert (one["action"], one["reason"], one["restarts_in_window"]) == ("restarted", "not running (stopped)", 1)
    assert status(env, "app-one") == "running"
    intent, result = entries(env, "recover.restart")
    assert (intent.action, intent.details["reason"], intent.details["name"]) == \
        ("recover.restart.intent", "not running (stopped)", "app-one")
    assert (result.action, result.details["result"]) == ("recover.restart", "ok")
    # detection is the one listing: the only other calls are for the failed guest
    assert calls.get("GET /cluster/resources") == 1, calls
    assert sum(n for k, n in calls.items() if k.endswith("/config")) == 1, calls


def test_budget_then_quarantine_with_an_alert_then_clear(env: Env, hook: WebhookReceiver,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(MAX):
        crash(env, "app-one")
        code, doc = recover(env, capsys)
        assert code == 0 and outcome(doc, "app-one")["action"] == "restarted", doc
        assert outcome(doc, "app-one")["restarts_in_window"] == i + 1
    crash(env, "app-one")
    code, doc = recover(env, capsys)
    assert code == 1
    one = outcome(doc, "app-one")
    assert one["action"] == "quarantined" and "recover clear app-one" in one["reason"]
    assert status(env, "app-one") == "stopped"
    [alert] = doc["alerts"]
    assert (alert["rule"], alert["name"], alert["severity"]) == ("container-quarantined", "app-one", "critical")
    # delivered through the monitor's notifier (the strategy's webhook), exactly once
    assert [b["rule"] for b in hook.bodies()] == ["container-quarantined"]
    assert [e.action for e in entries(env, "recover.")].count("recover.restart") == MAX
    assert len(entries(env, "recover.quarantined")) == 1

    # it stays quarantined across runs: no restart, no second alert
    code, doc = recover(env, capsys)
    assert code == 1 and outcome(doc, "app-one")["action"] == "quarantined" and not doc["alerts"]
    assert status(env, "app-one") == "stopped" and len(hook.bodies()) == 1
    assert [e.action for e in entries(env, "recover.")].count("recover.restart") == MAX

    code, out, err = env.run("recover", "clear", "app-one", capsys=capsys)
    assert code == 0 and "out of quarantine" in out, err
    assert entries(env, "recover.clear")[0].details["was_quarantined"] is True
    code, doc = recover(env, capsys)
    assert code == 0 and outcome(doc, "app-one")["action"] == "restarted"
    assert status(env, "app-one") == "running"


def test_unmanaged_foreign_locked_and_maintenance_stay_stopped(env: Env, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # another installation's container, by the same name as one in our strategy
    foreign = vmid_of(env, "app-foreign")
    cfg = env.config(foreign)
    env.sim.control("POST", f"/guests/{foreign}", {"config": {
        "description": cfg["description"].replace("instance=", f"instance={OTHER} was=")}})
    # an unmanaged guest with the pveguard tag and a strategy container's name but no marker
    [plain] = env.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "status": "stopped"})
    env.sim.control("POST", f"/guests/{plain}", {"config": {"tags": "pveguard", "hostname": "app-one",
                                                             "onboot": 1}})
    env.sim.control("POST", f"/locks/{vmid_of(env, 'app-locked')}", {"lock": "backup"})
    code, out, err = env.run("maintenance", "app-held", "on", "--reason", "upgrading", capsys=capsys)
    assert code == 0, out + err
    assert entries(env, "recover.maintenance")[0].details["state"] == "on"
    for name in ("app-locked", "app-held", "app-foreign"):
        crash(env, name)

    code, doc = recover(env, capsys)
    assert code == 0, doc
    by_vmid = {c["vmid"]: c for c in doc["containers"]}
    assert by_vmid[plain]["action"] == "skipped" and "not managed" in by_vmid[plain]["reason"]
    assert by_vmid[foreign]["action"] == "skipped" and OTHER in by_vmid[foreign]["reason"]
    assert outcome(doc, "app-locked")["reason"] == "locked (backup)"
    assert "in maintenance (upgrading)" in outcome(doc, "app-held")["reason"]
    stopped = {g["vmid"]: g["status"] for g in env.lxc()}
    for vmid in (plain, foreign, vmid_of(env, "app-locked"), vmid_of(env, "app-held")):
        assert stopped[vmid] == "stopped"
    assert not entries(env, "recover.restart")

    # maintenance off and the lock gone: both are watched again
    assert env.run("maintenance", "app-held", "off", capsys=capsys)[0] == 0
    env.sim.control("DELETE", f"/locks/{vmid_of(env, 'app-locked')}")
    code, doc = recover(env, capsys)
    assert outcome(doc, "app-held")["action"] == outcome(doc, "app-locked")["action"] == "restarted"
    assert status(env, "app-held") == status(env, "app-locked") == "running"
    assert status(env, "app-foreign") == "stopped" and stopped[plain] == "stopped"


def test_errors_are_clear(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = env.run("recover", "clear", "nope", capsys=capsys)
    assert code == 2 and "no container 'nope'" in err
    code, _out, err = env.run("maintenance", "app-one", "maybe", capsys=capsys)
    assert code == 2 and "neither on nor off" in err
    code, _out, err = env.run("recover", "--json", capsys=capsys)
    assert code == 2 and "--json needs --once" in err


def test_the_loop_repairs_and_stops_on_sigterm(env: Env) -> None:
    """`pveguard recover` without --once: sweeps every `interval`, ends cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env.edit(lambda d: d["emergency"]["container_failure"].update(interval="1s"))
    proc = subprocess.Popen([sys.executable, "-m", "pveguard", "recover"], env={**os.environ, **env.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        crash(env, "app-one")
        deadline = time.monotonic() + 20
        while status(env, "app-one") != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(env, "app-one") == "running"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "app-one" in out and "restarted" in out and "stopped" in err
    assert [e.action for e in entries(env, "recover.restart")] == ["recover.restart.intent", "recover.restart"]


def test_the_loop_against_crashes_on_a_schedule(env: Env, hook: WebhookReceiver) -> None:
    """A guest that crashes every 3 s (pvesim's crash schedule) while `pveguard recover` runs as a loop
    (interval 1 s): each of the first MAX crashes is repaired within the interval plus a restart, the
    next one spends the budget: quarantined with one alert, and it stays stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env.edit(lambda d: d["emergency"]["container_failure"].update(interval="1s"))
    vmid = vmid_of(env, "app-one")
    proc = subprocess.Popen([sys.executable, "-m", "pveguard", "recover"], env={**os.environ, **env.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    downtimes: list[float] = []
    try:
        time.sleep(1.5)  # the loop's first sweep
        env.sim.control("POST", f"/guests/{vmid}/crash", {"after": 1, "every": 3, "times": MAX + 1})
        down_since: float | None = None
        deadline = time.monotonic() + 30
        # watch from outside (each listing also lets the sim's clock fire a due crash on time)
        while time.monotonic() < deadline and not entries(env, "recover.quarantined"):
            now, st = time.monotonic(), status(env, "app-one")
            if st == "stopped" and down_since is None:
                down_since = now
            elif st == "running" and down_since is not None:
                downtimes.append(now - down_since)
                down_since = None
            time.sleep(0.1)
        assert entries(env, "recover.quarantined"), "never quarantined"
        time.sleep(2.5)  # two more sweeps: nothing is restarted any more
        assert status(env, "app-one") == "stopped"
        assert env.sim.control("GET", f"/guests/{vmid}/crash")["crashes"] == MAX + 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # each crash within the budget was repaired before the next one: down for at most the loop's
    # interval (1 s) plus a sweep and a restart on pvesim's fast tasks
    assert len(downtimes) == MAX and all(d < 2.5 for d in downtimes), downtimes
    assert [e.details["result"] for e in entries(env, "recover.restart") if e.action == "recover.restart"] \
        == ["ok"] * MAX
    assert [b["rule"] for b in hook.bodies()] == ["container-quarantined"]
    assert "quarantined" in out and "recover clear app-one" in out
