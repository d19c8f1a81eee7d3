"""`pveguard doctor` against pvesim: all green on a good setup; each failing preflight is one line that
names what was found and its fix, and makes the exit code 1."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from pveguard.backends.pvepreflight import version_support, version_verdict

from .conftest import Env


def _quiet_policy(doc: dict[str, Any]) -> None:
    # the apt guard cannot be installed in a test (it writes /etc/apt); without a policy that needs it,
    # its check is skipped instead of failing
    doc["installation_policy"]["allow_core_only"] = False
    doc["installation_policy"]["require_approval"] = False


@pytest.fixture
def denv(penv: Env) -> Env:
    penv.edit(_quiet_policy)
    penv.env["PVEGUARD_PVE_FINGERPRINT"] = penv.sim.fingerprint
    return penv


def _lines(out: str) -> dict[str, str]:
    """check name -> its whole entry (an entry wraps at the terminal's width onto indented lines)."""
    found: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"(ok|FAIL|WARN|skip)\s+([\w-]+): ", line)
        if m:
            name = m[2]
            found[name] = line
        elif name is not None and line.startswith("     "):
            found[name] += " " + line.strip()
        else:
            name = None
    return found


def test_all_green(denv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = denv.run("doctor", capsys=capsys)
    assert code == 0, out + err
    lines = _lines(out)
    assert set(lines) == {"strategy", "state-dir", "guard", "backend", "pve-tls", "pve-connection", "pve-version",
                          "pve-permissions", "pve-nodes", "pve-storages", "pve-templates", "pve-bridges",
                          "pve-vmids"}
    assert all(not line.startswith("FAIL") for line in lines.values())
    assert "certificate matches the pinned SHA-256" in lines["pve-tls"]
    assert f"Proxmox VE {denv.sim.sim.release.version}" in lines["pve-connection"] and "quorate" in lines["pve-nodes"]
    data = json.loads(denv.run("doctor", "--json", capsys=capsys)[1])
    assert data["ok"] is True and {c["name"] for c in data["checks"]} == set(lines)
    assert set(data["checks"][0]) == {"name", "ok", "detail", "fix"}


def _token(sim: Any) -> str:
    assert sim.api("POST", "/access/users", {"userid": "few@pve"})[0] == 200
    _s, _r, body = sim.api("POST", "/access/users/few@pve/token/tk", {"privsep": 0})
    assert sim.api("PUT", "/access/acl", {"path": "/", "roles": "PVEAuditor", "users": "few@pve"})[0] == 200
    return f"{body['data']['full-tokenid']}={body['data']['value']}"


def _api(method: str, path: str, params: dict[str, Any]) -> Callable[[Env], None]:
    def do(e: Env) -> None:
        status, reason, _ = e.sim.api(method, path, params)
        assert status == 200, reason
    return do


def _offline(*nodes: str) -> Callable[[Env], None]:
    def do(e: Env) -> None:
        for n in nodes:
            e.sim.control("POST", f"/nodes/{n}", {"online": False})
    return do


def _taken_vmid(e: Env) -> None:
    [vmid] = e.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "node": "pve1"})
    e.edit(lambda d: d["containers"][0].update(vmid=vmid))


CASES: list[tuple[str, Callable[[Env], None], str, str, str]] = [
    ("verify off", lambda e: e.env.update(PVEGUARD_PVE_FINGERPRINT="", PVEGUARD_PVE_VERIFY_SSL="0"),
     "pve-tls", "certificate NOT verified (verify_ssl off); its SHA-256 fingerprint is", "PVEGUARD_PVE_FINGERPRINT="),
    ("wrong pin", lambda e: e.env.update(PVEGUARD_PVE_FINGERPRINT=":".join(["AB"] * 32)),
     "pve-tls", "does not match the pin: expected AB:AB", "pvenode cert info"),
    ("nothing listening", lambda e: e.env.update(PVEGUARD_PVE_HOST="127.0.0.1:9"),
     "pve-connection", "connection failed (Connection refused)", "check PVEGUARD_PVE_HOST"),
    ("few privileges", lambda e: e.env.update(PVEGUARD_PVE_TOKEN=_token(e.sim)),
     "pve-permissions", "few@pve!tk lacks privileges that plan and apply need: /: Sys.Modify (privileged "
                        "containers (unprivileged: false); firewall IP sets, groups, datacenter options); "
                        "/access: Sys.Modify (the PVEGuard* roles of the container roles (security.access.rbac)); "
                        "/access/groups: User.Modify (the role users and their API tokens (security.access.rbac))",
     "pveum acl modify /vms --users 'few@pve' --tokens 'few@pve!tk' --roles PVEGuard"),
    ("no quorum", _offline("pve2", "pve3"), "pve-nodes", "1 of 3 nodes online (pve1), offline: pve2, pve3, NOT "
                                                        "quorate", "pvecm status"),
    ("storage content", _api("PUT", "/storage/local-lvm", {"content": "images"}),
     "pve-storages", "'local-lvm' on pve1 does not hold rootdir (has images)", "pvesm set local-lvm --content "
                                                                              "images,rootdir"),
    ("missing storage", lambda e: e.edit(lambda d: d["target"]["proxmox"].update(storage="fast")),
     "pve-storages", "'fast' is not available on pve1", "add storage 'fast'"),
    ("unknown template", lambda e: e.edit(lambda d: d["containers"][1].update(template="nosuch-os")),
     "pve-templates", "nosuch-os is neither on pve1:local nor downloadable", "pveam update"),
    ("missing bridge", lambda e: e.edit(lambda d: d["network"].update(bridge="vmbr9")),
     "pve-bridges", "vmbr9 does not exist on pve1", "Create -> Linux Bridge"),
    ("vmid taken", _taken_vmid, "pve-vmids", "(wanted by pve-monitoring) is lxc", "change or remove 'vmid:'"),
    ("invalid strategy", lambda e: e.strategy.write_text("containers: 3\n"),
     "strategy", "containers", "run 'pveguard check'"),
    ("state dir is a file", lambda e: (e.dir / "state").write_text("x"),
     "state-dir", "exists but is not a directory", "--state-dir"),
]


