"""Container create and config update check privileges key by key, in PVE's order.

pve-container src/PVE/API2/LXC.pm create_vm (PVE 8, stable-bookworm): VM.Allocate on /vms/<vmid> or
the pool (else a bare `Permission check failed`), then LXC.pm check_ct_modify_config_perm for every
option (CPU, Memory, Network + SDN.Use on the bridge, Disk + Datastore.AllocateSpace for a new volume
or check_volume_access for an existing one, Options for the rest; with the pool), then the template's
check_volume_access (Datastore.Allocate, or AllocateSpace or Audit for a vztmpl), and only then what
the storages support (check_and_activate_storage: a 400 for a storage without `rootdir`).
API2/LXC/Config.pm update_vm: the same per-key check, deleted keys first.
"""

from __future__ import annotations

from typing import Any

import pytest
from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
VM_CONFIG = ["VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Disk", "VM.Config.Options"]


def _ok(sim: SimHandle, method: str, path: str, params: dict[str, Any] | None = None,
        token: str | None = None) -> Any:
    status, reason, body = sim.api(method, path, params, token=token)
    assert status == 200, (method, path, status, reason)
    return body["data"] if body else None


def _wait(sim: SimHandle, upid: str) -> dict[str, Any]:
    return dict(Tasks.blocking_status(sim.proxmoxer(), upid, polling_interval=0.05))


def _user(sim: SimHandle, acls: dict[str, list[str]]) -> str:
    """ops@pve with a role of exactly `privs` on each path (propagating); its privsep=0 token."""
    _ok(sim, "POST", "/access/users", {"userid": "ops@pve"})
    for n, (path, privs) in enumerate(sorted(acls.items())):
        _ok(sim, "POST", "/access/roles", {"roleid": f"R{n}", "privs": ",".join(privs)})
        _ok(sim, "PUT", "/access/acl", {"path": path, "roles": f"R{n}", "users": "ops@pve"})
    data = _ok(sim, "POST", "/access/users/ops@pve/token/t1", {"privsep": 0})
    return f"{data['full-tokenid']}={data['value']}"


