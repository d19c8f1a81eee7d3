"""One poll: sweep -> derive -> evaluate alerts -> persist state + queue notifications -> record series
-> deliver. The only place that ties the pure parts to the store and the network.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pveguard.errors import PveguardError, UsageError
from pveguard.gcpause import gc_paused
from pveguard.monitor.alerts import AlertState, Event, Rule, Silence, evaluate
from pveguard.monitor.collector import RATE_SERIES, Derived, Sample, Source, Sweep, derive
from pveguard.monitor.notify import Dispatcher, Notifier, enqueue
from pveguard.monitor.series import DEFAULT_MAX_TARGETS, SeriesStore, TargetInfo, open_monitor_store
from pveguard.store import Store

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    ts: float
    sweep: Sweep | None
    derived: dict[str, Derived] = field(default_factory=dict)
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    delivery: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    duration: float = 0.0
    traffic: Any = None  # monitor.traffic.TrafficView when the traffic watch runs


# strategy metric name -> the series that record it; cpu, memory and disk are always kept because
# the alert thresholds apply to them
STRATEGY_SERIES = {"cpu_usage": ("cpu",), "memory_usage": ("memory",), "disk_usage": ("disk",),
                   "disk_io": ("disk_read", "disk_write"), "network_traffic": ("net_in", "net_out")}


def series_for(metrics: Iterable[str]) -> set[str]:
    """The series to record for the strategy's `monitoring.metrics`."""
    out = {"cpu", "memory", "disk"}
    for m in metrics:
        out.update(STRATEGY_SERIES.get(m, ()))
    return out


def observations(sweep: Sweep, derived: dict[str, Derived], rates: bool = True,
                 samples: Iterable[Sample] | None = None) -> dict[str, Mapping[str, float]]:
    """Alertable values per guest (templates excluded); `down` is 1 for a managed guest not running, absent
    for one whose status is unknown. A guest's derived values are shared, not copied: treat them as
    read-only (the engine merges the traffic watch's values into a new mapping). `rates=False`: the
    percentages, without the byte rates where they are not computed yet (no rule reads them).
    `samples`: only these of the sweep's (alert_candidates), in the sweep's order."""
    out: dict[str, Mapping[str, float]] = {}
    empty: Mapping[str, float] = {}
    for s in sweep.samples if samples is None else samples:
        if (s.type != "lxc" and s.type != "qemu") or s.template:
            continue
        d = derived.get(s.id)
        values = (d.values if rates else d.usage) if d is not None else empty
        if s.managed and s.status != "unknown":
            # "unknown" (its node offline or not reporting) is not "down": nothing is known about it
            values = {**values, "down": 0.0 if s.status == "running" else 1.0}
        out[s.id] = values
    return out


_PERCENT_METRICS = ("cpu", "memory", "disk")
# below a threshold by more than this, a percentage cannot reach it by derive()'s rounding to 3 decimals
_ROUNDING_MARGIN = 0.01


def alert_candidates(samples: Iterable[Sample], rules: Iterable[Rule],
                     known: Iterable[str]) -> list[Sample] | None:
    """The guests whose observations `evaluate` can act on, in the sweep's order: those with an alert
    state (`known`) and those whose value may breach a rule (a running guest's cpu/memory/disk within
    the rounding margin of the lowest threshold on it, a managed guest's `down`). evaluate() skips every
    other target (no state, not breached), so evaluating only these steps the same alerts in the same
    order, and derive(lazy_rates=True) rounds the percentages of these guests only. None when a rule is
    not a plain threshold (its own breached()) or reads another metric (the byte rates, the traffic
    watch's): then every guest is observed."""
    floor = dict.fromkeys(_PERCENT_METRICS, math.inf)
    down = math.inf
    for r in rules:
        if type(r).breached is not Rule.breached:
            return None
        if r.metric in floor:
            floor[r.metric] = min(floor[r.metric], r.threshold - _ROUNDING_MARGIN)
        elif r.metric == "down":
            down = min(down, r.threshold)
        else:
            return None
    fc, fm, fd = floor["cpu"], floor["memory"], floor["disk"]
    down_running, down_stopped = down <= 0.0, down <= 1.0  # observations(): down is 0.0 or 1.0
    keep = set(known)
    out: list[Sample] = []
    for s in samples:
        t = s.type
        if (t != "lxc" and t != "qemu") or s.template:
            continue
        status = s.status
        if s.id in keep:
            out.append(s)
        elif status == "running":
            # derive()'s expressions before the rounding (NaN compares false both here and in evaluate)
            if (s.cpu * 100 >= fc or (s.maxmem > 0 and s.mem * 100 / s.maxmem >= fm)
                    or (s.maxdisk > 0 and s.disk * 100 / s.maxdisk >= fd) or (down_running and s.managed)):
                out.append(s)
        elif down_stopped and s.managed and status != "unknown":
            out.append(s)
    return out


