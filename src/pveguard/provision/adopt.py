"""`pveguard adopt VMID|NAME`: make an existing container this installation's, explicitly and recorded.

Adopting rewrites the guest's managed marker to this instance (`managed-by: pveguard instance=<id>`,
replacing a legacy or another instance's marker) and adds the `pveguard` tag; nothing else changes.
From then on plan/apply converge it like a container pveguard created, and `--prune` may delete it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pveguard.backends.base import MANAGED_TAG, Backend, Guest, read_marker, with_marker
from pveguard.errors import OperationError, UsageError
from pveguard.provision.apply import Recorder


@dataclass
class Adoption:
    guest: Guest
    config: dict[str, Any]
    before: dict[str, str]
    after: dict[str, str]
    previous: str  # "unmanaged", "legacy" or "instance <id>"

    @property
    def needed(self) -> bool:
        return self.before != self.after


def find_guest(guests: list[Guest], ref: str) -> Guest:
    """The guest a user named by VMID or by name; a clear error when none or several match."""
    ref = ref.strip()
    found = [g for g in guests if str(g.vmid) == ref] if ref.isdigit() else [g for g in guests if g.name == ref]
    if not found:
        raise UsageError(f"no guest {ref!r} in the cluster",
                         hint="give a VMID or a container name as 'pveguard status' or 'pct list' show them")
    if len(found) > 1:
        ids = ", ".join(f"{g.vmid} on {g.node}" for g in found)
        raise UsageError(f"several guests are named {ref} ({ids})", hint="adopt one of them by its VMID")
    g = found[0]
    if g.type != "lxc":
        raise UsageError(f"guest {g.vmid} ({g.name}) is a virtual machine; pveguard manages containers only")
    return g


def _tags(config: dict[str, Any]) -> list[str]:
    return sorted({t for t in str(config.get("tags", "") or "").replace(",", ";").replace(" ", ";").split(";") if t})


def adoption(guest: Guest, config: dict[str, Any], instance: str) -> Adoption:
    """What adopting the guest changes: its description's marker and its tags."""
    desc = str(config.get("description", "") or "").rstrip("\n")
    tags = _tags(config)
    marker = read_marker(desc)
    previous = ("unmanaged" if marker is None else "legacy" if marker.instance is None
                else f"instance {marker.instance}")
    before = {"description": desc, "tags": ";".join(tags)}
    after = {"description": with_marker(desc, instance), "tags": ";".join(sorted({*tags, MANAGED_TAG}))}
    return Adoption(guest, config, before, after, previous)


def adopt(backend: Backend, a: Adoption, recorder: Recorder, instance: str) -> None:
    """Write the marker and tag (intent first, result after, like every provisioning change)."""
    target = f"ct/{a.guest.vmid}"
    details = {"name": a.guest.name, "node": a.guest.node, "previous": a.previous, "instance": instance,
               "before": a.before, "after": a.after}
    recorder.record("provision.adopt.intent", target, **details)
    params: dict[str, Any] = {k: v for k, v in a.after.items() if a.before.get(k) != v}
    if a.config.get("digest"):
        params["digest"] = a.config["digest"]  # refuse if someone changed the config since we read it
    try:
        backend.update(a.guest, params)
    except OperationError as exc:
        recorder.record("provision.adopt", target, result="failed", error=exc.message, **details)
        raise
    except KeyboardInterrupt:
        recorder.record("provision.adopt", target, result="interrupted", **details)
        raise
    recorder.record("provision.adopt", target, result="ok", **details)
