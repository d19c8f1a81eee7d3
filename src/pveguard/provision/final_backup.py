"""A container's data volumes, and the final backup taken before such a container is deleted.

The backup goes through the same machinery as the backup policy: PVE's vzdump on Proxmox VE, the
vzdump-style archive of `backup/lxcdump.py` on plain LXC. It is marked protected, so no retention
rule removes the last copy of a container that no longer exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pveguard.backends.base import Backend, Guest
from pveguard.errors import OperationError
from pveguard.provision.desired import parse_propstring
from pveguard.strategy.models import ContainerBackups

_MP_RE = re.compile(r"^mp\d+$")
NOTES = "final backup before pveguard deleted {{guestname}} (CT {{vmid}})"


def data_volumes(config: dict[str, Any] | None) -> dict[str, str]:
    """The mount points (`mp0`..`mp255`) of a container config: what a delete would destroy besides rootfs."""
    return {k: str(v) for k, v in sorted((config or {}).items()) if _MP_RE.match(k)}


def left_out_of_backups(volumes: dict[str, str]) -> list[str]:
    """Mount points vzdump leaves out: PVE backs up a volume mount point only with `backup=1`."""
    return [k for k, v in volumes.items() if parse_propstring(v, default_key="volume").get("backup") not in ("1", "on")]


def take_final_backup(backend: Backend, guest: Guest, policy: ContainerBackups, dump_dir: Path) -> str:
    """Back up the guest now, protected; returns where the archive went (one line)."""
    from pveguard.backends.lxc import LxcBackend
    from pveguard.backends.proxmox import ProxmoxBackend

    notes = NOTES.replace("{{guestname}}", guest.name).replace("{{vmid}}", str(guest.vmid))
    if isinstance(backend, ProxmoxBackend):
        what = f"final backup of {guest.name} (CT {guest.vmid})"
        upid = backend.call("POST", f"/nodes/{guest.node}/vzdump", {
            "vmid": str(guest.vmid), "storage": policy.storage, "mode": policy.mode, "compress": policy.compress,
            "notes-template": notes, "protected": 1, "remove": 0}, safe=False, what=what)
        backend.wait_task(str(upid), what)
        return f"vzdump to storage {policy.storage} (protected)"
    if isinstance(backend, LxcBackend):
        from pveguard.backup.lxcdump import dump_container

        result = dump_container(str(guest.vmid), guest.vmid, dump_dir, backend.lxcpath, mode=policy.mode,
                                notes=notes)
        (result.archive.parent / f"{result.archive.name}.protected").touch()
        return f"{result.archive} (protected)"
    raise OperationError(f"no final backup is possible with the {backend.name} backend",
                         hint="back the container up by hand, then delete it")
