"""LXC handlers (pve-container API2/LXC.pm, LXC/Config.pm, LXC/Status.pm)."""

from __future__ import annotations

import base64
import re
from typing import Any

from pvesim.access import PermError
from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.handlers.storage import check_volume_access
from pvesim.schema import load_schema
from pvesim.state import Guest, Sim, TaskError, Volume, apply_pending, die, param_error
from pvesim.usage import guest_usage
from pvesim.validate import PropertyString, PropertyStringError

# keys applied at once on a running CT (LXC/Config.pm: fast-plug and hot-plug options)
FASTPLUG = {
    "description",
    "onboot",
    "startup",
    "protection",
    "hostname",
    "hookscript",
    "cores",
    "tags",
    "lock",
}
HOTPLUG_RX = re.compile(r"(cpulimit|cpuunits|memory|swap|net\d+)$")
REQUIRED = ("memory", "rootfs", "ostype")
READONLY = ("unprivileged",)
NON_CONFIG = {
    "node",
    "vmid",
    "digest",
    "delete",
    "revert",
    "ostemplate",
    "storage",
    "password",
    "ssh-public-keys",
    "start",
    "restore",
    "force",
    "unique",
    "pool",
    "ignore-unpack-errors",
    "bwlimit",
}


def _fmt(name: str) -> PropertyString:
    """Property-string format of an LXC option (`net[n]`, `rootfs`, `mp[n]`), from the schema."""
    cache = _FMT_CACHE.get(name)
    if cache is None:
        props = load_schema().methods[("POST", "/nodes/{node}/lxc")].parameters["properties"]
        cache = PropertyString(props[name]["format"])
        _FMT_CACHE[name] = cache
    return cache


_FMT_CACHE: dict[str, PropertyString] = {}


def normalize_tags(tags: str) -> str:
    """Lower-case, de-duplicate, sort, join with ';' (what PVE writes)."""
    return ";".join(sorted({t.lower() for t in split_list(tags)}))


def lock_error(g: Guest) -> str | None:
    lock = g.config.get("lock")
    if not lock:
        return None
    return f"{'CT' if g.type == 'lxc' else 'VM'} is locked ({lock})"


def check_bridge_access(ctx: Ctx, netvalue: str) -> None:
    """PVE 8: using a bridge needs SDN.Use on /sdn/zones/localnetwork/<bridge>[/<vlan tag>]."""
    if ctx.is_root:
        return
    m = re.search(r"(?:^|,)bridge=([^,]+)", netvalue)
    if not m:
        return
    base = f"/sdn/zones/localnetwork/{m.group(1)}"
    tag = re.search(r"(?:^|,)tag=(\d+)", netvalue)
    path = f"{base}/{tag.group(1)}" if tag else base
    if not ctx.can(path, "SDN.Use"):
        raise PermError(f"{path}, SDN.Use")


def check_features_change(
    ctx: Ctx, vmid: int, old: str | None, new: str | None, unprivileged: bool, delete: bool = False,
    pool: str | None = None,
) -> None:
    """pve-container src/PVE/LXC.pm check_ct_modify_config_perm, key `features` (create and update).

    Only the user `root@pam` itself is exempt (`Ctx.is_root`), so tokens of root@pam are refused too.
    Others may change `nesting` alone (with VM.Allocate), on an unprivileged container only.
    """
    if ctx.is_root:
        return
    if not unprivileged:
        raise PermError("changing feature flags for privileged container is only allowed for root@pam")
    fmt = _fmt("features")
    old_f = fmt.parse(old) if old else {}
    if delete:
        changed = set(old_f)
    elif old_f:
        new_f = fmt.parse(new or "")
        changed = {k for k in set(old_f) | set(new_f) if str(old_f.get(k, "")) != str(new_f.get(k, ""))}
    else:  # new container, or no features set yet: every key given counts
        changed = set(fmt.parse(new or ""))
    if changed - {"nesting"}:
        raise PermError("changing feature flags (except nesting) is only allowed for root@pam")
    if changed:
        ctx.check_vm_perm(vmid, pool, ["VM.Allocate"])


# pve-container src/PVE/LXC.pm $NEW_DISK_RE: `STORAGE:SIZE` asks for a new volume
NEW_DISK_RE = re.compile(r"([^:\s]+):(\d+(\.\d+)?)")


def check_ct_modify_config_perm(
    ctx: Ctx,
    vmid: int,
    pool: str | None,
    oldconf: dict[str, Any] | None,
    newconf: dict[str, Any],
    delete: list[str],
    unprivileged: bool,
) -> None:
    """pve-container src/PVE/LXC.pm check_ct_modify_config_perm: one privilege per option, checked key by
    key for create (with the pool) and update (new values, then deleted/reverted keys). root@pam itself
    is exempt; its tokens are not."""
    if ctx.is_root:
        return
    old = oldconf or {}

    def check(opt: str, is_delete: bool) -> None:
        if opt in ("cores", "cpuunits", "cpulimit"):
            ctx.check_vm_perm(vmid, pool, ["VM.Config.CPU"])
        elif opt == "rootfs" or re.fullmatch(r"mp\d+", opt):
            ctx.check_vm_perm(vmid, pool, ["VM.Config.Disk"])
            if is_delete:
                return
            volume = str(_fmt("rootfs" if opt == "rootfs" else "mp[n]").parse(str(newconf[opt])).get("volume", ""))
            if volume.startswith("/"):  # LXC/Config.pm classify_mountpoint
                kind = "device" if volume.startswith("/dev/") else "bind"
                raise PermError(f"mount point type {kind} is only allowed for root@pam")
            m = NEW_DISK_RE.fullmatch(volume)
            if m:
                ctx.check(f"/storage/{m.group(1)}", ["Datastore.AllocateSpace"])
            else:  # an existing volume -- or a bare size, which PVE reads as a path (root@pam only)
                check_volume_access(ctx, vmid, volume, "rootdir")
        elif opt in ("memory", "swap"):
            ctx.check_vm_perm(vmid, pool, ["VM.Config.Memory"])
        elif re.fullmatch(r"net\d+", opt):
            ctx.check_vm_perm(vmid, pool, ["VM.Config.Network"])
            if old.get(opt):
                check_bridge_access(ctx, str(old[opt]))
            if newconf.get(opt):
                check_bridge_access(ctx, str(newconf[opt]))
        elif re.fullmatch(r"dev\d+", opt):
            raise PermError("configuring device passthrough is only allowed for root@pam")
        elif opt in ("nameserver", "searchdomain", "hostname"):
            ctx.check_vm_perm(vmid, pool, ["VM.Config.Network"])
        elif opt == "features":
            new = None if is_delete else str(newconf[opt])
            check_features_change(ctx, vmid, old.get(opt), new, unprivileged, is_delete, pool)
        elif opt == "hookscript":
            raise PermError("changing the hookscript is only allowed for root@pam")
        elif opt == "tags":
            # pve-guest-common GuestHelpers.pm assert_tag_permissions: VM.Config.Options on the guest
            # (never the pool); per-tag rules only with a restricted datacenter `user-tag-access`
            ctx.check_vm_perm(vmid, None, ["VM.Config.Options"])
        else:
            ctx.check_vm_perm(vmid, pool, ["VM.Config.Options"])

    for opt in newconf:
        check(opt, False)
    for opt in delete:
        check(opt, True)


