"""The audit on a real systemd host: a Debian 12 root (debootstrap) with real nginx, ssh and cron,
a fake proxmox-ve package tree and a Grafana-like service from local .debs (dpkg-deb, dpkg -i in
a chroot), a hand-made unit and cron job; audited offline with --root, then booted as an LXC
container with systemd as PID 1 and audited from inside (pveguard run in the container)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from infra.rootfs import extract, have_debootstrap, mounted_chroot, rootfs_tarball
from infra.strategies import defaults_file
from pveguard.audit import report

from . import fakehost
from .test_golden import systemctl_states
from .test_json_shape import assert_conforms

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SITE = Path(sysconfig.get_paths()["purelib"])  # this venv's packages, bind-mounted into the container


def _need(*tools: str) -> None:
    if not have_debootstrap():
        pytest.skip("needs root and debootstrap to build a Debian root")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def host_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _need("dpkg-deb", "chroot")
    base = tmp_path_factory.mktemp("systemd-host")
    root = extract(rootfs_tarball(fakehost.INCLUDE), base / "rootfs")
    try:
        debs = root / "tmp/debs"
        debs.mkdir(parents=True)
        for deb in fakehost.packages():
            fakehost.build_deb(deb, debs)
        with mounted_chroot(root):
            proc = subprocess.run(["chroot", str(root), "sh", "-c", "dpkg -i /tmp/debs/*.deb"],
                                  capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        shutil.rmtree(debs)
        fakehost.install_local_extras(root)
        yield root
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def _audit(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pveguard", "--state-dir", "/nonexistent-state",
                           "--strategy", defaults_file(), "audit", "--json", *args],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["unit"]: s for s in doc["services"]}


def _check_classification(doc: dict[str, Any]) -> None:
    svc = _services(doc)
    assert doc["host"]["pve"]["detected"] is True
    # core: never-stop list, the pveversion list, the proxmox-ve closure, Debian base
    assert svc["pveproxy.service"]["core"] and svc["pveproxy.service"]["reason"] == "never-stop"
    assert svc["pve-cluster.service"]["core"]
    helper = svc["pve-fake-helper.service"]
    assert helper["core"] and "dependency closure" in helper["detail"] and "via pve-manager" in helper["detail"]
    assert svc["ssh.service"]["core"]
    assert svc["cron.service"]["core"]
    # non-core with the right suggestions
    grafana = svc["grafana-server.service"]
    assert not grafana["core"]
    assert grafana["suggestion"]["container"] == "pve-monitoring"
    assert grafana["suggestion"]["confidence"] >= 0.9
    assert svc["nginx.service"]["suggestion"]["container"] == "pve-api-gateway"
    relay = svc["webhook-relay.service"]
    assert not relay["core"] and relay["reason"] == "local"
    assert relay["suggestion"]["container"] == "pve-api-gateway"
    mig = grafana["migration"]
    assert "/etc/grafana" in mig["config_paths"] and "/etc/default/grafana-server" in mig["config_paths"]
    assert "/var/lib/grafana" in mig["data_paths"]
    assert "/var/log/grafana" in mig["log_paths"]
    assert mig["users"][0] == "grafana (group grafana)"
    # dependency map
    deps = {d["unit"]: d for d in doc["dependency_map"]}
    assert deps["grafana-server.service"]["wants"] == ["network-online.target"]
    assert "multi-user.target" in deps["grafana-server.service"]["wanted_by"]
    assert deps["grafana-server.service"]["packages"][0] == "grafana"
    exclusive = deps["grafana-server.service"]["exclusive_packages"]
    # no apt marks in a debootstrap root: python3 counts as pulled in by grafana, the only thing needing it
    assert exclusive[0] == "grafana" and "python3" in exclusive
    assert set(exclusive) <= set(deps["grafana-server.service"]["packages"])
    assert "nginx.service" in deps["webhook-relay.service"]["after"]
    # findings and score
    ids = {f["id"] for f in doc["findings"]}
    assert {"non-core-service:grafana", "non-core-service:webhook-relay.service"} <= ids
    assert any(i.startswith("non-core-service:nginx") for i in ids)
    assert any(f["id"].startswith("cron:/etc/cron.d/offsite-backup") and "pve-backup-manager" in f["fix"]
               for f in doc["findings"])
    assert 0 <= doc["score"]["value"] < 100
    assert doc["score"]["formula"].startswith("score = max(0, 100")


def test_offline_audit_of_the_chroot(host_root: Path) -> None:
    doc = _audit("--root", str(host_root))
    _check_classification(doc)
    assert_conforms(doc)
    assert doc["host"]["live"] is False
    missing = {u["fact"]: u["reason"] for u in doc["unavailable"]}
    assert "offline audit" in missing["running units"] and "offline audit" in missing["listening sockets"]
    assert "offline audit" in missing["guests"]
    assert all(s["active"] is None for s in doc["services"])
    grafana = _services(doc)["grafana-server.service"]
    assert any("ports: unavailable" in n for n in grafana["migration"]["notes"])


def test_enablement_matches_systemctl(host_root: Path) -> None:
    """Our reading of enablement links equals systemctl's own (systemctl --root, no running systemd),
    for every service, timer and socket of the installed root."""
    _need("systemctl")
    doc = _audit("--root", str(host_root))
    theirs = systemctl_states(host_root)
    ours = {s["unit"]: s["enablement"] for s in doc["services"]}
    assert {"grafana-server.service", "webhook-relay.service", "pveproxy.service"} <= set(ours)
    compared = [u for u in ours if u in theirs]
    assert len(compared) >= len(ours) - 3
    mismatches = {u: (ours[u], theirs[u]) for u in compared
                  if (ours[u] == "enabled") != (theirs[u] in ("enabled", "enabled-runtime"))
                  or (ours[u] == "masked") != (theirs[u] == "masked")
                  or (ours[u] == "static") != (theirs[u] == "static")}
    assert not mismatches


@contextmanager
def booted(root: Path) -> Iterator[str]:
    """Boot `root` as a privileged LXC container (systemd as PID 1, loopback only); always destroyed."""
    name = f"pvg-audit-{uuid.uuid4().hex[:8]}"
    lxcpath = root.parent / "lxc"
    lxcpath.mkdir(exist_ok=True)
    config = lxcpath / f"{name}.conf"
    config.write_text("\n".join([
        f"lxc.uts.name = {name}",
        f"lxc.rootfs.path = dir:{root}",
        "lxc.net.0.type = empty",          # own network namespace with only lo: nothing leaves the host
        "lxc.apparmor.profile = unconfined",
        "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed",
        "lxc.autodev = 1",
        "lxc.tty.max = 1",
        "lxc.pty.max = 16",
        "lxc.environment = container=lxc",
        f"lxc.mount.entry = {REPO / 'src'} opt/pveguard/src none bind,ro,create=dir 0 0",
        f"lxc.mount.entry = {SITE} opt/pveguard/site none bind,ro,create=dir 0 0",
    ]) + "\n")
    started = False
    try:
        proc = subprocess.run(["lxc-start", "-n", name, "-P", str(lxcpath), "-f", str(config), "-d",
                               "-o", str(lxcpath / f"{name}.log"), "-l", "INFO"],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr + _read(lxcpath / f"{name}.log")
        started = True
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state = _attach(name, lxcpath, ["systemctl", "is-system-running"]).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        assert state in ("running", "degraded"), f"systemd did not finish booting: {state!r}"
        yield f"{name}\0{lxcpath}"
    finally:
        if started:
            subprocess.run(["lxc-stop", "-n", name, "-P", str(lxcpath), "-k"], capture_output=True, check=False)
        shutil.rmtree(lxcpath / name, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def _attach(name: str, lxcpath: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["lxc-attach", "-n", name, "-P", str(lxcpath), "--clear-env", "--",
                           "env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *argv],
                          capture_output=True, text=True, check=False, timeout=120)


def test_live_audit_inside_the_booted_container(host_root: Path, tmp_path: Path) -> None:
    _need("lxc-start", "lxc-attach", "lxc-stop")
    if sys.version_info[:2] != (3, 11):
        pytest.skip("pveguard runs inside with the container's python3 (Debian 12: 3.11) and this venv's "
                    f"packages, which are built for {sys.version_info[0]}.{sys.version_info[1]}")
    if Path("/sys/fs/cgroup/systemd").exists() is False and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("no systemd-compatible cgroup hierarchy for a systemd container")
    with booted(host_root) as handle:
        name, lxcpath = handle.split("\0")
        # Wait until the services under test listen (python http.server takes a moment to import).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ss = _attach(name, Path(lxcpath), ["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
            if all(f":{port:04X} " in ss for port in (3000, 8006, 80)):
                break
            time.sleep(0.5)
        proc = _attach(name, Path(lxcpath), [
            "env", "PYTHONPATH=/opt/pveguard/src:/opt/pveguard/site", "python3", "-m", "pveguard",
            "--state-dir", "/tmp/pveguard-state", "audit", "--json"])
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        table = _attach(name, Path(lxcpath), [
            "env", "PYTHONPATH=/opt/pveguard/src:/opt/pveguard/site", "COLUMNS=160", "python3", "-m", "pveguard",
            "--state-dir", "/tmp/pveguard-state", "audit"]).stdout
    (tmp_path / "live-report.json").write_text(json.dumps(doc, indent=2))
    (tmp_path / "live-report.txt").write_text(table)
    if os.environ.get("PVEGUARD_AUDIT_REPORT_DIR"):
        out = Path(os.environ["PVEGUARD_AUDIT_REPORT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "live-report.json").write_text(json.dumps(doc, indent=2))
        (out / "live-report.txt").write_text(table)
        (out / "live-report.md").write_text(report.render(doc, "markdown"))
    _check_classification(doc)
    assert_conforms(doc)
    assert doc["host"]["live"] is True and doc["host"]["systemd_running"] is True
    assert not any(u["fact"] in ("running units", "listening sockets") for u in doc["unavailable"])
    svc = _services(doc)
    for unit in ("grafana-server.service", "nginx.service", "pveproxy.service", "ssh.service",
                 "webhook-relay.service"):
        assert svc[unit]["active"] == "active" and svc[unit]["sub"] == "running", (unit, svc[unit])
    sockets = {(s["proto"], s["port"]): s for s in doc["sockets"]}
    assert sockets[("tcp", 3000)]["unit"] == "grafana-server.service"
    assert sockets[("tcp", 3000)]["process"] == "python3"
    assert sockets[("tcp", 8006)]["unit"] == "pveproxy.service"
    assert sockets[("tcp", 85)]["address"] == "127.0.0.1"
    assert sockets[("tcp", 80)]["unit"] == "nginx.service"
    grafana = svc["grafana-server.service"]
    assert "tcp/3000 on 0.0.0.0" in grafana["migration"]["ports"]
    deps = {d["unit"]: d for d in doc["dependency_map"]}
    assert deps["grafana-server.service"]["ports"] == ["tcp/3000"]
    findings = {f["id"]: f for f in doc["findings"]}
    # exposed on 0.0.0.0 -> high; the relay only listens on loopback -> medium
    assert findings["non-core-service:grafana"]["severity"] == "high"
    assert findings["non-core-service:webhook-relay.service"]["severity"] == "medium"
    assert "grafana-server.service" in table and "pve-monitoring" in table and "compliance score" in table
    md = report.render(doc, "markdown")
    assert "| tcp | 0.0.0.0 | 3000 | python3 (" in md and ") | grafana-server.service |" in md
    assert "### Migration: grafana-server.service → pve-monitoring" in md
    html = report.render(doc, "html")
    assert "<td>grafana-server.service</td>" in html and "tcp/3000 on 0.0.0.0" in html
