"""The provisioning journal: creates that were begun and not finished, kept in the state store.

A row is written before the create is sent (with the VMID it uses) and advanced after each step
(created, started) and removed when the container is complete, so an apply killed at any point leaves
a record of what is left. PVE itself makes the create atomic enough -- the guest carries its tag and
marker from the first moment -- so the journal is about the steps *after* creation (start, packages),
which PVE cannot tell us. Rows are resolved against what exists (`plan.resolve_journal`): one whose
guest is gone, is not ours or has nothing left to do is cleared by the next apply.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pveguard.provision.plan import JournalEntry
from pveguard.store import Store

MIGRATIONS = [
    """
    CREATE TABLE provision_journal (
        name TEXT PRIMARY KEY,
        vmid INTEGER,
        node TEXT,
        step TEXT NOT NULL,
        updated TEXT NOT NULL
    )
    """,
]


class Journal:
    """Rows keyed by container name (names are unique within a strategy)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("provision", MIGRATIONS)

    def entries(self) -> list[JournalEntry]:
        rows = self.store.conn.execute("SELECT name, vmid, node, step FROM provision_journal ORDER BY name")
        return [JournalEntry(r["name"], r["vmid"], r["node"], r["step"]) for r in rows.fetchall()]

    def set(self, name: str, step: str, vmid: int | None = None, node: str | None = None) -> None:
        """Record that `name` reached `step` (keeping a known vmid/node when not given)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO provision_journal(name, vmid, node, step, updated) VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET vmid = COALESCE(excluded.vmid, vmid), "
                "node = COALESCE(excluded.node, node), step = excluded.step, updated = excluded.updated",
                (name, vmid, node, step, now))

    def begin(self, name: str, vmid: int | None = None, node: str | None = None) -> None:
        """A fresh create: forget what an older row said about another guest of this name."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM provision_journal WHERE name = ?", (name,))
        self.set(name, "creating", vmid, node)

    def done(self, name: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM provision_journal WHERE name = ?", (name,))
