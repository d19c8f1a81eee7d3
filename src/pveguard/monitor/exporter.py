"""Prometheus exposition of the last poll: pve_* metrics compatible with prometheus-pve-exporter
(same names, one `id` label, same values, taken from the same /cluster/resources fields) plus
pveguard's own alert and cost metrics.

A scrape renders the last sweep; it never calls the PVE API itself, so the API load is one call per
poll however many Prometheus servers scrape us.
"""

from __future__ import annotations

import gzip
import math
import operator
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pveguard.gcpause import gc_paused
from pveguard.monitor.alerts import AlertState
from pveguard.monitor.collector import Sample, Sweep

# Which /cluster/resources fields each resource type carries (pve-manager's PVE/API2/Cluster.pm): the reference
# exporter emits a metric for every field present, so we emit the same set per type.
_FIELDS = {
    "lxc": ("maxdisk", "disk", "maxmem", "mem", "cpu", "maxcpu", "uptime"),
    "qemu": ("maxdisk", "disk", "maxmem", "mem", "cpu", "maxcpu", "uptime"),
    "node": ("maxdisk", "disk", "maxmem", "mem", "cpu", "maxcpu", "uptime"),
    "storage": ("maxdisk", "disk", "shared"),
}
_GAUGES: dict[str, tuple[str, str]] = {
    "maxdisk": ("pve_disk_size_bytes",
                "Storage size in bytes (for type 'storage'), root image size for VMs (for types 'qemu' and 'lxc')."),
    "disk": ("pve_disk_usage_bytes",
             "Used disk space in bytes (for type 'storage'), used root image space for VMs "
             "(for types 'qemu' and 'lxc')."),
    "maxmem": ("pve_memory_size_bytes", "Number of available memory in bytes (for types 'node', 'qemu' and 'lxc')."),
    "mem": ("pve_memory_usage_bytes", "Used memory in bytes (for types 'node', 'qemu' and 'lxc')."),
    "cpu": ("pve_cpu_usage_ratio", "CPU utilization (for types 'node', 'qemu' and 'lxc')."),
    "maxcpu": ("pve_cpu_usage_limit", "Number of available CPUs (for types 'node', 'qemu' and 'lxc')."),
    "uptime": ("pve_uptime_seconds",
               "Uptime of node or virtual guest in seconds (for types 'node', 'qemu' and 'lxc')."),
    "shared": ("pve_storage_shared", "Whether or not the storage is shared among cluster nodes"),
}
_COUNTERS: dict[str, tuple[str, str]] = {
    "netout": ("pve_network_transmit_bytes",
               "The amount of traffic in bytes that was sent from the guest over the network since it was started. "
               "(for types 'qemu' and 'lxc')"),
    "netin": ("pve_network_receive_bytes",
              "The amount of traffic in bytes that was sent to the guest over the network since it was started. "
              "(for types 'qemu' and 'lxc')"),
    "diskwrite": ("pve_disk_written_bytes",
                  "The amount of bytes the guest wrote to its block devices since the guest was started. "
                  "(for types 'qemu' and 'lxc')"),
    "diskread": ("pve_disk_read_bytes",
                 "The amount of bytes the guest read from its block devices since the guest was started. "
                 "(for types 'qemu' and 'lxc')"),
}


@dataclass
class ExportView:
    """What a scrape shows: the last sweep, the alert states and the poll counters."""

    sweep: Sweep | None
    states: Mapping[tuple[str, str], AlertState] = field(default_factory=dict)
    polls: int = 0
    errors: int = 0
    poll_duration: float = 0.0
    compliance_score: float | None = None
    severities: Mapping[str, str] = field(default_factory=dict)  # rule name -> severity
    traffic: Any = None  # monitor.traffic.TrafficView, when the traffic watch runs
    # container name -> (pending updates, pending security updates) at the last `pveguard update` check
    pending_updates: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _value(s: Sample, key: str) -> float:
    if key == "shared":
        return 1.0 if s.shared else 0.0
    return float(getattr(s, key))


