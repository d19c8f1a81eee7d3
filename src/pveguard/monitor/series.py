"""Time series in the state store, in two tiers, bounded in size.

* raw: every poll's value, kept for a day;
* 5-minute buckets (avg/min/max/count), kept for 30 days, filled as the raw values arrive
  (an upsert per value), so there is no separate downsampling job to forget.

Size is bounded by retention times and by `max_targets` (the number of guests whose series are
kept; managed containers first). At a 30 s poll that is at most 2,880 raw + 8,640 bucket rows per
series; 7 series x 200 guests ~ 16 M rows at most, usually far less.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pveguard.store import Store

RAW_RETENTION = 86400.0
BUCKET = 300
BUCKET_RETENTION = 30 * 86400.0
DEFAULT_MAX_TARGETS = 200

MIGRATIONS: list[str] = [
    """
    CREATE TABLE monitor_targets (
        id TEXT PRIMARY KEY, vmid INTEGER, name TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL DEFAULT '', managed INTEGER NOT NULL DEFAULT 0, last_seen REAL NOT NULL);
    CREATE INDEX monitor_targets_name ON monitor_targets(name);
    CREATE TABLE monitor_raw (
        target TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (target, metric, ts)) WITHOUT ROWID;
    CREATE INDEX monitor_raw_ts ON monitor_raw(ts);
    CREATE TABLE monitor_5m (
        target TEXT NOT NULL, metric TEXT NOT NULL, bucket INTEGER NOT NULL,
        avg REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (target, metric, bucket)) WITHOUT ROWID;
    CREATE INDEX monitor_5m_bucket ON monitor_5m(bucket);
    CREATE TABLE monitor_alerts (
        rule TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (rule, target));
    CREATE TABLE monitor_outbox (
        id TEXT PRIMARY KEY, created REAL NOT NULL, payload TEXT NOT NULL);
    CREATE TABLE monitor_delivery (
        event_id TEXT NOT NULL REFERENCES monitor_outbox(id) ON DELETE CASCADE, notifier TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, delivered REAL, last_error TEXT,
        PRIMARY KEY (event_id, notifier));
    CREATE TABLE monitor_silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, rule TEXT, until REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '', created REAL NOT NULL, actor TEXT NOT NULL DEFAULT '');
    CREATE TABLE monitor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
]


def open_monitor_store(store: Store) -> Store:
    """Apply the monitor's migrations (idempotent) and hand the store back."""
    store.migrate("monitor", MIGRATIONS)
    return store


@dataclass(frozen=True)
class Point:
    ts: float
    value: float
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TargetInfo:
    id: str
    vmid: int | None
    name: str
    node: str
    type: str
    managed: bool
    last_seen: float


