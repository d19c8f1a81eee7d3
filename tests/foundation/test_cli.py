"""The command line: help, global options, init/check round trip, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pveguard", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    return ["--strategy", str(tmp_path / "strategy.yaml"), "--state-dir", str(tmp_path / "state")]


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("init", "check", "info", "audit-log"):
        assert command in proc.stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "pveguard"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("pveguard ")


def test_init_then_check_passes_and_is_in_the_ledger(paths: list[str], tmp_path: Path) -> None:
    assert run(*paths, "init").returncode == 0
    proc = run(*paths, "check")
    assert proc.returncode == 0, proc.stderr
    assert "ok (4 containers)" in proc.stdout
    shown = json.loads(run(*paths, "audit-log", "show", "--json").stdout)
    assert [e["action"] for e in shown] == ["strategy.init"]
    assert shown[0]["details"]["before_sha256"] is None


def test_init_refuses_to_overwrite_without_force(paths: list[str], tmp_path: Path) -> None:
    assert run(*paths, "init").returncode == 0
    (tmp_path / "strategy.yaml").write_text("# mine\n")
    proc = run(*paths, "init")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (tmp_path / "strategy.yaml").read_text() == "# mine\n", "must not lose the user's file"
    assert run(*paths, "init", "--force").returncode == 0
    entries = json.loads(run(*paths, "audit-log", "show", "--json").stdout)
    assert len(entries) == 2 and entries[1]["details"]["before_sha256"] is not None


def test_init_pins_the_packaged_unpinned_default_without_force(paths: list[str], tmp_path: Path) -> None:
    """The Debian package ships the default strategy without an instance; init replaces exactly that
    copy (nothing is lost) and still refuses any other content, even one byte more."""
    from pveguard.strategy.defaults import render

    strategy = tmp_path / "strategy.yaml"
    strategy.write_text(render())
    assert "instance: null" in strategy.read_text()
    proc = run(*paths, "init")
    assert proc.returncode == 0, proc.stderr
    assert "instance: null" not in strategy.read_text() and "instance: " in strategy.read_text()
    strategy.write_text(render() + "\n")
    proc = run(*paths, "init")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert strategy.read_text() == render() + "\n"


def test_check_reports_errors_with_exit_2(paths: list[str], tmp_path: Path) -> None:
    (tmp_path / "strategy.yaml").write_text("network:\n  container_vlan: 5000\nmonitorng: {}\n")
    proc = run(*paths, "check")
    assert proc.returncode == 2
    assert f"{tmp_path / 'strategy.yaml'}:2:19: network.container_vlan: VLAN 5000 is outside 1..4094" in proc.stderr
    assert "did you mean 'monitoring'" in proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(run(*paths, "check", "--json").stdout)
    assert data["valid"] is False and len(data["problems"]) == 2


def test_missing_strategy_is_a_clear_usage_error(paths: list[str]) -> None:
    proc = run(*paths, "check")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "pveguard init" in proc.stderr


def test_environment_variables_set_global_options(tmp_path: Path) -> None:
    env = {"PVEGUARD_STRATEGY": str(tmp_path / "s.yaml"), "PVEGUARD_STATE_DIR": str(tmp_path / "st")}
    assert run("init", env=env).returncode == 0
    assert (tmp_path / "s.yaml").exists() and (tmp_path / "st" / "pveguard.db").exists()


def test_info_json_shape(paths: list[str]) -> None:
    run(*paths, "init")
    data = json.loads(run(*paths, "info", "--json").stdout)
    assert set(data) == {"strategy", "host", "state", "backend"}
    assert data["strategy"]["policy"] == {"ALLOW_CORE_ONLY": True, "REQUIRE_APPROVAL": True, "CONTAINER_FIRST": True}
    assert data["strategy"]["containers"][0]["name"] == "pve-monitoring"
    assert data["host"]["pve"] is False or isinstance(data["host"]["pve"], bool)
    assert data["state"]["ledger_entries"] == 1


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run("--strategy", str(tmp_path / "s.yaml"), "--state-dir", str(blocker / "sub"), "init")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "state" in proc.stderr


def test_unknown_command_is_a_usage_error() -> None:
    proc = run("frobnicate")
    assert proc.returncode == 2
