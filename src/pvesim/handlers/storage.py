"""Storage handlers: storage config, per-node status, content list/delete, aplinfo and downloads."""

from __future__ import annotations

import re
from typing import Any

from pvesim.access import PermError
from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.state import APLINFO_EXTRA, TEMPLATES, Sim, Storage, Volume, die, param_error


def parse_volname(sim: Sim, volid: str) -> tuple[str, str | None, int | None]:
    """(storage, content type, owner vmid) of a volume ID as pve-storage Storage.pm parse_volname reads
    it: from the name alone, whether the volume exists or not. (None, None, None) for a path (no
    `storage:` prefix, parse_volume_id)."""
    m = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", volid, re.IGNORECASE | re.DOTALL)
    if not m:
        return "", None, None
    sid, name = m.group(1), m.group(2)
    if sid not in sim.storages:
        raise die(f"storage '{sid}' does not exist")
    vt = re.fullmatch(r"(vztmpl|iso|import|snippets)/.+", name)
    if vt:
        return sid, vt.group(1), None
    # vzdump archives, and PBS snapshots (PBSPlugin.pm: backup/<ct|vm>/<vmid>/<time>)
    b = re.fullmatch(r"backup/(?:vzdump-(?:lxc|qemu|openvz)-|(?:ct|vm)/)(\d+)[-/].+", name)
    if b:
        return sid, "backup", int(b.group(1))
    if name.startswith("backup/"):
        return sid, "backup", None
    d = re.fullmatch(r"(?:\d+/)?(?:(?:base|basevol)-\d+-[^/]+/)?(vm|subvol|base|basevol)-(\d+)-\S+", name)
    if d:
        return sid, "rootdir" if d.group(1) in ("subvol", "basevol") else "images", int(d.group(2))
    raise die(f"unable to parse volume name '{name}'")


def check_volume_access(ctx: Ctx, vmid: int | None, volid: str, content_type: str | None) -> None:
    """pve-storage Storage.pm check_volume_access, for create/restore (ostemplate) and mount points."""
    sid, vtype, owner = parse_volname(ctx.sim, volid)
    if not sid:
        if not ctx.is_root:
            # PVE dies without a newline here, so the real message also names the Perl source line
            raise die("Only root can pass arbitrary filesystem paths.")
        return
    if content_type and vtype != content_type and (content_type != "rootdir" or vtype != "images"):
        raise die(f"unable to use volume {volid} - content type needs to be '{content_type}'")
    if ctx.can(f"/storage/{sid}", "Datastore.Allocate"):
        return
    if vtype in ("iso", "vztmpl", "import"):
        # templates and ISOs may be sensitive: reading the storage is enough, allocating is not needed
        ctx.check(f"/storage/{sid}", ["Datastore.AllocateSpace", "Datastore.Audit"], any_of=True)
    elif owner is not None and vmid is not None and owner == vmid:
        return
    elif vtype == "backup" and owner:
        ctx.check(f"/storage/{sid}", ["Datastore.AllocateSpace"])
        ctx.check(f"/vms/{owner}", ["VM.Backup"])
    elif vtype in ("images", "rootdir") and owner:
        ctx.check(f"/storage/{sid}", ["Datastore.Audit"])
        ctx.check(f"/vms/{owner}", ["VM.Config.Disk"])
    else:
        raise die(f"missing privileges to access {volid}")


