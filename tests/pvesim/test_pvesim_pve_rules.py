"""pvesim answers as PVE does where pveguard depends on it: resize to the current size, feature flags
only for root@pam, `pct exec --keep-env`, and injected malformed / lost answers.

Sources: pve-container src/PVE/API2/LXC.pm resize_vm, src/PVE/LXC.pm check_ct_modify_config_perm,
src/PVE/CLI/pct.pm exec; pve-access-control AccessControl.pm verify_token.
"""

from __future__ import annotations

import subprocess

import pytest
from proxmoxer.core import ResourceException

from infra.simct import TEMPLATE, create_ct, wait_task
from pvesim.testing import SimHandle

KEYCTL_403 = "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)"


def _user_token(sim: SimHandle, privs: str) -> str:
    """A non-root user's API token (privsep 0) with a role of `privs` on /."""
    assert sim.api("POST", "/access/roles", {"roleid": "Ops", "privs": privs})[0] == 200
    assert sim.api("POST", "/access/users", {"userid": "ops@pve"})[0] == 200
    _s, _r, body = sim.api("POST", "/access/users/ops@pve/token/t1", {"privsep": 0})
    assert body is not None
    assert sim.api("PUT", "/access/acl", {"path": "/", "roles": "Ops", "users": "ops@pve"})[0] == 200
    return f"ops@pve!t1={body['data']['value']}"


# --- resize ---------------------------------------------------------------------------------------


def test_resize_to_the_current_size_is_refused_before_the_task(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    status, reason, body = pvesim.api("PUT", "/nodes/pve1/lxc/300/resize", {"disk": "rootfs", "size": "4G"})
    assert (status, reason) == (500, "disk is already at specified size")
    assert body == {"data": None, "message": "disk is already at specified size\n"}
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/resize", {"disk": "rootfs", "size": "3G"})
    assert (status, reason) == (500, "unable to shrink disk size")


def test_two_resizes_to_one_size_race_and_the_second_task_fails(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    pvesim.control("POST", "/tasks", {"seconds": {"resize": 5}})
    ups = [pvesim.api("PUT", "/nodes/pve1/lxc/300/resize", {"disk": "rootfs", "size": "8G"})[2] for _ in range(2)]
    pvesim.control("POST", "/tasks/finish")
    results = [wait_task(pvesim, str(b["data"]))["exitstatus"] for b in ups if b]
    assert results == ["OK", "disk is already at specified size"]


# --- feature flags --------------------------------------------------------------------------------


def test_a_root_pam_token_may_not_change_features_other_than_nesting(pvesim: SimHandle) -> None:
    create_ct(pvesim, unprivileged=1, features="nesting=1")
    # the root token is "root@pam!pvesim", not "root@pam": PVE refuses it like any other user
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=1,keyctl=1"})
    assert (status, reason) == (403, KEYCTL_403)
    status, reason, _ = pvesim.api("POST", "/nodes/pve1/lxc", {"vmid": 301, "ostemplate": TEMPLATE,
                                                               "storage": "local-lvm", "unprivileged": 1,
                                                               "features": "keyctl=1"})
    assert (status, reason) == (403, KEYCTL_403)
    assert pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=0"})[0] == 200  # nesting only
    assert pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=0"})[0] == 200  # unchanged


def test_root_pam_itself_may_change_every_feature(pvesim: SimHandle) -> None:
    create_ct(pvesim, unprivileged=1)
    px = pvesim.proxmoxer("password")
    px.nodes("pve1").lxc(300).config.put(features="nesting=1,keyctl=1,fuse=1")
    got = px.nodes("pve1").lxc(300).config.get()["features"]
    assert sorted(got.split(",")) == ["fuse=1", "keyctl=1", "nesting=1"]


def test_privileged_containers_take_features_only_from_root_pam(pvesim: SimHandle) -> None:
    create_ct(pvesim, unprivileged=0)  # explicit: PVE 9 creates unprivileged ones by default
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=1"})
    assert (status, reason) == (
        403, "Permission check failed (changing feature flags for privileged container is only allowed for root@pam)")


def test_nesting_alone_needs_vm_allocate(pvesim: SimHandle) -> None:
    create_ct(pvesim, unprivileged=1)
    token = _user_token(pvesim, "VM.Audit,VM.Config.Options")  # no VM.Allocate
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=1"}, token=token)
    assert (status, reason) == (403, "Permission check failed (/vms/300, VM.Allocate)")
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"delete": "features"}, token=token)
    assert status == 200, reason  # nothing set, nothing changed
    assert pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"features": "nesting=1"})[0] == 200
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"delete": "features"}, token=token)
    assert (status, reason) == (403, "Permission check failed (/vms/300, VM.Allocate)")


