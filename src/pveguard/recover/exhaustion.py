"""Resource exhaustion: identify -> scale -> migrate if needed -> root cause analysis, driven by the
monitor's sustained alerts (`emergency.resource_exhaustion`).

A plain function of the recover job (`handle`), so the CLI runs it in each `pveguard recover` sweep and
`serve` will run it in the same loop: one implementation, two drivers. The monitor (`pveguard monitor`,
its timer, or `serve`) decides what is sustained (`monitoring.thresholds` for `monitoring.sustain`);
this reads the firing cpu / memory / disk alerts from the state store and acts on this installation's
containers:

* identify: the top processes inside the container (`ps` through the backend's exec, or /proc when
  there is no ps) and its share of the node;
* scale: one step of the resource that relieves the rule (memory -> memory, cpu -> cores, disk ->
  rootfs), live where the backend can, with a receipt in the ledger (recover/scale.py);
* migrate: only when the resource is at its cap, only on Proxmox VE, only to another online node
  with room (the one with the most free memory), restart mode; never on a single node (it says why);
* root cause analysis: the `pveguard rca` report, written to <state-dir>/rca/.

A firing alert is acted on once, then again only when a monitor poll at least `monitoring.sustain`
after the last action still has it firing (the monitor had the time to see the effect). When the
monitor's last poll is older than two poll intervals plus a minute, its alerts are stale: nothing is
done on stale data.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pveguard.backends.base import MANAGED_TAG, Backend, Guest, Marker, read_marker
from pveguard.errors import BackendError, PveguardError
from pveguard.recover.scale import RULE_RESOURCE, Receipt, apply_size, base_size, current_size, step_up
from pveguard.store import Store
from pveguard.strategy.models import Container, Strategy
from pveguard.strategy.units import format_duration

Record = Callable[..., None]
MIGRATIONS = [
    """
    CREATE TABLE recover_exhaustion (
        name TEXT NOT NULL,
        resource TEXT NOT NULL,
        episode REAL NOT NULL,
        last_action REAL NOT NULL,
        PRIMARY KEY (name, resource)
    )
    """,
]
PS_ARGV = ["ps", "-eo", "pid=,rss=,pcpu=,comm=,args=", "--sort=-rss"]
# the same columns from /proc when the container has no ps (a minimal root); cpu is not known there
PROC_SCRIPT = r"""for d in /proc/[0-9]*; do
  [ -r "$d/status" ] || continue
  rss=0; name=
  while read -r k v _; do case "$k" in Name:) name=$v;; VmRSS:) rss=$v;; esac; done < "$d/status"
  args=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)
  echo "${d#/proc/} $rss 0.0 $name ${args:-[$name]}"
done"""


@dataclass(frozen=True)
class Proc:
    pid: int
    rss_kib: int
    cpu: float
    comm: str
    args: str

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "rss_mib": round(self.rss_kib / 1024, 1), "cpu": self.cpu, "comm": self.comm,
                "args": self.args}


def parse_ps(text: str) -> list[Proc]:
    """`pid rss pcpu comm args` lines -> processes, largest resident memory first."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        try:
            out.append(Proc(int(parts[0]), int(parts[1]), float(parts[2]), parts[3],
                            parts[4].strip() if len(parts) > 4 else parts[3]))
        except ValueError:
            continue
    return sorted(out, key=lambda p: (-p.rss_kib, -p.cpu, p.pid))


def top_processes(backend: Backend, guest: Guest, limit: int = 10) -> tuple[list[Proc], str]:
    """The container's largest processes (by resident memory, then cpu) and where they came from."""
    try:
        r = backend.exec(guest, PS_ARGV, timeout=30)
        if r.ok and parse_ps(r.stdout):
            return parse_ps(r.stdout)[:limit], "ps"
        r = backend.exec(guest, ["sh", "-c", PROC_SCRIPT], timeout=30)
    except BackendError as exc:
        return [], f"not read: {exc.message}"
    procs = [p for p in parse_ps(r.stdout) if p.comm not in ("sh", "tr") or p.rss_kib > 0]
    return (procs[:limit], "/proc") if procs else ([], f"not read: {(r.stderr or r.stdout).strip()[:200]}")