def _size_gib(text: str) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)", text)
    return float(m.group(1)) if m else None


def _fmt_size(gib: float) -> str:
    return f"{int(gib)}G" if float(gib).is_integer() else f"{int(gib * 1024)}M"


class _Alloc:
    """Disk allocations requested by a create/update: (config key, storage, size GiB, parsed dict)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, float, dict[str, Any]]] = []


def _plan_volume(sim: Sim, node: str, key: str, value: str, default_storage: str, alloc: _Alloc) -> str | None:
    """For rootfs/mpN: parse; a `STORAGE:SIZE` or bare size becomes an allocation. Returns normalised text."""
    fmtname = "rootfs" if key == "rootfs" else "mp[n]"
    try:
        parsed = _fmt(fmtname).parse(value)
    except PropertyStringError as e:
        raise param_error(
            {key: "invalid format - format error\n" + "\n".join(f"{key}.{k}: {m}" for k, m in e.errors.items())}
        ) from None
    vol = str(parsed.get("volume", ""))
    storage, size = None, None
    if ":" in vol:
        sid, rest = vol.split(":", 1)
        size = _size_gib(rest)
        if size is not None:
            storage = sid
    else:
        size = _size_gib(vol)
        if size is not None:
            storage = default_storage
    if storage is None or size is None:
        return _fmt(fmtname).print(parsed)
    st = sim.storages.get(storage)
    if st is None:
        raise die(f"storage '{storage}' does not exist")
    if not sim.storage_enabled_on(storage, node):
        raise die(f"storage '{storage}' is not available on node '{node}'")
    if "rootdir" not in st.content:
        raise param_error({"storage": f"storage '{storage}' does not support container directories"})
    alloc.items.append((key, storage, size, parsed))
    return None


def _do_alloc(sim: Sim, node: str, vmid: int, alloc: _Alloc, cfg: dict[str, Any]) -> list[str]:
    """Allocate planned volumes into cfg; return log lines."""
    lines: list[str] = []
    for key, storage, size, parsed in alloc.items:
        volid = sim.alloc_disk(node, storage, vmid, size)
        parsed = dict(parsed)
        parsed["volume"] = volid
        parsed["size"] = _fmt_size(size)
        cfg[key] = _fmt("rootfs" if key == "rootfs" else "mp[n]").print(parsed)
        name = volid.split(":", 1)[1]
        lines.append(f'  Logical volume "{name}" created.')
    return lines


def _detach_to_unused(g: Guest, mpvalue: str) -> None:
    """A removed volume mount point is not destroyed: its volume becomes the first free unusedN."""
    vol = mpvalue.split(",", 1)[0]
    if vol.startswith("volume="):
        vol = vol[7:]
    if ":" not in vol or vol.startswith("/"):
        return  # bind mounts and devices have no volume to keep
    n = 0
    while f"unused{n}" in g.config:
        n += 1
    g.config[f"unused{n}"] = vol


def _normalize_net(sim: Sim, key: str, value: str, old: str | None = None) -> str:
    try:
        parsed = _fmt("net[n]").parse(value)
    except PropertyStringError as e:
        raise param_error(
            {key: "invalid format - format error\n" + "\n".join(f"{key}.{k}: {m}" for k, m in e.errors.items())}
        ) from None
    if "hwaddr" not in parsed:
        if old:
            m = re.search(r"hwaddr=([0-9A-Fa-f:]{17})", old)
            parsed["hwaddr"] = m.group(1) if m else sim.mac()
        else:
            parsed["hwaddr"] = sim.mac()
    parsed.setdefault("type", "veth")
    return _fmt("net[n]").print(parsed)


def _volumes_of(g: Guest) -> list[str]:
    out: list[str] = []
    for k, v in g.config.items():
        if (
            k == "rootfs"
            or re.fullmatch(r"(mp|unused)\d+", k)
            or re.fullmatch(r"(scsi|virtio|sata|ide|efidisk|tpmstate)\d+", k)
        ):
            vol = str(v).split(",", 1)[0]
            if vol.startswith("volume="):
                vol = vol[7:]
            if ":" in vol and "media=cdrom" not in str(v):
                out.append(vol)
    return out


def _free_volumes(sim: Sim, node: str, vols: list[str]) -> None:
    for volid in vols:
        storage = volid.split(":", 1)[0]
        if storage in sim.storages:
            sim.storage_volumes(node, storage).pop(volid, None)
    sim.changed()


def _template_info(ostemplate: str) -> tuple[str, str]:
    name = ostemplate.rsplit("/", 1)[-1]
    arch = "amd64"
    for a in ("arm64", "armhf", "i386"):
        if f"_{a}" in name:
            arch = a
    ostype = "unmanaged"
    for os_ in (
        "debian",
        "ubuntu",
        "alpine",
        "centos",
        "fedora",
        "opensuse",
        "archlinux",
        "gentoo",
        "devuan",
        "nixos",
    ):
        if name.startswith(os_):
            ostype = os_
    if name.startswith(("rockylinux", "almalinux")):
        ostype = "centos"
    return arch, ostype


def guest_list_entry(sim: Sim, g: Guest) -> dict[str, Any]:
    d = sim.guest_status(g, with_ha=False)
    return d


@api("GET", "/nodes/{node}/lxc")
def list_lxc(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for g in ctx.sim.guests.values():
        if g.node == ctx.node and g.type == "lxc" and ctx.can(f"/vms/{g.vmid}", "VM.Audit"):
            out.append(guest_list_entry(ctx.sim, g))
    return out


@api("GET", "/nodes/{node}/lxc/{vmid}")
def lxc_index(ctx: Ctx) -> list[dict[str, Any]]:
    ctx.guest()
    return [
        {"subdir": s}
        for s in (
            "config",
            "pending",
            "status",
            "vncproxy",
            "termproxy",
            "vncwebsocket",
            "spiceproxy",
            "migrate",
            "clone",
            "snapshot",
            "firewall",
            "rrd",
            "rrddata",
            "feature",
            "resize",
            "move_volume",
            "interfaces",
            "mtunnel",
        )
    ]


@api("POST", "/nodes/{node}/lxc")
def create_lxc(ctx: Ctx) -> str:
    sim, p, node = ctx.sim, ctx.p, ctx.node
    vmid = int(p["vmid"])
    restore = bool(p.get("restore"))
    existing = sim.guests.get(vmid)
    # The checks in pve-container src/PVE/API2/LXC.pm create_vm's order (PVE 8, stable-bookworm): who
    # may create what first, then what the storages support. (PVE 9 adds Sys.Modify on / for
    # privileged containers and makes unprivileged the default; PVE 8 has neither.)
    unprivileged = p.get("unprivileged")
    if existing is not None and not (restore and p.get("force")):
        kind = "CT" if existing.type == "lxc" else "VM"
        raise die(f"{kind} {vmid} already exists on node '{existing.node}'")
    pool = p.get("pool")
    if pool is not None and pool not in sim.pools:
        raise PermError(f"pool '{pool}' does not exist")  # RPCEnvironment.pm check_pool_exist
    if ctx.can(f"/vms/{vmid}", "VM.Allocate") or (pool and ctx.can(f"/pool/{pool}", "VM.Allocate")):
        pass
    elif restore and p.get("force") and existing is not None and ctx.can(f"/vms/{vmid}", "VM.Backup"):
        if existing.config.get("unprivileged") and unprivileged is not None and not unprivileged:
            raise PermError("cannot change from unprivileged to privileged without VM.Allocate")
    else:
        raise PermError()
    ostemplate = str(p["ostemplate"])
    storage = str(p.get("storage", "local"))
    newconf = {k: v for k, v in p.items() if k not in NON_CONFIG and k != "unprivileged"}
    check_ct_modify_config_perm(ctx, vmid, pool, None, newconf, [], bool(unprivileged))
    check_volume_access(ctx, vmid, ostemplate, "backup" if restore else "vztmpl")
    tsid = ostemplate.split(":", 1)[0] if ":" in ostemplate else None
    if tsid is None:  # root@pam may name a path; pvesim has no files to read it from
        raise die(f"storage '{ostemplate}' does not exist")
    if any(re.fullmatch(r"mp\d+", k) for k in p) and "rootfs" not in p:
        raise die("mount points configured, but 'rootfs' not set - aborting")
    backup_cfg: dict[str, Any] = {}
    if restore:
        vol = sim.storage_volumes(node, tsid).get(ostemplate)
        if vol is None:
            raise die(f"volume '{ostemplate}' does not exist")
        backup_cfg = dict(vol.guest_config or {})
    alloc = _Alloc()
    cfg: dict[str, Any] = {}
    if restore:
        cfg.update(
            {
                k: v
                for k, v in backup_cfg.items()
                if k not in ("lock",) and not (k == "rootfs" or re.fullmatch(r"(mp|unused)\d+", k))
            }
        )
        if "rootfs" not in p:
            m = re.search(r"size=(\d+(?:\.\d+)?)G", str(backup_cfg.get("rootfs", "")))
            p = {**p, "rootfs": f"{storage}:{m.group(1) if m else 4}"}
    else:
        arch, ostype = _template_info(ostemplate)
        cfg.update({"arch": arch, "ostype": ostype, "hostname": f"CT{vmid}", "memory": 512, "swap": 512})
    rootfs = p.get("rootfs", f"{storage}:4")
    text = _plan_volume(sim, node, "rootfs", str(rootfs), storage, alloc)
    if text is not None:
        cfg["rootfs"] = text
    for k, v in p.items():
        if k in NON_CONFIG or k == "rootfs":
            continue
        if re.fullmatch(r"mp\d+", k):
            t = _plan_volume(sim, node, k, str(v), storage, alloc)
            if t is not None:
                cfg[k] = t
        elif re.fullmatch(r"net\d+", k):
            cfg[k] = _normalize_net(sim, k, str(v))
        elif k == "tags":
            cfg[k] = normalize_tags(str(v))
        elif k in ("unprivileged", "template", "protection", "onboot", "console") and not v:
            if k in ("unprivileged", "template"):
                continue
            cfg[k] = v
        else:
            cfg[k] = v
    for _key, sid, _size, _parsed in alloc.items:  # create_vm check_and_activate_storage
        ctx.check(f"/storage/{sid}", ["Datastore.AllocateSpace"])
    # create_vm checks the bridges of the backed-up networks the caller keeps, in the task
    kept_nets = [str(v) for k, v in backup_cfg.items() if re.fullmatch(r"net\d+", k) and k not in p]
    cfg["lock"] = "create"
    g = Guest(vmid, "lxc", node, cfg, created_at=sim.now())
    if existing is not None:
        _free_volumes(sim, existing.node, _volumes_of(existing))
    sim.guests[vmid] = g
    sim.changed()
    start = bool(p.get("start"))

    def work() -> list[str]:
        if not restore and ostemplate not in sim.storage_volumes(node, tsid):
            raise TaskError(f"volume '{ostemplate}' does not exist")
        if restore:
            for net in kept_nets:
                try:
                    check_bridge_access(ctx, net)
                except PermError as e:
                    raise TaskError(str(e)) from None
        lines = _do_alloc(sim, node, vmid, alloc, g.config)
        src = ostemplate.split("/", 1)[-1]
        path = f"/var/lib/vz/template/cache/{src}" if not restore else f"/var/lib/vz/dump/{src}"
        lines += [
            f"extracting archive '{path}'" if not restore else f"restoring '{ostemplate}' now..",
            "Total bytes read: 521902080 (498MiB, 212MiB/s)",
            f"Detected container architecture: {g.config.get('arch', 'amd64')}",
        ]
        if not restore:
            lines += [
                "Creating SSH host key 'ssh_host_rsa_key' - this may take some time ...",
                "done: SHA256:3mX8f6yk0rXx0X4l7Xo1g0Qx9QqGk5C1XfQx2yBv2ag root@" + str(g.config.get("hostname")),
            ]
        g.config.pop("lock", None)
        g.touch()
        if pool is not None:
            sim.pools[pool].setdefault("vms", set()).add(vmid)
            sim.access.pool_of[vmid] = pool
            sim.access.changed()
        if start:
            sim.set_running(g, True)
        sim.changed()
        return lines

    def on_error(msg: str) -> str:
        _free_volumes(sim, node, _volumes_of(g))
        if sim.guests.get(vmid) is g:
            del sim.guests[vmid]
        sim.changed()
        return f"unable to create CT {vmid} - {msg}"

    return sim.new_task(node, "vzrestore" if restore else "vzcreate", str(vmid), ctx.auth, work=work, on_error=on_error)


@api("GET", "/nodes/{node}/lxc/{vmid}/config")
def get_config(ctx: Ctx) -> dict[str, Any]:
    g = ctx.guest()
    if ctx.p.get("snapshot"):
        if ctx.p.get("current"):
            raise param_error(
                {
                    "snapshot": "cannot use 'snapshot' parameter with 'current'",
                    "current": "cannot use 'snapshot' parameter with 'current'",
                }
            )
        snap = g.snapshots.get(str(ctx.p["snapshot"]))
        if snap is None:
            raise die(f"snapshot '{ctx.p['snapshot']}' does not exist")
        return {**snap, "digest": g.digest}
    return g.config_view(bool(ctx.p.get("current")))


def file_value(key: str, value: Any) -> Any:
    """A config value as pve-container reads it back from the file (src/PVE/LXC/Config.pm
    parse_pct_config -> check_type): integers and booleans become Perl numbers (`int($1)`, `1`/`0`,
    so JSON numbers), numbers and strings stay the file's text (JSON strings)."""
    props = load_schema().methods[("PUT", "/nodes/{node}/lxc/{vmid}/config")].parameters.get("properties") or {}
    typ = (props.get(key) or props.get(re.sub(r"\d+$", "[n]", key)) or {}).get("type")
    if typ in ("integer", "boolean") and not isinstance(value, str | float):
        return int(value)
    if typ in ("integer", "boolean") and re.fullmatch(r"\d+", str(value)):
        return int(str(value))
    return str(value)


