"""Which PVE privileges pveguard's plan and apply need, on which ACL paths, and how to grant them.

Derived from the calls the proxmox backend makes (`CALLS`) and what PVE checks for each: the API
schema's `permissions` (tests/provision/test_pve_privileges.py compares `CALLS` with the official schema)
and, where the schema says "check inside", pve-container's `create_vm` / `check_ct_modify_config_perm`
and pve-guest-common's `check_vnet_access`. A token that lacks VM.Audit does not get an error from PVE:
`GET /cluster/resources` silently leaves out the guests it may not see, so a plan would offer to create
containers that exist. That is why the privileges are read (`GET /access/permissions`) before planning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pveguard.backends.base import GuestSpec

ROLE = "PVEGuard"

# (method, schema path, ACL path kind, privilege) for every call of the proxmox backend during plan/apply.
# Kinds: "vms" -> /vms, "nodes" -> /nodes, "root" -> /, "rootfs" -> /storage/<root disk storage>,
# "templates" -> /storage/<template storage>, "bridge" -> /sdn/zones/localnetwork/<bridge>[/<vlan>].
CALLS: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/cluster/resources", "vms", "VM.Audit"),  # guests without it are left out of the listing
    ("GET", "/cluster/resources", "nodes", "Sys.Audit"),  # node memory for placement
    ("GET", "/cluster/status", "root", "Sys.Audit"),  # node addresses (pct over ssh), quorum
    ("GET", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Audit"),
    ("GET", "/nodes/{node}/lxc/{vmid}/pending", "vms", "VM.Audit"),
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current", "vms", "VM.Audit"),
    ("GET", "/nodes/{node}/storage/{storage}/content", "templates", "Datastore.Audit"),
    ("POST", "/nodes/{node}/aplinfo", "templates", "Datastore.AllocateTemplate"),
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Allocate"),
    ("POST", "/nodes/{node}/lxc", "rootfs", "Datastore.AllocateSpace"),
    # check_volume_access of the template: Datastore.AllocateSpace or Datastore.Audit (either will do)
    ("POST", "/nodes/{node}/lxc", "templates", "Datastore.Audit"),
    # check_ct_modify_config_perm checks every option of the create too, key by key
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Config.CPU"),  # cores, cpulimit, cpuunits
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Config.Memory"),  # memory, swap
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Config.Network"),  # net0, hostname
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Config.Disk"),  # rootfs
    ("POST", "/nodes/{node}/lxc", "vms", "VM.Config.Options"),  # onboot, startup, tags, description
    ("POST", "/nodes/{node}/lxc", "bridge", "SDN.Use"),  # check_vnet_access of net0
    ("PUT", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Config.CPU"),  # cores, cpulimit, cpuunits
    ("PUT", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Config.Memory"),  # memory, swap
    ("PUT", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Config.Network"),  # net0, hostname
    ("PUT", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Config.Options"),  # onboot, startup, tags...
    ("PUT", "/nodes/{node}/lxc/{vmid}/config", "vms", "VM.Config.Disk"),  # rootfs at create
    ("PUT", "/nodes/{node}/lxc/{vmid}/resize", "vms", "VM.Config.Disk"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start", "vms", "VM.PowerMgmt"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/stop", "vms", "VM.PowerMgmt"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown", "vms", "VM.PowerMgmt"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}", "vms", "VM.Allocate"),
)

# --- safe updates (`pveguard update`, always available): a snapshot before the upgrade, a rollback when the
# health checks fail, old ones pruned (pve-container API2/LXC/Snapshot.pm). Rollback takes VM.Snapshot or
# VM.Snapshot.Rollback: VM.Snapshot, needed anyway, covers it.
UPDATE_CALLS: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/nodes/{node}/lxc/{vmid}/snapshot", "vms", "VM.Audit"),
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot", "vms", "VM.Snapshot"),
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback", "vms", "VM.Snapshot"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}", "vms", "VM.Snapshot"),
)
# --- resource exhaustion's restart-mode migration: only when emergency.resource_exhaustion.actions has
# `migrate` (pve-container API2/LXC.pm migrate_vm) ----------------------------------------------------
MIGRATE_CALLS: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/nodes/{node}/lxc/{vmid}/migrate", "vms", "VM.Migrate"),
)

# --- firewall and VLAN isolation (security.isolation): only when the strategy enforces it ---------------
# Cluster-wide firewall objects (IP sets, security groups, datacenter options) take Sys.Modify on /
# to write (pve-firewall's rules_modify_permissions); a guest's firewall takes VM.Config.Network.
FIREWALL_CALLS: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/cluster/firewall/options", "root", "Sys.Audit"),
    ("PUT", "/cluster/firewall/options", "root", "Sys.Modify"),  # datacenter enable (only when safe)
    ("GET", "/cluster/firewall/rules", "root", "Sys.Audit"),
    ("GET", "/cluster/firewall/ipset", "root", "Sys.Audit"),
    ("POST", "/cluster/firewall/ipset", "root", "Sys.Modify"),
    ("GET", "/cluster/firewall/ipset/{name}", "root", "Sys.Audit"),
    ("POST", "/cluster/firewall/ipset/{name}", "root", "Sys.Modify"),
    ("DELETE", "/cluster/firewall/ipset/{name}/{cidr}", "root", "Sys.Modify"),
    ("GET", "/cluster/firewall/groups", "root", "Sys.Audit"),  # schema: user all
    ("POST", "/cluster/firewall/groups", "root", "Sys.Modify"),
    ("GET", "/cluster/firewall/groups/{group}", "root", "Sys.Audit"),
    ("POST", "/cluster/firewall/groups/{group}", "root", "Sys.Modify"),
    ("DELETE", "/cluster/firewall/groups/{group}/{pos}", "root", "Sys.Modify"),
    ("GET", "/nodes/{node}/lxc/{vmid}/firewall/options", "vms", "VM.Audit"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/firewall/options", "vms", "VM.Config.Network"),
    ("GET", "/nodes/{node}/lxc/{vmid}/firewall/rules", "vms", "VM.Audit"),
    ("POST", "/nodes/{node}/lxc/{vmid}/firewall/rules", "vms", "VM.Config.Network"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/firewall/rules/{pos}", "vms", "VM.Config.Network"),
)
# --- end firewall ----------------------------------------------------------------------------------

# --- RBAC per container role (security.access.rbac): only when the strategy enforces it --------------
# Users need Realm.AllocateUser on their realm and User.Modify on /access/groups (no group given); roles
# take Sys.Modify on /access; reading every ACL takes Sys.Audit on /access (ACL.pm read_acl); an ACL
# takes check_perm_modify on its path: VM.Allocate on /vms/<vmid> (needed anyway), Permissions.Modify
# elsewhere ("acl" -> the grants' other paths).
RBAC_CALLS: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/access/users", "access-groups", "User.Modify"),
    ("POST", "/access/users", "realm", "Realm.AllocateUser"),
    ("POST", "/access/users", "access-groups", "User.Modify"),
    ("DELETE", "/access/users/{userid}", "realm", "Realm.AllocateUser"),  # a role that left the strategy
    ("DELETE", "/access/users/{userid}", "access-groups", "User.Modify"),
    ("POST", "/access/users/{userid}/token/{tokenid}", "access-groups", "User.Modify"),
    ("DELETE", "/access/users/{userid}/token/{tokenid}", "access-groups", "User.Modify"),
    ("GET", "/access/roles", "access", "Sys.Audit"),
    ("POST", "/access/roles", "access", "Sys.Modify"),
    ("PUT", "/access/roles/{roleid}", "access", "Sys.Modify"),
    ("DELETE", "/access/roles/{roleid}", "access", "Sys.Modify"),
    ("GET", "/access/acl", "access", "Sys.Audit"),
    ("PUT", "/access/acl", "vms", "VM.Allocate"),
    ("PUT", "/access/acl", "acl", "Permissions.Modify"),
)

_WHY = {
    "VM.Audit": "see the guests and read their config",
    "VM.Allocate": "create and delete containers, set nesting",
    "VM.Config.CPU": "cores, cpulimit, cpuunits",
    "VM.Config.Memory": "memory, swap",
    "VM.Config.Network": "net0, hostname",
    "VM.Config.Options": "onboot, startup, tags, description",
    "VM.Config.Disk": "root disk, resize",
    "VM.PowerMgmt": "start, stop, shutdown",
    "VM.Snapshot": "update's snapshot before upgrading, its rollback and pruning",
    "VM.Migrate": "move a capped container to the node with most headroom, resource_exhaustion: migrate",
    "Sys.Audit": "node state and memory, cluster status",
    "Sys.Modify": "privileged containers (unprivileged: false); firewall IP sets, groups, datacenter options",
    "Datastore.Audit": "list and use templates",
    "Datastore.AllocateTemplate": "download a missing template",
    "Datastore.AllocateSpace": "allocate root disks",
    "SDN.Use": "attach net0 to the bridge/VLAN",
    "User.Modify": "the role users and their API tokens (security.access.rbac)",
    "Realm.AllocateUser": "create the role users in realm pve",
    "Permissions.Modify": "the role users' and tokens' ACLs",
}


@dataclass(frozen=True)
class Need:
    """One privilege on one ACL path."""

    path: str
    priv: str

    @property
    def why(self) -> str:
        if self.path == "/access":
            return {"Sys.Modify": "the PVEGuard* roles of the container roles (security.access.rbac)",
                    "Sys.Audit": "read the ACLs of the role users and tokens"}.get(self.priv, "")
        return _WHY.get(self.priv, "")


def bridge_path(bridge: str, vlan: int | None) -> str:
    """The ACL path PVE 8 checks SDN.Use on for net0 (check_vnet_access: the VLAN's own path when tagged)."""
    return f"/sdn/zones/localnetwork/{bridge}" + (f"/{vlan}" if vlan is not None else "")


def needs(specs: Iterable[GuestSpec], rootfs_storage: str, template_storage: str,
          firewall: bool = False, rbac_paths: Iterable[str] | None = None, migrate: bool = False) -> list[Need]:
    """Every privilege plan/apply of these guests needs, update's snapshots included (with `firewall`: the
    isolation calls too; with `rbac_paths`, the ACL paths of the role grants: the RBAC calls; with
    `migrate`: exhaustion's migration), deduplicated, in a stable order."""
    specs = list(specs)
    paths: dict[str, list[str]] = {"vms": ["/vms"], "nodes": ["/nodes"], "root": ["/"]}
    paths["rootfs"] = sorted({s.storage or rootfs_storage for s in specs} or {rootfs_storage})
    paths["rootfs"] = [f"/storage/{s}" for s in paths["rootfs"]]
    tmpl = {s.template.split(":", 1)[0] for s in specs if ":" in s.template}
    if any(":" not in s.template for s in specs) or not specs:
        tmpl.add(template_storage)
    paths["templates"] = [f"/storage/{s}" for s in sorted(tmpl)]
    paths["bridge"] = sorted({bridge_path(s.net.bridge, s.net.vlan) for s in specs})
    paths.update({"access": ["/access"], "access-groups": ["/access/groups"], "realm": ["/access/realm/pve"],
                  "acl": sorted(rbac_paths or [])})
    calls = CALLS + UPDATE_CALLS + (MIGRATE_CALLS if migrate else ()) + (FIREWALL_CALLS if firewall else ()) \
        + (RBAC_CALLS if rbac_paths is not None else ())
    out: dict[tuple[str, str], Need] = {}
    for _method, _path, kind, priv in calls:
        for p in paths[kind]:
            out.setdefault((p, priv), Need(p, priv))
    if any(not s.unprivileged for s in specs):
        out.setdefault(("/", "Sys.Modify"), Need("/", "Sys.Modify"))  # create_vm: privileged containers
    return list(out.values())


def lacking(needed: Iterable[Need], have: Mapping[str, Mapping[str, object]]) -> dict[str, list[Need]]:
    """The needs `have` (path -> privilege -> propagate, as GET /access/permissions?path= answers) lacks."""
    out: dict[str, list[Need]] = {}
    for n in needed:
        if n.priv not in have.get(n.path, {}):
            out.setdefault(n.path, []).append(n)
    return out


def grant_commands(authid: str, missing: Mapping[str, list[Need]], needed: Iterable[Need] = ()) -> list[str]:
    """The pveum commands (as root on a node) that grant what is missing: one role, one ACL per path.

    The role holds everything `needed` on those paths, not only what is missing there: a user's ACL on a
    path replaces the roles it inherited from above, so a role with only the missing privileges would
    take away the ones that were there. A token gets the ACL together with its user: a token without
    privilege separation has exactly its user's privileges, a separated one only those both hold.
    """
    privs = ",".join(sorted({n.priv for ns in missing.values() for n in ns}
                            | {n.priv for n in needed if n.path in missing}))
    who = f"--users '{authid}'"
    if "!" in authid:
        who = f"--users '{authid.split('!', 1)[0]}' --tokens '{authid}'"
    lines = [f'pveum role add {ROLE} --privs "{privs}" '
             f'(if it exists: pveum role modify {ROLE} --append 1 --privs "{privs}")']
    lines += [f"pveum acl modify {path} {who} --roles {ROLE}" for path in sorted(missing)]
    return lines


def describe_missing(authid: str, missing: Mapping[str, list[Need]]) -> str:
    """One line per path: which privileges are missing there and what they are for."""
    parts = []
    for path in sorted(missing):
        privs = ", ".join(f"{n.priv} ({n.why})" if n.why else n.priv for n in missing[path])
        parts.append(f"  {path}: {privs}")
    return f"{authid} lacks privileges that plan and apply need:\n" + "\n".join(parts)


def grant_hint(authid: str, missing: Mapping[str, list[Need]], needed: Iterable[Need] = ()) -> str:
    return "grant them as root on a PVE node:\n    " + "\n    ".join(grant_commands(authid, missing, needed))