def pve_families(samples: Iterable[Sample]) -> list[Metric]:
    """The pve_* families for a sweep's samples."""
    samples = list(samples)
    up = GaugeMetricFamily("pve_up", "Node/VM/CT-Status is online/running", labels=["id"])
    gauges = {k: GaugeMetricFamily(name, doc, labels=["id"]) for k, (name, doc) in _GAUGES.items()}
    counters = {k: CounterMetricFamily(name, doc, labels=["id"]) for k, (name, doc) in _COUNTERS.items()}
    guest_info = GaugeMetricFamily("pve_guest_info", "VM/CT info",
                                   labels=["id", "node", "name", "type", "template", "tags"])
    storage_info = GaugeMetricFamily("pve_storage_info", "Storage info",
                                     labels=["id", "node", "storage", "plugintype", "content"])
    for s in samples:
        up.add_metric([s.id], 1.0 if s.up else 0.0)
        for key in _FIELDS.get(s.type, ()):
            if not s.fields or key in s.fields:
                gauges[key].add_metric([s.id], _value(s, key))
        if s.is_guest:
            for key, fam in counters.items():
                if not s.fields or key in s.fields:
                    fam.add_metric([s.id], float(getattr(s, key)))
            guest_info.add_metric([s.id, s.node, s.name, s.type, str(int(s.template)), ";".join(s.tags)], 1)
        elif s.type == "storage":
            storage_info.add_metric([s.id, s.node, s.name, s.plugintype, s.content], 1)
    return [up, *gauges.values(), *counters.values(), guest_info, storage_info]


def pveguard_families(view: ExportView) -> list[Metric]:
    """pveguard's own metrics: alerts, poll cost, compliance."""
    firing = GaugeMetricFamily("pveguard_alert_firing",
                               "1 while a pveguard alert fires, 0 while it is pending",
                               labels=["rule", "id", "name", "severity"])
    for (rule, target), st in sorted(view.states.items()):
        if st.state in ("pending", "firing"):
            firing.add_metric([rule, target, st.name, view.severities.get(rule, "warning")],
                              1.0 if st.state == "firing" else 0.0)
    sweep = view.sweep
    out: list[Metric] = [firing]
    out.append(GaugeMetricFamily("pveguard_poll_duration_seconds", "Wall time of the last poll (sweep + alerts)",
                                 value=view.poll_duration))
    out.append(GaugeMetricFamily("pveguard_api_calls_per_poll", "PVE API requests the last poll made",
                                 value=float(sweep.api_calls if sweep else 0)))
    out.append(GaugeMetricFamily("pveguard_sweep_duration_seconds", "Wall time of the last API sweep",
                                 value=sweep.duration if sweep else 0.0))
    out.append(GaugeMetricFamily("pveguard_last_poll_timestamp_seconds", "When the last successful poll ran",
                                 value=sweep.ts if sweep else 0.0))
    out.append(GaugeMetricFamily("pveguard_resources", "Resources seen in the last poll",
                                 value=float(len(sweep.samples) if sweep else 0)))
    out.append(CounterMetricFamily("pveguard_polls", "Polls since start", value=float(view.polls)))
    out.append(CounterMetricFamily("pveguard_poll_errors", "Polls whose sweep failed", value=float(view.errors)))
    if view.traffic is not None:
        out += traffic_families(view.traffic)
    if view.pending_updates:
        pend = GaugeMetricFamily("pveguard_container_pending_updates",
                                 "Updates apt inside the container would install at the last 'pveguard update' check "
                                 "(kind: all, security)", labels=["name", "kind"])
        for name, (n_all, n_sec) in sorted(view.pending_updates.items()):
            pend.add_metric([name, "all"], float(n_all))
            pend.add_metric([name, "security"], float(n_sec))
        out.append(pend)
    if view.compliance_score is not None:
        out.append(GaugeMetricFamily("pveguard_compliance_score", "Strategy compliance, 0..100",
                                     value=view.compliance_score))
    return out


