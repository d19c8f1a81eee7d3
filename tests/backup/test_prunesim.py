"""`backup prune-sim`'s chunked reader gives what the precise per-line reader gives, line for line.

The reference is the per-line path (``parse_archive_lines`` + ``explain_archives`` per group), which
the chunked reader falls back to for any chunk that is not made of strict standard names only.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pveguard.backup import prunesim
from pveguard.backup.cli import parse_archive_lines
from pveguard.backup.retention import KeepPolicy, explain_archives
from pveguard.errors import UsageError

POLICY = KeepPolicy(last=3, hourly=30, daily=20, weekly=8, monthly=6, yearly=2)
# Berlin: hour-aligned DST changes; Lord Howe: 30-minute DST; New York: other dates; Kathmandu +05:45.
ZONES = ["Europe/Berlin", "Australia/Lord_Howe", "America/New_York", "Asia/Kathmandu", "UTC"]
DST_TIMES = [  # gap and repeated hours (local wall-clock) in the zones above
    datetime(2023, 3, 26, 2, 30), datetime(2023, 10, 29, 2, 30), datetime(2023, 10, 29, 2, 0),
    datetime(2023, 10, 29, 1, 59, 59), datetime(2024, 3, 10, 2, 15), datetime(2023, 11, 5, 1, 30),
    datetime(2023, 10, 1, 2, 15), datetime(2023, 10, 1, 2, 45), datetime(2023, 4, 2, 1, 45),
    datetime(2024, 3, 31, 2, 59, 59),
]  # fmt: skip


def _names(seed: int, count: int, mixed: bool) -> list[str]:
    rng = random.Random(seed)
    t = datetime(2023, 3, 1)
    out = []
    for _ in range(count):
        t += timedelta(minutes=rng.choice([1, 7, 30, 59, 61, 24 * 60]))
        when = rng.choice(DST_TIMES) if rng.random() < 0.05 else t
        group = rng.choice(["lxc-101", "qemu-200", "lxc-1011", "openvz-999"]) if mixed else "lxc-101"
        ext = rng.choice(["tar.zst", "tgz", "vma.gz", "tar", "vma.lzo", "tar.bz2"])
        name = f"vzdump-{group}-{when:%Y_%m_%d-%H_%M_%S}.{ext}"
        if rng.random() < 0.05:
            name = rng.choice(["/var/lib/vz/dump/", "dump/", "//x/"]) + name
        if rng.random() < 0.1:
            name += " protected"
        out.append(name)
    return out


def _reference(text: str, zone: ZoneInfo) -> tuple[list[str], list[int]]:
    archives = parse_archive_lines(text.splitlines(), zone)
    marks: list[str] = [""] * len(archives)
    groups: dict[str, list[int]] = {}
    for i, (_, _, _, group) in enumerate(archives):
        groups.setdefault(group, []).append(i)
    for members in groups.values():
        times = [int(archives[i][1].timestamp()) for i in members]
        verdicts = explain_archives(times, POLICY, [archives[i][2] for i in members], zone)
        for i, (mark, _) in zip(members, verdicts, strict=True):
            marks[i] = f"{mark} {archives[i][0]}"
    return marks, [int(when.timestamp()) for _, when, _, _ in archives]


def _simulated(text: str, zone: ZoneInfo) -> tuple[tuple[list[str], list[int]], int]:
    result = prunesim.simulate(text, POLICY, zone)
    out: list[str] = []
    result.write(out.append)
    strict = sum(isinstance(piece, tuple) for piece, _ in result.pieces)
    return ("".join(out).splitlines(), list(result.times)), strict


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prunesim, "CHUNK_LINES", 40)  # many chunks, of both kinds


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("mixed", [False, True])
def test_strict_names_match_the_precise_reader(zone: str, mixed: bool) -> None:
    tz = ZoneInfo(zone)
    text = "\n".join(_names(len(zone), 3000, mixed)) + "\n"
    lines, strict = _simulated(text, tz)
    assert strict > 10, "the chunked reader must take its fast path for strict names"
    assert lines == _reference(text, tz)


def test_odd_lines_fall_back_per_chunk_with_the_same_result() -> None:
    tz = ZoneInfo("Europe/Berlin")
    names = _names(7, 3000, True)
    names[100] = "2024-01-01T00:00:00 protected"  # plain timestamp
    names[500] = "# comment"
    names[900] = ""
    names[1300] = "  " + names[1300] + "\tprotected "  # blanks around, tab before the flag
    names[1700] = "/a dir/" + names[1700]  # blank inside the path
    names[2100] = "/x/vzdump-lxc-5-/" + names[2100]  # a directory that looks like a name
    names[2500] = "/v/vzdump-lxc-5-2020_01_01-00_00_00.x/" + names[2500]
    text = "\n".join(names)  # no newline at the end
    lines, strict = _simulated(text, tz)
    assert strict > 10
    assert lines == _reference(text, tz)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            "vzdump-lxc-101-2024_02_30-00_00_00.tar.zst",
            "line 2001: 'vzdump-lxc-101-2024_02_30-00_00_00.tar.zst' is a renamed",
        ),
        (
            "vzdump-lxc-101-2024_01_01-24_00_00.tar.zst",
            "line 2001: 'vzdump-lxc-101-2024_01_01-24_00_00.tar.zst' is a renamed",
        ),
        ("vzdump-lxc-101-9999_01_01-00_00_00.tar.zst", "is outside the years 1900..9998"),
        ("vzdump-lxc-101-1900_01_01-00_30_00.tar.zst", "is outside the years 1900..9998"),
        ("not-a-time", "line 2001: cannot read timestamp"),
    ],
)
def test_bad_line_in_a_late_chunk_gives_the_precise_message(bad: str, message: str) -> None:
    names = _names(3, 3000, False)
    names[2000] = bad
    with pytest.raises(UsageError) as caught:
        prunesim.simulate("\n".join(names), POLICY, ZoneInfo("Europe/Berlin"))
    assert message in caught.value.message
    assert "line 2001" in caught.value.message


def test_counts_lines_as_splitlines_does() -> None:
    """Form feeds and other separators str.splitlines() knows move the line numbers alike."""
    names = _names(4, 200, False)
    names[50] = names[50] + "\x0c" + names[51]
    names[150] = "bad"
    with pytest.raises(UsageError) as caught:
        prunesim.simulate("\n".join(names), POLICY, ZoneInfo("Europe/Berlin"))
    assert caught.value.message.startswith("line 152:")
