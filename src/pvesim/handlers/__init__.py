"""Handler registry: one function per (HTTP method, schema path template)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvesim.access import Auth
from pvesim.state import ApiError, Guest, Sim, die


@dataclass
class Reply:
    """A success answer with extra top-level keys next to `data` (e.g. `total`)."""

    data: Any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawData:
    """`data` already serialised to JSON bytes (hot paths cache their encoding)."""

    json: bytes


@dataclass
class Ctx:
    """One API call as seen by a handler."""

    sim: Sim
    auth: Auth
    p: dict[str, Any]
    method: str
    path: str

    @property
    def node(self) -> str:
        return str(self.p["node"])

    @property
    def is_root(self) -> bool:
        """The user root@pam itself, the only caller PVE's root-only checks let through: they compare the
        auth id, `$authuser eq 'root@pam'` (pve-access-control RPCEnvironment.pm check_api2_permissions,
        pve-container LXC.pm check_ct_modify_config_perm, pve-storage Storage.pm check_volume_access),
        and a token's auth id is `root@pam!<tokenid>`. A root@pam token without privilege separation
        still passes every privilege check (RPCEnvironment.pm permissions: it has root@pam's, i.e. all),
        just not these."""
        return self.auth.authid == "root@pam"

    def check(self, path: str, privs: list[str], any_of: bool = False) -> None:
        self.sim.access.check(self.auth.authid, path, privs, any_of)

    def check_vm_perm(self, vmid: int, pool: str | None, privs: list[str]) -> None:
        """RPCEnvironment.pm check_vm_perm: enough on /pool/<pool> when a pool is given (create), else
        (and the error) on /vms/<vmid>."""
        if pool and all(self.can(f"/pool/{pool}", p) for p in privs):
            return
        self.check(f"/vms/{vmid}", privs)

    def can(self, path: str, priv: str) -> bool:
        return self.sim.access.allowed(self.auth.authid, path, priv)

    def guest(self, kind: str = "lxc") -> Guest:
        """The guest named by {vmid} on {node}, or PVE's missing-config error."""
        vmid = int(self.p["vmid"])
        g = self.sim.guests.get(vmid)
        if g is None or g.node != self.node or g.type != kind:
            sub = "lxc" if kind == "lxc" else "qemu-server"
            raise die(f"Configuration file 'nodes/{self.node}/{sub}/{vmid}.conf' does not exist")
        return g


Handler = Callable[[Ctx], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def api(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register a handler for a schema path template."""

    def deco(fn: Handler) -> Handler:
        HANDLERS[(method, path)] = fn
        return fn

    return deco


def load_all() -> None:
    """Import every handler module (registration happens at import)."""
    from pvesim.handlers import (  # noqa: F401
        access,
        backup,
        certificates,
        cluster,
        firewall,
        lxc,
        nodes,
        notifications,
        storage,
    )


__all__ = ["HANDLERS", "ApiError", "Ctx", "RawData", "Reply", "api", "die", "load_all"]
