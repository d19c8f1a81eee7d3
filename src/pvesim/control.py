"""The control API under /_sim (no auth; loopback test harness). Documented in src/pvesim/README.md."""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pvesim.state import Guest, Sim

if TYPE_CHECKING:
    from pvesim.server import Api

_USAGE_KEYS = ("cpu", "mem", "disk", "netin", "netout", "diskread", "diskwrite", "uptime")


class ControlError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


def handle(api: Api, method: str, path: str, query: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Dispatch a control call; returns (status, JSON object)."""
    sim = api.sim
    try:
        doc: dict[str, Any] = json.loads(body) if body.strip() else {}
        if not isinstance(doc, dict):
            raise ControlError(400, "body must be a JSON object")
    except ValueError:
        raise_ = ControlError(400, "body is not valid JSON")
        return raise_.status, {"error": str(raise_)}
    q = {k: v[0] for k, v in parse_qs(query).items()}
    parts = [p for p in path.split("/") if p][1:]  # drop "_sim"
    try:
        with sim.lock:
            sim.tick()
            data = _route(sim, method, parts, doc, q)
        return 200, {"data": data}
    except ControlError as e:
        return e.status, {"error": str(e)}
    except (KeyError, ValueError, TypeError) as e:
        return 400, {"error": f"bad request: {e}"}


def _guest(sim: Sim, vmid: str) -> Guest:
    g = sim.guests.get(int(vmid)) if vmid.isdigit() else None
    if g is None:
        raise ControlError(404, f"no guest {vmid}")
    return g


def _route(sim: Sim, method: str, parts: list[str], doc: dict[str, Any], q: dict[str, str]) -> Any:
    head = parts[0] if parts else ""
    rest = parts[1:]
    if head == "" and method == "GET":
        return {
            "nodes": {n: {"online": x.online} for n, x in sim.nodes.items()},
            "guests": len(sim.guests),
            "tasks": len(sim.tasks),
            "now": sim.now(),
            "time_scale": sim.clock.time_scale,
        }
    if head == "calls":
        if method == "DELETE":
            sim.calls.clear()
            sim.calls_total = 0
            return None
        return {"total": sim.calls_total, "calls": dict(sim.calls)}
    if head == "clock":
        if method == "POST":
            if "advance" in doc:
                sim.clock.advance(float(doc["advance"]))
            if "time_scale" in doc:
                sim.clock.set_scale(float(doc["time_scale"]))
            sim.tick()
            sim.changed()
        return {"now": sim.now(), "time_scale": sim.clock.time_scale}
    if head == "nodes" and rest:
        n = sim.nodes.get(rest[0])
        if n is None:
            raise ControlError(404, f"no node {rest[0]}")
        if method == "POST":
            if "online" in doc:
                n.online = bool(doc["online"])
            if "level" in doc:
                n.level = str(doc["level"])
            if "maintenance" in doc:  # ha-manager crm-command node-maintenance enable|disable NODE
                n.maintenance = bool(doc["maintenance"])
                sim.ha_manager = sim.ha_manager or n.maintenance  # the request makes the CRM active
            if "maxmem" in doc:  # a node with more (or less) RAM: its headroom in /cluster/resources
                n.maxmem = int(doc["maxmem"])
            if "maxcpu" in doc:
                n.maxcpu = int(doc["maxcpu"])
            for g in sim.guests.values():
                if g.node == n.name:
                    g.touch()
            sim.changed()
        return {"node": n.name, "online": n.online, "maxcpu": n.maxcpu, "maxmem": n.maxmem,
                "maintenance": n.maintenance}
    if head == "guests":
        return _guests(sim, method, rest, doc)
    if head == "options":
        if method == "POST":
            for k in ("status_lag", "auth_fail_delay", "latency"):
                if k in doc:
                    if float(doc[k]) < 0:
                        raise ControlError(400, f"{k} must be at least 0")
                    setattr(sim.opts, k, float(doc[k]))
            for g in sim.guests.values():
                g.touch()
            sim.changed()
        return {"status_lag": sim.opts.status_lag, "auth_fail_delay": sim.opts.auth_fail_delay,
                "latency": sim.opts.latency}
    if head == "faults":
        if method == "POST":
            f: dict[str, Any] = {
                k: doc[k]
                for k in ("method", "path", "status", "message", "times", "delay_ms", "errors", "data", "body", "after")
                if k in doc
            }
            re.compile(str(f.get("path", ".*")))
            sim.faults.append(f)
        elif method == "DELETE":
            sim.faults.clear()
        return list(sim.faults)
    if head == "task-faults":
        if method == "POST":
            tf: dict[str, Any] = {k: doc[k] for k in ("type", "id", "error", "times", "seconds") if k in doc}
            sim.task_faults.append(tf)
        elif method == "DELETE":
            sim.task_faults.clear()
        return list(sim.task_faults)
    if head == "tasks":
        if rest == ["finish"] and method == "POST":
            sim.finish_all()
            return None
        if method == "POST":
            if "seconds" in doc:
                sim.task_seconds.update({k: float(v) for k, v in doc["seconds"].items()})
            if "default" in doc:
                sim.default_task_seconds = float(doc["default"])
        return {
            "seconds": sim.task_seconds,
            "default": sim.default_task_seconds,
            "running": [t.upid for t in sim._heap],
        }
    if head == "locks" and rest:
        g = _guest(sim, rest[0])
        if method == "POST":
            lock = doc.get("lock")
            if lock:
                g.config["lock"] = str(lock)
            else:
                g.config.pop("lock", None)
        elif method == "DELETE":
            g.config.pop("lock", None)
        g.touch()
        sim.changed()
        return {"vmid": g.vmid, "lock": g.config.get("lock")}
    if head == "firewall" and rest == ["connect"] and method == "POST":
        from pvesim.handlers.firewall import judge

        g = _guest(sim, str(doc["vmid"]))
        direction = str(doc.get("direction", "in"))
        if direction not in ("in", "out"):
            raise ControlError(400, "direction must be 'in' (to the guest) or 'out' (from it)")
        proto = str(doc.get("proto", "tcp")).lower()
        pkt = {"direction": direction, "src": str(doc["src"]), "dst": str(doc["dst"]), "proto": proto,
               "dport": int(doc["dport"]) if doc.get("dport") is not None else None,
               "sport": int(doc.get("sport", 40000))}
        results = [judge(sim, g, pkt) for _ in range(max(1, int(doc.get("count", 1))))]
        return {"action": results[0][0], "logged": [line for _, line in results if line]}
    if head == "certificates" and rest:
        return _certificates(sim, method, rest, doc)
    if head == "pct":
        from pvesim import pct_sim

        return pct_sim.control(sim, method, rest, doc, q)
    if head == "packages" and rest == ["unavailable"]:
        if method == "POST":
            sim.unavailable_packages.update(doc.get("names", []))
        elif method == "DELETE":
            sim.unavailable_packages.clear()
        return sorted(sim.unavailable_packages)
    if head == "notifications":
        if method == "DELETE":
            sim.notifications_sent.clear()
        return list(sim.notifications_sent)
    if head == "save" and method == "POST":
        from pvesim.persist import save_state

        path = doc.get("path") or sim.state_file
        if not path:
            raise ControlError(400, 'no state file: start with --state FILE or pass {"path": ...}')
        save_state(sim, str(path))
        return {"saved": str(path)}
    raise ControlError(404, f"unknown control endpoint {method} /_sim/{'/'.join(parts)}")


def _certificates(sim: Sim, method: str, rest: list[str], doc: dict[str, Any]) -> Any:
    """GET /_sim/certificates/NODE: the node's certificate files; POST {"file": "pve-ssl.pem", "days": 5}
    (or "notafter": epoch) re-issues one with that expiry (default file: the one pveproxy serves)."""
    node = rest[0]
    if node not in sim.nodes:
        raise ControlError(404, f"no node {node}")
    store = sim.certs
    if method == "POST":
        fname = str(doc.get("file") or store.active(node))
        if fname not in store.node(node).files:
            raise ControlError(404, f"node {node} has no {fname} (it has {', '.join(sorted(store.node(node).files))})")
        if "notafter" in doc:
            not_after = float(doc["notafter"])
        elif "days" in doc:
            not_after = sim.now() + float(doc["days"]) * 86400
        else:
            raise ControlError(400, 'say when it expires: {"days": 5} or {"notafter": EPOCH}')
        store.set_expiry(node, fname, not_after)
        sim.changed()
    return {i["filename"]: {"notafter": i["notafter"], "fingerprint": i["fingerprint"]} for i in store.info(node)}


def _guests(sim: Sim, method: str, rest: list[str], doc: dict[str, Any]) -> Any:
    if not rest:
        if method == "POST":
            # bulk add: {"count": N, "type": "lxc", "node": "pve1", "status": "running"}
            before = set(sim.guests)
            count = int(doc.get("count", 1))
            save_q = sim.opts.qemu_share, sim.opts.running_share
            sim.opts.qemu_share = 1.0 if doc.get("type") == "qemu" else (0.0 if doc.get("type") == "lxc" else save_q[0])
            if "status" in doc:
                sim.opts.running_share = 1.0 if doc["status"] == "running" else 0.0
            start = max(sim.guests, default=99) + 1
            sim_add(sim, count, start, doc.get("node"))
            sim.opts.qemu_share, sim.opts.running_share = save_q
            return sorted(set(sim.guests) - before)
        return [{"vmid": g.vmid, "type": g.type, "node": g.node, "status": g.status} for g in sim.guests.values()]
    g = _guest(sim, rest[0])
    sub = rest[1] if len(rest) > 1 else ""
    if sub == "packages":
        pk = sim.guest_packages.setdefault(g.vmid, {})
        if method == "POST":
            pk.update({str(k): str(v) for k, v in doc.items()})
        elif method == "DELETE":
            pk.clear()
        return dict(pk)
    if sub == "upgrades":
        # {"pkg": {"version": "1.1", "origin": "Debian-Security:12/stable-security", "postinst_fails": true}}
        up = sim.guest_upgrades.setdefault(g.vmid, {})
        if method == "POST":
            for name, u in doc.items():
                if not isinstance(u, dict) or "version" not in u:
                    raise ControlError(400, f'{name}: say {{"version": V, "origin": O, "postinst_fails": B}}')
                up[str(name)] = dict(u)
        elif method == "DELETE":
            up.clear()
        return dict(up)
    if sub == "crash":
        # {"after": s, "every": s, "times": n}: crash now (no body), once after a delay, or on a schedule
        if method == "POST":
            after, every = float(doc.get("after", 0)), doc.get("every")
            times = doc.get("times")
            if every is not None and float(every) <= 0:
                raise ControlError(400, "every must be > 0 seconds")
            if after <= 0 and every is None:
                sim.crash(g)
            else:
                sim.crashes.append({"vmid": g.vmid, "at": sim.now() + after,
                                    "every": float(every) if every is not None else None,
                                    "left": int(times) if times is not None else (None if every else 1)})
                sim.tick()
        elif method == "DELETE":
            sim.crashes = [c for c in sim.crashes if c["vmid"] != g.vmid]
        return {"vmid": g.vmid, "status": g.status, "crashes": g.crashes,
                "scheduled": [dict(c) for c in sim.crashes if c["vmid"] == g.vmid]}
    if sub == "modes":  # the mode each pushed file got (pct push --perms)
        return {p: f"{m:04o}" for p, m in sim.guest_file_modes.get(g.vmid, {}).items()}
    if sub == "files":
        files = sim.guest_files.setdefault(g.vmid, {})
        if method == "POST":
            content = doc.get("content")
            data = base64.b64decode(doc["b64"]) if "b64" in doc else str(content or "").encode()
            files[str(doc["path"])] = data
        return {p: base64.b64encode(b).decode() for p, b in files.items()}
    if method == "POST":
        if "status" in doc:
            want = str(doc["status"])
            if want in ("running", "stopped") and want != g.status:
                sim.set_running(g, want == "running")
        if "node" in doc:
            if doc["node"] not in sim.nodes:
                raise ControlError(400, f"no node {doc['node']}")
            g.node = str(doc["node"])
        if doc.get("clear"):
            g.override.clear()
        for k in _USAGE_KEYS:
            if k in doc:
                if doc[k] is None:
                    g.override.pop(k, None)
                else:
                    g.override[k] = doc[k]
        if "lock" in doc:
            if doc["lock"]:
                g.config["lock"] = str(doc["lock"])
            else:
                g.config.pop("lock", None)
        if "config" in doc:
            for k, v in doc["config"].items():
                if v is None:
                    g.config.pop(k, None)
                else:
                    g.config[k] = v
        g.touch()
        sim.changed()
    return {
        "vmid": g.vmid,
        "type": g.type,
        "node": g.node,
        "status": g.status,
        "config": g.config,
        "pending": g.pending,
        "override": g.override,
        "usage": sim.guest_usage(g),
        "digest": g.digest,
    }


def sim_add(sim: Sim, count: int, start: int, node: str | None) -> None:
    """Add `count` seeded guests with free vmids from `start` (optionally all on one node)."""
    sim._populate(count, sim.now(), start, [node] if node else None)
    sim.changed()
