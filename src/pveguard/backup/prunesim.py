"""The data path of ``pveguard backup prune-sim``, fast for a million archive names.

The input is UTF-8 bytes, read in chunks of about 50,000 lines, each by the fastest reader that
settles it exactly:

1. **uniform**: every line is the same strict standard archive name
   (``[dir/]vzdump-<type>-<vmid>-YYYY_MM_DD-hh_mm_ss.<ext>[ protected]``, ASCII) up to its digits,
   so each field sits at a fixed offset. One ``bytes.translate`` + compare proves that; the fields
   are read as byte columns (``chunk[offset::width]``) and combined with whole-chunk integer
   arithmetic (a column of digits is one big int, every line a fixed-width lane of it): no Python
   object per line except each line's time and the one dict look-up of its local hour;
2. **strict**: every line is a strict standard name, but of varying shape (several guests, types,
   extensions): one C-level regex ``fullmatch`` proves it, ``findall`` and dict look-ups read it;
3. anything else (plain timestamps, comments, blanks, odd spacing, renamed archives, bad lines) goes
   through :func:`pveguard.backup.cli.parse_archive_lines`, the precise per-line reader, so results
   and error messages are those of the per-line path.

Timestamps are identical in all three: the local wall-clock time of a name is turned into Unix
seconds with the earlier instant in a repeated DST hour (``fold=0``), through a per-local-hour
cache; hours in which the offset changes are computed per item.
"""

from __future__ import annotations

import codecs
import re
import struct
import sys
from array import array
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta, timezone, tzinfo
from operator import add, itemgetter
from typing import Any, TextIO, cast
from zoneinfo import ZoneInfo

from pveguard.backup.retention import _TO_MARK, _TO_RULE, KeepPolicy, _marks, _Offsets

__all__ = ["PruneResult", "simulate"]

CHUNK_LINES = 50_000
_ENCODING = ("utf-8", "surrogatepass")  # str <-> bytes without loss (stdin may carry surrogates)

_EXT = r"(?:tgz|(?:tar|vma)(?:\.(?:gz|lzo|zst|bz2))?)"
_LINE = (
    r"(?!#)(?:[^\s/]*+/)*+vzdump-(?:lxc|openvz|qemu)-[1-9][0-9]{2,8}-[0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2}"
    rf"\.{_EXT}(?: protected)?"
)
_STRICT = re.compile(f"(?:{_LINE}\n)*+(?:{_LINE})?")  # fullmatch: every line of a chunk is strict
_STAMP = re.compile(r"-([0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2})\.")
_GROUP = re.compile(r"vzdump-([a-z]+-[0-9]+)-")
# One strict name (no flag), its type, vmid and time stamp as groups: the shape of a uniform chunk.
_NAME = re.compile(
    r"(?!#)(?:[^\s/]*+/)*+vzdump-(lxc|openvz|qemu)-([1-9][0-9]{2,8})-"
    rf"([0-9]{{4}}_[0-9]{{2}}_[0-9]{{2}}-[0-9]{{2}}_[0-9]{{2}}_[0-9]{{2}})\.{_EXT}"
)
_HOUR, _MINSEC = itemgetter(slice(0, 13)), itemgetter(slice(14, 19))  # YYYY_MM_DD-hh, mm_ss
_EPOCH_DATE = datetime(1970, 1, 1)
_DIGITS = b"0123456789"
_ZERO_DIGITS = bytes.maketrans(_DIGITS, b"0" * 10)  # every digit -> '0': a line's shape
_VALUE = bytes.maketrans(_DIGITS, bytes(range(10)))  # digit -> its value
_TENS = bytes.maketrans(_DIGITS, bytes(range(0, 100, 10)))  # digit -> 10 x its value
_ORDER = sys.byteorder
_LOW, _HIGH = (0, 1) if _ORDER == "little" else (1, 0)  # bytes of a native 16-bit lane
# Output word classes of the internal marks: remove (0, 1), protected (2), keep (3...).
_CLASS = bytes([0, 0, 1] + [2] * 253)
_WORDS = (b"remove ", b"protected ", b"keep ")


class _Slow(Exception):
    """A chunk that a faster reader does not settle: read it with a slower one."""


