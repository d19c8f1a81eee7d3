"""How pveguard reaches guests: one small interface, one module per way (proxmox, lxc).

Backends are thin: they translate these verbs into PVE API calls or lxc-* commands. Planning,
policy and retries for non-idempotent steps live above them, once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from pveguard.errors import BackendError

GuestState = Literal["running", "stopped", "unknown"]

MANAGED_TAG = "pveguard"
# The managed marker: a line of its own in the guest's description. Since instance ids it reads
# `managed-by: pveguard instance=<id>`; the bare line is the marker of older pveguard versions
# (a guest carrying it belongs to no installation until `pveguard adopt` claims it).
MANAGED_MARKER = "managed-by: pveguard"
INSTANCE_KEY = "instance"


@dataclass(frozen=True)
class Marker:
    """A managed marker as read from a description; `instance` None is the legacy marker."""

    instance: str | None


def marker_line(instance: str) -> str:
    """The marker line an installation writes into the guests it creates or adopts."""
    return f"{MANAGED_MARKER} {INSTANCE_KEY}={instance}"


def read_marker(description: str | None) -> Marker | None:
    """The first marker line of a description (legacy or with an instance), or None."""
    for line in str(description or "").splitlines():
        text = line.strip()
        if text == MANAGED_MARKER:
            return Marker(None)
        if text.startswith(MANAGED_MARKER + " "):
            words = text[len(MANAGED_MARKER):].split()
            found = [w.split("=", 1)[1] for w in words if w.startswith(INSTANCE_KEY + "=")]
            return Marker(found[0] or None if found else None)
    return None


def not_ours_or_locked(config: dict[str, Any], instance: str) -> str | None:
    """Why an action of this installation must leave a guest alone, read from its config: another
    installation's (or no) marker, or a lock (backup, migrate, snapshot...). None: it may act."""
    marker = read_marker(config.get("description"))
    if marker != Marker(instance):
        return (f"owned by another pveguard instance {marker.instance}" if marker and marker.instance
                else "not managed by this installation")
    if config.get("lock"):
        return f"locked ({config['lock']})"
    return None


def with_marker(description: str | None, instance: str) -> str:
    """The description with its marker line (if any) replaced by this instance's, else one added."""
    lines = str(description or "").rstrip("\n").splitlines()
    kept = [ln for ln in lines if read_marker(ln) is None]
    return "\n".join([*kept, marker_line(instance)]).strip("\n")


@dataclass(frozen=True)
class DataVolume:
    """A container's data volume (`mp0`, in backups): the strategy's `backup_volume`."""

    size_gib: int
    mountpoint: str
    storage: str | None = None  # None: the container's storage, else the backend's default


@dataclass(frozen=True)
class GrowTo:
    """An `update` value for a disk key (`mp0`): grow that disk to `size` (PVE's resize; disks never
    shrink). A plain string for the same key is its whole configuration, written as it is."""

    size: str


@dataclass
class NetSpec:
    """A guest's first network interface."""

    bridge: str
    vlan: int | None = None
    ip: str = "dhcp"
    gateway: str | None = None
    firewall: bool = True
    hwaddr: str | None = None


@dataclass
class GuestSpec:
    """What a guest should look like, in backend-neutral units (MiB, GiB, cores)."""

    name: str
    role: str
    cores: int
    memory_mib: int
    swap_mib: int
    disk_gib: int
    net: NetSpec
    template: str = "debian-12-standard"
    storage: str | None = None
    cpulimit: float = 0
    cpuunits: int = 100
    hard_limits: bool = True  # False: soft limits (lxc backend only; PVE has no soft mode)
    unprivileged: bool = True
    features: dict[str, bool] = field(default_factory=dict)
    onboot: bool = True
    startup_order: int | None = None
    startup_up: int | None = None
    startup_down: int | None = None
    tags: list[str] = field(default_factory=list)
    node: str | None = None
    vmid: int | None = None
    description: str = ""
    backup_volume: DataVolume | None = None


@dataclass
class Guest:
    """A guest as a backend sees it (from one listing call, no per-guest reads)."""

    vmid: int
    name: str
    node: str
    type: Literal["lxc", "qemu"]
    status: GuestState
    tags: list[str] = field(default_factory=list)
    managed: bool = False
    maxmem: int = 0
    maxdisk: int = 0
    cpus: float = 0
    lock: str | None = None


@dataclass
class GuestStats:
    """One usage sample: ratios in 0..1 and byte counters that only grow (until a restart)."""

    vmid: int
    name: str
    node: str
    status: GuestState
    cpu: float = 0.0
    cpus: float = 0.0
    mem: int = 0
    maxmem: int = 0
    disk: int = 0
    maxdisk: int = 0
    netin: int = 0
    netout: int = 0
    diskread: int = 0
    diskwrite: int = 0
    uptime: int = 0


@dataclass
class ExecResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class Snapshot:
    """A guest snapshot as PVE lists it (`GET .../snapshot`, without the `current` entry)."""

    name: str
    snaptime: int = 0
    description: str = ""
    parent: str | None = None


@dataclass(frozen=True)
class Preflight:
    """One check `pveguard doctor` runs before anything acts: what was found and, when it failed, the fix."""

    name: str  # short stable id, e.g. "lxc-config-includes", "pve-permissions"
    ok: bool | None  # None: not applicable here (skipped)
    detail: str  # what was found, one line
    fix: str = ""  # one line: what to do next (empty when ok)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass
