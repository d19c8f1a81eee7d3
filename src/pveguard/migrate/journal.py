"""The migration journal in the state store: one row per service, one row per step.

A step row is written `running` before the step acts and `done` (with what it did) after, so a run
killed at any point resumes at the first step that is not done; each step is idempotent, so the
one that was running when the run died is simply done again. Rollback marks steps `undone`.
The run row keeps the plan and what the steps learned (addresses, the source's answers before the
move, the rollback bundle), so a resumed run never re-reads facts the migration itself changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pveguard.store import Store

MIGRATIONS = [
    """
    CREATE TABLE migrate_run (
        service TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        started TEXT NOT NULL,
        updated TEXT NOT NULL,
        data TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE migrate_step (
        service TEXT NOT NULL,
        step TEXT NOT NULL,
        state TEXT NOT NULL,
        started TEXT,
        finished TEXT,
        detail TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        PRIMARY KEY (service, step)
    )
    """,
]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Step:
    name: str
    state: str          # running | done | failed | undone
    started: str | None
    finished: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Run:
    service: str
    source: str
    target: str
    state: str          # running | done | failed | rolling-back | rolled-back
    started: str
    updated: str
    data: dict[str, Any]
    steps: dict[str, Step] = field(default_factory=dict)

    def done(self, step: str) -> bool:
        s = self.steps.get(step)
        return s is not None and s.state == "done"


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("migrate", MIGRATIONS)

    def get(self, service: str) -> Run | None:
        row = self.store.conn.execute("SELECT * FROM migrate_run WHERE service = ?", (service,)).fetchone()
        if row is None:
            return None
        run = Run(row["service"], row["source"], row["target"], row["state"], row["started"], row["updated"],
                  json.loads(row["data"]))
        for s in self.store.conn.execute("SELECT * FROM migrate_step WHERE service = ?", (service,)).fetchall():
            run.steps[s["step"]] = Step(s["step"], s["state"], s["started"], s["finished"], json.loads(s["detail"]),
                                        s["error"])
        return run

    def all(self) -> list[Run]:
        names = [r["service"] for r in self.store.conn.execute("SELECT service FROM migrate_run ORDER BY service")]
        return [r for r in (self.get(n) for n in names) if r is not None]

    def begin(self, service: str, source: str, target: str, data: dict[str, Any]) -> Run:
        """A fresh migration of `service` (forgets an earlier, rolled-back one)."""
        now = _now()
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM migrate_step WHERE service = ?", (service,))
            conn.execute("DELETE FROM migrate_run WHERE service = ?", (service,))
            conn.execute("INSERT INTO migrate_run(service, source, target, state, started, updated, data) "
                         "VALUES(?, ?, ?, 'running', ?, ?, ?)", (service, source, target, now, now,
                                                                 json.dumps(data, sort_keys=True)))
        run = self.get(service)
        assert run is not None
        return run

    def save(self, run: Run, state: str | None = None) -> None:
        if state is not None:
            run.state = state
        run.updated = _now()
        with self.store.transaction() as conn:
            conn.execute("UPDATE migrate_run SET state = ?, updated = ?, data = ? WHERE service = ?",
                         (run.state, run.updated, json.dumps(run.data, sort_keys=True), run.service))

    def step(self, run: Run, name: str, state: str, detail: dict[str, Any] | None = None,
             error: str | None = None) -> None:
        now = _now()
        old = run.steps.get(name)
        started = now if state == "running" or old is None else old.started
        finished = now if state in ("done", "failed", "undone") else None
        det = detail if detail is not None else (old.detail if old else {})
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO migrate_step(service, step, state, started, finished, detail, error) "
                "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(service, step) DO UPDATE SET state = excluded.state, "
                "started = excluded.started, finished = excluded.finished, detail = excluded.detail, "
                "error = excluded.error",
                (run.service, name, state, started, finished, json.dumps(det, sort_keys=True), error))
        run.steps[name] = Step(name, state, started, finished, det, error)