# --- pct exec --keep-env --------------------------------------------------------------------------


def _pct(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pct", *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def running_ct(pvesim: SimHandle) -> dict[str, str]:
    create_ct(pvesim, start=1)
    return {**pvesim.env(), "CALLER_SECRET": "s3cret", "SSL_CERT_FILE": "/etc/x.pem"}


def test_pct_exec_passes_the_callers_environment_by_default(pvesim: SimHandle, running_ct: dict[str, str]) -> None:
    r = _pct(running_ct, "exec", "300", "--", "env")
    assert r.returncode == 0 and "CALLER_SECRET=s3cret" in r.stdout
    assert "\nSSL_CERT_FILE=" not in "\n" + r.stdout  # pct's clean_environment drops it even then


@pytest.mark.parametrize("opt", [["--keep-env", "0"], ["--keep-env=0"], ["-keep-env", "no"]])
def test_pct_exec_keep_env_0_clears_it(pvesim: SimHandle, running_ct: dict[str, str], opt: list[str]) -> None:
    r = _pct(running_ct, "exec", "300", *opt, "--", "env")
    assert (r.returncode, r.stdout) == (0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                                           "container=lxc\n")
    assert pvesim.control("GET", "/pct/log")[-1]["env"] == {
        "container": "lxc", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_pct_exec_keep_env_without_value_and_bad_values(pvesim: SimHandle, running_ct: dict[str, str]) -> None:
    assert "CALLER_SECRET" in _pct(running_ct, "exec", "300", "--keep-env", "--", "env").stdout
    r = _pct(running_ct, "exec", "300", "--keep-env", "maybe", "--", "env")
    assert (r.returncode, r.stderr) == (255, "unable to parse boolean option\n")


def test_pct_before_5_0_9_does_not_know_keep_env(pvesim: SimHandle, running_ct: dict[str, str]) -> None:
    pvesim.control("POST", "/pct/default", {"version": "5.0.8"})
    r = _pct(running_ct, "exec", "300", "--keep-env", "0", "--", "true")
    assert (r.returncode, r.stderr) == (255, "Unknown option: keep-env\nunable to parse option\n")
    assert _pct(running_ct, "exec", "300", "--", "true").returncode == 0


# --- injected answers -----------------------------------------------------------------------------


def test_fault_data_answers_a_malformed_200(pvesim: SimHandle) -> None:
    pvesim.control("POST", "/faults", {"path": "^/cluster/resources$", "data": None, "times": 1})
    assert pvesim.api("GET", "/cluster/resources") == (200, "OK", {"data": None})
    assert isinstance(pvesim.api("GET", "/cluster/resources")[2]["data"], list)  # type: ignore[index]


def test_fault_after_lets_the_call_happen_and_loses_the_answer(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    pvesim.control("POST", "/faults", {"method": "PUT", "path": "/config$", "status": 596, "message": "Broken pipe",
                                       "after": True, "times": 1})
    status, reason, _ = pvesim.api("PUT", "/nodes/pve1/lxc/300/config", {"memory": 1024})
    assert (status, reason) == (596, "Broken pipe")
    assert pvesim.api("GET", "/nodes/pve1/lxc/300/config")[2]["data"]["memory"] == 1024  # type: ignore[index]


def test_proxmoxer_sees_the_resize_refusal_in_the_reason(pvesim: SimHandle) -> None:
    create_ct(pvesim)
    with pytest.raises(ResourceException) as ei:
        pvesim.proxmoxer().nodes("pve1").lxc(300).resize.put(disk="rootfs", size="4G")
    assert (ei.value.status_code, ei.value.content) == (500, "disk is already at specified size")