@api("GET", "/nodes/{node}/lxc/{vmid}/pending")
def get_pending(ctx: Ctx) -> list[dict[str, Any]]:
    """pve-container src/PVE/API2/LXC.pm vm_pending -> pve-guest-common GuestHelpers.pm
    config_with_pending_array: one row per key of the parsed config (`digest` included), with the
    values as parsed from the file (`file_value`), plus pending-only keys and pending deletes."""
    g = ctx.guest()
    keys = sorted(set(g.config) | set(g.pending) | set(g.pending_delete))
    out: list[dict[str, Any]] = [{"key": "digest", "value": g.digest}]
    for k in keys:
        e: dict[str, Any] = {"key": k}
        if k in g.config:
            e["value"] = file_value(k, g.config[k])
        if k in g.pending:
            e["pending"] = file_value(k, g.pending[k])
        if k in g.pending_delete:
            e["delete"] = 1
        out.append(e)
    return out


@api("PUT", "/nodes/{node}/lxc/{vmid}/config")
def put_config(ctx: Ctx) -> None:
    sim, p = ctx.sim, ctx.p
    g = ctx.guest()
    changes = {k: v for k, v in p.items() if k not in ("node", "vmid", "digest", "delete", "revert")}
    delete = split_list(str(p.get("delete", "")))
    revert = split_list(str(p.get("revert", "")))
    if not changes and not delete and not revert:
        raise die("no options specified")
    # pve-container src/PVE/API2/LXC/Config.pm update_vm's order: lock, digest, the privileges for the
    # deleted and reverted keys, the option checks of those, then the privileges for the new values
    err = lock_error(g)
    if err:
        raise die(err)
    if p.get("digest") and str(p["digest"]) != g.digest:
        raise die("detected modified configuration - file changed by other user? Try again.")
    unpriv = bool(g.config.get("unprivileged"))
    check_ct_modify_config_perm(ctx, g.vmid, None, g.config, {}, delete, unpriv)
    check_ct_modify_config_perm(ctx, g.vmid, None, g.config, {}, revert, unpriv)
    validator = sim_validator()
    for opt in delete + revert:
        if opt in NON_CONFIG or validator.checker_for(opt) is None:
            raise param_error({"delete" if opt in delete else "revert": f"unknown option '{opt}'"})
        if opt in changes:
            raise die(f"you can't use '-{opt}' and -delete {opt}' at the same time")
    check_ct_modify_config_perm(ctx, g.vmid, None, g.config, changes, [], unpriv)
    for opt in delete:
        if opt in READONLY:
            raise die(f"unable to delete read-only option: '{opt}'")
        if opt in REQUIRED:
            raise die(f"unable to delete required option '{opt}'")
    for opt in changes:
        if opt in READONLY:
            raise die(f"unable to modify read-only option: '{opt}'")
    running = g.status == "running"
    alloc = _Alloc()
    normalized: dict[str, Any] = {}
    for k, v in changes.items():
        if re.fullmatch(r"net\d+", k):
            normalized[k] = _normalize_net(sim, k, str(v), str(g.config.get(k, "")) or None)
        elif k == "rootfs" or re.fullmatch(r"mp\d+", k):
            t = _plan_volume(sim, g.node, k, str(v), "local", alloc)
            if t is not None:
                normalized[k] = t
        elif k == "tags":
            normalized[k] = normalize_tags(str(v))
        else:
            normalized[k] = v
    for k in revert:
        g.pending.pop(k, None)
        if k in g.pending_delete:
            g.pending_delete.remove(k)
    new_cfg: dict[str, Any] = {}
    if alloc.items:
        _do_alloc(sim, g.node, g.vmid, alloc, new_cfg)
    normalized.update(new_cfg)
    for k in delete:
        if not running or k in FASTPLUG or HOTPLUG_RX.match(k) or re.fullmatch(r"unused\d+", k):
            if re.fullmatch(r"unused\d+", k) and k in g.config:
                vol = str(g.config[k]).split(",", 1)[0]
                _free_volumes(sim, g.node, [vol])
            elif re.fullmatch(r"mp\d+", k) and k in g.config:
                _detach_to_unused(g, str(g.config[k]))
            g.config.pop(k, None)
            g.pending.pop(k, None)
        elif k in g.config and k not in g.pending_delete:
            g.pending_delete.append(k)
    for k, v in normalized.items():
        hot = k in FASTPLUG or bool(HOTPLUG_RX.match(k)) or (re.fullmatch(r"mp\d+", k) and k not in g.config)
        if not running or hot:
            g.config[k] = v
            g.pending.pop(k, None)
            if k in g.pending_delete:
                g.pending_delete.remove(k)
        else:
            g.pending[k] = v
    g.touch()
    sim.changed()
    return None


