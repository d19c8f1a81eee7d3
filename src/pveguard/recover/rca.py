"""`pveguard rca NAME`: one root-cause report of a container's resource event.

What it gathers, for the window [since, until]:

* the metrics around the event: cpu / memory / disk from the monitor's series store (raw points
  within a day, 5-minute buckets beyond), with min / max / last;
* the alert timeline: the monitor's notifications (outbox) and alert states for the container, and
  the watchdog's and exhaustion handler's ledger entries;
* OOM-killer lines: inside the container (journalctl -k, dmesg, /var/log/kern.log, whichever it has
  and lets us read) and, on plain LXC where pveguard runs on the host, the host kernel's lines that
  name the container's cgroup plus the cgroup's own oom_kill count (memory.events / memory.oom_control);
* the container's journal (warnings and worse) in the window;
* the top processes now (recover/exhaustion.py);
* recent package changes: the container's /var/log/dpkg.log in the window;
* the ledger's entries for the container in the window (config changes, scales, restarts).

Rendered as Markdown, HTML (jinja2, autoescaped: every value from inside a container is untrusted)
or JSON. Parts that cannot be read (a stopped container, a tool that is missing) say so in the report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from typing import Any

import jinja2

from pveguard.backends.base import MANAGED_TAG, Backend, Guest
from pveguard.errors import BackendError, OperationError, UsageError
from pveguard.store import Store
from pveguard.strategy.models import Strategy

FORMATS = ("markdown", "html", "json")
METRICS = ("cpu", "memory", "disk")
OOM_RE = re.compile(r"oom|out of memory|killed process", re.IGNORECASE)
MAX_LINES = 200


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_guest(backend: Backend, strategy: Strategy, name: str) -> Guest:
    names = [c.name for c in strategy.containers]
    if name not in names:
        raise UsageError(f"no container {name!r} in the strategy",
                         hint="the strategy's containers: " + (", ".join(names) or "(none)"))
    found = [g for g in backend.list_guests() if g.name == name and g.type == "lxc" and MANAGED_TAG in g.tags]
    if not found:
        raise OperationError(f"container {name} does not exist on the {backend.name} target",
                             hint="create it with 'pveguard apply', or check the target settings")
    return found[0]


def _exec(backend: Backend, g: Guest, script: str, timeout: float = 30) -> tuple[str | None, str]:
    """(stdout, note) of a shell script inside; stdout None when it could not run."""
    if g.status != "running":
        return None, f"not read: the container is {g.status}"
    try:
        r = backend.exec(g, ["sh", "-c", script], timeout=timeout)
    except BackendError as exc:
        return None, f"not read: {exc.message}"
    return r.stdout, "" if r.ok else (r.stderr.strip()[:200] or f"exit {r.returncode}")


def _lines(text: str | None, limit: int = MAX_LINES) -> list[str]:
    out = [ln.rstrip() for ln in (text or "").splitlines() if ln.strip()]
    return out[-limit:]


def oom_inside(backend: Backend, g: Guest, since: float) -> dict[str, Any]:
    """OOM-killer lines the container can see (journal, dmesg, kern.log) and its cgroup's oom_kill count."""
    script = (
        f"if command -v journalctl >/dev/null 2>&1; then journalctl -k -q --no-pager --since @{int(since)} "
        "2>/dev/null; fi; "
        "dmesg 2>/dev/null; "
        "[ -r /var/log/kern.log ] && cat /var/log/kern.log; "
        "echo '--- cgroup'; cat /sys/fs/cgroup/memory.events 2>/dev/null || "
        "cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; true")
    out, note = _exec(backend, g, script)
    if out is None:
        return {"lines": [], "oom_kill": None, "source": note}
    text, _, cg = out.partition("--- cgroup")
    lines = list(dict.fromkeys(ln for ln in _lines(text, 100000) if OOM_RE.search(ln)))[-MAX_LINES:]
    return {"lines": lines, "oom_kill": _oom_count(cg), "source": "inside the container"}


