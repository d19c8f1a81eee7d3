"""`--pve-version 8.4|9.1`: each release routes and validates against its own schema and behaves as that
release does where pveguard's calls meet a difference.

Sources for the 9.x behaviour: pve-container commits 103068a ("api: create: default to unprivileged
containers") and 4cc73b7 ("create/restore: require Sys.Modify for privileged containers"), 6.0.6;
pve-manager 1804cdf1 ("api: cluster: add support for network resource type") and 8fd3420b ("api: node
status: add the available memory"); pve-container src/PVE/CLI/pct.pm (`keep-env` still defaults to 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from proxmoxer.tools import Tasks

from pvesim.schema import SchemaNotFoundError, find_schema, load_schema
from pvesim.testing import SimHandle, running, schema_available

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
FAST = {"vzcreate": 0.05, "vzstart": 0.05}
BOTH = pytest.mark.parametrize("version", ["8.4", "9.1"])


def _have(version: str) -> bool:
    try:
        find_schema(version)
        return True
    except SchemaNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not (schema_available() and _have("8.4") and _have("9.1")),
                                reason="both PVE API schemas (8.4, 9.1) are needed (set PVESIM_SCHEMA)")


def _wait(sim: SimHandle, upid: str) -> dict[str, Any]:
    return dict(Tasks.blocking_status(sim.proxmoxer(), upid, polling_interval=0.05))


def _create(sim: SimHandle, token: str | None = None, **extra: Any) -> tuple[int, str, Any]:
    return sim.api("POST", "/nodes/pve1/lxc", {"vmid": 300, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4", **extra},
                   token=token)


def _ops_token(sim: SimHandle, privs: str) -> str:
    """ops@pve with role `privs` on / (propagating); its privsep=0 token."""
    assert sim.api("POST", "/access/users", {"userid": "ops@pve"})[0] == 200
    assert sim.api("POST", "/access/roles", {"roleid": "Ops", "privs": privs})[0] == 200
    assert sim.api("PUT", "/access/acl", {"path": "/", "roles": "Ops", "users": "ops@pve"})[0] == 200
    data = sim.api("POST", "/access/users/ops@pve/token/t1", {"privsep": 0})[2]["data"]
    return f"{data['full-tokenid']}={data['value']}"


@BOTH
def test_version_and_node_status_name_the_release(version: str) -> None:
    with running(pve_version=version) as sim:
        got = sim.api("GET", "/version")[2]["data"]
        assert got["release"] == version and got["version"].startswith(version + ".")
        status = sim.api("GET", "/nodes/pve1/status")[2]["data"]
        assert status["pveversion"] == f"pve-manager/{got['version']}/{got['repoid']}"
        assert ("available" in status["memory"]) is (version == "9.1")  # pve-manager 9 adds it


@BOTH
def test_each_release_routes_only_its_own_endpoints(version: str) -> None:
    with running(pve_version=version) as sim:
        # bulk actions and HA rules exist only in 9.x; glusterfs scanning was dropped in 9.x (a routed
        # method validates its parameters: 400 without `server`; an unknown one is a 501)
        bulk = sim.api("GET", "/cluster/bulk-action")
        rules = sim.api("GET", "/cluster/ha/rules")
        gluster = sim.api("GET", "/nodes/pve1/scan/glusterfs")
        if version == "8.4":
            assert bulk[:2] == (501, "Method 'GET /cluster/bulk-action' not implemented")
            assert rules[:2] == (501, "Method 'GET /cluster/ha/rules' not implemented")
            assert gluster[:2] == (400, "Parameter verification failed.")
            assert gluster[2]["errors"] == {"server": "property is missing and it is not optional"}
        else:
            assert bulk[:2] == (200, "OK") and bulk[2]["data"] == [{"name": "guest"}]
            assert rules[:2] == (200, "OK")
            assert gluster[:2] == (501, "Method 'GET /nodes/pve1/scan/glusterfs' not implemented")


@BOTH
def test_parameters_validate_against_the_release_schema(version: str) -> None:
    """9.1 adds `env`/`entrypoint`/`ha-managed` on create and `host-managed` in net[n]; 8.4 refuses them."""
    with running(pve_version=version, task_seconds=FAST) as sim:
        status, reason, body = _create(sim, env="A=1", net0="name=eth0,bridge=vmbr0,ip=dhcp,host-managed=1",
                                       **{"ha-managed": 1})
        if version == "8.4":
            assert (status, reason) == (400, "Parameter verification failed.")
            assert set(body["errors"]) == {"env", "net0", "ha-managed"}
            assert "host-managed" in body["errors"]["net0"]
            return
        assert status == 200, reason
        assert _wait(sim, body["data"])["exitstatus"] == "OK"
        cfg = sim.api("GET", "/nodes/pve1/lxc/300/config")[2]["data"]
        assert cfg["env"] == "A=1" and "host-managed=1" in cfg["net0"] and "ha-managed" not in cfg
        assert [r["sid"] for r in sim.api("GET", "/cluster/ha/resources")[2]["data"]] == ["ct:300"]


@BOTH
def test_create_without_unprivileged_follows_the_release_default(version: str) -> None:
    with running(pve_version=version, task_seconds=FAST) as sim:
        status, reason, body = _create(sim)
        assert status == 200, reason
        assert _wait(sim, body["data"])["exitstatus"] == "OK"
        cfg = sim.api("GET", "/nodes/pve1/lxc/300/config")[2]["data"]
        assert cfg.get("unprivileged", 0) == (1 if version == "9.1" else 0)


@BOTH
def test_privileged_create_needs_sys_modify_on_root_only_in_9(version: str) -> None:
    privs = "VM.Allocate,VM.Config.Disk,VM.Config.Options,Datastore.AllocateSpace,Datastore.Audit"
    with running(pve_version=version, task_seconds=FAST) as sim:
        tok = _ops_token(sim, privs)
        status, reason, body = _create(sim, token=tok, unprivileged=0)
        if version == "9.1":
            assert (status, reason) == (403, "Permission check failed (/, Sys.Modify)")
            assert body == {"data": None, "message": "Permission check failed (/, Sys.Modify)\n"}
            # unprivileged (explicit, or the 9.x default) needs no Sys.Modify
            status, reason, body = _create(sim, token=tok)
        assert status == 200, reason
        assert _wait(sim, body["data"])["exitstatus"] == "OK"


@BOTH
def test_cluster_resources_list_localnetwork_as_the_release_does(version: str) -> None:
    with running(pve_version=version) as sim:
        rows = sim.api("GET", "/cluster/resources")[2]["data"]
        net = [r for r in rows if r["type"] in ("sdn", "network")]
        assert len(net) == 3  # one per node
        if version == "8.4":
            assert net[0] == {"id": "sdn/pve1/localnetwork", "type": "sdn", "sdn": "localnetwork", "node": "pve1",
                              "status": "ok"}
        else:
            assert net[0] == {"id": "network/pve1/zone/localnetwork", "type": "network", "network-type": "zone",
                              "network": "localnetwork", "node": "pve1", "status": "ok"}
            assert sim.api("GET", "/cluster/resources", {"type": "sdn"})[2]["data"] == []
            status, reason, _ = sim.api("GET", "/cluster/resources", {"type": "network"})
            assert (status, reason) == (400, "Parameter verification failed.")  # the filter has no 'network'
        enum = load_schema(version=version).methods[("GET", "/cluster/resources")].returns["items"]["properties"]
        assert {r["type"] for r in rows} <= set(enum["type"]["enum"])


@BOTH
def test_pct_behaves_as_the_release_pve_container(version: str) -> None:
    with running(pve_version=version) as sim:
        got = sim.control("POST", "/pct/default", {})
        assert got["version"] == ("5.3.5" if version == "8.4" else "6.1.3")
        assert got["keep_env"] == 1  # pct.pm: still `// 1` in 9.x (the FIXME to flip it was never done)


def test_two_releases_side_by_side_keep_their_own_schema() -> None:
    with running(pve_version="8.4", task_seconds=FAST) as old, running(pve_version="9.1", task_seconds=FAST) as new:
        assert _create(new, env="A=1")[0] == 200
        assert _create(old, env="A=1")[0] == 400
        assert _create(new, vmid=301, net0="name=eth0,bridge=vmbr0,host-managed=1")[0] == 200


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pvesim", "--port", "0", "--no-tls", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_cli_pve_version_flag() -> None:
    proc = _cli("--pve-version", "9.1")
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["pve_version"] == "9.1.9"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = _cli("--pve-version", "7.4")
    _out, err = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "invalid choice: '7.4'" in err and "Traceback" not in err


def test_cli_names_the_missing_schema_of_the_release(tmp_path: Path) -> None:
    (tmp_path / "pve-api-8.4.json").write_text("[]")  # only 8.4 in the folder PVESIM_SCHEMA names
    proc = _cli("--pve-version", "9.1", env={**os.environ, "PVESIM_SCHEMA": str(tmp_path)})
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"PVE 9.1 API schema not found (looked at: {tmp_path}/pve-api-9.1.json)" in err
