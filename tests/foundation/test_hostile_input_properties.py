"""Generated hostile input for every parser of user input: a clear error, in bounded time and memory.

Issue 12: the strategy loader, the apt hook's message parser, the calendar parser and the
retention reader get generated input - random text and bytes, and text built from their own
grammar with hostile pieces spliced in (aliases, deep nesting, huge numbers, long runs, odd
digits). Each input must end in a result or the module's own error (a PveguardError subclass, or
the hook's ProtocolError, which the hook turns into a refusal), within 2 s and 50 MiB.

The bounds are generous on purpose: they catch blow-ups (an alias bomb took 21 s and 297 MB), not
slowness. Example counts keep the whole file to a few seconds.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pveguard.backup.calendar import CalendarError, next_runs
from pveguard.backup.calendar import parse as parse_calendar
from pveguard.backup.retention import KeepPolicy, RetentionError, mark_archives
from pveguard.errors import PveguardError
from pveguard.guard.aptproto import ProtocolError
from pveguard.guard.aptproto import parse as parse_hook
from pveguard.strategy.defaults import render
from pveguard.strategy.load import check_text

MAX_SECONDS = 2.0
MAX_BYTES = 50 << 20
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def bounded() -> Iterator[None]:
    """Fail when the body takes longer than MAX_SECONDS or allocates more than MAX_BYTES at its peak."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
    assert peak < MAX_BYTES, f"peak {peak >> 20} MiB"


def huge_number() -> st.SearchStrategy[str]:
    return st.sampled_from(["9" * 25, "9" * 5000, "1" + "0" * 400, "-" + "9" * 30, "1.0e+400", ".nan", "-.inf",
                            "0x" + "f" * 40, "0o777", "1_000", "١٢", "²"])


def splice(base: str, pieces: list[tuple[int, str]]) -> str:
    """`base` with each piece inserted at a position (taken modulo the length)."""
    text = base
    for at, piece in pieces:
        cut = at % (len(text) + 1)
        text = text[:cut] + piece + text[cut:]
    return text


# --- strategy loader ------------------------------------------------------------------------------

_YAML_PIECES = st.one_of(
    huge_number(),
    st.sampled_from(["&a ", "*a", "&b [*a, *a, *a, *a]", "*b", "&c [*c]", "<<: *a", "!!python/object:os.system ",
                     "!!binary ", "!!timestamp 2020-13-45", "? [a, b]\n: 1\n", "? {a: 1}\n: 2\n", "{", "[", "]", "}",
                     "\t", "\x00", "\ufeff", "\\", "'", '"', "%YAML 1.1\n---\n", "---\n", "...\n", "- ", ": ", "#",
                     "|\n", ">-\n", "2020-01-01", "yes", "~", "null", "0", "-1", "1e3"]),
    st.integers(1, 200).map(lambda n: "[" * n),
    st.integers(1, 100).map(lambda n: "".join("  " * i + f"k{i}:\n" for i in range(n))),
    st.integers(1, 12).map(lambda n: "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9) if i else 'lol'}]\n"
                                             for i in range(n))),
    st.text(max_size=20),
)
_BASES = st.sampled_from([
    render(),
    "monitoring:\n  renotify: 4h\n  thresholds: {cpu: 80}\n",
    "containers:\n  - name: a\n    role: r\n    resources: {cores: 1, memory: 1G}\n",
    "backup:\n  containers:\n    schedule: daily\n    keep: {last: 3}\n",
    "",
])


@PROPERTY
@given(st.one_of(
    st.text(max_size=300),
    st.tuples(_BASES, st.lists(st.tuples(st.integers(0, 20_000), _YAML_PIECES), max_size=6)).map(
        lambda t: splice(t[0], t[1])),
))
def test_strategy_loader_on_hostile_text(text: str) -> None:
    with bounded():
        strategy, problems = check_text(text, "s.yaml")
    if strategy is None:
        assert [p for p in problems if p.severity == "error"], "refused without saying why"
    for p in problems:
        assert p.line >= 0 and p.col >= 0 and p.message
        assert len(p.message) < 1000, "a message must not echo a huge value"


# --- apt hook message -----------------------------------------------------------------------------

_HOOK_LINES = st.one_of(
    st.sampled_from([b"VERSION 3", b"VERSION 2", b"VERSION 999999999999", b"VERSION -1", b"", b"=", b"a=",
                     b"APT::Architecture=amd64", b"%zz=%00", b"%", b"\xff\xfe", b"\x00" * 10, b"\r",
                     b"pkg 1.0 amd64 same < 2.0 amd64 same /var/cache/apt/archives/pkg.deb",
                     b"pkg - - none < 2.0 amd64 none **CONFIGURE**", b"pkg 1.0 amd64 none > - - none **REMOVE**",
                     b"pkg 1.0 < 2.0 /x.deb", b"Pkg 1 amd64 none = 1 amd64 none /x.deb"]),
    st.binary(max_size=40),
    st.integers(1, 100_000).map(lambda n: b"x" * n),
    st.integers(1, 2000).map(lambda n: b" ".join([b"a"] * n)),
)


