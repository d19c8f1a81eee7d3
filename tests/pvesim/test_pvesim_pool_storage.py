"""A pool's ACLs reach its storages as they reach its guests.

pve-access-control RPCEnvironment.pm compile_acl_path fills `poolroles` from each pool's `vms` and its
`storage` members: a member path gets the roles on /pool/<pool> (never propagating, never over the
path's NoAccess; a NoAccess on the pool trumps the path's own roles). GET /access/permissions lists the
members' paths (get_effective_permissions).
"""

from __future__ import annotations

from typing import Any

from pvesim.testing import SimHandle

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def _ok(sim: SimHandle, method: str, path: str, params: dict[str, Any] | None = None,
        token: str | None = None) -> Any:
    status, reason, body = sim.api(method, path, params, token=token)
    assert status == 200, (method, path, status, reason)
    return body["data"] if body else None


def _pool_user(sim: SimHandle) -> str:
    """ops@pve: PVEDatastoreUser and PVEVMAdmin on /pool/p1 (which holds the storage local-lvm),
    PVEDatastoreUser on /storage/local for the template; a token without privilege separation."""
    _ok(sim, "POST", "/pools", {"poolid": "p1"})
    _ok(sim, "PUT", "/pools/p1", {"storage": "local-lvm"})
    _ok(sim, "POST", "/access/users", {"userid": "ops@pve"})
    _ok(sim, "PUT", "/access/acl", {"path": "/pool/p1", "roles": "PVEDatastoreUser,PVEVMAdmin", "users": "ops@pve"})
    _ok(sim, "PUT", "/access/acl", {"path": "/storage/local", "roles": "PVEDatastoreUser", "users": "ops@pve"})
    data = _ok(sim, "POST", "/access/users/ops@pve/token/t1", {"privsep": 0})
    return f"{data['full-tokenid']}={data['value']}"


def test_a_pool_storage_gets_the_pool_roles_without_propagation(pvesim: SimHandle) -> None:
    tok = _pool_user(pvesim)
    got = _ok(pvesim, "GET", "/access/permissions", {"path": "/storage/local-lvm"}, token=tok)
    assert got["/storage/local-lvm"]["Datastore.AllocateSpace"] == 0
    assert got["/storage/local-lvm"]["Datastore.Audit"] == 0
    tree = _ok(pvesim, "GET", "/access/permissions", token=tok)
    assert "/storage/local-lvm" in tree
    assert [s["storage"] for s in _ok(pvesim, "GET", "/storage", token=tok)] == ["local", "local-lvm"]


def test_a_pool_user_creates_a_container_in_the_pool_on_its_storage(pvesim: SimHandle) -> None:
    tok = _pool_user(pvesim)
    upid = _ok(pvesim, "POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "pool": "p1",
                                                   "rootfs": "local-lvm:4", "memory": 512}, token=tok)
    assert upid.startswith("UPID:pve1:")


def test_a_storage_outside_the_pool_gets_nothing(pvesim: SimHandle) -> None:
    tok = _pool_user(pvesim)
    _ok(pvesim, "PUT", "/pools/p1", {"storage": "local-lvm", "delete": 1})
    status, reason, _ = pvesim.api("POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "pool": "p1",
                                                               "rootfs": "local-lvm:4"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)")


def test_noaccess_on_the_pool_trumps_the_storage_own_acl(pvesim: SimHandle) -> None:
    tok = _pool_user(pvesim)
    _ok(pvesim, "PUT", "/access/acl", {"path": "/storage/local-lvm", "roles": "PVEDatastoreAdmin", "users": "ops@pve"})
    assert "Datastore.Allocate" in _ok(pvesim, "GET", "/access/permissions", {"path": "/storage/local-lvm"},
                                       token=tok)["/storage/local-lvm"]
    _ok(pvesim, "POST", "/pools", {"poolid": "p2"})
    _ok(pvesim, "PUT", "/pools/p2", {"storage": "local-lvm"})
    _ok(pvesim, "PUT", "/access/acl", {"path": "/pool/p2", "roles": "NoAccess", "users": "ops@pve"})
    got = _ok(pvesim, "GET", "/access/permissions", {"path": "/storage/local-lvm"}, token=tok)
    assert got == {"/storage/local-lvm": {}}