def _full(over: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Everything a create needs; `over` replaces (or, when empty, drops) the privileges of a path."""
    acls = {"/vms": ["VM.Allocate", *VM_CONFIG], "/storage/local": ["Datastore.Audit"],
            "/storage/local-lvm": ["Datastore.AllocateSpace"], "/sdn/zones/localnetwork": ["SDN.Use"]}
    acls.update(over or {})
    return {k: v for k, v in acls.items() if v}


CREATE = {"vmid": 300, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4", "memory": 512, "cores": 1,
          "net0": "name=eth0,bridge=vmbr0,ip=dhcp", "hostname": "ct300"}


def _create(sim: SimHandle, tok: str, **over: Any) -> tuple[int, str, Any]:
    return sim.api("POST", "/nodes/pve1/lxc", {**CREATE, **over}, token=tok)


def test_create_with_every_privilege_works(pvesim: SimHandle) -> None:
    tok = _user(pvesim, _full())
    status, reason, body = _create(pvesim, tok)
    assert status == 200, reason
    assert _wait(pvesim, body["data"])["exitstatus"] == "OK"


@pytest.mark.parametrize("missing", VM_CONFIG)
def test_create_checks_each_option(pvesim: SimHandle, missing: str) -> None:
    """memory -> Memory, cores -> CPU, net0/hostname -> Network, rootfs -> Disk, onboot -> Options."""
    tok = _user(pvesim, _full({"/vms": [p for p in ["VM.Allocate", *VM_CONFIG] if p != missing]}))
    status, reason, _ = _create(pvesim, tok, onboot=1)
    assert (status, reason) == (403, f"Permission check failed (/vms/300, {missing})")


def test_create_in_a_pool_may_use_the_pool_privileges(pvesim: SimHandle) -> None:
    _ok(pvesim, "POST", "/pools", {"poolid": "p1"})
    acls = _full({"/vms": [], "/pool/p1": ["VM.Allocate", *VM_CONFIG]})
    tok = _user(pvesim, acls)
    assert _create(pvesim, tok, pool="p1")[0] == 200


def test_the_template_needs_allocatespace_or_audit(pvesim: SimHandle) -> None:
    tok = _user(pvesim, _full({"/storage/local": ["Datastore.AllocateSpace"]}))
    status, reason, _ = _create(pvesim, tok)
    assert status == 200, reason


def test_the_template_without_either_is_refused_with_both_named(pvesim: SimHandle) -> None:
    tok = _user(pvesim, _full({"/storage/local": ["VM.Audit"]}))
    status, reason, _ = _create(pvesim, tok)
    assert (status, reason) == (
        403, "Permission check failed (/storage/local, Datastore.AllocateSpace|Datastore.Audit)")


def test_without_vm_allocate_the_answer_names_nothing(pvesim: SimHandle) -> None:
    acls = _full()
    acls["/vms"] = VM_CONFIG
    tok = _user(pvesim, acls)
    assert _create(pvesim, tok)[:2] == (403, "Permission check failed")
    assert _create(pvesim, tok, pool="nope")[:2] == (403, "Permission check failed (pool 'nope' does not exist)")


def test_the_bridge_needs_sdn_use(pvesim: SimHandle) -> None:
    tok = _user(pvesim, _full({"/sdn/zones/localnetwork": []}))
    status, reason, _ = _create(pvesim, tok)
    assert (status, reason) == (403, "Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)")


def test_privileges_come_before_what_the_storage_supports(pvesim: SimHandle) -> None:
    """`local` (dir) holds no container volumes: a user who may not allocate there learns that from a
    403 (check_ct_modify_config_perm), one who may gets the 400 of check_and_activate_storage."""
    tok = _user(pvesim, _full())
    status, reason, _ = _create(pvesim, tok, rootfs="local:4")
    assert (status, reason) == (403, "Permission check failed (/storage/local, Datastore.AllocateSpace)")
    _ok(pvesim, "PUT", "/access/acl", {"path": "/storage/local", "roles": "PVEDatastoreUser", "users": "ops@pve"})
    status, _reason, body = _create(pvesim, tok, rootfs="local:4")
    assert status == 400
    assert body["errors"] == {"storage": "storage 'local' does not support container directories"}


def test_update_checks_new_volumes_and_other_guests_volumes(pvesim: SimHandle) -> None:
    for vmid in (300, 301):
        upid = _ok(pvesim, "POST", "/nodes/pve1/lxc", {"vmid": vmid, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4"})
        assert _wait(pvesim, upid)["exitstatus"] == "OK"
    tok = _user(pvesim, {"/vms/300": ["VM.Config.Disk", "VM.Config.Options"]})
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"mp0": "local-lvm:1,mp=/data"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)")
    other = pvesim.proxmoxer().nodes("pve1").lxc(301).config.get()["rootfs"].split(",")[0]
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"mp1": f"{other},mp=/x"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/storage/local-lvm, Datastore.Audit)")


def test_update_deleting_an_unused_volume_is_an_option_change(pvesim: SimHandle) -> None:
    """`unusedN` is none of the keys check_ct_modify_config_perm names: VM.Config.Options."""
    upid = _ok(pvesim, "POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4",
                                                   "mp0": "local-lvm:1,mp=/data"})
    assert _wait(pvesim, upid)["exitstatus"] == "OK"
    _ok(pvesim, "PUT", "/nodes/pve1/lxc/300/config", {"delete": "mp0"})
    tok = _user(pvesim, {"/vms/300": ["VM.Config.Disk"]})
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"delete": "unused0"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/vms/300, VM.Config.Options)")


def test_a_bare_size_is_a_path_for_everyone_but_root_pam(pvesim: SimHandle) -> None:
    """check_ct_modify_config_perm reads `rootfs: 4` as a volume without storage: check_volume_access
    lets only root@pam pass such a path (create_vm prefixes the default storage only afterwards)."""
    tok = _user(pvesim, _full())
    status, reason, _ = _create(pvesim, tok, rootfs="4", storage="local-lvm")
    assert (status, reason) == (500, "Only root can pass arbitrary filesystem paths.")



def test_clone_takes_vm_allocate_from_the_pool_and_checks_the_storage(pvesim: SimHandle) -> None:
    """pve-container API2/LXC.pm clone_vm: the schema asks VM.Clone on the source and VM.Allocate on
    /vms/{newid} or /pool/{pool}; the code asks Datastore.AllocateSpace on every volume's storage."""
    upid = _ok(pvesim, "POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4"})
    assert _wait(pvesim, upid)["exitstatus"] == "OK"
    _ok(pvesim, "POST", "/pools", {"poolid": "p1"})
    tok = _user(pvesim, {"/vms/300": ["VM.Clone"], "/pool/p1": ["VM.Allocate"]})
    status, reason, _ = pvesim.api("POST", "/nodes/pve1/lxc/300/clone", {"newid": 301, "pool": "p1"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)")
    _ok(pvesim, "PUT", "/access/acl", {"path": "/storage/local-lvm", "roles": "PVEDatastoreUser", "users": "ops@pve"})
    status, reason, body = pvesim.api("POST", "/nodes/pve1/lxc/300/clone", {"newid": 301, "pool": "p1"}, token=tok)
    assert status == 200, reason
    assert _wait(pvesim, body["data"])["exitstatus"] == "OK"


def test_restoring_another_guest_backup_needs_its_vm_backup(pvesim: SimHandle) -> None:
    """pve-storage Storage.pm check_volume_access for a backup owned by another guest:
    Datastore.AllocateSpace on the storage and VM.Backup on the owner."""
    upid = _ok(pvesim, "POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4"})
    assert _wait(pvesim, upid)["exitstatus"] == "OK"
    assert _wait(pvesim, _ok(pvesim, "POST", "/nodes/pve1/vzdump", {"vmid": 300, "storage": "local"}))[
        "exitstatus"] == "OK"
    backup = next(v["volid"] for v in _ok(pvesim, "GET", "/nodes/pve1/storage/local/content", {"content": "backup"}))
    tok = _user(pvesim, _full({"/storage/local": ["Datastore.AllocateSpace"]}))
    status, reason, _ = _create(pvesim, tok, vmid=301, ostemplate=backup, restore=1)
    assert (status, reason) == (403, "Permission check failed (/vms/300, VM.Backup)")
