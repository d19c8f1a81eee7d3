"""The state store: one SQLite database (WAL) shared by the CLI, the daemon and the apt hook.

Each part of pveguard owns its tables and their versioned migrations and applies them on first
use with `Store.migrate(component, migrations)`, so no part needs to know the others' schemas.
Transactions are short and `BEGIN IMMEDIATE`, and every connection waits on a busy database instead
of failing, so concurrent writers (an apt hook during a daemon poll) simply queue.
"""

from __future__ import annotations

import _thread  # threading.RLock is _thread.RLock; importing threading costs the apt hook ~0.6 ms
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from pveguard.errors import StateError

DEFAULT_STATE_DIR = Path("/var/lib/pveguard")
ENV_VAR = "PVEGUARD_STATE_DIR"
DB_NAME = "pveguard.db"
BUSY_TIMEOUT_MS = 30_000


def resolve_state_dir(cli_value: str | os.PathLike[str] | None) -> Path:
    """--state-dir, then $PVEGUARD_STATE_DIR, then /var/lib/pveguard."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_STATE_DIR


class Store:
    """A connection to the state database with per-component schema migrations."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self.readonly = readonly
        self._migrated: set[str] = set()
        self._lock = _thread.RLock()
        try:
            if not readonly:
                _prepare(state_dir, self.path)
            elif not self.path.exists():
                raise StateError(
                    f"no state database at {self.path}",
                    hint="run a pveguard command that records state first (e.g. 'pveguard init'), "
                    "or point --state-dir / PVEGUARD_STATE_DIR at the right directory",
                )
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self.conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                        isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not readonly:
                _retry_busy(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
                self.conn.execute("PRAGMA synchronous=NORMAL")
                _retry_busy(lambda: self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
                ))
                _restrict_modes(self.path)
        except OSError as exc:
            raise StateError(
                f"cannot use the state directory {state_dir}: {exc.strerror}",
                hint="use --state-dir / PVEGUARD_STATE_DIR with a directory you can write "
                "(it is created if missing), or run as root",
            ) from None
        except sqlite3.Error as exc:
            what = "is a directory, not a database" if self.path.is_dir() else f"cannot be opened: {exc}"
            raise StateError(
                f"the state database {self.path} {what}",
                hint="check that the file is a pveguard database, that you may write it and the disk is "
                "not full, or point --state-dir / PVEGUARD_STATE_DIR elsewhere",
            ) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that takes the write lock up front (no upgrade deadlocks)."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StateError(
                    f"the state database {self.path} is busy or read-only: {exc}",
                    hint="another pveguard process may hold it for long; retry, or check permissions",
                ) from None
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Bring `component`'s tables to the newest version; each migration runs once, in order."""
        if component in self._migrated:
            return
        if self.readonly:
            self._migrated.add(component)
            return
        # The common case (every command, every apt hook run): already at the newest version. One
        # read says so without taking the write lock; versions only go up, so it stays true.
        with self._lock:
            row = self.conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
        if row is not None and row["version"] == len(migrations):
            self._migrated.add(component)
            return
        with self.transaction() as conn:
            row = conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
            current = row["version"] if row else 0
            if current > len(migrations):
                raise StateError(
                    f"the state database has {component} schema version {current}, newer than this "
                    f"pveguard knows ({len(migrations)})",
                    hint="upgrade pveguard; do not downgrade it over a newer state directory",
                )
            for version, sql in enumerate(migrations[current:], start=current + 1):
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version(component, version) VALUES(?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, version),
                )
        self._migrated.add(component)

    def schema_versions(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT component, version FROM schema_version").fetchall()
        return {r["component"]: r["version"] for r in rows}


def _prepare(state_dir: Path, db: Path) -> None:
    """Make the state directory (0750) and the database file (0600 whatever the umask: it holds
    the ledger, approvals and policy state) before SQLite opens it."""
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(
            f"the state directory {state_dir} is not a directory",
            hint="point --state-dir / PVEGUARD_STATE_DIR at a directory (it is created if missing), "
            "e.g. /var/lib/pveguard",
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    with suppress(FileExistsError):
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _restrict_modes(db: Path) -> None:
    """Take group write and all access by others away from the database and its WAL files (a
    database made by an older pveguard was 0644); group read, if someone set it, stays."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            mode = path.stat().st_mode & 0o7777
            if mode & 0o037:
                os.chmod(path, mode & 0o640)
        except (FileNotFoundError, PermissionError):
            continue  # not there yet, or not ours to change (a reader that is not the owner)


def _retry_busy(action: Callable[[], object], seconds: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Run `action`, retrying while another process holds a lock the busy handler does not cover.

    Switching a fresh database to WAL needs an exclusive lock and can answer SQLITE_BUSY at once
    when two processes open it at the same moment.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our literals)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
