"""Traffic watch: the firewall's own view of each container's traffic.

Two things per container, read on a slower cadence than the usage poll (`monitoring.traffic.read_every`;
polls in between reuse the last reading, from the store, so a `monitor --once` from a timer works too):

* **dropped connections** -- a cumulative count and a rate per minute (alert `fw_drops`);
* **destinations** -- the (protocol, address, port) set each container talks to. What a container
  talks to during its first `monitoring.traffic.learning` is its baseline; a destination seen after
  that is *new* and fires the alert `new_destination` (one per container and destination) until an
  admin accepts it into the baseline (`pveguard monitor traffic accept NAME DEST`).

Where the numbers come from:

* **Proxmox VE**: pve-firewall's log (`/var/log/pve-firewall.log`, written by pvefw-logger), read with
  `GET /nodes/{node}/firewall/log?since=...` -- ONE call per node and read (paged by `start`/`limit`
  when long), never one per guest. Each line is `<vmid> <level> <chain> <dd/Mon/YYYY:HH:MM:SS> <+zone>
  <msg>IN=... SRC=... DST=... PROTO=... DPT=...`. Drops are the guest's lines whose message is
  `policy DROP:`/`policy REJECT:`/`DROP:`/`REJECT:`; pve-firewall logs them only while the guest's
  `log_level_in`/`log_level_out` is set (pveguard's desired firewall options set `log_level_in: info`)
  and through its 1/s log rate limit, so the count is a lower bound. Destinations are the guest's
  outbound (`-OUT` chain) lines: with the default `policy_out: ACCEPT` pve-firewall logs no accepted
  outbound connection, so on PVE the destination watch sees what the guest's egress filtering logs
  (a `policy_out` of DROP/REJECT with `log_level_out`, or rules with a log level).
* **plain LXC**: drops are the nftables named counters `drop_<vmid>` in the tables named
  `pveguard-iso*` (`nft -j list counters`; no such counter = unknown, not 0); destinations are the
  host's conntrack table (`/proc/net/nf_conntrack`), each entry's original source address mapped to
  the container that holds it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pveguard.monitor.alerts import Rule
from pveguard.monitor.collector import Sweep
from pveguard.store import Store

NFT_TABLE_PREFIX = "pveguard-iso"
COUNTER_RE = re.compile(r"^drop_(\d+)$")
CONNTRACK = Path("/proc/net/nf_conntrack")
LOG_PAGE = 1000  # lines per firewall-log request
FIRST_READ_BACK = 60  # a first read looks back this far, not through the whole log history
SEP = ">"  # alert target of a new destination: "lxc/101>tcp/10.0.0.5:443"
# new_destination alerts per container at most (the oldest new ones); a container that suddenly talks to
# hundreds of places is one storm of alerts otherwise. All of them show in `monitor traffic` and count in
# pveguard_container_unaccepted_destinations.
MAX_NEW_ALERTS = 20

MIGRATIONS: list[str] = [
    """
    CREATE TABLE traffic_containers (
        target TEXT PRIMARY KEY, vmid INTEGER, name TEXT NOT NULL DEFAULT '', learn_start REAL NOT NULL,
        dropped_total REAL, counter REAL, drop_rate REAL, new_total INTEGER NOT NULL DEFAULT 0,
        last_read REAL);
    CREATE TABLE traffic_destinations (
        target TEXT NOT NULL, dest TEXT NOT NULL, state TEXT NOT NULL, first_seen REAL NOT NULL,
        last_seen REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (target, dest)) WITHOUT ROWID;
    CREATE TABLE traffic_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
]


def open_traffic_store(store: Store) -> Store:
    store.migrate("traffic", MIGRATIONS)
    return store


def enabled(strategy: Any) -> bool:
    """The watch runs while both switches are on (either off turns it off, as for firewall_rules)."""
    return bool(strategy.network.isolation.traffic_monitoring and strategy.security.network.traffic_monitoring)


# --- parsing (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One pve-firewall log line."""

    vmid: int
    level: int
    chain: str
    ts: float
    action: str  # ACCEPT | DROP | REJECT | "" (another message)
    policy: bool
    direction: str  # in | out | ""
    fields: Mapping[str, str]
    text: str

    @property
    def dropped(self) -> bool:
        return self.action in ("DROP", "REJECT")

    def destination(self) -> str | None:
        """`proto/dst:port` of an outbound line (None for inbound lines and lines without a DST)."""
        if self.direction != "out" or "DST" not in self.fields:
            return None
        return dest_text(self.fields.get("PROTO", ""), self.fields["DST"], self.fields.get("DPT"))


