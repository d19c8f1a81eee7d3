"""Node-level handlers: nodes, node status, tasks (UPIDs, status, log), QEMU inventory, misc."""

from __future__ import annotations

import re
from typing import Any

from pvesim.access import PermError
from pvesim.handlers import Ctx, Reply, api
from pvesim.handlers.lxc import destroy, migrate, power, rrddata
from pvesim.state import MiB, Task, die, param_error

UPID_RX = re.compile(
    r"UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):"
    r"([^:\s/]+):([^:\s/]*):([^:\s/]+):"
)


def pve_version(ctx: Ctx) -> dict[str, Any]:
    """GET /version of the emulated release (versions.RELEASES)."""
    r = ctx.sim.release
    return {"version": r.version, "release": r.release, "repoid": r.repoid}


@api("GET", "/version")
def version(ctx: Ctx) -> dict[str, Any]:
    return {**pve_version(ctx), "console": "xtermjs"}


@api("GET", "/nodes")
def nodes(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for n in ctx.sim.nodes.values():
        e: dict[str, Any] = {
            "node": n.name,
            "status": "online" if n.online else "offline",
            "id": f"node/{n.name}",
            "type": "node",
            "level": n.level,
            "ssl_fingerprint": "5E:" + ":".join(f"{(n.index * 7 + i) % 256:02X}" for i in range(31)),
        }
        if n.online and ctx.can(f"/nodes/{n.name}", "Sys.Audit"):
            r = ctx.sim.node_entry(n)
            e.update({k: r[k] for k in ("cpu", "maxcpu", "mem", "maxmem", "disk", "maxdisk", "uptime")})
        out.append(e)
    return out


@api("GET", "/nodes/{node}")
def node_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"name": s}
        for s in (
            "aplinfo",
            "apt",
            "capabilities",
            "ceph",
            "certificates",
            "config",
            "disks",
            "dns",
            "firewall",
            "hardware",
            "hosts",
            "journal",
            "lxc",
            "netstat",
            "network",
            "qemu",
            "replication",
            "report",
            "rrd",
            "rrddata",
            "scan",
            "sdn",
            "services",
            "spiceshell",
            "status",
            "storage",
            "subscription",
            "syslog",
            "tasks",
            "time",
            "version",
            "vncshell",
            "vzdump",
            "wakeonlan",
        )
    ]


@api("GET", "/nodes/{node}/status")
def node_status(ctx: Ctx) -> dict[str, Any]:
    n = ctx.sim.nodes[ctx.node]
    r = ctx.sim.node_entry(n)
    rel = ctx.sim.release
    return {
        "cpu": r.get("cpu", 0),
        "uptime": r.get("uptime", 0),
        "idle": 0,
        "wait": 0.0,
        "loadavg": ["0.42", "0.38", "0.35"],
        "kversion": f"Linux {rel.kernel} #1 SMP PREEMPT_DYNAMIC PMX {rel.kernel.removesuffix('-pve')}",
        "pveversion": rel.pveversion,
        "cpuinfo": {
            "cpus": n.maxcpu,
            "cores": n.maxcpu // 2,
            "sockets": 1,
            "model": "pvesim virtual CPU",
            "mhz": "2900.000",
            "hvm": "1",
            "user_hz": 100,
            "flags": "fpu vme de pse",
        },
        "memory": {
            "total": n.maxmem,
            "used": r.get("mem", 0),
            "free": n.maxmem - int(r.get("mem", 0)),
            # pve-manager 9 (commit 8fd3420b "api: node status: add the available memory")
            **({"available": n.maxmem - int(r.get("mem", 0))} if rel.major >= 9 else {}),
        },
        "swap": {"total": 8 * 1024 * MiB, "used": 0, "free": 8 * 1024 * MiB},
        "rootfs": {
            "total": n.maxdisk,
            "used": r.get("disk", 0),
            "avail": n.maxdisk - int(r.get("disk", 0)),
            "free": n.maxdisk - int(r.get("disk", 0)),
        },
        "ksm": {"shared": 0},
        "boot-info": {"mode": "efi", "secureboot": 0},
        "current-kernel": {
            "sysname": "Linux",
            "release": rel.kernel,
            "machine": "x86_64",
            "version": f"#1 SMP PREEMPT_DYNAMIC PMX {rel.kernel.removesuffix('-pve')} {rel.kernel_build}",
        },
    }


