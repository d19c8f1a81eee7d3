"""Ctrl-C outside apply: every command says what it was doing and what it changed or left, exit 130
(one mechanism in the CLI entry point, pveguard.invocation), never click's "Aborted." nor a silent exit."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env, containers, pveguard_argv

pytest.importorskip("pvesim.testing")


def start(penv: Env, *argv: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    # SIGINT back to its default in the child: a suite run in the background has it ignored
    return subprocess.Popen([*pveguard_argv(), *argv], env={**os.environ, **penv.env}, text=True, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def latency(penv: Env, ms: float) -> None:
    penv.sim.sim.opts.latency = ms


def ledger_actions(penv: Env) -> list[str]:
    db = penv.dir / "state"
    if not (db / "pveguard.db").exists():
        return []
    with Store(db) as store:
        return [e.action for e in Ledger(store).entries()]


def interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
    return " ".join(err.split())


def test_ctrl_c_in_a_reading_command_says_nothing_was_changed(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("status", capsys=capsys)[0] == 0  # the first run records this installation's new identity
    latency(penv, 1500)
    proc = start(penv, "status")
    time.sleep(2.5)  # inside an API call by now
    err = interrupt(proc)
    # which read is in flight depends on timing: the first ones list the guests, then their usage
    assert re.search(r"interrupted \(Ctrl-C\): pveguard status stopped during: (listing|reading) [^;]+; nothing was "
                     r"changed \(this run wrote no ledger entry\)$", err), err


def test_ctrl_c_in_a_changing_command_names_what_it_left(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(containers("a-one"))
    assert penv.run("apply", capsys=capsys)[0] == 0
    latency(penv, 1500)
    proc = start(penv, "backup", "apply")
    deadline = time.monotonic() + 60
    while "backup.job.intent" not in ledger_actions(penv):  # the job's POST is on its way
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.5)  # past the intent's anchors: the POST waits in pvesim's latency
    err = interrupt(proc)
    assert "interrupted (Ctrl-C): pveguard backup apply stopped during: create vzdump job pveguard-" in err, err
    assert "it changed things first: 2 ledger entries; begun and not finished: backup.job /cluster/backup/pveguard-" \
        in err, err
    assert "(pveguard audit-log show --since 20" in err and "run pveguard backup apply again to finish" in err, err
    latency(penv, 0)
    code, out, err = penv.run("backup", "apply", capsys=capsys)
    assert code == 0, out + err


def test_ctrl_c_at_a_question_is_not_aborted(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    status, reason, _b = penv.sim.api("POST", "/cluster/backup", {"id": "mine", "schedule": "daily", "all": 1,
                                                                  "storage": "local"})
    assert status == 200, reason
    penv.edit(lambda d: d["target"].update(instance="c0ffee000001"))
    assert penv.run("backup", "adopt", "nosuch", capsys=capsys)[0] != 0  # records the pinned identity
    parent, child = pty.openpty()
    try:
        proc = start(penv, "backup", "adopt", "mine", stdin=child)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("adopt vzdump job mine"), line
        time.sleep(1.0)  # at the question now
        err = interrupt(proc)
    finally:
        os.close(parent)
        os.close(child)
    assert err.endswith("interrupted (Ctrl-C) at pveguard backup adopt's question; nothing was changed (this run "
                        "wrote no ledger entry)"), err
