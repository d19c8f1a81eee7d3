"""Approvals: an admin's permission for one non-core package (or a core removal/downgrade) on the host.

`pveguard approve PKG[=VERSION] --reason TEXT [--ttl 24h] [--uses 1]` stores one; the apt hook
consumes one use per transaction it lets through because of it; expired, used-up and revoked
approvals never apply. The guard's tables live here too (tamper-detection fingerprints).
Standard library only: the hook reads and consumes approvals on its hot path.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from pveguard.guard.decide import Approval
from pveguard.records import record
from pveguard.store import Store

MIGRATIONS = [
    """
    CREATE TABLE guard_approval (
        id INTEGER PRIMARY KEY,
        package TEXT NOT NULL,
        version TEXT,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        expires_at REAL NOT NULL,
        uses_total INTEGER NOT NULL,
        uses_left INTEGER NOT NULL,
        revoked_at REAL,
        revoked_by TEXT
    );
    CREATE INDEX guard_approval_package ON guard_approval(package);
    CREATE TABLE guard_file (
        path TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        installed_at REAL NOT NULL,
        reported TEXT
    )
    """,
]

_PKG = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")
_VERSION = re.compile(r"^[A-Za-z0-9.+~:\-]+$")


@record(frozen=True)
class ApprovalRecord:
    id: int
    package: str
    version: str | None
    reason: str
    created_at: float
    created_by: str
    expires_at: float
    uses_total: int
    uses_left: int
    revoked_at: float | None
    revoked_by: str | None

    def state(self, now: float) -> str:
        """active, expired, used-up or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.uses_left <= 0:
            return "used-up"
        return "active"

    def rule(self) -> Approval:
        return Approval(self.id, self.package, self.version, self.expires_at, self.uses_left,
                        self.revoked_at is not None)

    def as_dict(self, now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        return {"id": self.id, "package": self.package, "version": self.version, "reason": self.reason,
                "created_at": _iso(self.created_at), "created_by": self.created_by,
                "expires_at": _iso(self.expires_at), "uses_total": self.uses_total, "uses_left": self.uses_left,
                "revoked_at": _iso(self.revoked_at) if self.revoked_at else None, "revoked_by": self.revoked_by,
                "state": self.state(now)}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")  # docs/json.md


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`PKG` or `PKG=VERSION` -> (name, version); ValueError with a usable message otherwise."""
    name, sep, version = spec.strip().partition("=")
    name = name.strip()
    if not _PKG.match(name):
        raise ValueError(f"{name!r} is not a Debian package name (lower-case letters, digits, '+', '-', '.')")
    if sep:
        version = version.strip()
        if not version or not _VERSION.match(version):
            raise ValueError(f"{version!r} is not a Debian version (e.g. 10.4.2 or 1:2.3-1)")
        return name, version
    return name, None


def open_tables(store: Store) -> Store:
    store.migrate("guard", MIGRATIONS)
    return store


def add(store: Store, package: str, version: str | None, reason: str, ttl_seconds: float, uses: int,
        actor: str, now: float | None = None) -> ApprovalRecord:
    """Store a new approval and return it."""
    now = time.time() if now is None else now
    open_tables(store)
    with store.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO guard_approval(package, version, reason, created_at, created_by, expires_at, "
            "uses_total, uses_left) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (package, version, reason, now, actor, now + ttl_seconds, uses, uses))
        new_id = cur.lastrowid
    assert new_id is not None
    found = get(store, new_id)
    assert found is not None
    return found


def get(store: Store, approval_id: int) -> ApprovalRecord | None:
    open_tables(store)
    row = store.conn.execute("SELECT * FROM guard_approval WHERE id = ?", (approval_id,)).fetchone()
    return _record(row) if row else None


def listing(store: Store, *, include_all: bool = False, now: float | None = None) -> list[ApprovalRecord]:
    """Active approvals (or every one with include_all), oldest first."""
    now = time.time() if now is None else now
    open_tables(store)
    rows = store.conn.execute("SELECT * FROM guard_approval ORDER BY id").fetchall()
    records = [_record(r) for r in rows]
    return records if include_all else [r for r in records if r.state(now) == "active"]


def for_packages(store: Store, names: Iterable[str]) -> list[Approval]:
    """Every approval (usable or not, so the rules can say why one does not apply) for `names`."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    open_tables(store)
    out: list[Approval] = []
    # SQLite's default limit on host parameters is far above a transaction's size, but chunk anyway.
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        rows = store.conn.execute(
            f"SELECT * FROM guard_approval WHERE package IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        out += [_record(r).rule() for r in rows]
    return out


def consume(store: Store, ids: Iterable[int], now: float | None = None) -> list[int]:
    """Use up one use of each approval; returns the ids that were still usable (all, normally)."""
    now = time.time() if now is None else now
    done: list[int] = []
    with store.transaction() as conn:
        for approval_id in ids:
            cur = conn.execute(
                "UPDATE guard_approval SET uses_left = uses_left - 1 WHERE id = ? AND uses_left > 0 "
                "AND revoked_at IS NULL AND expires_at > ?", (approval_id, now))
            if cur.rowcount:
                done.append(approval_id)
    return done


def revoke(store: Store, approval_id: int, actor: str, now: float | None = None) -> ApprovalRecord:
    """Revoke an approval; LookupError when there is none with that id, ValueError when already revoked."""
    now = time.time() if now is None else now
    open_tables(store)
    with store.transaction() as conn:
        cur = conn.execute("UPDATE guard_approval SET revoked_at = ?, revoked_by = ? "
                           "WHERE id = ? AND revoked_at IS NULL", (now, actor, approval_id))
        changed = cur.rowcount
    record = get(store, approval_id)
    if record is None:
        raise LookupError(f"there is no approval #{approval_id}")
    if not changed:
        raise ValueError(f"approval #{approval_id} was already revoked")
    return record


def _record(row: sqlite3.Row) -> ApprovalRecord:
    return ApprovalRecord(
        int(row["id"]), str(row["package"]), row["version"], str(row["reason"]), float(row["created_at"]),
        str(row["created_by"]), float(row["expires_at"]), int(row["uses_total"]), int(row["uses_left"]),
        row["revoked_at"], row["revoked_by"])