def series_targets(samples: Iterable[Sample], limit: int) -> list[Sample]:
    """The guests (templates excluded) whose series are kept: what series.select_targets picks from
    all of them (managed first, then by id), without building a TargetInfo for each of 10,000."""
    guests = [s for s in samples if (s.type == "lxc" or s.type == "qemu") and not s.template]
    managed = sorted((s for s in guests if s.managed), key=lambda s: s.id)[:max(limit, 0)]
    rest = limit - len(managed)
    if rest <= 0:
        return managed
    others = {s.id: s for s in guests if not s.managed}
    return managed + [others[i] for i in heapq.nsmallest(rest, others)]


class Monitor:
    """Polls a source and keeps alerts, series and notifications in the store."""

    def __init__(self, store: Store, source: Source, rules: list[Rule], notifiers: Iterable[Notifier] = (),
                 clock: Callable[[], float] = time.time, max_targets: int = DEFAULT_MAX_TARGETS,
                 record_series: bool = True, series_metrics: Iterable[str] | None = None,
                 traffic: Any = None) -> None:
        self.store = open_monitor_store(store)
        self.source = source
        self.rules = rules
        self.notifiers = list(notifiers)
        self.clock = clock
        self.series = SeriesStore(store, max_targets=max_targets)
        self.dispatcher = Dispatcher(store, self.notifiers)
        self.record_series = record_series
        self.series_metrics = set(series_metrics) if series_metrics is not None else None
        self.traffic = traffic  # a monitor.traffic.TrafficWatch, read on its own (slower) cadence
        self.prev: Sweep | None = load_counters(store, clock())  # only for rates
        self.last_good: Sweep | None = None  # what /metrics shows, kept while the API is down
        self.last: PollResult | None = None
        self.last_traffic: Any = None  # what /metrics shows of the traffic watch
        self.polls = 0
        self.errors = 0

    def poll(self) -> PollResult:
        """One cycle; a failing source is reported in the result (and the exporter), not raised.

        Python's cyclic garbage collector is paused for the cycle (gc_paused): a sweep of 10,000
        guests allocates some 100,000 containers (the JSON rows, Samples, values), none of them in a
        reference cycle, and the collections they would trigger (full ones among them, over every
        object of the process) cost about as much as the rest of the poll's own work."""
        with gc_paused():
            return self._poll()

    def _poll(self) -> PollResult:
        started = time.perf_counter()
        now = self.clock()
        try:
            sweep = self.source.sweep()
        except PveguardError as exc:
            self.errors += 1
            self.polls += 1
            result = PollResult(now, None, states=load_states(self.store), error=exc.message,
                                duration=time.perf_counter() - started)
            # notifications queued earlier still go out while the API is unreachable
            result.delivery = self.dispatcher.deliver(now)
            self.last = result
            return result
        # only this monitor's rules: other jobs (certificates) keep their alerts in the same table
        own = {r.name for r in self.rules}
        states = {k: s for k, s in load_states(self.store).items() if k[0] in own}
        # the percentages and byte rates are rounded only for the guests whose values are read: the rules'
        # candidates (all guests when a rule reads a byte rate or the traffic watch runs), the series,
        # the status view, the table
        chosen_obs = None if self.traffic is not None else alert_candidates(
            sweep.samples, self.rules, {k[1] for k in states})
        derived = derive(self.prev, sweep, lazy_rates=True)
        obs = observations(sweep, derived, rates=any(r.metric in RATE_SERIES for r in self.rules),
                           samples=chosen_obs)
        names = {s.id: s.name for s in sweep.samples}
        managed = [s.id for s in sweep.samples if s.managed]
        traffic = None
        if self.traffic is not None:
            try:
                traffic = self.traffic.observe(now, sweep)
            except PveguardError as exc:  # the usage poll goes on; the last traffic state stays
                log.warning("traffic watch: %s", exc.message)
                traffic = self.traffic.view(now)
                traffic.errors = [*traffic.errors, exc.message]
            t_obs, t_names = traffic.observations()
            for target, values in t_obs.items():
                obs[target] = {**obs.get(target, {}), **values}
            names.update(t_names)
        ev = evaluate(self.rules, states, obs, now, names, managed, load_silences(self.store, now))
        with self.store.transaction() as conn:
            save_states(conn, states, ev.states)
            enqueue(conn, [e.to_dict() for e in ev.events], list(self.dispatcher.notifiers), now)
            save_counters(conn, sweep)
        if self.record_series:
            # only the guests whose series are kept (max_targets of them, as select_targets picks)
            chosen = series_targets(sweep.samples, self.series.max_targets)
            targets = [TargetInfo(s.id, s.vmid, s.name, s.node, s.type, s.managed, sweep.ts) for s in chosen]
            keep = self.series_metrics
            self.series.record(sweep.ts, {s.id: {m: x for m, x in derived[s.id].values.items()
                                                 if keep is None or m in keep}
                                          for s in chosen if s.id in derived}, targets)
        delivery = self.dispatcher.deliver(now)
        self.prev = self.last_good = sweep
        if traffic is not None:
            self.last_traffic = traffic
        self.polls += 1
        result = PollResult(now, sweep, derived, ev.states, ev.events, delivery,
                            duration=time.perf_counter() - started, traffic=traffic)
        self.last = result
        return result


