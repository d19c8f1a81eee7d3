"""systemd timers from PVE calendar events, checked with systemd-analyze; pvescheduler due rules."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from pveguard.backup.calendar import CalendarError, check_due, next_runs, parse
from pveguard.backup.timers import find_command, install_units, render_units, to_oncalendar, unit_settings
from pveguard.errors import ConfigError, UsageError
from pveguard.strategy.models import Strategy

from .calendar_oracle import SYSTEMD_ANALYZE, generate, systemd_next

needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


@pytest.mark.parametrize(
    ("expr", "oncalendar"),
    [
        ("daily", "*-*-* 00:00:00"),
        ("*/15", "*-*-* *:00,15,30,45:00"),
        ("fri..mon 2:30", "Mon,Fri..Sun *-*-* 02:30:00"),
        ("mon..fri 8..17,22:0/15", "Mon..Fri *-*-* 08..17,22:00,15,30,45:00"),
        ("*/12:0 UTC", "*-*-* 00,12:00:00 UTC"),
        ("quarterly", "*-01,04,07,10-01 00:00:00"),
        ("sat *-1..7 15:00", "Sat *-*-01..07 15:00:00"),
        ("2020-7..9-2/2", "2020-07..09-02,04,06,08,10,12,14,16,18,20,22,24,26,28,30 00:00:00"),
    ],
)
def test_to_oncalendar(expr: str, oncalendar: str) -> None:
    assert to_oncalendar(parse(expr)) == oncalendar


def test_never_matching_event_is_refused() -> None:
    with pytest.raises(CalendarError, match="never runs"):
        to_oncalendar(parse("*-0-1"))


@needs_systemd
def test_every_generated_event_as_oncalendar_agrees_with_systemd() -> None:
    """All 400 generated expressions - including those systemd cannot read literally (wrap-around
    weekdays, */N hours, long repetitions) - give the same elapses through OnCalendar."""
    rng = random.Random(99)
    compared = 0
    for _ in range(400):
        event = parse(generate(rng).pve)
        base = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(90 * 365 * 86400))
        expected = systemd_next(to_oncalendar(event), base, 5)
        assert expected is not None, to_oncalendar(event)
        assert next_runs(event, base, 5) == expected, (event.source, to_oncalendar(event), base)
        compared += 1
    assert compared == 400


@needs_systemd
@pytest.mark.parametrize("expr", ["*/20", "2:30", "mon..sun 1..3:15", "0/2:45", "hourly"])
def test_oncalendar_local_time_across_dst(expr: str) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    for base in ("2024-03-31 00:30:00", "2024-10-27 01:30:00"):
        after = datetime.fromisoformat(base).replace(tzinfo=berlin)
        expected = systemd_next(to_oncalendar(parse(expr)), after, 6, tz="Europe/Berlin")
        assert next_runs(parse(expr), after, 6, zone=berlin) == expected


@needs_systemd
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = [
        render_units("pveguard-backup-hostconfig", parse("hourly"), ["/bin/true", "backup", "run", "--due"],
                     "pveguard host-configuration backup"),
        render_units("pveguard-backup-containers", parse("mon..fri 21:00"), ["/bin/true", "x y"],
                     "pveguard container backups", persistent=True),
    ]  # fmt: skip
    written = install_units(units, tmp_path)
    assert len(written) == 4
    assert install_units(units, tmp_path) == []  # unchanged: nothing rewritten
    timer = (tmp_path / "pveguard-backup-containers.timer").read_text()
    assert "OnCalendar=Mon..Fri *-*-* 21:00:00\n" in timer and "Persistent=true" in timer
    assert "ExecStart=/bin/true 'x y'" in (tmp_path / "pveguard-backup-containers.service").read_text()
    for unit in units:
        proc = subprocess.run(
            [shutil.which("systemd-analyze") or "systemd-analyze", "verify", "--man=no",
             str(tmp_path / f"{unit.name}.timer")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_render_units_rejects_bad_input() -> None:
    with pytest.raises(CalendarError, match="absolute path"):
        render_units("x", parse("daily"), ["pveguard"], "d")
    with pytest.raises(CalendarError, match="unit name"):
        render_units("x/../y", parse("daily"), ["/bin/true"], "d")


T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("last", "now", "repeat", "state", "scheduled"),
    [
        (None, T0, False, "not-due", T0 + timedelta(hours=1)),  # a new job starts counting now
        (T0, T0 + timedelta(minutes=59), False, "not-due", T0 + timedelta(hours=1)),
        (T0, T0 + timedelta(hours=1), False, "due", T0 + timedelta(hours=1)),
        (T0, T0 + timedelta(hours=1, seconds=50), False, "due", T0 + timedelta(hours=1)),
        (T0, T0 + timedelta(hours=5), False, "missed", T0 + timedelta(hours=1)),  # host was down
        (T0, T0 + timedelta(hours=5), True, "due", T0 + timedelta(hours=1)),  # repeat-missed
    ],
)
def test_check_due(last: datetime | None, now: datetime, repeat: bool, state: str, scheduled: datetime) -> None:
    result = check_due(parse("hourly UTC"), last, now, repeat)
    assert (result.state, result.scheduled) == (state, scheduled)


def test_check_due_never() -> None:
    assert check_due(parse("2021-02-29 UTC"), T0, T0).state == "never"


# --- what a unit carries: the command by absolute path, secrets as credentials, never inline -----

SECRET = "s3cr3t-never-in-a-unit"


def secret_strategy(tmp_path: Path) -> tuple[Strategy, dict[str, Path]]:
    files = {name: tmp_path / f"{name}.secret" for name in ("ledger", "token", "restic")}
    for path in files.values():
        path.write_text(SECRET + "\n")
        path.chmod(0o600)
    strategy = Strategy.model_validate({
        "security": {"ledger_hmac_key_file": str(files["ledger"])},
        "target": {"proxmox": {"user": "pveguard@pve", "token_id": "backup", "token_secret_file": str(files["token"])}},
        "backup": {"host_config": {"password_file": str(files["restic"])}},
    })  # fmt: skip
    return strategy, files


def test_unit_settings_load_the_strategys_secret_files_as_credentials(tmp_path: Path) -> None:
    strategy, files = secret_strategy(tmp_path)
    settings = unit_settings(strategy, {"PVEGUARD_PVE_HOST": "pve1:8006", "PATH": "/x", "HOME": "/root"})
    assert [(c.name, c.path) for c in settings.credentials] == [
        ("ledger-key", str(files["ledger"])), ("pve-token-secret", str(files["token"])),
        ("restic-password", str(files["restic"]))]
    assert settings.environment == {"PVEGUARD_PVE_HOST": "pve1:8006"}
    service = render_units("pveguard-backup", parse("hourly"), ["/usr/local/bin/pveguard", "backup", "run"],
                           "pveguard backups", settings=settings).files["pveguard-backup.service"]
    assert f"LoadCredential=ledger-key:{files['ledger']}\n" in service
    assert f"LoadCredential=pve-token-secret:{files['token']}\n" in service
    assert "Environment=PVEGUARD_LEDGER_KEY_FILE=%d/ledger-key\n" in service
    assert 'Environment="PVEGUARD_PVE_HOST=pve1:8006"\n' in service
    assert SECRET not in service


@pytest.mark.parametrize("var", ["PVEGUARD_PVE_TOKEN", "PVEGUARD_PVE_PASSWORD"])
def test_a_secret_only_in_the_environment_is_refused(tmp_path: Path, var: str) -> None:
    with pytest.raises(ConfigError, match=f"{var} is set") as err:
        unit_settings(Strategy(), {var: "root@pam!x=" + SECRET})
    assert SECRET not in err.value.message + err.value.hint and "_file" in err.value.hint


def test_a_missing_secret_file_is_refused_at_install_not_at_every_run(tmp_path: Path) -> None:
    strategy = Strategy.model_validate({"security": {"ledger_hmac_key_file": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="does not exist"):
        unit_settings(strategy, {})


def test_find_command_falls_back_to_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pveguard on PATH (a unit's or cron's PATH)
    assert find_command() == [os.path.abspath(sys.executable), "-m", "pveguard"]
    (tmp_path / "pveguard").write_text("#!/bin/sh\n")
    (tmp_path / "pveguard").chmod(0o755)
    assert find_command() == [str(tmp_path / "pveguard")]
    with pytest.raises(UsageError, match="absolute path"):
        find_command("pveguard")


@needs_systemd
def test_install_timers_without_pveguard_on_path_writes_units_systemd_accepts(tmp_path: Path) -> None:
    """Through the CLI as cron or a fresh root shell runs it: no virtualenv on PATH, secrets in files."""
    strategy_doc, files = secret_strategy(tmp_path)
    strategy = tmp_path / "strategy.yaml"
    strategy.write_text(yaml.safe_dump(strategy_doc.model_dump(mode="json")))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": os.pathsep.join(sys.path),
           "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(tmp_path / "state")}
    units = tmp_path / "units"
    proc = subprocess.run([sys.executable, "-m", "pveguard", "backup", "install-timers", "--unit-dir", str(units)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    service = (units / "pveguard-backup.service").read_text()
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith(f"ExecStart={os.path.abspath(sys.executable)} -m pveguard --strategy {strategy}")
    assert f"LoadCredential=restic-password:{files['restic']}" in service
    assert all(SECRET not in p.read_text() for p in units.iterdir())
    verify = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify", "--man=no",
                             str(units / "pveguard-backup.service"), str(units / "pveguard-backup.timer")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