_LINE_RE = re.compile(r"^(\d+) ([0-7]) (\S+) (\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2}) ([+-]\d{4}) (.*)$")
_MSG_RE = re.compile(r"^(policy )?(ACCEPT|DROP|REJECT): ")
_FIELD_RE = re.compile(r"([A-Z]+)=(\S*)")


def parse_log_line(text: str) -> LogEntry | None:
    """A pvefw-logger line (`117 6 veth117i0-IN 14/Mar/2014:12:47:07 +0100 policy DROP: IN=...`), else None."""
    m = _LINE_RE.match(text)
    if not m:
        return None
    try:
        ts = datetime.strptime(f"{m.group(4)} {m.group(5)}", "%d/%b/%Y:%H:%M:%S %z").timestamp()
    except ValueError:
        return None
    msg = m.group(6)
    am = _MSG_RE.match(msg)
    chain = m.group(3)
    direction = "in" if chain.endswith("-IN") else ("out" if chain.endswith("-OUT") else "")
    return LogEntry(vmid=int(m.group(1)), level=int(m.group(2)), chain=chain, ts=ts,
                    action=am.group(2) if am else "", policy=bool(am and am.group(1)), direction=direction,
                    fields=dict(_FIELD_RE.findall(msg)), text=text)


def dest_text(proto: str, addr: str, port: str | int | None) -> str:
    """`tcp/10.0.0.5:443`, `udp/[fd00::1]:53`, `icmp/10.0.0.5` -- the form the baseline keeps."""
    proto = proto.lower()
    host = f"[{addr}]" if ":" in addr else addr
    return f"{proto}/{host}:{port}" if port not in (None, "", 0, "0") else f"{proto}/{host}"


def parse_dest(text: str) -> str:
    """A destination as an admin types it, normalized; ValueError naming the expected form."""
    m = re.fullmatch(r"\s*([A-Za-z0-9]+)/(\[[^\]]+\]|[^:\s]+)(?::(\d{1,5}))?\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a destination like tcp/10.0.0.5:443")
    try:
        addr = str(ipaddress.ip_address(m.group(2).strip("[]")))
    except ValueError:
        raise ValueError(f"{m.group(2)!r} in {text!r} is not an IP address") from None
    return dest_text(m.group(1), addr, m.group(3))


def parse_nft_counters(doc: Mapping[str, Any]) -> dict[int, int]:
    """`nft -j list counters` -> vmid -> dropped packets, from counters `drop_<vmid>` in `pveguard-iso*` tables
    (a vmid's counters in several tables add up)."""
    out: dict[int, int] = {}
    for item in doc.get("nftables", []) or []:
        c = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(c, dict) or not str(c.get("table", "")).startswith(NFT_TABLE_PREFIX):
            continue
        m = COUNTER_RE.match(str(c.get("name", "")))
        if m:
            out[int(m.group(1))] = out.get(int(m.group(1)), 0) + int(c.get("packets", 0) or 0)
    return out


def parse_conntrack(text: str) -> list[tuple[str, str]]:
    """/proc/net/nf_conntrack -> (original source address, destination text) per entry."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        proto = parts[2]
        kv: dict[str, str] = {}
        for p in parts[3:]:
            k, sep, v = p.partition("=")
            if sep and k not in kv:  # the first src/dst/sport/dport are the original direction
                kv[k] = v
        if "src" in kv and "dst" in kv:
            out.append((kv["src"], dest_text(proto, kv["dst"], kv.get("dport"))))
    return out


def parse_fib_trie(text: str) -> list[str]:
    """The local addresses in a network namespace's /proc/<pid>/net/fib_trie (loopback excluded)."""
    out: list[str] = []
    last = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--") or s.startswith("+--"):
            last = s[3:].strip().split("/")[0]
        elif s == "/32 host LOCAL" and last and not last.startswith("127.") and last not in out:
            out.append(last)
    return out


# --- readings -----------------------------------------------------------------------------------


