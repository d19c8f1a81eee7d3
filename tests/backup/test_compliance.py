"""Backup compliance per guest: age against the schedule, retention, verification, offsite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pveguard.backup.calendar import parse
from pveguard.backup.compliance import Archive, evaluate, last_run_before
from pveguard.backup.retention import KeepPolicy

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(
    ("expr", "moment", "expected"),
    [
        ("daily UTC", NOW, datetime(2024, 5, 10, 0, 0, tzinfo=UTC)),
        ("daily UTC", datetime(2024, 5, 10, 0, 0, tzinfo=UTC), datetime(2024, 5, 10, 0, 0, tzinfo=UTC)),
        ("*/15 UTC", NOW - timedelta(seconds=1), datetime(2024, 5, 10, 11, 45, tzinfo=UTC)),
        ("*:*:* UTC", NOW, NOW),
        ("weekly UTC", NOW, datetime(2024, 5, 6, 0, 0, tzinfo=UTC)),
        ("monthly UTC", NOW, datetime(2024, 5, 1, 0, 0, tzinfo=UTC)),
        ("yearly UTC", NOW, datetime(2024, 1, 1, 0, 0, tzinfo=UTC)),
        ("02-29 UTC", NOW, datetime(2024, 2, 29, 0, 0, tzinfo=UTC)),
        ("2030-01-01 UTC", NOW, None),
    ],
)
def test_last_run_before(expr: str, moment: datetime, expected: datetime | None) -> None:
    assert last_run_before(parse(expr), moment) == expected


def _daily(days: int, hour: int = 2) -> list[Archive]:
    return [Archive(datetime(2024, 5, 10, hour, tzinfo=UTC) - timedelta(days=d)) for d in range(days)]


def test_compliant_and_each_kind_of_problem() -> None:
    archives = {
        "101": _daily(7),  # fine
        "102": _daily(7)[3:],  # last backup 4 days ago
        "103": _daily(7) + [Archive(datetime(2024, 4, 1, 2, tzinfo=UTC)) for _ in range(3)],  # too many
        "104": [],
    }
    statuses = {
        s.guest: s
        for s in evaluate(
            ["101", "102", "103", "104", "105"],
            archives,
            parse("2:00 UTC"),
            NOW,
            keep=KeepPolicy(daily=7),
            covered=["101", "102", "103", "104"],
        )
    }
    assert statuses["101"].compliant and statuses["101"].age == timedelta(hours=10)
    assert statuses["101"].due_since == datetime(2024, 5, 10, 2, tzinfo=UTC)
    assert "older than the scheduled run of 2024-05-10 02:00" in statuses["102"].problems[0]
    assert "more than the retention keeps (keep-daily=7)" in statuses["103"].problems[0]
    assert statuses["104"].problems == ["no backup at all"]
    assert statuses["105"].problems == ["not in any backup job", "no backup at all"]


def test_running_backup_is_not_late_within_grace() -> None:
    # 02:30, the 02:00 job is still writing: yesterday's archive is fine within the grace time.
    at = datetime(2024, 5, 10, 2, 30, tzinfo=UTC)
    status = evaluate(["101"], {"101": [Archive(datetime(2024, 5, 9, 2, 0, 5, tzinfo=UTC))]}, parse("2:00 UTC"), at)
    assert status[0].compliant
    late = evaluate(["101"], {"101": [Archive(datetime(2024, 5, 9, 2, 0, 5, tzinfo=UTC))]}, parse("2:00 UTC"),
                    at + timedelta(hours=6))  # fmt: skip
    assert not late[0].compliant


def test_protected_archives_do_not_count_against_retention() -> None:
    archives = {"101": _daily(7) + [Archive(datetime(2023, 1, 1, tzinfo=UTC), protected=True)] * 5}
    assert evaluate(["101"], archives, parse("2:00 UTC"), NOW, keep=KeepPolicy(daily=7))[0].compliant


def test_verification_and_offsite_due() -> None:
    archives = {"101": _daily(7)}
    kwargs = {"verify_schedule": parse("weekly UTC"), "offsite_schedule": parse("daily UTC")}
    ok = evaluate(["101"], archives, parse("2:00 UTC"), NOW,
                  last_verified={"101": datetime(2024, 5, 6, 1, tzinfo=UTC)},
                  offsite_synced={"101": datetime(2024, 5, 10, 3, tzinfo=UTC)}, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    assert ok[0].compliant
    stale = evaluate(["101"], archives, parse("2:00 UTC"), NOW,
                     last_verified={"101": datetime(2024, 4, 20, tzinfo=UTC)}, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    assert stale[0].problems == [
        "last verification 2024-04-20 00:00, due since 2024-05-06 00:00",
        "last offsite copy never, due since 2024-05-10 00:00",
    ]
