"""PVE calendar events (`pve-calendar-event`) for pvesim.

The grammar is pveguard's own parser (`pveguard.backup.calendar`), which is checked against PVE's
upstream test vectors (proxmox-time, pve-common) and against `systemd-analyze calendar`; a second,
looser parser here accepted what PVE rejects and rejected PVE's minute-only forms. pvesim only
adapts it to what its handlers use: epoch seconds.
"""

from __future__ import annotations

import datetime as dt

from pveguard.backup.calendar import CalendarError, CalendarEvent, next_runs, parse

__all__ = ["CalendarError", "CalendarEvent", "next_run", "parse_calendar_event"]


def parse_calendar_event(text: str) -> CalendarEvent:
    """Parse a calendar event or raise CalendarError (a ValueError) with PVE's reason."""
    return parse(text)


def next_run(event: CalendarEvent, after: float, tz: dt.tzinfo | None = None) -> int | None:
    """First epoch second strictly after `after` that matches the event (local time unless the
    event says UTC), or None when it never matches again."""
    runs = next_runs(event, dt.datetime.fromtimestamp(after, dt.UTC), 1, zone=tz)
    return int(runs[0].timestamp()) if runs else None
