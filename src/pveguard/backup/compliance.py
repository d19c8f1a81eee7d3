"""Is each guest backed up as the policy says? Pure evaluation for `backup status` and `audit`.

Input is what the caller already knows (archives per guest from a dump directory or the PVE API,
the policy, the last verification and offsite times); output is one :class:`GuestStatus` per
guest with its problems spelled out. No I/O here.

"Backed up in time" is judged against the schedule, not a fixed age: the newest archive must be
at least as new as the last scheduled run that lies ``grace`` or more in the past (a backup that
is still running at its start time is not late yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from pveguard.backup.calendar import CalendarEvent, next_runs
from pveguard.backup.retention import KeepPolicy

__all__ = ["PROBLEM_KINDS", "Archive", "GuestStatus", "Problem", "evaluate", "last_run_before"]

# What can be wrong with a guest's backups; the audit turns each kind into a finding.
PROBLEM_KINDS = ("no-job", "no-backup", "late", "too-many", "verify-overdue", "offsite-overdue")

# Look-back windows for the last scheduled run: short ones first, so frequent schedules stay cheap.
_WINDOWS = (
    timedelta(hours=2), timedelta(days=2), timedelta(days=9), timedelta(days=63),
    timedelta(days=400), timedelta(days=366 * 8),
)  # fmt: skip


def last_run_before(event: CalendarEvent, moment: datetime, zone: tzinfo | None = None) -> datetime | None:
    """The latest scheduled run at or before ``moment`` (None if none within eight years)."""
    for window in _WINDOWS:
        cursor = moment - window
        last: datetime | None = None
        while True:
            runs = next_runs(event, cursor, 512, zone)
            inside = [r for r in runs if r <= moment]
            if inside:
                last = inside[-1]
            if not runs or len(inside) < len(runs):
                break
            cursor = runs[-1]
        if last is not None:
            return last
    return None


@dataclass(frozen=True)
class Archive:
    """One backup of a guest."""

    time: datetime
    protected: bool = False
    size: int | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a guest's backups: ``kind`` from :data:`PROBLEM_KINDS`, ``text`` for people."""

    kind: str
    text: str


@dataclass
class GuestStatus:
    """The verdict for one guest; ``issues`` empty = compliant."""

    guest: str
    in_backup_job: bool
    archives: int
    newest: datetime | None
    age: timedelta | None
    due_since: datetime | None  # the scheduled run the newest archive must cover
    last_verified: datetime | None
    offsite_synced: datetime | None
    issues: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """The issues as sentences (what `backup status` prints)."""
        return [i.text for i in self.issues]

    @property
    def compliant(self) -> bool:
        return not self.issues

    def add(self, kind: str, text: str) -> None:
        self.issues.append(Problem(kind, text))


def evaluate(
    guests: Iterable[str],
    archives: Mapping[str, Sequence[Archive]],
    schedule: CalendarEvent,
    now: datetime,
    keep: KeepPolicy | None = None,
    covered: Iterable[str] | None = None,
    last_verified: Mapping[str, datetime] | None = None,
    verify_schedule: CalendarEvent | None = None,
    offsite_synced: Mapping[str, datetime] | None = None,
    offsite_schedule: CalendarEvent | None = None,
    grace: timedelta = timedelta(hours=6),
    zone: tzinfo | None = None,
) -> list[GuestStatus]:
    """One status per guest (sorted). ``covered``: guests in a backup job (default: all)."""
    in_job = set(covered) if covered is not None else None
    deadline = last_run_before(schedule, now - grace, zone)
    verify_deadline = last_run_before(verify_schedule, now - grace, zone) if verify_schedule else None
    offsite_deadline = last_run_before(offsite_schedule, now - grace, zone) if offsite_schedule else None
    out: list[GuestStatus] = []
    for guest in sorted(set(guests)):
        mine = sorted(archives.get(guest, ()), key=lambda a: a.time)
        newest = mine[-1].time if mine else None
        verified = (last_verified or {}).get(guest)
        synced = (offsite_synced or {}).get(guest)
        status = GuestStatus(
            guest=guest, in_backup_job=in_job is None or guest in in_job, archives=len(mine), newest=newest,
            age=now - newest if newest else None, due_since=deadline, last_verified=verified,
            offsite_synced=synced,
        )  # fmt: skip
        if not status.in_backup_job:
            status.add("no-job", "not in any backup job")
        if newest is None:
            status.add("no-backup", "no backup at all")
        elif deadline is not None and newest < deadline:
            status.add(
                "late",
                f"last backup {newest:%Y-%m-%d %H:%M} is older than the scheduled run of "
                f"{deadline:%Y-%m-%d %H:%M} ({schedule.source})"
            )
        if keep is not None and not keep.keeps_everything:
            unprotected = sum(1 for a in mine if not a.protected)
            if unprotected > keep.total():
                status.add(
                    "too-many",
                    f"{unprotected} unprotected archives, more than the retention keeps ({keep}): is pruning running?"
                )
        if verify_deadline is not None and newest is not None and (verified is None or verified < verify_deadline):
            when = f"{verified:%Y-%m-%d %H:%M}" if verified else "never"
            status.add("verify-overdue", f"last verification {when}, due since {verify_deadline:%Y-%m-%d %H:%M}")
        if offsite_deadline is not None and newest is not None and (synced is None or synced < offsite_deadline):
            when = f"{synced:%Y-%m-%d %H:%M}" if synced else "never"
            status.add("offsite-overdue", f"last offsite copy {when}, due since {offsite_deadline:%Y-%m-%d %H:%M}")
        out.append(status)
    return out
