"""systemd timers from PVE calendar events, checked with systemd-analyze; pvescheduler due rules."""

from __future__ import annotations

import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pveguard.backup.calendar import CalendarError, check_due, next_runs, parse
from pveguard.backup.timers import install_units, render_units, to_oncalendar

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
