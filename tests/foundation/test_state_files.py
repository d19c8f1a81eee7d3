"""Files holding policy, approvals or the ledger are private whatever the umask, and a state
directory that cannot be used is a clear error naming it, never the internal-error handler."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.strategies import defaults_file


def run(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-m", "pveguard", *args], capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_under_umask_000_writes_private_files(tmp_path: Path) -> None:
    strategy, state = tmp_path / "etc" / "strategy.yaml", tmp_path / "state"
    proc = run("--strategy", str(strategy), "--state-dir", str(state), "init", umask=0o000)
    assert proc.returncode == 0, proc.stderr
    files = {"strategy": strategy, "database": state / "pveguard.db", "anchor": state / "ledger.anchor"}
    files.update({n: state / f"pveguard.db-{n}" for n in ("wal", "shm") if (state / f"pveguard.db-{n}").exists()})
    modes = {name: oct(mode(p)) for name, p in files.items()}
    assert modes == {name: "0o600" for name in files}, modes
    assert mode(state) == 0o750


def test_init_force_keeps_the_strategy_private(tmp_path: Path) -> None:
    strategy, state = tmp_path / "strategy.yaml", tmp_path / "state"
    strategy.write_text("# old\n")
    strategy.chmod(0o666)
    proc = run("--strategy", str(strategy), "--state-dir", str(state), "init", "--force", umask=0o000)
    assert proc.returncode == 0, proc.stderr
    assert mode(strategy) == 0o600


def test_a_world_readable_database_from_an_older_version_is_made_private(tmp_path: Path) -> None:
    strategy, state = tmp_path / "strategy.yaml", tmp_path / "state"
    assert run("--strategy", str(strategy), "--state-dir", str(state), "init").returncode == 0
    (state / "pveguard.db").chmod(0o644)
    proc = run("--strategy", str(strategy), "--state-dir", str(state), "init", "--force", umask=0o000)
    assert proc.returncode == 0, proc.stderr
    # Others lose access; group read (someone may have granted it on purpose) stays.
    assert mode(state / "pveguard.db") == 0o640


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory even root cannot create files in (chattr +i); cleared afterwards."""
    d = tmp_path / "immutable"
    d.mkdir()
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def _unusable_state_dirs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    return {"a file": a_file, "below a file": a_file / "state", "in /proc": Path("/proc/pveguard-no-such-dir/state")}


@pytest.mark.parametrize("command", [["init"], ["audit-log", "show"], ["approvals"]])
@pytest.mark.parametrize("case", ["a file", "below a file", "in /proc"])
def test_unusable_state_dir_is_a_clear_error(tmp_path: Path, case: str, command: list[str]) -> None:
    state = _unusable_state_dirs(tmp_path)[case]
    # init writes a new strategy; the other commands need an existing one (a named file must exist)
    strategy = tmp_path / "strategy.yaml" if command == ["init"] else Path(defaults_file())
    proc = run("--strategy", str(strategy), "--state-dir", str(state), *command)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert str(state) in proc.stderr and "hint:" in proc.stderr, proc.stderr
    if command == ["init"]:
        assert not strategy.exists(), "init must not write the strategy when it cannot record doing so"


@pytest.mark.parametrize("case", ["a file", "below a file", "in /proc"])
def test_verify_with_an_unusable_state_dir_is_a_clear_error(tmp_path: Path, case: str) -> None:
    state = _unusable_state_dirs(tmp_path)[case]
    proc = run("--strategy", defaults_file(), "--state-dir", str(state), "audit-log", "verify")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "no ledger" in proc.stderr or str(state) in proc.stderr


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path, immutable_dir: Path) -> None:
    for state in (immutable_dir, immutable_dir / "sub"):
        proc = run("--strategy", str(tmp_path / "s.yaml"), "--state-dir", str(state), "init")
        assert proc.returncode == 1, proc.stderr
        assert "internal error" not in proc.stderr and str(state) in proc.stderr, proc.stderr


def test_database_path_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "pveguard.db").mkdir(parents=True)
    proc = run("--strategy", defaults_file(), "--state-dir", str(state), "audit-log", "show")
    assert proc.returncode == 1 and "is a directory" in proc.stderr, proc.stderr
