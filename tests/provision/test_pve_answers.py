"""How the proxmox backend reads PVE's answers: what an error means (not its status code), lost and
malformed answers, task ids, templates by Debian version, `pct exec --keep-env 0`, root@pam-only
feature flags. Against pvesim, which answers as PVE does (see tests/pvesim/test_pvesim_pve_rules.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from proxmoxer import ResourceException

from pveguard.backends import lxc_template, vztmpl
from pveguard.backends.base import Guest
from pveguard.backends.proxmox import (
    DONE,
    FAIL,
    LOCKED,
    RETRY,
    ProxmoxBackend,
    PveSettings,
    check_shape,
    classify,
    is_retryable,
    root_only_features,
    upid_node,
)
from pveguard.errors import BackendError

from .conftest import Env

pytest.importorskip("pvesim.testing")

UPID = "UPID:pve1:0001E240:0ABCDEF0:65F1A2B3:vzcreate:101:root@pam!pvesim:"


def _rex(status: int, content: str, errors: dict[str, str] | None = None) -> ResourceException:
    return ResourceException(status, "x", content, errors)


@pytest.mark.parametrize(("exc", "meaning"), [
    (_rex(500, "CT is locked (backup)"), LOCKED),
    (_rex(500, "VM is locked (migrate)"), LOCKED),
    (_rex(500, "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout"), LOCKED),
    (_rex(500, "disk is already at specified size"), DONE),
    (_rex(500, "500 disk is already at specified size\n"), DONE),  # pvesh's stderr
    (_rex(400, "Parameter verification failed.", {"upid": "unable to parse worker upid"}), FAIL),
    (_rex(500, "unable to parse worker upid 'UPID:x'"), FAIL),
    (_rex(400, "Parameter verification failed.", {"upid": "no such task"}), FAIL),
    (_rex(500, "detected modified configuration - file changed by other user? Try again."), FAIL),
    (_rex(500, "unable to shrink disk size"), FAIL),
    (_rex(500, "cluster not ready - no quorum?"), RETRY),
    (_rex(500, "got unexpected control message"), RETRY),
    (_rex(595, "No route to host"), RETRY),
    (_rex(403, "Permission check failed (/vms/100, VM.Allocate)"), FAIL),
    (_rex(400, "Parameter verification failed.", {"memory": "type check ('integer') failed"}), FAIL),
    (requests.exceptions.ConnectionError("Connection refused"), RETRY),
    (requests.exceptions.ReadTimeout("read timed out"), RETRY),
    (ValueError("bad"), FAIL),
])
def test_classify_by_what_pve_means(exc: BaseException, meaning: str) -> None:
    assert classify(exc) == meaning
    assert is_retryable(exc) == (meaning in (RETRY, LOCKED))


@pytest.mark.parametrize(("upid", "node"), [
    (UPID, "pve1"),
    ("UPID:pve-2:0001E240:0ABCDEF01:65F1A2B3:vzdump::root@pam:", "pve-2"),  # 9-digit pstart, empty id
    ("UPID:pve1:zzzzzzzz:0ABCDEF0:65F1A2B3:vzcreate:101:root@pam:", None),  # not hex (proxmoxer: ValueError)
    ("UPID:pve1:0001E240:0ABCDEF0:65F1A2B3:vzcreate:101:root@pam", None),  # no trailing colon
    ("UPID:-pve1:0001E240:0ABCDEF0:65F1A2B3:vzcreate:101:root@pam:", None),
    ("OK", None), (None, None), (42, None),
])
def test_upid_parsed_as_pve_does(upid: Any, node: str | None) -> None:
    assert upid_node(upid) == node


@pytest.mark.parametrize(("method", "path", "data", "problem"), [
    ("GET", "/cluster/resources", None, "returned data=null, expected a list of objects"),
    ("GET", "/cluster/resources", {"a": 1}, "returned an object, expected a list of objects"),
    ("GET", "/cluster/resources", [{"vmid": 1}, "x"], "returned a string (x) as item 1, expected a list of objects"),
    ("GET", "/cluster/resources", [], None),
    ("GET", "/nodes/pve1/lxc/101/config", [], "returned a list, expected an object"),
    ("GET", "/cluster/nextid", "101", None),
    ("GET", "/cluster/nextid", 101, None),
    ("GET", "/cluster/nextid", "abc", "returned a string (abc), expected a number"),
    ("POST", "/nodes/pve1/lxc", None, "returned data=null, expected a task id (UPID)"),
    ("POST", "/nodes/pve1/lxc", UPID, None),
    ("PUT", "/nodes/pve1/lxc/101/config", None, None),
])
def test_answer_shapes(method: str, path: str, data: Any, problem: str | None) -> None:
    assert check_shape(method, path, data) == problem


@pytest.mark.parametrize(("names", "best"), [
    (["debian-12-standard_12.7-1_amd64.tar.zst", "debian-12-standard_12.12-1_amd64.tar.zst"],
     "debian-12-standard_12.12-1_amd64.tar.zst"),
    (["local:vztmpl/debian-12-standard_12.2-1_amd64.tar.zst", "local:vztmpl/debian-12-standard_12.10-1_amd64.tar.zst",
      "local:vztmpl/debian-12-standard_12.9-1_amd64.tar.zst"], "local:vztmpl/debian-12-standard_12.10-1_amd64.tar.zst"),
    (["ubuntu-24.04-standard_24.04-2_amd64.tar.zst", "ubuntu-24.04-standard_24.04-10_amd64.tar.zst"],
     "ubuntu-24.04-standard_24.04-10_amd64.tar.zst"),
    (["alpine-3.9-default_20190224_amd64.tar.xz", "alpine-3.9-default_20200101_amd64.tar.xz"],
     "alpine-3.9-default_20200101_amd64.tar.xz"),
    (["debian-12-standard_12.7-1_amd64.tar.zst", "debian-12-standard_12.7-1~bpo1_amd64.tar.zst"],
     "debian-12-standard_12.7-1_amd64.tar.zst"),  # ~ sorts before, as in Debian
    (["weird.tar.zst", "debian-12-standard_12.7-1_amd64.tar.zst"], "debian-12-standard_12.7-1_amd64.tar.zst"),
    ([], None),
])
def test_newest_template_by_debian_version(names: list[str], best: str | None) -> None:
    assert vztmpl.newest(names) == best


def test_lxc_template_cache_picks_by_version_not_mtime(tmp_path: Path) -> None:
    new = tmp_path / "debian-12-standard_12.12-1_amd64.tar.zst"
    old = tmp_path / "debian-12-standard_12.7-1_amd64.tar.zst"
    new.write_bytes(b"x")
    time.sleep(0.01)
    old.write_bytes(b"x")  # touched later: an mtime choice would take it
    assert lxc_template.find(tmp_path, "debian-12-standard") == new


@pytest.mark.parametrize(("wanted", "current", "keys"), [
    ({"nesting": True}, None, []),
    ({"nesting": True}, "nesting=0", []),
    ({"nesting": True, "keyctl": True}, None, ["keyctl"]),
    ({"nesting": True, "keyctl": True}, "nesting=1,keyctl=1", []),
    ({"nesting": True, "keyctl": True}, "keyctl=on,nesting=0", []),
    ({"nesting": True}, "nesting=1,keyctl=1", ["keyctl"]),
    ({"nesting": True}, "nesting=1,fuse=0", ["fuse"]),  # 0 -> absent is a change for PVE
    ({"nesting": False, "fuse": True, "mknod": True}, "nesting=1", ["fuse", "mknod"]),
])
def test_root_only_features(wanted: dict[str, bool], current: str | None, keys: list[str]) -> None:
    assert root_only_features(wanted, current) == keys


def test_root_only_features_of_a_privileged_container() -> None:
    assert root_only_features({"nesting": True}, None, unprivileged=False) == ["nesting"]
    assert root_only_features({"nesting": True}, "nesting=1", unprivileged=False) == []


# --- against pvesim -------------------------------------------------------------------------------


def _one_container(penv: Env) -> None:
    penv.edit(lambda d: d.update(containers=d["containers"][:1]))


def test_resize_whose_answer_was_lost_is_done(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _one_container(penv)
    assert penv.run("apply", capsys=capsys)[0] == 0
    penv.edit(lambda d: d["containers"][0]["resources"].update(storage="30G"))
    # PVE grows the disk, the answer never arrives in time; the retry meets "already at specified size"
    penv.env.update(PVEGUARD_PVE_HTTP_TIMEOUT="0.5", PVEGUARD_PVE_RETRY_WAIT="1.5")
    penv.sim.control("POST", "/faults", {"method": "PUT", "path": "/resize$", "after": True, "delay_ms": 1500,
                                         "times": 1})
    penv.reset_calls()
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    [g] = penv.lxc()
    assert "size=30G" in penv.config(g["vmid"])["rootfs"]
    assert penv.calls()["PUT /nodes/{node}/lxc/{vmid}/resize"] == 2
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def _backend(penv: Env, **settings: Any) -> ProxmoxBackend:
    s = PveSettings(mode="https", host=penv.sim.host, retry_wait=0.05, poll_interval=0.05, **settings)
    return ProxmoxBackend(s, api=penv.sim.proxmoxer("token"))


def _ct(penv: Env, **extra: Any) -> Guest:
    status, reason, body = penv.sim.api("POST", "/nodes/pve1/lxc", {
        "vmid": 300, "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        "rootfs": "local-lvm:4", **extra})
    assert status == 200 and body is not None, reason
    penv.sim.control("POST", "/tasks/finish")
    return Guest(vmid=300, name="CT300", node="pve1", type="lxc", status="stopped")


def test_a_resize_racing_its_own_retry_is_done(penv: Env) -> None:
    guest = _ct(penv)
    backend = _backend(penv)
    penv.sim.control("POST", "/tasks", {"seconds": {"resize": 3}})
    first = penv.sim.api("PUT", "/nodes/pve1/lxc/300/resize", {"disk": "rootfs", "size": "8G"})
    assert first[0] == 200  # the lost first attempt: its task is still running
    backend.update(guest, {"rootfs": "8G"})  # its task fails "already at specified size" once the first ends
    assert "size=8G" in penv.config(300)["rootfs"]


def test_a_locked_guest_is_retried_after_a_wait(penv: Env) -> None:
    guest = _ct(penv)
    backend = _backend(penv, retries=4)
    backend.settings.retry_wait = 0.2  # waits 0.2, 0.4, 0.8 s
    penv.sim.control("POST", "/locks/300", {"lock": "backup"})  # a vzdump holds the guest for a moment
    release = threading.Timer(0.4, penv.sim.control, ("DELETE", "/locks/300"))
    release.start()
    try:
        penv.reset_calls()
        backend.update(guest, {"memory": 1024})
    finally:
        release.cancel()
    assert penv.config(300)["memory"] == 1024
    assert penv.calls()["PUT /nodes/{node}/lxc/{vmid}/config"] >= 2


def test_an_unsafe_call_refused_for_a_lock_is_retried(penv: Env) -> None:
    _ct(penv)
    backend = _backend(penv, retries=3)
    penv.sim.control("POST", "/faults", {"method": "DELETE", "path": "/lxc/300$", "status": 500,
                                         "message": "CT is locked (backup)", "times": 1})
    penv.reset_calls()
    upid = backend.call("DELETE", "/nodes/pve1/lxc/300", safe=False)
    backend.wait_task(upid, "destroying CT 300")
    assert penv.calls()["DELETE /nodes/{node}/lxc/{vmid}"] == 2 and penv.lxc() == []


def test_polling_an_unparseable_upid_fails_at_once(penv: Env) -> None:
    backend = _backend(penv, task_timeout=30)
    started = time.monotonic()
    with pytest.raises(BackendError, match="where a task id"):
        backend.wait_task("UPID:pve1:zzzzzzzz:0ABCDEF0:65F1A2B3:vzcreate:101:root@pam:", "creating x")
    # a well-formed UPID that PVE (or an older pvesh) cannot parse: 500 with PVE's words
    penv.sim.control("POST", "/faults", {"path": "/tasks/.*/status$", "status": 500,
                                         "message": f"unable to parse worker upid '{UPID}'"})
    with pytest.raises(BackendError, match="unable to parse worker upid"):
        backend.wait_task(UPID, "creating x")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("fault", "message"), [
    ({"data": None}, "GET /cluster/resources returned data=null, expected a list of objects"),
    ({"data": {"x": 1}}, "GET /cluster/resources returned an object, expected a list of objects"),
    ({"data": [{"type": "lxc", "name": "x"}]}, "GET /cluster/resources returned a lxc without 'vmid'"),
    ({"body": "{}"}, "GET /cluster/resources returned no 'data'"),
    ({"body": '{"data": [1]}'}, "GET /cluster/resources returned a number (1) as item 0, expected a list of objects"),
])
def test_malformed_answers_are_clear_errors(penv: Env, capsys: pytest.CaptureFixture[str], fault: dict[str, Any],
                                            message: str) -> None:
    penv.sim.control("POST", "/faults", {"method": "GET", "path": "^/cluster/resources$", **fault})
    for argv in (["backup", "apply", "--dry-run"], ["monitor", "--once"], ["status"], ["plan"]):
        code, out, err = penv.run(*argv, capsys=capsys)
        assert code == 1, (argv, out, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and "TypeError" not in err and "internal error" not in err


@pytest.mark.parametrize("fault", [
    {"status": 500, "message": "got unexpected control message"},
    {"status": 595, "message": "No route to host"},
    {"delay_ms": 1500},  # longer than the HTTP timeout
    {"body": "<html>proxy error</html>", "status": 502},
])
def test_monitor_once_survives_one_transient_failure(penv: Env, capsys: pytest.CaptureFixture[str],
                                                     fault: dict[str, Any]) -> None:
    penv.env.update(PVEGUARD_PVE_HTTP_TIMEOUT="1")
    penv.sim.control("POST", "/guests", {"count": 2, "type": "lxc"})
    penv.sim.control("POST", "/faults", {"method": "GET", "path": "^/cluster/resources$", "times": 1, **fault})
    code, out, err = penv.run("monitor", "--once", capsys=capsys)
    assert code == 0, out + err
    assert "lxc/100" in out or "CT100" in out or "100" in out


@pytest.mark.parametrize(("fault", "words"), [
    ({"status": 500, "message": "got unexpected control message"}, "got unexpected control message [HTTP 500]"),
    ({"status": 595, "message": "No route to host"}, "No route to host [HTTP 595]"),
    ({"delay_ms": 1500}, "no answer in time (timeout)"),
])
def test_monitor_once_failure_is_exit_1_in_plain_words(penv: Env, capsys: pytest.CaptureFixture[str],
                                                       fault: dict[str, Any], words: str) -> None:
    penv.env.update(PVEGUARD_PVE_HTTP_TIMEOUT="1", PVEGUARD_PVE_RETRIES="2")
    penv.sim.control("POST", "/faults", {"method": "GET", "path": "^/cluster/resources$", **fault})
    code, out, err = penv.run("monitor", "--once", capsys=capsys)
    assert code == 1, out + err
    assert words in err
    for repr_bit in ("ResourceException", "HTTPSConnectionPool", "Timeout(", "Error(", "<"):
        assert repr_bit not in err, err


def test_ensure_template_takes_the_newest_debian_version(penv: Env) -> None:
    backend = _backend(penv)
    vols = [{"volid": f"local:vztmpl/debian-12-standard_{v}_amd64.tar.zst", "content": "vztmpl",
             "format": "tzst", "size": 1} for v in ("12.7-1", "12.12-1", "12.9-1")]
    penv.sim.control("POST", "/faults", {"path": "/storage/local/content$", "data": vols, "times": 1})
    assert backend.ensure_template("pve1", "debian-12-standard") == \
        "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


def test_exec_keeps_the_callers_environment_out(penv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    sim_env = penv.sim.env()
    monkeypatch.setenv("PATH", sim_env["PATH"])
    monkeypatch.setenv("PVESIM_INFO", sim_env["PVESIM_INFO"])
    monkeypatch.setenv("PVEGUARD_PVE_PASSWORD", "do-not-leak")
    guest = _ct(penv, start=1)
    guest.status = "running"
    s = PveSettings(mode="local", local_node="pve1")
    backend = ProxmoxBackend(s, api=penv.sim.proxmoxer("token"))
    r = backend.exec(guest, ["env"])
    assert r.returncode == 0 and "do-not-leak" not in r.stdout and "PVESIM_INFO" not in r.stdout
    assert penv.sim.control("GET", "/pct/log")[-1]["env"] == {
        "container": "lxc", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    penv.sim.control("POST", "/pct/default", {"version": "5.0.8"})  # pct from before --keep-env
    with pytest.raises(BackendError, match="does not know --keep-env"):
        backend.exec(guest, ["true"])


def test_plan_and_check_flag_root_only_features(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _one_container(penv)
    assert penv.run("apply", capsys=capsys)[0] == 0
    penv.edit(lambda d: d["containers"][0].update(features={"nesting": True, "keyctl": True}))
    code, out, err = penv.run("check", capsys=capsys)
    assert code == 0
    assert ("containers[0].features: features keyctl: PVE lets only root@pam itself change feature flags "
            "other than nesting, so token root@pam!pvesim will be refused (403)") in err
    code, out, err = penv.run("plan", capsys=capsys)
    assert "pct set 100 --features keyctl=1,nesting=1" in out
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "only allowed for root@pam" in err and "PVEGUARD_PVE_USER=root@pam" in err
    penv.env.update(PVEGUARD_PVE_TOKEN="", PVEGUARD_PVE_USER="root@pam", PVEGUARD_PVE_PASSWORD=penv.sim.password)
    code, out, err = penv.run("check", capsys=capsys)
    assert "root@pam itself" not in err
    code, out, err = penv.run("plan", capsys=capsys)
    assert "root@pam itself" not in out


def test_check_flags_features_of_a_privileged_container(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _one_container(penv)
    penv.edit(lambda d: d["containers"][0].update(unprivileged=False))  # default features: nesting=1
    code, _out, err = penv.run("check", capsys=capsys)
    assert code == 0
    assert "features nesting: PVE lets only root@pam itself set feature flags on a privileged container" in err
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "changing feature flags for privileged container is only allowed for root@pam" in err
