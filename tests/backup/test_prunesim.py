"""`backup prune-sim`'s chunked reader gives what the precise per-line reader gives, line for line.

The reference is the per-line path (``parse_archive_lines`` + ``explain_archives`` per group), which
the chunked reader falls back to for any chunk that is not made of strict standard names only.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
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


def _times(rng: random.Random, count: int) -> Iterator[datetime]:
    """Ascending local times from 2023-03-01 at uneven steps, about one in twenty a DST edge case instead."""
    t = datetime(2023, 3, 1)
    for _ in range(count):
        t += timedelta(minutes=rng.choice([1, 7, 30, 59, 61, 24 * 60]))
        yield rng.choice(DST_TIMES) if rng.random() < 0.05 else t


def _names(seed: int, count: int, mixed: bool) -> list[str]:
    rng = random.Random(seed)
    out = []
    for when in _times(rng, count):
        group = rng.choice(["lxc-101", "qemu-200", "lxc-1011", "openvz-999"]) if mixed else "lxc-101"
        ext = rng.choice(["tar.zst", "tgz", "vma.gz", "tar", "vma.lzo", "tar.bz2"])
        name = f"vzdump-{group}-{when:%Y_%m_%d-%H_%M_%S}.{ext}"
        if rng.random() < 0.05:
            name = rng.choice(["/var/lib/vz/dump/", "dump/", "//x/"]) + name
        if rng.random() < 0.1:
            name += " protected"
        out.append(name)
    return out


def _reference(text: str, zone: tzinfo, policy: KeepPolicy = POLICY) -> tuple[list[str], list[int]]:
    archives = parse_archive_lines(text.splitlines(), zone)
    marks: list[str] = [""] * len(archives)
    groups: dict[str, list[int]] = {}
    for i, (_, _, _, group) in enumerate(archives):
        groups.setdefault(group, []).append(i)
    for members in groups.values():
        times = [int(archives[i][1].timestamp()) for i in members]
        verdicts = explain_archives(times, policy, [archives[i][2] for i in members], zone)
        for i, (mark, _) in zip(members, verdicts, strict=True):
            marks[i] = f"{mark} {archives[i][0]}"
    return marks, [int(when.timestamp()) for _, when, _, _ in archives]


def _simulated(text: str, zone: ZoneInfo) -> tuple[tuple[list[str], list[int]], int]:
    result = prunesim.simulate(text, POLICY, zone)
    out = io.StringIO()
    result.write(out)
    strict = sum(kind != prunesim._TEXTS for kind, _, _ in result.pieces)
    return (out.getvalue().splitlines(), list(result.times)), strict


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prunesim, "CHUNK_LINES", 40)  # many chunks, of both kinds


@pytest.fixture(params=["hour runs", "per line"])
def hour_runs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uniform reader's two ways to the times: hour starts repeated per run of lines of one
    local hour (forced here for any listing), or one look-up per line (forced for all)."""
    monkeypatch.setattr(prunesim, "_SPARSE_RUNS", 0 if request.param == "hour runs" else 10**9)


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


def _uniform_names(seed: int, count: int, vmids: list[str], path: str = "", ext: str = "tar.zst") -> list[str]:
    """Names of one shape (same type, vmid width, path and extension): the uniform reader's input."""
    rng = random.Random(seed)
    out = []
    for when in _times(rng, count):
        name = f"{path}vzdump-lxc-{rng.choice(vmids)}-{when:%Y_%m_%d-%H_%M_%S}.{ext}"
        out.append(name + " protected" if rng.random() < 0.1 else name)
    return out


def _kinds(text: str, zone: ZoneInfo) -> list[int]:
    return [kind for kind, _, _ in prunesim.simulate(text, POLICY, zone).pieces]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    ("vmids", "path", "ext"),
    [
        (["101"], "", "tar.zst"),
        (["101", "102", "999"], "/var/lib/vz/dump/", "tar.bz2"),  # several guests: per line
        (["12345678"], "d/", "vma.lzo"),
        (["123456789", "223456789"], "", "tgz"),  # 9 digits and several: the regex reader
    ],
)
@pytest.mark.parametrize("end", ["\n", "", " protected"])
@pytest.mark.usefixtures("hour_runs")
def test_uniform_names_match_the_precise_reader(
    zone: str, vmids: list[str], path: str, ext: str, end: str
) -> None:
    tz = ZoneInfo(zone)
    names = _uniform_names(len(zone), 3000, vmids, path, ext)
    names[-1] = names[-1].removesuffix(" protected")
    text = "\n".join(names) + end
    lines, _ = _simulated(text, tz)
    assert lines == _reference(text, tz)
    kinds = _kinds(text, tz)
    if len(vmids[0]) <= 8:
        assert kinds.count(prunesim._UNIFORM) >= len(kinds) - 1, "one shape: the uniform reader"


