"""The last pending-updates check per container, kept in the state store by every `pveguard update`
run (a dry run and the timer's run included), read by the audit (a finding per container with pending
security updates) and the exporter (`pveguard_container_pending_updates`) without entering a container."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pveguard.audit.findings import Finding
from pveguard.errors import StateError
from pveguard.store import DB_NAME, Store

MIGRATIONS = (
    "CREATE TABLE update_pending (name TEXT PRIMARY KEY, vmid INTEGER NOT NULL, checked_at REAL NOT NULL, "
    "pending INTEGER NOT NULL, security INTEGER NOT NULL, packages TEXT NOT NULL)",
    # when the last scheduled run ('update --scheduled') started: what 'update --scheduled --due' (serve's
    # updates job) compares with updates.schedule
    "CREATE TABLE update_schedule (id INTEGER PRIMARY KEY CHECK (id = 1), last_run REAL NOT NULL)",
)


@dataclass(frozen=True)
class Checked:
    name: str
    vmid: int
    checked_at: float
    pending: int
    security: int
    security_packages: list[str]


def save(store: Store, rows: list[Checked]) -> None:
    """Replace the rows of these containers (the others keep their last check)."""
    if not rows:
        return
    store.migrate("updates", MIGRATIONS)
    with store.transaction() as conn:
        for r in rows:
            conn.execute("INSERT OR REPLACE INTO update_pending (name, vmid, checked_at, pending, security, packages) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (r.name, r.vmid, r.checked_at, r.pending, r.security,
                                                       json.dumps(r.security_packages)))


def latest(state_dir: Path) -> list[Checked]:
    """Every container's last check (read-only, cheap; empty when never checked)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return []
    try:
        store = Store(path.parent, readonly=True)
    except StateError:
        return []
    try:
        rows = store.conn.execute("SELECT * FROM update_pending ORDER BY name").fetchall()
    except sqlite3.Error:  # no table: never checked here
        return []
    finally:
        store.close()
    return [Checked(str(r["name"]), int(r["vmid"]), float(r["checked_at"]), int(r["pending"]), int(r["security"]),
                    list(json.loads(r["packages"]))) for r in rows]


def findings(state_dir: Path, known: set[str]) -> list[Finding]:
    """A high finding per container of the strategy whose last check found pending security updates."""
    out = []
    for c in latest(state_dir):
        if c.name not in known or not c.security:
            continue
        when = datetime.fromtimestamp(c.checked_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        shown = ", ".join(c.security_packages[:8]) + (" ..." if len(c.security_packages) > 8 else "")
        out.append(Finding(id=f"security-updates:{c.name}", category="updates", severity="high",
                           title=f"container {c.name} has {c.security} pending security update(s)",
                           detail=f"checked {when}: {shown}",
                           fix=f"pveguard update --security-only {c.name} (snapshot, upgrade, checks, rollback "
                               "on failure); the update timer does it on updates.schedule"))
    return out


def last_scheduled(store: Store) -> float | None:
    """When the last scheduled run started (None: never on this state directory)."""
    store.migrate("updates", MIGRATIONS)
    row = store.conn.execute("SELECT last_run FROM update_schedule WHERE id = 1").fetchone()
    return None if row is None else float(row["last_run"])


def mark_scheduled(store: Store, ts: float) -> None:
    store.migrate("updates", MIGRATIONS)
    with store.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO update_schedule (id, last_run) VALUES (1, ?)", (ts,))
