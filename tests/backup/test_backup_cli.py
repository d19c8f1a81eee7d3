"""`backup next-runs` and `backup prune-sim` through typer's CliRunner (and once as a process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pveguard.backup.cli import app

runner = CliRunner()
BERLIN = {"TZ": "Europe/Berlin"}


def test_next_runs_local_time() -> None:
    result = runner.invoke(app, ["next-runs", "mon..fri 21:00", "--after", "2021-03-04T05:06:00Z", "-n", "3"],
                           env=BERLIN)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2021-03-04T21:00:00+01:00", "2021-03-05T21:00:00+01:00", "2021-03-08T21:00:00+01:00",
    ]  # fmt: skip


def test_next_runs_utc_and_strictly_after() -> None:
    result = runner.invoke(app, ["next-runs", "*/15 UTC", "--after", "2021-03-04T05:15:00Z", "--count", "2"],
                           env=BERLIN)  # fmt: skip
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["2021-03-04T05:30:00Z", "2021-03-04T05:45:00Z"]


def test_next_runs_json() -> None:
    result = runner.invoke(app, ["next-runs", "quarterly UTC", "--after", "2020-01-02T00:00:00Z", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["runs"] == ["2020-04-01T00:00:00Z", "2020-07-01T00:00:00Z", "2020-10-01T00:00:00Z",
                            "2021-01-01T00:00:00Z", "2021-04-01T00:00:00Z"]  # fmt: skip
    assert data["normalized"] == "*-01,04,07,10-01 00:00:00 UTC" and data["utc"] is True


def test_next_runs_never() -> None:
    result = runner.invoke(app, ["next-runs", "2021-02-29 UTC", "--after", "2020-01-01T00:00:00Z"])
    assert result.exit_code == 0 and result.stdout == ""
    assert "no further runs" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["next-runs", "*/61"], "61 is too large for the minute"),
        (["next-runs", "daily", "--after", "yesterday"], "cannot read --after 'yesterday'"),
        (["next-runs", "daily Europe/Berlin"], "time zone 'Europe/Berlin' is not supported"),
        (["next-runs", "daily", "--count", "0"], "greater than or equal to 1"),
    ],
)
def test_next_runs_bad_input(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


ARCHIVES = """\
# the PBS worked example (daily=1, weekly=1, monthly=1 keeps 11-22, 12-01, 12-04)
2018-11-15T11:59:15Z
2019-11-15T11:59:15Z
2019-11-21T11:59:15Z
2019-11-22T11:59:15Z
2019-11-29T11:59:15Z
2019-12-01T11:59:15Z

2019-12-02T11:59:15Z
2019-12-03T11:59:15Z protected
2019-12-04T11:59:15Z
"""


def test_prune_sim_from_stdin_in_input_order() -> None:
    result = runner.invoke(app, ["prune-sim", "--keep-daily", "1", "--keep-weekly", "1", "--keep-monthly", "1"],
                           input=ARCHIVES, env={"TZ": "UTC"})  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "remove 2018-11-15T11:59:15Z",
        "remove 2019-11-15T11:59:15Z",
        "remove 2019-11-21T11:59:15Z",
        "keep 2019-11-22T11:59:15Z",
        "remove 2019-11-29T11:59:15Z",
        "keep 2019-12-01T11:59:15Z",
        "remove 2019-12-02T11:59:15Z",
        "protected 2019-12-03T11:59:15Z",
        "keep 2019-12-04T11:59:15Z",
    ]


def test_prune_sim_file_json_and_local_time(tmp_path: Path) -> None:
    # Naive timestamps are local time: in Berlin 23:30 and 00:30 are different days.
    f = tmp_path / "list.txt"
    f.write_text("2024-01-01T23:30:00\n2024-01-02T00:30:00\n2024-01-02T12:00:00\n")
    result = runner.invoke(app, ["prune-sim", "--keep-daily", "7", "--file", str(f), "--json"], env=BERLIN)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [(a["mark"], a["rule"]) for a in data["archives"]] == [
        ("keep", "daily"), ("remove", None), ("keep", "daily"),
    ]  # fmt: skip


def test_prune_sim_without_rules_keeps_all() -> None:
    result = runner.invoke(app, ["prune-sim"], input="2024-01-01T00:00:00Z\n2024-01-02T00:00:00Z\n")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["keep 2024-01-01T00:00:00Z", "keep 2024-01-02T00:00:00Z"]
    assert "everything is kept" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["prune-sim", "--keep-last", "1"], "2024-01-01T00:00:00\nnot-a-time\n", "line 2: cannot read timestamp"),
        (["prune-sim", "--keep-last", "1"], "2024-01-01T00:00:00 keep\n", "line 1"),
        (["prune-sim", "--keep-last", "-1"], "", "greater than or equal to 0"),
        (["prune-sim", "--keep-last", "1", "--file", "/nonexistent/list"], "", "does not exist"),
    ],
)
def test_prune_sim_bad_input(args: list[str], stdin: str, needle: str) -> None:
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_runs_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pveguard.backup.cli", "next-runs", "hourly UTC", "--after", "2024-01-01T00:30:00Z",
         "-n", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "2024-01-01T01:00:00Z\n"


def test_prune_sim_reads_archive_names_per_guest() -> None:
    listing = "\n".join([
        "/var/lib/vz/dump/vzdump-lxc-101-2024_01_01-02_00_00.tar.zst",
        "vzdump-lxc-101-2024_01_02-02_00_00.tar.zst protected",
        "vzdump-lxc-101-2024_01_03-02_00_00.tar.zst",
        "vzdump-lxc-102-2024_01_01-03_00_00.tar.gz",
    ])  # fmt: skip
    result = runner.invoke(app, ["prune-sim", "--keep-last", "1"], input=listing, env={"TZ": "UTC"})
    assert result.exit_code == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["remove", "protected", "keep", "keep"]
    renamed = runner.invoke(app, ["prune-sim", "--keep-last", "1"], input="vzdump-lxc-101-mine.tar.zst\n")
    assert renamed.exit_code == 2 and "renamed archive" in renamed.stderr


@pytest.mark.parametrize(
    "after", ["9999-12-31T23:59:59Z", "9999-12-31T23:00:00", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00"]
)
def test_next_runs_at_the_ends_of_time(after: str) -> None:
    result = runner.invoke(app, ["next-runs", "daily", "--after", after], env={"TZ": "America/New_York"})
    assert result.exit_code == 0 and "no further runs" in result.stderr


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.text(max_size=40), max_size=6), keep=st.integers(0, 3))
def test_prune_sim_never_crashes(lines: list[str], keep: int) -> None:
    result = runner.invoke(app, ["prune-sim", "--keep-daily", str(keep)], input="\n".join(lines) + "\n")
    assert result.exit_code in (0, 2), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "1800-01-01T00:00:00"])
def test_prune_sim_rejects_times_out_of_range(stamp: str) -> None:
    result = runner.invoke(app, ["prune-sim", "--keep-daily", "1"], input=stamp + "\n", env={"TZ": "Europe/Berlin"})
    assert result.exit_code == 2 and "outside the years" in result.stderr


def test_standalone_module_has_every_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "pveguard.backup.cli", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    for command in ("next-runs", "prune-sim", "install-timers", "host-config", "archives"):
        assert command in proc.stdout


def test_install_timers_unwritable_dir_is_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["install-timers", "--unit-dir", str(blocker / "x"), "--pveguard", "/bin/true"])
    assert result.exit_code == 1 and "cannot write systemd units" in result.stderr
