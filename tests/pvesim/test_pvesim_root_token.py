"""What counts as root: the user root@pam itself, never a token of it.

PVE's root-only checks compare the auth id with `root@pam` (pve-access-control RPCEnvironment.pm
check_api2_permissions; pve-container API2/LXC/Status.pm skiplock, LXC.pm check_ct_modify_config_perm;
pve-manager API2/Backup.pm assert_param_permission_common), and a token's auth id is
`root@pam!<tokenid>`. A root@pam token without privilege separation still has every privilege
(RPCEnvironment.pm permissions: its user's), so ordinary privilege checks pass for it.
"""

from __future__ import annotations

import pytest
from proxmoxer.core import ResourceException

from infra.simct import TEMPLATE, create_ct, wait_task
from pvesim.testing import SimHandle


def test_the_root_token_is_refused_skiplock_root_pam_is_not(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    status, reason, body = pvesim.api("POST", "/nodes/pve1/lxc/300/status/start", {"skiplock": 1})
    assert (status, reason) == (400, "Parameter verification failed.")
    assert body is not None and body["errors"] == {"skiplock": "Only root may use this option."}
    upid = pvesim.proxmoxer("password").nodes("pve1").lxc(300).status.start.post(skiplock=1)
    assert wait_task(pvesim, upid)["exitstatus"] == "OK"


def test_the_root_token_may_not_bind_mount_or_pass_devices(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"mp0": "/srv/data,mp=/data"})
    assert (status, reason) == (403, "Permission check failed (mount point type bind is only allowed for root@pam)")
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"dev0": "/dev/fuse"})
    assert (status, reason) == (403, "Permission check failed (configuring device passthrough is only allowed "
                                     "for root@pam)")
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"hookscript": "local:snippets/h.pl"})
    assert (status, reason) == (403, "Permission check failed (changing the hookscript is only allowed for root@pam)")
    px = pvesim.proxmoxer("password")
    px.nodes("pve1").lxc(300).config.put(mp0="/srv/data,mp=/data")
    assert px.nodes("pve1").lxc(300).config.get()["mp0"].startswith("/srv/data")


def test_the_root_token_may_not_set_root_only_backup_options(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    status, _reason, body = pvesim.api("POST", "/nodes/pve1/vzdump", {"vmid": 300, "tmpdir": "/var/tmp"})
    assert status == 400
    assert body is not None and body["errors"] == {"tmpdir": "Only root may set this option."}


def test_the_root_token_still_has_every_privilege(pvesim: SimHandle) -> None:
    """Not root for the root-only checks, but privsep=0: root@pam's privileges, so everything else works."""
    create_ct(pvesim, memory=1024, net0="name=eth0,bridge=vmbr0,ip=dhcp")
    assert pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"cores": 2, "swap": 0})[0] == 200
    _s, _r, body = pvesim.api("GET", "/access/permissions", {"path": "/"})
    assert body is not None and body["data"]["/"]["Sys.Modify"] == 1


def test_a_separated_root_token_has_only_its_own_acls(pvesim: SimHandle) -> None:
    px = pvesim.proxmoxer("password")
    data = px.access.users("root@pam").token("sep").post(privsep=1)
    tok = f"{data['full-tokenid']}={data['value']}"
    status, reason, _ = pvesim.api("POST", "/nodes/pve1/lxc", {"vmid": 301, "ostemplate": TEMPLATE}, token=tok)
    assert (status, reason) == (403, "Permission check failed")


def test_methods_without_permissions_are_root_pam_s_alone(pvesim: SimHandle) -> None:
    """check_api2_permissions: no `permissions` in the schema -> `raise_perm_exc('user != root@pam')`
    for every auth id but root@pam (GET /cluster/backup-info has none in PVE 8.4)."""
    status, reason, _ = pvesim.api("GET", "/cluster/backup-info")
    assert (status, reason) == (403, "Permission check failed (user != root@pam)")
    with pytest.raises(ResourceException) as ei:
        pvesim.proxmoxer().cluster("backup-info").get()
    assert ei.value.status_code == 403
    assert isinstance(pvesim.proxmoxer("password").cluster("backup-info").get(), list)