def traffic_families(traffic: Any) -> list[Metric]:
    """The traffic watch: dropped connections and new destinations per container (monitor/traffic.py)."""
    labels = ["id", "name"]
    dropped = CounterMetricFamily("pveguard_container_firewall_dropped",
                                  "Connections the firewall dropped for the container since the traffic watch "
                                  "started (PVE: firewall log lines, a lower bound; lxc: nftables drop_<vmid> "
                                  "counters)", labels=labels)
    new_total = CounterMetricFamily("pveguard_container_new_destinations",
                                    "Destinations first seen after the container's learning window", labels=labels)
    unaccepted = GaugeMetricFamily("pveguard_container_unaccepted_destinations",
                                   "New destinations not accepted into the baseline yet", labels=labels)
    learning = GaugeMetricFamily("pveguard_container_traffic_learning",
                                 "1 while the container's destination baseline is still being learned", labels=labels)
    for c in traffic.containers:
        key = [c.target, c.name]
        if c.dropped_total is not None:
            dropped.add_metric(key, float(c.dropped_total))
        new_total.add_metric(key, float(c.new_total))
        unaccepted.add_metric(key, float(len(c.new())))
        learning.add_metric(key, 1.0 if c.learning else 0.0)
    last = GaugeMetricFamily("pveguard_traffic_last_read_timestamp_seconds", "When the traffic watch last read "
                             "the firewall", value=float(traffic.last_read or 0))
    calls = GaugeMetricFamily("pveguard_traffic_api_calls_per_read", "PVE API requests the last traffic read made",
                              value=float(traffic.api_calls))
    errors = GaugeMetricFamily("pveguard_traffic_read_errors", "Errors in the last traffic read",
                               value=float(len(traffic.errors)))
    return [dropped, new_total, unaccepted, learning, last, calls, errors]


class ViewCollector(Collector):
    """A prometheus-client collector over whatever `get_view` returns at scrape time."""

    def __init__(self, get_view: Callable[[], ExportView]) -> None:
        self.get_view = get_view

    def collect(self) -> Iterator[Metric]:
        view = self.get_view()
        if view.sweep is not None:
            yield from pve_families(view.sweep.samples)
        yield from pveguard_families(view)


def render_reference(view: ExportView) -> bytes:
    """The exposition through prometheus-client's own generate_latest (the reference; slow at 10k guests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewCollector(lambda: view))
    return generate_latest(registry)


def _esc(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return v


def _header(name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


_FIELD_SETS = {t: frozenset(keys) for t, keys in _FIELDS.items()}
_EMIT: dict[tuple[str, frozenset[str]], frozenset[str]] = {}  # (type, fields present) -> gauges to emit


def _emits(s: Sample) -> frozenset[str]:
    """The gauge keys a sample gets a line for: its type's fields that the API reported."""
    key = (s.type, s.fields)
    got = _EMIT.get(key)
    if got is None:
        if len(_EMIT) > 1024:
            _EMIT.clear()
        kinds = _FIELD_SETS.get(s.type, frozenset())
        got = _EMIT[key] = kinds & s.fields if s.fields else kinds
    return got


def render(view: ExportView) -> bytes:
    """The text exposition of a view, byte for byte what `render_reference` gives, about 8x faster:
    the pve_* lines are formatted straight from the samples instead of through metric objects, and
    integer values (bytes, seconds: most of them) take _num's short path. The cyclic garbage
    collector is paused meanwhile (pveguard.gcpause: 130,000 lines allocate no cycles)."""
    with gc_paused():
        return _render(view)


# everything the static lines of a sample depend on (its labels, sizes, up, info lines)
_STATIC_KEY = operator.attrgetter(*("id", "type", "status", "fields", "maxdisk", "maxmem", "maxcpu", "shared", "name",
                                    "node", "tags", "template", "plugintype", "content"))


@dataclass
class _Static:
    """The lines that stay while the guests' sizes, states and labels do (most polls): formatted once."""

    key: list[tuple[Any, ...]]
    blocks: dict[str, str]  # family key -> its joined lines ("up", the _STATIC sizes, "shared", "info")
    # a varying family's key -> (which samples get a line, their `name{id="..."} ` prefixes)
    varying: dict[str, tuple[Callable[[list[Sample]], Iterable[Sample]], list[str]]]


def _picker(idx: list[int], n: int) -> Callable[[list[Sample]], Iterable[Sample]]:
    """The samples at these positions, in one C call where it can."""
    if len(idx) == n:
        return lambda samples: samples
    if len(idx) >= 2:
        get = operator.itemgetter(*idx)
        return lambda samples: get(samples)
    return lambda samples: [samples[j] for j in idx]


_LAST_STATIC: _Static | None = None  # one entry: the last sweep's (a single assignment: thread-safe to swap)


