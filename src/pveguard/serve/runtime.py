"""What the API and the daemon share in one process: the state, the latest snapshot of the world
(kept while PVE is unreachable, marked stale-since), job states and the event bus behind SSE.

The API reads only from here and from the store on the event-loop thread; jobs run in worker
threads with their own store connections and publish what changed through `publish`, which is
safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pveguard.context import AppContext
from pveguard.output import iso_utc
from pveguard.serve import tokens
from pveguard.serve.tokens import Caller


def iso(ts: float | None) -> str | None:
    """Times in the API as in every --json: ISO 8601 UTC with a Z (docs/json.md)."""
    return iso_utc(ts)


@dataclass
class JobState:
    name: str
    interval: float
    last_start: float | None = None
    last_end: float | None = None
    last_ok: bool | None = None
    last_error: str | None = None
    running: bool = False
    runs: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        nxt = None if self.last_start is None else self.last_start + self.interval
        return {"name": self.name, "interval_s": self.interval, "last_start": iso(self.last_start),
                "last_end": iso(self.last_end), "last_ok": self.last_ok, "last_error": self.last_error,
                "running": self.running, "runs": self.runs, "failures": self.failures, "next_due": iso(nxt)}


class EventBus:
    """Fan-out of change events to SSE subscribers; a slow subscriber drops its oldest events."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maxsize = maxsize
        self._seq = 0
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            event = {"id": self._seq, "type": kind, "ts": iso(time.time()), "data": data}
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fan_out(event)
        else:
            loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def attach(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that receives every event from now on; `detach` it when done (event loop only)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs.add(q)
        return q

    def close(self) -> None:
        """End every stream (at shutdown): each queue gets a `_close` event (event loop only)."""
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
            q.put_nowait({"id": 0, "type": "_close", "ts": None, "data": {}})

    def detach(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.discard(q)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """The events from now on, as an async iterator (attach/detach around a loop)."""
        q = self.attach()
        try:
            while True:
                yield await q.get()
        finally:
            self.detach(q)

    @property
    def subscribers(self) -> int:
        return len(self._subs)


@dataclass
class Runtime:
    """The serving process's shared state. `ctx` is the API's own context (event-loop thread only)."""

    ctx: AppContext
    secure_cookies: bool = False
    events: EventBus = field(default_factory=EventBus)
    jobs: dict[str, JobState] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    # the newest view of the containers (from the monitor job), kept while PVE is unreachable
    snapshot: dict[str, Any] = field(default_factory=dict)
    snapshot_at: float | None = None
    stale_since: float | None = None
    pve_error: str | None = None
    status_cache: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what jobs leave for the API (exporter view, ...)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self):  # type: ignore[no-untyped-def]
        tokens.open_tables(self.ctx.store)
        return self.ctx.store

    def record(self, who: Caller, action: str, target: str = "", **details: Any) -> None:
        """One ledger entry for a mutating API call, with the API caller as actor."""
        self.ctx.ledger.append(action, target, {**details, "via": f"api ({who.via})"}, actor=who.actor)
        self.events.publish("ledger", {"action": action, "target": target, "actor": who.actor})

    # --- the snapshot, written by the monitor job from its thread ---

    def set_snapshot(self, snapshot: dict[str, Any], at: float) -> None:
        with self._lock:
            was_stale = self.stale_since is not None
            self.snapshot, self.snapshot_at = snapshot, at
            self.stale_since, self.pve_error = None, None
            self.status_cache = None
        self.events.publish("status", {"at": iso(at), "recovered": was_stale})

    def mark_stale(self, error: str, at: float) -> None:
        with self._lock:
            first = self.stale_since is None
            if first:
                self.stale_since = at
            self.pve_error = error
            self.status_cache = None
        if first:
            self.events.publish("stale", {"since": iso(at), "error": error})

    def job_update(self, job: JobState) -> None:
        with self._lock:
            self.status_cache = None
        self.events.publish("job", job.as_dict())

    def status(self) -> dict[str, Any]:
        """The body of GET /api/v1/status."""
        with self._lock:
            snap = self.snapshot
            return {
                "generated_at": iso(time.time()),
                "snapshot_at": iso(self.snapshot_at),
                "stale": self.stale_since is not None or self.snapshot_at is None,
                "stale_since": iso(self.stale_since),
                "pve_error": self.pve_error,
                "containers": snap.get("containers", []),
                "guests": snap.get("guests", {}),
                "alerts_firing": snap.get("alerts_firing", []),
                "compliance_score": self.extra.get("compliance_score"),
                "guard": self.extra.get("guard"),
                "jobs": {name: j.as_dict() for name, j in sorted(self.jobs.items())},
                "started_at": iso(self.started_at),
            }

    def status_bytes(self) -> bytes:
        """GET /api/v1/status as JSON bytes, cached until something changes (or 1 s passes)."""
        cached = self.status_cache
        if cached is not None and time.time() - self.extra.get("status_cache_at", 0) < 1.0:
            return cached
        body = json.dumps(self.status(), separators=(",", ":")).encode()
        self.status_cache, self.extra["status_cache_at"] = body, time.time()
        return body
