"""PVE's error cases over real HTTP: exact status line (code + reason phrase) and JSON body."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from pvesim.testing import SimHandle, running, schema_available

pytestmark = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found (set PVESIM_SCHEMA)")

NOT_DEFINED = "property is not defined in schema and the schema does not allow additional properties"
TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with running(nodes=3, task_seconds={"vzcreate": 0, "vzstart": 0, "vzstop": 0}) as h:
        # 200: stopped CT on pve1; 201: running CT on pve1; 202: locked (backup); 203: CT on pve3
        for vmid in (200, 201, 202):
            st, _r, _b = h.api(
                "POST", "/nodes/pve1/lxc", {"vmid": vmid, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4"}
            )
            assert st == 200
        h.api("POST", "/nodes/pve1/lxc/201/status/start")
        h.control("POST", "/locks/202", {"lock": "backup"})
        h.api("POST", "/nodes/pve3/lxc", {"vmid": 203, "ostemplate": TEMPLATE, "rootfs": "local-lvm:4"})
        h.api("POST", "/access/users", {"userid": "alice@pve", "password": "alicepw1"})
        yield h


def raw(
    sim: SimHandle,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> tuple[int, str, bytes]:
    """One request on a fresh connection: (status, reason phrase, raw body)."""
    ctx = ssl.create_default_context(cafile=sim.cafile)
    conn = http.client.HTTPSConnection(sim.hostname, sim.port, context=ctx, timeout=10)
    q = urlencode(params or {})
    h = dict(headers or {})
    if auth:
        h.setdefault("Authorization", f"PVEAPIToken={sim.token}")
    body = None
    url = "/api2/json" + path
    if method in ("GET", "DELETE"):
        url += ("?" + q) if q else ""
    else:
        body = q
        h["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, url, body=body, headers=h)
    r = conn.getresponse()
    out = (r.status, r.reason, r.read())
    conn.close()
    return out


def digest(sim: SimHandle, vmid: int) -> str:
    return str(sim.api("GET", f"/nodes/pve1/lxc/{vmid}/config")[2]["data"]["digest"])


CASES: list[tuple[str, str, str, dict[str, Any], int, str, dict[str, Any] | None]] = [
    # name, method, path, params, status, reason, expected JSON body (None = empty body)
    (
        "validation-bool",
        "POST",
        "/nodes/pve1/lxc/200/status/start",
        {"skiplock": "True"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"skiplock": "type check ('boolean') failed - got 'True'"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "validation-missing-extra",
        "POST",
        "/nodes/pve1/lxc",
        {"vmid": "99", "bogus": "1"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {
                "vmid": "value must have a minimum value of 100",
                "bogus": NOT_DEFINED,
                "ostemplate": "property is missing and it is not optional",
            },
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "validation-propstring",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {"net0": "name=eth0,tag=5000"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"net0": "invalid format - format error\nnet0.tag: value must have a maximum value of 4094"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "validation-enum",
        "GET",
        "/cluster/resources",
        {"type": "bogus"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"type": "value 'bogus' does not have a value in the enumeration 'vm, storage, node, sdn'"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "digest-mismatch",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {"memory": "1024", "digest": "0" * 40},
        500,
        "detected modified configuration - file changed by other user? Try again.",
        {
            "data": None,
            "message": "detected modified configuration - file changed by other user? Try again.\n",
        },
    ),
    (
        "locked",
        "PUT",
        "/nodes/pve1/lxc/202/config",
        {"memory": "1024"},
        500,
        "CT is locked (backup)",
        {"data": None, "message": "CT is locked (backup)\n"},
    ),
    (
        "already-exists",
        "POST",
        "/nodes/pve2/lxc",
        {"vmid": "200", "ostemplate": TEMPLATE},
        500,
        "CT 200 already exists on node 'pve1'",
        {"data": None, "message": "CT 200 already exists on node 'pve1'\n"},
    ),
    (
        "already-running",
        "POST",
        "/nodes/pve1/lxc/201/status/start",
        {},
        500,
        "CT 201 already running",
        {"data": None, "message": "CT 201 already running\n"},
    ),
    (
        "not-running",
        "POST",
        "/nodes/pve1/lxc/200/status/stop",
        {},
        500,
        "CT 200 not running",
        {"data": None, "message": "CT 200 not running\n"},
    ),
    (
        "reboot-not-running",
        "POST",
        "/nodes/pve1/lxc/200/status/reboot",
        {},
        500,
        "VM 200 not running",
        {"data": None, "message": "VM 200 not running\n"},
    ),
    (
        "read-only-option",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {"unprivileged": "0"},
        500,
        "unable to modify read-only option: 'unprivileged'",
        {"data": None, "message": "unable to modify read-only option: 'unprivileged'\n"},
    ),
    (
        "delete-required",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {"delete": "memory"},
        500,
        "unable to delete required option 'memory'",
        {"data": None, "message": "unable to delete required option 'memory'\n"},
    ),
    (
        "delete-unknown",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {"delete": "bogus"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"delete": "unknown option 'bogus'"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "no-options",
        "PUT",
        "/nodes/pve1/lxc/200/config",
        {},
        500,
        "no options specified",
        {"data": None, "message": "no options specified\n"},
    ),
    (
        "missing-config",
        "GET",
        "/nodes/pve1/lxc/999/config",
        {},
        500,
        "Configuration file 'nodes/pve1/lxc/999.conf' does not exist",
        {"data": None, "message": "Configuration file 'nodes/pve1/lxc/999.conf' does not exist\n"},
    ),
    (
        "wrong-node-config",
        "GET",
        "/nodes/pve1/lxc/203/config",
        {},
        500,
        "Configuration file 'nodes/pve1/lxc/203.conf' does not exist",
        {"data": None, "message": "Configuration file 'nodes/pve1/lxc/203.conf' does not exist\n"},
    ),
    (
        "destroy-running",
        "DELETE",
        "/nodes/pve1/lxc/201",
        {},
        500,
        "unable to destroy CT 201 - container is running",
        {"data": None, "message": "unable to destroy CT 201 - container is running\n"},
    ),
    (
        "migrate-local",
        "POST",
        "/nodes/pve1/lxc/200/migrate",
        {"target": "pve1"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"target": "target is local node."},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "migrate-running",
        "POST",
        "/nodes/pve1/lxc/201/migrate",
        {"target": "pve2"},
        500,
        "can't migrate running container without --online or --restart",
        {"data": None, "message": "can't migrate running container without --online or --restart\n"},
    ),
    (
        "nextid-taken",
        "GET",
        "/cluster/nextid",
        {"vmid": "200"},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"vmid": "VM 200 already exists"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "storage-no-rootdir",
        "POST",
        "/nodes/pve1/lxc",
        {"vmid": "210", "ostemplate": TEMPLATE},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"storage": "storage 'local' does not support container directories"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "bad-upid",
        "GET",
        "/nodes/pve1/tasks/UPID:bogus/status",
        {},
        400,
        "Parameter verification failed.",
        {
            "data": None,
            "errors": {"upid": "unable to parse worker upid"},
            "message": "Parameter verification failed.\n",
        },
    ),
    (
        "no-such-task",
        "GET",
        "/nodes/pve1/tasks/UPID:pve1:00001234:00001234:00001234:vzstart:200:root@pam:/status",
        {},
        400,
        "Parameter verification failed.",
        {"data": None, "errors": {"upid": "no such task"}, "message": "Parameter verification failed.\n"},
    ),
    (
        "unknown-path",
        "GET",
        "/nodes/pve1/bogus",
        {},
        501,
        "Method 'GET /nodes/pve1/bogus' not implemented",
        {"data": None, "message": "Method 'GET /nodes/pve1/bogus' not implemented\n"},
    ),
    (
        "unknown-method",
        "DELETE",
        "/cluster/resources",
        {},
        501,
        "Method 'DELETE /cluster/resources' not implemented",
        {"data": None, "message": "Method 'DELETE /cluster/resources' not implemented\n"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_table(sim: SimHandle, case: tuple[Any, ...]) -> None:
    _name, method, path, params, status, reason, body = case
    st, rs, raw_body = raw(sim, method, path, params)
    assert (st, rs) == (status, reason)
    assert (json.loads(raw_body) if raw_body else None) == body


def test_401_no_ticket_and_bad_token(sim: SimHandle) -> None:
    assert raw(sim, "GET", "/nodes", auth=False) == (401, "No ticket", b"")
    bad = {"Authorization": "PVEAPIToken=root@pam!pvesim=00000000-0000-0000-0000-000000000000"}
    assert raw(sim, "GET", "/nodes", headers=bad) == (401, "Authentication failed!", b"")
    forged = {"Cookie": "PVEAuthCookie=PVE:root@pam:65F1A2B3::forged"}
    assert raw(sim, "GET", "/nodes", headers=forged, auth=False) == (401, "Authentication failed!", b"")


def test_401_bad_login_and_csrf(sim: SimHandle) -> None:
    st, rs, body = raw(sim, "POST", "/access/ticket", {"username": "root@pam", "password": "wrong"}, auth=False)
    assert (st, rs, json.loads(body)) == (
        401,
        "authentication failure",
        {"data": None, "message": "authentication failure\n"},
    )
    st, _rs, body = raw(sim, "POST", "/access/ticket", {"username": "root@pam", "password": sim.password}, auth=False)
    ticket = json.loads(body)["data"]["ticket"]
    cookie = {"Cookie": f"PVEAuthCookie={ticket}"}
    assert raw(sim, "GET", "/version", headers=cookie, auth=False)[0] == 200
    assert raw(sim, "POST", "/nodes/pve1/lxc/201/status/stop", headers=cookie, auth=False) == (
        401,
        "Permission denied - invalid csrf token",
        b"",
    )


def test_403_permission_wording(sim: SimHandle) -> None:
    st, _rs, body = raw(sim, "POST", "/access/ticket", {"username": "alice@pve", "password": "alicepw1"}, auth=False)
    data = json.loads(body)["data"]
    h = {"Cookie": f"PVEAuthCookie={data['ticket']}", "CSRFPreventionToken": data["CSRFPreventionToken"]}
    st, rs, body = raw(sim, "POST", "/nodes/pve1/lxc/200/status/start", headers=h, auth=False)
    assert (st, rs) == (403, "Permission check failed (/vms/200, VM.PowerMgmt)")
    assert json.loads(body) == {"data": None, "message": "Permission check failed (/vms/200, VM.PowerMgmt)\n"}
    st, rs, _ = raw(sim, "PUT", "/nodes/pve1/lxc/200/config", {"memory": "1024"}, headers=h, auth=False)
    assert (st, rs) == (
        403,
        "Permission check failed (/vms/200, VM.Config.Disk|VM.Config.CPU|VM.Config.Memory"
        "|VM.Config.Network|VM.Config.Options)",
    )


def test_403_token_on_ticket_only_path(sim: SimHandle) -> None:
    st, rs, body = raw(sim, "PUT", "/access/password", {"userid": "alice@pve", "password": "newpassword"})
    assert (st, rs) == (
        403,
        "Permission check failed (URI '/access/password' not available with API token, need proper ticket.",
    )
    assert json.loads(body)["message"].endswith("need proper ticket.\n)\n")


def test_595_offline_node(sim: SimHandle) -> None:
    sim.control("POST", "/nodes/pve3", {"online": False})
    try:
        assert raw(sim, "GET", "/nodes/pve3/lxc/203/status/current") == (595, "No route to host", b"")
        res = {r["id"]: r for r in sim.api("GET", "/cluster/resources")[2]["data"]}
        assert res["node/pve3"]["status"] == "offline"
        assert res["lxc/203"]["status"] == "unknown"
    finally:
        sim.control("POST", "/nodes/pve3", {"online": True})
    assert raw(sim, "GET", "/nodes/pve3/lxc/203/status/current")[0] == 200


def test_task_errors_arrive_inside_tasks(sim: SimHandle) -> None:
    # start on a locked CT returns a UPID; the task ends with the lock error
    st, _rs, body = raw(sim, "POST", "/nodes/pve1/lxc/202/status/start")
    assert st == 200
    upid = json.loads(body)["data"]
    status = sim.api("GET", f"/nodes/pve1/tasks/{upid}/status")[2]["data"]
    assert status["status"] == "stopped" and status["exitstatus"] == "CT is locked (backup)"
    log = sim.api("GET", f"/nodes/pve1/tasks/{upid}/log")[2]
    assert log["data"][-1] == {"n": log["total"], "t": "TASK ERROR: CT is locked (backup)"}


def test_migration_aborts_inside_its_task_on_a_lock_or_online(sim: SimHandle) -> None:
    """pve-container LXC/Migrate.pm prepare() runs in the worker: a locked CT, or --online for a running
    one, is accepted (a UPID) and the vzmigrate task ends "migration aborted" with the reason logged."""
    for path, params, why in (("/nodes/pve1/lxc/202/migrate", {"target": "pve2"}, "CT is locked (backup)"),
                              ("/nodes/pve1/lxc/201/migrate", {"target": "pve2", "online": 1, "restart": 1},
                               "lxc live migration is currently not implemented")):
        st, _rs, body = raw(sim, "POST", path, params)
        assert st == 200
        upid = json.loads(body)["data"]
        assert ":vzmigrate:" in upid
        sim.control("POST", "/tasks/finish")
        status = sim.api("GET", f"/nodes/pve1/tasks/{upid}/status")[2]["data"]
        assert status["status"] == "stopped" and status["exitstatus"] == "migration aborted"
        lines = [x["t"] for x in sim.api("GET", f"/nodes/pve1/tasks/{upid}/log")[2]["data"]]
        assert lines == [f"ERROR: migration aborted (duration 00:00:00): {why}", "TASK ERROR: migration aborted"]
    cfg = sim.api("GET", "/nodes/pve1/lxc/202/config")[2]["data"]
    assert cfg["lock"] == "backup"  # untouched: the migrate lock is only taken after prepare()
    assert sim.api("GET", "/nodes/pve1/lxc/201/status/current")[2]["data"]["status"] == "running"


def test_extjs_format_and_path_param_conflict(sim: SimHandle) -> None:
    ctx = ssl.create_default_context(cafile=sim.cafile)
    conn = http.client.HTTPSConnection(sim.hostname, sim.port, context=ctx, timeout=10)
    conn.request("GET", "/api2/extjs/nodes/pve1/lxc/999/config", headers={"Authorization": f"PVEAPIToken={sim.token}"})
    r = conn.getresponse()
    assert r.status == 200
    assert json.loads(r.read()) == {
        "success": 0,
        "status": 500,
        "data": None,
        "message": "Configuration file 'nodes/pve1/lxc/999.conf' does not exist",
    }
    conn.close()
    st, rs, body = raw(sim, "POST", "/nodes/pve1/lxc/200/status/start", {"vmid": "201"})
    assert (st, rs) == (400, "Parameter verification failed.")
    assert json.loads(body)["errors"] == {
        "vmid": "duplicate parameter (already defined in URI) with conflicting values!"
    }
