"""Users, roles, ACL propagation, tokens with privilege separation, ticket renewal, filtered resources."""

from __future__ import annotations

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from pvesim.access import Access, AclEntry, PermError
from pvesim.testing import SimHandle


def _acl_table() -> Access:
    a = Access("pw", b"k" * 32)
    from pvesim.access import User

    a.users["bob@pve"] = User("bob@pve", groups={"ops"})
    a.groups["ops"] = {}
    a.acl = [
        AclEntry("/vms", "group", "ops", "PVEVMUser", 1),
        AclEntry("/vms/100", "user", "bob@pve", "PVEAuditor", 1),  # user ACL overrides group at that level
        AclEntry("/vms/200", "group", "ops", "NoAccess", 1),
        AclEntry("/storage", "user", "bob@pve", "PVEDatastoreUser", 0),  # not propagated
    ]
    a.add_token("bob@pve", "sep", privsep=1)
    a.add_token("bob@pve", "full", privsep=0)
    a.acl.append(AclEntry("/vms", "token", "bob@pve!sep", "PVEAuditor", 1))
    a.changed()
    return a


@pytest.mark.parametrize(
    ("authid", "path", "priv", "allowed"),
    [
        ("bob@pve", "/vms/101", "VM.PowerMgmt", True),  # group role propagates from /vms
        ("bob@pve", "/vms/100", "VM.PowerMgmt", False),  # user ACL on /vms/100 replaces the group's
        ("bob@pve", "/vms/100", "VM.Audit", True),
        ("bob@pve", "/vms/200", "VM.Audit", False),  # NoAccess wins
        ("bob@pve", "/storage", "Datastore.AllocateSpace", True),
        ("bob@pve", "/storage/local", "Datastore.AllocateSpace", False),  # propagate=0
        ("bob@pve!sep", "/vms/101", "VM.Audit", True),  # user ∩ token
        ("bob@pve!sep", "/vms/101", "VM.PowerMgmt", False),
        ("bob@pve!full", "/vms/101", "VM.PowerMgmt", True),  # privsep=0: same as user
        ("root@pam", "/anything", "Sys.Modify", True),
    ],
)
def test_acl_propagation(authid: str, path: str, priv: str, allowed: bool) -> None:
    assert _acl_table().allowed(authid, path, priv) is allowed


def test_perm_error_wording() -> None:
    with pytest.raises(PermError, match=r"^Permission check failed \(/vms/100, VM.PowerMgmt\)$"):
        _acl_table().check("bob@pve", "/vms/100", ["VM.PowerMgmt"])


def test_token_privsep_and_filtered_resources(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=10, seed=3)
    root = sim.proxmoxer()
    root.access.users.post(userid="mon@pve", password="monitor1")
    tok = root.access.users("mon@pve").token("ro").post(privsep=1)
    assert tok["full-tokenid"] == "mon@pve!ro" and tok["info"]["privsep"] == 1
    root.access.acl.put(path="/vms/101", roles="PVEAuditor", users="mon@pve")
    root.access.acl.put(path="/vms/102", roles="PVEAuditor", users="mon@pve")
    root.access.acl.put(path="/vms/102", roles="PVEAuditor", tokens="mon@pve!ro")
    user_px = ProxmoxAPI(sim.hostname, port=sim.port, user="mon@pve", password="monitor1", verify_ssl=sim.cafile)
    tok_px = ProxmoxAPI(
        sim.hostname,
        port=sim.port,
        user="mon@pve",
        token_name="ro",
        token_value=tok["value"],
        verify_ssl=sim.cafile,
    )
    assert sorted(r["vmid"] for r in user_px.cluster.resources.get(type="vm")) == [101, 102]
    assert [r["vmid"] for r in tok_px.cluster.resources.get(type="vm")] == [102]
    with pytest.raises(ResourceException) as ei:
        tok_px.nodes(root.cluster.resources.get(type="vm")[1]["node"]).lxc(101).status.current.get()
    assert ei.value.status_code == 403
    # a node entry without Sys.Audit carries no stats
    node = next(r for r in user_px.cluster.resources.get(type="node"))
    assert set(node) == {"id", "type", "node", "status"}


def test_ticket_renewal_with_ticket_as_password(pvesim: SimHandle) -> None:
    status, _r, body = pvesim.api("POST", "/access/ticket", {"username": "root@pam", "password": pvesim.password})
    assert status == 200 and body is not None
    first = body["data"]
    assert first["ticket"].startswith("PVE:root@pam:") and first["username"] == "root@pam"
    status, _r, body = pvesim.api("POST", "/access/ticket", {"username": "root@pam", "password": first["ticket"]})
    assert status == 200 and body is not None and body["data"]["ticket"].startswith("PVE:root@pam:")
    status, reason, _ = pvesim.api("POST", "/access/ticket", {"username": "root@pam", "password": "PVE:forged"})
    assert (status, reason) == (401, "authentication failure")


def test_builtin_roles_listed(pvesim: SimHandle) -> None:
    roles = {r["roleid"]: r for r in pvesim.proxmoxer().access.roles.get()}
    for rid in (
        "Administrator",
        "NoAccess",
        "PVEAdmin",
        "PVEAuditor",
        "PVEVMAdmin",
        "PVEVMUser",
        "PVEDatastoreUser",
        "PVEPoolAdmin",
        "PVEMappingUser",
        "PVETemplateUser",
    ):
        assert roles[rid]["special"] == 1
    assert "VM.PowerMgmt" in roles["PVEVMUser"]["privs"].split(",")


def test_bridge_needs_sdn_use(pvesim: SimHandle) -> None:
    root = pvesim.proxmoxer()
    root.access.users.post(userid="ops@pve", password="opspass1")
    tok = root.access.users("ops@pve").token("tk").post(privsep=0)
    root.access.acl.put(path="/vms", roles="PVEVMAdmin", users="ops@pve")
    root.access.acl.put(path="/storage", roles="PVEDatastoreUser", users="ops@pve")
    px = ProxmoxAPI(
        pvesim.hostname,
        port=pvesim.port,
        user="ops@pve",
        token_name="tk",
        token_value=tok["value"],
        verify_ssl=pvesim.cafile,
    )
    params = {
        "vmid": 300,
        "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        "rootfs": "local-lvm:4",
        "net0": "name=eth0,bridge=vmbr0,tag=20,ip=dhcp",
    }
    with pytest.raises(ResourceException) as ei:
        px.nodes("pve1").lxc.post(**params)
    assert (ei.value.status_code, ei.value.content) == (
        403,
        "Permission check failed (/sdn/zones/localnetwork/vmbr0/20, SDN.Use)",
    )
    root.access.acl.put(path="/sdn/zones/localnetwork/vmbr0", roles="PVESDNUser", users="ops@pve")
    assert px.nodes("pve1").lxc.post(**params).startswith("UPID:pve1:")
