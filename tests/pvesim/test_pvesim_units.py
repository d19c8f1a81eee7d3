"""Pure logic in tables: validation, prune marks (upstream vectors), calendar events, usage model."""

# ruff: noqa: E501  (expected PVE messages are kept verbatim on one line)

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from pvesim.calendar import CalendarError, next_run, parse_calendar_event
from pvesim.prune import archive_name, parse_archive_name, prune_marks
from pvesim.testing import schema_available
from pvesim.usage import guest_usage

UTC = dt.UTC
needs_schema = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found (set PVESIM_SCHEMA)")


def _validator(method: str, path: str) -> Any:
    from pvesim.schema import load_schema
    from pvesim.validate import MethodValidator

    return MethodValidator(load_schema().methods[(method, path)].parameters)


VALIDATION = [
    # (params, expected errors or None, expected typed values subset)
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "unprivileged": "1"},
        None,
        {"vmid": 100, "unprivileged": 1},
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "start": "true"},
        {"start": "type check ('boolean') failed - got 'true'"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "abc", "ostemplate": "x"},
        {"vmid": "type check ('integer') failed - got 'abc'"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "cores": "9000"},
        {"cores": "value must have a maximum value of 8192"},
        None,
    ),
    ({"node": "pve1", "vmid": "100", "ostemplate": "x", "cpulimit": "1.5"}, None, {"cpulimit": 1.5}),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "hostname": "-bad"},
        {"hostname": "invalid format - value does not look like a valid DNS name\n"},
        None,
    ),
    ({"node": "pve1", "vmid": "100", "ostemplate": "x", "tags": "a;b c"}, None, {"tags": "a;b c"}),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "tags": "a;b!"},
        {"tags": "invalid format - invalid tag 'b!'\n"},
        None,
    ),
    ({"node": "pve1", "vmid": "100", "ostemplate": "x", "features": "nesting=yes,keyctl=off"}, None, {}),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "features": "nesting=2"},
        {"features": "invalid format - format error\nfeatures.nesting: type check ('boolean') failed - got '2'"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "net0": "bridge=vmbr0"},
        {"net0": "invalid format - format error\nnet0.name: property is missing and it is not optional"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "net32": "name=eth0"},
        {"net32": "property is not defined in schema and the schema does not allow additional properties"},
        None,
    ),
    ({"node": "pve1", "vmid": "100", "ostemplate": "x", "mp255": "local-lvm:1,mp=/data"}, None, {}),
    (
        {
            "node": "pve1",
            "vmid": "100",
            "ostemplate": "x",
            "rootfs": "local-lvm:8,mountoptions=noatime;nodev",
        },
        None,
        {},
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "rootfs": "local-lvm:8,mountoptions=bogus"},
        {"rootfs": "invalid format - format error\nrootfs.mountoptions: value does not match the regex pattern"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "arch": "sparc"},
        {
            "arch": "value 'sparc' does not have a value in the enumeration 'amd64, i386, arm64, armhf, riscv32, riscv64'"
        },
        None,
    ),
    (
        {"node": "bad_node", "vmid": "100", "ostemplate": "x"},
        {"node": "invalid format - value does not look like a valid node name\n"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "unique": "1"},
        {"restore": "missing property - 'unique' requires this property"},
        None,
    ),
    (
        {"node": "pve1", "vmid": "100", "ostemplate": "x", "password": "abc"},
        {"password": "value must be at least 5 characters long"},
        None,
    ),
]


@needs_schema
@pytest.mark.parametrize(("params", "errors", "typed"), VALIDATION)
def test_lxc_create_validation(
    params: dict[str, Any], errors: dict[str, str] | None, typed: dict[str, Any] | None
) -> None:
    from pvesim.validate import ParamError

    v = _validator("POST", "/nodes/{node}/lxc")
    if errors is None:
        out = v.validate(params)
        assert typed is not None and all(out[k] == val for k, val in typed.items())
    else:
        with pytest.raises(ParamError) as ei:
            v.validate(params)
        assert ei.value.errors == errors