class Capabilities:
    """What a backend can do here, reported by `pveguard status`."""

    name: str
    live_memory_update: bool = True
    live_cpu_update: bool = True
    vlan_mode: str = "tag"
    backups: bool = True
    notes: list[str] = field(default_factory=list)


class Backend(abc.ABC):
    """The verbs every backend implements."""

    name: str = "base"
    # `resources.hard_limits: false` can be met (PVE always applies hard limits; see docs/lxc.md)
    soft_limits: bool = False
    # how many create() calls apply may run at once (threads); 1: one after another
    create_concurrency: int = 1

    def prepare_creates(self, specs: list[GuestSpec]) -> None:
        """Before concurrent creates: settle what they must not race for (node, VMID). Default: nothing."""
        return None

    def interrupt(self) -> None:
        """Ctrl-C while creates run in other threads: make their waits end soon. Default: nothing."""
        return None

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def list_guests(self) -> list[Guest]:
        """All guests the backend can see, with one call (or one directory scan)."""

    @abc.abstractmethod
    def get_config(self, guest: Guest) -> dict[str, Any]:
        """The guest's configuration in PVE's key/value form (cores, memory, swap, net0, rootfs...)."""

    def reading_configs(self, guests: list[Guest]) -> AbstractContextManager[Callable[[Guest], bool]]:
        """Inside: get_config of these guests may answer from reads made up front, all together (a backend
        that can read many at once does so; the default reads each when asked). It gives whether a guest's
        config is already read (then get_config costs nothing: no need for a thread to wait on it)."""
        return nullcontext(lambda _g: False)

    @abc.abstractmethod
    def create(self, spec: GuestSpec, progress: Callable[[str], None] | None = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        """Create (not start) a guest carrying spec.tags and spec.description from its first moment.

        The caller checks the listing first; `progress` receives one-line status messages;
        `before_request(vmid, node)` runs before each request that may create the guest (so the caller
        can record the intent with the VMID first).
        """

    @abc.abstractmethod
    def update(self, guest: Guest, changes: dict[str, Any], delete: list[str] | None = None) -> list[str]:
        """Apply config changes; return the keys that only take effect after a restart."""

    @abc.abstractmethod
    def start(self, guest: Guest) -> None: ...

    @abc.abstractmethod
    def stop(self, guest: Guest) -> None: ...

    @abc.abstractmethod
    def shutdown(self, guest: Guest, timeout: int = 60) -> None: ...

    @abc.abstractmethod
    def destroy(self, guest: Guest) -> None: ...

    @abc.abstractmethod
    def exec(self, guest: Guest, argv: list[str], *, input: str | None = None,
             timeout: float = 600) -> ExecResult:
        """Run a command inside the guest."""

    @abc.abstractmethod
    def push(self, guest: Guest, local: str, remote: str, mode: int = 0o644) -> None: ...

    @abc.abstractmethod
    def pull(self, guest: Guest, remote: str, local: str) -> None: ...

    @abc.abstractmethod
    def stats(self) -> list[GuestStats]:
        """Usage of every guest in one sweep (never one call per guest)."""

    # Snapshots (safe updates). Backends that cannot take them say so with a BackendError.

    def snapshots(self, guest: Guest) -> list[Snapshot]:
        """The guest's snapshots, oldest first."""
        raise BackendError(f"the {self.name} backend cannot take snapshots")

    def snapshot(self, guest: Guest, name: str, description: str = "") -> None:
        """Take snapshot `name` of the guest (running or not) and wait for it."""
        raise BackendError(f"the {self.name} backend cannot take snapshots")

    def rollback(self, guest: Guest, name: str, *, start: bool) -> None:
        """Roll the guest back to snapshot `name` (it is stopped first, as PVE does); start it after when `start`."""
        raise BackendError(f"the {self.name} backend cannot take snapshots")

    def delete_snapshot(self, guest: Guest, name: str) -> None:
        """Delete snapshot `name` and wait for it."""
        raise BackendError(f"the {self.name} backend cannot take snapshots")

    def wait_unlocked(self, guest: Guest, what: str, progress: Any = None, timeout: float = 900) -> dict[str, Any]:
        """Wait while another operation holds the guest's lock (e.g. a create that outlived the run that
        started it); return the config. Backends without locks simply return the config."""
        return self.get_config(guest)

    def migrate(self, guest: Guest, target: str, restart: bool = True) -> None:
        """Move the container to another node (restart mode: stop, move, start there). Only a cluster
        can; backends with one host say so."""
        from pveguard.errors import BackendError

        raise BackendError(f"the {self.name} backend has one host: CT {guest.vmid} cannot move to {target}",
                           hint="migration needs a Proxmox VE cluster")

    def preflight(self) -> list[Preflight]:
        """Checks that must pass before this backend can act (reachable, permissions, templates,
        bridges, storages, config includes...), each with its fix. Runs no mutating call."""
        return []

    def watch_stops(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call `wake` soon after any guest stops, so a watchdog loop can sweep at once instead of at its
        next interval; returns the function that ends the watching, or None when the backend has no
        such events (then the loop just sweeps every interval)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