@api("GET", "/nodes/{node}/version")
def node_version(ctx: Ctx) -> dict[str, Any]:
    return pve_version(ctx)


@api("GET", "/nodes/{node}/subscription")
def subscription(ctx: Ctx) -> dict[str, Any]:
    return {
        "status": "notfound",
        "message": "There is no subscription key",
        "url": "https://www.proxmox.com/en/proxmox-virtual-environment/pricing",
    }


@api("GET", "/nodes/{node}/replication")
def replication(ctx: Ctx) -> list[dict[str, Any]]:
    return []


@api("GET", "/nodes/{node}/rrddata")
def node_rrddata(ctx: Ctx) -> list[dict[str, Any]]:
    sim = ctx.sim
    n = sim.nodes[ctx.node]
    from pvesim.handlers.lxc import RRD_STEPS

    step = RRD_STEPS[str(ctx.p["timeframe"])]
    end = int(sim.now()) // step * step
    e = sim.node_entry(n)
    return [
        {
            "time": end - (69 - i) * step,
            "cpu": e.get("cpu", 0),
            "maxcpu": n.maxcpu,
            "memtotal": n.maxmem,
            "memused": e.get("mem", 0),
            "rootused": e.get("disk", 0),
            "roottotal": n.maxdisk,
            "loadavg": 0.4,
            "iowait": 0.001,
            "netin": 1000.0,
            "netout": 800.0,
        }
        for i in range(70)
    ]


# -- tasks -------------------------------------------------------------------------------------
def _task(ctx: Ctx) -> Task:
    upid = str(ctx.p["upid"])
    if not UPID_RX.fullmatch(upid):
        raise param_error({"upid": "unable to parse worker upid"})
    t = ctx.sim.tasks.get(upid)
    if t is None or t.node != ctx.node:
        raise param_error({"upid": "no such task"})
    own = t.user == ctx.auth.userid and t.tokenid == ctx.auth.tokenid
    if not own and not ctx.can(f"/nodes/{ctx.node}", "Sys.Audit"):
        raise PermError(f"/nodes/{ctx.node}, Sys.Audit")
    return t


def _list_entry(t: Task) -> dict[str, Any]:
    d: dict[str, Any] = {
        "upid": t.upid,
        "node": t.node,
        "pid": t.pid,
        "pstart": t.pstart,
        "starttime": t.starttime,
        "type": t.type,
        "id": t.id,
        "user": t.user,
    }
    if t.tokenid:
        d["tokenid"] = t.tokenid
    if t.status == "stopped":
        d["endtime"] = t.endtime
        d["status"] = t.exitstatus
    return d


@api("GET", "/nodes/{node}/tasks")
def list_tasks(ctx: Ctx) -> Reply:
    p = ctx.p
    audit = ctx.can(f"/nodes/{ctx.node}", "Sys.Audit")
    source = p.get("source", "archive")
    out = []
    for t in reversed(ctx.sim.task_order):
        if t.node != ctx.node:
            continue
        if not audit and not (t.user == ctx.auth.userid and t.tokenid == ctx.auth.tokenid):
            continue
        if source == "active" and t.status != "running":
            continue
        if source == "archive" and t.status == "running":
            continue
        if p.get("vmid") is not None and t.id != str(p["vmid"]):
            continue
        if p.get("typefilter") and t.type != p["typefilter"]:
            continue
        if p.get("userfilter") and p["userfilter"] not in t.user:
            continue
        if p.get("errors") and (t.status == "running" or t.exitstatus == "OK"):
            continue
        if p.get("since") and t.starttime < int(p["since"]):
            continue
        if p.get("until") and t.starttime > int(p["until"]):
            continue
        if p.get("statusfilter"):
            wanted = set(str(p["statusfilter"]).replace(";", ",").split(","))
            st = (
                "active"
                if t.status == "running"
                else "ok"
                if t.exitstatus == "OK"
                else "warning"
                if str(t.exitstatus).startswith("WARNINGS")
                else "error"
            )
            if st not in wanted:
                continue
        out.append(_list_entry(t))
    start = int(p.get("start", 0))
    limit = int(p.get("limit", 50))
    return Reply(out[start : start + limit], {"total": len(out)})


@api("GET", "/nodes/{node}/tasks/{upid}")
def task_index(ctx: Ctx) -> list[dict[str, Any]]:
    _task(ctx)
    return [{"name": "log"}, {"name": "status"}]