@dataclass(frozen=True)
class NodeRoom:
    node: str
    online: bool
    maxmem: int
    mem: int
    maxcpu: float

    @property
    def free(self) -> int:
        return max(0, self.maxmem - self.mem)


def nodes_of(backend: Backend) -> list[NodeRoom]:
    """The nodes the backend can place containers on, with their memory (one listing on PVE)."""
    resources = getattr(backend, "resources", None)
    if backend.name == "proxmox" and resources is not None:
        rows = resources("node", what="reading the cluster nodes")
        return [NodeRoom(str(r["node"]), r.get("status") == "online", int(r.get("maxmem") or 0),
                         int(r.get("mem") or 0), float(r.get("maxcpu") or 0)) for r in rows]
    total = avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k == "MemTotal":
                total = int(v.split()[0]) * 1024
            elif k == "MemAvailable":
                avail = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return [NodeRoom(getattr(backend, "node", socket.gethostname()), True, total, total - avail,
                     float(os.cpu_count() or 1))]


def pick_target(nodes: list[NodeRoom], current: str, need_mem: int, cores: int, reserve: int) -> tuple[str | None, str]:
    """The node to migrate to (the most free memory among those with room), or None and why not."""
    online = [n for n in nodes if n.online]
    if len(nodes) <= 1:
        return None, "a single node: there is nowhere to migrate to"
    others = [n for n in online if n.node != current]
    if not others:
        return None, "no other node is online"
    fits = [n for n in others if n.free >= need_mem + reserve and n.maxcpu >= cores]
    if not fits:
        best = max(others, key=lambda n: n.free)
        return None, (f"no node has room: it needs {(need_mem + reserve) >> 20} MiB free (the container's "
                      f"{need_mem >> 20} MiB + resources.host_reserved_memory); the best, {best.node}, has "
                      f"{best.free >> 20} MiB")
    best = max(fits, key=lambda n: (n.free, n.node))
    return best.node, f"{best.node} has the most free memory ({best.free >> 20} MiB)"


@dataclass
class Handling:
    """What was done about one firing alert."""

    name: str
    vmid: int
    node: str
    rule: str
    resource: str
    value: float | None
    action: str  # scaled | capped | migrated | identified | waiting | skipped | failed
    reason: str = ""
    top: list[Proc] = field(default_factory=list)
    top_source: str = ""
    share: dict[str, float] = field(default_factory=dict)
    scale: Receipt | None = None
    migrated_to: str | None = None
    report: str | None = None

    @property
    def ok(self) -> bool:
        return self.action != "failed"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vmid": self.vmid, "node": self.node, "rule": self.rule,
                "resource": self.resource, "value": self.value, "action": self.action, "reason": self.reason,
                "top": [p.as_dict() for p in self.top], "top_source": self.top_source, "share": self.share,
                "scale": self.scale.as_dict() if self.scale else None, "migrated_to": self.migrated_to,
                "report": self.report}


def open_exhaustion_store(store: Store) -> Store:
    store.migrate("recover_exhaustion", MIGRATIONS)
    return store


def _memory(store: Store) -> dict[tuple[str, str], tuple[float, float]]:
    rows = open_exhaustion_store(store).conn.execute("SELECT * FROM recover_exhaustion").fetchall()
    return {(str(r["name"]), str(r["resource"])): (float(r["episode"]), float(r["last_action"])) for r in rows}


def _remember(store: Store, name: str, resource: str, episode: float, at: float) -> None:
    with open_exhaustion_store(store).transaction() as conn:
        conn.execute("INSERT INTO recover_exhaustion(name, resource, episode, last_action) VALUES(?,?,?,?) "
                     "ON CONFLICT(name, resource) DO UPDATE SET episode = excluded.episode, "
                     "last_action = excluded.last_action", (name, resource, episode, at))


