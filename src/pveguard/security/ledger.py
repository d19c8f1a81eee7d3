"""The audit ledger: append-only, hash-chained, optionally keyed with HMAC, anchored outside the DB.

Each entry's hash covers its own fields and the previous entry's hash, so editing, deleting,
reordering or inserting entries breaks the chain at a place `verify` can name. Truncating the tail
leaves a valid shorter chain; the head record (written in the same transaction as every append) and
the periodic checkpoints catch that unless they are rewound too, and a wiped or deleted database
leaves nothing to compare with. So every head is also written to anchors outside the database
(:mod:`pveguard.security.anchors`: an append-only file, the journal) and `verify` compares the
chain with every anchor it can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pveguard import invocation
from pveguard.errors import ConfigError, StateError, UsageError
from pveguard.records import record
from pveguard.security.anchors import AnchorSink, Head, Reading, default_anchors, verify_anchors
from pveguard.store import DB_NAME, Store

# SHA-256 from CPython's built-in module when there is one: `hashlib` loads OpenSSL (~2 ms), which the
# apt hook pays on every apt run; the digests are the same (tests/security/test_ledger.py).
# `hmac` (which imports hashlib) is imported only where a key or a comparison needs it.
TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:
    from hashlib import sha256 as _sha256
    from typing import Any
else:
    try:
        from _sha256 import sha256 as _sha256
    except ImportError:  # Python 3.12+ (_sha2) or another interpreter
        from hashlib import sha256 as _sha256


def _hmac(key: bytes, payload: bytes) -> str:
    import hmac

    return hmac.new(key, payload, _sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a, b)

GENESIS = "0" * 64
CHECKPOINT_EVERY = 100

MIGRATIONS = [
    """
    CREATE TABLE ledger (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX ledger_action ON ledger(action);
    CREATE INDEX ledger_ts ON ledger(ts);
    CREATE TABLE ledger_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE ledger_checkpoint (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL)
    """,
    # key_id: which key (a fingerprint, or "none") the chain was started with, so verify can say
    # "this ledger is keyed" instead of "entry 1 was modified" when the key is missing.
    """
    CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
]
KEY_ENV_HINT = "set PVEGUARD_LEDGER_KEY_FILE or security.ledger_hmac_key_file"


@record(frozen=True)
class Entry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "actor": self.actor, "action": self.action,
            "target": self.target, "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash,
        }