class SeriesStore:
    """Write and read the two tiers."""

    def __init__(self, store: Store, max_targets: int = DEFAULT_MAX_TARGETS,
                 raw_retention: float = RAW_RETENTION, bucket_retention: float = BUCKET_RETENTION) -> None:
        self.store = open_monitor_store(store)
        self.max_targets = max_targets
        self.raw_retention = raw_retention
        self.bucket_retention = bucket_retention
        self._last_prune = 0.0

    def record(self, ts: float, values: Mapping[str, Mapping[str, float]],
               targets: Sequence[TargetInfo]) -> int:
        """Store one poll's values (target -> metric -> value); return the number of points kept."""
        keep = select_targets(targets, self.max_targets)
        bucket = int(ts // BUCKET) * BUCKET
        rows = [(t, m, ts, float(v)) for t in keep for m, v in values.get(t, {}).items()
                if isinstance(v, (int, float)) and math.isfinite(v)]
        with self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO monitor_targets(id, vmid, name, node, type, managed, last_seen) "
                "VALUES(?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET vmid=excluded.vmid, name=excluded.name, "
                "node=excluded.node, type=excluded.type, managed=excluded.managed, last_seen=excluded.last_seen",
                [(t.id, t.vmid, t.name, t.node, t.type, int(t.managed), ts) for t in targets if t.id in keep])
            conn.executemany("INSERT OR REPLACE INTO monitor_raw(target, metric, ts, value) VALUES(?,?,?,?)", rows)
            conn.executemany(
                "INSERT INTO monitor_5m(target, metric, bucket, avg, min, max, n) VALUES(?,?,?,?,?,?,1) "
                "ON CONFLICT(target, metric, bucket) DO UPDATE SET "
                "avg = (avg * n + excluded.avg) / (n + 1), min = MIN(min, excluded.min), "
                "max = MAX(max, excluded.max), n = n + 1",
                [(t, m, bucket, v, v, v) for t, m, _, v in rows])
        if ts - self._last_prune >= BUCKET:
            self.prune(ts)
        return len(rows)

    def prune(self, now: float) -> tuple[int, int]:
        """Drop raw points older than a day and buckets older than 30 days."""
        with self.store.transaction() as conn:
            raw = conn.execute("DELETE FROM monitor_raw WHERE ts < ?", (now - self.raw_retention,)).rowcount
            buckets = conn.execute("DELETE FROM monitor_5m WHERE bucket < ?",
                                   (now - self.bucket_retention,)).rowcount
            conn.execute("DELETE FROM monitor_targets WHERE last_seen < ?", (now - self.bucket_retention,))
        self._last_prune = now
        return raw, buckets

    def resolve(self, guest: str) -> TargetInfo | None:
        """A guest by id (lxc/101), vmid (101) or name."""
        conn = self.store.conn
        row = conn.execute("SELECT * FROM monitor_targets WHERE id = ?", (guest,)).fetchone()
        if row is None and guest.isdigit():
            row = conn.execute("SELECT * FROM monitor_targets WHERE vmid = ? ORDER BY last_seen DESC",
                               (int(guest),)).fetchone()
        if row is None:
            row = conn.execute("SELECT * FROM monitor_targets WHERE name = ? ORDER BY last_seen DESC",
                               (guest,)).fetchone()
        return _target(row) if row else None

    def targets(self) -> list[TargetInfo]:
        return [_target(r) for r in self.store.conn.execute("SELECT * FROM monitor_targets ORDER BY id")]

    def history(self, target: str, metric: str, since: float, until: float) -> tuple[str, list[Point]]:
        """Points of one series: raw when the range lies within the raw retention, else 5-min buckets."""
        conn = self.store.conn
        if since >= until - self.raw_retention:
            rows = conn.execute(
                "SELECT ts, value FROM monitor_raw WHERE target=? AND metric=? AND ts>=? AND ts<=? ORDER BY ts",
                (target, metric, since, until)).fetchall()
            return "raw", [Point(r["ts"], r["value"]) for r in rows]
        rows = conn.execute(
            "SELECT bucket, avg, min, max FROM monitor_5m WHERE target=? AND metric=? AND bucket>=? AND bucket<=? "
            "ORDER BY bucket", (target, metric, int(since // BUCKET) * BUCKET, until)).fetchall()
        return "5m", [Point(float(r["bucket"]), r["avg"], r["min"], r["max"]) for r in rows]

    def latest(self, target: str, metric: str, limit: int = 30) -> list[float]:
        """The newest `limit` raw values, oldest first (for sparklines)."""
        rows = self.store.conn.execute(
            "SELECT value FROM monitor_raw WHERE target=? AND metric=? ORDER BY ts DESC LIMIT ?",
            (target, metric, limit)).fetchall()
        return [r["value"] for r in reversed(rows)]

    def counts(self) -> dict[str, int]:
        conn = self.store.conn
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("monitor_raw", "monitor_5m", "monitor_targets")}


def select_targets(targets: Iterable[TargetInfo], limit: int) -> set[str]:
    """Which targets get series: managed guests first, then the rest by id, at most `limit`."""
    ordered = sorted(targets, key=lambda t: (not t.managed, t.type not in ("lxc", "qemu"), t.id))
    return {t.id for t in ordered[:limit]}


def _target(row: sqlite3.Row | Any) -> TargetInfo:
    return TargetInfo(row["id"], row["vmid"], row["name"], row["node"], row["type"], bool(row["managed"]),
                      row["last_seen"])
