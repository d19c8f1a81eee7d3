"""Backup compliance of the guests the policy covers, read from where the backups really are.

One function, :func:`collect`, serves both ``pveguard backup status`` and ``pveguard audit``:

* **Proxmox VE**: which guests no vzdump job covers (``GET /cluster/backup-info/not-backed-up``,
  PVE's own answer, so the user's own jobs count too) and the archives on the policy's storage
  (``GET /nodes/{node}/storage/{storage}/content`` once per node; a shared storage's volumes are
  counted once). A constant number of calls: guests, not-backed-up, nodes, one per node.
  pveguard does not verify or copy PVE's archives, so verification and offsite are not judged there.
* **Plain LXC**: pveguard makes the archives itself (``backup run``), so every policy guest counts as
  in a job; archives are the ``vzdump-lxc-*`` files in the dump directory, and the last
  verification / offsite copy come from the markers ``backup run`` / ``backup verify`` leave in the
  state directory.

Read-only on both: nothing is created, not even the dump directory.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pveguard.backup.calendar import local_zone, parse
from pveguard.backup.compliance import Archive, GuestStatus, evaluate
from pveguard.backup.retention import KeepPolicy
from pveguard.backup.run import OFFSITE_MARKER, VERIFY_MARKER
from pveguard.errors import PveguardError, StateError
from pveguard.output import iso_utc
from pveguard.strategy.models import ContainerBackups, Strategy

__all__ = ["Coverage", "collect", "keep_policy", "policy_guest", "status_row"]

@dataclass
class Coverage:
    """The per-guest verdicts plus where they were read from."""

    backend: str  # the backend's name: proxmox, lxc, ...
    source: str  # e.g. "storage local on 3 node(s)" or "/var/lib/pveguard/dump"
    names: dict[str, str] = field(default_factory=dict)  # "lxc/101" -> guest name
    statuses: list[GuestStatus] = field(default_factory=list)
    storage: str | None = None  # PVE storage holding the archives (None on plain LXC)

    @property
    def compliant(self) -> bool:
        return all(s.compliant for s in self.statuses)

    def rows(self) -> list[dict[str, Any]]:
        """The statuses as JSON rows (``backup status --json`` and the audit's ``backup.items``)."""
        return [status_row(s, self.names.get(s.guest, "")) for s in self.statuses]


def keep_policy(containers: ContainerBackups | None) -> KeepPolicy:
    """The container retention as keep-* (explicit ``keep`` wins over ``retention``)."""
    if containers is not None and containers.keep is not None:
        k = containers.keep
        return KeepPolicy(last=k.last or 0, hourly=k.hourly or 0, daily=k.daily or 0, weekly=k.weekly or 0,
                          monthly=k.monthly or 0, yearly=k.yearly or 0)  # fmt: skip
    return KeepPolicy.for_duration(containers.retention if containers is not None else timedelta(days=7))


def policy_guest(guest: Any, containers: ContainerBackups) -> bool:
    """Does the container-backup policy cover this guest (``guests: managed`` or ``all``)?"""
    from pveguard.backends.base import MANAGED_TAG

    if guest.type != "lxc":
        return False
    return containers.guests == "all" or bool(guest.managed) or MANAGED_TAG in guest.tags


def own_guests(backend: Any, guests: Sequence[Any], instance: str | None,
               configs: Mapping[int, Mapping[str, Any]] | None = None) -> list[Any]:
    """The guests whose managed marker names `instance` (another installation's carry the same tag and
    are that one's to back up and report on), as `pveguard plan` and `--prune` judge them (read_marker).
    ``configs``: configs the caller already read, by vmid; the others are read here (in parallel). A
    guest whose config cannot be read is left out (whose it is cannot be told); no instance: none."""
    from concurrent.futures import ThreadPoolExecutor

    from pveguard.backends.base import Marker, read_marker
    from pveguard.backends.inflight import IN_FLIGHT
    from pveguard.errors import PveguardError

    if not instance or not guests:
        return []

    def config(g: Any) -> Mapping[str, Any] | None:
        if configs is not None and g.vmid in configs:
            return configs[g.vmid]
        try:
            return dict(backend.get_config(g))
        except PveguardError:
            return None

    with ThreadPoolExecutor(max_workers=min(IN_FLIGHT, len(guests))) as pool:
        read = list(pool.map(config, guests))
    return [g for g, cfg in zip(guests, read, strict=True)
            if cfg is not None and read_marker(cfg.get("description")) == Marker(instance)]


def status_row(s: GuestStatus, name: str) -> dict[str, Any]:
    """One guest's verdict as JSON (``problems`` are sentences, ``kinds`` their machine names)."""
    return {"guest": s.guest, "name": name, "archives": s.archives,
            "newest": iso_utc(s.newest),
            "age_seconds": int(s.age.total_seconds()) if s.age else None, "in_backup_job": s.in_backup_job,
            "last_verified": iso_utc(s.last_verified), "offsite_synced": iso_utc(s.offsite_synced),
            "compliant": s.compliant, "problems": s.problems,
            "kinds": [i.kind for i in s.issues]}  # fmt: skip


def collect(
    strategy: Strategy,
    backend: Any,
    state_dir: Path,
    dump_dir: Path | None = None,
    now: datetime | None = None,
    guests: Sequence[Any] | None = None,
    *,
    instance: str | None,
    configs: Mapping[int, Mapping[str, Any]] | None = None,
) -> Coverage:
    """Per-guest backup compliance of the guests the policy covers: with ``guests: managed``, this
    installation's (``instance``: own_guests; None: it has none yet), with ``all`` every container.
    ``guests``: the backend's listing when the caller already has it (else it is listed here), ``configs``
    the guests' configs it already read (by vmid); ``now``: judge as of then."""
    b = strategy.backup
    c = b.containers
    listed = list(guests) if guests is not None else backend.list_guests()
    mine = [g for g in listed if policy_guest(g, c)]
    if c.guests != "all":
        mine = own_guests(backend, mine, instance, configs)
    names = {f"lxc/{g.vmid}": g.name for g in mine}
    if not names:  # nothing to judge: skip the storage reads and the calendar arithmetic
        return Coverage(getattr(backend, "name", type(backend).__name__), "")
    when = now or datetime.now(UTC)
    extra: dict[str, Any] = {}
    if _is_proxmox(backend):
        archives, source = _pve_archives(backend, c.storage)
        uncovered = {int(g["vmid"]) for g in backend.call("GET", "/cluster/backup-info/not-backed-up")}
        extra["covered"] = [n for n in names if int(n.split("/")[1]) not in uncovered]
        storage: str | None = c.storage
    else:
        folder = dump_dir or state_dir / "dump"
        archives = _dir_archives(folder)
        source, storage = str(folder), None
        if b.verification.enabled:
            extra["last_verified"] = _marker(state_dir / VERIFY_MARKER, names)
            extra["verify_schedule"] = parse(b.verification.schedule)
        if b.offsite.type != "none":
            extra["offsite_synced"] = _marker(state_dir / OFFSITE_MARKER, names)
            extra["offsite_schedule"] = parse(b.offsite.schedule)
    statuses = evaluate(names, archives, parse(c.schedule), when, keep=keep_policy(c), **extra)
    return Coverage(getattr(backend, "name", type(backend).__name__), source, names, statuses, storage)


def _is_proxmox(backend: Any) -> bool:
    # A ProxmoxBackend exists only once its module is imported; importing it just to ask would cost
    # proxmoxer and requests (~0.2 s) on every LXC-only audit.
    module = sys.modules.get("pveguard.backends.proxmox")
    return module is not None and isinstance(backend, module.ProxmoxBackend)


def _pve_archives(backend: Any, storage: str) -> tuple[dict[str, list[Archive]], str]:
    from pveguard.backup.jobs import archives_from_content

    archives: dict[str, list[Archive]] = {}
    seen: set[str] = set()
    read = 0
    for node in backend.nodes():
        try:
            content = backend.call("GET", f"/nodes/{node.name}/storage/{storage}/content", {"content": "backup"})
        except PveguardError:
            continue  # the storage is not on this node (or the node is offline)
        read += 1
        for e in content:
            if e.get("volid") in seen:  # shared storage: listed once per node
                continue
            seen.add(e.get("volid"))
            for guest, items in archives_from_content([e]).items():
                archives.setdefault(guest, []).extend(items)
    return archives, f"storage {storage} on {read} node(s)"


def _dir_archives(folder: Path) -> dict[str, list[Archive]]:
    from pveguard.backup.archive import classify

    zone = local_zone()
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        present = set()
    except OSError as exc:
        raise StateError(f"cannot list the container archives in {folder}: {exc.strerror}",
                         hint="run as root, or pass the dump directory you can read") from None
    return {
        f"{kind}/{vmid}": [
            Archive(datetime.fromtimestamp(a.timestamp(zone) or 0, UTC), protected=a.protected_filename in present)
            for a in found
        ]
        for (kind, vmid), found in classify(present).archives.items()
    }


def _marker(path: Path, names: dict[str, str]) -> dict[str, datetime]:
    """A host-wide "last done" marker applies to every guest (verification and offsite run for all)."""
    try:
        when = datetime.fromisoformat(json.loads(path.read_text())["last"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return dict.fromkeys(names, when)