@pytest.mark.parametrize(("case", "setup", "check", "found", "fix"), CASES, ids=[c[0] for c in CASES])
def test_each_failing_preflight_is_one_line_with_its_fix(denv: Env, capsys: pytest.CaptureFixture[str], case: str,
                                                        setup: Callable[[Env], None], check: str, found: str,
                                                        fix: str) -> None:
    setup(denv)
    code, out, err = denv.run("doctor", capsys=capsys)
    assert code == 1, case
    line = _lines(out)[check]
    assert line.startswith(f"FAIL {check}: "), line
    assert found in line and "fix: " in line and fix in line.split("fix: ", 1)[1], line
    assert "Traceback" not in out + err
    assert "failing: " in out and check in out.splitlines()[-1]


def test_unreachable_api_skips_what_needs_it(denv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    denv.env["PVEGUARD_PVE_HOST"] = "127.0.0.1:9"
    lines = _lines(denv.run("doctor", capsys=capsys)[1])
    assert lines["pve-tls"].startswith("FAIL") and "no TLS handshake" in lines["pve-tls"]
    assert all(lines[n].startswith("skip") for n in ("pve-version", "pve-permissions", "pve-bridges", "pve-vmids"))


@pytest.mark.parametrize(("version", "verdict"), [("8.4.1", True), ("8.4.0", True), ("9.0.3", True), ("9.1.9", True),
                                                  ("8.0", None), ("8.3.5", None), ("10.0.1", None), ("7.4-3", False),
                                                  ("garbage", False)])
def test_version_support(version: str, verdict: bool | None) -> None:
    got, what, fix = version_support(version)
    assert got is verdict and bool(fix) is (verdict is not True)
    assert ("WARNING" in what) is (verdict is None) and "8.4 and later 8.x, 9.x" in what + fix
    assert version_verdict(version) == (verdict is True, fix)


@pytest.mark.parametrize(("version", "mark"), [("8.2.4", "WARN"), ("10.0.1", "WARN"), ("7.4-3", "FAIL")])
def test_doctor_warns_on_an_untested_version_and_fails_on_an_old_major(
        denv: Env, capsys: pytest.CaptureFixture[str], version: str, mark: str) -> None:
    denv.sim.control("POST", "/faults", {"method": "GET", "path": "^/version$",
                                         "data": {"version": version, "release": version[:3], "repoid": "deadbeef"}})
    _code, out, err = denv.run("doctor", capsys=capsys)
    assert "Traceback" not in out + err
    line = _lines(out)["pve-version"]
    assert line.startswith(f"{mark} pve-version: Proxmox VE {version}"), line
    assert "fix: " in line, line
    assert ("pve-version" in out.splitlines()[-1]) is (mark == "FAIL")


def test_doctor_and_info_report_the_version_found(denv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Against pvesim of either release (--pve-version): doctor and info name it and call it supported."""
    rel = denv.sim.sim.release
    line = _lines(denv.run("doctor", capsys=capsys)[1])["pve-version"]
    assert line.startswith(f"ok   pve-version: Proxmox VE {rel.version} (supported: 8.4 and later 8.x, 9.x)"), line
    pve = denv.json("info", capsys=capsys)["backend"]["proxmox"]
    assert (pve["version"], pve["supported"]) == (rel.version, True)
    _code, out, _err = denv.run("info", capsys=capsys)
    assert f"Proxmox VE {rel.version} (supported: 8.4 and later 8.x, 9.x)" in " ".join(out.split())
