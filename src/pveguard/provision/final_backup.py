"""A container's data volumes, and the final backup taken before such a container is deleted.

The backup goes through the same machinery as the backup policy: PVE's vzdump on Proxmox VE, the
vzdump-style archive of `backup/lxcdump.py` on plain LXC. It is marked protected, so no retention
rule removes the last copy of a container that no longer exists.

PVE's vzdump includes a volume mount point only with `backup=1` (pve-container
`LXC/Config.pm mountpoint_backup_enabled`), so before the final dump every volume mount point
without it gets `backup=1`. On a running container PVE would leave that change pending (an existing
mount point is not hotplugged) and vzdump reads the current config, so the container, about to be
deleted anyway, is stopped first. Afterwards vzdump's own log must say it included each volume, or
nothing is deleted. Bind and device mount points are never in a vzdump; they live on the host and
deleting the container leaves them there.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pveguard.backends.base import Backend, Guest
from pveguard.errors import OperationError
from pveguard.provision.desired import format_propstring, parse_propstring
from pveguard.strategy.models import ContainerBackups

_MP_RE = re.compile(r"^mp\d+$")
NOTES = "final backup before pveguard deleted {{guestname}} (CT {{vmid}})"


def _mp_no(key: str) -> int:
    return int(key[2:])


def data_volumes(config: dict[str, Any] | None) -> dict[str, str]:
    """The mount points (`mp0`..`mp255`) of a container config: what a delete would destroy besides rootfs."""
    return {k: str(v) for k, v in sorted((config or {}).items()) if _MP_RE.match(k)}


def left_out_of_backups(volumes: dict[str, str]) -> list[str]:
    """Mount points vzdump leaves out: PVE backs up a volume mount point only with `backup=1`."""
    return [k for k, v in volumes.items() if not _backed_up(v)]


def _backed_up(spec: str) -> bool:
    return parse_propstring(spec, default_key="volume").get("backup", "").lower() in ("1", "on", "yes", "true")


def on_host(volumes: dict[str, str]) -> list[str]:
    """Bind and device mount points (a host path, not a storage volume): never in a vzdump, and not
    removed when the container is deleted."""
    return [k for k, v in volumes.items()
            if parse_propstring(v, default_key="volume").get("volume", "").startswith("/")]


def to_include(volumes: dict[str, str]) -> dict[str, str]:
    """The volume mount points vzdump would leave out, with `backup=1` set (everything else unchanged)."""
    out = {}
    for k, v in volumes.items():
        if k in on_host(volumes) or _backed_up(v):
            continue
        props = parse_propstring(v, default_key="volume")
        props["backup"] = "1"
        out[k] = f"{props.pop('volume')},{format_propstring(props, first=('mp',))}"
    return out


def _included_by_vzdump(backend: Any, node: str, upid: str, what: str) -> set[str]:
    """The mount points vzdump's task log says it included ("including mount point mp0 ('/data') ...")."""
    log = backend.call("GET", f"/nodes/{node}/tasks/{upid}/log", {"limit": 100000}, what=f"{what}: reading its log")
    rx = re.compile(r"including mount point (\S+) \(")
    return {m.group(1) for row in (log if isinstance(log, list) else []) if isinstance(row, dict)
            for m in [rx.search(str(row.get("t", "")))] if m}


def take_final_backup(backend: Backend, guest: Guest, policy: ContainerBackups, dump_dir: Path) -> str:
    """Back up the guest now, protected; returns where the archive went (one line)."""
    from pveguard.backends.lxc import LxcBackend
    from pveguard.backends.proxmox import ProxmoxBackend

    notes = NOTES.replace("{{guestname}}", guest.name).replace("{{vmid}}", str(guest.vmid))
    if isinstance(backend, ProxmoxBackend):
        what = f"final backup of {guest.name} (CT {guest.vmid})"
        # the config vzdump reads: without a change left pending on a running container
        config = dict(backend.call("GET", f"/nodes/{guest.node}/lxc/{guest.vmid}/config", {"current": 1},
                                   what=f"{what}: reading the config"))
        volumes = data_volumes(config)
        include = to_include(volumes)
        notes_out: list[str] = []
        if include:
            if guest.status != "stopped":
                backend.stop(guest)  # it is deleted next; a changed mount point of a running CT stays pending
                notes_out.append("stopped first")
                guest = replace(guest, status="stopped")
            backend.update(guest, {**include, **({"digest": config["digest"]} if config.get("digest") else {})})
            notes_out.append(f"backup=1 set on {', '.join(include)}")
        upid = backend.call("POST", f"/nodes/{guest.node}/vzdump", {
            "vmid": str(guest.vmid), "storage": policy.storage, "mode": policy.mode, "compress": policy.compress,
            "notes-template": notes, "protected": 1, "remove": 0}, safe=False, what=what)
        backend.wait_task(str(upid), what)
        wanted = [k for k in volumes if k not in on_host(volumes)]
        if wanted:
            missing = sorted(set(wanted) - _included_by_vzdump(backend, guest.node, str(upid), what), key=_mp_no)
            if missing:
                raise OperationError(
                    f"{what}: vzdump did not include {', '.join(missing)}; the container is not deleted",
                    hint=f"see the task log (pvesh get /nodes/{guest.node}/tasks/{upid}/log); set backup=1 on "
                         "those mount points (pct set) and run apply again, or back them up by hand")
            notes_out.insert(0, f"with {', '.join(sorted(wanted, key=_mp_no))}")
        host = on_host(volumes)
        if host:
            notes_out.append(f"{', '.join(host)} not in it (bind/device mount points stay on the host)")
        return f"vzdump to storage {policy.storage} (protected" + "".join(f"; {n}" for n in notes_out) + ")"
    if isinstance(backend, LxcBackend):
        from pveguard.backup.lxcdump import dump_container

        result = dump_container(str(guest.vmid), guest.vmid, dump_dir, backend.lxcpath, mode=policy.mode,
                                notes=notes)
        (result.archive.parent / f"{result.archive.name}.protected").touch()
        return f"{result.archive} (protected)"
    raise OperationError(f"no final backup is possible with the {backend.name} backend",
                         hint="back the container up by hand, then delete it")