_VALIDATOR: Any = None


def sim_validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        from pvesim.validate import MethodValidator

        _VALIDATOR = MethodValidator(load_schema().methods[("PUT", "/nodes/{node}/lxc/{vmid}/config")].parameters)
    return _VALIDATOR


@api("GET", "/nodes/{node}/lxc/{vmid}/status")
def status_index(ctx: Ctx) -> list[dict[str, Any]]:
    ctx.guest()
    return [{"subdir": s} for s in ("current", "start", "stop", "shutdown", "reboot", "suspend", "resume")]


@api("GET", "/nodes/{node}/lxc/{vmid}/status/current")
def status_current(ctx: Ctx) -> dict[str, Any]:
    return ctx.sim.guest_status(ctx.guest())


def _ha_sid(g: Guest) -> str:
    return f"{'ct' if g.type == 'lxc' else 'vm'}:{g.vmid}"


def power(ctx: Ctx, g: Guest, action: str) -> str:
    """start/stop/shutdown/reboot/suspend/resume for CTs and VMs."""
    sim = ctx.sim
    ct = g.type == "lxc"
    prefix = "vz" if ct else "qm"
    running = g.status == "running"
    if action == "start" and running:
        raise die(f"{'CT' if ct else 'VM'} {g.vmid} already running")
    if action in ("stop", "shutdown", "suspend") and not running:
        raise die(f"{'CT' if ct else 'VM'} {g.vmid} not running")
    if action == "reboot" and not running:
        raise die(f"VM {g.vmid} not running")
    if ctx.p.get("skiplock") and not ctx.is_root:  # pve-container API2/LXC/Status.pm: `$authuser ne 'root@pam'`
        raise param_error({"skiplock": "Only root may use this option."})
    ha = sim.ha_resources.get(_ha_sid(g))
    if ha is not None and action in ("start", "stop"):
        ttype = f"ha{action}"

        def ha_work() -> list[str]:
            ha["state"] = "started" if action == "start" else "stopped"
            sim.set_running(g, action == "start")
            return [f"Requesting HA {action} for {'CT' if ct else 'VM'} {g.vmid}"]

        return sim.new_task(ctx.node, ttype, str(g.vmid), ctx.auth, work=ha_work)
    error = None
    if not ctx.p.get("skiplock"):
        error = lock_error(g)
    if action == "start" and g.config.get("template") and error is None:
        error = "you can't start a CT if it's a template" if ct else "you can't start a vm if it's a template"

    def work() -> list[str] | None:
        if action == "start":
            sim.set_running(g, True)
        elif action in ("stop", "shutdown"):
            sim.set_running(g, False)
        elif action == "reboot":
            apply_pending(g)
            sim.set_running(g, True)
        elif action == "suspend":
            g.status = "stopped"
            g.override["suspended"] = True
            g.touch()
        elif action == "resume":
            sim.set_running(g, True)
        return None

    ttype = {
        "start": "start",
        "stop": "stop",
        "shutdown": "shutdown",
        "reboot": "reboot",
        "suspend": "suspend",
        "resume": "resume",
    }[action]
    return sim.new_task(ctx.node, prefix + ttype, str(g.vmid), ctx.auth, work=work, error=error)