class _Hours(dict[Any, int]):
    """``YYYY_MM_DD-hh`` -> Unix seconds of that local hour's start (fold=0), for hours in which
    local - UTC is the same throughout; hours with a DST change inside are listed in ``mixed`` and
    computed per item."""

    def __init__(self, zone: tzinfo) -> None:
        super().__init__()
        self.zone = zone
        self.mixed: set[Any] = set()
        self.local: dict[Any, int] = {}  # key -> local wall-clock seconds since 1970 of the hour
        # ZoneInfo and fixed offsets give the offset of a naive wall-clock time as it would be
        # read with fold=0, which is what an aware datetime's timestamp() subtracts: one call
        # instead of replace() + timestamp(). Any other tzinfo goes the long way.
        self.naive_offset = isinstance(zone, (ZoneInfo, timezone))

    def exact(self, local: int) -> int:
        """Unix seconds of the local wall-clock time ``local`` (seconds since 1970), fold=0."""
        when = _EPOCH_DATE + timedelta(seconds=local)
        if self.naive_offset:
            offset = self.zone.utcoffset(when)
            if offset is not None and not offset.microseconds:
                return local - offset.days * 86400 - offset.seconds
        return int(when.replace(tzinfo=self.zone, fold=0).timestamp())

    def __missing__(self, key: str) -> int:
        return self.start(key, int(key[:4]), int(key[5:7]), int(key[8:10]), int(key[11:13]))

    def start(self, key: Any, year: int, month: int, day: int, hour: int) -> int:
        """Unix seconds of the start of that local hour, stored under ``key`` (_Slow: no such hour)."""
        try:
            d = date(year, month, day)
        except ValueError:
            raise _Slow from None
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


class _PackedHours(_Hours):
    """:class:`_Hours` keyed by a uniform chunk's packed hour (see :func:`_uniform`): the native
    64-bit int of the bytes ``[YY, YY, M, M, D, D, h, h]`` -- the year as two values 0..99, the
    rest as ASCII digits."""

    def __missing__(self, key: Any) -> int:
        b = int(key).to_bytes(8, _ORDER)
        return self.start(key, b[0] * 100 + b[1], int(b[2:4]), int(b[4:6]), int(b[6:8]))


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


class _PackedVmids(dict[int, int]):
    """A uniform chunk's packed vmid (its ASCII digits in a native 64-bit int) -> group number."""

    def __init__(self, typevmid: _TypeVmid, kind: str, digits: int) -> None:
        super().__init__()
        self.typevmid, self.kind, self.digits = typevmid, kind, digits

    def __missing__(self, key: int) -> int:
        vmid = key.to_bytes(8, _ORDER)[: self.digits].decode("ascii")
        value = self[key] = self.typevmid[f"{self.kind}-{vmid}"]
        return value


class _Shape:
    """Where the fields sit in the lines of a uniform chunk (one line's digits -> '0' is the key)."""

    __slots__ = ("fixed", "kind", "stamp", "vmid")

    def __init__(self, match: re.Match[str], shape: bytes) -> None:
        self.kind = match.group(1)
        self.vmid = match.span(2)
        self.stamp = match.start(3)
        free = set(range(*self.vmid)) | set(range(self.stamp, self.stamp + 19))
        # Digits elsewhere (a directory, the '2' of bz2): the same in every line, or another reader.
        self.fixed = [i for i, c in enumerate(shape) if c == 0x30 and i not in free]


class _Reader:
    """Per-simulation caches shared by the chunk readers."""

    def __init__(self, zone: tzinfo) -> None:
        self.hours, self.minsecs = _Hours(zone), _MinSecs()
        self.packed_hours = _PackedHours(zone)
        self.groups = _Groups()
        self.typevmid = _TypeVmid(self.groups)
        self.shapes: dict[bytes, _Shape] = {}
        self.vmids: dict[tuple[str, int], _PackedVmids] = {}


def _chunks(data: bytes) -> Iterator[tuple[int, int]]:
    """(begin, end) of pieces of ``data`` that end at a newline (the last one may not)."""
    size = len(data)
    start = 0
    step = 64 * CHUNK_LINES  # bytes; vzdump names are ~45-60 characters
    while start < size:
        end = data.find(b"\n", start + step)
        end = size if end < 0 else end + 1
        yield start, end
        start = end


def _uniform_lines(chunk: bytes) -> tuple[bytes, int, int]:
    """(the chunk without ' protected' flags and with a final newline, line width, lines)."""
    if not chunk.endswith(b"\n"):
        chunk += b"\n"
    bare = chunk.replace(b" protected\n", b"\n")
    width = bare.find(b"\n") + 1
    return bare, width, len(bare) // width