@needs_schema
def test_json_body_booleans_and_prune_format() -> None:
    from pvesim.validate import ParamError

    v = _validator("POST", "/cluster/backup")
    assert v.validate({"schedule": "daily", "all": True, "prune-backups": "keep-last=3,keep-daily=7"})["all"] == 1
    with pytest.raises(ParamError) as ei:
        v.validate({"schedule": "daily", "all": 1, "prune-backups": "keep-last=0"})
    assert ei.value.errors == {
        "prune-backups": "invalid format - format error\nprune-backups.keep-last: value must have a minimum value of 1"
    }
    with pytest.raises(ParamError) as ei:
        v.validate({"schedule": "mon..fry 02:00", "all": 1})
    assert ei.value.errors["schedule"].startswith("invalid format - unable to parse calendar event")


def _ts(text: str) -> int:
    return int(dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp())


def _kept(dates: list[str], keep: dict[str, int], protected: set[str] | None = None) -> set[str]:
    marks = prune_marks([(d, _ts(d), d in (protected or set())) for d in dates], keep, UTC)
    return {d for d, m in marks.items() if m == "keep"}


SET1 = ["2019-12-02 11:59", "2019-12-03 11:59", "2019-12-04 11:59", "2019-12-04 12:59"]
SET2 = [
    "2018-11-15 11:59",
    "2019-11-15 11:59",
    "2019-11-21 11:59",
    "2019-11-22 11:59",
    "2019-11-29 11:59",
    "2019-12-01 11:59",
    "2019-12-02 11:59",
    "2019-12-03 11:59",
    "2019-12-04 11:59",
]


@pytest.mark.parametrize(
    ("dates", "keep", "kept"),
    [
        (SET1, {"keep-last": 3}, set(SET1[1:])),
        (SET1, {"keep-daily": 2}, {"2019-12-04 12:59", "2019-12-03 11:59"}),
        (SET1, {"keep-weekly": 5}, {"2019-12-04 12:59"}),
        (SET2, {"keep-daily": 1}, {"2019-12-04 11:59"}),
        (SET2, {"keep-last": 1, "keep-daily": 1}, {"2019-12-04 11:59", "2019-12-03 11:59"}),
        (SET2, {"keep-daily": 1, "keep-weekly": 1}, {"2019-12-04 11:59", "2019-12-01 11:59"}),
        (
            SET2,
            {"keep-daily": 1, "keep-weekly": 1, "keep-monthly": 1},
            {"2019-12-04 11:59", "2019-12-01 11:59", "2019-11-22 11:59"},
        ),
        (SET2, {"keep-monthly": 1, "keep-yearly": 1}, {"2019-12-04 11:59", "2018-11-15 11:59"}),
        (
            ["2020-12-28 10:00", "2020-12-31 10:00", "2021-01-03 10:00", "2021-01-04 10:00"],
            {"keep-weekly": 2},
            {"2021-01-04 10:00", "2021-01-03 10:00"},
        ),
        (SET1, {"keep-all": 1}, set(SET1)),
        (SET1, {}, set(SET1)),
    ],
)
def test_prune_upstream_vectors(dates: list[str], keep: dict[str, int], kept: set[str]) -> None:
    assert _kept(dates, keep) == kept


@pytest.mark.parametrize("keep", [{"keep-last": 1}, {"keep-hourly": 1}])
def test_prune_protected_neither_removed_nor_counted(keep: dict[str, int]) -> None:
    dates = ["2020-01-01 09:39", "2020-01-01 10:39", "2020-01-01 10:49", "2020-01-01 10:59"]
    marks = prune_marks([(d, _ts(d), d in (dates[0], dates[3])) for d in dates], keep, UTC)
    assert [d for d, m in marks.items() if m == "remove"] == ["2020-01-01 10:39"]


