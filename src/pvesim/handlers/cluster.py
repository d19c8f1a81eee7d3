"""Cluster-wide handlers: /cluster/resources (hot path), nextid, status, pools, HA, options."""

from __future__ import annotations

import json
import time
from typing import Any

from pvesim.formats import split_list
from pvesim.handlers import Ctx, RawData, api
from pvesim.state import die, ha_service_state, param_error
from pvesim.usage import STAT_INTERVAL


def _full_view(ctx: Ctx) -> bool:
    """root@pam or a non-privsep root token: everything is visible, skip per-object checks."""
    return ctx.sim.access.privs(ctx.auth.authid, "/") >= ctx.sim.access.roles["Administrator"] and not any(
        e.roleid == "NoAccess" for e in ctx.sim.access.acl
    )


@api("GET", "/cluster/resources")
def resources(ctx: Ctx) -> RawData:
    sim = ctx.sim
    typ = ctx.p.get("type")
    full = _full_view(ctx)
    key = (int(sim.now()) // STAT_INTERVAL, sim.version, typ, "*" if full else ctx.auth.authid)
    cached = sim._res_bytes.get(key)
    if cached is not None:
        return RawData(cached)
    parts: list[bytes] = []
    node_cpu: dict[str, float] = {n: 0.0 for n in sim.nodes}
    node_mem: dict[str, int] = {n: 0 for n in sim.nodes}
    access = sim.access
    authid = ctx.auth.authid
    want_vm = typ in (None, "vm")
    now = sim.now()
    bucket = int(now) // STAT_INTERVAL
    rj = sim.resource_json
    for g in sim.guests.values():
        body, weight, mem = rj(g, bucket, now)
        if g.status == "running" and g.node in node_cpu:
            node_cpu[g.node] += weight
            node_mem[g.node] += mem
        if want_vm and (full or "VM.Audit" in access.privs(authid, f"/vms/{g.vmid}")):
            parts.append(body)
    extra: list[dict[str, Any]] = []
    if typ in (None, "node"):
        for n in sim.nodes.values():
            e = sim.node_entry(n, node_cpu[n.name] / n.maxcpu, node_mem[n.name])
            if not (full or "Sys.Audit" in access.privs(authid, f"/nodes/{n.name}")):
                e = {k: e[k] for k in ("id", "type", "node", "status")}
            extra.append(e)
    if typ in (None, "storage"):
        for nname in sim.nodes:
            for st in sim.storages.values():
                if not sim.storage_enabled_on(st.storage, nname):
                    continue
                if full or access.privs(authid, f"/storage/{st.storage}") & {
                    "Datastore.Audit",
                    "Datastore.AllocateSpace",
                }:
                    extra.append(sim.storage_entry(nname, st))
    if typ is None:
        for pid, pool in sim.pools.items():
            if full or "Pool.Audit" in access.privs(authid, f"/pool/{pid}"):
                pe: dict[str, Any] = {"id": f"/pool/{pid}", "type": "pool", "pool": pid}
                members = [sim.guests[v] for v in pool.get("vms", set()) if v in sim.guests]
                if members:
                    bucket = int(sim.now()) // STAT_INTERVAL
                    ents = [json.loads(sim.resource_json(g, bucket)[0]) for g in members]
                    for k in (
                        "cpu",
                        "maxcpu",
                        "mem",
                        "maxmem",
                        "disk",
                        "maxdisk",
                        "netin",
                        "netout",
                        "diskread",
                        "diskwrite",
                    ):
                        pe[k] = sum(x.get(k, 0) for x in ents)
                    pe["cpu"] = round(pe["cpu"] / max(1, len(ents)), 6)
                extra.append(pe)
    if typ in (None, "sdn") and sim.pve_major < 9:
        for n in sim.nodes.values():
            extra.append(
                {
                    "id": f"sdn/{n.name}/localnetwork",
                    "type": "sdn",
                    "sdn": "localnetwork",
                    "node": n.name,
                    "status": "ok" if n.online else "unknown",
                }
            )
    if typ is None and sim.pve_major >= 9:
        # pve-manager 9.1 (commit 1804cdf1 "api: cluster: add support for network resource type"): the
        # default "localnetwork" zone moved from type 'sdn' to type 'network'; `?type=` has no 'network'
        # value (the parameter's enum is unchanged), so only the unfiltered listing carries these.
        for n in sim.nodes.values():
            extra.append(
                {
                    "id": f"network/{n.name}/zone/localnetwork",
                    "type": "network",
                    "network-type": "zone",
                    "network": "localnetwork",
                    "node": n.name,
                    "status": "ok" if n.online else "unknown",
                }
            )
    parts.extend(json.dumps(e, separators=(",", ":")).encode() for e in extra)
    body = b"[" + b",".join(parts) + b"]"
    # keep only answers of the current interval and state version (each is MBs at 10k guests)
    for old in [k for k in sim._res_bytes if k[:2] != key[:2]]:
        del sim._res_bytes[old]
    sim._res_bytes[key] = body
    return RawData(body)


@api("GET", "/cluster")
def cluster_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"name": n}
        for n in (
            "acme",
            "backup",
            "backup-info",
            "ceph",
            "config",
            "firewall",
            "ha",
            "jobs",
            "log",
            "mapping",
            "metrics",
            "nextid",
            "notifications",
            "options",
            "replication",
            "resources",
            "sdn",
            "status",
            "tasks",
        )
    ]


