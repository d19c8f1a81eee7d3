"""Test helpers: a seeded generator of PVE calendar events and `systemd-analyze calendar` as oracle.

The generator builds each expression twice, from the same random choices: the PVE text and the
systemd text that means the same thing (or None when systemd has no spelling for it). The rewrites
follow PVE's calendar-events.adoc and systemd.time(7): PVE's minute-only time `M` is systemd's `*:M`, and `*/N` (which
systemd 252 rejects) is spelled `start/N` with the field's first value (0 for hours/minutes/seconds,
1 for months/days).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_LONG = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


@dataclass(frozen=True)
class Generated:
    pve: str
    systemd: str | None  # None: systemd cannot express it (or spells it differently)
    # The same with every repetition written out as a list ("0/18" -> "0,18"): systemd 252 has
    # known bugs with repetitions that overflow at month ends (systemd#22665, systemd#40260).
    systemd_expanded: str | None = None


def _expand(a: int, last: int, step: int) -> str:
    return ",".join(str(v) for v in range(a, last + 1, step))


# One numeric field: (pve text, systemd text, systemd text with repetitions expanded).
_Comp = tuple[str, str, str]


def _component(rng: random.Random, low: int, high: int, star_start: int) -> _Comp:
    """One comma-list for a numeric field with values in [low, high]."""
    kind = rng.random()
    if kind < 0.2:
        return "*", "*", "*"
    if kind < 0.3:
        step = rng.randint(1, high)
        return f"*/{step}", f"{star_start}/{step}", _expand(star_start, high, step)
    items: list[str] = []
    expanded: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        sub = rng.random()
        a = rng.randint(low, high)
        if sub < 0.5:
            items.append(f"{a}")
            expanded.append(f"{a}")
        elif sub < 0.75:
            b = rng.randint(a, high)
            items.append(f"{a}..{b}")
            expanded.append(f"{a}..{b}")
        elif sub < 0.9:
            step = rng.randint(1, high)
            items.append(f"{a}/{step}")
            expanded.append(_expand(a, high, step))
        else:
            b = rng.randint(a, high)
            step = rng.randint(1, high)
            items.append(f"{a}..{b}/{step}")
            expanded.append(_expand(a, b, step))
    text = ",".join(items)
    return text, text, ",".join(expanded)


def _weekdays(rng: random.Random) -> tuple[str, str | None]:
    items: list[str] = []
    ok = True
    for _ in range(rng.choice([1, 1, 2, 3])):
        a = rng.randrange(7)
        name = rng.choice([_DAYS[a], _DAYS[a].upper(), _LONG[a], _DAYS[a].capitalize()])
        if rng.random() < 0.45:
            b = rng.randrange(7)
            if b < a:
                ok = False  # PVE wraps fri..mon round the week end; systemd 252 rejects it
            items.append(f"{name}..{_DAYS[b]}")
        else:
            items.append(name)
    text = ",".join(items)
    return text, (text if ok else None)


def generate(rng: random.Random) -> Generated:
    """One random PVE calendar event (UTC) with its systemd equivalents."""
    if rng.random() < 0.07:
        word = rng.choice(
            [
                "minutely",
                "hourly",
                "daily",
                "weekly",
                "monthly",
                "yearly",
                "annually",
                "quarterly",
                "semiannually",
                "semi-annually",
            ]
        )
        sd = {"semi-annually": "semiannually"}.get(word, word) + " UTC"
        return Generated(word + " UTC", sd, sd)
    pve: list[str] = []
    sd: list[str] = []
    ex: list[str] = []
    expressible = True
    have_date = rng.random() < 0.35
    have_wd = rng.random() < 0.35
    have_time = rng.random() < 0.8 or not (have_date or have_wd)
    if have_wd:
        p, s = _weekdays(rng)
        pve.append(p)
        if s is None:
            expressible = False
        else:
            sd.append(s)
            ex.append(s)
    if have_date:
        mon = _component(rng, 1, 12, 1)
        day = _component(rng, 1, 31, 1)
        if rng.random() < 0.5:
            y = rng.random()
            if y < 0.5:
                year = "*"
            elif y < 0.8:
                year = str(rng.randint(2000, 2110))
            else:
                a = rng.randint(2000, 2100)
                year = f"{a}..{rng.randint(a, 2120)}"
            pve.append(f"{year}-{mon[0]}-{day[0]}")
            sd.append(f"{year}-{mon[1]}-{day[1]}")
            ex.append(f"{year}-{mon[2]}-{day[2]}")
        else:
            pve.append(f"{mon[0]}-{day[0]}")
            sd.append(f"*-{mon[1]}-{day[1]}")
            ex.append(f"*-{mon[2]}-{day[2]}")
    if have_time:
        form = rng.random()
        m = _component(rng, 0, 59, 0)
        if form < 0.3:
            # PVE's minute-only form: every hour at these minutes.
            pve.append(m[0])
            sd.append(f"*:{m[1]}")
            ex.append(f"*:{m[2]}")
        else:
            h = _component(rng, 0, 23, 0)
            if form < 0.75:
                pve.append(f"{h[0]}:{m[0]}")
                sd.append(f"{h[1]}:{m[1]}")
                ex.append(f"{h[2]}:{m[2]}")
            else:
                sec = _component(rng, 0, 59, 0)
                pve.append(f"{h[0]}:{m[0]}:{sec[0]}")
                sd.append(f"{h[1]}:{m[1]}:{sec[1]}")
                ex.append(f"{h[2]}:{m[2]}:{sec[2]}")
    pve_text = " ".join(pve) + " UTC"
    if not expressible:
        return Generated(pve_text, None, None)
    return Generated(pve_text, " ".join(sd) + " UTC", " ".join(ex) + " UTC")


_LINE = re.compile(r"(?:Next elapse|Iter\. #\d+):\s+(\w+ \S+ \S+ \S+|never)")
_UTC_LINE = re.compile(r"\(in UTC\):\s+\w+ (\S+ \S+) UTC")


def systemd_next(expr: str, base: datetime, count: int, tz: str = "UTC") -> list[datetime] | None:
    """Elapses after `base` per `systemd-analyze calendar`; None when systemd rejects `expr`."""
    assert SYSTEMD_ANALYZE is not None
    base_text = base.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", f"--iterations={count}", f"--base-time={base_text}", expr],
        capture_output=True, text=True, env={**os.environ, "TZ": tz, "LC_ALL": "C"}, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    if tz != "UTC":
        stamps = _UTC_LINE.findall(proc.stdout)
    else:
        stamps = [" ".join(m.split()[1:3]) for m in _LINE.findall(proc.stdout) if m != "never"]
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for s in stamps]
