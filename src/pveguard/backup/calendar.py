"""Proxmox VE calendar events (vzdump job schedules): parsing and next-run computation.

The accepted language is exactly the one of ``proxmox-time``'s ``CalendarEvent`` (used by PVE 8's
``PVE::CalendarEvent`` after a whitespace trim), including its PEG-style behaviour: an optional
part that does not parse is simply skipped, so ``25:00`` means minute 25 of every hour, exactly as
in PVE. Facts are in ``docs/backup.md``, PVE's calendar-events.adoc and proxmox-time's
``calendar_event.rs``:

``[WEEKDAYS] [[YEARS-]MONTHS-DAYS] [[HOURS:]MINUTES[:SECONDS]] [UTC]``

* weekdays ``mon``/``monday`` (any case), lists ``mon,wed``, ranges ``mon..fri`` (ranges may wrap:
  ``fri..mon``);
* every numeric field: ``*``, ``*/step``, values, ranges ``a..b``, repetitions ``a/step`` and
  ``a..b/step``, lists of those joined with ``,``;
* a time without ``:`` is minutes of every hour (``*/15``, ``0``, ``30/10``); no time at all
  means 00:00:00; seconds default to 0;
* keywords ``minutely hourly daily weekly monthly yearly annually quarterly semiannually
  semi-annually``;
* ``UTC`` at the end selects UTC, otherwise local time.

Next runs are the first whole seconds strictly after a given instant whose wall-clock fields match.
Local times that do not exist (spring-forward gap) are skipped and a repeated hour (fall-back)
matches only its first occurrence, as ``systemd-analyze calendar`` does.
"""

from __future__ import annotations

import calendar as _stdcal
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pveguard.errors import UsageError

__all__ = [
    "CalendarError",
    "CalendarEvent",
    "FieldSpec",
    "local_zone",
    "next_runs",
    "parse",
]

MAX_LENGTH = 128  # `schedule` in the PVE API schema: format pve-calendar-event, maxLength 128
VALID_EXAMPLES = "'daily', 'mon..fri 21:00', '*/15', 'sat *-1..7 02:00', '2:30 UTC'"

# (min allowed value, exclusive max) per field, as PVE checks them; `*/step` starts at `start`.
_YEAR = ("year", 0, 2200)
_MONTH = ("month", 1, 13)
_DAY = ("day", 1, 32)
_HOUR = ("hour", 0, 24)
_MINUTE = ("minute", 0, 60)
_SECOND = ("second", 0, 60)

_WEEKDAYS = {
    "mon": 0, "monday": 0,
    "tue": 1, "tuesday": 1,
    "wed": 2, "wednesday": 2,
    "thu": 3, "thursday": 3,
    "fri": 4, "friday": 4,
    "sat": 5, "saturday": 5,
    "sun": 6, "sunday": 6,
}  # fmt: skip

# How far a search may run past the first candidate year: the Gregorian calendar (leap years and
# weekdays) repeats every 400 years, so an event with no match in that span never matches.
_SEARCH_YEARS = 400


class CalendarError(UsageError, ValueError):
    """A calendar event that Proxmox VE would reject; the message says why, the hint shows valid forms."""


@dataclass(frozen=True)
class FieldSpec:
    """One element of a field list: a value, a range, or a repetition (``step`` 0 = value only)."""

    start: int
    end: int | None = None  # inclusive; None = open (single value when step is None)
    step: int | None = None

    def contains(self, value: int) -> bool:
        """True when ``value`` is selected by this element (PVE semantics)."""
        if self.step is None:
            if self.end is None:
                return value == self.start
            return self.start <= value <= self.end
        if value < self.start:
            return False
        if self.step == 0:
            return value == self.start
        if self.end is not None and value > self.end:
            return False
        return (value - self.start) % self.step == 0

    def __str__(self) -> str:
        text = str(self.start)
        if self.end is not None:
            text += f"..{self.end}"
        if self.step is not None:
            text += f"/{self.step}"
        return text


Field = tuple[FieldSpec, ...]  # empty tuple = any value


@dataclass(frozen=True)
class CalendarEvent:
    """A parsed calendar event. Empty field tuples / weekday sets mean "any"."""

    source: str
    utc: bool = False
    weekdays: frozenset[int] = frozenset()  # 0 = Monday .. 6 = Sunday
    years: Field = ()
    months: Field = ()
    days: Field = ()
    hours: Field = ()
    minutes: Field = ()
    seconds: Field = ()

    def normalized(self) -> str:
        """A systemd-like normalized form, for display (``Mon..Fri *-*-* 21:00:00``)."""
        names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        parts: list[str] = []
        if self.weekdays and len(self.weekdays) < 7:
            parts.append(",".join(names[d] for d in sorted(self.weekdays)))

        def show(field: Field, width: int) -> str:
            if not field:
                return "*"
            return ",".join(_pad(spec, width) for spec in field)

        parts.append(f"{show(self.years, 4)}-{show(self.months, 2)}-{show(self.days, 2)}")
        parts.append(f"{show(self.hours, 2)}:{show(self.minutes, 2)}:{show(self.seconds, 2)}")
        if self.utc:
            parts.append("UTC")
        return " ".join(parts)


