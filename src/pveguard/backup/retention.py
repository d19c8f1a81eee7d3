"""Which backups to keep: the prune algorithm of Proxmox VE and Proxmox Backup Server, exactly.

``PVE::Storage::prune_mark_backup_group`` and PBS' ``compute_prune_info``
(``pbs-datastore/src/prune.rs``) agree:

1. archives of one group, newest first (ties keep their input order);
2. protected archives are marked ``protected`` up front: never removed, never counted;
3. ``keep-all``, or no ``keep-*`` above 0, keeps everything;
4. six passes in fixed order - last, hourly, daily, weekly, monthly, yearly - each mapping an
   archive to a period in **local time** (last: its timestamp; weekly: ISO week, Monday first).
   A pass ignores archives that already carry a mark and periods that already hold a ``keep``;
   walking newest to oldest, the first archive of a new period is kept, further archives of a
   period this pass selected are removed, and the pass stops before an N+1-th new period;
5. whatever is still unmarked is removed.

A mark, once set, is final: that is why ``keep-daily=1,keep-weekly=1,keep-monthly=1`` can keep
an older archive of a month than the newest one (see the worked examples in the tests).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import StrEnum
from itertools import compress, islice, repeat
from operator import add, floordiv, ge, ne, neg

from pveguard.backup.calendar import local_zone
from pveguard.errors import UsageError

__all__ = [
    "RULES",
    "KeepPolicy",
    "Mark",
    "RetentionError",
    "explain_archives",
    "mark_archives",
    "mark_datetimes",
]


class RetentionError(UsageError, ValueError):
    """A retention policy that Proxmox VE would reject; the message says how to write it."""


class Mark(StrEnum):
    """The verdict for one archive."""

    KEEP = "keep"
    REMOVE = "remove"
    PROTECTED = "protected"


_OPTION = re.compile(r"^keep-(all|last|hourly|daily|weekly|monthly|yearly)$")


@dataclass(frozen=True)
class KeepPolicy:
    """``keep-*`` counts as in PVE's ``prune-backups`` and PBS prune jobs (0 = rule off)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    keep_all: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "keep_all" and (not isinstance(value, int) or value < 0):
                raise RetentionError(f"keep-{f.name} must be a whole number >= 0, got {value!r}")

    @property
    def keeps_everything(self) -> bool:
        """True when nothing is ever removed (keep-all, or no rule above 0)."""
        return self.keep_all or not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly))

    @classmethod
    def parse(cls, text: str) -> KeepPolicy:
        """Read PVE's ``prune-backups`` form, e.g. ``keep-last=3,keep-daily=13``."""
        values: dict[str, int | bool] = {}
        for raw in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = raw.partition("=")
            match = _OPTION.match(key.strip())
            if not sep or match is None:
                raise RetentionError(
                    f"cannot read {_cut(raw)} in prune options {_cut(text)}; write keep-<rule>=<count> with rule "
                    "last, hourly, daily, weekly, monthly, yearly or all, e.g. 'keep-last=3,keep-daily=7'"
                )
            name = match.group(1)
            digits = value.strip()
            # ASCII only: str.isdigit() also accepts '²', which int() refuses; 18 digits keep int()
            # far below Python's digit limit and above any count of backups.
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
                raise RetentionError(f"{key.strip()} needs a whole number >= 0, got {_cut(value)}")
            if name in values or (name == "all" and "keep_all" in values):
                raise RetentionError(f"{key.strip()} is given twice in {_cut(text)}")
            if name == "all":
                values["keep_all"] = int(value) != 0
            else:
                values[name] = int(value)
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = ["keep-all=1"] if self.keep_all else []
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            count = getattr(self, name)
            if count:
                parts.append(f"keep-{name}={count}")
        return ",".join(parts)

    @classmethod
    def for_duration(cls, span: timedelta) -> KeepPolicy:
        """The PVE rule for "keep N days/hours": ``keep-daily=N`` (or ``keep-hourly`` under a day).

        As in PVE this counts days that *have* backups, so a paused schedule does not empty the
        store.
        """
        seconds = int(span.total_seconds())
        if seconds <= 0:
            raise RetentionError(f"retention must be positive, got {span}", hint="e.g. 7d")
        if seconds >= 86400:
            return cls(daily=-(-seconds // 86400))
        return cls(hourly=-(-seconds // 3600))

    def total(self) -> int:
        """Sum of the counts: PVE's "max backup limit" when pruning is off."""
        return self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly


def _cut(text: str) -> str:
    """repr() of user input, short enough for one message line."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:80] + "..."


RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")

# Internal marks are small ints: the inner loops run over a million archives in the benchmark.
# _KEEP + r means "kept by rule r" (index into RULES).
_NONE, _REMOVE, _PROTECTED, _KEEP = 0, 1, 2, 3
_TO_MARK = (Mark.REMOVE, Mark.REMOVE, Mark.PROTECTED) + (Mark.KEEP,) * len(RULES)
_TO_RULE: tuple[str | None, ...] = (None, None, None, *RULES)


class _Offsets(dict[int, int]):
    """Hour (Unix seconds // 3600) -> the zone's UTC offset there; hours in which it changes go to ``mixed``.

    Offsets change at most every few months, never twice within an hour, so one lookup per hour is
    enough when both ends of it agree; an hour whose ends differ is computed per item.
    """

    def __init__(self, zone: tzinfo) -> None:
        super().__init__()
        self.zone = zone
        self.mixed: set[int] = set()

    def at(self, t: int) -> int:
        delta = datetime.fromtimestamp(t, self.zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    def __missing__(self, bucket: int) -> int:
        first = self.at(bucket * 3600)
        if first != self.at(bucket * 3600 + 3599):
            self.mixed.add(bucket)
        self[bucket] = first
        return first


_BLOCK = 8192  # positions whose period keys are computed at once
_FREE_TO_REMOVE = bytes([_REMOVE, *range(1, 256)])  # bytes.translate: _NONE -> _REMOVE, the rest as is
_FLAG_TO_PROTECTED = bytes([_NONE] + [_PROTECTED] * 255)  # a true flag byte -> _PROTECTED


def _local_seconds(times: Sequence[int], zone: tzinfo, offsets: _Offsets | None = None) -> Sequence[int]:
    """Epoch seconds shifted by the zone's UTC offset at that instant (wall-clock seconds)."""
    if zone is UTC:
        return array("q", times)
    offsets = _Offsets(zone) if offsets is None else offsets
    out = array("q", map(add, times, map(offsets.__getitem__, map(floordiv, times, repeat(3600)))))
    if offsets.mixed:  # an hour with a change inside (Lord Howe's, at half past): exact per item
        mixed = offsets.mixed
        for i, bucket in enumerate(map(floordiv, times, repeat(3600))):
            if bucket in mixed:
                out[i] = times[i] + offsets.at(times[i])
    return out


class _Months(dict[int, int]):
    """Day number (0 = 1970-01-01) -> year * 12 + month - 1."""

    def __missing__(self, day: int) -> int:
        d = date.fromordinal(day + 719163)
        key = self[day] = d.year * 12 + d.month - 1
        return key


def mark_archives(
    times: Sequence[int],
    policy: KeepPolicy,
    protected: Sequence[bool] | None = None,
    zone: tzinfo | None = None,
) -> list[Mark]:
    """Marks for one backup group, in input order.

    ``times`` are the archives' timestamps (Unix seconds; PVE uses the time in the archive name),
    ``protected`` flags archives that must never be removed, ``zone`` is the local time zone
    (default: this machine's) in which hours, days, weeks, months and years are counted.
    """
    return [_TO_MARK[m] for m in _marks(times, policy, protected, zone)]


def explain_archives(
    times: Sequence[int],
    policy: KeepPolicy,
    protected: Sequence[bool] | None = None,
    zone: tzinfo | None = None,
) -> list[tuple[Mark, str | None]]:
    """Like :func:`mark_archives`, plus the rule (``"daily"``...) that kept each kept archive."""
    return [(_TO_MARK[m], _TO_RULE[m]) for m in _marks(times, policy, protected, zone)]


def _marks(
    times: Sequence[int],
    policy: KeepPolicy,
    protected: Sequence[bool] | None,
    zone: tzinfo | None,
    offsets: _Offsets | None = None,
) -> bytearray:
    """Per archive (input order) its internal mark, one byte each. ``offsets``: a cache of ``zone``'s
    offsets to share between calls (prune-sim's groups)."""
    n = len(times)
    if protected is not None and len(protected) != n:
        raise ValueError("times and protected must have the same length")
    if protected is None:
        marks = bytearray(n)
    elif isinstance(protected, (bytes, bytearray)):  # prune-sim's flags: one C pass
        marks = bytearray(protected.translate(_FLAG_TO_PROTECTED))
    else:
        marks = bytearray(map(_PROTECTED.__mul__, map(bool, protected)))
    if policy.keeps_everything:
        # PVE keeps everything here; the rule shown is "all" only in spirit, so none is named.
        return marks.replace(bytes([_NONE]), bytes([_KEEP]))

    tz = zone if zone is not None else local_zone()
    # Work in "position" space: position j is the j-th newest archive. Ties keep input order.
    # Large per-position columns are arrays of machine ints: 8 bytes an archive, not 36.
    windows = _windows(times)
    if windows is None:
        order = sorted(range(n), key=times.__getitem__, reverse=True)
        stamps = array("q", map(times.__getitem__, order))
        state = bytearray(map(marks.__getitem__, order))
    else:
        # Ascending but for a few windows (the usual listing; the hour a DST change skips): the
        # ascending order is a copy with each window's elements put in order, reversed in C.
        stamps = times[:] if isinstance(times, array) and times.typecode == "q" else array("q", times)
        state = marks[:]
        for a, members in windows:
            stamps[a : a + len(members)] = array("q", map(times.__getitem__, members))
            state[a : a + len(members)] = bytes(map(marks.__getitem__, members))
        stamps.reverse()
        state.reverse()
    _passes(stamps, state, policy, tz, offsets if offsets is not None and offsets.zone is tz else _Offsets(tz))
    if windows is None:
        deque(map(marks.__setitem__, order, state), maxlen=0)  # marks[order[j]] = state[j], in C
        return marks
    state.reverse()  # ascending order again: input order but inside the windows
    for a, members in windows:
        deque(map(state.__setitem__, members, state[a : a + len(members)]), maxlen=0)
    return state


_FEW_WINDOWS = 64  # a full sort once more than 1 in this many neighbours are out of order


def _windows(times: Sequence[int]) -> list[tuple[int, list[int]]] | None:
    """How to put ``times`` in ascending (time, -index) order -- the newest-first order with ties in
    input order, reversed -- when it nearly is: per window of positions that are out of order, its
    start and its members (input indices) in order. [] when already ascending, None when a full
    sort is the better way."""
    n = len(times)
    # i where times[i - 1] >= times[i]: a tie is out of order too (the later index goes first).
    breaks = list(compress(range(1, n), map(ge, times, islice(times, 1, None))))
    if not breaks:
        return []
    if len(breaks) > n // _FEW_WINDOWS + 8:
        return None
    spans: list[list[int]] = []
    for k, i in enumerate(breaks):
        # The runs around break i are ascending: [previous break, i) and [i, next break).
        run_start = breaks[k - 1] if k else 0
        run_end = breaks[k + 1] if k + 1 < len(breaks) else n
        a = bisect_left(times, times[i], run_start, i)  # first of the left run that i must precede
        b = bisect_right(times, times[i - 1], i, run_end)  # first of the right run after i - 1
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    windows = []
    for a, b in spans:
        members = sorted(range(b - 1, a - 1, -1), key=times.__getitem__)  # ties: later index first
        # Outside the windows every neighbour pair is in order; check each window's two edges.
        if (a > 0 and times[a - 1] >= times[members[0]]) or (b < n and times[members[-1]] >= times[b]):
            return None
        windows.append((a, members))
    return windows


_DENSE: float = 16  # archives per hour (block average) from which a pass walks hour by hour (0: never)


def _passes(stamps: array[int], state: bytearray, policy: KeepPolicy, tz: tzinfo, offsets: _Offsets) -> None:
    """The six passes over ``stamps`` (newest first), marking ``state`` (same positions)."""
    n = len(stamps)
    months = _Months()
    local_blocks: dict[int, Sequence[int]] = {}

    def local(t: int) -> int:
        bucket = t // 3600
        return t + (offsets.at(t) if bucket in offsets.mixed else offsets[bucket])

    def key_of(rule: int, t: int) -> int:
        """The period of ``rule`` (index into RULES) of local wall-clock seconds ``t``."""
        if rule == 1:
            return t // 3600
        if rule == 2:
            return t // 86400
        if rule == 3:
            # 1970-01-01 was a Thursday: +3 makes weeks start on Monday, as ISO weeks (%G/%V) do.
            return (t // 86400 + 3) // 7
        return months[t // 86400] // (12 if rule == 5 else 1)

    def block_runs(rule: int, b: int) -> list[tuple[int, int, int]]:
        """(first, end, period) of runs of positions of block ``b`` that share a period of ``rule``.

        Blocks, because most passes stop early: only what a pass reaches is computed."""
        lo, hi = b * _BLOCK, min(n, (b + 1) * _BLOCK)
        if rule and _DENSE and (stamps[lo] // 3600 - stamps[hi - 1] // 3600 + 1) * _DENSE <= hi - lo:
            return hour_runs(rule, lo, hi)
        period: Sequence[int]
        if rule == 0:
            period = stamps[lo:hi]
        else:
            local_seconds = local_blocks.get(b)
            if local_seconds is None:
                local_seconds = local_blocks[b] = _local_seconds(stamps[lo:hi], tz, offsets)
            days = map(floordiv, local_seconds, repeat(86400))
            if rule == 1:
                period = list(map(floordiv, local_seconds, repeat(3600)))
            elif rule == 2:
                period = list(days)
            elif rule == 3:
                period = list(map(floordiv, map(add, days, repeat(3)), repeat(7)))
            else:
                month = map(months.__getitem__, days)
                period = list(month) if rule == 4 else list(map(floordiv, month, repeat(12)))
        # Runs of equal keys (a period's archives are adjacent in position space), found in C.
        bounds = [0, *compress(range(1, len(period)), map(ne, period, islice(period, 1, None))), len(period)]
        return [(lo + bounds[r], lo + bounds[r + 1], period[bounds[r]]) for r in range(len(bounds) - 1)]

    def hour_runs(rule: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """block_runs for a dense block: one Unix hour after the other (found by bisection), whose
        archives share the zone's offset unless it changes inside the hour; within an hour local
        time grows with the Unix time, so at most one period change, also found by bisection."""
        runs = []
        j = lo
        while j < hi:
            t = stamps[j]
            bucket = t // 3600
            end = bisect_right(stamps, -bucket * 3600, j, hi, key=neg)  # first of an earlier hour
            if bucket in offsets.mixed:
                runs += [(m, m + 1, key_of(rule, local(stamps[m]))) for m in range(j, end)]
                j = end
                continue
            off = offsets[bucket]
            first, last = key_of(rule, t + off), key_of(rule, stamps[end - 1] + off)
            if first == last:
                runs.append((j, end, first))
            else:
                split = bisect_right(stamps, -first, j, end, key=lambda s: -key_of(rule, s + off))
                runs += [(j, split, first), (split, end, last)]
            j = end
        return runs

    def period_of(rule: int, j: int) -> int:
        """The period of ``rule`` for position j."""
        return stamps[j] if rule == 0 else key_of(rule, local(stamps[j]))

    counts = (policy.last, policy.hourly, policy.daily, policy.weekly, policy.monthly, policy.yearly)
    kept: list[int] = []
    for rule, count in enumerate(counts):
        if count <= 0:
            continue
        keep_mark = _KEEP + rule
        covered = {period_of(rule, j) for j in kept}
        chosen: set[int] = set()
        done = False
        for b in range(0, (n + _BLOCK - 1) // _BLOCK):
            # Per run, what the per-position rule does: positions already marked are skipped; the
            # first free one keeps the run's period (unless covered, or the count is reached: then
            # the pass ends there); every other free one of an already chosen period is removed.
            for a, z, key in block_runs(rule, b):
                if key in covered:
                    continue
                if key not in chosen:
                    a = state.find(0, a, z)
                    if a < 0:
                        continue
                    if len(chosen) >= count:
                        done = True
                        break
                    chosen.add(key)
                    state[a] = keep_mark
                    kept.append(a)
                    a += 1
                if a < z:
                    state[a:z] = state[a:z].translate(_FREE_TO_REMOVE)
            if done:
                break


def mark_datetimes(
    times: Sequence[datetime],
    policy: KeepPolicy,
    protected: Sequence[bool] | None = None,
    zone: tzinfo | None = None,
) -> list[Mark]:
    """:func:`mark_archives` for aware datetimes (naive ones are read in ``zone``)."""
    tz = zone if zone is not None else local_zone()
    stamps = [int((t if t.tzinfo else t.replace(tzinfo=tz)).timestamp()) for t in times]
    return mark_archives(stamps, policy, protected, tz)