@api("GET", "/cluster/nextid")
def nextid(ctx: Ctx) -> str:
    sim = ctx.sim
    if ctx.p.get("vmid") is not None:
        vmid = int(ctx.p["vmid"])
        if vmid in sim.guests:
            raise param_error({"vmid": f"VM {vmid} already exists"})
        return str(vmid)
    lo = int(sim.datacenter.get("next-id-lower", 100))
    hi = int(sim.datacenter.get("next-id-upper", 1_000_000))
    v = sim.next_vmid(lo, hi)
    if v is None:
        raise die(f"unable to get any free VMID in range [{lo}, {hi}]")
    return str(v)


@api("GET", "/cluster/status")
def cluster_status(ctx: Ctx) -> list[dict[str, Any]]:
    sim = ctx.sim
    online = sum(1 for n in sim.nodes.values() if n.online)
    out: list[dict[str, Any]] = [
        {
            "type": "cluster",
            "id": "cluster",
            "name": sim.opts.cluster_name,
            "nodes": len(sim.nodes),
            "quorate": int(online * 2 > len(sim.nodes)),
            "version": len(sim.nodes) + 2,
        }
    ]
    for i, n in enumerate(sim.nodes.values()):
        out.append(
            {
                "type": "node",
                "id": f"node/{n.name}",
                "name": n.name,
                "nodeid": n.index,
                "ip": n.ip,
                "online": int(n.online),
                "local": int(i == 0),
                "level": n.level,
            }
        )
    return out


@api("GET", "/cluster/tasks")
def cluster_tasks(ctx: Ctx) -> list[dict[str, Any]]:
    from pvesim.handlers.nodes import _list_entry

    return [_list_entry(t) for t in reversed(ctx.sim.task_order[-100:])]


@api("GET", "/cluster/options")
def cluster_options(ctx: Ctx) -> dict[str, Any]:
    return dict(ctx.sim.datacenter)


@api("PUT", "/cluster/options")
def set_cluster_options(ctx: Ctx) -> None:
    for k in split_list(str(ctx.p.get("delete", ""))):
        ctx.sim.datacenter.pop(k, None)
    for k, v in ctx.p.items():
        if k != "delete":
            ctx.sim.datacenter[k] = v
    if "next-id" in ctx.p:
        for part in str(ctx.p["next-id"]).split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                ctx.sim.datacenter[f"next-id-{k}"] = int(v)
    ctx.sim.changed()
    return None


@api("GET", "/cluster/config/qdevice")
def qdevice(ctx: Ctx) -> dict[str, Any]:
    return {}


@api("GET", "/cluster/config/nodes")
def config_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"node": n.name, "name": n.name, "nodeid": str(n.index), "quorum_votes": "1", "ring0_addr": n.ip}
        for n in ctx.sim.nodes.values()
    ]