for _action in ("start", "stop", "shutdown", "reboot", "suspend", "resume"):

    def _mk(action: str) -> Any:
        def handler(ctx: Ctx) -> str:
            return power(ctx, ctx.guest(), action)

        handler.__name__ = f"lxc_{action}"
        return handler

    api("POST", f"/nodes/{{node}}/lxc/{{vmid}}/status/{_action}")(_mk(_action))


def destroy(ctx: Ctx, g: Guest) -> str:
    sim = ctx.sim
    ct = g.type == "lxc"
    kind = "CT" if ct else "VM"
    if g.config.get("protection"):
        raise die(f"can't remove {kind} {g.vmid} - protection mode enabled")
    err = lock_error(g)
    if err and not ctx.p.get("skiplock"):
        raise die(err)
    sid = _ha_sid(g)
    purge = bool(ctx.p.get("purge"))
    if sid in sim.ha_resources and not purge:
        raise die(f"unable to remove {kind} {g.vmid} - used in HA resources and purge parameter not set.")
    if g.status == "running" and not ctx.p.get("force"):
        raise die(
            f"unable to destroy {kind} {g.vmid} - container is running"
            if ct
            else f"VM {g.vmid} is running - destroy failed"
        )
    g.config["lock"] = "destroyed"
    g.touch()

    def work() -> list[str]:
        lines = []
        vols = _volumes_of(g)
        if ctx.p.get("destroy-unreferenced-disks"):
            for (_n, _s), vs in sim.volumes.items():
                vols += [v for v, vol in vs.items() if vol.vmid == g.vmid and vol.content in ("images", "rootdir")]
        for v in vols:
            lines.append(f'  Logical volume "{v.split(":", 1)[1]}" successfully removed.')
        _free_volumes(sim, g.node, vols)
        sim.fw_guest.pop(g.vmid, None)
        sim.access.acl = [e for e in sim.access.acl if e.path != f"/vms/{g.vmid}"]
        # like PVE's remove_vm_access: ACLs and pool membership always go
        for pool in sim.pools.values():
            pool.get("vms", set()).discard(g.vmid)
        sim.access.pool_of.pop(g.vmid, None)
        if purge:
            for job in sim.backup_jobs.values():
                if job.get("vmid"):
                    ids = [x for x in split_list(str(job["vmid"])) if x != str(g.vmid)]
                    if ids:
                        job["vmid"] = ",".join(ids)
                    else:
                        job.pop("vmid")
            sim.ha_resources.pop(sid, None)
        sim.access.changed()
        sim.guests.pop(g.vmid, None)
        sim.guest_packages.pop(g.vmid, None)
        sim.guest_files.pop(g.vmid, None)
        sim.changed()
        return lines

    return sim.new_task(ctx.node, "vzdestroy" if ct else "qmdestroy", str(g.vmid), ctx.auth, work=work)


@api("DELETE", "/nodes/{node}/lxc/{vmid}")
def delete_lxc(ctx: Ctx) -> str:
    return destroy(ctx, ctx.guest())


def migrate(ctx: Ctx, g: Guest) -> str:
    sim = ctx.sim
    target = str(ctx.p["target"])
    ct = g.type == "lxc"
    if target == g.node:
        raise param_error({"target": "target is local node."})
    tn = sim.nodes.get(target)
    if tn is None:
        raise die(f"no such cluster node '{target}'")
    if not tn.online:
        raise die(f"target node '{target}' is not online")
    running = g.status == "running"
    if ct and running and not (ctx.p.get("online") or ctx.p.get("restart")):
        raise die("can't migrate running container without --online or --restart")
    ha = sim.ha_resources.get(_ha_sid(g))
    src = g.node
    ttype = "hamigrate" if ha else ("vzmigrate" if ct else "qmigrate")
    # pve-container LXC/Migrate.pm prepare() runs inside the worker: a lock, or --online on a running
    # CT, aborts the task (AbstractMigrate: "migration aborted (duration ...): <why>"), not the request
    abort = lock_error(g)
    if abort is None and ct and running and ctx.p.get("online"):
        abort = "lxc live migration is currently not implemented"
    if abort is not None:
        return sim.new_task(src, ttype, str(g.vmid), ctx.auth, error="migration aborted",
                            log=[f"ERROR: migration aborted (duration 00:00:00): {abort}"])
    tstorage = ctx.p.get("target-storage")
    g.config["lock"] = "migrate"
    g.touch()
    sim.changed()

    def work() -> list[str]:
        lines = [f"starting migration of {'CT' if ct else 'VM'} {g.vmid} to node '{target}' ({tn.ip})"]
        if running and ct:
            sim.set_running(g, False)
            lines.append(f"shutdown CT {g.vmid}")
        for key in list(g.config):
            val = str(g.config[key])
            vol = val.split(",", 1)[0]
            if ":" not in vol or not (key == "rootfs" or re.fullmatch(r"(mp|unused|scsi|virtio|sata|ide)\d+", key)):
                continue
            sid = vol.split(":", 1)[0]
            st = sim.storages.get(sid)
            if st is None or st.shared:
                continue
            old = sim.storage_volumes(src, sid).pop(vol, None)
            dsid = str(tstorage) if tstorage else sid
            if dsid not in sim.storages:
                dsid = sid
            newvol = vol if dsid == sid else f"{dsid}:{vol.split(':', 1)[1]}"
            if old is not None:
                old.volid = newvol
                sim.add_volume(target, dsid, old)
            g.config[key] = val.replace(vol, newvol, 1)
            lines.append(f"volume '{vol}' is '{newvol}' on the target")
        g.node = target
        g.config.pop("lock", None)
        if running and (ctx.p.get("restart") or not ct):
            sim.set_running(g, True)
            lines.append(f"start final cleanup / restart {'CT' if ct else 'VM'} {g.vmid} on '{target}'")
        g.touch()
        sim.changed()
        lines.append("migration finished successfully (duration 00:00:02)")
        return lines

    def on_error(msg: str) -> str:
        g.config.pop("lock", None)
        g.touch()
        return msg

    return sim.new_task(src, ttype, str(g.vmid), ctx.auth, work=work, on_error=on_error)


