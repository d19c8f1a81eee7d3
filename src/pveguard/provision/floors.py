"""What other parts of pveguard added to the desired state, kept in the store so `plan`/`apply` honour it.

`pveguard migrate` grows a strategy container that is too small for the service it moves in (a
*floor*: the container's disk, memory and cores never go below it, whatever the strategy says, so a
later `apply` does not shrink memory back nor `plan` report drift), and creates a container the
strategy does not name when the migration targets one (an *extra*: the role defaults of the
container the audit suggested, under the new name). The desired-state builder
(provision/desired.py) reads both; `plan` shows why ("grown by migrate nginx.service").
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pveguard.store import Store
from pveguard.strategy.models import Container

MIGRATIONS = [
    """
    CREATE TABLE provision_floor (
        name TEXT PRIMARY KEY,
        disk_gib INTEGER,
        memory_mib INTEGER,
        cores INTEGER,
        reason TEXT NOT NULL,
        at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE provision_extra (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        reason TEXT NOT NULL,
        at TEXT NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class Floor:
    """The least a container gets: each None leaves the strategy's value alone."""

    name: str
    disk_gib: int | None
    memory_mib: int | None
    cores: int | None
    reason: str


@dataclass(frozen=True)
class Extra:
    """A container outside the strategy that pveguard created for a reason (`reason`)."""

    container: Container
    reason: str


@dataclass
class Additions:
    floors: dict[str, Floor] = field(default_factory=dict)
    extras: list[Extra] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def load(store: Store) -> Additions:
    """Everything recorded (empty on a read-only store that never had the tables)."""
    store.migrate("provision_floors", MIGRATIONS)
    try:
        floors = store.conn.execute("SELECT * FROM provision_floor ORDER BY name").fetchall()
        extras = store.conn.execute("SELECT * FROM provision_extra ORDER BY name").fetchall()
    except sqlite3.OperationalError:   # read-only state directory from before this table
        return Additions()
    return Additions(
        {r["name"]: Floor(r["name"], r["disk_gib"], r["memory_mib"], r["cores"], r["reason"]) for r in floors},
        [Extra(Container.model_validate(json.loads(r["spec"])), r["reason"]) for r in extras])


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def raise_floor(store: Store, name: str, reason: str, *, disk_gib: int | None = None,
                memory_mib: int | None = None, cores: int | None = None) -> tuple[Floor | None, Floor]:
    """Raise `name`'s floor (never lowers one): (before, after)."""
    store.migrate("provision_floors", MIGRATIONS)
    with store.transaction() as conn:
        row = conn.execute("SELECT * FROM provision_floor WHERE name = ?", (name,)).fetchone()
        before = Floor(name, row["disk_gib"], row["memory_mib"], row["cores"], row["reason"]) if row else None
        after = Floor(name, _max(before.disk_gib if before else None, disk_gib),
                      _max(before.memory_mib if before else None, memory_mib),
                      _max(before.cores if before else None, cores), reason)
        conn.execute("INSERT INTO provision_floor(name, disk_gib, memory_mib, cores, reason, at) "
                     "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET disk_gib = excluded.disk_gib, "
                     "memory_mib = excluded.memory_mib, cores = excluded.cores, reason = excluded.reason, "
                     "at = excluded.at",
                     (name, after.disk_gib, after.memory_mib, after.cores, reason, _now()))
    return before, after


def add_extra(store: Store, container: Container, reason: str) -> None:
    """Record a container outside the strategy (replaces one of that name)."""
    store.migrate("provision_floors", MIGRATIONS)
    with store.transaction() as conn:
        conn.execute("INSERT INTO provision_extra(name, spec, reason, at) VALUES(?, ?, ?, ?) "
                     "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, reason = excluded.reason, "
                     "at = excluded.at",
                     (container.name, json.dumps(container.model_dump(mode="json")), reason, _now()))