def _pad(spec: FieldSpec, width: int) -> str:
    text = f"{spec.start:0{width}d}"
    if spec.end is not None:
        text += f"..{spec.end:0{width}d}"
    if spec.step is not None:
        text += f"/{spec.step}"
    return text


# --------------------------------------------------------------------------------------------
# Parser: a small PEG in the same shape as proxmox-time's nom grammar, so that the accepted
# language (including what an optional part silently skips) is the same.


class _NoMatch(Exception):
    """Internal: a sub-parser did not match at ``pos``; ``reason`` is for the user."""

    def __init__(self, pos: int, reason: str, credible: bool = False) -> None:
        super().__init__(reason)
        self.pos = pos
        self.reason = reason
        self.credible = credible


# What may follow a number of each field; a bad value followed by it is the likely culprit
# (in "2200-01-01" the year, not the minute, is too large).
_FOLLOWS = {"year": "-", "month": "-", "day": " \t", "hour": ":", "minute": ": \t", "second": " \t"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        # The failure that got furthest into the input explains a rejection best; a bad value
        # ("61 is too large") says more than a missing separator, so it is kept apart.
        self.best: _NoMatch | None = None
        self.best_value: _NoMatch | None = None

    def fail(self, pos: int, reason: str, value: bool = False, credible: bool = False) -> _NoMatch:
        err = _NoMatch(pos, reason, credible)
        if self.best is None or pos >= self.best.pos:
            self.best = err
        old = self.best_value
        if value and (old is None or pos > old.pos or (pos == old.pos and credible and not old.credible)):
            self.best_value = err
        return err

    def digits(self, pos: int, what: tuple[str, int, int]) -> tuple[int, int]:
        name, _low, limit = what
        end = pos
        while end < len(self.text) and "0" <= self.text[end] <= "9":
            end += 1
        if end == pos:
            raise self.fail(pos, f"expected a number for the {name}")
        value = int(self.text[pos:end])
        if value >= limit:
            follow = self.text[end : end + 1]
            credible = follow in _FOLLOWS[name] + ",./" if follow else name in ("day", "minute", "second")
            raise self.fail(
                pos, f"{self.text[pos:end]} is too large for the {name} (at most {limit - 1})",
                value=True, credible=credible,
            )  # fmt: skip
        return value, end

    def comp(self, pos: int, what: tuple[str, int, int]) -> tuple[FieldSpec, int]:
        value, pos = self.digits(pos, what)
        if self.text.startswith("..", pos):
            try:
                end, after = self.digits(pos + 2, what)
            except _NoMatch:
                end = None
            if end is not None:
                if value > end:
                    raise self.fail(pos, f"range {value}..{end} for the {what[0]} starts after it ends", value=True)
                if self.text.startswith("/", after):
                    step, after = self.digits(after + 1, what)
                    return FieldSpec(value, end, step), after
                return FieldSpec(value, end), after
        if self.text.startswith("/", pos):
            step, pos = self.digits(pos + 1, what)
            return FieldSpec(value, None, step), pos
        return FieldSpec(value), pos

    def comp_list(self, pos: int, what: tuple[str, int, int]) -> tuple[Field, int]:
        if self.text.startswith("*", pos):
            rest = pos + 1
            if self.text.startswith("/", rest):
                step, after = self.digits(rest + 1, what)
                if step > 0:
                    return (FieldSpec(what[1], None, step),), after
                self.fail(rest, f"a repetition step for the {what[0]} must be greater than 0", value=True)
            return (), rest
        first, pos = self.comp(pos, what)
        items = [first]
        while self.text.startswith(",", pos):
            try:
                item, after = self.comp(pos + 1, what)
            except _NoMatch:
                break
            items.append(item)
            pos = after
        return tuple(items), pos

    def spaces(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in " \t":
            pos += 1
        return pos

    def weekday(self, pos: int) -> tuple[int, int]:
        end = pos
        while end < len(self.text) and self.text[end].isascii() and self.text[end].isalpha():
            end += 1
        word = self.text[pos:end]
        if not word:
            raise self.fail(pos, "expected a weekday name (mon, tue, ... sun)")
        day = _WEEKDAYS.get(word.lower())
        if day is None:
            raise self.fail(pos, f"'{word}' is neither a keyword nor a weekday (mon, tue, ... sun)")
        return day, end

    def weekday_range(self, pos: int) -> tuple[frozenset[int], int]:
        first, pos = self.weekday(pos)
        if self.text.startswith("..", pos):
            try:
                last, after = self.weekday(pos + 2)
            except _NoMatch:
                return frozenset({first}), pos
            # PVE lets a range wrap around the week end: fri..mon = fri,sat,sun,mon.
            span = (last - first) % 7
            return frozenset((first + i) % 7 for i in range(span + 1)), after
        return frozenset({first}), pos

    def date_spec(self, pos: int) -> tuple[tuple[Field, Field, Field], int]:
        try:
            years, p = self.comp_list(pos, _YEAR)
            p = self.expect(p, "-")
            months, p = self.comp_list(p, _MONTH)
            p = self.expect(p, "-")
            days, p = self.comp_list(p, _DAY)
            return (years, months, days), p
        except _NoMatch:
            pass
        months, p = self.comp_list(pos, _MONTH)
        p = self.expect(p, "-")
        days, p = self.comp_list(p, _DAY)
        return ((), months, days), p

    def time_spec(self, pos: int) -> tuple[tuple[Field, Field, Field], int]:
        hours: Field = ()
        try:
            parsed, p = self.comp_list(pos, _HOUR)
            pos = self.expect(p, ":")
            hours = parsed
        except _NoMatch:
            pass
        minutes, pos = self.comp_list(pos, _MINUTE)
        seconds: Field = (FieldSpec(0),)
        if self.text.startswith(":", pos):
            try:
                seconds, pos = self.comp_list(pos + 1, _SECOND)
            except _NoMatch:
                seconds = (FieldSpec(0),)
        return (hours, minutes, seconds), pos

    def expect(self, pos: int, token: str) -> int:
        if self.text.startswith(token, pos):
            return pos + len(token)
        raise self.fail(pos, f"expected '{token}'")


_ZERO = (FieldSpec(0),)
_KEYWORDS: dict[str, dict[str, object]] = {
    "minutely": {"seconds": _ZERO},
    "hourly": {"minutes": _ZERO, "seconds": _ZERO},
    "daily": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO},
    "weekly": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO, "weekdays": frozenset({0})},
    "monthly": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO, "days": (FieldSpec(1),)},
    "yearly": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO, "days": (FieldSpec(1),),
               "months": (FieldSpec(1),)},
    "quarterly": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO, "days": (FieldSpec(1),),
                  "months": tuple(FieldSpec(m) for m in (1, 4, 7, 10))},
    "semiannually": {"hours": _ZERO, "minutes": _ZERO, "seconds": _ZERO, "days": (FieldSpec(1),),
                     "months": (FieldSpec(1), FieldSpec(7))},
}  # fmt: skip
_KEYWORDS["annually"] = _KEYWORDS["yearly"]
_KEYWORDS["semi-annually"] = _KEYWORDS["semiannually"]


