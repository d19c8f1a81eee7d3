"""Sizes and durations as admins write them: `4G`, `4GB`, `4096M`, `512MiB`, `7d`, `1h`.

Sizes are binary everywhere (1G = 1024 MiB), like `pct` and the PVE GUI: a strategy that says
"4 GB of memory" means the 4096 MiB PVE would configure.
"""

from __future__ import annotations

import re
from datetime import timedelta

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

_DURATION_RE = re.compile(r"(\d+)\s*(w|d|h|m|s)", re.IGNORECASE)
_DURATION_FACTORS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}

MIB = 1 << 20
GIB = 1 << 30
# Bounds that no real value reaches but that keep arithmetic (timedelta, float) from overflowing.
MAX_SIZE = 1 << 60  # 1 EiB
MAX_DURATION = timedelta(days=36500)  # 100 years


def parse_size(value: str | int | float) -> int:
    """Return a size in bytes; a bare number is bytes. Raise ValueError with a hint on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; use e.g. 512M or 2G")
    if isinstance(value, int | float):
        if value != value:  # NaN
            raise ValueError(f"{value!r} is not a size; use e.g. 512M or 2G")
        if value < 0:
            raise ValueError(f"{value!r} is not a size; sizes cannot be negative")
        return _bounded_size(value, value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{_cut(value)} is not a size; use e.g. 512M or 2G")
    number, unit = m.groups()
    return _bounded_size(float(number) * _SIZE_FACTORS[unit.upper()], value)


def _bounded_size(n: float, value: object) -> int:
    if n > MAX_SIZE:  # also catches inf, which int() cannot convert
        raise ValueError(f"{_cut(value)} is too large for a size; the largest is {format_size(MAX_SIZE)}")
    return int(n)


def _cut(value: object) -> str:
    """repr() of a rejected value, short enough for one message line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def format_size(n: int) -> str:
    """Shortest exact binary form: 4294967296 -> '4G', 536870912 -> '512M'."""
    for unit in ("P", "T", "G", "M", "K"):
        f = _SIZE_FACTORS[unit]
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return str(n)


def parse_duration(value: str | int | timedelta) -> timedelta:
    """`90s`, `15m`, `1h`, `7d`, `2w`, `1h30m`; a bare number is seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; use e.g. 30s, 15m, 1h or 7d")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a duration; durations cannot be negative")
        seconds = value
    else:
        text = str(value).strip()
        if len(text) > 64:  # also keeps int() below its digit limit
            raise ValueError(f"{_cut(value)} is not a duration; use e.g. 30s, 15m, 1h or 7d")
        if text.isascii() and text.isdigit():
            seconds = int(text)
        else:
            parts = _DURATION_RE.findall(text)
            if not parts or _DURATION_RE.sub("", text).strip():
                raise ValueError(f"{_cut(value)} is not a duration; use e.g. 30s, 15m, 1h or 7d")
            seconds = sum(int(n) * _DURATION_FACTORS[u.lower()] for n, u in parts)
    # Compared as numbers first: timedelta() itself overflows (OverflowError) far below huge inputs.
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{_cut(value)} is too long for a duration; the longest is {format_duration(MAX_DURATION)}")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    """Shortest form that reads back to the same value: 7 days -> '7d', 90 s -> '1m30s'."""
    seconds = int(td.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        f = _DURATION_FACTORS[unit]
        if seconds >= f:
            out.append(f"{seconds // f}{unit}")
            seconds %= f
    return "".join(out)