@record(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    anchors: tuple[Reading, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_bad": self.first_bad, "reason": self.reason,
                "anchors": [a.as_dict() for a in self.anchors]}


def current_actor() -> str:
    """The human behind this process: the sudo caller if any, else the login, with the uid."""
    user = os.environ.get("SUDO_USER") or os.environ.get("PVEGUARD_ACTOR")
    if not user:
        try:
            import getpass  # only without SUDO_USER / PVEGUARD_ACTOR (the apt hook pays every import)

            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return f"{user} (uid {os.getuid()})"


def _canonical(seq: int, ts: str, actor: str, action: str, target: str, details_json: str, prev: str) -> bytes:
    return json.dumps([seq, ts, actor, action, target, details_json, prev], separators=(",", ":")).encode()


class Ledger:
    """Append and read audit entries in the state store; write each new head to the anchors."""

    def __init__(self, store: Store, hmac_key_file: str | os.PathLike[str] | None = None,
                 anchors: list[AnchorSink] | None = None) -> None:
        self.store = store
        store.migrate("ledger", MIGRATIONS)
        self._key = read_key(hmac_key_file) if hmac_key_file else None
        self.anchors = anchors if anchors is not None else default_anchors(store.state_dir, store.path)

    @property
    def key_id(self) -> str:
        """A fingerprint of the key ("none" when unkeyed): safe to store, says nothing of the key."""
        if self._key is None:
            return "none"
        return _hmac(self._key, b"pveguard ledger key id")[:16]

    def _digest(self, payload: bytes) -> str:
        if self._key is not None:
            return _hmac(self._key, payload)
        return _sha256(payload).hexdigest()

    def _head_mac(self, seq: int, digest: str) -> str | None:
        if self._key is None:
            return None
        return _hmac(self._key, f"pveguard ledger head {seq}:{digest}".encode())

    def append(self, action: str, target: str = "", details: dict[str, Any] | None = None,
               actor: str | None = None) -> Entry:
        """Add one entry at the end of the chain (atomically with the head record), then anchor it."""
        actor = actor or current_actor()
        details_json = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        with self._tables(), self.store.transaction() as conn:
            row = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS)
            digest = self._digest(_canonical(seq, ts, actor, action, target, details_json, prev))
            conn.execute(
                "INSERT INTO ledger(seq, ts, actor, action, target, details, prev_hash, hash) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, actor, action, target, details_json, prev, digest),
            )
            conn.execute(
                "INSERT INTO ledger_head(id, seq, hash) VALUES(1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (seq, digest),
            )
            if seq == 1:
                conn.execute("INSERT OR REPLACE INTO ledger_meta(name, value) VALUES('key_id', ?)", (self.key_id,))
            if seq % CHECKPOINT_EVERY == 0:
                conn.execute("INSERT INTO ledger_checkpoint(seq, hash, ts) VALUES(?, ?, ?)", (seq, digest, ts))
        # After the commit: an anchor must never have seen an entry the database does not keep (a
        # rolled-back append would look like truncation). Anchors may miss the newest entry instead
        # when the process dies here, which verify accepts.
        head = Head(seq, digest, self._head_mac(seq, digest))
        invocation.wrote(seq, ts, action, target, details or {})  # what an interrupted command says it left
        for anchor in self.anchors:
            with contextlib.suppress(OSError):
                anchor.record(head)
        return Entry(seq, ts, actor, action, target, json.loads(details_json), prev, digest)

    def entries(self, *, since: str | None = None, action: str | None = None,
                target: str | None = None, actor: str | None = None, before: int | None = None,
                limit: int | None = None) -> list[Entry]:
        """Entries in chain order, filtered; `action` matches exactly or as a prefix ending in '.', `actor`
        as a substring, `before` keeps entries older than that seq; `limit` keeps the newest."""
        sql = "SELECT * FROM ledger WHERE 1=1"
        args: list[Any] = []
        if since:
            sql += " AND ts >= ?"
            args.append(since)
        if action:
            sql += " AND (action = ? OR action LIKE ?)"
            args += [action, f"{action}.%"]
        if target:
            sql += " AND target = ?"
            args.append(target)
        if actor:
            sql += " AND instr(actor, ?) > 0"
            args.append(actor)
        if before is not None:
            sql += " AND seq < ?"
            args.append(before)
        sql += " ORDER BY seq"
        if limit:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT {int(limit)}) ORDER BY seq"
        with self._tables():
            return [_entry(r) for r in self.store.conn.execute(sql, args)]

    @contextlib.contextmanager
    def _tables(self) -> Iterator[None]:
        """A ledger table dropped behind the migrations' back is a clear error, not a crash."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            raise StateError(f"the ledger in {self.store.path} is damaged: {exc}",
                             hint="run 'pveguard audit-log verify' and restore the state directory from a "
                             "backup") from None

    def _rows(self) -> Iterator[Any]:
        yield from self.store.conn.execute("SELECT * FROM ledger ORDER BY rowid")

    def verify(self) -> VerifyResult:
        """Walk the chain, compare it with the head, checkpoints and every readable anchor; name
        the first entry that was edited, moved, inserted or lost, and which record disagrees.

        Raises ConfigError when the ledger is keyed and no (or another) key is configured.
        """
        readings = tuple(_read(a) for a in self.anchors)
        try:
            return self._verify(readings)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the ledger in {self.store.path}: {exc}",
                             hint="the database is damaged; compare it with a host-config backup") from None

    def _verify(self, readings: tuple[Reading, ...]) -> VerifyResult:
        conn = self.store.conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        seen = max((r.highest for r in readings if r.readable), default=0)
        if "ledger" not in tables:
            versions = (dict(conn.execute("SELECT component, version FROM schema_version").fetchall())
                        if "schema_version" in tables else {})
            if "ledger" in versions:
                reason = f"the ledger table was dropped from {self.store.path}"
            else:
                reason = f"no ledger in {self.store.path}: no entry was ever recorded there"
            return self._fail(readings, 0, 1 if seen else None, reason + _seen_by(readings, "the ledger was removed"))
        for table in ("ledger_head", "ledger_checkpoint"):
            if table not in tables:
                return self._fail(readings, 0, None, f"the {table} table was dropped from {self.store.path}")
        self._check_key(tables, readings)

        prev = GENESIS
        expected_seq = 1
        count = 0
        hashes: dict[int, str] = {}
        for row in self._rows():
            seq = row["seq"]
            if seq != expected_seq:
                if seq > expected_seq:
                    return self._fail(readings, count, expected_seq,
                                      f"entry {expected_seq} is missing (next present is {seq}): deleted")
                return self._fail(readings, count, seq, f"entry {seq} is out of order: reordered or inserted")
            if row["prev_hash"] != prev:
                return self._fail(readings, count, seq,
                                  f"entry {seq} does not follow entry {seq - 1}: inserted, reordered or "
                                  "an earlier entry was replaced")
            digest = self._digest(_canonical(seq, row["ts"], row["actor"], row["action"], row["target"],
                                             row["details"], row["prev_hash"]))
            if not _same(digest, row["hash"]):
                reason = f"entry {seq} was modified (its hash does not match)"
                if seq == 1 and self._key is None and "ledger_meta" not in tables:
                    reason += f"; if this ledger is keyed, {KEY_ENV_HINT}"
                return self._fail(readings, count, seq, reason)
            hashes[seq] = row["hash"]
            prev = row["hash"]
            expected_seq += 1
            count += 1
        last = expected_seq - 1

        problem = self._compare_anchors(readings, last, hashes)
        if problem is not None:
            return self._fail(readings, count, *problem)
        head = conn.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
        if head is not None:
            if head["seq"] > last:
                return self._fail(readings, count, last + 1,
                                  f"the ledger ends at entry {last} but entry {head['seq']} was recorded: "
                                  "the tail was truncated")
            if hashes.get(head["seq"]) != head["hash"]:
                return self._fail(readings, count, head["seq"],
                                  f"entry {head['seq']} differs from the recorded head")
        elif count:
            return self._fail(readings, count, None, "the head record is missing")
        for cp in conn.execute("SELECT seq, hash FROM ledger_checkpoint ORDER BY seq"):
            if cp["seq"] > last:
                return self._fail(readings, count, last + 1,
                                  f"checkpoint at entry {cp['seq']} is beyond the end ({last}): "
                                  "the tail was truncated")
            if hashes.get(cp["seq"]) != cp["hash"]:
                return self._fail(readings, count, cp["seq"], f"entry {cp['seq']} differs from its checkpoint")
        if count == 0:
            # Nothing to contradict an empty table: a wipe that also cleared the head and the
            # checkpoints looks exactly like this, so it is never "intact".
            return self._fail(readings, 0, None, f"the ledger in {self.store.path} has no entries "
                              "(never written to, or wiped)")
        return VerifyResult(True, count, anchors=readings)

    def _fail(self, readings: tuple[Reading, ...], count: int, first_bad: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, count, first_bad, reason, readings)

    def _check_key(self, tables: set[str], readings: tuple[Reading, ...]) -> None:
        recorded = None
        if "ledger_meta" in tables:
            row = self.store.conn.execute("SELECT value FROM ledger_meta WHERE name = 'key_id'").fetchone()
            recorded = row[0] if row else None
        # Without a recorded fingerprint (a ledger begun before it was kept, or one removed), the
        # anchors' signed heads tell.
        keyed = (recorded != "none" if recorded is not None
                 else any(h.mac for r in readings if r.readable for h in r.heads))
        if keyed and self._key is None:
            raise ConfigError(f"this ledger is keyed: {KEY_ENV_HINT}",
                              hint="verify with the key file the ledger was written with")
        if recorded not in (None, "none") and self._key is not None and recorded != self.key_id:
            raise ConfigError(
                f"this ledger is keyed with another key (key id {recorded}; the configured key's id is "
                f"{self.key_id})",
                hint="point PVEGUARD_LEDGER_KEY_FILE or security.ledger_hmac_key_file at the key the ledger "
                "was written with",
            )

    def _compare_anchors(self, readings: tuple[Reading, ...], last: int,
                         hashes: dict[int, str]) -> tuple[int, str] | None:
        """(first bad entry, reason) from the first anchor that disagrees; sets each verdict."""
        problems: list[tuple[int, str]] = []
        for r in readings:
            if not r.readable:
                r.verdict = "not read"
                continue
            name = f"anchor '{r.name}' ({r.where})"
            if self._key is not None:
                forged = [h for h in r.heads if h.mac is not None
                          and not _same(h.mac, self._head_mac(h.seq, h.hash) or "")]
                if forged:
                    r.verdict = f"{len(forged)} head(s) not signed with this key"
                    problems.append((forged[0].seq, f"{name} holds a head for entry {forged[0].seq} that this "
                                     "key did not sign: forged, or written with another key"))
                    continue
            highest = r.highest
            if highest > last:
                r.verdict = f"has seen entry {highest}"
                if last == 0:
                    reason = f"the ledger has no entries but {name} has seen entry {highest}: it was wiped"
                else:
                    reason = (f"the ledger ends at entry {last} but {name} has seen entry {highest}: "
                              "the tail was truncated")
                problems.append((last + 1, reason))
                continue
            differs = sorted(h.seq for h in r.heads if hashes.get(h.seq) != h.hash)
            if differs:
                r.verdict = f"entry {differs[0]} differs"
                problems.append((differs[0], f"entry {differs[0]} differs from what {name} recorded: "
                                 "the chain was rewritten from there on"))
                continue
            r.verdict = f"agrees (highest entry {highest})" if highest else "agrees (has seen no entry)"
        return min(problems, key=lambda p: p[0]) if problems else None


def read_key(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key from its file (stripped), with a clear error when it cannot be used."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the ledger HMAC key file {path}: {exc.strerror}",
            hint="fix security.ledger_hmac_key_file in the strategy or the file's permissions",
        ) from None
    if not key:
        raise ConfigError(f"the ledger HMAC key file {path} is empty",
                          hint="write a random key into it, e.g. 'head -c 32 /dev/urandom | base64'")
    return key


def verify_state(state_dir: Path, hmac_key_file: str | os.PathLike[str] | None = None,
                 extra_anchor_files: list[Path] | None = None) -> VerifyResult:
    """Verify the ledger in `state_dir` without creating anything there.

    A missing or empty (0-byte) database is "no ledger" (a failure), never a fresh intact one; the
    anchors still say whether a ledger existed there.
    """
    db = state_dir / DB_NAME
    for copy in extra_anchor_files or []:
        if not copy.is_file() or not os.access(copy, os.R_OK):
            raise UsageError(f"cannot read the anchor copy {copy}",
                             hint="pass a readable copy of ledger.anchor, e.g. restored from a host-config backup")
    sinks = verify_anchors(state_dir, db, extra_anchor_files)
    if hmac_key_file:
        read_key(hmac_key_file)  # a bad key file is a configuration error before anything else
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError as exc:
        raise StateError(f"cannot read the state database {db}: {exc.strerror}",
                         hint="point --state-dir / PVEGUARD_STATE_DIR at the pveguard state directory") from None
    if size is None or size == 0:
        readings = tuple(_read(a) for a in sinks)
        if size is None:
            what = "the state directory does not exist" if not state_dir.exists() else "it does not exist"
            reason = f"no ledger: no state database at {db} ({what})"
        else:
            reason = f"no ledger: the state database {db} is empty (0 bytes)"
        return VerifyResult(False, 0, 1 if any(r.highest for r in readings) else None,
                            reason + _seen_by(readings, "the ledger was removed"), readings)
    with Store(state_dir, readonly=True) as store:
        return Ledger(store, hmac_key_file, sinks).verify()


def _seen_by(readings: tuple[Reading, ...], conclusion: str) -> str:
    seen = [r for r in readings if r.readable and r.highest]
    if not seen:
        return ""
    for r in readings:
        r.verdict = f"has seen entry {r.highest}" if r.readable and r.highest else r.verdict or "not read"
    best = max(seen, key=lambda r: r.highest)
    return f", but anchor '{best.name}' ({best.where}) has seen entry {best.highest}: {conclusion}"


def _read(anchor: AnchorSink) -> Reading:
    try:
        return anchor.read()
    except OSError as exc:
        return Reading(anchor.name, "", False, f"unreadable: {exc}")


def _entry(row: Any) -> Entry:
    return Entry(row["seq"], row["ts"], row["actor"], row["action"], row["target"],
                 json.loads(row["details"]), row["prev_hash"], row["hash"])
