"""Where each role's token secret was delivered and when it was last made (no secret is kept here)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pveguard.store import Store

MIGRATIONS = [
    """
    CREATE TABLE rbac_tokens (
        role TEXT PRIMARY KEY,
        tokenid TEXT NOT NULL,
        rotated_at REAL NOT NULL,
        delivered TEXT NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class TokenState:
    role: str
    tokenid: str
    rotated_at: float
    delivered: list[dict[str, object]]  # [{"container", "vmid", "path"}]


def _open(store: Store) -> Store:
    store.migrate("rbac", MIGRATIONS)
    return store


def load(store: Store) -> dict[str, TokenState]:
    rows = _open(store).conn.execute("SELECT * FROM rbac_tokens").fetchall()
    return {str(r["role"]): TokenState(str(r["role"]), str(r["tokenid"]), float(r["rotated_at"]),
                                       list(json.loads(r["delivered"]))) for r in rows}


def save(store: Store, role: str, tokenid: str, delivered: list[dict[str, object]],
         at: float | None = None) -> None:
    with _open(store).transaction() as conn:
        conn.execute("INSERT INTO rbac_tokens(role, tokenid, rotated_at, delivered) VALUES(?,?,?,?) "
                     "ON CONFLICT(role) DO UPDATE SET tokenid = excluded.tokenid, rotated_at = excluded.rotated_at, "
                     "delivered = excluded.delivered",
                     (role, tokenid, time.time() if at is None else at, json.dumps(delivered)))


def forget(store: Store, role: str) -> None:
    """The role's user and token are gone (the role left the strategy): nothing was delivered any more."""
    with _open(store).transaction() as conn:
        conn.execute("DELETE FROM rbac_tokens WHERE role = ?", (role,))
