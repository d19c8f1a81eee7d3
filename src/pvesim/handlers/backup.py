"""Backups: /cluster/backup jobs, not-backed-up, included_volumes, and POST /nodes/{node}/vzdump."""

from __future__ import annotations

import re
import uuid
from typing import Any

from pvesim.calendar import CalendarError, next_run, parse_calendar_event
from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.handlers.lxc import lock_error
from pvesim.handlers.notifications import notify
from pvesim.prune import archive_name, parse_archive_name, parse_prune_backups, prune_marks
from pvesim.state import GiB, Guest, Sim, TaskError, Volume, die, param_error

_ROOT_ONLY = ("tmpdir", "dumpdir", "script", "job-id")
_COMPRESS_EXT = {"0": "", "gzip": ".gz", "lzo": ".lzo", "1": ".lzo", "zstd": ".zst"}


def _job_view(sim: Sim, jid: str, job: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {"id": jid, "type": "vzdump", **job}
    d.setdefault("enabled", 1)
    if d.get("enabled") and d.get("schedule"):
        try:
            nr = next_run(parse_calendar_event(str(d["schedule"])), sim.now())
        except CalendarError:
            nr = None
        if nr is not None:
            d["next-run"] = nr
    return d


@api("GET", "/cluster/backup")
def jobs(ctx: Ctx) -> list[dict[str, Any]]:
    return [_job_view(ctx.sim, jid, j) for jid, j in sorted(ctx.sim.backup_jobs.items())]


def assert_param_permission_common(ctx: Ctx, p: dict[str, Any]) -> None:
    """pve-manager PVE/API2/Backup.pm assert_param_permission_common (jobs and vzdump): root@pam itself
    may set anything; others never the root-only keys (400), and need Sys.Modify for I/O limits."""
    if ctx.is_root:
        return
    for k in _ROOT_ONLY:
        if k in p:
            raise param_error({k: "Only root may set this option."})
    if any(p.get(k) is not None for k in ("bwlimit", "ionice", "performance")):
        ctx.check("/", ["Sys.Modify"])


def _check_job_params(ctx: Ctx, p: dict[str, Any], creating: bool) -> None:
    assert_param_permission_common(ctx, p)
    if creating:
        if p.get("schedule") and p.get("starttime"):
            raise param_error({"starttime": "'starttime' and 'schedule' cannot both be set"})
        if not p.get("schedule") and not p.get("starttime"):
            raise param_error({"schedule": "neither 'schedule' nor 'starttime' set"})
        if not (p.get("vmid") or p.get("all") or p.get("pool")):
            raise param_error({"vmid": "please specify at least one guest (vmid, all or pool)"})
    if p.get("storage") and p["storage"] not in ctx.sim.storages:
        raise param_error({"storage": f"storage '{p['storage']}' does not exist"})
    if p.get("pool") and p["pool"] not in ctx.sim.pools:
        raise param_error({"pool": f"pool '{p['pool']}' does not exist"})
    if "notes-template" in p and "\n" in str(p["notes-template"]):
        raise param_error({"notes-template": "notes-template must be a single line"})


def _legacy_schedule(p: dict[str, Any]) -> dict[str, Any]:
    """starttime + dow (legacy) become a calendar event, as PVE converts them."""
    if p.get("starttime") and not p.get("schedule"):
        p = dict(p)
        dow = str(p.pop("dow", "mon,tue,wed,thu,fri,sat,sun"))
        p["schedule"] = f"{dow} {p.pop('starttime')}"
    return p


@api("POST", "/cluster/backup")
def job_create(ctx: Ctx) -> None:
    p = dict(ctx.p)
    _check_job_params(ctx, p, True)
    jid = str(p.pop("id", "") or f"backup-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:4]}")
    if jid in ctx.sim.backup_jobs:
        raise die(f"Job '{jid}' already exists")
    p = _legacy_schedule(p)
    p.setdefault("enabled", 1)
    ctx.sim.backup_jobs[jid] = p
    ctx.sim.changed()
    return None


def _job(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    jid = str(ctx.p["id"])
    job = ctx.sim.backup_jobs.get(jid)
    if job is None:
        raise die(f"Job '{jid}' does not exist")
    return jid, job


@api("GET", "/cluster/backup/{id}")
def job_get(ctx: Ctx) -> dict[str, Any]:
    jid, job = _job(ctx)
    d = _job_view(ctx.sim, jid, job)
    d.pop("next-run", None)
    return d


@api("PUT", "/cluster/backup/{id}")
def job_update(ctx: Ctx) -> None:
    jid = str(ctx.p["id"])
    job = ctx.sim.backup_jobs.get(jid)
    if job is None:
        raise die("no such vzdump job")
    p = {k: v for k, v in ctx.p.items() if k not in ("id", "delete")}
    _check_job_params(ctx, p, False)
    for k in split_list(str(ctx.p.get("delete", ""))):
        job.pop(k, None)
    job.update(_legacy_schedule(p))
    if not (job.get("vmid") or job.get("all") or job.get("pool")):
        raise param_error({"vmid": "please specify at least one guest (vmid, all or pool)"})
    ctx.sim.changed()
    return None


@api("DELETE", "/cluster/backup/{id}")
def job_delete(ctx: Ctx) -> None:
    jid, _ = _job(ctx)
    del ctx.sim.backup_jobs[jid]
    ctx.sim.changed()
    return None


def job_guests(sim: Sim, job: dict[str, Any]) -> list[Guest]:
    """Guests a job selects (vmid list, all minus exclude, or pool), restricted to its node if set."""
    node = job.get("node")
    if job.get("all"):
        excl = {int(x) for x in split_list(str(job.get("exclude", "")))}
        gs = [g for g in sim.guests.values() if g.vmid not in excl]
    elif job.get("pool"):
        ids = sim.pools.get(str(job["pool"]), {}).get("vms", set())
        gs = [sim.guests[i] for i in sorted(ids) if i in sim.guests]
    else:
        ids = [int(x) for x in split_list(str(job.get("vmid", "")))]
        gs = [sim.guests[i] for i in ids if i in sim.guests]
    if node:
        gs = [g for g in gs if g.node == node]
    return sorted(gs, key=lambda g: g.vmid)


@api("GET", "/cluster/backup/{id}/included_volumes")
def included_volumes(ctx: Ctx) -> dict[str, Any]:
    _jid, job = _job(ctx)
    children = []
    for g in job_guests(ctx.sim, job):
        vols = []
        for k, v in sorted(g.config.items()):
            if k == "rootfs" or re.fullmatch(r"(scsi|virtio|sata|ide|efidisk|tpmstate)\d+", k):
                if "media=cdrom" in str(v):
                    continue
                vols.append(
                    {
                        "id": k,
                        "name": str(v).split(",", 1)[0],
                        "included": 1,
                        "reason": "rootfs" if k == "rootfs" else "default",
                    }
                )
            elif re.fullmatch(r"mp\d+", k):
                inc, reason = backup_included(k, str(v))
                vols.append({"id": k, "name": str(v).split(",", 1)[0], "included": int(inc), "reason": reason})
        children.append({"id": g.vmid, "name": g.name, "type": g.type, "children": vols})
    return {"children": children}


@api("GET", "/cluster/backup-info/not-backed-up")
def not_backed_up(ctx: Ctx) -> list[dict[str, Any]]:
    covered: set[int] = set()
    for job in ctx.sim.backup_jobs.values():
        covered.update(g.vmid for g in job_guests(ctx.sim, job))
    return [
        {"vmid": g.vmid, "name": g.name, "type": g.type}
        for g in sorted(ctx.sim.guests.values(), key=lambda x: x.vmid)
        if g.vmid not in covered and not g.config.get("template")
    ]


# -- vzdump ---------------------------------------------------------------------------------------
def _notes(template: str, sim: Sim, g: Guest) -> str:
    return (
        template.replace("{{cluster}}", sim.opts.cluster_name)
        .replace("{{guestname}}", g.name)
        .replace("{{node}}", g.node)
        .replace("{{vmid}}", str(g.vmid))
    )


def apply_prune(sim: Sim, node: str, storage: str, kind: str, vmid: int, keep: dict[str, int]) -> list[str]:
    """Prune one backup group on a storage; returns the removed volids."""
    vols = sim.storage_volumes(node, storage)
    group = []
    for v in vols.values():
        if v.content != "backup":
            continue
        a = parse_archive_name(v.volid)
        if a is None or a.vmid != vmid or a.type != kind:
            continue
        group.append((v.volid, a.ctime, bool(v.protected)))
    marks = prune_marks(group, keep)
    removed = [vid for vid, m in marks.items() if m == "remove"]
    for vid in removed:
        vols.pop(vid, None)
    if removed:
        sim.changed()
    return removed


def mount_point_type(spec: str) -> str:
    """pve-container LXC/Config.pm classify_mountpoint: a path is a bind mount (a device under /dev),
    anything else a storage volume."""
    vol = spec.split(",", 1)[0]
    if vol.startswith("/dev/"):
        return "device"
    return "bind" if vol.startswith("/") else "volume"


def backup_included(key: str, spec: str) -> tuple[bool, str]:
    """pve-container LXC/Config.pm mountpoint_backup_enabled: rootfs always, a volume mount point only
    with backup=1, a bind or device mount point never."""
    if key == "rootfs":
        return True, "rootfs"
    if mount_point_type(spec) != "volume":
        return False, "not a volume"
    opts = dict(part.split("=", 1) for part in spec.split(",")[1:] if "=" in part)
    return (True, "enabled") if opts.get("backup") in ("1", "on", "yes", "true") else (False, "disabled")


def _mount_point_lines(g: Guest) -> list[str]:
    """What vzdump logs per mount point (pve-container VZDump/LXC.pm prepare), from the current config:
    a change left pending on a running container does not count."""
    lines = []
    for key in ["rootfs", *sorted((k for k in g.config if re.fullmatch(r"mp\d+", k)), key=lambda k: int(k[2:]))]:
        spec = str(g.config.get(key, ""))
        opts = dict(part.split("=", 1) for part in spec.split(",")[1:] if "=" in part)
        mount = "/" if key == "rootfs" else opts.get("mp", "")
        if not spec.split(",", 1)[0] or not mount:
            continue
        included, reason = backup_included(key, spec)
        if included:
            lines.append(f"INFO: including mount point {key} ('{mount}') in backup")
        else:
            lines.append(f"INFO: excluding {mount_point_type(spec)} mount point {key} ('{mount}') from backup "
                         f"({reason})")
    return lines


@api("POST", "/nodes/{node}/vzdump")
def vzdump(ctx: Ctx) -> str:
    sim, p, node = ctx.sim, ctx.p, ctx.node
    assert_param_permission_common(ctx, p)
    sid = str(p.get("storage", "local"))
    st = sim.storages.get(sid)
    if st is None:
        raise die(f"storage '{sid}' does not exist")
    if "backup" not in st.content:
        raise die(f"storage '{sid}' does not support backups")
    if not ctx.is_root:
        ctx.check(f"/storage/{sid}", ["Datastore.AllocateSpace"])
        if "prune-backups" in p:
            ctx.check(f"/storage/{sid}", ["Datastore.Allocate"])
    if p.get("stdout"):
        raise die("cannot use 'stdout' over the API emulator")
    if not (p.get("vmid") or p.get("all") or p.get("pool")):
        raise param_error({"vmid": "please specify at least one guest (vmid, all or pool)"})
    selection: dict[str, Any] = {k: p[k] for k in ("vmid", "all", "exclude", "pool") if k in p}
    guests = [g for g in job_guests(sim, selection) if g.node == node]
    missing = [int(x) for x in split_list(str(p.get("vmid", ""))) if int(x) not in sim.guests]
    if not ctx.is_root:
        for g in guests:
            ctx.check(f"/vms/{g.vmid}", ["VM.Backup"])
    locked: dict[int, str] = {}
    for g in guests:
        err = lock_error(g)
        if err:
            locked[g.vmid] = err
        else:
            g.config["lock"] = "backup"
            g.touch()
    sim.changed()
    compress = str(p.get("compress", "0"))
    remove = int(p.get("remove", 1))
    prune_text = str(p.get("prune-backups") or st.prune_backups or "keep-all=1")
    keep = parse_prune_backups(prune_text)
    mode = str(p.get("mode", "snapshot"))
    start = sim.now()
    per = sim.task_seconds.get("vzdump", 2.0)
    tid = str(guests[0].vmid) if len(guests) == 1 and not missing else ""
    job_id = p.get("job-id")

    def work() -> list[str]:
        args = " ".join(f"--{k} {v}" for k, v in sorted(p.items()) if k != "node")
        lines = [f"INFO: starting new backup job: vzdump {args}"]
        errors = 0
        for vmid in missing:
            lines.append(f"ERROR: Backup of VM {vmid} failed - unable to find VM '{vmid}'")
            errors += 1
        for i, g in enumerate(guests):
            kind = "lxc" if g.type == "lxc" else "qemu"
            lines.append(f"INFO: Starting Backup of VM {g.vmid} ({kind})")
            if g.vmid in locked:
                lines.append(f"ERROR: Backup of VM {g.vmid} failed - {locked[g.vmid]}")
                errors += 1
                continue
            g.config.pop("lock", None)
            g.touch()
            limit = sum(v for k, v in keep.items() if k != "keep-all")
            if not remove and limit and not keep.get("keep-all"):
                have = sum(
                    1
                    for v in sim.storage_volumes(node, sid).values()
                    if v.content == "backup"
                    and v.vmid == g.vmid
                    and not v.protected
                    and parse_archive_name(v.volid) is not None
                )
                if have >= limit:
                    lines.append(
                        f"ERROR: Backup of VM {g.vmid} failed - There is a max backup limit of {limit} "
                        "enforced by the target storage or the vzdump parameters. Either increase the "
                        "limit or delete old backup(s)."
                    )
                    errors += 1
                    continue
            if sim.guests.get(g.vmid) is not g:
                lines.append(f"ERROR: Backup of VM {g.vmid} failed - guest vanished")
                errors += 1
                continue
            ext = ("tar" if kind == "lxc" else "vma") + _COMPRESS_EXT.get(compress, ".zst")
            when = start + i * per
            name = archive_name(kind, g.vmid, when, ext)
            volid = f"{sid}:backup/{name}"
            used = max(1, int(sim.guest_usage(g)["disk"]) or g.maxdisk() // 5)
            size = int(used / (3 if compress != "0" else 1))
            vol = Volume(
                volid,
                "backup",
                ext,
                size,
                int(when),
                g.vmid,
                subtype=kind,
                protected=int(p.get("protected", 0)),
                guest_config=dict(g.config),
            )
            if p.get("notes-template"):
                vol.notes = _notes(str(p["notes-template"]), sim, g)
            sim.add_volume(node, sid, vol)
            lines += [
                f"INFO: Backup started at {name[len(f'vzdump-{kind}-{g.vmid}-') :].split('.')[0]}",
                f"INFO: status = {g.status}",
                f"INFO: backup mode: {mode}",
                *(_mount_point_lines(g) if kind == "lxc" else []),
                f"INFO: creating vzdump archive '{st.path or ''}/dump/{name}'",
                f"INFO: archive file size: {size / GiB:.2f}GB",
            ]
            if remove:
                removed = apply_prune(sim, node, sid, kind, g.vmid, keep)
                if removed:
                    lines.append(f"INFO: prune older backups with retention: {prune_text}")
                    for r in removed:
                        lines.append(f"INFO: removing backup '{r}'")
                    lines.append(f"INFO: pruned {len(removed)} backup(s)")
            lines.append(f"INFO: Finished Backup of VM {g.vmid} (00:00:{int(per):02d})")
        lines.append("INFO: Backup job finished with errors" if errors else "INFO: Backup job finished successfully")
        notify(
            sim,
            "error" if errors else "info",
            f"vzdump backup status ({node}): backup {'failed' if errors else 'successful'}",
            {"type": "vzdump", "hostname": node, **({"job-id": str(job_id)} if job_id else {})},
            "\n".join(lines),
        )
        if errors:
            raise TaskError("job errors", lines)
        return lines

    def on_error(msg: str) -> str:
        for g in guests:
            if g.vmid not in locked and g.config.get("lock") == "backup":
                g.config.pop("lock", None)
                g.touch()
        sim.changed()
        return msg

    upid = sim.new_task(node, "vzdump", tid, ctx.auth, work=work, on_error=on_error, seconds=per * max(1, len(guests)))
    return upid


__all__ = ["apply_prune", "job_guests"]


@api("GET", "/nodes/{node}/vzdump/extractconfig")
def extractconfig(ctx: Ctx) -> str:
    """The guest config stored in a backup archive, as config-file text."""
    volid = str(ctx.p["volume"])
    sid = volid.split(":", 1)[0]
    if sid not in ctx.sim.storages:
        raise die(f"storage '{sid}' does not exist")
    vol = ctx.sim.storage_volumes(ctx.node, sid).get(volid)
    if vol is None or vol.content != "backup":
        raise die(f"volume '{volid}' does not exist")
    if vol.vmid is not None and not ctx.is_root:
        ctx.check(f"/vms/{vol.vmid}", ["VM.Backup"])
    cfg = dict(vol.guest_config or {})
    lines = ["#" + line for line in str(cfg.pop("description", "")).split("\n") if line]
    lines += [f"{k}: {v}" for k, v in sorted(cfg.items())]
    return "\n".join(lines) + "\n"


@api("GET", "/nodes/{node}/vzdump/defaults")
def vzdump_defaults(ctx: Ctx) -> dict[str, Any]:
    sid = str(ctx.p.get("storage", "local"))
    st = ctx.sim.storages.get(sid)
    d: dict[str, Any] = {
        "storage": sid,
        "mode": "snapshot",
        "compress": "0",
        "all": 0,
        "remove": 1,
        "stdexcludes": 1,
        "lockwait": 180,
        "stopwait": 10,
        "ionice": 7,
    }
    if st is not None and st.prune_backups:
        d["prune-backups"] = st.prune_backups
    return d


def _prune_plan(ctx: Ctx) -> tuple[str, list[dict[str, Any]]]:
    """Marks for every backup on a storage (optionally one vmid/type), like `pvesm prune-backups --dry-run`."""
    sim = ctx.sim
    sid = str(ctx.p["storage"])
    st = sim.storages.get(sid)
    if st is None:
        raise die(f"storage '{sid}' does not exist")
    keep = parse_prune_backups(str(ctx.p.get("prune-backups") or st.prune_backups or "keep-all=1"))
    groups: dict[tuple[str, int], list[tuple[str, int, bool]]] = {}
    out: list[dict[str, Any]] = []
    for v in sim.storage_volumes(ctx.node, sid).values():
        if v.content != "backup":
            continue
        if ctx.p.get("vmid") is not None and v.vmid != int(ctx.p["vmid"]):
            continue
        a = parse_archive_name(v.volid)
        kind = a.type if a else (v.subtype or "unknown")
        if ctx.p.get("type") and kind != ctx.p["type"]:
            continue
        if a is None:
            e: dict[str, Any] = {"volid": v.volid, "ctime": v.ctime, "mark": "renamed", "type": kind}
            if v.vmid is not None:
                e["vmid"] = v.vmid
            out.append(e)
            continue
        groups.setdefault((a.type, a.vmid), []).append((v.volid, a.ctime, bool(v.protected)))
    for (kind, vmid), items in groups.items():
        marks = prune_marks(items, keep)
        out += [{"volid": vid, "ctime": ct, "mark": marks[vid], "type": kind, "vmid": vmid} for vid, ct, _p in items]
    out.sort(key=lambda e: (str(e.get("vmid", "")), -int(e["ctime"])))
    return sid, out


@api("GET", "/nodes/{node}/storage/{storage}/prunebackups")
def prunebackups_dry_run(ctx: Ctx) -> list[dict[str, Any]]:
    return _prune_plan(ctx)[1]


@api("DELETE", "/nodes/{node}/storage/{storage}/prunebackups")
def prunebackups(ctx: Ctx) -> str:
    sim = ctx.sim
    sid = str(ctx.p["storage"])
    if not ctx.is_root:
        if ctx.p.get("vmid") is not None:
            ctx.check(f"/storage/{sid}", ["Datastore.AllocateSpace"])
            ctx.check(f"/vms/{ctx.p['vmid']}", ["VM.Backup"])
        else:
            ctx.check(f"/storage/{sid}", ["Datastore.Allocate"])
    sid, plan = _prune_plan(ctx)
    node = ctx.node

    def work() -> list[str]:
        vols = sim.storage_volumes(node, sid)
        lines = []
        for e in plan:
            if e["mark"] == "remove":
                vols.pop(e["volid"], None)
                lines.append(f"removing backup '{e['volid']}'")
        sim.changed()
        return lines

    return sim.new_task(node, "prunebackups", str(ctx.p.get("vmid", "")), ctx.auth, work=work, seconds=0.2)
