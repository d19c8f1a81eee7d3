"""`backup run` records a verification only when it passed, so a failed one stays due."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pveguard.backup.run import VERIFY_MARKER, _read_time, run_backups
from pveguard.errors import OperationError
from pveguard.strategy.models import Strategy


class NoHostConfig:
    """A host-config backup that cannot be set up here (its step fails; the others still run)."""

    def is_initialised(self) -> bool:
        return False

    def init(self) -> None:
        raise OperationError("restic is not installed")


def _run(dump: Path, markers: Path) -> str:
    strategy = Strategy()
    strategy.backup.verification.restore_test = False
    report = run_backups(strategy, NoHostConfig(), None, dump, due=False, markers=markers,
                         now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    return next(s.status for s in report.steps if s.step == "verification")


def test_failed_verification_leaves_it_due(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "vzdump-lxc-100-2026_11_26-02_00_00.tar.zst").write_bytes(b"not a zstd archive at all")
    assert _run(dump, tmp_path) == "failed"
    assert _read_time(tmp_path / VERIFY_MARKER) is None


def test_passed_verification_is_recorded(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    assert _run(dump, tmp_path) == "done"
    assert _read_time(tmp_path / VERIFY_MARKER) == datetime(2026, 11, 26, 12, tzinfo=UTC)
