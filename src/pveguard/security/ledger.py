"""The audit ledger: append-only, hash-chained, optionally keyed with HMAC.

Each entry's hash covers its own fields and the previous entry's hash, so editing, deleting,
reordering or inserting entries breaks the chain at a place `verify` can name. Truncating the tail
leaves a valid shorter chain; the head record (written in the same transaction as every append) and
the periodic checkpoints catch that.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pveguard.errors import ConfigError
from pveguard.store import Store

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
]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_bad": self.first_bad, "reason": self.reason}


def current_actor() -> str:
    """The human behind this process: the sudo caller if any, else the login, with the uid."""
    user = os.environ.get("SUDO_USER") or os.environ.get("PVEGUARD_ACTOR")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return f"{user} (uid {os.getuid()})"


def _canonical(seq: int, ts: str, actor: str, action: str, target: str, details_json: str, prev: str) -> bytes:
    return json.dumps([seq, ts, actor, action, target, details_json, prev], separators=(",", ":")).encode()


class Ledger:
    """Append and read audit entries in the state store."""

    def __init__(self, store: Store, hmac_key_file: str | os.PathLike[str] | None = None) -> None:
        self.store = store
        store.migrate("ledger", MIGRATIONS)
        self._key: bytes | None = None
        if hmac_key_file:
            try:
                self._key = Path(hmac_key_file).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the ledger HMAC key file {hmac_key_file}: {exc.strerror}",
                    hint="fix security.ledger_hmac_key_file in the strategy or the file's permissions",
                ) from None
            if not self._key:
                raise ConfigError(f"the ledger HMAC key file {hmac_key_file} is empty",
                                  hint="write a random key into it, e.g. 'head -c 32 /dev/urandom | base64'")

    def _digest(self, payload: bytes) -> str:
        if self._key is not None:
            return hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return hashlib.sha256(payload).hexdigest()

    def append(self, action: str, target: str = "", details: dict[str, Any] | None = None,
               actor: str | None = None) -> Entry:
        """Add one entry at the end of the chain (atomically with the head record)."""
        actor = actor or current_actor()
        details_json = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        with self.store.transaction() as conn:
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
            if seq % CHECKPOINT_EVERY == 0:
                conn.execute("INSERT INTO ledger_checkpoint(seq, hash, ts) VALUES(?, ?, ?)", (seq, digest, ts))
        return Entry(seq, ts, actor, action, target, json.loads(details_json), prev, digest)

    def entries(self, *, since: str | None = None, action: str | None = None,
                target: str | None = None, limit: int | None = None) -> list[Entry]:
        """Entries in chain order, filtered; `action` matches exactly or as a prefix ending in '.'."""
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
        sql += " ORDER BY seq"
        if limit:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT {int(limit)}) ORDER BY seq"
        return [_entry(r) for r in self.store.conn.execute(sql, args)]

    def _rows(self) -> Iterator[Any]:
        yield from self.store.conn.execute("SELECT * FROM ledger ORDER BY rowid")

    def verify(self) -> VerifyResult:
        """Walk the chain; name the first entry that was edited, moved, inserted or lost."""
        prev = GENESIS
        expected_seq = 1
        count = 0
        hashes: dict[int, str] = {}
        for row in self._rows():
            seq = row["seq"]
            if seq != expected_seq:
                if seq > expected_seq:
                    return VerifyResult(False, count, expected_seq,
                                        f"entry {expected_seq} is missing (next present is {seq}): deleted")
                return VerifyResult(False, count, seq, f"entry {seq} is out of order: reordered or inserted")
            if row["prev_hash"] != prev:
                return VerifyResult(False, count, seq,
                                    f"entry {seq} does not follow entry {seq - 1}: inserted, reordered or "
                                    "an earlier entry was replaced")
            digest = self._digest(_canonical(seq, row["ts"], row["actor"], row["action"], row["target"],
                                             row["details"], row["prev_hash"]))
            if not hmac.compare_digest(digest, row["hash"]):
                return VerifyResult(False, count, seq, f"entry {seq} was modified (its hash does not match)")
            hashes[seq] = row["hash"]
            prev = row["hash"]
            expected_seq += 1
            count += 1
        last = expected_seq - 1
        head = self.store.conn.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
        if head is not None:
            if head["seq"] > last:
                return VerifyResult(False, count, last + 1,
                                    f"the ledger ends at entry {last} but entry {head['seq']} was recorded: "
                                    "the tail was truncated")
            if hashes.get(head["seq"]) != head["hash"]:
                return VerifyResult(False, count, head["seq"], f"entry {head['seq']} differs from the recorded head")
        elif count:
            return VerifyResult(False, count, None, "the head record is missing")
        for cp in self.store.conn.execute("SELECT seq, hash FROM ledger_checkpoint ORDER BY seq"):
            if cp["seq"] > last:
                return VerifyResult(False, count, last + 1,
                                    f"checkpoint at entry {cp['seq']} is beyond the end ({last}): "
                                    "the tail was truncated")
            if hashes.get(cp["seq"]) != cp["hash"]:
                return VerifyResult(False, count, cp["seq"], f"entry {cp['seq']} differs from its checkpoint")
        return VerifyResult(True, count)


def _entry(row: Any) -> Entry:
    return Entry(row["seq"], row["ts"], row["actor"], row["action"], row["target"],
                 json.loads(row["details"]), row["prev_hash"], row["hash"])