@api("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(ctx: Ctx) -> dict[str, Any]:
    return _task(ctx).status_dict()


@api("GET", "/nodes/{node}/tasks/{upid}/log")
def task_log(ctx: Ctx) -> Reply:
    t = _task(ctx)
    start = int(ctx.p.get("start", 0))
    limit = int(ctx.p.get("limit", 50))
    lines = t.log or ([] if t.status == "running" else ["TASK OK"])
    sel = lines[start : start + limit] if limit else lines[start:]
    return Reply([{"n": start + i + 1, "t": line} for i, line in enumerate(sel)], {"total": len(lines)})


@api("DELETE", "/nodes/{node}/tasks/{upid}")
def task_stop(ctx: Ctx) -> None:
    t = _task(ctx)
    if t.status == "running":
        t.forced_error = "received interrupt"
        t.work = None
        t.end = ctx.sim.now()
        import heapq

        heapq.heapify(ctx.sim._heap)
        ctx.sim.tick()
    return None


# -- QEMU guests (inventory-level) ---------------------------------------------------------------
@api("GET", "/nodes/{node}/qemu")
def list_qemu(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for g in ctx.sim.guests.values():
        if g.node == ctx.node and g.type == "qemu" and ctx.can(f"/vms/{g.vmid}", "VM.Audit"):
            d = ctx.sim.guest_status(g, with_ha=False)
            d.pop("type", None)
            out.append(d)
    return out


@api("GET", "/nodes/{node}/qemu/{vmid}/config")
def qemu_config(ctx: Ctx) -> dict[str, Any]:
    g = ctx.guest("qemu")
    return g.config_view(bool(ctx.p.get("current")))


@api("GET", "/nodes/{node}/qemu/{vmid}/status/current")
def qemu_status(ctx: Ctx) -> dict[str, Any]:
    g = ctx.guest("qemu")
    d = ctx.sim.guest_status(g)
    d.pop("type", None)
    return d


for _action in ("start", "stop", "shutdown", "reboot", "suspend", "resume"):

    def _mk(action: str) -> Any:
        def handler(ctx: Ctx) -> str:
            return power(ctx, ctx.guest("qemu"), action)

        return handler

    api("POST", f"/nodes/{{node}}/qemu/{{vmid}}/status/{_action}")(_mk(_action))


@api("DELETE", "/nodes/{node}/qemu/{vmid}")
def delete_qemu(ctx: Ctx) -> str:
    return destroy(ctx, ctx.guest("qemu"))


@api("POST", "/nodes/{node}/qemu/{vmid}/migrate")
def migrate_qemu(ctx: Ctx) -> str:
    g = ctx.guest("qemu")
    if g.status == "running" and not ctx.p.get("online"):
        raise die("can't migrate running VM without --online")
    return migrate(ctx, g)


@api("GET", "/nodes/{node}/qemu/{vmid}/rrddata")
def qemu_rrddata(ctx: Ctx) -> list[dict[str, Any]]:
    return rrddata(ctx, ctx.guest("qemu"))


@api("GET", "/nodes/{node}/network")
def network(ctx: Ctx) -> list[dict[str, Any]]:
    n = ctx.sim.nodes[ctx.node]
    ifaces: list[dict[str, Any]] = [
        {
            "iface": "eno1",
            "type": "eth",
            "active": 1,
            "autostart": 1,
            "method": "manual",
            "method6": "manual",
            "families": ["inet"],
            "priority": 3,
            "exists": 1,
        },
        {
            "iface": "vmbr0",
            "type": "bridge",
            "active": 1,
            "autostart": 1,
            "method": "static",
            "method6": "manual",
            "bridge_ports": "eno1",
            "bridge_stp": "off",
            "bridge_fd": "0",
            "bridge_vlan_aware": 1,
            "bridge_vids": "2-4094",
            "address": n.ip,
            "netmask": "24",
            "cidr": f"{n.ip}/24",
            "gateway": "127.0.2.1",
            "families": ["inet"],
            "priority": 4,
        },
    ]
    typ = ctx.p.get("type")
    if typ in ("any_bridge", "any_local_bridge"):
        return [i for i in ifaces if i["type"] == "bridge"]
    if typ:
        return [i for i in ifaces if i["type"] == typ]
    return ifaces