@pytest.mark.parametrize(
    "odd",
    [
        "vzdump-lxc-101-2023_03_26-02_60_00.tar.bz2",  # minute 60
        "vzdump-lxc-101-2023_03_26-02_00_61.tar.bz2",
        "vzdump-lxc-101-2023_03_26-24_00_00.tar.bz2",
        "vzdump-lxc-101-2023_02_29-02_00_00.tar.bz2",
        "vzdump-lxc-101-2023_13_01-02_00_00.tar.bz2",
        "vzdump-lxc-101-2023_00_01-02_00_00.tar.bz2",
        "vzdump-lxc-101-9999_01_01-00_00_00.tar.bz2",
        "vzdump-lxc-101-1900_01_01-00_30_00.tar.bz2",
        "vzdump-lxc-011-2023_03_01-00_00_00.tar.bz2",  # vmid with a leading 0: not a standard name
        "vzdump-lxc-101-2023_03_01-00_00_00.tar.bz7",  # the digit of bz2 changed
        "vzdump-lxc-101-2023_03_01-00_00_00.tar.bz2 protectet",
        "# vzdump-lxc-101-2023_03_01-00_00_00.tar.bz2",
        "d7/vzdump-lxc-101-2023_03_01-00_00_00.tar.bz2",  # the digit of a directory changed
        "d2\tvzdump-lxc-101-2023_03_01-00_00_00.tar.bz2",
        "d\u00e9vzdump-lxc-101-2023_03_01-00_00_00.tar.bz2",  # not ASCII
        "2023-03-26T02:30:00+01:00",
    ],
)
@pytest.mark.parametrize("where", [0, 77])
@pytest.mark.usefixtures("hour_runs")
def test_one_odd_line_in_a_uniform_chunk_gives_the_precise_result(odd: str, where: int) -> None:
    tz = ZoneInfo("Europe/Berlin")
    names = _uniform_names(9, 200, ["101"], "d2/" if "d" in odd[:2] else "", "tar.bz2")
    names[where] = odd
    text = "\n".join(names) + "\n"
    try:
        expected: object = _reference(text, tz)
    except UsageError as exc:
        expected = exc.message
    try:
        got: object = _simulated(text, tz)[0]
    except UsageError as exc:
        got = exc.message
    assert got == expected


@pytest.mark.usefixtures("hour_runs")
def test_uniform_chunks_before_1970_and_across_a_century() -> None:
    tz = ZoneInfo("America/New_York")
    start = datetime(1901, 1, 1)
    names = [f"vzdump-qemu-100-{start + timedelta(days=3 * i):%Y_%m_%d-%H_%M_%S}.vma" for i in range(50000)]
    text = "\n".join(names) + "\n"
    lines, _ = _simulated(text, tz)
    assert lines == _reference(text, tz)
    assert prunesim._UNIFORM in _kinds(text, tz)


