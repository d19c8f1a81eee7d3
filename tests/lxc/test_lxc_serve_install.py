"""The serve installation in a real container (slow; root, lxc, dnsmasq, nft, and PyPI reachable).

A real Debian container comes up on pveguard's own network (bridge, DHCP, NAT); the install that
apply does into serve.container (`install_into`: python3-venv with apt, the files with their modes,
venv, pip install of the wheel built from this tree with its dependencies from PyPI, the systemd
unit enabled and started) runs in it, and `pveguard serve` answers /healthz inside it under systemd.
The lxc backend has no PVE, so no RBAC: the test puts a role token file (a dummy secret) where RBAC
delivers it; the daemon's PVE is unreachable, which it must survive (it serves the last state).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.serve.deploy import MANIFEST, UNIT_NAME, install_into, install_plan
from pveguard.strategy.models import Strategy

from .test_lxc_own_network import free_pool, ip_forward_restored, pveguard  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
GW = "pve-api-gateway"
ROOT = Path(__file__).resolve().parents[2]


def build_wheel(dest: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(ROOT)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = dest.glob("pveguard-*-py3-none-any.whl")
    return wheel


def test_serve_is_installed_in_a_real_container_and_answers_healthz(
        lxc_env: Any, ip_forward_restored: Any) -> None:  # noqa: F811
    for tool in ("dnsmasq", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/debian-packages.txt lists it)")
    b = lxc_env.backend
    strategy = lxc_env.root / "strategy.yaml"
    env = lxc_env.init_env()
    doc = yaml.safe_load(strategy.read_text())
    doc["containers"] = [c for c in doc["containers"] if c["name"] == GW]
    doc["network"]["bridge"] = f"{lxc_env.prefix}n"
    doc["target"]["lxc"].update(lxcpath=b.config.lxcpath, disk_dir=b.config.disk_dir,
                                template_cache=b.config.template_cache, subnet=free_pool())
    doc["serve"]["container"] = GW
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    # on the lxc backend apply says why it does not install serve (no PVE API to point it at)
    plan = json.loads(pveguard(env, "plan", "--json")[1])
    assert plan["serve"]["changes"] == [] and "proxmox backend" in plan["serve"]["notes"][0]

    (g,) = [x for x in b.list_guests() if x.name == GW]
    token = lxc_env.root / "token"
    token.write_text("PVE_TOKEN_ID=pveguard-gateway@pve!pveguard\nPVE_TOKEN_SECRET=dummy-not-a-secret\n")
    assert b.exec(g, ["mkdir", "-p", "-m", "0700", "/etc/pveguard"]).ok
    b.push(g, str(token), "/etc/pveguard/pve-token", mode=0o600)

    # this machine reaches PyPI through a TLS-inspecting proxy its CA bundle trusts (pip.conf `cert`):
    # the container gets the same trust for pip, as a site would configure its containers
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        b.push(g, str(bundle), "/etc/ssl/pveguard-test-ca.pem", mode=0o644)
        conf = lxc_env.root / "pip.conf"
        conf.write_text("[global]\ncert = /etc/ssl/pveguard-test-ca.pem\n")
        b.push(g, str(conf), "/etc/pip.conf", mode=0o644)

    started = time.monotonic()
    wheel = build_wheel(lxc_env.root / "dist")
    plan_ = install_plan(Strategy.model_validate(doc), doc, wheel, "192.0.2.1:8006", "pveguard-gateway@pve",
                         "pveguard", verify_ssl=False)
    steps: list[tuple[str, str | None]] = []
    done = install_into(b, g, plan_, lambda step, target, name, result, **d: steps.append((step, result)))
    installed = time.monotonic() - started
    assert done and ("serve.run", "ok") in steps and steps[-1] == ("serve.push", "ok")
    # the template has no python3: apt installed it and its venv inside, then the venv exists
    assert steps[:2] == [("serve.packages", None), ("serve.packages", "ok")], steps[:4]
    assert b.exec(g, ["dpkg", "-s", "python3-venv"]).ok

    # the files with their modes, as root in the container sees them
    stat = b.exec(g, ["stat", "-c", "%a %U %n", "/etc/pveguard/strategy.yaml", "/etc/pveguard/serve.env",
                      f"/etc/systemd/system/{UNIT_NAME}", MANIFEST, "/etc/pveguard/pve-token"])
    assert stat.ok, stat.stderr
    assert stat.stdout.split("\n")[:5] == [
        "600 root /etc/pveguard/strategy.yaml", "600 root /etc/pveguard/serve.env",
        f"644 root /etc/systemd/system/{UNIT_NAME}", f"644 root {MANIFEST}", "600 root /etc/pveguard/pve-token"]
    assert b.exec(g, ["/opt/pveguard/bin/pveguard", "--version"]).ok or \
        b.exec(g, ["/opt/pveguard/bin/pveguard", "--help"]).ok
    assert b.exec(g, ["systemctl", "is-enabled", UNIT_NAME]).stdout.strip() == "enabled"

    # pveguard serve answers /healthz inside the container (systemd started it)
    probe = ["python3", "-c", "import urllib.request,sys; r=urllib.request.urlopen('http://127.0.0.1:8450/healthz',"
             " timeout=5); sys.stdout.write(str(r.status) + ' ' + r.read().decode())"]
    answer = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = b.exec(g, probe)
        if r.ok:
            answer = r.stdout
            break
        time.sleep(2)
    if answer is None:
        journal = b.exec(g, ["journalctl", "-u", UNIT_NAME, "--no-pager", "-n", "40"]).stdout
        pytest.fail(f"serve did not answer /healthz in the container:\n{journal}")
    assert answer.startswith("200 "), answer
    env_of = b.exec(g, ["sh", "-c", "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value "
                                    f"{UNIT_NAME})/environ"]).stdout
    assert "PVEGUARD_SELF_CONTAINER=pve-api-gateway" in env_of
    print(f"serve installed in a real container (apt python3-venv, pip from PyPI): {installed:.0f}s; "
          f"/healthz: {answer[:80]}")