def _static_blocks(samples: list[Sample]) -> _Static:
    global _LAST_STATIC
    key = list(map(_STATIC_KEY, samples))
    last = _LAST_STATIC
    if last is not None and last.key == key:
        return last
    rows = [(f'{{id="{_esc(s.id)}"}} ', _emits(s)) for s in samples]
    pairs = list(zip(samples, rows, strict=True))
    blocks = {"up": "".join([f"pve_up{i}{'1.0' if s.up else '0.0'}\n" for s, (i, _e) in pairs])}
    for k in _STATIC:
        name = _GAUGES[k][0]
        blocks[k] = "".join([f"{name}{i}{_num(v)}\n" for s, (i, e) in pairs
                             if k in e and (v := getattr(s, k)) is not None])
    name = _GAUGES["shared"][0]
    blocks["shared"] = "".join([f"{name}{i}{'1.0' if s.shared else '0.0'}\n" for s, (i, e) in pairs
                                if "shared" in e])
    guests = [s for s in samples if s.type == "lxc" or s.type == "qemu"]
    blocks["info"] = "".join(
        [_header("pve_guest_info", "VM/CT info", "gauge")]
        + [f'pve_guest_info{{id="{_esc(s.id)}",name="{_esc(s.name)}",node="{_esc(s.node)}",'
           f'tags="{_esc(";".join(s.tags))}",template="{int(s.template)}",type="{_esc(s.type)}"}} 1.0\n'
           for s in guests]
        + [_header("pve_storage_info", "Storage info", "gauge")]
        + [f'pve_storage_info{{content="{_esc(s.content)}",id="{_esc(s.id)}",node="{_esc(s.node)}",'
           f'plugintype="{_esc(s.plugintype)}",storage="{_esc(s.name)}"}} 1.0\n'
           for s in samples if s.type == "storage"])
    varying: dict[str, tuple[Callable[[list[Sample]], Iterable[Sample]], list[str]]] = {}
    for k, (name, _doc) in _GAUGES.items():
        if k != "shared" and k not in _STATIC:
            idx = [j for j, (_i, e) in enumerate(rows) if k in e]
            varying[k] = (_picker(idx, len(samples)), [f"{name}{rows[j][0]}" for j in idx])
    for k, (name, _doc) in _COUNTERS.items():
        idx = [j for j, s in enumerate(samples)
               if (s.type == "lxc" or s.type == "qemu") and (not s.fields or k in s.fields)]
        varying[k] = (_picker(idx, len(samples)), [f"{name}_total{rows[j][0]}" for j in idx])
    out = _LAST_STATIC = _Static(key, blocks, varying)
    return out


def _varying_lines(static: _Static, key: str, samples: list[Sample]) -> str:
    """A varying family's lines: this sweep's values after the prefixes the static part keeps."""
    pick, prefixes = static.varying[key]
    values = list(map(operator.attrgetter(key), pick(samples)))
    if None in values:  # not from a sweep (its fields are numbers): a None gets no line
        kept = [(p, v) for p, v in zip(prefixes, values, strict=True) if v is not None]
        prefixes, values = [p for p, _v in kept], [v for _p, v in kept]
    if not values:
        return ""
    return "\n".join(_lines(prefixes, values)) + "\n"


def _lines(prefixes: list[str], values: list[Any]) -> Iterable[str]:
    """prefix + _num(value) for each: a family of plain ints in [0, 2**53) or of finite floats below 1e6
    (what every varying family of a sweep is) without a call per value: str() is the int's digits, _num
    then adds ".0" below 1e6 or writes Go's exponent form; a float below 1e6 has no exponent in Go's form,
    so it is repr()'s text. Anything else (a negative, a huge value, NaN, a mix) goes through _num.
    tests/monitor/test_poll_fast_paths.py compares both with prometheus-client's formatting."""
    kinds = set(map(type, values))
    if kinds == _INT:
        if min(values) >= 0 and max(values) < _EXACT:
            exp = _EXP
            return [f"{p}{d}.0" if len(d) < 7 else
                    (f"{p}{d[0]}.{tail}{exp[len(d)]}" if (tail := d[1:].rstrip("0")) else f"{p}{d[0]}{exp[len(d)]}")
                    for p, d in zip(prefixes, map(str, values), strict=True)]
    elif kinds == _FLOAT and math.isfinite(sum(values)) and max(values) < 1e6:
        return map(operator.add, prefixes, map(repr, values))
    return map(operator.add, prefixes, map(_num, values))


_INT, _FLOAT = {int}, {float}