def last_poll(store: Store) -> float | None:
    """When the monitor last polled successfully (its saved counters), None when it never did."""
    from pveguard.monitor.engine import COUNTERS_KEY
    from pveguard.monitor.series import open_monitor_store

    row = open_monitor_store(store).conn.execute("SELECT value FROM monitor_meta WHERE key = ?",
                                                 (COUNTERS_KEY,)).fetchone()
    try:
        return float(json.loads(row["value"])["ts"]) if row else None
    except (ValueError, KeyError, TypeError):
        return None


def firing(store: Store) -> list[Any]:
    """The monitor's firing cpu / memory / disk alerts on containers."""
    from pveguard.monitor.engine import load_states

    return sorted((s for s in load_states(store).values()
                   if s.state == "firing" and s.rule in RULE_RESOURCE and s.target.startswith("lxc/")),
                  key=lambda s: (s.target, s.rule))


def handle(backend: Backend, strategy: Strategy, instance: str, store: Store, record: Record,
           state_dir: Path | None = None, clock: Callable[[], float] = time.time) -> list[Handling]:
    """Act on every firing exhaustion alert of this installation's containers (see the module doc)."""
    alerts = firing(store)
    if not alerts:
        return []
    now = clock()
    m = strategy.monitoring
    polled = last_poll(store)
    stale_after = 2 * m.poll_interval.total_seconds() + 60
    ex = strategy.emergency.resource_exhaustion
    wanted = {c.name: c for c in strategy.containers}
    guests = {g.vmid: g for g in backend.list_guests() if g.type == "lxc"}
    from pveguard.recover.state import SELF_ENV, SELF_REASON, maintenance, own_container

    held = maintenance(store)
    own = own_container()
    memory = _memory(store)
    out: list[Handling] = []
    stats: dict[int, Any] | None = None
    nodes: list[NodeRoom] | None = None
    for st in alerts:
        vmid = int(st.target.split("/", 1)[1])
        g = guests.get(vmid)
        c = wanted.get(g.name) if g else None
        if g is None or c is None or MANAGED_TAG not in g.tags:
            continue  # not ours to touch (the monitor alerts on every guest)
        resource = RULE_RESOURCE[st.rule]
        h = Handling(g.name, vmid, g.node, st.rule, resource, st.value, "skipped")
        out.append(h)
        if polled is None or now - polled > stale_after:
            h.reason = ("the monitor's alerts are stale (last poll "
                        + (f"{now - polled:.0f}s ago" if polled else "never") + "): run 'pveguard monitor'")
            continue
        if g.name == own:
            h.reason = SELF_REASON.format(env=SELF_ENV)
            continue
        if g.name in held:
            h.reason = f"in maintenance ({held[g.name].reason})"
            continue
        if g.status != "running":
            h.reason = f"not running ({g.status}): the watchdog's business"
            continue
        if g.lock:
            h.reason = f"locked ({g.lock})"
            continue
        episode, last = memory.get((g.name, resource), (None, None))
        sustain = m.sustain.total_seconds()
        if episode == st.started_at and last is not None and polled - last < sustain:
            h.action = "waiting"
            h.reason = (f"acted {now - last:.0f}s ago; the next step once the monitor still sees the alert "
                        f"firing {format_duration(m.sustain)} after it (monitoring.sustain)")
            continue
        try:
            cfg = backend.get_config(g)
        except BackendError as exc:
            h.action, h.reason = "failed", f"config unreadable: {exc.message}"
            continue
        marker = read_marker(cfg.get("description"))
        if marker != Marker(instance):
            h.reason = "not managed by this installation"
            continue
        if cfg.get("lock"):
            h.reason = f"locked ({cfg['lock']})"
            continue
        over = f"(>= {_threshold(strategy, st.rule):g}% for {format_duration(m.sustain)})"
        why = f"{st.rule} at {st.value:.1f}% {over}" if st.value is not None else f"{st.rule} alert firing {over}"
        try:
            if "identify_high_usage" in ex.actions:
                h.top, h.top_source = top_processes(backend, g)
                if stats is None:
                    stats = {s.vmid: s for s in backend.stats()}
                if nodes is None:
                    nodes = nodes_of(backend)
                h.share = _share(stats.get(vmid), next((n for n in nodes if n.node == g.node), None))
            _act(backend, strategy, c, g, cfg, h, why, record, nodes)
        except PveguardError as exc:
            h.action, h.reason = "failed", f"{why}; {exc.message}"
        _remember(store, g.name, resource, st.started_at, now)
        record("recover.exhaustion", f"ct/{vmid}", name=g.name, rule=st.rule, value=st.value, outcome=h.action,
               reason=h.reason, top=[p.as_dict() for p in h.top[:5]], share=h.share,
               migrated_to=h.migrated_to)
        if "root_cause_analysis" in ex.actions and state_dir is not None:
            h.report = _write_report(backend, strategy, store, g, c, st.started_at, now, state_dir)
    return out


