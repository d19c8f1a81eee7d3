"""PVE's prune-backups algorithm (PVE::Storage::prune_mark_backup_group) and vzdump archive names.

Pure functions: marks are computed per backup group from (id, ctime, protected) triples, in local
time (or the tz given), with the six ordered passes and first-writer-wins marks.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

RULES = ("keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly")

ARCHIVE_RX = re.compile(
    r"vzdump-(lxc|qemu|openvz)-([1-9][0-9]{2,8})-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2})"
    r"\.(tgz|(?:tar|vma)(?:\.(?:gz|lzo|zst|bz2))?)"
)


@dataclass(frozen=True)
class ArchiveName:
    """A parsed standard vzdump archive file name."""

    type: str
    vmid: int
    ctime: int
    ext: str


def parse_prune_backups(text: str) -> dict[str, int]:
    """`keep-last=3,keep-daily=7` -> {"keep-last": 3, "keep-daily": 7}; keep-all as 0/1."""
    out: dict[str, int] = {}
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = int(v)
    return out


def archive_name(kind: str, vmid: int, when: float, ext: str, tz: dt.tzinfo | None = None) -> str:
    """vzdump-<type>-<vmid>-YYYY_MM_DD-hh_mm_ss.<ext>, time in local time like vzdump."""
    stamp = dt.datetime.fromtimestamp(when, tz).strftime("%Y_%m_%d-%H_%M_%S")
    return f"vzdump-{kind}-{vmid}-{stamp}.{ext}"


def parse_archive_name(name: str, tz: dt.tzinfo | None = None) -> ArchiveName | None:
    """Parse a file name (or volid tail); None for non-standard names (never pruned)."""
    m = ARCHIVE_RX.fullmatch(name.rsplit("/", 1)[-1])
    if not m:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(3, 9))
    ctime = int(dt.datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp())
    return ArchiveName(m.group(1), int(m.group(2)), ctime, m.group(9))


def _period(rule: str, tz: dt.tzinfo | None) -> Callable[[int], str]:
    def key(ctime: int) -> str:
        t = dt.datetime.fromtimestamp(ctime, tz)
        if rule == "keep-last":
            return str(ctime)
        if rule == "keep-hourly":
            return t.strftime("%Y/%m/%d/%H")
        if rule == "keep-daily":
            return t.strftime("%Y/%m/%d")
        if rule == "keep-weekly":
            iso = t.isocalendar()
            return f"{iso[0]}/{iso[1]:02d}"
        if rule == "keep-monthly":
            return t.strftime("%Y/%m")
        return t.strftime("%Y")

    return key


def prune_marks(
    backups: Iterable[tuple[str, int, bool]], keep: dict[str, int], tz: dt.tzinfo | None = None
) -> dict[str, str]:
    """Marks for one backup group: id -> "keep" | "remove" | "protected".

    backups are (id, ctime, protected). Protected backups neither get removed nor count for rules.
    """
    entries = sorted(backups, key=lambda b: b[1], reverse=True)
    marks: dict[str, str] = {b[0]: "protected" for b in entries if b[2]}
    rules = {r: int(keep.get(r, 0)) for r in RULES}
    if keep.get("keep-all") or not any(v > 0 for v in rules.values()):
        for b in entries:
            marks.setdefault(b[0], "keep")
        return marks
    for rule in RULES:
        count = rules[rule]
        if count <= 0:
            continue
        pid = _period(rule, tz)
        already = {pid(b[1]) for b in entries if marks.get(b[0]) == "keep"}
        newly: set[str] = set()
        for bid, ctime, _prot in entries:
            if bid in marks:
                continue
            p = pid(ctime)
            if p in already:
                continue
            if p not in newly:
                if len(newly) >= count:
                    break
                newly.add(p)
                marks[bid] = "keep"
            else:
                marks[bid] = "remove"
    for b in entries:
        marks.setdefault(b[0], "remove")
    return marks
