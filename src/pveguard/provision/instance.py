"""This installation's identity: the instance id written into the managed marker of its guests.

Two installations (two state directories, two strategies) pointed at one cluster must never prune each
other's containers, so "managed" means "carries *this* instance's marker". The id is generated once,
kept in the state store, and pinned in the strategy (`target.instance`, which `pveguard init` writes);
when the strategy pins one it wins (a new state directory with the same strategy is the same
installation), otherwise the state's is used and `pveguard check` says to pin it.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pveguard.store import DB_NAME, Store
from pveguard.strategy.models import Strategy

MIGRATIONS = [
    """
    CREATE TABLE provision_instance (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        instance TEXT NOT NULL,
        created TEXT NOT NULL
    )
    """,
]

Record = Callable[..., None]


@dataclass(frozen=True)
class Identity:
    id: str
    source: Literal["strategy", "state"]


def new_instance_id() -> str:
    """A fresh id: 12 hex digits (48 random bits; ids only need to differ between installations)."""
    return secrets.token_hex(6)


def state_instance(store: Store) -> str | None:
    store.migrate("provision-instance", MIGRATIONS)
    row = store.conn.execute("SELECT instance FROM provision_instance WHERE id = 1").fetchone()
    return str(row["instance"]) if row else None


def _keep(store: Store, instance: str) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with store.transaction() as conn:
        conn.execute("INSERT INTO provision_instance(id, instance, created) VALUES(1, ?, ?) "
                     "ON CONFLICT(id) DO UPDATE SET instance = excluded.instance", (instance, now))


def identity(strategy: Strategy, store: Store, record: Record) -> Identity:
    """The strategy's `target.instance`, else the state's, else a new id (kept in the state, recorded)."""
    pinned = strategy.target.instance
    kept = state_instance(store)
    if pinned:
        if kept != pinned:
            _keep(store, pinned)
            record("provision.instance", pinned, before=kept, after=pinned, source="strategy")
        return Identity(pinned, "strategy")
    if kept is None:
        kept = new_instance_id()
        _keep(store, kept)
        record("provision.instance", kept, before=None, after=kept, source="generated")
    return Identity(kept, "state")


def instance_for_init(store: Store) -> str:
    """The id `pveguard init` writes into a new strategy (its ledger entry names it): the state's when it
    has one, else a new one, kept in the state."""
    kept = state_instance(store)
    if kept is None:
        kept = new_instance_id()
        _keep(store, kept)
    return kept


def known_instance(strategy: Strategy, state_dir: Path) -> str | None:
    """This installation's id for a reader (status, audit): the strategy's, else the state's, else None
    (no id yet: nothing is this installation's). Reads, never creates or records."""
    return strategy.target.instance or _state_instance_ro(state_dir)


def _state_instance_ro(state_dir: Path) -> str | None:
    kept: str | None = None
    db = state_dir / DB_NAME
    if db.is_file():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                row: Any = conn.execute("SELECT instance FROM provision_instance WHERE id = 1").fetchone()
            finally:
                conn.close()
            kept = str(row[0]) if row else None
        except sqlite3.Error:
            kept = None
    return kept


def pin_warning(strategy: Strategy, state_dir: Path) -> str | None:
    """What `pveguard check` says when the strategy does not pin the instance id (reads, never creates)."""
    if strategy.target.instance:
        return None
    kept = _state_instance_ro(state_dir)
    if kept:
        return (f"not set; this installation's identity comes from the state in {state_dir} ({kept}); "
                f"pin it so another state directory cannot lose it: add 'instance: {kept}' under 'target:'")
    return ("not set; the first plan/apply generates this installation's identity in the state; pin it "
            "then with the id 'pveguard check' shows, or start from 'pveguard init' which writes one")