def _threshold(strategy: Strategy, rule: str) -> float:
    return float(getattr(strategy.monitoring.thresholds, rule))


def _share(s: Any, node: NodeRoom | None) -> dict[str, float]:
    if s is None or node is None:
        return {}
    out: dict[str, float] = {}
    if node.maxmem:
        out["memory"] = round(s.mem * 100 / node.maxmem, 2)
    if node.maxcpu:
        out["cpu"] = round(s.cpu * s.cpus * 100 / node.maxcpu, 2)
    return out


def _act(backend: Backend, strategy: Strategy, c: Container, g: Guest, cfg: dict[str, Any], h: Handling,
         why: str, record: Record, nodes: list[NodeRoom] | None) -> None:
    ex = strategy.emergency.resource_exhaustion
    r = RULE_RESOURCE[h.rule]
    base = base_size(c)
    cur = current_size(cfg)
    h.action, h.reason = "identified", why
    if "scale_resources" in ex.actions:
        nxt = step_up(r, cur.get(r), base.get(r), ex.scale_step, ex.scale_max)
        if nxt is not None:
            h.scale = apply_size(backend, g, cfg, base, {r: nxt}, why, record)
            h.action = "scaled"
            h.reason = (f"{why}; {r} {cur.get(r)} -> {nxt} {_unit(r)}"
                        + (" (live)" if h.scale.live else f" (at the next restart: {', '.join(h.scale.pending)})"))
            return
        h.action = "capped"
        h.reason = f"{why}; {r} is at its cap ({cur.get(r)} {_unit(r)}, scale_max {ex.scale_max:g} x {base.get(r)})"
    if "migrate" not in ex.actions:
        return
    if h.action == "identified":
        h.reason += "; migration only follows a capped scale (scale_resources is off)"
        return
    if backend.name != "proxmox":
        h.reason += f"; no migration: the {backend.name} backend has a single host"
        return
    nodes = nodes if nodes is not None else nodes_of(backend)
    target, because = pick_target(nodes, g.node, cur.memory << 20, cur.cores,
                                  strategy.resources.host_reserved_memory)
    if target is None:
        h.reason += f"; no migration: {because}"
        return
    tgt = f"ct/{g.vmid}"
    record("recover.migrate.intent", tgt, name=g.name, reason=why, source=g.node, to=target, mode="restart",
           because=because)
    try:
        backend.migrate(g, target, restart=True)
    except BackendError as exc:
        record("recover.migrate", tgt, name=g.name, source=g.node, to=target, result="failed", error=exc.message)
        raise
    record("recover.migrate", tgt, name=g.name, source=g.node, to=target, result="ok", mode="restart")
    h.action, h.migrated_to = "migrated", target
    h.reason += f"; migrated (restart mode) from {g.node} to {because}"


def _unit(r: str) -> str:
    return {"memory": "MiB", "cores": "cores", "disk": "GiB"}[r]


def _write_report(backend: Backend, strategy: Strategy, store: Store, g: Guest, c: Container, started: float,
                  now: float, state_dir: Path) -> str | None:
    """The rca report of this event (markdown) under <state-dir>/rca/; None when it could not be written."""
    from pveguard.recover import rca

    try:
        doc = rca.build(backend, strategy, store, c.name, since=min(started, now) - 3600, until=now,
                        require_metrics=False)
        folder = state_dir / "rca"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"{g.name}-{stamp}.md"
        path.write_text(rca.render(doc, "markdown"), encoding="utf-8")
        return str(path)
    except (PveguardError, OSError):
        return None
