"""The compliance score: 100 minus a fixed penalty per finding by severity, never below 0.

Deliberately simple so an admin can recompute it from the findings list: the report prints the
formula and the counts next to the number. `pveguard audit` also records each live audit's score
in the state store (`record`), and `latest` reads the newest one back (the monitor's gauge).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pveguard.audit.findings import SEVERITIES, Finding
from pveguard.errors import StateError
from pveguard.store import DB_NAME, Store

if TYPE_CHECKING:
    from pveguard.context import AppContext

PENALTY = {"critical": 25, "high": 10, "medium": 5, "low": 2, "info": 0}
FORMULA = "score = max(0, 100 - 25*critical - 10*high - 5*medium - 2*low); info findings cost nothing"


@dataclass(frozen=True)
class Score:
    value: int
    counts: dict[str, int]
    penalty: int
    formula: str = FORMULA

    @property
    def explanation(self) -> str:
        """The formula with this host's counts filled in, e.g. `100 - 10*2 - 5*1 = 75`."""
        terms = " - ".join(f"{PENALTY[s]}*{self.counts[s]}" for s in SEVERITIES if PENALTY[s] and self.counts[s])
        if not terms:
            return "100 (no penalised findings)"
        text = f"100 - {terms} = {100 - self.penalty}"
        return text + " -> 0" if self.penalty > 100 else text


def compute(findings: Iterable[Finding]) -> Score:
    counts: dict[str, int] = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] += 1
    penalty = sum(PENALTY[s] * n for s, n in counts.items())
    return Score(max(0, 100 - penalty), counts, penalty)


# --- the last score in the state store (for the monitor's pveguard_compliance_score gauge) ----------
# I/O at the edge: `record` is called by `pveguard audit` after the report is built, `latest` by
# whoever wants the number without auditing again.

MIGRATIONS = (
    "CREATE TABLE audit_scores (id INTEGER PRIMARY KEY AUTOINCREMENT, generated_at TEXT NOT NULL, "
    "score INTEGER NOT NULL, critical INTEGER NOT NULL, high INTEGER NOT NULL, medium INTEGER NOT NULL, "
    "low INTEGER NOT NULL, info INTEGER NOT NULL, hostname TEXT NOT NULL)",
)
KEEP_ROWS = 1000  # a few years of daily audits; older scores are dropped


@dataclass(frozen=True)
class Recorded:
    """A score `pveguard audit` stored: its value, when the audit ran, the finding counts."""

    value: int
    generated_at: datetime
    counts: dict[str, int]
    hostname: str


def _state_dir(where: AppContext | Path) -> Path:
    return where if isinstance(where, Path) else Path(where.state_dir)


def record(store: Store, score: Score, generated_at: str, hostname: str) -> None:
    """Append one audit's score (and keep only the newest KEEP_ROWS)."""
    store.migrate("audit", MIGRATIONS)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO audit_scores (generated_at, score, critical, high, medium, low, info, hostname) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (generated_at, score.value, *(score.counts[s] for s in SEVERITIES), hostname),
        )
        conn.execute("DELETE FROM audit_scores WHERE id <= (SELECT MAX(id) FROM audit_scores) - ?", (KEEP_ROWS,))


def latest(where: AppContext | Path) -> Recorded | None:
    """The newest score `pveguard audit` recorded in the state directory of ``where`` (an AppContext
    or the directory), or None when there is none (no database, never audited). Read-only and
    cheap (one indexed row), so an exporter can call it on every scrape."""
    path = _state_dir(where) / DB_NAME
    if not path.exists():
        return None
    try:
        store = Store(path.parent, readonly=True)
    except StateError:
        return None
    try:
        row = store.conn.execute(
            "SELECT generated_at, score, critical, high, medium, low, info, hostname FROM audit_scores "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error:  # no audit_scores table: no audit recorded here yet
        return None
    finally:
        store.close()
    if row is None:
        return None
    return Recorded(int(row["score"]), datetime.fromisoformat(row["generated_at"]),
                    {s: int(row[s]) for s in SEVERITIES}, str(row["hostname"]))