def _reject(expr: str, reason: str) -> CalendarError:
    return CalendarError(
        f"invalid calendar event {expr!r}: {reason}",
        hint=f"valid forms look like {VALID_EXAMPLES}"
        " (the systemd.time(7) syntax without '~' and without time zones other than UTC)",
    )


def parse(expr: str) -> CalendarEvent:
    """Parse a PVE calendar event; raise :class:`CalendarError` for anything PVE rejects."""
    if len(expr) > MAX_LENGTH:
        # PVE's own limit (the schema's maxLength for every schedule); it also keeps numbers far
        # below Python's int() digit limit.
        raise _reject(expr[:40] + "...", f"it is {len(expr)} characters long; Proxmox VE takes at most {MAX_LENGTH}")
    # PVE::CalendarEvent trims surrounding whitespace before handing the text to proxmox-time.
    text = expr.strip(" \t\r\n\f\v")
    if not text:
        raise _reject(expr, "the event is empty")
    utc = False
    if text.endswith("UTC"):
        utc = True
        text = text[:-3].rstrip(" ")
    p = _Parser(text)

    if text[:1].isascii() and text[:1].isalpha():
        keyword = _KEYWORDS.get(text)
        if keyword is not None:
            return CalendarEvent(source=expr, utc=utc, **keyword)  # type: ignore[arg-type]

    weekdays: frozenset[int] = frozenset()
    years: Field = ()
    months: Field = ()
    days: Field = ()
    hours: Field = _ZERO
    minutes: Field = _ZERO
    seconds: Field = _ZERO
    have_any = False
    pos = 0
    try:
        if text[:1].isascii() and text[:1].isalpha():
            found, pos = p.weekday_range(0)
            weekdays = found
            while text.startswith(",", pos):
                try:
                    more, after = p.weekday_range(pos + 1)
                except _NoMatch:
                    break
                weekdays |= more
                pos = after
            have_any = True
            pos = p.spaces(pos)
    except _NoMatch as err:
        raise _reject(expr, _describe(p, err.pos, err.reason)) from None

    try:
        (years, months, days), after = p.date_spec(pos)
        pos = p.spaces(after)
        have_any = True
    except _NoMatch:
        pass

    try:
        (hours, minutes, seconds), pos = p.time_spec(pos)
        have_any = True
    except _NoMatch:
        pass

    if not have_any:
        raise _reject(expr, _describe(p, 0, "expected a keyword, weekday, date or time"))
    if pos != len(text):
        raise _reject(expr, _describe(p, pos, f"cannot make sense of {text[pos:]!r}"))
    if len(weekdays) == 7:
        weekdays = frozenset()
    return CalendarEvent(
        source=expr, utc=utc, weekdays=weekdays, years=years, months=months, days=days,
        hours=hours, minutes=minutes, seconds=seconds,
    )  # fmt: skip