@api("POST", "/nodes/{node}/lxc/{vmid}/migrate")
def migrate_lxc(ctx: Ctx) -> str:
    return migrate(ctx, ctx.guest())


RRD_STEPS = {"hour": 60, "day": 1800, "week": 10800, "month": 43200, "year": 604800}


def rrddata(ctx: Ctx, g: Guest) -> list[dict[str, Any]]:
    """70 rows at the timeframe's resolution; usage from the same model as status (rates for counters)."""
    sim = ctx.sim
    step = RRD_STEPS[str(ctx.p["timeframe"])]
    now = int(sim.now())
    end = now // step * step
    node = sim.nodes.get(g.node)
    cpus = g.cpus(node.maxcpu if node else 1)
    rows = []
    for i in range(70):
        t = end - (69 - i) * step
        row: dict[str, Any] = {"time": t}
        if g.status == "running" and g.started_at <= t:
            u = guest_usage(sim.seed, g.vmid, g.maxmem(), g.maxdisk(), cpus, t, g.started_at)
            prev = guest_usage(
                sim.seed, g.vmid, g.maxmem(), g.maxdisk(), cpus, max(g.started_at, t - step), g.started_at
            )
            dt = max(1, t - max(g.started_at, t - step))
            row.update(
                {
                    "maxcpu": cpus,
                    "cpu": u["cpu"],
                    "maxmem": g.maxmem(),
                    "mem": u["mem"],
                    "maxdisk": g.maxdisk(),
                    "disk": u["disk"],
                }
            )
            for k in ("netin", "netout", "diskread", "diskwrite"):
                row[k] = round(max(0, int(u[k]) - int(prev[k])) / dt, 3)
        rows.append(row)
    return rows


@api("GET", "/nodes/{node}/lxc/{vmid}/rrddata")
def lxc_rrddata(ctx: Ctx) -> list[dict[str, Any]]:
    return rrddata(ctx, ctx.guest())


# Snapshots follow pve-container's API2/LXC/Snapshot.pm and pve-guest-common's AbstractConfig.pm:
# the snapshot takes the config as it is (without lock, digest, description, unused volumes), the
# guest's `parent` names the snapshot it was taken or rolled back to, a rollback stops the guest and
# applies the snapshot's config (keeping the description), a delete relinks the parents. Each runs as a
# task under the guest's lock (snapshot, rollback, snapshot-delete). The simulated disk contents (the
# per-guest package list and files the fake pct acts on) are part of a snapshot and come back with it.

_NOT_IN_SNAPSHOT = ("snapshots", "snapstate", "snaptime", "vmstate", "lock", "digest", "description")
_DISK = ("_disk_packages", "_disk_files")


def _copy_config(source: dict[str, Any]) -> dict[str, Any]:
    """AbstractConfig __snapshot_copy_config."""
    return {k: v for k, v in source.items()
            if k not in _NOT_IN_SNAPSHOT and not re.fullmatch(r"unused\d+", k) and k not in _DISK}


@api("GET", "/nodes/{node}/lxc/{vmid}/snapshot")
def list_snapshots(ctx: Ctx) -> list[dict[str, Any]]:
    g = ctx.guest()
    out: list[dict[str, Any]] = []
    for n, s in g.snapshots.items():
        item: dict[str, Any] = {"name": n, "snaptime": s.get("snaptime") or 0,
                                "description": s.get("description") or ""}
        if s.get("parent") is not None:
            item["parent"] = s["parent"]
        if s.get("snapstate"):
            item["snapstate"] = s["snapstate"]
        out.append(item)
    # the schema (PVE 8.4) requires a description on every entry: current says "You are here!"
    current: dict[str, Any] = {"name": "current", "description": "You are here!", "digest": g.digest,
                               "running": int(g.status == "running")}
    if g.config.get("parent") is not None:
        current["parent"] = g.config["parent"]
    out.append(current)
    return out


@api("POST", "/nodes/{node}/lxc/{vmid}/snapshot")
def create_snapshot(ctx: Ctx) -> str:
    sim = ctx.sim
    g = ctx.guest()
    name = str(ctx.p["snapname"])
    if name in ("current", "vzdump"):
        raise die(f"unable to use snapshot name '{name}' (reserved name)")
    # the rest is checked inside the worker (__snapshot_prepare): a refusal is a failed task
    refusal = ("you can't take a snapshot if it's a template" if g.config.get("template") else
               lock_error(g) or (f"snapshot name '{name}' already used" if name in g.snapshots else None))
    if refusal:
        return sim.new_task(ctx.node, "vzsnapshot", str(g.vmid), ctx.auth, error=refusal, seconds=0)
    g.config["lock"] = "snapshot"
    g.touch()

    def work() -> None:
        for other in g.snapshots.values():  # "deleting parent reference ... to avoid bogus snapshot cycle"
            if other.get("parent") == name:
                other.pop("parent", None)
        snap = _copy_config(g.config)
        snap["snaptime"] = int(sim.now())
        if ctx.p.get("description"):
            snap["description"] = ctx.p["description"]
        snap["_disk_packages"] = dict(sim.guest_packages.get(g.vmid, {}))
        snap["_disk_files"] = {k: base64.b64encode(v).decode() for k, v in sim.guest_files.get(g.vmid, {}).items()}
        g.snapshots[name] = snap
        g.config.pop("lock", None)
        g.config["parent"] = name
        g.touch()
        sim.changed()

    def on_error(msg: str) -> str:
        g.config.pop("lock", None)
        g.touch()
        return msg

    return sim.new_task(ctx.node, "vzsnapshot", str(g.vmid), ctx.auth, work=work, on_error=on_error)