def _oom_count(text: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return None


def oom_host(backend: Backend, g: Guest, since: float) -> dict[str, Any] | None:
    """On plain LXC (pveguard runs on the host): the cgroup's oom_kill count and the host kernel's OOM
    lines that name the container's cgroup (with the "Killed process" line that follows each)."""
    if backend.name != "lxc":
        return None
    count: int | None = None
    value = getattr(backend, "cgroup_value", None)
    if value is not None:
        for key in ("memory.events", "memory.oom_control"):
            try:
                count = _oom_count(value(g, key) or "")
            except (OSError, BackendError):
                count = None
            if count is not None:
                break
    lines: list[str] = []
    source = "host kernel log"
    if shutil.which("journalctl"):
        p = subprocess.run(["journalctl", "-k", "-q", "--no-pager", "-o", "short-iso", "--since", f"@{int(since)}"],
                           capture_output=True, text=True, timeout=30, check=False)
        lines = host_oom_lines(p.stdout, g.vmid)
    if not lines and shutil.which("dmesg"):  # a journal that does not read the kernel's messages
        p = subprocess.run(["dmesg", "--time-format", "iso"], capture_output=True, text=True, timeout=30,
                           check=False)
        lines = host_oom_lines(_since_iso(p.stdout, since), g.vmid)
        source = "host kernel ring buffer (dmesg)"
    return {"lines": lines, "oom_kill": count, "source": source}


def _since_iso(text: str, since: float) -> str:
    """dmesg --time-format iso lines (2026-12-06T16:29:33,490617+00:00 ...) from `since` on."""
    out = []
    for line in text.splitlines():
        stamp = line.split(" ", 1)[0]
        try:
            ts = datetime.fromisoformat(stamp.replace(",", ".")).timestamp()
        except ValueError:
            continue
        if ts >= since:
            out.append(line)
    return "\n".join(out)


def host_oom_lines(text: str, vmid: int) -> list[str]:
    """Kernel OOM lines of one container's cgroup (LXC names it lxc.payload.N or lxc/N), each with the
    `Killed process` line that follows it."""
    ours = re.compile(rf"(?:lxc\.payload\.|lxc/){vmid}(?:[/,\s]|$)")
    out: list[str] = []
    want_kill = False
    for line in text.splitlines():
        if "Killed process" in line:
            if want_kill:
                out.append(line.strip())
            want_kill = False
        elif "oom-kill:" in line:
            want_kill = bool(ours.search(line))
            if want_kill:
                out.append(line.strip())
    return out[-MAX_LINES:]


def journal(backend: Backend, g: Guest, since: float, until: float) -> dict[str, Any]:
    script = (f"command -v journalctl >/dev/null 2>&1 || {{ echo 'no journalctl' >&2; exit 3; }}; "
              f"journalctl -q --no-pager -p warning -o short-iso --since @{int(since)} --until @{int(until) + 1} "
              f"-n {MAX_LINES}")
    out, note = _exec(backend, g, script)
    return {"lines": _lines(out), "note": note}


DPKG_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (install|upgrade|remove|purge) (\S+) (\S+) (\S+)")


def package_changes(backend: Backend, g: Guest, since: float, until: float) -> dict[str, Any]:
    """install / upgrade / remove lines of /var/log/dpkg.log in the window (the container's local time)."""
    out, note = _exec(backend, g, "cat /var/log/dpkg.log 2>/dev/null; date +%z")
    if out is None:
        return {"changes": [], "note": note}
    lines = out.splitlines()
    offset = lines[-1].strip() if lines and re.fullmatch(r"[+-]\d{4}", lines[-1].strip()) else "+0000"
    changes = []
    for line in lines:
        m = DPKG_RE.match(line)
        if not m:
            continue
        try:
            ts = datetime.strptime(m.group(1) + " " + offset, "%Y-%m-%d %H:%M:%S %z").timestamp()
        except ValueError:
            continue
        if since <= ts <= until + 1:
            changes.append({"ts": _iso(ts), "action": m.group(2), "package": m.group(3), "from": m.group(4),
                            "to": m.group(5)})
    return {"changes": changes[-MAX_LINES:], "note": "" if lines else "no /var/log/dpkg.log"}


def metrics(store: Store, vmid: int, since: float, until: float) -> dict[str, Any]:
    from pveguard.monitor.series import SeriesStore

    series = SeriesStore(store)
    out: dict[str, Any] = {}
    for m in METRICS:
        tier, points = series.history(f"lxc/{vmid}", m, since, until)
        vals = [p.value for p in points]
        out[m] = {"tier": tier, "points": [{"ts": _iso(p.ts), "value": round(p.value, 2)} for p in points],
                  "min": round(min(vals), 2) if vals else None, "max": round(max(vals), 2) if vals else None,
                  "last": round(vals[-1], 2) if vals else None}
    return out


def alert_timeline(store: Store, vmid: int, since: float, until: float, ledger: list[Any]) -> list[dict[str, Any]]:
    """Notifications (outbox), alert states and the recover entries of the ledger, in time order."""
    from pveguard.monitor.engine import load_states
    from pveguard.monitor.series import open_monitor_store

    target = f"lxc/{vmid}"
    rows = open_monitor_store(store).conn.execute("SELECT payload FROM monitor_outbox").fetchall()
    out: list[dict[str, Any]] = []
    for r in rows:
        e = json.loads(r["payload"])
        if e.get("target") == target and since <= float(e.get("ts", 0)) <= until + 1:
            out.append({"ts": _iso(float(e["ts"])), "what": f"{e['rule']} {e['kind']}",
                        "detail": f"{e.get('description', '')} (value {e.get('value')})"})
    for st in load_states(store).values():
        if st.target == target and st.state != "inactive":
            out.append({"ts": _iso(st.started_at), "what": f"{st.rule} {st.state} since {_iso(st.since)}",
                        "detail": f"value {st.value}"})
    for e in ledger:
        if e.action.startswith("recover."):
            d = e.details
            detail = d.get("reason") or d.get("result") or ""
            if e.action in ("recover.scale", "recover.revert") and d.get("before") and d.get("after"):
                detail = "; ".join(f"{k} {d['before'][k]} -> {d['after'][k]}" for k in d["after"]
                                   if d["before"].get(k) != d["after"][k]) + f" ({d.get('result', 'intent')})"
            out.append({"ts": e.ts[:19] + "Z", "what": e.action, "detail": str(detail)})
    return sorted(out, key=lambda x: str(x["ts"]))


def build(backend: Backend, strategy: Strategy, store: Store, name: str, since: float, until: float,
          require_metrics: bool = True) -> dict[str, Any]:
    """The report as data (the JSON format's shape)."""
    from pveguard.recover.exhaustion import top_processes
    from pveguard.recover.scale import base_size, current_size
    from pveguard.security.ledger import Ledger

    g = find_guest(backend, strategy, name)
    c = next(x for x in strategy.containers if x.name == name)
    mets = metrics(store, g.vmid, since, until)
    if require_metrics and not any(m["points"] for m in mets.values()):
        raise OperationError(f"no metrics of {name} (CT {g.vmid}) were recorded between {_iso(since)} and "
                             f"{_iso(until)}",
                             hint="the monitor records them: run 'pveguard monitor' (or its timer), or widen --since")
    size: dict[str, Any] = {"strategy": base_size(c).as_dict()}
    try:
        size["now"] = current_size(backend.get_config(g)).as_dict()
    except BackendError as exc:
        size["now"] = None
        size["note"] = exc.message
    since_iso = datetime.fromtimestamp(since, UTC).isoformat(timespec="microseconds")
    ledger = [e for e in Ledger(store).entries(since=since_iso)
              if e.target in (f"ct/{g.vmid}", name) or e.details.get("name") == name]
    if g.status == "running":
        procs, source = top_processes(backend, g)
    else:
        procs, source = [], f"not read: the container is {g.status}"
    oom = {"inside": oom_inside(backend, g, since), "host": oom_host(backend, g, since)}
    return {
        "container": {"name": name, "vmid": g.vmid, "node": g.node, "status": g.status, "backend": backend.name},
        "window": {"since": _iso(since), "until": _iso(until)},
        "size": size,
        "metrics": mets,
        "alerts": alert_timeline(store, g.vmid, since, until, ledger),
        "oom": oom,
        "journal": journal(backend, g, since, until),
        "top": {"processes": [p.as_dict() for p in procs], "source": source},
        "packages": package_changes(backend, g, since, until),
        "ledger": [{"seq": e.seq, "ts": e.ts[:19] + "Z", "action": e.action, "target": e.target,
                    "details": e.details} for e in ledger],
        "summary": summary(mets, procs, oom),
    }


def summary(mets: dict[str, Any], procs: list[Any], oom: dict[str, Any]) -> list[str]:
    """A few sentences a person reads first."""
    out = []
    for m in METRICS:
        if mets[m]["max"] is not None:
            out.append(f"{m}: peak {mets[m]['max']}%, last {mets[m]['last']}%")
    if procs:
        p = procs[0]
        out.append(f"largest process: {p.comm} (pid {p.pid}, {p.rss_kib / 1024:.0f} MiB resident)")
    kills = [x["oom_kill"] for x in (oom["inside"], oom["host"] or {}) if x.get("oom_kill")]
    lines = len(oom["inside"]["lines"]) + len((oom["host"] or {}).get("lines", []))
    if kills or lines:
        out.append(f"the OOM killer acted: {max(kills) if kills else 'see'} kill(s), {lines} kernel line(s) below")
    else:
        out.append("no OOM-killer activity found")
    return out


MD = """# Root cause analysis: {{ r.container.name }} (CT {{ r.container.vmid }} on {{ r.container.node }})

Window: {{ r.window.since }} .. {{ r.window.until }} (UTC); backend {{ r.container.backend }}; \
status {{ r.container.status }}.

{% for s in r.summary %}* {{ s }}
{% endfor %}
## Size

strategy: {{ r.size.strategy.memory_mib }} MiB, {{ r.size.strategy.cores }} cores, \
{{ r.size.strategy.disk_gib }} GiB{% if r.size.now %}; now: {{ r.size.now.memory_mib }} MiB, \
{{ r.size.now.cores }} cores, {{ r.size.now.disk_gib }} GiB{% endif %}

## Metrics

| metric | points | min | max | last |
|---|---|---|---|---|
{% for name, m in r.metrics.items() %}| {{ name }} (%) | {{ m.points|length }} ({{ m.tier }}) | \
{{ m.min }} | {{ m.max }} | {{ m.last }} |
{% endfor %}
## Alert timeline

{% for a in r.alerts %}* {{ a.ts }} {{ a.what|md }}: {{ a.detail|md }}
{% else %}(no alerts in the window)
{% endfor %}
## OOM killer

{% for side in ("inside", "host") %}{% set o = r.oom[side] %}{% if o %}\
{{ side }} ({{ o.source }}): oom_kill count {{ o.oom_kill if o.oom_kill is not none else "unknown" }}
{% if o.lines %}
```
{% for line in o.lines %}{{ line }}
{% endfor %}```
{% endif %}
{% endif %}{% endfor %}
## Top processes ({{ r.top.source }})

| pid | rss MiB | cpu % | command |
|---|---|---|---|
{% for p in r.top.processes %}| {{ p.pid }} | {{ p.rss_mib }} | {{ p.cpu }} | {{ p.args|md }} |
{% endfor %}
## Journal (warnings and worse){% if r.journal.note %}: {{ r.journal.note }}{% endif %}

{% if r.journal.lines %}```
{% for line in r.journal.lines %}{{ line }}
{% endfor %}```
{% else %}(nothing)
{% endif %}
## Package changes (/var/log/dpkg.log){% if r.packages.note %}: {{ r.packages.note }}{% endif %}

{% for p in r.packages.changes %}* {{ p.ts }} {{ p.action }} {{ p.package|md }} {{ p.from|md }} -> {{ p.to|md }}
{% else %}(none in the window)
{% endfor %}
## Ledger entries

{% for e in r.ledger %}* #{{ e.seq }} {{ e.ts }} {{ e.action }} {{ e.target }}
{% else %}(none in the window)
{% endfor %}"""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>rca {{ r.container.name }}</title>
<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .5em}pre{background:#f4f4f4;padding:.5em;overflow-x:auto}</style>
</head><body>
<h1>Root cause analysis: {{ r.container.name }} (CT {{ r.container.vmid }} on {{ r.container.node }})</h1>
<p>Window {{ r.window.since }} .. {{ r.window.until }} UTC; backend {{ r.container.backend }};
status {{ r.container.status }}.</p>
<ul>{% for s in r.summary %}<li>{{ s }}</li>{% endfor %}</ul>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>points</th><th>min</th><th>max</th><th>last</th></tr>
{% for name, m in r.metrics.items() %}<tr><td>{{ name }} (%)</td><td>{{ m.points|length }} ({{ m.tier }})</td>
<td>{{ m.min }}</td><td>{{ m.max }}</td><td>{{ m.last }}</td></tr>{% endfor %}</table>
<h2>Alert timeline</h2>
<ul>{% for a in r.alerts %}<li>{{ a.ts }} {{ a.what }}: {{ a.detail }}</li>{% else %}<li>none</li>{% endfor %}</ul>
<h2>OOM killer</h2>
{% for side in ("inside", "host") %}{% set o = r.oom[side] %}{% if o %}
<p>{{ side }} ({{ o.source }}): oom_kill count {{ o.oom_kill if o.oom_kill is not none else "unknown" }}</p>
{% if o.lines %}<pre>{% for line in o.lines %}{{ line }}
{% endfor %}</pre>{% endif %}{% endif %}{% endfor %}
<h2>Top processes ({{ r.top.source }})</h2>
<table><tr><th>pid</th><th>rss MiB</th><th>cpu %</th><th>command</th></tr>
{% for p in r.top.processes %}<tr><td>{{ p.pid }}</td><td>{{ p.rss_mib }}</td><td>{{ p.cpu }}</td>
<td>{{ p.args }}</td></tr>{% endfor %}</table>
<h2>Journal</h2>{% if r.journal.note %}<p>{{ r.journal.note }}</p>{% endif %}
<pre>{% for line in r.journal.lines %}{{ line }}
{% endfor %}</pre>
<h2>Package changes</h2>
<ul>{% for p in r.packages.changes %}<li>{{ p.ts }} {{ p.action }} {{ p.package }} {{ p.from }} &rarr; {{ p.to }}</li>
{% else %}<li>none in the window</li>{% endfor %}</ul>
<h2>Ledger entries</h2>
<ul>{% for e in r.ledger %}<li>#{{ e.seq }} {{ e.ts }} {{ e.action }} {{ e.target }}</li>
{% else %}<li>none in the window</li>{% endfor %}</ul>
</body></html>
"""


def _md(value: Any) -> str:
    """One table cell or list item: no row breaks, and no raw HTML from inside a container."""
    return str(value).replace("|", "\\|").replace("\n", " ").replace("<", "\\<")


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt not in ("markdown", "html"):
        raise UsageError(f"unknown format {fmt!r}", hint="use markdown, html or json")
    env = jinja2.Environment(autoescape=fmt == "html", undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["md"] = _md
    return env.from_string(MD if fmt == "markdown" else HTML).render(r=doc)