def test_archive_names_roundtrip() -> None:
    when = _ts("2024-01-01 02:00")
    name = archive_name("lxc", 101, when, "tar.zst", UTC)
    assert name == "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst"
    parsed = parse_archive_name(f"local:backup/{name}", UTC)
    assert parsed is not None and (parsed.vmid, parsed.ctime, parsed.ext) == (101, when, "tar.zst")
    assert parse_archive_name("vzdump-lxc-101-2024_01_01-02_00_00.tar.zst.notes") is None
    assert parse_archive_name("my-own-backup.tar.zst") is None


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        ("daily", "2024-05-01 12:00", "2024-05-02 00:00"),
        ("mon..fri 22:00", "2024-05-03 23:00", "2024-05-06 22:00"),  # Fri night -> Mon
        ("sun 01:00", "2024-05-01 00:00", "2024-05-05 01:00"),
        ("8:00/15", "2024-05-01 08:20", "2024-05-01 08:30"),
        ("*-*-01 03:30", "2024-05-02 00:00", "2024-06-01 03:30"),
        ("hourly", "2024-05-01 08:20", "2024-05-01 09:00"),
        ("weekly", "2024-05-01 08:20", "2024-05-06 00:00"),
    ],
)
def test_calendar_next_run(spec: str, after: str, expected: str) -> None:
    assert next_run(parse_calendar_event(spec), _ts(after), UTC) == _ts(expected)


# "25:00" is not here: PVE skips an impossible hour and reads it as minute 25 of every hour.
@pytest.mark.parametrize("bad", ["", "mon..xyz", "*-13-01", "1:2:3:4", "daily extra", "Daily"])
def test_calendar_rejects(bad: str) -> None:
    with pytest.raises(CalendarError):
        parse_calendar_event(bad)


def test_usage_counters_grow_and_seeded() -> None:
    prev = None
    for t in range(1_000_000, 1_000_000 + 3600 * 6, 10):
        u = guest_usage(7, 101, 2**30, 8 * 2**30, 2, t, 999_000)
        assert 0 < u["cpu"] <= 1 and 0 < u["mem"] < 2**30 and 0 < u["disk"] < 8 * 2**30
        if prev is not None:
            for k in ("netin", "netout", "diskread", "diskwrite", "uptime"):
                assert u[k] >= prev[k], k
        prev = u
    assert guest_usage(7, 101, 2**30, 2**33, 2, 1_000_000, 999_000) == guest_usage(
        7, 101, 2**30, 2**33, 2, 1_000_000, 999_000
    )
    assert guest_usage(7, 101, 2**30, 2**33, 2, 1_000_000, 999_000) != guest_usage(
        8, 101, 2**30, 2**33, 2, 1_000_000, 999_000
    )


# (PVE expression, the same in systemd's spelling) - PVE's minute-only `M` is systemd's `*:M`.
ORACLE = [
    ("daily", "daily"),
    ("hourly", "hourly"),
    ("sat 02:00", "sat 02:00"),
    ("mon..fri 21:00", "mon..fri 21:00"),
    ("mon..fri 8..17,22:0/15", "mon..fri 8..17,22:0/15"),
    ("Sat *-1..7 15:00", "Sat *-1..7 15:00"),
    ("12/2:5", "12/2:5"),
    ("quarterly", "quarterly"),
    ("*/15", "*:0/15"),
    ("0", "*:0"),
    ("30/10", "*:30/10"),
    ("mon..wed 30/10", "mon..wed *:30/10"),
    ("*-*-01 03:30", "*-*-01 03:30"),
    ("sun 01:00", "sun 01:00"),
]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(("pve", "systemd"), ORACLE)
def test_calendar_against_systemd_oracle(pve: str, systemd: str) -> None:
    base = "2020-01-02 00:00:00"
    r = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=4", f"--base-time={base} UTC", systemd],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    want = [
        int(dt.datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
        for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", r.stdout)
    ]
    ev = parse_calendar_event(pve)
    got, t = [], _ts("2020-01-02 00:00")
    for _ in want:
        nxt = next_run(ev, t, UTC)
        assert nxt is not None
        got.append(nxt)
        t = nxt
    assert got == want and len(want) == 4
