"""What other parts of pveguard added to the desired state, kept in the store so `plan`/`apply` honour it.

`pveguard migrate` grows a strategy container that is too small for the service it moves in (a
*floor*: the container's disk, memory and cores never go below it, whatever the strategy says, so a
later `apply` does not shrink memory back nor `plan` report drift), and creates a container the
strategy does not name when the migration targets one (an *extra*: the role defaults of the
container the audit suggested, under the new name). The desired-state builder
(provision/desired.py) reads both; `plan` shows why ("grown by migrate nginx.service"). Each row
has an owner (`migrate nginx.service`); `release(owner)` (the migration's rollback) drops its rows,
and the strategy's own sizes count again (a container it created is then pruned by `apply --prune`).
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
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        disk_gib INTEGER,
        memory_mib INTEGER,
        cores INTEGER,
        reason TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (name, owner)
    )
    """,
    """
    CREATE TABLE provision_extra (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
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
    """Everything recorded (empty on a read-only store that never had the tables); several owners'
    floors of one container combine to the largest of each."""
    store.migrate("provision_floors", MIGRATIONS)
    try:
        floors = store.conn.execute("SELECT * FROM provision_floor ORDER BY name, owner").fetchall()
        extras = store.conn.execute("SELECT * FROM provision_extra ORDER BY name").fetchall()
    except sqlite3.OperationalError:   # read-only state directory from before this table
        return Additions()
    out = Additions(extras=[Extra(Container.model_validate(json.loads(r["spec"])), r["reason"]) for r in extras])
    for r in floors:
        f = Floor(r["name"], r["disk_gib"], r["memory_mib"], r["cores"], r["reason"])
        old = out.floors.get(f.name)
        out.floors[f.name] = f if old is None else Floor(
            f.name, _max(old.disk_gib, f.disk_gib), _max(old.memory_mib, f.memory_mib), _max(old.cores, f.cores),
            f"{old.reason}; {f.reason}")
    return out


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def raise_floor(store: Store, name: str, owner: str, reason: str, *, disk_gib: int | None = None,
                memory_mib: int | None = None, cores: int | None = None) -> Floor:
    """Raise `owner`'s floor of `name` (never lowers it); the floor now held by that owner."""
    store.migrate("provision_floors", MIGRATIONS)
    with store.transaction() as conn:
        row = conn.execute("SELECT * FROM provision_floor WHERE name = ? AND owner = ?", (name, owner)).fetchone()
        after = Floor(name, _max(row["disk_gib"] if row else None, disk_gib),
                      _max(row["memory_mib"] if row else None, memory_mib),
                      _max(row["cores"] if row else None, cores), reason)
        conn.execute("INSERT INTO provision_floor(name, owner, disk_gib, memory_mib, cores, reason, at) "
                     "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name, owner) DO UPDATE SET "
                     "disk_gib = excluded.disk_gib, memory_mib = excluded.memory_mib, cores = excluded.cores, "
                     "reason = excluded.reason, at = excluded.at",
                     (name, owner, after.disk_gib, after.memory_mib, after.cores, reason, _now()))
    return after


def add_extra(store: Store, container: Container, owner: str, reason: str) -> None:
    """Record a container outside the strategy (replaces one of that name)."""
    store.migrate("provision_floors", MIGRATIONS)
    with store.transaction() as conn:
        conn.execute("INSERT INTO provision_extra(name, owner, spec, reason, at) VALUES(?, ?, ?, ?, ?) "
                     "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, spec = excluded.spec, "
                     "reason = excluded.reason, at = excluded.at",
                     (container.name, owner, json.dumps(container.model_dump(mode="json")), reason, _now()))


def release(store: Store, owner: str) -> dict[str, list[str]]:
    """Drop `owner`'s floors and extra containers: {"floors": names, "extras": names}."""
    store.migrate("provision_floors", MIGRATIONS)
    with store.transaction() as conn:
        floors = [r["name"] for r in conn.execute("SELECT name FROM provision_floor WHERE owner = ?", (owner,))]
        extras = [r["name"] for r in conn.execute("SELECT name FROM provision_extra WHERE owner = ?", (owner,))]
        conn.execute("DELETE FROM provision_floor WHERE owner = ?", (owner,))
        conn.execute("DELETE FROM provision_extra WHERE owner = ?", (owner,))
    return {"floors": sorted(floors), "extras": sorted(extras)}