def _render(view: ExportView) -> bytes:
    samples = view.sweep.samples if view.sweep is not None else []
    out: list[str] = []
    if view.sweep is not None:
        static = _static_blocks(samples)
        out.append(_header("pve_up", "Node/VM/CT-Status is online/running", "gauge"))
        out.append(static.blocks["up"])
        for key, (name, doc) in _GAUGES.items():
            out.append(_header(name, doc, "gauge"))
            if key == "shared" or key in _STATIC:  # sizes, the storages' flag: as the last render had them
                out.append(static.blocks[key])
            else:
                out.append(_varying_lines(static, key, samples))
        for key, (name, doc) in _COUNTERS.items():
            out.append(_header(name + "_total", doc, "counter"))
            out.append(_varying_lines(static, key, samples))
        out.append(static.blocks["info"])
    # pveguard's own families are few lines; the library formats them
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OwnCollector(view))
    return "".join(out).encode() + generate_latest(registry)


class _OwnCollector(Collector):
    def __init__(self, view: ExportView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from pveguard_families(self.view)


def _go(d: float) -> str:
    """prometheus-client's floatToGoString (Go-style exponents for large values), typed and inlined."""
    if d != d:
        return "NaN"
    if d in (math.inf, -math.inf):
        return "+Inf" if d > 0 else "-Inf"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


_EXACT = 2**53  # below this every int is exactly a float, so repr(float(n)) is its digits + ".0"


_EXP = [f"e+{max(n - 1, 0):02d}" for n in range(18)]  # by the number of digits


_STATIC = frozenset(("maxmem", "maxdisk", "maxcpu"))


def _num(v: float) -> str:
    """The exposition's text of a sample value (prometheus-client's floatToGoString(float(v))); an int
    without the float: its digits + ".0", or Go's exponent form from 1e6 on (1073741824 ->
    1.073741824e+09); beyond 2**53 (not exact as a float) through _go. One call a value, 80,000 values a
    render at 10,000 guests."""
    if v.__class__ is not int:
        return _go(float(v))
    if v < 1_000_000:
        return f"{v}.0" if v > -_EXACT else _go(float(v))
    if v >= _EXACT:
        return _go(float(v))
    digits = str(v)
    tail = digits[1:].rstrip("0")
    return f"{digits[0]}.{tail}{_EXP[len(digits)]}" if tail else f"{digits[0]}{_EXP[len(digits)]}"


# The classic text format: every name we emit is a legacy-valid one, and Prometheus 2.x reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ScrapeCache:
    """The exposition rendered once per poll: plain and gzip bytes are kept and served to every
    scrape until ``get_key()`` (e.g. the poll counters) changes. Without ``get_key`` every scrape
    renders anew. Thread-safe: concurrent scrapes of a new poll render it once."""

    def __init__(self, get_view: Callable[[], ExportView], get_key: Callable[[], Hashable] | None = None) -> None:
        self.get_view = get_view
        self.get_key = get_key
        self._lock = threading.Lock()
        self._key: Hashable = object()
        self._plain = b""
        self._gzip: bytes | None = None
        self.renders = 0  # how often the view was rendered (tests, benchmarks)
        self.compressions = 0

    def body(self, gzipped: bool) -> bytes:
        """The exposition of the current view, gzip-compressed when asked."""
        key = self.get_key() if self.get_key is not None else object()
        with self._lock:
            if key != self._key:
                # a poll that ends after get_key() was read is rendered now and stored under the
                # older key: the next scrape sees the new key and renders again (never stale)
                self._plain, self._gzip, self._key = render(self.get_view()), None, key
                self.renders += 1
            if not gzipped:
                return self._plain
            if self._gzip is None:
                self._gzip = gzip.compress(self._plain, compresslevel=1)
                self.compressions += 1
            return self._gzip


class _Handler(BaseHTTPRequestHandler):
    cache: ScrapeCache

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics lives here")
            return
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        body = self.cache.body(gzipped)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # scrapes every 15 s are not news
        pass


def serve(listen: str, get_view: Callable[[], ExportView],
          get_key: Callable[[], Hashable] | None = None) -> ThreadingHTTPServer:
    """Serve /metrics on HOST:PORT from a background thread; returns the server (call shutdown()).

    ``get_key``: a value that changes when the view does (the poll counters); scrapes in between
    get the bytes rendered for the first of them (see ScrapeCache; ``server.cache`` holds it).
    """
    from pveguard.errors import UsageError

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:9632")
    cache = ScrapeCache(get_view, get_key)
    handler = type("MetricsHandler", (_Handler,), {"cache": cache})
    try:
        server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {listen}: {exc.strerror}",
                         hint="pick a free port, or stop what listens there") from None
    server.daemon_threads = True
    server.cache = cache  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="pveguard-metrics", daemon=True).start()
    return server