def _pairs(tens: bytes, ones: bytes) -> bytes:
    """Per line, the value 0..99 of two digit columns, one byte each: both columns as one big int
    each (a line = one byte lane, values < 256, so no carry crosses lanes)."""
    n = len(ones)
    total = int.from_bytes(tens.translate(_TENS), "little") + int.from_bytes(ones.translate(_VALUE), "little")
    return total.to_bytes(n, "little")


def _lanes(minutes: bytes, seconds: bytes, width: int, base: int = 0) -> array[int]:
    """Per line ``base + 60 * mm + ss`` (``base``: one big int of native lanes) in a lane of ``width``
    bytes: (ss + 256 mm) - 196 mm in every lane, each result in 0..2^(8 width) - 1, so no carry or
    borrow crosses lanes."""
    n = len(minutes)
    lanes = bytearray(width * n)
    lanes[_LOW * (width - 1) :: width] = seconds  # the lane's lowest byte
    lanes[(_LOW * (width - 1) + (1 if _ORDER == "little" else -1)) :: width] = minutes
    high = bytearray(width * n)
    high[_LOW * (width - 1) :: width] = minutes
    value = base + int.from_bytes(lanes, _ORDER) - 196 * int.from_bytes(high, _ORDER)
    return array("H" if width == 2 else "q", value.to_bytes(width * n, _ORDER))


_PAIR_CHANGED = bytes([0] + [1] * 255)
_SPARSE_RUNS = 8  # lines per local hour (chunk average) below which each line is looked up alone
_INT64 = struct.Struct("=q")


def _hour_runs(
    col: list[bytes], keys: array[int], minutes: bytes, seconds: bytes, table: _PackedHours
) -> array[int] | None:
    """Unix seconds per line when lines of one local hour come in runs (a sorted listing): each
    run's hour start looked up once, repeated in 64-bit lanes and added to 60 * mm + ss of every
    line as one big int. None when there are too many runs or an hour starts before 1970."""
    n = len(keys)
    changed = 0
    for c in (col[i] for i in (0, 1, 2, 3, 5, 6, 8, 9, 11, 12)):  # the hour's digits
        changed |= int.from_bytes(c[1:], "little") ^ int.from_bytes(c[:-1], "little")
    pairs = changed.to_bytes(n - 1, "little").translate(_PAIR_CHANGED)  # 1: line i + 1 starts a run
    if pairs.count(1) * _SPARSE_RUNS > n:
        return None
    parts = []
    start = 0
    i = pairs.find(1)
    while True:
        end = n if i < 0 else i + 1
        base = table[keys[start]]
        if base < 0:
            return None
        parts.append(_INT64.pack(base) * (end - start))
        if i < 0:
            break
        start = end
        i = pairs.find(1, end)
    return _lanes(minutes, seconds, 8, int.from_bytes(b"".join(parts), _ORDER))


