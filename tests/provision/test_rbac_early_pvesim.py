"""`plan` starts RBAC's token-file checks from the guest listing, while it still reads configs, firewall and RBAC
objects (EarlyChecks), and its answer is the one it gives with the checks after those reads; a plan that fails
meanwhile ends the checks it started."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from pveguard.errors import BackendError
from pveguard.provision import cli as provision_cli

from .conftest import Env
from .test_rbac_pvesim import SECRET, vmids, with_pct

pytest.importorskip("pvesim.testing")


def slow_attach(tmp_path: Path, penv: Env, seconds: float) -> Path:
    """An lxc-attach that logs its start (and pid) in attach.log, then takes `seconds` before the sim's answers."""
    real = Path(penv.sim.env()["PATH"].split(os.pathsep)[0]) / "lxc-attach"
    d = tmp_path / "slowattach"
    d.mkdir()
    f = d / "lxc-attach"
    f.write_text(f"""#!/bin/sh
echo "start $$ $(date +%s%N)" >> {tmp_path}/attach.log
sleep {seconds}
exec {real} "$@"
""")
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    penv.env["PATH"] = f"{d}{os.pathsep}{penv.env['PATH']}"
    return tmp_path / "attach.log"


def started(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_a_check(log: Path, within: float = 20) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if started(log):
            return True
        time.sleep(0.02)
    return False


def test_token_checks_overlap_the_reads_and_the_plan_is_the_same(penv: Env, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with_pct(penv, tmp_path)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    ids = vmids(penv)
    # drift for the checks to find: one role's file emptied (redelivered), one container stopped
    penv.sim.control("POST", f"/guests/{ids['pve-dev-tools']}/files", {"path": SECRET, "content": ""})
    penv.sim.control("POST", f"/guests/{ids['pve-api-gateway']}", {"status": "stopped"})
    log = slow_attach(tmp_path, penv, 0.3)
    penv.sim.control("POST", "/options", {"latency": 20})
    real_fw = provision_cli.firewall_plan
    seen: dict[str, Any] = {}

    def firewall_plan(*a: Any, **kw: Any) -> Any:
        # the configs are read; the firewall and RBAC reads come next: the checks must be under way already
        seen["checking"] = wait_for_a_check(log, within=5)
        return real_fw(*a, **kw)

    monkeypatch.setattr(provision_cli, "firewall_plan", firewall_plan)
    early = penv.json("plan", capsys=capsys)
    assert seen["checking"], "no token-file check had started when the plan began its firewall reads"
    assert len(started(log)) == 3  # the three running containers, each once

    # the same plan with the checks after every read (as before)
    log.unlink()
    seen.clear()
    monkeypatch.setattr(provision_cli, "early_checks", lambda *_a: None)
    late = penv.json("plan", capsys=capsys)
    assert seen["checking"] is False and len(started(log)) == 3
    assert early == late
    changes = json.dumps(early["rbac"])
    assert "pve-dev-tools" in changes and early["changes"] is True, early["rbac"]


def test_a_plan_that_fails_ends_the_checks_it_started(penv: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with_pct(penv, tmp_path)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    log = slow_attach(tmp_path, penv, 60)

    def firewall_plan(*_a: Any, **_kw: Any) -> Any:
        assert wait_for_a_check(log)
        raise BackendError("reading the firewall failed (injected)", hint="none")

    monkeypatch.setattr(provision_cli, "firewall_plan", firewall_plan)
    t0 = time.monotonic()
    code, out, err = penv.run("plan", capsys=capsys)
    assert code != 0 and "reading the firewall failed (injected)" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 30  # not waiting out the 60 s checks
    pids = started(log)
    assert pids
    end = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < end:
        alive = [p for p in pids if running(p)]
        time.sleep(0.05)
    assert not alive, f"checks still running after the plan failed: {alive}"


def running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