def _describe(p: _Parser, pos: int, fallback: str) -> str:
    """Explain a rejection: PVE's unsupported extras first, else the furthest parse failure."""
    rest = p.text[pos:]
    if p.text.lower().endswith("utc"):
        return "the time zone suffix must be written 'UTC', in capitals"
    if "~" in p.text:
        return "'~' (days counted from the end of the month) is not supported by Proxmox VE"
    if re.search(r"\d\.\d", p.text) and not re.search(r"\d\.\.\d", p.text):
        return "seconds must be whole numbers (no fractions)"
    stripped = rest.strip()
    last = p.text.split()[-1] if len(p.text.split()) > 1 else ""
    if re.fullmatch(r"[A-Za-z_]+/[A-Za-z_+-]+(/[A-Za-z_+-]+)*|[A-Z]{2,5}", last) and last.lower() not in _WEEKDAYS:
        stripped = last
    elif not (pos > 0 and re.fullmatch(r"[A-Za-z_]+(/[A-Za-z_+-]+)*", stripped)):
        stripped = ""
    if stripped:
        return f"time zone {stripped!r} is not supported; only a trailing 'UTC' is (else local time)"
    best = p.best_value
    if best is None or best.pos < pos:
        best = p.best if p.best is not None and p.best.pos > pos else None
    if best is not None:
        where = f" at {p.text[best.pos :]!r}" if best.pos < len(p.text) else " at the end"
        return f"{best.reason}{where}"
    return fallback


# --------------------------------------------------------------------------------------------
# Next-run computation on wall-clock fields.


def _values(field: Field, low: int, high: int) -> list[int]:
    """Sorted values in [low, high] selected by ``field`` (empty field = all)."""
    if not field:
        return list(range(low, high + 1))
    return [v for v in range(low, high + 1) if any(spec.contains(v) for spec in field)]


def _year_candidates(field: Field, first: int) -> Iterator[int]:
    year = first
    while year <= 9999:
        if not field or any(spec.contains(year) for spec in field):
            yield year
            year += 1
            continue
        nxt = _next_year(field, year)
        if nxt is None:
            return
        year = nxt


