"""The order of PVE's answers for one call: the schema's permission check, then parameter validation,
then the method's own code -- where the quorum is needed.

pve-manager PVE/HTTPServer.pm rest_handler calls check_api2_permissions, then pve-common
PVE/RESTHandler.pm handle validates the parameters against the schema and runs the code, which checks
the quorum (pve-container API2/LXC.pm create_vm: PVE::Cluster::check_cfs_quorum) or fails writing /etc/pve.
"""

from __future__ import annotations

from pvesim.testing import SimHandle


def test_bad_parameters_are_a_400_even_without_quorum(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0)
    sim.control("POST", "/nodes/pve2", {"online": False})
    sim.control("POST", "/nodes/pve3", {"online": False})
    status, reason, body = sim.api("PUT", "/nodes/pve1/lxc/100/config", {"memory": "lots"})
    assert (status, reason) == (400, "Parameter verification failed.")
    assert body is not None and set(body["errors"]) == {"memory"}
    assert sim.api("PUT", "/nodes/pve1/lxc/100/config", {"memory": 1024})[:2] == (500, "cluster not ready - no quorum?")


def test_a_caller_without_privileges_gets_the_403_before_the_400(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0)
    assert sim.api("POST", "/access/users", {"userid": "ops@pve"})[0] == 200
    _s, _r, body = sim.api("POST", "/access/users/ops@pve/token/t1", {"privsep": 0})
    assert body is not None
    tok = f"{body['data']['full-tokenid']}={body['data']['value']}"
    status, reason, _ = sim.api("PUT", "/nodes/pve1/lxc/100/config", {"memory": "lots"}, token=tok)
    assert status == 403, reason


def test_an_or_check_fails_bare_and_require_param_needs_the_parameter(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    """pve-access-control RPCEnvironment.pm exec_api2_perm_check: the alternatives of an `or` run with
    noerr and a failing `or` is a bare `Permission check failed`; `require_param => 'pool'` fails
    without the parameter (clone: VM.Allocate on /vms/{newid} or /pool/{pool} -- only with a pool)."""
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0)
    assert sim.api("POST", "/access/users", {"userid": "ops@pve"})[0] == 200
    assert sim.api("POST", "/access/roles", {"roleid": "Cl", "privs": "VM.Clone,VM.Allocate"})[0] == 200
    # VM.Allocate on /pool only (propagating to /pool/, the path an absent {pool} makes), not on /vms/101
    assert sim.api("PUT", "/access/acl", {"path": "/vms/100", "roles": "Cl", "users": "ops@pve"})[0] == 200
    assert sim.api("PUT", "/access/acl", {"path": "/pool", "roles": "Cl", "users": "ops@pve"})[0] == 200
    _s, _r, body = sim.api("POST", "/access/users/ops@pve/token/t1", {"privsep": 0})
    assert body is not None
    tok = f"{body['data']['full-tokenid']}={body['data']['value']}"
    status, reason, _ = sim.api("POST", "/nodes/pve1/lxc/100/clone", {"newid": 101}, token=tok)
    assert (status, reason) == (403, "Permission check failed")