class _FixedPlusOne(tzinfo):
    """A tzinfo that is neither ZoneInfo nor timezone: hour starts go through aware timestamps."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


def test_uniform_chunks_in_another_tzinfo() -> None:
    names = _uniform_names(5, 500, ["101"])
    text = "\n".join(names) + "\n"
    lines, _ = _simulated(text, _FixedPlusOne())  # type: ignore[arg-type]
    assert lines == _reference(text, _FixedPlusOne())  # type: ignore[arg-type]


def _mixed_kinds_text() -> str:
    """Uniform chunks, a regex-strict chunk and a per-line chunk, in that order and again."""
    uniform = _uniform_names(11, 150, ["101"])
    strict = _names(12, 100, True)
    odd = [*uniform[:60], "2024-01-01T00:00:00 protected", "# comment", *uniform[60:]]
    return "\n".join([*uniform, *strict, *odd, *uniform]) + "\n"


def test_writing_to_text_streams_with_and_without_a_byte_buffer() -> None:
    tz = ZoneInfo("Europe/Berlin")
    text = _mixed_kinds_text()
    result = prunesim.simulate(text, POLICY, tz)
    assert {kind for kind, _, _ in result.pieces} == {prunesim._UNIFORM, prunesim._STRICT_TEXT, prunesim._TEXTS}
    expected = "".join(f"{line}\n" for line in _reference(text, tz)[0])
    for encoding in ("utf-8", "latin-1"):
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding=encoding, newline="\n")
        result.write(stream)
        stream.flush()
        assert raw.getvalue().decode(encoding) == expected
    plain = io.StringIO()
    result.write(plain)  # no buffer: decoded
    assert plain.getvalue() == expected


@pytest.mark.parametrize("keep_all", [False, True])
def test_uniform_output_when_most_lines_are_kept(keep_all: bool) -> None:
    """The most common word goes before every line; with many others, one word per line."""
    tz = ZoneInfo("Europe/Berlin")
    text = "\n".join(_uniform_names(13, 400, ["101"])) + "\n"
    policy = KeepPolicy(keep_all=True) if keep_all else KeepPolicy(hourly=250, monthly=2)
    result = prunesim.simulate(text, policy, tz)
    out = io.StringIO()
    result.write(out)
    archives = parse_archive_lines(text.splitlines(), tz)
    times = [int(w.timestamp()) for _, w, _, _ in archives]
    marks = explain_archives(times, policy, [p for _, _, p, _ in archives], tz)
    assert out.getvalue().splitlines() == [f"{m} {a[0]}" for (m, _), a in zip(marks, archives, strict=True)]
    rows = list(result.json_rows())
    assert [(r["timestamp"], r["mark"], r["rule"], r["group"]) for r in rows] == [
        (a[0], str(m), rule, "lxc/101") for (m, rule), a in zip(marks, archives, strict=True)
    ]


def test_the_command_as_a_process_file_and_stdin(tmp_path: Path) -> None:
    """The command users run: bytes read from a file or this process's stdin, bytes written."""
    tz = ZoneInfo("Europe/Berlin")
    names = _uniform_names(14, 60000, ["101"])  # more than one chunk of the real size
    names[30000] = names[30000] + "\r"  # a CRLF line: text mode's newline translation applies
    text = "\n".join(names) + "\n"
    listing = tmp_path / "names.txt"
    listing.write_bytes(text.encode())
    policy = KeepPolicy(last=3, daily=7)
    expected = "".join(f"{line}\n" for line in _reference(text.replace("\r", ""), tz, policy)[0])
    argv = [sys.executable, "-m", "pveguard", "backup", "prune-sim", "--keep-last", "3", "--keep-daily", "7"]
    env = {**os.environ, "TZ": "Europe/Berlin", "LC_ALL": "C.UTF-8"}
    from_file = subprocess.run([*argv, "-f", str(listing)], capture_output=True, env=env, timeout=120, check=False)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.decode() == expected
    clean = text.replace("\r", "").encode()
    strict = {**env, "PYTHONIOENCODING": "utf-8:strict"}  # stdin read as bytes; else as its text
    for stdin_env in (strict, env):
        from_stdin = subprocess.run(argv, input=clean, capture_output=True, env=stdin_env, timeout=120, check=False)
        assert from_stdin.returncode == 0, from_stdin.stderr
        assert from_stdin.stdout.decode() == expected
    # Not UTF-8: a clear error where stdin decodes strictly (once a traceback), the per-line reader's
    # message where the locale makes stdin carry the bytes as surrogates (C.UTF-8 here).
    bad = subprocess.run(argv, input=clean + b"\xff\n", capture_output=True, env=strict, timeout=120, check=False)
    assert bad.returncode == 2 and b"cannot read standard input" in bad.stderr and b"Traceback" not in bad.stderr
    bad = subprocess.run(argv, input=clean + b"\xff\n", capture_output=True, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and b"line 60001: cannot read timestamp" in bad.stderr
    listing.write_bytes(clean + b"\xff\n")
    bad_file = subprocess.run([*argv, "-f", str(listing)], capture_output=True, env=env, timeout=120, check=False)
    assert bad_file.returncode == 2 and b"cannot read" in bad_file.stderr and b"UTF-8" in bad_file.stderr
