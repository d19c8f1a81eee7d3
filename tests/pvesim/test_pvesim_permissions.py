"""GET /access/permissions answers as pve-access-control does (API2/AccessControl.pm `permissions`,
RPCEnvironment `permissions` / `get_effective_permissions`): propagate flags as values, the intersection
for privilege-separated tokens, the default path list, empty paths left out, Sys.Audit for others."""

from __future__ import annotations

from typing import Any

import pytest


def _ok(sim: Any, method: str, path: str, params: dict[str, Any] | None = None, token: str | None = None) -> Any:
    status, reason, body = sim.api(method, path, params, token=token)
    assert status == 200, (method, path, status, reason)
    return body["data"] if body else None


def _token(sim: Any, userid: str, tokenid: str, privsep: int = 1) -> str:
    data = _ok(sim, "POST", f"/access/users/{userid}/token/{tokenid}", {"privsep": privsep})
    return f"{data['full-tokenid']}={data['value']}"


@pytest.fixture
def ops(pvesim: Any) -> tuple[Any, str]:
    """ops@pve: PVEVMAdmin on /vms (propagating), PVEAuditor on /storage/local (this path only); its
    separated token: PVEVMUser on / (propagating)."""
    _ok(pvesim, "POST", "/access/users", {"userid": "ops@pve"})
    _ok(pvesim, "PUT", "/access/acl", {"path": "/vms", "roles": "PVEVMAdmin", "users": "ops@pve"})
    _ok(pvesim, "PUT", "/access/acl", {"path": "/storage/local", "roles": "PVEAuditor", "users": "ops@pve",
                                       "propagate": 0})
    tok = _token(pvesim, "ops@pve", "plan")
    _ok(pvesim, "PUT", "/access/acl", {"path": "/", "roles": "PVEVMUser", "tokens": "ops@pve!plan"})
    return pvesim, tok


def test_user_tree_has_propagate_flags_and_leaves_out_empty_paths(ops: tuple[Any, str]) -> None:
    sim, _tok = ops
    tree = _ok(sim, "GET", "/access/permissions", {"userid": "ops@pve"})
    assert set(tree) == {"/vms", "/storage/local"}  # '/', '/access', '/nodes'...: no privilege, left out
    assert tree["/vms"]["VM.Allocate"] == 1 and tree["/vms"]["VM.PowerMgmt"] == 1
    assert tree["/storage/local"] == {"Datastore.Audit": 0, "Mapping.Audit": 0, "Pool.Audit": 0,
                                      "SDN.Audit": 0, "Sys.Audit": 0, "VM.Audit": 0}


def test_separated_token_gets_the_intersection(ops: tuple[Any, str]) -> None:
    sim, tok = ops
    tree = _ok(sim, "GET", "/access/permissions", token=tok)  # its own: no Sys.Audit needed
    assert set(tree) == {"/vms", "/storage/local"}
    assert tree["/vms"] == {p: 1 for p in ("VM.Audit", "VM.Backup", "VM.Config.CDROM", "VM.Config.Cloudinit",
                                           "VM.Console", "VM.PowerMgmt")}
    assert tree["/storage/local"] == {"VM.Audit": 0}  # user flag 0 and token flag 1 -> 0
    # one path: dumped even when empty
    assert _ok(sim, "GET", "/access/permissions", {"path": "/nodes"}, token=tok) == {"/nodes": {}}
    assert _ok(sim, "GET", "/access/permissions", {"path": "/vms/100"}, token=tok)["/vms/100"]["VM.Audit"] == 1


def test_others_need_sys_audit_on_access(ops: tuple[Any, str]) -> None:
    sim, tok = ops
    status, reason, _ = sim.api("GET", "/access/permissions", {"userid": "root@pam"}, token=tok)
    assert (status, reason) == (403, "Permission check failed (/access, Sys.Audit)")
    root = _ok(sim, "GET", "/access/permissions", {"path": "/"}, token=None)
    assert root["/"]["Sys.Modify"] == 1 and root["/"]["Permissions.Modify"] == 1


def test_default_paths_for_a_full_token(pvesim: Any) -> None:
    _ok(pvesim, "POST", "/access/users", {"userid": "adm@pve"})
    _ok(pvesim, "PUT", "/access/acl", {"path": "/", "roles": "Administrator", "users": "adm@pve"})
    tok = _token(pvesim, "adm@pve", "all", privsep=0)
    tree = _ok(pvesim, "GET", "/access/permissions", token=tok)
    assert set(tree) == {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}


def test_acl_writes_take_check_perm_modify(ops: tuple[Any, str]) -> None:
    """RPCEnvironment.pm check_perm_modify: Permissions.Modify on the path, or VM.Allocate on /vms/<vmid>
    (Datastore.Allocate on /storage/<id>, Pool.Allocate on /pool/<id>); /vms itself takes Permissions.Modify."""
    sim, _tok = ops
    pw = _token(sim, "ops@pve", "full", privsep=0)  # ops@pve's own privileges: PVEVMAdmin on /vms
    _ok(sim, "POST", "/access/users", {"userid": "svc@pve"})
    _ok(sim, "PUT", "/access/acl", {"path": "/vms/100", "roles": "PVEAuditor", "users": "svc@pve"}, token=pw)
    status, reason, _ = sim.api("PUT", "/access/acl", {"path": "/vms", "roles": "PVEAuditor", "users": "svc@pve"},
                                token=pw)
    assert (status, reason) == (403, "Permission check failed (/vms, Permissions.Modify)")
    status, reason, _ = sim.api("PUT", "/access/acl", {"path": "/storage/local", "roles": "PVEAuditor",
                                                       "users": "svc@pve"}, token=pw)
    assert (status, reason) == (403, "Permission check failed (/storage/local, Permissions.Modify|Datastore.Allocate)")
    # read_acl: without Sys.Audit on /access, only the paths one may modify permissions on
    listed = {(e["path"], e["ugid"]) for e in _ok(sim, "GET", "/access/acl", token=pw)}
    assert ("/vms/100", "svc@pve") in listed and ("/vms", "ops@pve") not in listed
    assert ("/storage/local", "ops@pve") not in listed
