"""vzdump archive names, dump-directory classification and prune planning (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from pveguard.backup.archive import archive_name, classify, parse_archive_name, plan_prune
from pveguard.backup.retention import KeepPolicy, Mark
from pveguard.errors import UsageError

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("lxc", 101, datetime(2024, 1, 1, 2, 0, 0)), "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst"),
        (("lxc", 101, datetime(2024, 1, 1, 2, 0, 0), "gzip"), "vzdump-lxc-101-2024_01_01-02_00_00.tar.gz"),
        (("lxc", 123456789, datetime(2024, 12, 31, 23, 59, 59), "0"), "vzdump-lxc-123456789-2024_12_31-23_59_59.tar"),
        (("qemu", 100, datetime(2024, 6, 1, 0, 0, 0), "lzo"), "vzdump-qemu-100-2024_06_01-00_00_00.vma.lzo"),
        # aware times are written in local time, as vzdump does (strftime localtime)
        (("lxc", 200, datetime(2024, 7, 1, 0, 30, tzinfo=UTC), "zstd", BERLIN),
         "vzdump-lxc-200-2024_07_01-02_30_00.tar.zst"),
    ],
)  # fmt: skip
def test_archive_name(args: tuple, expected: str) -> None:  # type: ignore[type-arg]
    assert archive_name(*args) == expected
    parsed = parse_archive_name(expected)
    assert parsed is not None and parsed.is_std_name and parsed.vmid == args[1]


def test_parse_standard_name_and_companions() -> None:
    a = parse_archive_name("vzdump-lxc-101-2024_01_01-02_00_00.tar.zst")
    assert a is not None
    assert (a.type, a.vmid, a.extension, a.compression) == ("lxc", 101, "tar.zst", "zst")
    assert a.local_time == datetime(2024, 1, 1, 2, 0, 0)
    assert a.log_filename == "vzdump-lxc-101-2024_01_01-02_00_00.log"
    assert a.notes_filename == "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes"
    assert a.protected_filename == "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.protected"
    assert a.timestamp(BERLIN) == int(datetime(2024, 1, 1, 1, 0, tzinfo=UTC).timestamp())
    assert parse_archive_name("vzdump-qemu-100-2024_01_01-02_00_00.tgz").compression == "gz"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    [
        "vzdump-lxc-99-2024_01_01-02_00_00.tar.zst",  # vmid below 100
        "vzdump-lxc-101-2024_02_30-02_00_00.tar.zst",  # no such day
        "vzdump-lxc-101-before-upgrade.tar.zst",  # renamed by a user
        "vzdump-lxc-0101-2024_01_01-02_00_00.tar",  # leading zero
    ],
)
def test_renamed_archives_are_not_standard(name: str) -> None:
    parsed = parse_archive_name(name)
    assert parsed is not None and not parsed.is_std_name and parsed.vmid is None


@pytest.mark.parametrize(
    "name",
    [
        "vzdump-lxc-101-2024_01_01-02_00_00.log",
        "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes",
        "vzdump-lxc-101-2024_01_01-02_00_00.tar.dat",
        "vzdump-lxc-101-2024_01_01-02_00_00.tar.xz",
        "backup.tar.zst",
        "vzdump-ct-101-2024_01_01-02_00_00.tar.zst",
    ],
)
def test_not_archives(name: str) -> None:
    assert parse_archive_name(name) is None


def test_archive_name_rejects_bad_input() -> None:
    with pytest.raises(UsageError, match="guest type"):
        archive_name("vm", 101, datetime(2024, 1, 1))
    with pytest.raises(UsageError, match="range"):
        archive_name("lxc", 99, datetime(2024, 1, 1))
    with pytest.raises(UsageError, match="compression"):
        archive_name("lxc", 101, datetime(2024, 1, 1), "xz")


DUMP = [
    "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_01-02_00_00.log",
    "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes",
    "vzdump-lxc-101-2024_01_02-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_02-02_00_00.log",
    "vzdump-lxc-101-2024_01_02-02_00_00.tar.zst.protected",
    "vzdump-lxc-101-2024_01_03-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_03-02_00_00.log",
    "vzdump-lxc-101-2024_01_04-02_00_00.tar.zst",
    "vzdump-lxc-102-2024_01_01-03_00_00.tar.gz",
    "vzdump-lxc-101-before-upgrade.tar.zst",
    "vzdump-lxc-101-2024_01_05-02_00_00.tar.dat",
    "lost+found", ".pveguard-catalogue.json",
]  # fmt: skip


def test_classify_dump_directory() -> None:
    listing = classify(DUMP)
    assert sorted(listing.archives) == [("lxc", 101), ("lxc", 102)]
    assert len(listing.archives[("lxc", 101)]) == 4
    assert [a.filename for a in listing.renamed] == ["vzdump-lxc-101-before-upgrade.tar.zst"]
    assert listing.in_progress == ["vzdump-lxc-101-2024_01_05-02_00_00.tar.dat"]
    assert sorted(listing.foreign) == [".pveguard-catalogue.json", "lost+found"]


def test_plan_prune_keeps_protected_and_deletes_companions() -> None:
    plan = plan_prune(DUMP, KeepPolicy(last=1), BERLIN)
    assert plan.marks["vzdump-lxc-101-2024_01_04-02_00_00.tar.zst"] is Mark.KEEP
    assert plan.marks["vzdump-lxc-101-2024_01_02-02_00_00.tar.zst"] is Mark.PROTECTED
    assert plan.marks["vzdump-lxc-102-2024_01_01-03_00_00.tar.gz"] is Mark.KEEP
    assert "vzdump-lxc-101-before-upgrade.tar.zst" not in plan.marks
    assert set(plan.delete) == {
        "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_01-02_00_00.log",
        "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes",
        "vzdump-lxc-101-2024_01_03-02_00_00.tar.zst", "vzdump-lxc-101-2024_01_03-02_00_00.log",
    }  # fmt: skip
    only_102 = plan_prune(DUMP, KeepPolicy(last=1), BERLIN, guest=("lxc", 102))
    assert list(only_102.marks) == ["vzdump-lxc-102-2024_01_01-03_00_00.tar.gz"] and only_102.delete == ()


def test_plan_prune_dst_tie_broken_by_mtime() -> None:
    # 02:30 on 2024-10-27 exists twice in Berlin; the mtime says which one this archive is.
    names = ["vzdump-lxc-101-2024_10_27-02_30_00.tar.zst", "vzdump-lxc-101-2024_10_27-02_45_00.tar.zst"]
    second_0230 = datetime(2024, 10, 27, 1, 30, tzinfo=UTC).timestamp()  # 02:30 CET
    first_0245 = datetime(2024, 10, 27, 0, 45, tzinfo=UTC).timestamp()  # 02:45 CEST
    plan = plan_prune(names, KeepPolicy(last=1), BERLIN, mtimes={names[0]: second_0230 + 5, names[1]: first_0245 + 5})
    assert plan.marks[names[0]] is Mark.KEEP  # the later instant, despite the earlier wall time
    plan = plan_prune(names, KeepPolicy(last=1), BERLIN)
    assert plan.marks[names[1]] is Mark.KEEP
