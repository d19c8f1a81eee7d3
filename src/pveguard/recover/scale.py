"""Scaling a container's limits: the arithmetic (pure) and applying it with a receipt in the ledger.

The strategy's size is the base. One step raises a resource by `scale_step` x the base (memory in
MiB, cores and disk GiB at least 1), never beyond `scale_max` x the base (the cap). `revert` goes back
to the base for memory and cores; a disk never shrinks (neither PVE nor the lxc backend can), so it
stays as it is and the receipt says so.

Live where the backend can: memory (cgroup limit) and cores are live on both backends (PVE applies
`memory`/`swap` through the cgroup and `cores` as a fast-plug option; the lxc backend writes the
cgroup files); a disk grows at once on PVE (resize) and at the next start on plain LXC. `update`
returns the keys left pending, so the receipt says which change waits for a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pveguard.backends.base import Backend, Guest
from pveguard.errors import BackendError, UsageError
from pveguard.strategy.models import Container

Resource = Literal["memory", "cores", "disk"]
RESOURCES: tuple[Resource, ...] = ("memory", "cores", "disk")
# the monitor's rule -> the resource that relieves it
RULE_RESOURCE: dict[str, Resource] = {"memory": "memory", "cpu": "cores", "disk": "disk"}
UNITS = {"memory": "MiB", "cores": "cores", "disk": "GiB"}
MIB = 1 << 20
GIB = 1 << 30
Record = Callable[..., None]


@dataclass(frozen=True)
class Size:
    """A container's size in the units the backends take: MiB, cores, GiB."""

    memory: int
    cores: int
    disk: int

    def get(self, r: Resource) -> int:
        return int(getattr(self, r))

    def as_dict(self) -> dict[str, int]:
        return {"memory_mib": self.memory, "cores": self.cores, "disk_gib": self.disk}


def base_size(c: Container) -> Size:
    """The strategy's size of a container."""
    return Size(max(1, c.resources.memory // MIB), c.resources.cores, max(1, -(-c.resources.storage // GIB)))


def _gib(text: str) -> int:
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "size":
            v = value.strip().upper()
            factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1:], 1)
            num = v[:-1] if v[-1:] in "KMGT" else v
            try:
                return max(1, -(-int(float(num) * factor) // GIB))
            except ValueError:
                break
    return 0


def current_size(cfg: dict[str, Any]) -> Size:
    """A container's size from its config (PVE's key/value form, which both backends give)."""
    try:
        return Size(int(cfg.get("memory", 512)), int(cfg.get("cores", 1)), _gib(str(cfg.get("rootfs", ""))))
    except (TypeError, ValueError):
        raise BackendError(f"the container's config has no readable memory/cores: {cfg.get('memory')!r}, "
                           f"{cfg.get('cores')!r}") from None


def cap_of(r: Resource, base: int, scale_max: float) -> int:
    """The most a resource may grow to: scale_max x the base (whole units, never below the base)."""
    return max(base, math.floor(base * scale_max + 1e-9))


def increment(r: Resource, base: int, scale_step: float) -> int:
    """One step: scale_step x the base, at least one unit."""
    raw = base * scale_step
    return max(1, math.ceil(raw - 1e-9) if r == "disk" else round(raw))


def step_up(r: Resource, current: int, base: int, scale_step: float, scale_max: float) -> int | None:
    """The next size of `r`, or None when it is at (or above) its cap."""
    cap = cap_of(r, base, scale_max)
    if current >= cap:
        return None
    return min(cap, current + increment(r, base, scale_step))


def revert_target(current: Size, base: Size) -> tuple[dict[Resource, int], list[str]]:
    """What `--revert` sets (memory and cores back to the base) and what it cannot (a grown disk)."""
    changes: dict[Resource, int] = {}
    notes: list[str] = []
    for r in ("memory", "cores"):
        if current.get(r) != base.get(r):
            changes[r] = base.get(r)
    if current.disk > base.disk:
        notes.append(f"disk stays at {current.disk} GiB (the strategy says {base.disk} GiB): disks cannot shrink")
    return changes, notes


@dataclass
class Receipt:
    """What one scale did: before/after per resource, which changes are live, which wait for a restart."""

    name: str
    vmid: int
    reason: str
    before: Size
    after: Size
    base: Size
    changed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # applied at the next restart
    notes: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vmid": self.vmid, "reason": self.reason, "before": self.before.as_dict(),
                "after": self.after.as_dict(), "base": self.base.as_dict(), "changed": self.changed,
                "pending": self.pending, "live": self.live, "notes": self.notes}


_KEY = {"memory": "memory", "cores": "cores", "disk": "rootfs"}


def apply_size(backend: Backend, guest: Guest, cfg: dict[str, Any], base: Size, want: dict[Resource, int],
               reason: str, record: Record, action: str = "recover.scale") -> Receipt:
    """Set the resources in `want` (absolute), with the intent and the receipt in the ledger."""
    before = current_size(cfg)
    if "disk" in want and want["disk"] < before.disk:
        raise UsageError(f"the disk of {guest.name} cannot shrink from {before.disk} GiB to {want['disk']} GiB",
                         hint="disks only grow (PVE and the lxc backend alike)")
    want = {r: v for r, v in want.items() if v != before.get(r)}
    after = Size(**{r: want.get(r, before.get(r)) for r in RESOURCES})
    receipt = Receipt(guest.name, guest.vmid, reason, before, after, base, changed=sorted(want))
    if not want:
        return receipt
    changes: dict[str, Any] = {_KEY[r]: (f"{v}G" if r == "disk" else v) for r, v in want.items()}
    target = f"ct/{guest.vmid}"
    record(f"{action}.intent", target, name=guest.name, reason=reason, before=before.as_dict(),
           after=after.as_dict())
    try:
        pending = backend.update(guest, changes)
    except BackendError as exc:
        record(action, target, name=guest.name, reason=reason, result="failed", error=exc.message,
               before=before.as_dict(), after=after.as_dict())
        raise
    keys = {v: k for k, v in _KEY.items()}
    receipt.pending = sorted(keys[k] for k in pending if k in keys and keys[k] in want)
    record(action, target, name=guest.name, reason=reason, result="ok", before=before.as_dict(),
           after=after.as_dict(), base=base.as_dict(), changed=receipt.changed, pending=receipt.pending,
           live=receipt.live)
    return receipt