@PROPERTY
@given(st.one_of(
    st.binary(max_size=400),
    st.lists(_HOOK_LINES, max_size=30).map(b"\n".join),
    st.tuples(st.sampled_from([b"VERSION 3\n", b"VERSION 2\n"]), st.lists(_HOOK_LINES, max_size=10),
              st.lists(_HOOK_LINES, max_size=20)).map(lambda t: t[0] + b"\n".join(t[1]) + b"\n\n" + b"\n".join(t[2])),
    st.integers(1, 50_000).map(lambda n: b"VERSION 3\n" + b"A=b\n" * n + b"\n"),
))
def test_hook_message_parser_on_hostile_bytes(data: bytes) -> None:
    with bounded():
        try:
            message = parse_hook(data)
        except ProtocolError as exc:
            assert str(exc) and len(str(exc)) < 1000
            return
        message.package_actions()


# --- calendar events ------------------------------------------------------------------------------

_CAL_PIECES = st.one_of(
    huge_number(),
    st.sampled_from(["mon", "monday", "..", ",", "/", "*", ":", "-", " ", "UTC", "utc", "~", "daily", "*/0", "0..59/0",
                     "2199", "2200", "02-29", "02-30", "sat", "mon..sun"]),
    st.integers(1, 5000).map(lambda n: "1," * n + "1"),
    st.integers(1, 5000).map(lambda n: "mon," * n + "mon"),
    st.text(max_size=10),
)


def _calendar(text: str) -> None:
    with bounded():
        try:
            event = parse_calendar(text)
        except CalendarError as exc:
            assert exc.hint and len(exc.message) < 1000
            return
        next_runs(event, datetime(2024, 2, 28, 23, 59, 59, tzinfo=UTC), 3)


@PROPERTY
@given(st.one_of(
    st.text(max_size=200),
    st.lists(_CAL_PIECES, max_size=12).map("".join),
    st.lists(_CAL_PIECES, max_size=8).map(" ".join),
))
def test_calendar_parser_on_hostile_text(text: str) -> None:
    _calendar(text)


# --- retention --------------------------------------------------------------------------------------

_KEEP_PIECES = st.one_of(
    huge_number(),
    st.sampled_from(["keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly",
                     "keep-all", "keep-", "=", ",", " ", "0", "1", "3", "-3", "+3", "3.5", "\x00"]),
    st.text(max_size=8),
)


@PROPERTY
@given(st.one_of(
    st.text(max_size=200),
    st.lists(_KEEP_PIECES, max_size=16).map("".join),
    st.lists(st.tuples(st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly", "all"]),
                       st.one_of(huge_number(), st.integers(0, 10**30).map(str))), max_size=7).map(
        lambda rules: ",".join(f"keep-{r}={v}" for r, v in rules)),
))
def test_retention_reader_on_hostile_text(text: str) -> None:
    with bounded():
        try:
            policy = KeepPolicy.parse(text)
        except RetentionError as exc:
            assert isinstance(exc, PveguardError) and len(exc.message) < 1000
            return
        hours = list(range(0, 90 * 86400, 3600))
        assert len(mark_archives(hours, policy, zone=UTC)) == len(hours)


@PROPERTY
@given(st.one_of(st.integers(-(10**30), 10**30).map(lambda n: ("seconds", n)),
                 st.floats(allow_nan=True, allow_infinity=True).map(lambda f: ("days", f))))
def test_retention_from_a_duration(span: tuple[str, float]) -> None:
    """The strategy's `retention: 7d` becomes keep-daily/hourly; absurd spans are a clear error."""
    unit, amount = span
    build: Callable[[], timedelta] = lambda: timedelta(**{unit: amount})  # noqa: E731
    try:
        duration = build()
    except (OverflowError, ValueError):  # not a timedelta at all: nothing to read
        return
    with bounded():
        try:
            policy = KeepPolicy.for_duration(duration)
        except RetentionError:
            return
        assert policy.daily or policy.hourly


# What the properties found (issue 12), kept as plain cases: each raised ValueError or IndexError.
@pytest.mark.parametrize("text", ["1" * 5000, "*-*-" + "1" * 5000, "mon," * 40 + "mon"])
def test_found_calendar_digits_beyond_int_limit(text: str) -> None:
    with pytest.raises(CalendarError, match="Proxmox VE takes at most 128"):
        parse_calendar(text)


@pytest.mark.parametrize("text", ["keep-last=²", "keep-daily=" + "9" * 5000, "keep-last=" + "9" * 19])
def test_found_retention_digits_int_refuses(text: str) -> None:
    with pytest.raises(RetentionError, match="needs a whole number >= 0"):
        KeepPolicy.parse(text)


def test_an_undefined_alias_with_a_huge_name_is_not_echoed_whole() -> None:
    # found by the property test above: the anchor name was put into the message twice, 10,000 characters each
    from pveguard.strategy.load import parse_yaml

    problems = parse_yaml("x0: &x0 [lol]\nx1: [*" + "9" * 10000 + "x0]\n", "s.yaml")[2]
    assert len(problems) == 1 and "is not defined before this point" in problems[0].message
    assert len(problems[0].message) < 1000
