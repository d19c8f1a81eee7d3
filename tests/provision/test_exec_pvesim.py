"""The local (pvesh) path of proxmoxer, packages through `pct exec` (local and over ssh), ensure_container."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from .conftest import Env

pytest.importorskip("pvesim.testing")


def with_packages(penv: Env, pkgs: list[str], keep: int = 1) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = doc["containers"][:keep]
        doc["containers"][0]["packages"] = pkgs

    penv.edit(edit)


def packages_in(penv: Env, vmid: int) -> dict[str, str]:
    return dict(penv.sim.control("GET", f"/guests/{vmid}/packages"))


@pytest.mark.skipif(os.geteuid() != 0, reason="the local PVE backend (pvesh) runs as root only")
def test_local_pvesh_backend_plans_applies_and_installs(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    sim_env = penv.sim.env()
    for k in ("PVEGUARD_PVE_HOST", "PVEGUARD_PVE_TOKEN"):
        penv.env.pop(k)
    # we "are" node pve1 (the sim's local node); pinning keeps pct local, no ssh involved
    penv.env.update(PATH=sim_env["PATH"], PVESIM_INFO=sim_env["PVESIM_INFO"], PVESIM_NODE="pve1",
                    PVEGUARD_PVE_NODE="pve1")
    with_packages(penv, ["curl", "jq"], keep=4)
    plan = penv.json("plan", capsys=capsys)
    assert [a["action"] for a in plan["actions"]] == ["create"] * 4
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    guests = [g for g in penv.lxc() if "pveguard" in g.get("tags", "")]
    assert len(guests) == 4 and {g["node"] for g in guests} == {"pve1"}
    assert all(g["status"] == "running" for g in guests)
    mon = next(g for g in guests if g["name"] == "pve-monitoring")
    assert {"curl", "jq"} <= set(packages_in(penv, mon["vmid"]))
    code, out, _ = penv.run("status", capsys=capsys)
    assert code == 0 and "local node (pvesh)" in out
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the local PVE backend (pvesh) runs as root only")
def test_local_pvesh_errors_are_pves_own(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    sim_env = penv.sim.env()
    for k in ("PVEGUARD_PVE_HOST", "PVEGUARD_PVE_TOKEN"):
        penv.env.pop(k)
    penv.env.update(PATH=sim_env["PATH"], PVESIM_INFO=sim_env["PVESIM_INFO"])
    penv.sim.control("POST", "/faults", {"method": "POST", "path": r"^/nodes/[^/]+/lxc$", "status": 403,
                                         "message": "Permission check failed (/vms/100, VM.Allocate)"})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "Permission check failed (/vms/100, VM.Allocate)" in err and "Traceback" not in err


def fake_ssh(tmp_path: Path, penv: Env) -> Path:
    """An `ssh` that runs the remote command here, as pct on the node the address belongs to."""
    _status, _r, body = penv.sim.api("GET", "/cluster/status")
    nodes = {r["ip"]: r["name"] for r in body["data"] if r["type"] == "node"}
    bindir = tmp_path / "sshbin"
    bindir.mkdir()
    script = bindir / "ssh"
    mapping = " ".join(f"{ip}={name}" for ip, name in nodes.items())
    script.write_text(f"""#!/bin/sh
# fake ssh: [options] user@host command -> run command with PVESIM_NODE = the node of that address
while [ $# -gt 0 ]; do case "$1" in -o) shift 2;; -*) shift;; *) break;; esac; done
target="$1"; shift
host="${{target#*@}}"
echo "$target" >> "{tmp_path}/ssh.log"
for pair in {mapping}; do [ "${{pair%%=*}}" = "$host" ] && PVESIM_NODE="${{pair#*=}}"; done
export PVESIM_NODE
exec sh -c "$*"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir


def test_https_backend_installs_packages_over_ssh(penv: Env, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    penv.env.update(PATH=f"{bindir}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"])
    with_packages(penv, ["nginx"])
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    [g] = penv.lxc()
    assert "nginx" in packages_in(penv, g["vmid"])
    node_ip = next(r["ip"] for r in penv.sim.api("GET", "/cluster/status")[2]["data"] if r.get("name") == g["node"])
    assert set((tmp_path / "ssh.log").read_text().split()) == {f"root@{node_ip}"}


def test_unavailable_package_fails_clearly_and_apply_resumes(penv: Env, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    penv.env.update(PATH=f"{bindir}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"])
    with_packages(penv, ["nosuchpkg"])
    penv.sim.control("POST", "/packages/unavailable", {"names": ["nosuchpkg"]})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "installing nosuchpkg in pve-monitoring failed" in err
    plan = penv.json("plan", capsys=capsys)
    assert [(a["action"], a.get("resume")) for a in plan["actions"]] == [("resume", ["packages"])]
    penv.sim.control("DELETE", "/packages/unavailable")
    assert penv.run("apply", capsys=capsys)[0] == 0
    [g] = penv.lxc()
    assert "nosuchpkg" in packages_in(penv, g["vmid"])
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_ensure_container_creates_runs_and_execs(penv: Env, tmp_path: Path) -> None:
    from pveguard.context import AppContext
    from pveguard.errors import ConfigError
    from pveguard.provision.ensure import ensure_container, run_in_container

    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    old = dict(os.environ)
    os.environ.update(penv.env)
    os.environ.update(PATH=f"{bindir}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"])
    try:
        app = AppContext.from_options(None, None)
        backend, guest = ensure_container(app, "pve-dev-tools")
        assert guest.status == "running" and [g["name"] for g in penv.lxc()] == ["pve-dev-tools"]
        r = run_in_container(backend, guest, ["apt-get", "install", "-y", "htop"])
        assert r.ok, r.stderr
        assert "htop" in packages_in(penv, guest.vmid)
        # a second call finds it, creates nothing
        _b, again = ensure_container(app, "pve-dev-tools", backend=backend)
        assert again.vmid == guest.vmid and len(penv.lxc()) == 1
        with pytest.raises(ConfigError, match="no container named 'nope'"):
            ensure_container(app, "nope", backend=backend)
        app.close()
        # soft limits cannot be met on PVE: refused here too, nothing changed
        penv.edit(lambda d: d.setdefault("resources", {}).update(hard_limits=False))
        app = AppContext.from_options(None, None)
        with pytest.raises(ConfigError, match="hard_limits: false cannot be met on Proxmox VE"):
            ensure_container(app, "pve-monitoring", backend=backend)
        assert len(penv.lxc()) == 1
        app.close()
    finally:
        os.environ.clear()
        os.environ.update(old)
