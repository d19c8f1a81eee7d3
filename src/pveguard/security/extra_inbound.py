"""Inbound rules beyond the strategy's, kept in the state store: the ports a migrated service brought.

`pveguard migrate` moves a service's ports into a container; the traffic for them arrives from the
source host (the port forward masquerades it). Those ports become part of the container's desired
firewall state here: one row per (owner, container, rule), owner `migrate:<unit>`. The desired-rule
builders read them next to the strategy's rules (security.isolation for PVE's guest firewall,
security.isolation_lxc for plain LXC's nftables), so `plan` shows them, `apply` keeps them (they are
desired, not drift) and puts them back when they went missing, and `isolation check` expects them.
`migrate rollback` deletes its rows and converges again, which removes them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from pveguard.security.isolation import Rule
from pveguard.store import Store

MIGRATIONS = [
    """
    CREATE TABLE fw_extra (
        owner TEXT NOT NULL,
        container TEXT NOT NULL,
        proto TEXT NOT NULL,
        dport TEXT NOT NULL,
        source TEXT NOT NULL,
        why TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (owner, container, proto, dport, source)
    )
    """,
]


@dataclass(frozen=True)
class Extra:
    owner: str
    container: str
    rule: Rule

    def text(self) -> str:
        return f"{self.container}: {self.rule.text()} ({self.owner})"


def _ready(store: Store) -> bool:
    store.migrate("fw_extra", MIGRATIONS)
    return True


def listing(store: Store | None) -> list[Extra]:
    """Every extra rule, by container and owner (none on a read-only store without the table)."""
    if store is None:
        return []
    _ready(store)
    try:
        rows = store.conn.execute("SELECT * FROM fw_extra ORDER BY container, owner, proto, dport, source").fetchall()
    except sqlite3.OperationalError:
        return []
    return [Extra(r["owner"], r["container"], Rule(r["proto"], r["dport"], r["source"], why=r["why"])) for r in rows]


def by_container(store: Store | None) -> dict[str, list[Rule]]:
    """container name -> its extra rules (in a stable order, each once)."""
    out: dict[str, list[Rule]] = {}
    for e in listing(store):
        rules = out.setdefault(e.container, [])
        if e.rule not in rules:
            rules.append(e.rule)
    return out


def of_owner(store: Store, owner: str) -> list[Extra]:
    return [e for e in listing(store) if e.owner == owner]


def set_rules(store: Store, owner: str, container: str, rules: list[Rule]) -> tuple[list[Rule], list[Rule]]:
    """`owner`'s rules become exactly `rules` on `container` (and none elsewhere). Returns (before, after)."""
    _ready(store)
    before = [e.rule for e in of_owner(store, owner)]
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    with store.transaction() as conn:
        conn.execute("DELETE FROM fw_extra WHERE owner = ?", (owner,))
        for r in rules:
            conn.execute("INSERT OR REPLACE INTO fw_extra(owner, container, proto, dport, source, why, created) "
                         "VALUES(?, ?, ?, ?, ?, ?, ?)", (owner, container, r.proto, r.dport, r.source, r.why, now))
    return before, list(rules)


def drop(store: Store, owner: str) -> list[Extra]:
    """Forget `owner`'s rules; returns what was there."""
    gone = of_owner(store, owner)
    if gone:
        with store.transaction() as conn:
            conn.execute("DELETE FROM fw_extra WHERE owner = ?", (owner,))
    return gone