# -- pools ---------------------------------------------------------------------------------------
@api("GET", "/pools")
def pools(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for pid, p in ctx.sim.pools.items():
        if ctx.can(f"/pool/{pid}", "Pool.Audit") or ctx.can(f"/pool/{pid}", "Pool.Allocate"):
            e: dict[str, Any] = {"poolid": pid}
            if p.get("comment"):
                e["comment"] = p["comment"]
            out.append(e)
    return out


@api("POST", "/pools")
def create_pool(ctx: Ctx) -> None:
    pid = str(ctx.p["poolid"])
    if pid in ctx.sim.pools:
        raise die(f"pool '{pid}' already exists")
    ctx.sim.pools[pid] = {"comment": ctx.p.get("comment", ""), "vms": set(), "storage": set()}
    ctx.sim.access.changed()
    ctx.sim.changed()
    return None


def _pool(ctx: Ctx) -> dict[str, Any]:
    pid = str(ctx.p["poolid"])
    p = ctx.sim.pools.get(pid)
    if p is None:
        raise die(f"pool '{pid}' does not exist")
    return p


@api("GET", "/pools/{poolid}")
def get_pool(ctx: Ctx) -> dict[str, Any]:
    p = _pool(ctx)
    members = []
    for vmid in sorted(p.get("vms", set())):
        g = ctx.sim.guests.get(vmid)
        if g is not None:
            members.append(ctx.sim.resource_entry(g))
    for sid in sorted(p.get("storage", set())):
        for n in ctx.sim.nodes:
            st = ctx.sim.storages.get(sid)
            if st is not None:
                members.append(ctx.sim.storage_entry(n, st))
    d: dict[str, Any] = {"members": members}
    if p.get("comment"):
        d["comment"] = p["comment"]
    return d


@api("PUT", "/pools/{poolid}")
def update_pool(ctx: Ctx) -> None:
    p = _pool(ctx)
    pid = str(ctx.p["poolid"])
    sim = ctx.sim
    if "comment" in ctx.p:
        p["comment"] = ctx.p["comment"]
    remove = bool(ctx.p.get("delete"))
    for v in split_list(str(ctx.p.get("vms", ""))):
        vmid = int(v)
        if remove:
            p["vms"].discard(vmid)
            sim.access.pool_of.pop(vmid, None)
            continue
        if vmid not in sim.guests:
            raise die(f"no such VMID '{vmid}'")
        other = sim.access.pool_of.get(vmid)
        if other and other != pid and not ctx.p.get("allow-move"):
            raise die(f"VM {vmid} is already a pool member")
        if other and other != pid:
            sim.pools[other]["vms"].discard(vmid)
        p["vms"].add(vmid)
        sim.access.pool_of[vmid] = pid
    for s in split_list(str(ctx.p.get("storage", ""))):
        if remove:
            p["storage"].discard(s)
        else:
            p["storage"].add(s)
    for g in sim.guests.values():
        g.touch()
    sim.access.pools_changed(sim.pools)
    sim.changed()
    return None


@api("DELETE", "/pools/{poolid}")
def delete_pool(ctx: Ctx) -> None:
    p = _pool(ctx)
    if p.get("vms") or p.get("storage"):
        raise die("pool is not empty")
    del ctx.sim.pools[str(ctx.p["poolid"])]
    ctx.sim.access.changed()
    ctx.sim.changed()
    return None


# -- HA ------------------------------------------------------------------------------------------
def _sid(text: str) -> str:
    return text if ":" in text else f"vm:{text}"


@api("GET", "/cluster/ha/resources")
def ha_resources(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for sid, r in ctx.sim.ha_resources.items():
        if ctx.p.get("type") and not sid.startswith(str(ctx.p["type"]) + ":"):
            continue
        out.append({"sid": sid, "type": sid.split(":")[0], **{k: v for k, v in r.items()}, "digest": _ha_digest(ctx)})
    return out


def _ha_digest(ctx: Ctx) -> str:
    import hashlib

    return hashlib.sha1(repr(sorted(ctx.sim.ha_resources.items())).encode()).hexdigest()


@api("POST", "/cluster/ha/resources")
def ha_create(ctx: Ctx) -> None:
    sim = ctx.sim
    sid = _sid(str(ctx.p["sid"]))
    kind, _, vmid = sid.partition(":")
    if sid in sim.ha_resources:
        raise die(f"resource ID '{sid}' already defined")
    g = sim.guests.get(int(vmid)) if vmid.isdigit() else None
    if g is None:
        raise die(f"{'CT' if kind == 'ct' else 'VM'} {vmid} does not exist")
    if (kind == "ct") != (g.type == "lxc"):
        raise die(f"wrong type '{kind}' for VM {vmid}" if kind == "ct" else f"CT {vmid} is not a VM")
    if ctx.p.get("group") and ctx.p["group"] not in sim.ha_groups:
        raise die(f"group '{ctx.p['group']}' does not exist")
    r = {k: v for k, v in ctx.p.items() if k not in ("sid", "type")}
    r.setdefault("state", "started")
    sim.ha_resources[sid] = r
    sim.ha_manager = True  # a configured resource makes the CRM active (its manager status stays)
    g.touch()
    sim.changed()
    return None


def _ha(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    sid = _sid(str(ctx.p["sid"]))
    r = ctx.sim.ha_resources.get(sid)
    if r is None:
        raise die(f"no such resource '{sid}'")
    return sid, r


@api("GET", "/cluster/ha/resources/{sid}")
def ha_get(ctx: Ctx) -> dict[str, Any]:
    sid, r = _ha(ctx)
    return {"sid": sid, "type": sid.split(":")[0], **r, "digest": _ha_digest(ctx)}


@api("PUT", "/cluster/ha/resources/{sid}")
def ha_update(ctx: Ctx) -> None:
    sid, r = _ha(ctx)
    if ctx.p.get("digest") and ctx.p["digest"] != _ha_digest(ctx):
        raise die("detected modified configuration - file changed by other user? Try again.")
    for k in split_list(str(ctx.p.get("delete", ""))):
        r.pop(k, None)
    for k, v in ctx.p.items():
        if k not in ("sid", "delete", "digest"):
            r[k] = v
    _touch_sid(ctx, sid)
    return None


def _touch_sid(ctx: Ctx, sid: str) -> None:
    vmid = sid.split(":")[1]
    g = ctx.sim.guests.get(int(vmid)) if vmid.isdigit() else None
    if g:
        g.touch()
    ctx.sim.changed()


@api("DELETE", "/cluster/ha/resources/{sid}")
def ha_delete(ctx: Ctx) -> None:
    sid, _ = _ha(ctx)
    del ctx.sim.ha_resources[sid]
    _touch_sid(ctx, sid)
    return None


@api("GET", "/cluster/ha/groups")
def ha_groups(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"group": k, "type": "group", **v} for k, v in ctx.sim.ha_groups.items()]


@api("POST", "/cluster/ha/groups")
def ha_group_create(ctx: Ctx) -> None:
    gid = str(ctx.p["group"])
    if gid in ctx.sim.ha_groups:
        raise die(f"ha group '{gid}' already defined")
    ctx.sim.ha_groups[gid] = {k: v for k, v in ctx.p.items() if k not in ("group", "type")}
    return None


@api("GET", "/cluster/ha/groups/{group}")
def ha_group_get(ctx: Ctx) -> dict[str, Any]:
    gid = str(ctx.p["group"])
    if gid not in ctx.sim.ha_groups:
        raise die(f"no such ha group '{gid}'")
    return {"group": gid, "type": "group", **ctx.sim.ha_groups[gid]}


@api("DELETE", "/cluster/ha/groups/{group}")
def ha_group_delete(ctx: Ctx) -> None:
    gid = str(ctx.p["group"])
    if gid not in ctx.sim.ha_groups:
        raise die(f"no such ha group '{gid}'")
    del ctx.sim.ha_groups[gid]
    return None


@api("GET", "/cluster/ha/status/current")
def ha_status(ctx: Ctx) -> list[dict[str, Any]]:
    """pve-ha-manager PVE/API2/HA/Status.pm: quorum, the CRM master, one LRM entry per node the manager
    knows (a node in maintenance: "NODE (maintenance mode, ...)"), then the services; PVE 9 adds the
    fencing entry and the LRM's watchdog. The sim's CRM and LRMs are always current (active)."""
    sim = ctx.sim
    local = next(iter(sim.nodes))  # the node that answers (pvesim answers as the first)
    quorate = sum(n.online for n in sim.nodes.values()) * 2 > len(sim.nodes)
    out: list[dict[str, Any]] = [
        {
            "id": "quorum",
            "type": "quorum",
            "node": local,
            "status": "OK" if quorate else f"No quorum on node '{local}'!",
            "quorate": int(quorate),
        }
    ]
    now = int(sim.now())
    stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(now))  # Perl's scalar localtime()
    fencing = sim.pve_major >= 9
    master = next((n.name for n in sim.nodes.values() if n.online and not n.maintenance),
                  next((n.name for n in sim.nodes.values() if n.online), None))
    if sim.ha_manager and master is not None:
        state = "active" if quorate else "idle"
        out.append({"id": "master", "type": "master", "node": master, "status": f"{master} ({state}, {stamp})",
                    "timestamp": now})
    if fencing:
        armed = "armed" if sim.ha_manager and quorate else "standby"
        watchdog = "CRM watchdog active" if armed == "armed" else "CRM watchdog standby"
        out.append({"id": "fencing", "type": "fencing", "node": master or local,
                    "status": f"{armed} ({watchdog})", "armed-state": armed})
    if sim.ha_manager:
        for name in sorted(sim.nodes):
            n = sim.nodes[name]
            active = [sid for sid in sim.ha_resources if _ha_node(sim, sid) == name
                      and ha_service_state(sim.ha_resources[sid]) in ("started", "migrate", "relocate")]
            if n.online:
                status = "maintenance mode" if n.maintenance else ("active" if active else "idle")
                watchdog = "watchdog active" if n.maintenance or active else "watchdog standby"
            else:  # its last status is older than 30 s
                status = "maintenance mode" if n.maintenance else "old timestamp - dead?"
                watchdog = "watchdog standby"
            text = f"{name} ({status}, {watchdog}, {stamp})" if fencing else f"{name} ({status}, {stamp})"
            out.append({"id": f"lrm:{name}", "type": "lrm", "node": name, "status": text, "timestamp": now})
    for sid in sorted(sim.ha_resources):
        r = sim.ha_resources[sid]
        node = _ha_node(sim, sid) or "---"
        entry: dict[str, Any] = {"id": f"service:{sid}", "type": "service", "sid": sid, "node": node}
        if r.get("state", "started") == "ignored":  # no service status: the CRM leaves it alone
            entry["state"] = "ignored"
        else:
            entry["crm_state"] = ha_service_state(r)
            entry["state"] = _verbose_state(sim, sid, r)
        entry["status"] = f"{sid} ({node}, {entry['state']})"
        entry["request_state"] = r.get("state", "started")
        for key in ("group", "max_restart", "max_relocate", "failback", "comment"):
            if r.get(key) is not None:
                entry[key] = r[key]
        out.append(entry)
    return out


def _ha_node(sim: Any, sid: str) -> str | None:
    vmid = sid.split(":")[1]
    g = sim.guests.get(int(vmid)) if vmid.isdigit() else None
    return g.node if g else None


def _verbose_state(sim: Any, sid: str, r: dict[str, Any]) -> str:
    """PVE::HA::Tools::get_verbose_service_state for the sim's (converged) service status."""
    cur, req = ha_service_state(r), str(r.get("state") or "started")
    vmid = sid.split(":")[1]
    g = sim.guests.get(int(vmid)) if vmid.isdigit() else None
    if cur == "stopped":
        return "disabled" if req == "disabled" else "stopped"
    if cur == "started" and (g is None or g.status != "running"):
        return "starting"
    return cur