def _uniform(chunk: bytes, reader: _Reader) -> tuple[array[int], array[int], bytearray]:
    """Unix seconds, group numbers and protected flags of each line of a uniform chunk (_Slow: it
    is not uniform, or a time or vmid needs a slower reader)."""
    if not chunk.isascii():
        raise _Slow
    bare, width, n = _uniform_lines(chunk)
    if width <= 1 or n * width != len(bare):
        raise _Slow
    shape_line = bare[:width].translate(_ZERO_DIGITS)
    shape = reader.shapes.get(shape_line)
    if shape is None:
        match = _NAME.fullmatch(bare[: width - 1].decode("ascii"))
        if match is None:
            raise _Slow
        shape = reader.shapes[shape_line] = _Shape(match, shape_line)
    if bare.translate(_ZERO_DIGITS) != shape_line * n:
        raise _Slow
    for i in shape.fixed:
        column = bare[i::width]
        if column.count(column[:1]) != n:
            raise _Slow

    # vmids: [1-9][0-9]{2,8}; one guest per chunk is the rule, several are looked up per line.
    lo, hi = shape.vmid
    if b"0" in bare[lo::width]:
        raise _Slow
    vmid_columns = [bare[i::width] for i in range(lo, hi)]
    if all(column.count(column[:1]) == n for column in vmid_columns):
        gids = array("I", [reader.typevmid[f"{shape.kind}-{bare[lo:hi].decode('ascii')}"]]) * n
    elif hi - lo <= 8:
        lanes = bytearray(8 * n)
        for j, column in enumerate(vmid_columns):
            lanes[j::8] = column
        form = (shape.kind, hi - lo)
        packed = reader.vmids.get(form)
        if packed is None:
            packed = reader.vmids[form] = _PackedVmids(reader.typevmid, *form)
        gids = array("I", map(packed.__getitem__, array("Q", lanes)))
    else:
        raise _Slow

    # Time stamps YYYY_MM_DD-hh_mm_ss at offset s: the local hour packed into a 64-bit lane per
    # line (key of _PackedHours), minutes and seconds as 60 * mm + ss in a 16-bit lane per line.
    s = shape.stamp
    col = [bare[s + i :: width] for i in range(19)]
    if col[14].translate(None, b"012345") or col[17].translate(None, b"012345"):
        raise _Slow  # a minute or second above 59
    hours = bytearray(8 * n)
    hours[0::8] = _pairs(col[0], col[1])
    hours[1::8] = _pairs(col[2], col[3])
    for j, i in enumerate((5, 6, 8, 9, 11, 12), 2):
        hours[j::8] = col[i]
    minutes, seconds = _pairs(col[14], col[15]), _pairs(col[17], col[18])
    minsec = _lanes(minutes, seconds, 2)
    keys = array("Q", hours)
    table = reader.packed_hours
    epoch = _hour_runs(col, keys, minutes, seconds, table)
    if epoch is None:
        epoch = array("q", map(add, map(table.__getitem__, keys), minsec))
    if table.mixed and not table.mixed.isdisjoint(keys):
        for i, key in enumerate(keys):
            if key in table.mixed:
                epoch[i] = table.exact(table.local[key] + minsec[i])

    flags = bytearray(n)
    pos = chunk.find(b" protected\n")
    before = 0  # flagged lines before this one: 10 characters longer each
    while pos >= 0:
        flags[(pos + 1 - width - 10 * before) // width] = 1
        before += 1
        pos = chunk.find(b" protected\n", pos + 11)
    if not chunk.endswith(b"\n") and chunk.endswith(b" protected"):
        flags[n - 1] = 1
    return epoch, gids, flags


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


_UNIFORM, _STRICT_TEXT, _TEXTS = 0, 1, 2  # kinds of PruneResult.pieces


class PruneResult:
    """Per input line (in order) its mark; texts are re-derived chunk by chunk when written."""

    def __init__(self) -> None:
        self.data = b""
        # (kind, (begin, end) of data | the texts, lines) per chunk
        self.pieces: list[tuple[int, tuple[int, int] | list[str], int]] = []
        self.group_names: list[str] = []
        self.gids = array("I")
        self.times = array("q")  # Unix seconds per line
        self.marks = bytearray()

    def __len__(self) -> int:
        return len(self.marks)

    def texts(self) -> Iterator[list[str]]:
        """The output text of each line, one list per chunk."""
        for kind, piece, count in self.pieces:
            yield self._texts(kind, piece, count)

    def _texts(self, kind: int, piece: tuple[int, int] | list[str], count: int) -> list[str]:
        if isinstance(piece, list):
            return piece
        begin, end = piece
        if kind == _UNIFORM:
            text = _uniform_lines(self.data[begin:end])[0].decode("ascii")
        else:
            text = self.data[begin:end].decode(*_ENCODING).replace(" protected", "")
        texts = text.split("\n")
        del texts[count:]
        return texts

    def removed(self) -> int:
        return self.marks.count(0) + self.marks.count(1)

    def output(self) -> Iterator[str | bytes]:
        """The text output, ``<mark> <text>`` per line, in pieces: ASCII bytes for uniform chunks."""
        words = [f"{m} " for m in _TO_MARK]
        pos = 0
        for kind, piece, count in self.pieces:
            end = pos + count
            if kind == _UNIFORM:
                assert isinstance(piece, tuple)
                yield self._uniform_output(piece, self.marks[pos:end])
            else:
                lines = self._texts(kind, piece, count)
                yield "\n".join(map(add, map(words.__getitem__, self.marks[pos:end]), lines)) + "\n"
            pos = end

    def _uniform_output(self, piece: tuple[int, int], marks: bytearray) -> bytes:
        """The output of a uniform chunk: the chunk with its most common word put before every line
        (two bytes.replace), the other lines' words set one by one."""
        bare, width, n = _uniform_lines(self.data[piece[0] : piece[1]])
        classes = marks.translate(_CLASS)
        common = max(range(3), key=classes.count)
        word = _WORDS[common]
        other = n - classes.count(common)
        if other > n // 4:  # mixed: one word per line
            lines = bare.split(b"\n")
            del lines[n:]
            return b"\n".join(map(add, map(_WORDS.__getitem__, classes), lines)) + b"\n"
        marked = word + bare.replace(b"\n", b"\n" + word)
        step = width + len(word)
        if not other:
            return marked[: n * step]
        view = memoryview(marked)
        parts: list[bytes | memoryview] = []
        last = 0
        other_bytes = classes.translate(bytes(1 if c != common else 0 for c in range(256)))
        i = other_bytes.find(1)
        while i >= 0:
            parts += (view[last : i * step], _WORDS[classes[i]], bare[i * width : (i + 1) * width])
            last = (i + 1) * step
            i = other_bytes.find(1, i + 1)
        parts.append(view[last : n * step])
        return b"".join(parts)

    def write(self, stream: TextIO) -> None:
        """Write :meth:`output` to a text stream; ASCII pieces straight to its byte buffer when it
        has one and encodes UTF-8 (the same bytes, without decoding and encoding them again)."""
        buffer = getattr(stream, "buffer", None)
        try:
            raw = buffer is not None and codecs.lookup(stream.encoding).name == "utf-8"
        except (AttributeError, LookupError, TypeError):
            raw = False
        for part in self.output():
            if isinstance(part, str):
                stream.write(part)
            elif raw:
                stream.flush()
                cast(Any, buffer).write(part)
            else:
                stream.write(part.decode("ascii"))

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


def simulate(text: str | bytes, policy: KeepPolicy, zone: tzinfo) -> PruneResult:
    """Read ``text`` (one archive name or timestamp per line; bytes: UTF-8) and mark every line
    as PVE would."""
    from pveguard.backup.cli import parse_archive_lines

    data = text.encode(*_ENCODING) if isinstance(text, str) else text
    result = PruneResult()
    result.data = data
    reader = _Reader(zone)
    groups, typevmid = reader.groups, reader.typevmid
    times = result.times
    protected = bytearray()
    gids = result.gids
    number = 0  # lines before this chunk, counted as str.splitlines() does
    for begin, end in _chunks(data):
        raw = data[begin:end]
        try:
            epoch, chunk_gids, flags = _uniform(raw, reader)
        except _Slow:
            pass
        else:
            times.extend(epoch)
            gids.extend(chunk_gids)
            protected.extend(flags)
            result.pieces.append((_UNIFORM, (begin, end), len(flags)))
            number += len(flags)
            continue
        chunk = raw.decode(*_ENCODING)
        del raw
        lines = chunk.count("\n") + (not chunk.endswith("\n"))
        if _STRICT.fullmatch(chunk) is not None:
            try:
                strict_epoch = _strict_times(chunk, lines, reader.hours, reader.minsecs)
                strict_gids = _strict_groups(chunk, lines, typevmid)
            except _Slow:
                pass
            else:
                protected.extend(_strict_flags(chunk, lines))
                times.extend(strict_epoch)
                gids.extend(strict_gids)
                result.pieces.append((_STRICT_TEXT, (begin, end), lines))
                number += lines
                continue
        split = chunk.splitlines()
        parsed = parse_archive_lines(split, zone, first_number=number + 1)
        number += len(split)
        del split
        times.extend(int(when.timestamp()) for _, when, _, _ in parsed)
        protected.extend(flag for _, _, flag, _ in parsed)
        gids.extend(groups[group] for _, _, _, group in parsed)
        result.pieces.append((_TEXTS, [line for line, _, _, _ in parsed], len(parsed)))
    result.group_names = list(groups)
    n = len(times)
    if len(groups) <= 1:
        result.marks = _marks(times, policy, cast(Sequence[bool], protected), zone)
        return result
    # Per group, its lines in input order: one stable sort by group number, cut at the group sizes
    # (counted in C); columns gathered and marks scattered with map, no Python step per line.
    order = sorted(range(n), key=gids.__getitem__)
    sizes = Counter(gids)
    offsets = _Offsets(zone)  # one cache of the zone's offsets for all groups
    marks = bytearray(n)
    start = 0
    for g in range(len(groups)):
        members = order[start : start + sizes[g]]
        start += sizes[g]
        group_marks = _marks(
            array("q", map(times.__getitem__, members)), policy,
            cast(Sequence[bool], bytes(map(protected.__getitem__, members))), zone, offsets,
        )  # fmt: skip
        deque(map(marks.__setitem__, members, group_marks), maxlen=0)
    result.marks = marks
    return result
