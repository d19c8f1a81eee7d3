"""PVE calendar events (`pve-calendar-event`, proxmox-time): parse and compute the next run.

Supported: `[WEEKDAY] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]]` with lists (`,`), ranges
(`..`), repetitions (`/n`), `*`, and the keywords minutely, hourly, daily, weekly, monthly,
yearly/annually, quarterly, semiannually.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_KEYWORDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "semiannually": "*-01,07-01 00:00:00",
    "semi-annually": "*-01,07-01 00:00:00",
}
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class CalendarError(ValueError):
    """The text is not a calendar event PVE accepts."""


@dataclass(frozen=True)
class CalendarEvent:
    """Allowed values per field; None = any."""

    weekdays: frozenset[int] | None
    utc: bool
    years: frozenset[int] | None
    months: frozenset[int] | None
    days: frozenset[int] | None
    hours: tuple[int, ...]
    minutes: tuple[int, ...]
    seconds: tuple[int, ...]


def _num(s: str, lo: int, hi: int) -> int:
    if not s.isdigit():
        raise CalendarError(f"invalid number '{s}'")
    n = int(s)
    if not lo <= n <= hi:
        raise CalendarError(f"value {n} out of range")
    return n


def _component(text: str, lo: int, hi: int) -> frozenset[int] | None:
    if text == "*":
        return None
    out: set[int] = set()
    for part in text.split(","):
        step = 0
        if "/" in part:
            part, st = part.split("/", 1)
            step = _num(st, 1, hi)
        if part == "*":
            a, b = lo, hi
        elif ".." in part:
            x, y = part.split("..", 1)
            a, b = _num(x, lo, hi), _num(y, lo, hi)
            if b < a:
                raise CalendarError("range end before start")
        else:
            a = _num(part, lo, hi)
            b = hi if step else a
        out.update(range(a, b + 1, step or 1))
    return frozenset(out)


def _weekdays(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.lower().split(","):
        if ".." in part:
            x, y = part.split("..", 1)
            if x[:3] not in _DAYS or y[:3] not in _DAYS:
                raise CalendarError(f"invalid weekday range '{part}'")
            a, b = _DAYS.index(x[:3]), _DAYS.index(y[:3])
            out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        else:
            if part[:3] not in _DAYS:
                raise CalendarError(f"invalid weekday '{part}'")
            out.add(_DAYS.index(part[:3]))
    return frozenset(out)


def parse_calendar_event(text: str) -> CalendarEvent:
    """Parse a calendar event or raise CalendarError."""
    words = text.split()
    utc = bool(words) and words[-1] == "UTC"
    if utc:
        words.pop()
    spec = " ".join(words)
    spec = _KEYWORDS.get(spec.lower(), spec)
    if not spec:
        raise CalendarError("empty calendar event")
    tokens = spec.split()
    weekdays = None
    if tokens and tokens[0][:1].isalpha():
        weekdays = _weekdays(tokens.pop(0))
    years = months = days = None
    hours: frozenset[int] | None = frozenset({0})
    minutes: frozenset[int] | None = frozenset({0})
    seconds: frozenset[int] | None = frozenset({0})
    if tokens and "-" in tokens[0] and ":" not in tokens[0]:
        parts = tokens.pop(0).split("-")
        if len(parts) == 3:
            years = _component(parts[0], 1970, 9999)
            parts = parts[1:]
        if len(parts) != 2:
            raise CalendarError("invalid date specification")
        months = _component(parts[0], 1, 12)
        days = _component(parts[1], 1, 31)
    if tokens and ":" in tokens[0]:
        parts = tokens.pop(0).split(":")
        if len(parts) not in (2, 3):
            raise CalendarError("invalid time specification")
        hours = _component(parts[0], 0, 23)
        minutes = _component(parts[1], 0, 59)
        seconds = _component(parts[2], 0, 59) if len(parts) == 3 else frozenset({0})
    elif tokens and not any(c.isalpha() for c in tokens[0]):
        # PVE: a time spec without ':' is minutes of every hour ("0", "*/5", "30/10")
        hours = None
        minutes = _component(tokens.pop(0), 0, 59)
    if tokens:
        raise CalendarError(f"unexpected '{tokens[0]}'")

    def expand(s: frozenset[int] | None, hi: int) -> tuple[int, ...]:
        return tuple(range(hi + 1)) if s is None else tuple(sorted(s))

    return CalendarEvent(
        weekdays, utc, years, months, days, expand(hours, 23), expand(minutes, 59), expand(seconds, 59)
    )


def next_run(event: CalendarEvent, after: float, tz: dt.tzinfo | None = None) -> int | None:
    """First epoch second strictly after `after` matching the event (local time), or None within 5 years."""
    if event.utc:
        tz = dt.UTC
    start = dt.datetime.fromtimestamp(after, tz).replace(microsecond=0)
    day = start.date()
    for _ in range(366 * 5):
        if (
            (event.years is None or day.year in event.years)
            and (event.months is None or day.month in event.months)
            and (event.days is None or day.day in event.days)
            and (event.weekdays is None or day.weekday() in event.weekdays)
        ):
            for h in event.hours:
                for m in event.minutes:
                    for s in event.seconds:
                        cand = dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=tz)
                        ts = cand.timestamp()
                        if ts > after:
                            return int(ts)
        day += dt.timedelta(days=1)
    return None
