"""The monitoring commands end to end: pveguard as a subprocess against pvesim and a temp state dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.strategies import defaults_file

from .receivers import free_port

testing = pytest.importorskip("pvesim.testing")


def pveguard(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pveguard", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PVEGUARD_STATE_DIR": str(tmp_path / "state"),
            "PVEGUARD_STRATEGY": defaults_file(), "COLUMNS": "200"}


@pytest.fixture
def sim_env(env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    if not testing.schema_available():
        pytest.skip("PVE API schema not found (pvesim)")
    with testing.running(nodes=1, guests=3, seed=3, running_share=1.0, qemu_share=0.0) as sim:
        yield sim, {**env, "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host,
                    "PVEGUARD_PVE_TOKEN": sim.token, "PVEGUARD_PVE_VERIFY_SSL": "0"}


def test_export_commands(env: dict[str, str], tmp_path: Path) -> None:
    res = pveguard(["export", "prometheus-rules"], env)
    assert res.returncode == 0 and "PveguardCpuHigh" in res.stdout
    out = tmp_path / "dash.json"
    res = pveguard(["export", "grafana-dashboard", "-o", str(out)], env)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["uid"] == "pveguard-containers"


def test_silence_lifecycle_and_ledger(env: dict[str, str]) -> None:
    res = pveguard(["alerts", "silence", "pve-*", "--for", "2h", "--reason", "kernel update", "--rule", "cpu"], env)
    assert res.returncode == 0, res.stderr
    data = json.loads(pveguard(["alerts", "--json"], env).stdout)
    (sil,) = data["silences"]
    assert sil["target"] == "pve-*" and sil["rule"] == "cpu" and sil["reason"] == "kernel update"
    until, created = (datetime.fromisoformat(sil[k]) for k in ("until", "created"))
    assert 7190 < (until - created).total_seconds() <= 7200
    ledger = json.loads(pveguard(["audit-log", "show", "--json"], env).stdout)
    assert [e["action"] for e in ledger][-1] == "alerts.silence"
    assert ledger[-1]["target"] == "pve-*" and ledger[-1]["details"]["reason"] == "kernel update"
    assert pveguard(["alerts", "unsilence", str(sil["id"])], env).returncode == 0
    assert json.loads(pveguard(["alerts", "--json"], env).stdout)["silences"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["alerts", "silence", "x", "--for", "soon", "--reason", "r"], "'soon' is not a duration"),
    (["alerts", "silence", "x", "--for", "2h"], "Missing option '--reason'"),
    (["alerts", "silence", "x", "--reason", "r", "--rule", "load"], "unknown rule 'load'"),
    (["alerts", "unsilence", "42"], "no silence with id 42"),
    (["monitor", "history", "nosuch"], "no recorded series for guest 'nosuch'"),
    (["monitor", "--once", "--watch"], "--once cannot be combined"),
])
def test_user_errors_are_clear(env: dict[str, str], args: list[str], message: str) -> None:
    res = pveguard(args, env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_monitor_once_and_history(sim_env: tuple[Any, dict[str, str]]) -> None:
    sim, env = sim_env
    vmid = sim.control("GET", "/guests")[0]["vmid"]
    sim.control("POST", f"/guests/{vmid}", {"cpu": 0.5})
    first = pveguard(["monitor", "--once", "--json"], env)
    assert first.returncode == 0, first.stderr
    poll = json.loads(first.stdout)
    assert poll["api_calls"] == 1 and len(poll["guests"]) == 3
    table = pveguard(["monitor", "--once"], env)
    assert table.returncode == 0 and f"lxc/{vmid}" in table.stdout and "50.0" in table.stdout
    hist = json.loads(pveguard(["monitor", "history", str(vmid), "--metric", "cpu", "--since", "1h", "--json"],
                               env).stdout)
    assert hist["guest"] == f"lxc/{vmid}" and hist["tier"] == "raw"
    assert [p["value"] for p in hist["points"]] == [50.0, 50.0]
    bad = pveguard(["monitor", "history", str(vmid), "--metric", "load"], env)
    assert bad.returncode == 2 and "unknown metric 'load'" in bad.stderr


def test_monitor_listen_serves_metrics(sim_env: tuple[Any, dict[str, str]]) -> None:
    from pveguard.audit import score
    from pveguard.store import Store

    _, env = sim_env
    with Store(Path(env["PVEGUARD_STATE_DIR"])) as store:  # as `pveguard audit` leaves it
        counts = dict.fromkeys(score.SEVERITIES, 0) | {"high": 1}
        score.record(store, score.Score(87, counts, 13), "2026-11-26T10:00:00+00:00", "pve1")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pveguard", "monitor", "--listen", f"127.0.0.1:{port}",
                             "--interval", "1s"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite run in the background (`cmd &`) ignores SIGINT, and the child would inherit it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if "pve_up{" in text:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        assert "pve_up{" in text, text
        assert "pveguard_api_calls_per_poll 1.0" in text
        assert 'pve_cpu_usage_ratio{id="node/pve1"}' in text
        assert "pveguard_compliance_score 87.0" in text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130), proc.stderr.read() if proc.stderr else ""
