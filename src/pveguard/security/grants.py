"""`security.access.role_grants`: `PRIV[,PRIV] on PATH`, parsed and checked (docs/rbac.md).

Apart from `pveguard.security.rbac` (which plans users, tokens and ACLs and imports the firewall
planning) because the strategy models validate grants: `check` needs only this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every privilege PVE 8/9 knows (pve-access-control AccessControl.pm $privgroups plus the single ones).
KNOWN_PRIVS: frozenset[str] = frozenset({
    "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
    "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
    "VM.Console", "VM.Migrate", "VM.Monitor", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
    "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileWrite", "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.Unrestricted", "VM.Replicate",
    "Sys.AccessNetwork", "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
    "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
    "SDN.Allocate", "SDN.Audit", "SDN.Use", "User.Modify", "Group.Allocate", "Realm.Allocate",
    "Realm.AllocateUser", "Pool.Allocate", "Pool.Audit", "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
    "Permissions.Modify",
})
PLACEHOLDERS = ("self", "guests", "backup-storage")
_GRANT_RE = re.compile(r"^\s*([A-Za-z.,\s]+?)\s+on\s+(\S+)\s*$")


def default_grants() -> dict[str, list[str]]:
    """The default strategy's grants: monitoring reads, backup backs up, the others see themselves."""
    return {
        "monitoring": ["Sys.Audit,Sys.Syslog on /nodes", "VM.Audit on /vms", "Datastore.Audit on /storage"],
        "backup": ["VM.Audit,VM.Backup on guests", "Datastore.Audit,Datastore.AllocateSpace on backup-storage"],
        "devtools": ["VM.Audit on self"],
        "gateway": ["VM.Audit on self"],
    }


DEFAULT_GRANT = "VM.Audit on self"  # a role the strategy names no grants for


@dataclass(frozen=True)
class Grant:
    privileges: tuple[str, ...]
    path: str  # an ACL path or a placeholder


def parse_grant(text: str) -> Grant:
    """`VM.Audit,VM.Backup on guests` -> Grant; ValueError saying what is wrong."""
    m = _GRANT_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not 'PRIV[,PRIV] on PATH', e.g. 'VM.Audit on self'")
    privs = tuple(p.strip() for p in m.group(1).split(",") if p.strip())
    unknown = [p for p in privs if p not in KNOWN_PRIVS]
    if unknown or not privs:
        raise ValueError(f"{text!r}: {', '.join(unknown) or 'no privilege'} is not a PVE privilege "
                         f"(e.g. VM.Audit, VM.PowerMgmt, Datastore.Audit, Sys.Audit)")
    path = m.group(2)
    if path not in PLACEHOLDERS and not re.fullmatch(r"/[A-Za-z0-9._/-]*", path):
        raise ValueError(f"{text!r}: the path must be an ACL path like /vms/101 or one of "
                         f"{', '.join(PLACEHOLDERS)}")
    if path not in PLACEHOLDERS:
        path = "/" + "/".join(p for p in path.split("/") if p)
    return Grant(privs, path)
