"""vzdump archive names: make them, read them back, group a dump directory, plan a prune.

Names follow ``PVE::VZDump`` / ``PVE::Storage::archive_info`` (PVE's
``PVE/VZDump.pm`` and ``PVE/Storage.pm``):
``vzdump-<type>-<vmid>-YYYY_MM_DD-hh_mm_ss.<ext>``, type ``lxc``/``qemu``/``openvz``, vmid
``[1-9][0-9]{2,8}``, the time is the **local** start time, ext ``tgz`` or ``tar``/``vma`` with an
optional ``.gz``/``.lzo``/``.zst``/``.bz2``. Companions: ``<name without ext>.log``,
``<archive>.notes`` and the ``<archive>.protected`` sentinel. Archives whose name only matches the
loose pattern are "renamed" and, as in PVE, never pruned; ``.dat``/``.tmp`` are in progress.
Pure functions: no file system access here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from pveguard.backup.retention import KeepPolicy, Mark, mark_archives
from pveguard.errors import UsageError

__all__ = [
    "ArchiveName",
    "DumpListing",
    "PrunePlan",
    "archive_name",
    "classify",
    "parse_archive_name",
    "plan_prune",
]

_LOOSE = re.compile(r"^(vzdump-(lxc|openvz|qemu)-.+\.(tgz|(?:tar|vma)(?:\.(gz|lzo|zst|bz2))?))$")
_STD = re.compile(
    r"^(vzdump-(lxc|openvz|qemu)-([1-9][0-9]{2,8})-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2}))"
    r"\.(tgz|(?:tar|vma)(?:\.(?:gz|lzo|zst|bz2))?)$"
)
_COMPRESSION_EXT = {"zstd": "zst", "zst": "zst", "gzip": "gz", "gz": "gz", "lzo": "lzo", "bz2": "bz2", "0": "", "": ""}


@dataclass(frozen=True)
class ArchiveName:
    """What a vzdump archive's file name says."""

    filename: str
    type: str
    extension: str  # tgz, tar, tar.zst, vma.gz, ...
    compression: str | None  # gz, lzo, zst, bz2 (tgz -> gz), None = uncompressed
    is_std_name: bool
    vmid: int | None = None
    local_time: datetime | None = None  # naive local wall-clock time of the backup start
    basename: str | None = None  # name without extension (standard names only)

    @property
    def log_filename(self) -> str | None:
        return f"{self.basename}.log" if self.basename else None

    @property
    def notes_filename(self) -> str:
        return f"{self.filename}.notes"

    @property
    def protected_filename(self) -> str:
        return f"{self.filename}.protected"

    def timestamp(self, zone: tzinfo) -> int | None:
        """The backup time as Unix seconds, reading the name in ``zone`` (PVE: timelocal).

        In the repeated hour of a DST switch the earlier instant is taken; callers with the file's
        mtime can break that tie.
        """
        if self.local_time is None:
            return None
        return int(self.local_time.replace(tzinfo=zone, fold=0).timestamp())


def parse_archive_name(name: str) -> ArchiveName | None:
    """Read a vzdump archive name; None when ``name`` is no archive (log, notes, foreign file)."""
    loose = _LOOSE.match(name)
    if loose is None:
        return None
    filename, type_, extension, comp = loose.group(1), loose.group(2), loose.group(3), loose.group(4)
    compression = "gz" if extension == "tgz" else comp
    std = _STD.match(name)
    if std is None or std.group(2) != type_ or std.group(10) != extension:
        return ArchiveName(filename, type_, extension, compression, is_std_name=False)
    y, mo, d, h, mi, s = (int(std.group(i)) for i in range(4, 10))
    try:
        when = datetime(y, mo, d, h, mi, s)
    except ValueError:
        # timelocal would die on 2024_02_30; such a file is not a usable standard archive.
        return ArchiveName(filename, type_, extension, compression, is_std_name=False)
    return ArchiveName(
        filename, type_, extension, compression, is_std_name=True,
        vmid=int(std.group(3)), local_time=when, basename=std.group(1),
    )  # fmt: skip