@api("GET", "/nodes/{node}/lxc/{vmid}/interfaces")
def interfaces(ctx: Ctx) -> list[dict[str, Any]]:
    g = ctx.guest()
    if g.status != "running":
        raise die(f"CT {g.vmid} not running")
    out: list[dict[str, Any]] = [
        {
            "name": "lo",
            "hwaddr": "00:00:00:00:00:00",
            "hardware-address": "00:00:00:00:00:00",
            "inet": "127.0.0.1/8",
            "inet6": "::1/128",
            "ip-addresses": [
                {"ip-address": "127.0.0.1", "ip-address-type": "inet", "prefix": 8},
                {"ip-address": "::1", "ip-address-type": "inet6", "prefix": 128},
            ],
        }
    ]
    for k in sorted(g.config):
        if not re.fullmatch(r"net\d+", k):
            continue
        parsed = _fmt("net[n]").parse(str(g.config[k]))
        mac = str(parsed.get("hwaddr", "00:00:00:00:00:00"))
        ip = str(parsed.get("ip", "dhcp"))
        idx = int(k[3:])
        inet = ip if "/" in ip else f"10.{(g.vmid >> 8) & 255}.{g.vmid & 255}.{10 + idx}/24"
        e: dict[str, Any] = {
            "name": str(parsed.get("name", f"eth{idx}")),
            "hwaddr": mac.lower(),
            "hardware-address": mac.lower(),
            "inet": inet,
            "ip-addresses": [
                {"ip-address": inet.split("/")[0], "ip-address-type": "inet", "prefix": int(inet.split("/")[1])}
            ],
        }
        out.append(e)
    return out


@api("POST", "/nodes/{node}/lxc/{vmid}/template")
def make_template(ctx: Ctx) -> None:
    g = ctx.guest()
    err = lock_error(g)
    if err:
        raise die(err)
    if g.config.get("template"):
        raise die("CT is already a template")
    if g.status == "running":
        raise die("not possible to convert a running CT to a template")
    for key in list(g.config):
        if key == "rootfs" or re.fullmatch(r"mp\d+", key):
            val = str(g.config[key])
            vol = val.split(",", 1)[0]
            if "-disk-" in vol:
                new = vol.replace(f"vm-{g.vmid}-disk-", f"base-{g.vmid}-disk-")
                for (_n, _s), vols in ctx.sim.volumes.items():
                    if vol in vols:
                        v = vols.pop(vol)
                        v.volid = new
                        vols[new] = v
                g.config[key] = val.replace(vol, new, 1)
    g.config["template"] = 1
    g.touch()
    ctx.sim.changed()
    return None


@api("PUT", "/nodes/{node}/lxc/{vmid}/resize")
def resize(ctx: Ctx) -> str:
    sim = ctx.sim
    g = ctx.guest()
    disk = str(ctx.p["disk"])
    err = lock_error(g)
    if err:
        raise die(err)
    if ctx.p.get("digest") and str(ctx.p["digest"]) != g.digest:
        raise die("detected modified configuration - file changed by other user? Try again.")
    if disk not in g.config:
        raise die(f"disk '{disk}' does not exist")
    m = re.fullmatch(r"(\+?)(\d+(?:\.\d+)?)([KMGT]?)", str(ctx.p["size"]))
    if not m:
        raise param_error({"size": "invalid format - unable to parse size"})
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    mult = units[m.group(3)]
    fmt = _fmt("rootfs" if disk == "rootfs" else "mp[n]")

    def current() -> int:
        sm = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", str(fmt.parse(str(g.config[disk])).get("size", "4G")))
        return int(float(sm.group(1)) * units[sm.group(2)]) if sm else 0

    parsed = fmt.parse(str(g.config[disk]))
    cur = current()
    want = int(float(m.group(2)) * mult + (cur if m.group(1) else 0))
    # pve-container src/PVE/API2/LXC.pm resize_vm $load_and_check: in bytes, before forking the task
    # and again inside it (under the config lock), so a resize to the size a disk has is refused.
    if want < cur:
        raise die("unable to shrink disk size")
    if want == cur:
        raise die("disk is already at specified size")

    def work() -> list[str]:
        if want == current():  # another resize to the same size finished first
            raise TaskError("disk is already at specified size")
        gib = want / 1024**3
        parsed["size"] = _fmt_size(gib)
        g.config[disk] = _fmt("rootfs" if disk == "rootfs" else "mp[n]").print(parsed)
        vol = str(parsed.get("volume", ""))
        for (_n, _s), vols in sim.volumes.items():
            if vol in vols:
                vols[vol].size = int(want)
        g.touch()
        sim.changed()
        return [
            f"  Size of logical volume pve/{vol.split(':', 1)[-1]} changed to {gib:.2f} GiB.",
            f"  Logical volume pve/{vol.split(':', 1)[-1]} successfully resized.",
        ]

    return sim.new_task(ctx.node, "resize", str(g.vmid), ctx.auth, work=work, seconds=0.5)