@dataclass
class Reading:
    """What one read of the firewall saw, per vmid."""

    ts: float
    drops: dict[int, int] = field(default_factory=dict)  # new drops since the last read (log) ...
    cumulative: bool = False  # ... or a cumulative counter (nftables)
    destinations: dict[int, set[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    api_calls: int = 0
    source: str = ""


class Reader(Protocol):
    name: str

    def read(self, store: Store, now: float, sweep: Sweep) -> Reading: ...


class PveFirewallLog:
    """The nodes' firewall logs, one `GET /nodes/{node}/firewall/log?since=` per node (paged by start)."""

    name = "pve-firewall-log"

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call

    def read(self, store: Store, now: float, sweep: Sweep) -> Reading:
        from pveguard.errors import PveguardError

        r = Reading(ts=now, source=self.name)
        nodes = sorted({s.node for s in sweep.samples if s.type == "node" and s.up}
                       or {s.node for s in sweep.samples if s.is_guest and s.node})
        for node in nodes:
            key = f"log:{node}"
            pos = _meta(store, key) or {}
            since = int(pos.get("since") or now - FIRST_READ_BACK)
            seen_at_since = set(pos.get("seen", []))
            lines: list[str] = []
            try:
                start = 0
                while True:
                    page = self.call("GET", f"/nodes/{node}/firewall/log",
                                     {"since": since, "start": start, "limit": LOG_PAGE}) or []
                    r.api_calls += 1
                    lines += [str(x.get("t", "")) for x in page if isinstance(x, dict)]
                    if len(page) < LOG_PAGE:
                        break
                    start += len(page)
            except PveguardError as exc:
                why = exc.message
                if getattr(exc, "status", None) == 403:
                    why += (f" (reading a node's firewall log needs Sys.Syslog on /nodes/{node}, e.g. "
                            f"'pveum acl modify /nodes/{node} -token <token> -role PVESysAdmin')")
                r.errors.append(f"node {node}: {why}")
                continue
            newest, at_newest = since, set(seen_at_since)
            for text in lines:
                e = parse_log_line(text)
                if e is None or e.vmid == 0:
                    continue
                second = int(e.ts)
                if second == since and text in seen_at_since:
                    continue  # `since` is inclusive to the second: read last time already
                if second > newest:
                    newest, at_newest = second, set()
                if second == newest:
                    at_newest.add(text)
                if e.dropped:
                    r.drops[e.vmid] = r.drops.get(e.vmid, 0) + 1
                d = e.destination()
                if d:
                    r.destinations.setdefault(e.vmid, set()).add(d)
            with store.transaction() as conn:
                _set_meta(conn, key, {"since": newest, "seen": sorted(at_newest)})
        return r


class LxcFirewall:
    """nftables counters `drop_<vmid>` (pveguard-iso* tables) and the host's conntrack table."""

    name = "nftables+conntrack"

    def __init__(self, addresses: Callable[[], Mapping[str, int]], conntrack: Path = CONNTRACK,
                 nft: str | None = None) -> None:
        self.addresses = addresses
        self.conntrack = conntrack
        self.nft = nft or shutil.which("nft") or "nft"

    def read(self, store: Store, now: float, sweep: Sweep) -> Reading:
        r = Reading(ts=now, cumulative=True, source=self.name)
        try:
            proc = subprocess.run([self.nft, "-j", "list", "counters"], capture_output=True, text=True,
                                  timeout=30, check=False)
            if proc.returncode == 0:
                r.drops = parse_nft_counters(json.loads(proc.stdout or "{}"))
            else:
                r.errors.append(f"nft -j list counters: {proc.stderr.strip() or proc.returncode}")
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            r.errors.append(f"nft -j list counters: {exc}")
        try:
            text = self.conntrack.read_text()
        except OSError as exc:
            r.errors.append(f"{self.conntrack}: {exc.strerror or exc} (is the nf_conntrack module loaded?)")
            return r
        owner = self.addresses()
        for src, dest in parse_conntrack(text):
            vmid = owner.get(src)
            if vmid is not None:
                r.destinations.setdefault(vmid, set()).add(dest)
        return r


def lxc_addresses(backend: Any) -> Callable[[], dict[str, int]]:
    """address -> vmid of the running containers, from each one's network namespace (/proc/<pid>/net/fib_trie)."""

    def get() -> dict[str, int]:
        out: dict[str, int] = {}
        running = getattr(backend, "running_pids", None)
        for vmid, pid in (running() if running else {}).items():
            try:
                text = Path(f"/proc/{pid}/net/fib_trie").read_text()
            except OSError:
                continue  # stopped meanwhile
            for addr in parse_fib_trie(text):
                out[addr] = vmid
        return out

    return get


# --- the watch ----------------------------------------------------------------------------------


@dataclass
class ContainerTraffic:
    target: str
    vmid: int | None
    name: str
    learn_start: float
    learning: bool
    dropped_total: float | None
    drop_rate: float | None
    new_total: int
    destinations: list[dict[str, Any]]

    def new(self) -> list[str]:
        return [d["dest"] for d in self.destinations if d["state"] == "new"]


@dataclass
class TrafficView:
    """The watch's current state (from the store): what the exporter, the CLI and the alerts show."""

    last_read: float | None
    source: str
    errors: list[str]
    api_calls: int
    containers: list[ContainerTraffic]

    def observations(self) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Alert observations: `fw_drops` per container, `new_destination` per container and new destination
        (target `lxc/101>tcp/10.0.0.5:443`); and the names of those targets."""
        obs: dict[str, dict[str, float]] = {}
        names: dict[str, str] = {}
        for c in self.containers:
            if c.drop_rate is not None:
                obs.setdefault(c.target, {})["fw_drops"] = c.drop_rate
            new = sorted((x for x in c.destinations if x["state"] == "new"), key=lambda x: (x["first_seen"], x["dest"]))
            for d in [x["dest"] for x in new][:MAX_NEW_ALERTS]:
                obs[f"{c.target}{SEP}{d}"] = {"new_destination": 1.0}
                names[f"{c.target}{SEP}{d}"] = c.name
        return obs, names


class TrafficWatch:
    def __init__(self, store: Store, reader: Reader, every: float, learning: float, clock: Callable[[], float]
                 = time.time) -> None:
        self.store = open_traffic_store(store)
        self.reader = reader
        self.every = every
        self.learning = learning
        self.clock = clock

    def due(self, now: float) -> bool:
        last = _meta(self.store, "last_read")
        return last is None or not 0 <= now - float(last.get("ts", 0)) < self.every - 0.5

    def observe(self, now: float, sweep: Sweep) -> TrafficView:
        """Read when due (else reuse the stored state), then the view."""
        if self.due(now):
            reading = self.reader.read(self.store, now, sweep)
            self.record(reading, sweep)
        return self.view(now)

    def record(self, reading: Reading, sweep: Sweep) -> None:
        now = reading.ts
        guests = {s.vmid: s for s in sweep.samples if s.is_guest and not s.template and s.vmid is not None}
        rows = {r["target"]: dict(r) for r in self.store.conn.execute("SELECT * FROM traffic_containers")}
        with self.store.transaction() as conn:
            for vmid, s in guests.items():
                row = rows.get(s.id)
                if row is None:
                    row = {"target": s.id, "vmid": vmid, "name": s.name, "learn_start": now, "dropped_total": None,
                           "counter": None, "drop_rate": None, "new_total": 0, "last_read": None}
                row["name"] = s.name
                prev_ts = row["last_read"]
                count = reading.drops.get(vmid)
                if reading.cumulative:
                    if count is None:
                        row["drop_rate"] = None  # no counter (yet): unknown, not 0
                    else:
                        prev = row["counter"]
                        delta = count - prev if prev is not None and count >= prev else (
                            count if prev is not None else 0)
                        row["dropped_total"] = float(row["dropped_total"] or 0) + delta
                        row["counter"] = count
                        row["drop_rate"] = (delta * 60 / (now - prev_ts)) if prev is not None and prev_ts \
                            and now > prev_ts else None
                elif not reading.errors or count is not None:
                    delta = count or 0
                    row["dropped_total"] = float(row["dropped_total"] or 0) + delta
                    row["drop_rate"] = delta * 60 / (now - prev_ts) if prev_ts and now > prev_ts else None
                row["last_read"] = now
                learning = now < float(row["learn_start"]) + self.learning
                for d in sorted(reading.destinations.get(vmid, ())):
                    cur = conn.execute("SELECT state FROM traffic_destinations WHERE target = ? AND dest = ?",
                                       (s.id, d)).fetchone()
                    if cur is None:
                        state = "learned" if learning else "new"
                        row["new_total"] += state == "new"
                        conn.execute("INSERT INTO traffic_destinations(target, dest, state, first_seen, last_seen, "
                                     "hits) VALUES(?,?,?,?,?,1)", (s.id, d, state, now, now))
                    else:
                        conn.execute("UPDATE traffic_destinations SET last_seen = ?, hits = hits + 1 "
                                     "WHERE target = ? AND dest = ?", (now, s.id, d))
                conn.execute("INSERT OR REPLACE INTO traffic_containers(target, vmid, name, learn_start, "
                             "dropped_total, counter, drop_rate, new_total, last_read) VALUES(?,?,?,?,?,?,?,?,?)",
                             (row["target"], row["vmid"], row["name"], row["learn_start"], row["dropped_total"],
                              row["counter"], row["drop_rate"], row["new_total"], row["last_read"]))
            _set_meta(conn, "last_read", {"ts": now, "source": reading.source, "errors": reading.errors,
                                          "api_calls": reading.api_calls})

    def view(self, now: float) -> TrafficView:
        return traffic_view(self.store, now, self.learning)


def traffic_view(store: Store, now: float, learning: float) -> TrafficView:
    open_traffic_store(store)
    last = _meta(store, "last_read") or {}
    dests: dict[str, list[dict[str, Any]]] = {}
    for r in store.conn.execute("SELECT * FROM traffic_destinations ORDER BY target, dest"):
        dests.setdefault(r["target"], []).append(
            {"dest": r["dest"], "state": r["state"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
             "hits": r["hits"]})
    out = [ContainerTraffic(r["target"], r["vmid"], r["name"], r["learn_start"], now < r["learn_start"] + learning,
                            r["dropped_total"], r["drop_rate"], r["new_total"], dests.get(r["target"], []))
           for r in store.conn.execute("SELECT * FROM traffic_containers ORDER BY vmid, target")]
    return TrafficView(last.get("ts"), str(last.get("source", "")), list(last.get("errors", [])),
                       int(last.get("api_calls", 0)), out)


def find_container(view: TrafficView, name: str) -> ContainerTraffic | None:
    for c in view.containers:
        if name in (c.name, c.target, str(c.vmid)):
            return c
    return None


def accept(store: Store, target: str, dests: Iterable[str], now: float) -> tuple[list[str], list[str]]:
    """Move destinations into the baseline (state `accepted`); one not seen yet is added ahead of time.
    Returns (the ones that changed, those of them not seen yet)."""
    open_traffic_store(store)
    changed: list[str] = []
    unseen: list[str] = []
    with store.transaction() as conn:
        for d in dests:
            cur = conn.execute("SELECT state FROM traffic_destinations WHERE target = ? AND dest = ?",
                               (target, d)).fetchone()
            if cur is None:
                conn.execute("INSERT INTO traffic_destinations(target, dest, state, first_seen, last_seen, hits) "
                             "VALUES(?,?,?,?,?,0)", (target, d, "accepted", now, now))
                changed.append(d)
                unseen.append(d)
            elif cur["state"] == "new":
                conn.execute("UPDATE traffic_destinations SET state = 'accepted' WHERE target = ? AND dest = ?",
                             (target, d))
                changed.append(d)
    return changed, unseen


def traffic_rules(monitoring: Any) -> list[Rule]:
    """The watch's two alert rules (through the same state machine and notifiers as cpu/memory/disk)."""
    t = monitoring.traffic
    renotify = monitoring.renotify.total_seconds()
    return [
        Rule("fw_drops", "fw_drops", float(t.drops_per_minute), 0.0, float(t.drops_per_minute) / 2, renotify,
             "warning", summary=f"firewall dropped >= {t.drops_per_minute:g} connections/min"),
        Rule("new_destination", "new_destination", 1.0, 0.0, 0.0, renotify, "warning",
             summary="talks to a destination never seen before (pveguard monitor traffic accept NAME DEST "
                     "adds it to the baseline)"),
    ]


def _meta(store: Store, key: str) -> dict[str, Any] | None:
    open_traffic_store(store)
    row = store.conn.execute("SELECT value FROM traffic_meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        data = json.loads(row["value"])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _set_meta(conn: Any, key: str, value: dict[str, Any]) -> None:
    conn.execute("INSERT INTO traffic_meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                 "excluded.value", (key, json.dumps(value, separators=(",", ":"))))


def open_reader(strategy: Any, backend: Any) -> Reader:
    """The reader for the target: the nodes' firewall logs on PVE, nftables + conntrack on lxc."""
    from pveguard.backends.proxmox import ProxmoxBackend

    if isinstance(backend, ProxmoxBackend):
        return PveFirewallLog(backend.call)
    return LxcFirewall(lxc_addresses(backend))
