"""The watchdog's memory in the store: restart budgets (with quarantine) and maintenance flags, per
container name, so `pveguard recover --once` from a timer continues where the previous run stopped."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pveguard.recover.budget import RestartState
from pveguard.store import Store

# Set (by the env file apply pushes into serve.container) to the container `pveguard serve` runs in:
# the watchdog and the exhaustion handling never act on their own container (ARCHITECTURE).
SELF_ENV = "PVEGUARD_SELF_CONTAINER"
SELF_REASON = "pveguard serve runs in it ({env}): it never acts on its own container; PVE HA or the admin does"


def own_container() -> str | None:
    """The container this pveguard runs in, when apply installed it there (else None)."""
    return os.environ.get(SELF_ENV, "").strip() or None


MIGRATIONS = [
    """
    CREATE TABLE recover_state (
        name TEXT PRIMARY KEY,
        restarts TEXT NOT NULL,
        quarantined_at REAL,
        quarantine_reason TEXT,
        exhausted_at REAL
    );
    CREATE TABLE recover_maintenance (
        name TEXT PRIMARY KEY,
        since REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE recover_checked (
        name TEXT PRIMARY KEY,
        at REAL NOT NULL
    )
    """,
]


def open_recover_store(store: Store) -> Store:
    store.migrate("recover", MIGRATIONS)
    return store


def load_states(store: Store) -> dict[str, RestartState]:
    rows = open_recover_store(store).conn.execute("SELECT * FROM recover_state").fetchall()
    return {str(r["name"]): RestartState(tuple(float(t) for t in json.loads(r["restarts"])), r["quarantined_at"],
                                         r["quarantine_reason"], r["exhausted_at"]) for r in rows}


def save_state(store: Store, name: str, st: RestartState) -> None:
    with open_recover_store(store).transaction() as conn:
        if st == RestartState():
            conn.execute("DELETE FROM recover_state WHERE name = ?", (name,))
            return
        conn.execute(
            "INSERT INTO recover_state(name, restarts, quarantined_at, quarantine_reason, exhausted_at) "
            "VALUES(?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET restarts = excluded.restarts, "
            "quarantined_at = excluded.quarantined_at, quarantine_reason = excluded.quarantine_reason, "
            "exhausted_at = excluded.exhausted_at",
            (name, json.dumps(list(st.restarts)), st.quarantined_at, st.quarantine_reason, st.exhausted_at))


@dataclass(frozen=True)
class Maintenance:
    name: str
    since: float
    reason: str


def maintenance(store: Store) -> dict[str, Maintenance]:
    rows = open_recover_store(store).conn.execute("SELECT * FROM recover_maintenance").fetchall()
    return {str(r["name"]): Maintenance(str(r["name"]), float(r["since"]), str(r["reason"])) for r in rows}


def set_maintenance(store: Store, name: str, on: bool, now: float, reason: str) -> bool:
    """Turn maintenance on or off; True when that changed something."""
    with open_recover_store(store).transaction() as conn:
        had = conn.execute("SELECT 1 FROM recover_maintenance WHERE name = ?", (name,)).fetchone() is not None
        if on and not had:
            conn.execute("INSERT INTO recover_maintenance(name, since, reason) VALUES(?,?,?)", (name, now, reason))
        elif not on and had:
            conn.execute("DELETE FROM recover_maintenance WHERE name = ?", (name,))
        return on != had


def checked(store: Store) -> dict[str, float]:
    """When each container's health checks last ran (they run again after their `interval`)."""
    rows = open_recover_store(store).conn.execute("SELECT name, at FROM recover_checked").fetchall()
    return {str(r["name"]): float(r["at"]) for r in rows}


def set_checked(store: Store, name: str, at: float) -> None:
    with open_recover_store(store).transaction() as conn:
        conn.execute("INSERT INTO recover_checked(name, at) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET at = "
                     "excluded.at", (name, at))