@api("POST", "/nodes/{node}/lxc/{vmid}/clone")
def clone(ctx: Ctx) -> str:
    sim, p = ctx.sim, ctx.p
    g = ctx.guest()
    newid = int(p["newid"])
    if newid in sim.guests:
        other = sim.guests[newid]
        raise die(f"{'CT' if other.type == 'lxc' else 'VM'} {newid} already exists on node '{other.node}'")
    # VM.Clone and VM.Allocate on /vms/{newid} or the pool: the schema's check (already done)
    if p.get("pool") is not None and p["pool"] not in sim.pools:
        raise PermError(f"pool '{p['pool']}' does not exist")  # RPCEnvironment.pm check_pool_exist
    full = bool(p.get("full", not g.config.get("template")))
    if not full and not g.config.get("template"):
        raise die("linked clone feature for 'rootfs' is not available")
    target = str(p.get("target", ctx.node))
    if target not in sim.nodes:
        raise die(f"no such cluster node '{target}'")
    err = lock_error(g)
    if err:
        raise die(err)
    for key, value in g.config.items():  # pve-container API2/LXC.pm clone_vm: every volume's target storage
        if key == "rootfs" or re.fullmatch(r"mp\d+", key):
            vol = str(_fmt("rootfs" if key == "rootfs" else "mp[n]").parse(str(value)).get("volume", ""))
            if ":" in vol and not vol.startswith("/"):
                ctx.check(f"/storage/{p.get('storage') or vol.split(':', 1)[0]}", ["Datastore.AllocateSpace"])
    cfg = {k: v for k, v in g.config.items() if k not in ("lock", "template")}
    cfg["hostname"] = p.get("hostname", g.config.get("hostname", f"{g.name}-clone"))
    if p.get("description"):
        cfg["description"] = p["description"]
    for k in list(cfg):
        if re.fullmatch(r"net\d+", k):
            cfg[k] = re.sub(r"hwaddr=[0-9A-Fa-f:]{17}", f"hwaddr={sim.mac()}", str(cfg[k]))
    cfg["lock"] = "create"
    new = Guest(newid, "lxc", target, cfg, created_at=sim.now())
    sim.guests[newid] = new
    g.config["lock"] = "disk"
    g.touch()
    sim.changed()
    storage = p.get("storage")

    def work() -> list[str]:
        lines = []
        for key in list(new.config):
            if key != "rootfs" and not re.fullmatch(r"mp\d+", key):
                continue
            parsed = _fmt("rootfs" if key == "rootfs" else "mp[n]").parse(str(new.config[key]))
            vol = str(parsed.get("volume", ""))
            sid = str(storage or vol.split(":", 1)[0])
            if sid not in sim.storages:
                continue
            sm = re.fullmatch(r"(\d+(?:\.\d+)?)G", str(parsed.get("size", "4G")))
            size = float(sm.group(1)) if sm else 4.0
            if full:
                newvol = sim.alloc_disk(target, sid, newid, size)
            else:
                newvol = f"{sid}:{vol.split(':', 1)[1]}/vm-{newid}-disk-0"
                sim.add_volume(
                    target, sid, Volume(newvol, "rootdir", "raw", int(size * 1024**3), int(sim.now()), newid)
                )
            parsed["volume"] = newvol
            new.config[key] = _fmt("rootfs" if key == "rootfs" else "mp[n]").print(parsed)
            lines.append(f"create {'full' if full else 'linked'} clone of {key} ({vol})")
        new.config.pop("lock", None)
        g.config.pop("lock", None)
        new.touch()
        g.touch()
        if p.get("pool") and p["pool"] in sim.pools:
            sim.pools[p["pool"]].setdefault("vms", set()).add(newid)
            sim.access.pool_of[newid] = str(p["pool"])
            sim.access.changed()
        sim.changed()
        return lines

    def on_error(msg: str) -> str:
        sim.guests.pop(newid, None)
        g.config.pop("lock", None)
        g.touch()
        sim.changed()
        return f"clone failed: {msg}"

    return sim.new_task(ctx.node, "vzclone", str(g.vmid), ctx.auth, work=work, on_error=on_error)


def _snapshot(ctx: Ctx) -> tuple[Guest, str, dict[str, Any]]:
    g = ctx.guest()
    name = str(ctx.p["snapname"])
    snap = g.snapshots.get(name)
    if snap is None:
        raise die(f"snapshot '{name}' does not exist")
    return g, name, snap


def _refused(ctx: Ctx, ttype: str) -> tuple[Guest, str, dict[str, Any]] | str:
    """A delete or rollback worker's first checks (snapshot exists, no lock): a failed task when refused."""
    g = ctx.guest()
    name = str(ctx.p["snapname"])
    snap = g.snapshots.get(name)
    refusal = f"snapshot '{name}' does not exist" if snap is None else lock_error(g)
    if ttype == "vzrollback" and not refusal and g.config.get("template"):
        refusal = "you can't rollback if vm is a template"
    if refusal or snap is None:
        return ctx.sim.new_task(ctx.node, ttype, str(g.vmid), ctx.auth, error=refusal, seconds=0)
    return g, name, snap


@api("GET", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/config")
def snapshot_config(ctx: Ctx) -> dict[str, Any]:
    _g, _name, snap = _snapshot(ctx)
    return {k: v for k, v in snap.items() if k not in _DISK}


@api("PUT", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/config")
def snapshot_update(ctx: Ctx) -> None:
    g, _name, snap = _snapshot(ctx)
    if "description" not in ctx.p:
        return None
    err = lock_error(g)
    if err:
        raise die(err)
    snap["description"] = ctx.p["description"]
    g.touch()
    return None


@api("DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}")
def snapshot_delete(ctx: Ctx) -> str:
    sim = ctx.sim
    # set_lock('snapshot-delete') dies on any lock; `force` only forgives failed volume snapshot deletes
    found = _refused(ctx, "vzdelsnapshot")
    if isinstance(found, str):
        return found
    g, name, _snap = found
    g.config["lock"] = "snapshot-delete"
    g.touch()

    def work() -> None:
        snap = g.snapshots.get(name)
        if snap is not None:
            snap["snapstate"] = "delete"
            new_parent = snap.get("parent")
            for holder in [g.config, *(s for n, s in g.snapshots.items() if n != name)]:
                if holder.get("parent") == name:
                    if new_parent:
                        holder["parent"] = new_parent
                    else:
                        holder.pop("parent", None)
            g.snapshots.pop(name, None)
        g.config.pop("lock", None)
        g.touch()
        sim.changed()

    def on_error(msg: str) -> str:
        g.config.pop("lock", None)
        g.touch()
        return msg

    return sim.new_task(ctx.node, "vzdelsnapshot", str(g.vmid), ctx.auth, work=work, on_error=on_error)


@api("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback")
def snapshot_rollback(ctx: Ctx) -> str:
    sim = ctx.sim
    found = _refused(ctx, "vzrollback")
    if isinstance(found, str):
        return found
    g, name, snap = found
    g.config["lock"] = "rollback"
    g.touch()
    start = bool(ctx.p.get("start"))

    def work() -> list[str]:
        if snap.get("snapstate"):
            raise TaskError(f"unable to rollback to incomplete snapshot (snapstate = {snap['snapstate']})")
        if g.status == "running":
            sim.set_running(g, False)
        # __snapshot_apply_config: the snapshot's config, plus the description and unused volumes kept
        conf = {k: v for k, v in g.config.items() if k == "description" or re.fullmatch(r"unused\d+", k)}
        conf.update(_copy_config(snap))
        conf["parent"] = name
        g.config = conf
        g.pending, g.pending_delete = {}, []
        sim.guest_packages[g.vmid] = dict(snap.get("_disk_packages", {}))
        sim.guest_files[g.vmid] = {k: base64.b64decode(v) for k, v in snap.get("_disk_files", {}).items()}
        g.touch()
        if start:
            sim.set_running(g, True)
        sim.changed()
        return [f"rollback to snapshot '{name}'"]

    def on_error(msg: str) -> str:
        g.config.pop("lock", None)
        g.touch()
        return msg

    return sim.new_task(ctx.node, "vzrollback", str(g.vmid), ctx.auth, work=work, on_error=on_error)


__all__ = ["destroy", "migrate", "power", "rrddata"]
