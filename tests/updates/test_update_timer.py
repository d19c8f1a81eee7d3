"""`pveguard update-timer`: the systemd timer that runs `pveguard update --scheduled` at the strategy's
`updates.schedule` (the backup timers' PVE calendar -> OnCalendar= translation), checked by
`systemd-analyze verify`; `never` writes nothing and says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.strategy.defaults import render
from tests.infra.cli import run_cli

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def strategy(tmp_path: Path, **updates: Any) -> dict[str, str]:
    doc = yaml.safe_load(render())
    doc["updates"] = updates
    (tmp_path / "strategy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {"PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"), "PVEGUARD_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_update_timer_runs_update_scheduled_at_the_schedule(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    env = strategy(tmp_path, schedule="sat,sun 04:30")
    units = tmp_path / "units"
    code, out, err = run_cli(["update-timer", "--unit-dir", str(units), "--pveguard", "/bin/true"], capsys, env)
    assert code == 0, err
    assert sorted(p.name for p in units.iterdir()) == ["pveguard-update.service", "pveguard-update.timer"]
    timer = (units / "pveguard-update.timer").read_text()
    assert "OnCalendar=Sat..Sun *-*-* 04:30:00\n" in timer and "(update-timer)" in timer
    service = (units / "pveguard-update.service").read_text()
    assert "ExecStart=/bin/true --strategy " in service and service.rstrip().count("update --scheduled") == 1
    proc = subprocess.run([str(SYSTEMD_ANALYZE), "verify", "--man=no", str(units / "pveguard-update.timer")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    code, out, err = run_cli(["audit-log", "show", "--action", "update.install-timer", "--json"], capsys, env)
    assert code == 0 and [e["details"]["schedule"] for e in json.loads(out)] == ["sat,sun 04:30"]


def test_update_timer_with_schedule_never_is_a_clear_error(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    env = strategy(tmp_path, schedule="never")
    code, _out, err = run_cli(["update-timer", "--unit-dir", str(tmp_path / "u"), "--pveguard", "/bin/true"],
                              capsys, env)
    assert code == 2 and "updates.schedule is 'never'" in err and "Traceback" not in err
    assert not (tmp_path / "u").exists()


def test_a_bad_schedule_is_a_positioned_strategy_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = strategy(tmp_path, schedule="sometimes")
    code, _out, err = run_cli(["check"], capsys, env)
    assert code == 2 and "updates.schedule" in err and "Traceback" not in err