# --- the previous sweep's counters, so the next process computes rates at its first poll ----------

COUNTERS_KEY = "last_counters"
COUNTERS_MAX_AGE = 3600.0  # older counters would average a rate over too long a stretch


def save_counters(conn: Any, sweep: Sweep) -> None:
    """The running guests' counters (a guest not running has no rates from its last reading: derive
    treats one missing from the previous sweep the same way)."""
    items = {s.id: [s.status, s.netin, s.netout, s.diskread, s.diskwrite, s.uptime]
             for s in sweep.samples if s.status == "running" and (s.type == "lxc" or s.type == "qemu")}
    data = {"ts": sweep.ts, "items": items}
    try:  # orjson: a third of json's time for 10,000 rows; json.loads reads both the same
        text = orjson.dumps(data).decode()
    except TypeError:  # what orjson cannot write (an integer past 64 bits)
        text = json.dumps(data, separators=(",", ":"))
    conn.execute("INSERT INTO monitor_meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                 "excluded.value", (COUNTERS_KEY, text))


def load_counters(store: Store, now: float) -> Sweep | None:
    """The last sweep's counters (a `pveguard monitor --once` from a timer gets rates too)."""
    open_monitor_store(store)
    row = store.conn.execute("SELECT value FROM monitor_meta WHERE key = ?", (COUNTERS_KEY,)).fetchone()
    if row is None:
        return None
    try:
        data = json.loads(row["value"])
        if not 0 <= now - float(data["ts"]) <= COUNTERS_MAX_AGE:
            return None
        samples = [Sample(id=i, type=i.split("/", 1)[0], node="", status=str(v[0]), netin=int(v[1]),
                          netout=int(v[2]), diskread=int(v[3]), diskwrite=int(v[4]), uptime=int(v[5]))
                   for i, v in data["items"].items()]
    except (ValueError, KeyError, TypeError, IndexError):
        return None  # a damaged entry only costs one poll without rates
    return Sweep(ts=float(data["ts"]), samples=samples, api_calls=0)


# --- alert state and silences in the store -------------------------------------------------------


def load_states(store: Store) -> dict[tuple[str, str], AlertState]:
    open_monitor_store(store)
    rows = store.conn.execute("SELECT data FROM monitor_alerts").fetchall()
    states = [AlertState.from_dict(json.loads(r["data"])) for r in rows]
    return {s.key: s for s in states}


def save_states(conn: Any, old: dict[tuple[str, str], AlertState], new: dict[tuple[str, str], AlertState]) -> None:
    gone = [k for k in old if k not in new]
    conn.executemany("DELETE FROM monitor_alerts WHERE rule = ? AND target = ?", gone)
    conn.executemany(
        "INSERT INTO monitor_alerts(rule, target, state, data) VALUES(?,?,?,?) "
        "ON CONFLICT(rule, target) DO UPDATE SET state = excluded.state, data = excluded.data",
        [(s.rule, s.target, s.state, json.dumps(s.to_dict(), sort_keys=True))
         for k, s in new.items() if old.get(k) != s])


def load_silences(store: Store, now: float, include_expired: bool = False) -> list[Silence]:
    open_monitor_store(store)
    sql = "SELECT * FROM monitor_silences" + ("" if include_expired else " WHERE until > ?") + " ORDER BY id"
    rows = store.conn.execute(sql, () if include_expired else (now,)).fetchall()
    return [Silence(r["id"], r["target"], r["until"], r["reason"], r["rule"], r["created"]) for r in rows]


def add_silence(store: Store, target: str, duration: float, reason: str, now: float,
                rule: str | None = None) -> Silence:
    """Store a silence; the caller writes the ledger entry."""
    if duration <= 0:
        raise UsageError("a silence needs a positive duration", hint="e.g. --for 2h")
    if not reason.strip():
        raise UsageError("a silence needs a reason", hint="e.g. --reason 'kernel update on pve1'")
    open_monitor_store(store)
    actor = os.environ.get("SUDO_USER") or os.environ.get("USER") or ""
    with store.transaction() as conn:
        cur = conn.execute("INSERT INTO monitor_silences(target, rule, until, reason, created, actor) "
                           "VALUES(?,?,?,?,?,?)", (target, rule, now + duration, reason, now, actor))
        sid = int(cur.lastrowid or 0)
    return Silence(sid, target, now + duration, reason, rule, now)


def end_silence(store: Store, silence_id: int, now: float) -> Silence:
    open_monitor_store(store)
    row = store.conn.execute("SELECT * FROM monitor_silences WHERE id = ?", (silence_id,)).fetchone()
    if row is None:
        raise UsageError(f"no silence with id {silence_id}", hint="list them with 'pveguard alerts --json'")
    with store.transaction() as conn:
        conn.execute("UPDATE monitor_silences SET until = ? WHERE id = ? AND until > ?", (now, silence_id, now))
    return Silence(row["id"], row["target"], min(row["until"], now), row["reason"], row["rule"], row["created"])
