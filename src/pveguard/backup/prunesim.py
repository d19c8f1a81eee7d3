"""The data path of ``pveguard backup prune-sim``, fast for a million archive names.

The text is read in chunks of about 50,000 lines. A chunk whose every line is a strict standard
archive name (``[dir/]vzdump-<type>-<vmid>-YYYY_MM_DD-hh_mm_ss.<ext>[ protected]``, ASCII digits,
no blanks or comments) is read with C-level regex and dict look-ups (no Python code per line);
any other chunk goes through :func:`pveguard.backup.cli.parse_archive_lines`, the precise per-line
reader, so results and error messages are those of the per-line path. Timestamps are identical:
the local wall-clock time of a name is turned into Unix seconds with the earlier instant in a
repeated DST hour (``fold=0``), through a per-local-hour offset cache; hours in which the offset
changes are computed per item.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta, tzinfo
from operator import add, itemgetter
from typing import Any, cast

from pveguard.backup.retention import _TO_MARK, _TO_RULE, KeepPolicy, _marks

__all__ = ["PruneResult", "simulate"]

CHUNK_LINES = 50_000

_LINE = (
    r"(?!#)(?:[^\s/]*+/)*+vzdump-(?:lxc|openvz|qemu)-[1-9][0-9]{2,8}-[0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2}"
    r"\.(?:tgz|(?:tar|vma)(?:\.(?:gz|lzo|zst|bz2))?)(?: protected)?"
)
_STRICT = re.compile(f"(?:{_LINE}\n)*+(?:{_LINE})?")  # fullmatch: every line of a chunk is strict
_STAMP = re.compile(r"-([0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2})\.")
_GROUP = re.compile(r"vzdump-([a-z]+-[0-9]+)-")
_HOUR, _MINSEC = itemgetter(slice(0, 13)), itemgetter(slice(14, 19))  # YYYY_MM_DD-hh, mm_ss
_EPOCH_DATE = datetime(1970, 1, 1)


class _Slow(Exception):
    """A chunk that the strict reader does not settle: read it line by line."""


class _Hours(dict[str, int]):
    """``YYYY_MM_DD-hh`` -> Unix seconds of that local hour's start (fold=0), for hours in which
    local - UTC is the same throughout; hours with a DST change inside are listed in ``mixed`` and
    computed per item."""

    def __init__(self, zone: tzinfo) -> None:
        super().__init__()
        self.zone = zone
        self.mixed: set[str] = set()
        self.local: dict[str, int] = {}  # key -> local wall-clock seconds since 1970 of the hour

    def exact(self, local: int) -> int:
        when = (_EPOCH_DATE + timedelta(seconds=local)).replace(tzinfo=self.zone, fold=0)
        return int(when.timestamp())

    def __missing__(self, key: str) -> int:
        try:
            d = date(int(key[:4]), int(key[5:7]), int(key[8:10]))
        except ValueError:
            raise _Slow from None
        hour = int(key[11:13])
        # _check_year: UTC and local year in 1900..9998; one day inside that is always safe.
        if not 1901 <= d.year <= 9997 or hour > 23:
            raise _Slow
        first = (d.toordinal() - 719163) * 86400 + hour * 3600
        start = self.exact(first)
        if first + 3599 - self.exact(first + 3599) != first - start:
            self.mixed.add(key)
            self.local[key] = first
        self[key] = start
        return start


class _MinSecs(dict[str, int]):
    """``mm_ss`` -> seconds."""

    def __missing__(self, key: str) -> int:
        m, s = int(key[:2]), int(key[3:5])
        if m > 59 or s > 59:
            raise _Slow
        value = self[key] = m * 60 + s
        return value


class _Groups(dict[str, int]):
    """Group name (``lxc/101``, ``""`` for plain timestamps) -> small int, in order of appearance."""

    def __missing__(self, key: str) -> int:
        value = self[key] = len(self)
        return value


class _TypeVmid(dict[str, int]):
    """``lxc-101`` (as matched) -> group number."""

    def __init__(self, groups: _Groups) -> None:
        super().__init__()
        self.groups = groups

    def __missing__(self, key: str) -> int:
        value = self[key] = self.groups[key.replace("-", "/", 1)]
        return value


def _chunks(text: str) -> Iterator[tuple[int, int]]:
    """(begin, end) of pieces of ``text`` that end at a newline (the last one may not)."""
    size = len(text)
    start = 0
    step = 64 * CHUNK_LINES  # characters; vzdump names are ~45-60 characters
    while start < size:
        end = text.find("\n", start + step)
        end = size if end < 0 else end + 1
        yield start, end
        start = end


def _strict_times(chunk: str, lines: int, hours: _Hours, minsecs: _MinSecs) -> list[int]:
    """Unix seconds of each line of a strict chunk (raises _Slow when the chunk needs the precise path)."""
    stamps = _STAMP.findall(chunk)
    if len(stamps) != lines:  # a directory name that looks like a time stamp
        raise _Slow
    epoch = list(map(add, map(hours.__getitem__, map(_HOUR, stamps)), map(minsecs.__getitem__, map(_MINSEC, stamps))))
    if hours.mixed and any(key in chunk for key in hours.mixed):
        for i, stamp in enumerate(stamps):
            if stamp[:13] in hours.mixed:
                epoch[i] = hours.exact(hours.local[stamp[:13]] + minsecs[stamp[14:]])
    return epoch


def _strict_groups(chunk: str, lines: int, typevmid: _TypeVmid) -> list[int]:
    """Group number of each line of a strict chunk."""
    first = _GROUP.search(chunk)
    assert first is not None
    prefix = first.group(0)
    if chunk.count(prefix) == lines and chunk.count("vzdump-") == lines:
        return [typevmid[first.group(1)]] * lines
    found = _GROUP.findall(chunk)
    if len(found) != lines:
        raise _Slow
    return list(map(typevmid.__getitem__, found))


def _strict_flags(chunk: str, lines: int) -> bytearray:
    """Per line of a strict chunk, 1 when it ends with ' protected'. In a strict line ' protected'
    can only be that suffix, so each occurrence marks its line: found with str.find/count in C, no
    string per line (most chunks have a few hundred protected archives, or none)."""
    flags = bytearray(lines)
    pos = chunk.find(" protected")
    line = last = 0
    while pos >= 0:
        line += chunk.count("\n", last, pos)
        last = pos
        flags[line] = 1
        pos = chunk.find(" protected", pos + 10)
    return flags


class PruneResult:
    """Per input line (in order) its mark; texts are re-derived chunk by chunk when written."""

    def __init__(self) -> None:
        self.text = ""
        self.pieces: list[tuple[tuple[int, int] | list[str], int]] = []  # ((begin, end) of strict text | texts, lines)
        self.group_names: list[str] = []
        self.gids = array("I")
        self.times = array("q")  # Unix seconds per line
        self.marks = bytearray()

    def __len__(self) -> int:
        return len(self.marks)

    def texts(self) -> Iterator[list[str]]:
        """The output text of each line, one list per chunk."""
        for piece, count in self.pieces:
            if isinstance(piece, list):
                yield piece
                continue
            begin, end = piece
            texts = self.text[begin:end].replace(" protected", "").split("\n")
            del texts[count:]
            yield texts

    def removed(self) -> int:
        return self.marks.count(0) + self.marks.count(1)

    def write(self, out: Callable[[str], Any]) -> None:
        words = [f"{m} " for m in _TO_MARK]
        pos = 0
        for texts in self.texts():
            end = pos + len(texts)
            out("\n".join(map(add, map(words.__getitem__, self.marks[pos:end]), texts)) + "\n")
            pos = end

    def json_rows(self) -> Iterator[dict[str, Any]]:
        pos = 0
        names = self.group_names
        for texts in self.texts():
            for text in texts:
                mark = self.marks[pos]
                yield {
                    "timestamp": text,
                    "mark": str(_TO_MARK[mark]),
                    "rule": _TO_RULE[mark],
                    "group": names[self.gids[pos]] or None,
                }
                pos += 1


def simulate(text: str, policy: KeepPolicy, zone: tzinfo) -> PruneResult:
    """Read ``text`` (one archive name or timestamp per line) and mark every line as PVE would."""
    from pveguard.backup.cli import parse_archive_lines

    result = PruneResult()
    result.text = text
    hours, minsecs = _Hours(zone), _MinSecs()
    groups = _Groups()
    typevmid = _TypeVmid(groups)
    times = result.times
    protected = bytearray()
    gids = result.gids
    number = 0  # lines before this chunk, counted as str.splitlines() does
    for begin, end in _chunks(text):
        chunk = text[begin:end]
        lines = chunk.count("\n") + (not chunk.endswith("\n"))
        if _STRICT.fullmatch(chunk) is not None:
            try:
                epoch = _strict_times(chunk, lines, hours, minsecs)
                chunk_gids = _strict_groups(chunk, lines, typevmid)
            except _Slow:
                pass
            else:
                protected.extend(_strict_flags(chunk, lines))
                times.extend(epoch)
                gids.extend(chunk_gids)
                result.pieces.append(((begin, end), lines))
                number += lines
                continue
        split = chunk.splitlines()
        parsed = parse_archive_lines(split, zone, first_number=number + 1)
        number += len(split)
        del split
        times.extend(int(when.timestamp()) for _, when, _, _ in parsed)
        protected.extend(flag for _, _, flag, _ in parsed)
        gids.extend(groups[group] for _, _, _, group in parsed)
        result.pieces.append(([line for line, _, _, _ in parsed], len(parsed)))
    result.group_names = list(groups)
    n = len(times)
    if len(groups) <= 1:
        result.marks = _marks(times, policy, cast(Sequence[bool], protected), zone)
        return result
    members: list[list[int]] = [[] for _ in groups]
    for i, g in enumerate(gids):
        members[g].append(i)
    marks = bytearray(n)
    for idx in members:
        for i, m in zip(
            idx, _marks([times[i] for i in idx], policy, [protected[i] != 0 for i in idx], zone), strict=True
        ):
            marks[i] = m
    result.marks = marks
    return result