def archive_name(
    guest_type: str, vmid: int, when: datetime, compression: str = "zstd", zone: tzinfo | None = None
) -> str:
    """The file name vzdump gives a backup of ``vmid`` started at ``when`` (local time).

    ``when`` naive = already local; aware = converted to ``zone`` (default: the machine's).
    ``compression``: zstd, gzip, lzo, bz2 or 0 (none); LXC archives are tar, VMs vma.
    """
    if guest_type not in ("lxc", "qemu", "openvz"):
        raise UsageError(f"unknown guest type {guest_type!r}", hint="use lxc or qemu")
    if not 100 <= vmid <= 999_999_999:
        raise UsageError(f"guest id {vmid} is outside PVE's range 100..999999999")
    ext = _COMPRESSION_EXT.get(compression)
    if ext is None:
        raise UsageError(f"unknown compression {compression!r}", hint="use zstd, gzip, lzo, bz2 or 0")
    if when.tzinfo is not None:
        if zone is None:
            from pveguard.backup.calendar import local_zone

            zone = local_zone()
        when = when.astimezone(zone)
    fmt = "vma" if guest_type == "qemu" else "tar"
    suffix = f"{fmt}.{ext}" if ext else fmt
    return f"vzdump-{guest_type}-{vmid}-{when:%Y_%m_%d-%H_%M_%S}.{suffix}"


@dataclass
class DumpListing:
    """A dump directory sorted into what PVE would see."""

    archives: dict[tuple[str, int], list[ArchiveName]] = field(default_factory=dict)  # standard, per group
    renamed: list[ArchiveName] = field(default_factory=list)  # loose names: never pruned
    in_progress: list[str] = field(default_factory=list)  # .dat / .tmp of running backups
    companions: list[str] = field(default_factory=list)  # .log .notes .protected
    foreign: list[str] = field(default_factory=list)


def classify(names: Iterable[str]) -> DumpListing:
    """Sort the names of one dump directory (e.g. ``os.listdir``)."""
    listing = DumpListing()
    for name in sorted(names):
        parsed = parse_archive_name(name)
        if parsed is not None:
            if parsed.is_std_name and parsed.vmid is not None:
                listing.archives.setdefault((parsed.type, parsed.vmid), []).append(parsed)
            else:
                listing.renamed.append(parsed)
        elif name.startswith("vzdump-") and (name.endswith(".dat") or name.endswith(".tmp") or ".tmp" in name):
            listing.in_progress.append(name)
        elif name.startswith("vzdump-") and name.endswith((".log", ".notes", ".protected")):
            listing.companions.append(name)
        else:
            listing.foreign.append(name)
    return listing


@dataclass(frozen=True)
class PrunePlan:
    """Per archive its mark, and the files a prune would delete (archive, .log, .notes)."""

    marks: dict[str, Mark]
    delete: tuple[str, ...]


def plan_prune(
    names: Iterable[str],
    policy: KeepPolicy,
    zone: tzinfo,
    guest: tuple[str, int] | None = None,
    mtimes: Mapping[str, float] | None = None,
) -> PrunePlan:
    """What PVE's prune would do in a dump directory, per guest group (or only ``guest``).

    Archives with a ``.protected`` sentinel are protected; renamed archives are left alone.
    ``mtimes`` (file modification times) only break the tie in a DST repeated hour.
    """
    all_names = list(names)
    present = set(all_names)
    listing = classify(all_names)
    marks: dict[str, Mark] = {}
    delete: list[str] = []
    for group, archives in sorted(listing.archives.items()):
        if guest is not None and group != guest:
            continue
        stamps = []
        for a in archives:
            ts = a.timestamp(zone)
            assert ts is not None
            if mtimes and a.filename in mtimes and a.local_time is not None:
                later = a.local_time.replace(tzinfo=zone, fold=1).timestamp()
                if abs(later - mtimes[a.filename]) < abs(ts - mtimes[a.filename]):
                    ts = int(later)
            stamps.append(ts)
        protected = [a.protected_filename in present for a in archives]
        for a, mark in zip(archives, mark_archives(stamps, policy, protected, zone), strict=True):
            marks[a.filename] = mark
            if mark is Mark.REMOVE:
                delete.append(a.filename)
                for extra in (a.log_filename, a.notes_filename):
                    if extra and extra in present:
                        delete.append(extra)
    return PrunePlan(marks=marks, delete=tuple(delete))


def utc_stamp(ts: int) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (for reports)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
