"""The fake pvesh (proxmoxer's local backend) and the fake pct (exec/push/pull, apt/dpkg simulation)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException
from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


@pytest.fixture
def env(pvesim: SimHandle, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = pvesim.env()
    for k, v in e.items():
        if k.startswith("PVESIM") or k == "PATH":
            monkeypatch.setenv(k, v)
    return e


def _ct(pvesim: SimHandle, vmid: int = 300, start: int = 1) -> None:
    px = pvesim.proxmoxer()
    up = px.nodes("pve1").lxc.post(vmid=vmid, ostemplate=TEMPLATE, rootfs="local-lvm:4", start=start)
    assert Tasks.blocking_status(px, up, polling_interval=0.05)["exitstatus"] == "OK"


def pct(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pct", *args], env=env, capture_output=True, text=True, timeout=30)


def test_proxmoxer_local_backend_via_fake_pvesh(pvesim: SimHandle, env: dict[str, str]) -> None:
    px = ProxmoxAPI(backend="local", service="PVE")
    assert px.version.get()["release"] == pvesim.sim.release.release
    upid = px.nodes("pve1").lxc.create(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4", hostname="db")
    assert Tasks.blocking_status(px, upid, polling_interval=0.05)["exitstatus"] == "OK"
    assert px.nodes("pve1").lxc(300).config.get()["hostname"] == "db"
    with pytest.raises(ResourceException) as ei:
        px.nodes("pve1").lxc(300).status.start.post(skiplock=True)
    assert ei.value.status_code == 400
    assert "skiplock: type check ('boolean') failed - got 'True'" in ei.value.content
    with pytest.raises(ResourceException) as ei:
        px.nodes("pve1").lxc(999).config.get()
    assert ei.value.status_code == 500
    assert "Configuration file 'nodes/pve1/lxc/999.conf' does not exist" in ei.value.content


def test_pvesh_cli_output(pvesim: SimHandle, env: dict[str, str]) -> None:
    r = subprocess.run(
        ["pvesh", "get", "/cluster/nextid", "--output-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (0, '"100"\n')
    r = subprocess.run(["pvesh", "get", "/nodes/pve1/bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and r.stderr == "No 'get' handler defined for '/nodes/pve1/bogus'\n"


def test_pct_refuses_unknown_and_stopped(pvesim: SimHandle, env: dict[str, str]) -> None:
    _ct(pvesim, 300, start=0)
    r = pct(env, "exec", "999", "--", "true")
    assert (r.returncode, r.stderr) == (255, "Configuration file 'nodes/pve1/lxc/999.conf' does not exist\n")
    r = pct(env, "exec", "300", "--", "true")
    assert (r.returncode, r.stderr) == (255, "container '300' not running!\n")
    r = pct(env, "push", "300", "/etc/hostname", "/tmp/x")
    assert (r.returncode, r.stderr) == (255, "can only push files to a running CT\n")


def test_pct_exec_records_and_simulates_apt(pvesim: SimHandle, env: dict[str, str]) -> None:
    _ct(pvesim)
    r = pct(env, "exec", "300", "--", "dpkg-query", "-W", "-f=${Status}", "nginx")
    assert (r.returncode, r.stderr) == (1, "dpkg-query: no packages found matching nginx\n")
    r = pct(env, "exec", "300", "--", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "nginx")
    assert r.returncode == 0 and "Setting up nginx (1.0-1) ..." in r.stdout
    r = pct(env, "exec", "300", "--", "dpkg-query", "-W", "-f=${Status}", "nginx")
    assert (r.returncode, r.stdout) == (0, "install ok installed")
    pvesim.control("POST", "/packages/unavailable", {"names": ["nosuchpkg"]})
    r = pct(env, "exec", "300", "--", "sh", "-c", "apt-get update && apt-get install -y nosuchpkg")
    assert (r.returncode, r.stderr) == (100, "E: Unable to locate package nosuchpkg\n")
    assert pvesim.control("GET", "/guests/300/packages") == {"nginx": "1.0-1"}
    log = pvesim.control("GET", "/pct/log")
    assert [e["argv"][0] for e in log] == ["dpkg-query", "env", "dpkg-query", "sh"]


def test_pct_scripted_outputs_and_files(pvesim: SimHandle, env: dict[str, str], tmp_path: Path) -> None:
    _ct(pvesim)
    pvesim.control(
        "POST",
        "/pct/scripts",
        {"vmid": 300, "match": r"^systemctl is-active", "stdout": "failed\n", "exit": 3, "times": 1},
    )
    r = pct(env, "exec", "300", "--", "systemctl", "is-active", "nginx")
    assert (r.returncode, r.stdout) == (3, "failed\n")
    assert pct(env, "exec", "300", "--", "systemctl", "is-active", "nginx").returncode == 0  # times=1 used up
    src = tmp_path / "app.conf"
    src.write_text("listen 80;\n")
    assert pct(env, "push", "300", str(src), "/etc/app.conf").returncode == 0
    assert pct(env, "exec", "300", "--", "cat", "/etc/app.conf").stdout == "listen 80;\n"
    dest = tmp_path / "back.conf"
    assert pct(env, "pull", "300", "/etc/app.conf", str(dest)).returncode == 0
    assert dest.read_text() == "listen 80;\n"
    r = pct(env, "pull", "300", "/nope", str(dest))
    assert (r.returncode, r.stderr) == (255, "failed to open /nope: No such file or directory\n")
    assert os.access(Path(env["PATH"].split(os.pathsep)[0]) / "pct", os.X_OK)


def lxc_attach(env: dict[str, str], *args: str, node: str | None = None) -> subprocess.CompletedProcess[str]:
    e = {**env, "PVESIM_NODE": node} if node else env
    return subprocess.run(["lxc-attach", *args], env=e, capture_output=True, text=True, timeout=30)


def test_lxc_attach_as_pct_exec_calls_it(pvesim: SimHandle, env: dict[str, str]) -> None:
    """`lxc-attach -n VMID --clear-env -- CMD` on a node, as lxc's tool answers (src/lxc/tools/lxc_attach.c,
    src/lxc/attach.c): the command's own status; a container that does not run there has no init pid."""
    _ct(pvesim)
    pvesim.control("POST", "/guests/300/files", {"path": "/etc/x", "content": "1"})
    pvesim.control("POST", "/guests/300/files", {"path": "/etc/empty", "content": ""})
    assert lxc_attach(env, "-n", "300", "--clear-env", "--", "test", "-s", "/etc/x").returncode == 0
    for path in ("/etc/empty", "/etc/none"):
        r = lxc_attach(env, "-n", "300", "--clear-env", "--", "test", "-s", path)
        assert (r.returncode, r.stderr) == (1, "")  # test's own "no": nothing on stderr
    # --clear-env leaves container=lxc and a default PATH; lxc's default keeps the caller's environment
    e = {**env, "PVEGUARD_SECRET_LEAK": "x"}
    r = subprocess.run(["lxc-attach", "-n", "300", "--clear-env", "--", "env"], env=e, capture_output=True,
                       text=True, timeout=30)
    assert dict(x.split("=", 1) for x in r.stdout.splitlines()) == {
        "container": "lxc", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    r = subprocess.run(["lxc-attach", "-n", "300", "--", "env"], env=e, capture_output=True, text=True, timeout=30)
    assert "PVEGUARD_SECRET_LEAK=x" in r.stdout
    log = pvesim.control("GET", "/pct/log")
    assert log[0]["tool"] == "lxc-attach" and log[0]["argv"] == ["test", "-s", "/etc/x"]
    # not running on that node (another node's, stopped, no such guest): lxc's two errors, exit 1
    failed = ("lxc-attach: {n}: ../src/lxc/attach.c: get_attach_context: 406 Connection refused - Failed to get "
              "init pid\nlxc-attach: {n}: ../src/lxc/attach.c: lxc_attach: 1470 Connection refused - Failed to get "
              "attach context\n")
    r = lxc_attach(env, "-n", "300", "--clear-env", "--", "true", node="pve2")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", failed.format(n=300))
    r = lxc_attach(env, "-n", "999", "--clear-env", "--", "true")
    assert (r.returncode, r.stderr) == (1, failed.format(n=999))
    pvesim.control("POST", "/guests/300", {"status": "stopped"})
    r = lxc_attach(env, "-n", "300", "--clear-env", "--", "test", "-s", "/etc/x", node="pve1")
    assert (r.returncode, r.stderr) == (1, failed.format(n=300))
    r = lxc_attach(env, "-n", "300", "--bogus")
    assert r.returncode == 1 and r.stderr.startswith("lxc-attach: unrecognized option '--bogus'\n")


def test_grep_in_a_container_answers_as_gnu_grep(pvesim: SimHandle, env: dict[str, str], tmp_path: Path) -> None:
    """The options pveguard's token-file check uses (`grep -q -s -F -x -e LINE FILE`), through pct exec and
    lxc-attach, give GNU grep's exit status and stderr for the same files (this machine's grep is the oracle)."""
    _ct(pvesim)
    content = {"tok": "# c\nPVE_TOKEN_ID=pveguard-a@pve!pveguard\nPVE_TOKEN_SECRET=s\n", "empty": "",
               "noeol": "PVE_TOKEN_ID=pveguard-a@pve!pveguard", "longer": "PVE_TOKEN_ID=pveguard-a@pve!pveguardx\n"}
    for name, text in content.items():
        (tmp_path / name).write_text(text)
        pvesim.control("POST", "/guests/300/files", {"path": str(tmp_path / name), "content": text})
    line = "PVE_TOKEN_ID=pveguard-a@pve!pveguard"
    cases = [[*opts, "-e", pat, str(tmp_path / f)]
             for opts in (["-q", "-s", "-F", "-x"], ["-qsFx"], ["-F", "-x"], ["-q", "-F"])
             for pat in (line, "PVE_TOKEN_ID=pveguard-b@pve!pveguard", "PVE_TOKEN_ID")
             for f in (*content, "absent")]
    seen = set()
    for argv in cases:
        real = subprocess.run(["grep", *argv], capture_output=True, text=True, timeout=30)
        for got in (pct(env, "exec", "300", "--keep-env", "0", "--", "grep", *argv),
                    lxc_attach(env, "-n", "300", "--clear-env", "--", "grep", *argv)):
            assert (got.returncode, got.stdout, got.stderr) == (real.returncode, real.stdout, real.stderr), argv
        seen.add(real.returncode)
    assert seen == {0, 1, 2}
