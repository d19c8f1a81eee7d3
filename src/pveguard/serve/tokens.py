"""pveguard's own API tokens and web sessions, kept in the state store.

A token's secret is `pvg_` + 43 url-safe characters (256 bits from `secrets`); the store keeps only
its SHA-256 (a salted slow hash buys nothing for a random 256-bit secret, and lookup stays one
indexed read per request). The secret is shown once, at creation. Roles are ordered
viewer < operator < admin: viewers read, operators approve packages and silence alerts, admins apply.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal

from pveguard.store import Store

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
PREFIX = "pvg_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

MIGRATIONS = [
    """
    CREATE TABLE serve_token (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        revoked_by TEXT,
        last_used_at REAL
    );
    CREATE TABLE serve_session (
        hash TEXT PRIMARY KEY,
        token_name TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE serve_job (
        name TEXT PRIMARY KEY,
        last_start REAL,
        last_end REAL,
        last_ok INTEGER,
        last_error TEXT,
        runs INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE serve_kv (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
]


def open_tables(store: Store) -> Store:
    store.migrate("serve", MIGRATIONS)
    return store


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _iso(ts: float | None) -> str | None:
    from pveguard.output import iso_utc

    return iso_utc(ts)


@dataclass(frozen=True)
class Token:
    name: str
    role: Role
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    revoked_by: str | None
    last_used_at: float | None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "state": self.state(now),
                "created_at": _iso(self.created_at), "created_by": self.created_by,
                "expires_at": _iso(self.expires_at), "revoked_at": _iso(self.revoked_at),
                "revoked_by": self.revoked_by, "last_used_at": _iso(self.last_used_at)}


@dataclass(frozen=True)
class Caller:
    """Who is calling the API: the token's name and role (`via`: bearer or session)."""

    name: str
    role: Role
    via: str = "bearer"
    csrf: str | None = None

    @property
    def actor(self) -> str:
        """The ledger's actor for what this caller does."""
        return f"api:{self.name} ({self.role})"

    def may(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a token name: 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def _token(row: sqlite3.Row) -> Token:
    return Token(str(row["name"]), row["role"], float(row["created_at"]), str(row["created_by"]),
                 row["expires_at"], row["revoked_at"], row["revoked_by"], row["last_used_at"])


def create(store: Store, name: str, role: Role, ttl_seconds: float | None, actor: str,
           now: float | None = None) -> tuple[Token, str]:
    """A new token and its secret (shown once). ValueError when the name is taken by an active one;
    a revoked or expired token's name is reused (its row is replaced)."""
    now = time.time() if now is None else now
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"{role!r} is not a role: viewer, operator or admin")
    open_tables(store)
    secret = PREFIX + secrets.token_urlsafe(32)
    with store.transaction() as conn:
        row = conn.execute("SELECT * FROM serve_token WHERE name = ?", (name,)).fetchone()
        if row is not None and _token(row).state(now) == "active":
            raise ValueError(f"there is already an active token called {name!r}")
        conn.execute("DELETE FROM serve_token WHERE name = ?", (name,))
        conn.execute("DELETE FROM serve_session WHERE token_name = ?", (name,))
        conn.execute(
            "INSERT INTO serve_token(name, role, hash, created_at, created_by, expires_at) VALUES(?, ?, ?, ?, ?, ?)",
            (name, role, digest(secret), now, actor, None if ttl_seconds is None else now + ttl_seconds))
    found = get(store, name)
    assert found is not None
    return found, secret


def get(store: Store, name: str) -> Token | None:
    open_tables(store)
    row = store.conn.execute("SELECT * FROM serve_token WHERE name = ?", (name,)).fetchone()
    return _token(row) if row else None


def listing(store: Store) -> list[Token]:
    open_tables(store)
    return [_token(r) for r in store.conn.execute("SELECT * FROM serve_token ORDER BY name")]


def revoke(store: Store, name: str, actor: str, now: float | None = None) -> Token:
    """LookupError: no such token; ValueError: already revoked. Its web sessions end with it."""
    now = time.time() if now is None else now
    open_tables(store)
    with store.transaction() as conn:
        changed = conn.execute("UPDATE serve_token SET revoked_at = ?, revoked_by = ? "
                               "WHERE name = ? AND revoked_at IS NULL", (now, actor, name)).rowcount
        conn.execute("DELETE FROM serve_session WHERE token_name = ?", (name,))
    token = get(store, name)
    if token is None:
        raise LookupError(f"there is no API token called {name!r}")
    if not changed:
        raise ValueError(f"API token {name!r} was already revoked")
    return token


def authenticate(store: Store, secret: str, now: float | None = None) -> Caller | None:
    """The caller behind a bearer secret; None when unknown, revoked or expired."""
    now = time.time() if now is None else now
    if not secret.startswith(PREFIX):
        return None
    open_tables(store)
    row = store.conn.execute("SELECT * FROM serve_token WHERE hash = ?", (digest(secret),)).fetchone()
    if row is None:
        return None
    token = _token(row)
    if token.state(now) != "active":
        return None
    if token.last_used_at is None or now - token.last_used_at > 60:  # not one write per request
        _touch(store, token.name, now)
    return Caller(token.name, token.role)


def _touch(store: Store, name: str, now: float) -> None:
    """Note the token's use; skipped (tried again next minute) when another process holds the write
    lock: the API's event loop must never wait on it."""
    from pveguard.store import BUSY_TIMEOUT_MS

    store.conn.execute("PRAGMA busy_timeout=20")
    try:
        with store.transaction() as conn:
            conn.execute("UPDATE serve_token SET last_used_at = ? WHERE name = ?", (now, name))
    except Exception as exc:  # StateError (busy) or sqlite3.OperationalError: only a statistic is lost
        if "busy" not in str(exc) and "locked" not in str(exc):
            raise
    finally:
        store.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


# --- web sessions ------------------------------------------------------------------------------


def open_session(store: Store, caller: Caller, ttl_seconds: float, now: float | None = None) -> tuple[str, str]:
    """A new session for `caller`: (session id for the cookie, CSRF token for forms)."""
    now = time.time() if now is None else now
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with store.transaction() as conn:
        conn.execute("DELETE FROM serve_session WHERE expires_at <= ?", (now,))
        conn.execute("INSERT INTO serve_session(hash, token_name, csrf, created_at, expires_at) VALUES(?, ?, ?, ?, ?)",
                     (digest(sid), caller.name, csrf, now, now + ttl_seconds))
    return sid, csrf


def session_caller(store: Store, sid: str, now: float | None = None) -> Caller | None:
    """The caller of a live session whose token is still active; None otherwise."""
    now = time.time() if now is None else now
    open_tables(store)
    row = store.conn.execute(
        "SELECT s.csrf, s.expires_at AS session_expires, t.* FROM serve_session s "
        "JOIN serve_token t ON t.name = s.token_name WHERE s.hash = ?", (digest(sid),)).fetchone()
    if row is None or float(row["session_expires"]) <= now:
        return None
    token = _token(row)
    if token.state(now) != "active":
        return None
    return Caller(token.name, token.role, via="session", csrf=str(row["csrf"]))


def close_session(store: Store, sid: str) -> None:
    open_tables(store)
    with store.transaction() as conn:
        conn.execute("DELETE FROM serve_session WHERE hash = ?", (digest(sid),))