def _next_year(field: Field, year: int) -> int | None:
    best: int | None = None
    for spec in field:
        cand: int | None
        if year < spec.start:
            cand = spec.start
        elif spec.step is None:
            cand = year + 1 if spec.end is not None and year + 1 <= spec.end else None
        elif spec.step == 0:
            cand = None
        else:
            cand = spec.start + ((year - spec.start) // spec.step + 1) * spec.step
            if spec.end is not None and cand > spec.end:
                cand = None
        if cand is not None and (best is None or cand < best):
            best = cand
    return best


def _wall_times(event: CalendarEvent, start: datetime) -> Iterator[datetime]:
    """Matching naive wall-clock times >= ``start`` (naive), in increasing order."""
    months = _values(event.months, 1, 12)
    hours = _values(event.hours, 0, 23)
    minutes = _values(event.minutes, 0, 59)
    seconds = _values(event.seconds, 0, 59)
    all_days = _values(event.days, 1, 31)
    if not (months and hours and minutes and seconds and all_days):
        return
    weekdays = event.weekdays
    first_year: int | None = None
    for year in _year_candidates(event.years, start.year):
        if first_year is None:
            first_year = year
        elif year > first_year + _SEARCH_YEARS:
            return
        same_y = year == start.year
        for month in months:
            if same_y and month < start.month:
                continue
            same_m = same_y and month == start.month
            last_day = _stdcal.monthrange(year, month)[1]
            for day in all_days:
                if day > last_day:
                    break
                if same_m and day < start.day:
                    continue
                if weekdays and date(year, month, day).weekday() not in weekdays:
                    continue
                same_d = same_m and day == start.day
                for hour in hours:
                    if same_d and hour < start.hour:
                        continue
                    same_h = same_d and hour == start.hour
                    for minute in minutes:
                        if same_h and minute < start.minute:
                            continue
                        same_min = same_h and minute == start.minute
                        for second in seconds:
                            if same_min and second < start.second:
                                continue
                            yield datetime(year, month, day, hour, minute, second)


def _to_instant(wall: datetime, zone: tzinfo) -> datetime | None:
    """The instant of a local wall-clock time; None when it falls into a DST gap."""
    aware = wall.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone)
    if back.replace(tzinfo=None, fold=0) != wall:
        return None
    return aware.astimezone(UTC)


def local_zone() -> tzinfo:
    """This machine's local time zone (``$TZ``, else ``/etc/localtime``, else UTC)."""
    name = os.environ.get("TZ")
    if name:
        name = name.removeprefix(":")
        try:
            if name.startswith("/"):
                with open(name, "rb") as fh:
                    return ZoneInfo.from_file(fh, key=name)
            return ZoneInfo(name)
        except (OSError, ValueError, ZoneInfoNotFoundError):
            return UTC
    localtime = Path("/etc/localtime")
    try:
        with localtime.open("rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return UTC


def next_runs(
    event: CalendarEvent,
    after: datetime,
    count: int = 1,
    zone: tzinfo | None = None,
) -> list[datetime]:
    """The next ``count`` run times strictly after ``after``, as aware UTC datetimes.

    ``after`` must be timezone-aware. Times are whole seconds. Local time (``zone``, default the
    machine's) applies unless the event ends in ``UTC``. Fewer than ``count`` results mean the
    event has no further matches (for example ``2021-02-29`` or a past year).
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_runs() needs a timezone-aware 'after' datetime")
    if count < 0:
        raise ValueError("count must not be negative")
    if count == 0:
        return []
    tz: tzinfo = UTC if event.utc else (zone if zone is not None else local_zone())
    # First whole second strictly after `after` (PVE: compute_next_event(last) starts at last+1).
    try:
        base = after.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        start_wall = base.astimezone(tz).replace(tzinfo=None)
    except OverflowError:
        return []  # at the very end (or before the start) of what datetime can represent
    convert: Callable[[datetime], datetime | None]
    if tz is UTC:

        def convert(w: datetime) -> datetime | None:
            return w.replace(tzinfo=UTC)
    else:

        def convert(w: datetime) -> datetime | None:
            return _to_instant(w, tz)

    out: list[datetime] = []
    for wall in _wall_times(event, start_wall):
        try:
            instant = convert(wall)
        except OverflowError:
            break
        if instant is None or instant < base:
            continue
        out.append(instant)
        if len(out) >= count:
            break
    return out


@dataclass(frozen=True)
class DueCheck:
    """Whether a job runs now, per pvescheduler's rules."""

    state: str  # "due", "not-due", "missed" (skipped, as PVE skips runs missed while down), "never"
    scheduled: datetime | None  # the run time that is due / missed / next


def check_due(
    event: CalendarEvent,
    last_run: datetime | None,
    now: datetime,
    repeat_missed: bool = False,
    zone: tzinfo | None = None,
) -> DueCheck:
    """pvescheduler semantics for a job last run at ``last_run``, checked at ``now``.

    A job without a last run starts counting at ``now`` (PVE writes its state then), so it is
    not due. Otherwise the next run after ``last_run`` is due once ``now`` reaches it. When more
    than one run was missed (the host was down), PVE skips them unless ``repeat-missed`` is set,
    in which case the job runs once; the caller records ``now`` as the new last run either way.
    """
    if last_run is None:
        upcoming = next_runs(event, now, 1, zone)
        return DueCheck("not-due" if upcoming else "never", upcoming[0] if upcoming else None)
    runs = next_runs(event, last_run, 2, zone)
    if not runs:
        return DueCheck("never", None)
    if runs[0] > now:
        return DueCheck("not-due", runs[0])
    if len(runs) > 1 and runs[1] <= now and not repeat_missed:
        return DueCheck("missed", runs[0])
    return DueCheck("due", runs[0])