@api("GET", "/storage")
def storage_list(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for st in ctx.sim.storages.values():
        if ctx.p.get("type") and st.type != ctx.p["type"]:
            continue
        if ctx.can(f"/storage/{st.storage}", "Datastore.Audit") or ctx.can(
            f"/storage/{st.storage}", "Datastore.AllocateSpace"
        ):
            out.append(st.config())
    return out


@api("POST", "/storage")
def storage_create(ctx: Ctx) -> dict[str, Any]:
    sid = str(ctx.p["storage"])
    if sid in ctx.sim.storages:
        raise die(f"create storage failed: storage ID '{sid}' already defined")
    typ = str(ctx.p["type"])
    default_content = {
        "dir": ["backup", "iso", "vztmpl"],
        "lvmthin": ["images", "rootdir"],
        "lvm": ["images", "rootdir"],
        "zfspool": ["images", "rootdir"],
        "nfs": ["images"],
        "cifs": ["images"],
        "pbs": ["backup"],
    }.get(typ, ["images"])
    content = split_list(str(ctx.p["content"])) if ctx.p.get("content") else default_content
    st = Storage(
        sid,
        typ,
        sorted(content),
        shared=int(ctx.p.get("shared", typ in ("nfs", "cifs", "pbs", "rbd"))),
        path=ctx.p.get("path"),
        nodes=split_list(str(ctx.p["nodes"])) if ctx.p.get("nodes") else None,
        prune_backups=ctx.p.get("prune-backups"),
        disable=int(ctx.p.get("disable", 0)),
        extra={
            k: v
            for k, v in ctx.p.items()
            if k not in ("storage", "type", "content", "shared", "path", "nodes", "prune-backups", "disable")
        },
    )
    ctx.sim.storages[sid] = st
    ctx.sim.changed()
    return {"storage": sid, "type": typ}


def _storage(ctx: Ctx) -> Storage:
    sid = str(ctx.p["storage"])
    st = ctx.sim.storages.get(sid)
    if st is None:
        raise die(f"storage '{sid}' does not exist")
    return st


@api("GET", "/storage/{storage}")
def storage_get(ctx: Ctx) -> dict[str, Any]:
    return _storage(ctx).config()


@api("PUT", "/storage/{storage}")
def storage_update(ctx: Ctx) -> dict[str, Any]:
    st = _storage(ctx)
    if ctx.p.get("digest") and ctx.p["digest"] != st.config()["digest"]:
        raise die("detected modified configuration - file changed by other user? Try again.")
    for k in split_list(str(ctx.p.get("delete", ""))):
        if k == "prune-backups":
            st.prune_backups = None
        elif k == "nodes":
            st.nodes = None
        else:
            st.extra.pop(k, None)
    for k, v in ctx.p.items():
        if k in ("storage", "delete", "digest"):
            continue
        if k == "content":
            st.content = sorted(split_list(str(v)))
        elif k == "prune-backups":
            st.prune_backups = str(v)
        elif k == "nodes":
            st.nodes = split_list(str(v))
        elif k == "disable":
            st.disable = int(v)
        elif k == "shared":
            st.shared = int(v)
        else:
            st.extra[k] = v
    ctx.sim.changed()
    return {"storage": st.storage, "type": st.type}


@api("DELETE", "/storage/{storage}")
def storage_delete(ctx: Ctx) -> None:
    st = _storage(ctx)
    del ctx.sim.storages[st.storage]
    ctx.sim.changed()
    return None


def _status_entry(ctx: Ctx, st: Storage) -> dict[str, Any]:
    used = ctx.sim.storage_used(ctx.node, st.storage)
    return {
        "storage": st.storage,
        "type": st.type,
        "content": ",".join(st.content),
        "active": 1,
        "enabled": int(not st.disable),
        "shared": st.shared,
        "total": st.maxdisk,
        "used": used,
        "avail": st.maxdisk - used,
        "used_fraction": round(used / st.maxdisk, 6) if st.maxdisk else 0,
    }


@api("GET", "/nodes/{node}/storage")
def node_storage(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    want = set(split_list(str(ctx.p.get("content", ""))))
    for st in ctx.sim.storages.values():
        if not ctx.sim.storage_enabled_on(st.storage, ctx.node) and ctx.p.get("enabled") != 0:
            continue
        if ctx.p.get("storage") and st.storage != ctx.p["storage"]:
            continue
        if want and not (want & set(st.content)):
            continue
        if not (
            ctx.can(f"/storage/{st.storage}", "Datastore.Audit")
            or ctx.can(f"/storage/{st.storage}", "Datastore.AllocateSpace")
        ):
            continue
        out.append(_status_entry(ctx, st))
    return out


@api("GET", "/nodes/{node}/storage/{storage}")
def node_storage_index(ctx: Ctx) -> list[dict[str, Any]]:
    _storage(ctx)
    return [
        {"subdir": s}
        for s in (
            "content",
            "download-url",
            "file-restore",
            "import-metadata",
            "prunebackups",
            "rrd",
            "rrddata",
            "status",
            "upload",
        )
    ]


@api("GET", "/nodes/{node}/storage/{storage}/status")
def node_storage_status(ctx: Ctx) -> dict[str, Any]:
    st = _storage(ctx)
    if not ctx.sim.storage_enabled_on(st.storage, ctx.node):
        raise die(f"storage '{st.storage}' is not available on node '{ctx.node}'")
    e = _status_entry(ctx, st)
    e.pop("storage")
    return e


def _check_content_perm(ctx: Ctx, st: Storage) -> None:
    if not (
        ctx.can(f"/storage/{st.storage}", "Datastore.Audit")
        or ctx.can(f"/storage/{st.storage}", "Datastore.AllocateSpace")
    ):
        raise PermError(f"/storage/{st.storage}, Datastore.Audit|Datastore.AllocateSpace")


@api("GET", "/nodes/{node}/storage/{storage}/content")
def content(ctx: Ctx) -> list[dict[str, Any]]:
    st = _storage(ctx)
    _check_content_perm(ctx, st)
    if not ctx.sim.storage_enabled_on(st.storage, ctx.node):
        raise die(f"storage '{st.storage}' is not available on node '{ctx.node}'")
    out = []
    for v in sorted(ctx.sim.storage_volumes(ctx.node, st.storage).values(), key=lambda x: x.volid):
        if ctx.p.get("content") and v.content != ctx.p["content"]:
            continue
        if ctx.p.get("vmid") is not None and v.vmid != int(ctx.p["vmid"]):
            continue
        if (
            v.vmid is not None
            and not ctx.is_root
            and not ctx.can(f"/vms/{v.vmid}", "VM.Audit")
            and not ctx.can(f"/storage/{st.storage}", "Datastore.Allocate")
        ):
            continue
        out.append(v.entry())
    return out


def _volume(ctx: Ctx) -> tuple[Storage, Volume]:
    st = _storage(ctx)
    volume = str(ctx.p["volume"])
    volid = volume if ":" in volume else f"{st.storage}:{volume}"
    v = ctx.sim.storage_volumes(ctx.node, st.storage).get(volid)
    if v is None:
        raise die(f"volume '{volid}' does not exist")
    return st, v


@api("GET", "/nodes/{node}/storage/{storage}/content/{volume}")
def volume_get(ctx: Ctx) -> dict[str, Any]:
    st, v = _volume(ctx)
    _check_content_perm(ctx, st)
    d: dict[str, Any] = {"path": _path(st, v), "size": v.size, "used": v.size, "format": v.format}
    if v.notes:
        d["notes"] = v.notes
    if v.protected:
        d["protected"] = 1
    return d


def _path(st: Storage, v: Volume) -> str:
    name = v.volid.split(":", 1)[1]
    if st.type == "dir":
        sub = {"backup": "dump", "vztmpl": "template/cache", "iso": "template/iso"}.get(v.content, "images")
        return f"{st.path}/{sub}/{name.split('/', 1)[-1]}"
    return f"/dev/{st.extra.get('vgname', st.storage)}/{name}"


@api("PUT", "/nodes/{node}/storage/{storage}/content/{volume}")
def volume_update(ctx: Ctx) -> None:
    st, v = _volume(ctx)
    ctx.check(f"/storage/{st.storage}", ["Datastore.Allocate"]) if not ctx.is_root else None
    if "notes" in ctx.p:
        v.notes = str(ctx.p["notes"])
    if "protected" in ctx.p:
        v.protected = int(ctx.p["protected"])
    ctx.sim.changed()
    return None


@api("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}")
def volume_delete(ctx: Ctx) -> str:
    sim = ctx.sim
    st, v = _volume(ctx)
    if (
        v.vmid is not None
        and not ctx.is_root
        and not ctx.can(f"/vms/{v.vmid}", "VM.Backup")
        and not ctx.can(f"/storage/{st.storage}", "Datastore.Allocate")
    ):
        raise PermError(f"/storage/{st.storage}, Datastore.Allocate")
    if v.protected:
        raise die(
            f"cannot delete protected backup '{v.volid}'"
            if v.content == "backup"
            else f"volume '{v.volid}' is protected"
        )
    if v.content in ("images", "rootdir") and v.vmid is not None:
        g = sim.guests.get(v.vmid)
        if g is not None and any(v.volid in str(val) for val in g.config.values()):
            raise die(
                f"unable to delete volume '{v.volid}' - volume is used by {'CT' if g.type == 'lxc' else 'VM'} {g.vmid}"
            )
    node = ctx.node

    def work() -> list[str]:
        sim.storage_volumes(node, st.storage).pop(v.volid, None)
        sim.changed()
        return [f"Removed volume '{v.volid}'"]

    return sim.new_task(node, "imgdel", v.volid.replace("/", "_").replace(":", "_")[:80], ctx.auth, work=work)


# -- templates ---------------------------------------------------------------------------------------
def _aplinfo_entries() -> list[dict[str, Any]]:
    out = []
    for name, os_, ver, _size in TEMPLATES + APLINFO_EXTRA:
        pkg = name.rsplit("_", 1)[0].rsplit("_", 1)[0]
        flavour = "standard" if "standard" in name else "default"
        out.append(
            {
                "template": name,
                "package": pkg,
                "version": ver,
                "type": "lxc",
                "os": os_,
                "section": "system",
                "headline": f"{os_.capitalize()} {ver.split('-')[0]} ({flavour})",
                "description": f"{os_.capitalize()} base system image",
                "location": f"http://download.proxmox.com/images/system/{name}",
                "infopage": "https://pve.proxmox.com/wiki/Linux_Container#pct_supported_distributions",
                "source": f"http://download.proxmox.com/images/system/{name}",
                "maintainer": "Proxmox Support Team <support@proxmox.com>",
                "architecture": "amd64",
                "sha512sum": (name.encode().hex() * 4)[:128],
                "manageurl": "https://pve.proxmox.com/",
            }
        )
    return out


@api("GET", "/nodes/{node}/aplinfo")
def aplinfo(ctx: Ctx) -> list[dict[str, Any]]:
    return _aplinfo_entries()


@api("POST", "/nodes/{node}/aplinfo")
def aplinfo_download(ctx: Ctx) -> str:
    sim = ctx.sim
    sid = str(ctx.p["storage"])
    tmpl = str(ctx.p["template"])
    if not ctx.is_root:
        ctx.check(f"/storage/{sid}", ["Datastore.AllocateTemplate"])
    known = {e["template"]: e for e in _aplinfo_entries()}
    if tmpl not in known:
        raise param_error({"template": "no such template"})
    st = sim.storages.get(sid)
    if st is None:
        raise die(f"storage '{sid}' does not exist")
    if "vztmpl" not in st.content:
        raise die(f"storage '{sid}' does not support templates")
    node = ctx.node
    size = next(s for n, _o, _v, s in TEMPLATES + APLINFO_EXTRA if n == tmpl)

    dest = f"{st.path or '/var/lib/vz'}/template/cache/{tmpl}"

    def work() -> list[str]:
        sim.add_volume(node, sid, Volume(f"{sid}:vztmpl/{tmpl}", "vztmpl", _fmt(tmpl), size, int(sim.now())))
        return [
            f"downloading {known[tmpl]['location']} to {dest}",
            f"{size // 1024}K .......... 100% done",
            f"download of '{known[tmpl]['location']}' to '{dest}' finished",
        ]

    return sim.new_task(node, "download", tmpl, ctx.auth, work=work)


def _fmt(name: str) -> str:
    m = re.search(r"\.tar\.(zst|gz|xz)$", name)
    return {"zst": "tzst", "gz": "tgz", "xz": "txz"}[m.group(1)] if m else "tgz"
