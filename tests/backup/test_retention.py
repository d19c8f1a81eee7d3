"""The prune algorithm: upstream worked examples, an independent reference, and properties."""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from unittest.mock import patch
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pveguard.backup import retention
from pveguard.backup.retention import (
    RULES,
    KeepPolicy,
    Mark,
    RetentionError,
    explain_archives,
    mark_archives,
    mark_datetimes,
)


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def _kept(stamps: list[str], policy: KeepPolicy, protected: list[bool] | None = None) -> list[str]:
    marks = mark_archives([_ts(s) for s in stamps], policy, protected, zone=UTC)
    return sorted(s for s, m in zip(stamps, marks, strict=True) if m is Mark.KEEP)


def _removed(stamps: list[str], policy: KeepPolicy, protected: list[bool] | None = None) -> list[str]:
    marks = mark_archives([_ts(s) for s in stamps], policy, protected, zone=UTC)
    return sorted(s for s, m in zip(stamps, marks, strict=True) if m is Mark.REMOVE)


# PBS tests/prune.rs test_prune_simple (TZ=UTC) (the Proxmox Backup Server source).
SIMPLE = ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15", "2019-12-04T12:59:15"]
SIMPLE_CASES = [
    (KeepPolicy(last=4), []),
    (KeepPolicy(last=3), ["2019-12-02T11:59:15"]),
    (KeepPolicy(last=2), ["2019-12-02T11:59:15", "2019-12-03T11:59:15"]),
    (KeepPolicy(last=1), ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    # PBS removes everything for keep-last=0 alone; PVE (whose semantics we follow) keeps all
    # when no keep-* is above 0.
    (KeepPolicy(last=0), []),
    (KeepPolicy(last=2, daily=2), []),
    (KeepPolicy(daily=3), ["2019-12-04T11:59:15"]),
    (KeepPolicy(daily=2), ["2019-12-02T11:59:15", "2019-12-04T11:59:15"]),
    (KeepPolicy(weekly=5), ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    (KeepPolicy(daily=1, weekly=5), ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    (KeepPolicy(monthly=6), ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    (KeepPolicy(yearly=7), ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    (
        KeepPolicy(weekly=5, monthly=6, yearly=7),
        ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15"],
    ),
]


@pytest.mark.parametrize(("policy", "removed"), SIMPLE_CASES)
def test_pbs_prune_simple(policy: KeepPolicy, removed: list[str]) -> None:
    assert _removed(SIMPLE, policy) == removed


SIMPLE2 = [
    "2018-11-15T11:59:15", "2019-11-15T11:59:15", "2019-11-21T11:59:15", "2019-11-22T11:59:15",
    "2019-11-29T11:59:15", "2019-12-01T11:59:15", "2019-12-02T11:59:15", "2019-12-03T11:59:15",
    "2019-12-04T11:59:15",
]  # fmt: skip
SIMPLE2_CASES = [
    (KeepPolicy(daily=1), ["2019-12-04T11:59:15"]),
    (KeepPolicy(last=1, daily=1), ["2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
    (KeepPolicy(daily=1, weekly=1), ["2019-12-01T11:59:15", "2019-12-04T11:59:15"]),
    # 11-29 carries "remove" from the weekly pass, so November's monthly slot goes to 11-22.
    (
        KeepPolicy(daily=1, weekly=1, monthly=1),
        ["2019-11-22T11:59:15", "2019-12-01T11:59:15", "2019-12-04T11:59:15"],
    ),
    (KeepPolicy(monthly=1, yearly=1), ["2018-11-15T11:59:15", "2019-12-04T11:59:15"]),
]


@pytest.mark.parametrize(("policy", "kept"), SIMPLE2_CASES)
def test_pbs_prune_simple2(policy: KeepPolicy, kept: list[str]) -> None:
    assert _kept(SIMPLE2, policy) == kept


def test_pbs_prune_simple2_marks_in_detail() -> None:
    marks = explain_archives([_ts(s) for s in SIMPLE2], KeepPolicy(daily=1, weekly=1), zone=UTC)
    by_stamp = dict(zip(SIMPLE2, marks, strict=True))
    assert by_stamp["2019-12-04T11:59:15"] == (Mark.KEEP, "daily")
    assert by_stamp["2019-12-01T11:59:15"] == (Mark.KEEP, "weekly")
    assert by_stamp["2019-11-29T11:59:15"] == (Mark.REMOVE, None)


HOURLY = [
    "2019-11-15T09:39:15", "2019-11-15T10:49:15", "2019-11-15T10:59:15",
    "2019-11-15T11:39:15", "2019-11-15T11:49:15", "2019-11-15T11:59:15",
]  # fmt: skip


def test_pbs_prune_hourly() -> None:
    assert _removed(HOURLY, KeepPolicy(hourly=3)) == [
        "2019-11-15T10:49:15", "2019-11-15T11:39:15", "2019-11-15T11:49:15",
    ]  # fmt: skip
    assert _kept(HOURLY, KeepPolicy(hourly=2)) == ["2019-11-15T10:59:15", "2019-11-15T11:59:15"]


PROTECTED = ["2019-11-15T09:39:15", "2019-11-15T10:39:15", "2019-11-15T10:49:15", "2019-11-15T10:59:15"]
PROTECTED_FLAGS = [True, False, False, True]


@pytest.mark.parametrize("policy", [KeepPolicy(last=1), KeepPolicy(hourly=1)])
def test_pbs_prune_protected(policy: KeepPolicy) -> None:
    # 10:49 is kept: the protected 10:59 does not fill the slot for hour 10.
    assert _removed(PROTECTED, policy, PROTECTED_FLAGS) == ["2019-11-15T10:39:15"]
    marks = mark_archives([_ts(s) for s in PROTECTED], policy, PROTECTED_FLAGS, zone=UTC)
    assert marks[0] is Mark.PROTECTED and marks[3] is Mark.PROTECTED


def test_iso_week_edge() -> None:
    # 2020-12-28, 12-31 and 2021-01-03 are all ISO week 2020-W53.
    stamps = ["2020-12-28T12:00:00", "2020-12-31T12:00:00", "2021-01-03T12:00:00", "2021-01-04T12:00:00"]
    assert _kept(stamps, KeepPolicy(weekly=2)) == ["2021-01-03T12:00:00", "2021-01-04T12:00:00"]


def test_local_time_decides_the_day() -> None:
    # 23:30 UTC on Jan 1 is 00:30 on Jan 2 in Berlin: two archives on one Berlin day.
    berlin = ZoneInfo("Europe/Berlin")
    times = [_ts("2024-01-01T23:30:00"), _ts("2024-01-02T12:00:00")]
    assert mark_archives(times, KeepPolicy(daily=5), zone=berlin) == [Mark.REMOVE, Mark.KEEP]
    assert mark_archives(times, KeepPolicy(daily=5), zone=UTC) == [Mark.KEEP, Mark.KEEP]


def test_keep_all_keeps_everything_but_marks_protected() -> None:
    times = [_ts(s) for s in SIMPLE]
    assert mark_archives(times, KeepPolicy(keep_all=True, last=1), [True, False, False, False], UTC) == [
        Mark.PROTECTED, Mark.KEEP, Mark.KEEP, Mark.KEEP,
    ]  # fmt: skip


def test_mark_datetimes() -> None:
    times = [datetime.fromisoformat(s).replace(tzinfo=UTC) for s in SIMPLE]
    assert mark_datetimes(times, KeepPolicy(last=3), zone=UTC)[0] is Mark.REMOVE


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("keep-last=3,keep-daily=13,keep-yearly=9", KeepPolicy(last=3, daily=13, yearly=9)),
        ("keep-all=1", KeepPolicy(keep_all=True)),
        (" keep-weekly=2 , keep-monthly=1 ", KeepPolicy(weekly=2, monthly=1)),
        ("", KeepPolicy()),
    ],
)
def test_policy_parse_and_format(text: str, policy: KeepPolicy) -> None:
    assert KeepPolicy.parse(text) == policy
    assert KeepPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("keep-last", "keep-<rule>=<count>"),
        ("keep-daly=3", "keep-<rule>=<count>"),
        ("keep-last=-1", "whole number"),
        ("keep-last=x", "whole number"),
        ("keep-last=1,keep-last=2", "twice"),
    ],
)
def test_policy_rejects(text: str, reason: str) -> None:
    with pytest.raises(RetentionError, match=reason):
        KeepPolicy.parse(text)


# ---------------------------------------------------------------------------------------------
# An independent, literal reference (strftime period ids as in PBS, per-archive localtime), for
# comparing the fast implementation on random inputs in a zone with DST.


def _reference(times: list[int], policy: KeepPolicy, protected: list[bool], zone: ZoneInfo) -> list[Mark]:
    marks: list[Mark | None] = [Mark.PROTECTED if p else None for p in protected]
    if policy.keeps_everything:
        return [m or Mark.KEEP for m in marks]
    order = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
    fmts = {
        "hourly": "%Y/%m/%d/%H",
        "daily": "%Y/%m/%d",
        "weekly": "%G/%V",
        "monthly": "%Y/%m",
        "yearly": "%Y",
    }

    def pid(rule: str, i: int) -> str:
        if rule == "last":
            return str(times[i])
        return datetime.fromtimestamp(times[i], zone).strftime(fmts[rule])

    for rule in RULES:
        count = getattr(policy, rule)
        if not count:
            continue
        already = {pid(rule, i) for i in order if marks[i] is Mark.KEEP}
        new: set[str] = set()
        for i in order:
            if marks[i] is not None or pid(rule, i) in already:
                continue
            if pid(rule, i) not in new:
                if len(new) >= count:
                    break
                new.add(pid(rule, i))
                marks[i] = Mark.KEEP
            else:
                marks[i] = Mark.REMOVE
    return [m or Mark.REMOVE for m in marks]


BERLIN = ZoneInfo("Europe/Berlin")
policies = st.builds(
    KeepPolicy,
    last=st.integers(0, 4), hourly=st.integers(0, 6), daily=st.integers(0, 8),
    weekly=st.integers(0, 5), monthly=st.integers(0, 4), yearly=st.integers(0, 3),
)  # fmt: skip
# Archives between 2019 and 2023, clustered so that periods hold several archives, DST included.
archive_sets = st.lists(
    st.tuples(st.integers(1546300800, 1703980800), st.integers(0, 50 * 3600), st.booleans()),
    min_size=0,
    max_size=40,
).map(lambda xs: ([a - (a % 86400) + off for a, off, _ in xs], [p and off % 7 == 0 for _, off, p in xs]))


@settings(max_examples=400, deadline=None)
@given(archives=archive_sets, policy=policies)
def test_matches_literal_reference(archives: tuple[list[int], list[bool]], policy: KeepPolicy) -> None:
    times, protected = archives
    assert mark_archives(times, policy, protected, BERLIN) == _reference(times, policy, protected, BERLIN)


@settings(max_examples=300, deadline=None)
@given(archives=archive_sets, policy=policies)
def test_properties(archives: tuple[list[int], list[bool]], policy: KeepPolicy) -> None:
    times, protected = archives
    explained = explain_archives(times, policy, protected, BERLIN)
    marks = [m for m, _ in explained]
    # Protected archives are never removed (and always reported as protected).
    assert all(m is Mark.PROTECTED for m, p in zip(marks, protected, strict=True) if p)
    assert all(p for m, p in zip(marks, protected, strict=True) if m is Mark.PROTECTED)
    # No rule keeps more than its count.
    if not policy.keeps_everything:
        for rule in RULES:
            assert sum(1 for _, r in explained if r == rule) <= getattr(policy, rule)
        assert sum(1 for m in marks if m is Mark.KEEP) <= policy.total()
    # Pruning the survivors again removes nothing more.
    survivors = [i for i, m in enumerate(marks) if m is not Mark.REMOVE]
    again = mark_archives([times[i] for i in survivors], policy, [protected[i] for i in survivors], BERLIN)
    assert Mark.REMOVE not in again
    # The newest unprotected archive always survives when any rule is on.
    unprotected = [i for i in range(len(times)) if not protected[i]]
    if unprotected:
        newest = max(unprotected, key=lambda i: (times[i], -i))
        assert marks[newest] is Mark.KEEP


def test_dst_fall_back_hour_is_one_period() -> None:
    # 02:30 CEST and 02:30 CET on 2024-10-27 are the same local hour for PVE's hourly id.
    first = int(datetime(2024, 10, 27, 0, 30, tzinfo=UTC).timestamp())  # 02:30 CEST
    second = first + 3600  # 02:30 CET
    assert mark_archives([first, second], KeepPolicy(hourly=5), zone=BERLIN) == [Mark.REMOVE, Mark.KEEP]
    assert datetime.fromtimestamp(second, BERLIN).hour == 2
    assert (datetime.fromtimestamp(first, BERLIN) + timedelta(0)).hour == 2


@pytest.mark.parametrize(
    ("span", "policy"),
    [
        (timedelta(days=7), KeepPolicy(daily=7)),
        (timedelta(days=30), KeepPolicy(daily=30)),
        (timedelta(hours=36), KeepPolicy(daily=2)),
        (timedelta(hours=12), KeepPolicy(hourly=12)),
        (timedelta(minutes=90), KeepPolicy(hourly=2)),
    ],
)
def test_policy_for_duration(span: timedelta, policy: KeepPolicy) -> None:
    assert KeepPolicy.for_duration(span) == policy


def test_policy_for_duration_rejects_zero() -> None:
    with pytest.raises(RetentionError, match="positive"):
        KeepPolicy.for_duration(timedelta(0))


@settings(max_examples=300, deadline=None)
@given(archives=archive_sets, policy=policies)
def test_ascending_listing_matches_literal_reference(
    archives: tuple[list[int], list[bool]], policy: KeepPolicy
) -> None:
    """Strictly ascending input (a sorted dump directory) skips the sort: same marks."""
    times = sorted(set(archives[0]))
    protected = archives[1][: len(times)]
    protected += [False] * (len(times) - len(protected))
    assert mark_archives(times, policy, protected, BERLIN) == _reference(times, policy, protected, BERLIN)


ZONES = [ZoneInfo(z) for z in ("Australia/Lord_Howe", "Asia/Kathmandu", "America/New_York", "Europe/Berlin")]


@settings(max_examples=400, deadline=None)
@given(archives=archive_sets, policy=policies, zone=st.sampled_from(ZONES), columns=st.booleans())
def test_other_zones_and_prune_sims_columns_match_literal_reference(
    archives: tuple[list[int], list[bool]], policy: KeepPolicy, zone: ZoneInfo, columns: bool
) -> None:
    """Lord Howe changes by 30 minutes at half past an hour (UTC), Kathmandu is +05:45; prune-sim
    hands in an array of times and a bytearray of flags (reversed / translated in C). Ascending and
    unordered input both."""
    times, protected = archives
    for ts, flags in ((times, protected), (sorted(set(times)), protected[: len(set(times))])):
        flags = flags + [False] * (len(ts) - len(flags))
        got_times: Sequence[int] = array("q", ts) if columns else ts
        got_flags: Sequence[bool] = bytearray(flags) if columns else flags  # type: ignore[assignment]
        assert mark_archives(got_times, policy, got_flags, zone) == _reference(ts, policy, flags, zone)


@pytest.mark.parametrize("zone", ZONES)
def test_every_five_minutes_across_dst_changes(zone: ZoneInfo) -> None:
    """Archives every 5 minutes over the days of 2023's DST changes (none in Kathmandu): each hour
    with a change inside is computed per archive."""
    days = ["2023-03-12", "2023-03-26", "2023-04-02", "2023-10-01", "2023-10-29", "2023-11-05"]
    times = sorted({int(datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp()) + t
                    for d in days for t in range(-86400, 2 * 86400, 300)})
    protected = [i % 97 == 0 for i in range(len(times))]
    policy = KeepPolicy(last=2, hourly=200, daily=5, weekly=2, monthly=3, yearly=1)
    for ts in (times, times[::-1]):
        assert mark_archives(array("q", ts), policy, bytearray(protected), zone) == _reference(
            ts, policy, protected, zone)


# The fast paths of _marks: a nearly ascending listing is put in order window by window, and a pass
# walks a dense block hour by hour (bisection) instead of position by position.

HOUR_BY_HOUR = (1e-9, 0)  # retention._DENSE: always, never


def _nearly_ascending(draw: st.DrawFn) -> list[int]:
    base = draw(st.integers(1546300800, 1703980800))
    steps = draw(st.lists(st.sampled_from([0, 1, 60, 300, 1800, 3599, 3600, 86400]), min_size=1, max_size=120))
    times = []
    t = base
    for step in steps:
        t += step
        times.append(t)
    for _ in range(draw(st.integers(0, 4))):  # a few elements moved back or forth by a few places
        i = draw(st.integers(0, len(times) - 1))
        j = min(len(times) - 1, max(0, i + draw(st.integers(-5, 5))))
        times.insert(j, times.pop(i))
    return times


nearly_ascending = st.composite(_nearly_ascending)()


@settings(max_examples=400, deadline=None)
@given(
    times=nearly_ascending, policy=policies, zone=st.sampled_from(ZONES), dense=st.sampled_from(HOUR_BY_HOUR),
    block=st.sampled_from([4, 8192]), flags=st.randoms(use_true_random=False),
)
def test_nearly_ascending_and_dense_match_literal_reference(
    times: list[int], policy: KeepPolicy, zone: ZoneInfo, dense: float, block: int, flags: random.Random
) -> None:
    """Ties, moved elements and repeated times; small blocks so that runs and windows cross them."""
    protected = [flags.random() < 0.1 for _ in times]
    with patch.object(retention, "_DENSE", dense), patch.object(retention, "_BLOCK", block):
        got = mark_archives(array("q", times), policy, bytearray(protected), zone)
        assert got == mark_archives(times, policy, protected, zone)
    assert got == _reference(times, policy, protected, zone)


@pytest.mark.parametrize("dense", HOUR_BY_HOUR)
@pytest.mark.parametrize("zone", ZONES)
def test_every_minute_across_dst_changes_hour_by_hour(zone: ZoneInfo, dense: float) -> None:
    """The local wall-clock listing prune-sim reads: a name a minute through the days of 2023's DST
    changes, the skipped hour's names included (they map onto the next hour: out of order)."""
    days = ["2023-03-12", "2023-03-26", "2023-04-02", "2023-10-01", "2023-10-29", "2023-11-05"]
    local = [datetime.fromisoformat(d) + timedelta(minutes=m) for d in days for m in range(-1440, 2880, 1)]
    times = [int(t.replace(tzinfo=zone, fold=0).timestamp()) for t in sorted(set(local))]
    protected = [i % 97 == 0 for i in range(len(times))]
    policy = KeepPolicy(last=2, hourly=300, daily=9, weekly=3, monthly=3, yearly=1)
    with patch.object(retention, "_DENSE", dense), patch.object(retention, "_BLOCK", 512):
        assert retention._windows(times) is not None or zone.key == "Asia/Kathmandu"
        assert mark_archives(array("q", times), policy, bytearray(protected), zone) == _reference(
            times, policy, protected, zone)


def test_windows_put_ties_and_moved_elements_in_order() -> None:
    times = [1, 2, 3, 3, 5, 4, 6, 9, 7, 8, 8, 10, 11, 12, 11, 11, 13]
    windows = retention._windows(times)
    assert windows is not None
    assert sum(len(members) for _, members in windows) < len(times)  # only the disordered places
    order = list(range(len(times)))
    for a, members in windows:
        order[a : a + len(members)] = members
    assert order == sorted(range(len(times)), key=lambda i: (times[i], -i))
    assert retention._windows([1, 2, 3]) == []
    assert retention._windows([1, 2, 5, 6, 3, 4, 0]) is None  # 0 belongs before the run it follows
    assert retention._windows([5, 4, 3, 2, 1] * 40) is None  # a full sort is cheaper
