"""Backup problems -> audit findings (tables of cases over real `evaluate()` verdicts), and the audit
score recorded in the state store for the monitor (`score.record` / `score.latest`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.strategies import defaults_file
from pveguard.audit import findings, score
from pveguard.backup.calendar import parse
from pveguard.backup.compliance import Archive, evaluate
from pveguard.backup.coverage import Coverage
from pveguard.backup.retention import KeepPolicy
from pveguard.store import DB_NAME, Store

NOW = datetime(2024, 5, 12, 12, 0, tzinfo=UTC)
FRESH = [Archive(NOW - timedelta(hours=3))]
OLD = [Archive(NOW - timedelta(days=3))]
MANY = [Archive(NOW - timedelta(days=d, hours=3)) for d in range(10)]
DAY = timedelta(days=1)


def _coverage(archives: list[Archive], pve: bool, covered: bool = True, verified: datetime | None = None,
              synced: datetime | None = None) -> Coverage:
    extra = {}
    if not pve:
        extra = {"last_verified": {"lxc/101": verified} if verified else {}, "verify_schedule": parse("weekly"),
                 "offsite_synced": {"lxc/101": synced} if synced else {}, "offsite_schedule": parse("daily")}
    statuses = evaluate(["lxc/101"], {"lxc/101": archives} if archives else {}, parse("daily"), NOW,
                        keep=KeepPolicy(daily=7), covered=["lxc/101"] if covered else [], zone=UTC, **extra)
    if pve:
        return Coverage("proxmox", "storage local on 3 node(s)", {"lxc/101": "web"}, statuses, "local")
    return Coverage("lxc", "/var/lib/pveguard/dump", {"lxc/101": "web"}, statuses, None)


@pytest.mark.parametrize(("coverage", "expected", "fix_start"), [
    (_coverage([], pve=True, covered=False), {"backup-no-job:web": "high"}, "pveguard backup apply"),
    (_coverage([], pve=True), {"backup-no-backup:web": "high"}, "run the job for it now: vzdump 101 --storage local"),
    (_coverage([], pve=False), {"backup-no-backup:web": "high"}, "pveguard backup run"),
    (_coverage(OLD, pve=True), {"backup-late:web": "medium"}, "look at the task log of this installation's vzdump job"),
    (_coverage(OLD, pve=False, verified=NOW, synced=NOW), {"backup-late:web": "medium"}, "pveguard backup run"),
    (_coverage(MANY, pve=True), {"backup-too-many:web": "low"}, "pvesm prune-backups local --vmid 101"),
    (_coverage(MANY, pve=False, verified=NOW, synced=NOW), {"backup-too-many:web": "low"},
     "pveguard backup archives prune /var/lib/pveguard/dump --vmid 101"),
    (_coverage(FRESH, pve=False, synced=NOW), {"backup-verify-overdue:web": "low"}, "pveguard backup verify"),
    (_coverage(FRESH, pve=False, verified=NOW - 30 * DAY, synced=NOW), {"backup-verify-overdue:web": "low"},
     "pveguard backup verify"),
    (_coverage(FRESH, pve=False, verified=NOW), {"backup-offsite-overdue:web": "medium"}, "pveguard backup run"),
    (_coverage(FRESH, pve=False, verified=NOW, synced=NOW), {}, ""),
    (_coverage(FRESH, pve=True), {}, ""),
    (None, {}, ""),
])
def test_problem_kinds_become_findings(coverage: Coverage | None, expected: dict[str, str], fix_start: str) -> None:
    got = findings.backup_findings(coverage)
    assert {f.id: f.severity for f in got} == expected
    for f in got:
        assert f.category == "backup" and f.fix.startswith(fix_start) and "guest 101 (web)" in f.title


def test_every_problem_kind_has_a_severity() -> None:
    from pveguard.backup.compliance import PROBLEM_KINDS

    assert set(findings.BACKUP_SEVERITY) == set(PROBLEM_KINDS)


def test_several_problems_of_one_guest_are_several_findings() -> None:
    got = findings.backup_findings(_coverage(OLD * 9, pve=False))
    assert sorted(f.id for f in got) == ["backup-late:web", "backup-offsite-overdue:web", "backup-too-many:web",
                                         "backup-verify-overdue:web"]


def _audit(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pveguard", "--strategy", defaults_file(),
                           "--state-dir", str(state), "audit", "--json", *args],
                          capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "PVEGUARD_BACKEND": "none"})


def test_score_is_recorded_only_into_an_existing_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _audit(state)
    assert proc.returncode == 0, proc.stderr
    assert not state.exists() and score.latest(state) is None  # the audit created nothing

    Store(state).close()  # what any recording pveguard command leaves behind
    assert score.latest(state) is None  # a database, but no audit recorded yet
    proc = _audit(state)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = score.latest(state)
    assert got is not None and got.value == doc["score"]["value"] and got.counts == doc["score"]["counts"]
    assert got.generated_at == datetime.fromisoformat(doc["generated_at"])
    assert got.hostname == doc["host"]["hostname"]

    # an offline audit is another host's score: not recorded
    golden = Path(__file__).parent / "golden/pve-alternatives/root"
    proc = _audit(state, "--root", str(golden))
    assert proc.returncode == 0, proc.stderr
    assert score.latest(state) == got


def test_record_keeps_the_newest_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(score, "KEEP_ROWS", 3)
    with Store(tmp_path) as store:
        for value in range(10):
            s = score.compute([findings.Finding("x", "host", "low", "t", "d", "f")] * value)
            score.record(store, s, f"2026-01-01T00:00:{value:02d}+00:00", "h")
        assert store.conn.execute("SELECT COUNT(*) FROM audit_scores").fetchone()[0] == 3
    got = score.latest(tmp_path)
    assert got is not None and got.value == 100 - 2 * 9 and got.counts["low"] == 9
    assert got.generated_at == datetime(2026, 1, 1, 0, 0, 9, tzinfo=UTC)
    assert (tmp_path / DB_NAME).exists()
