"""`pveguard install <non-core>` with the real LXC backend (slow, root): the package is installed by real
apt inside the strategy container, and not on the host.

The container is made by `pveguard apply` from a one-container strategy on a test bridge (the LXC
tests' fixture: private lxcpath, cleanup of containers, loop mounts and bridges even on failure).
It has no route to a Debian mirror, so the test gives it the guard tests' fake repository as a
`file:` source (pushed through the backend) before running the workflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aptchroot import NONCORE, build_repo
from tests.lxc.conftest import lxc_env, lxcfs  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.root]


def pveguard(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pveguard", *argv], capture_output=True, text=True, env=env,
                          timeout=900, check=False)


def test_non_core_package_lands_in_the_real_container(lxc_env: Any) -> None:  # noqa: F811 - fixture
    b = lxc_env.backend
    br = lxc_env.bridge("g")
    strategy = lxc_env.root / "strategy.yaml"
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 10},
        "containers": [{"name": "pve-monitoring", "role": "monitoring", "components": ["grafana", "prometheus"],
                        "resources": {"cores": 1, "memory": "256M", "swap": "256M", "storage": "1G"},
                        "network": {"vlan": 10, "ip": "10.250.10.31/24"}}],
        "target": {"backend": "lxc", "lxc": {"lxcpath": b.config.lxcpath, "disk_dir": b.config.disk_dir,
                                             "template_cache": b.config.template_cache}},
    }
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
           "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(lxc_env.root / "state")}

    r = pveguard(env, "apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    [guest] = [g for g in b.list_guests() if g.name == "pve-monitoring"]

    repo = lxc_env.root / "repo"
    build_repo(repo, NONCORE)
    assert b.exec(guest, ["mkdir", "-p", "/srv/repo"]).ok
    for f in sorted(repo.iterdir()):
        b.push(guest, str(f), f"/srv/repo/{f.name}")
    setup = "rm -f /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list"
    assert b.exec(guest, ["sh", "-c", setup]).ok

    r = pveguard(env, "install", "grafana", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [item] = json.loads(r.stdout)["packages"]
    assert (item["target"], item["container"], item["status"], item["version"]) == \
        ("container", "pve-monitoring", "installed", "10.1")
    q = b.exec(guest, ["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n", "grafana", "grafana-data"])
    assert q.ok, q.stderr
    assert sorted(q.stdout.splitlines()) == ["grafana 10.1 install ok installed",
                                             "grafana-data 1.0 install ok installed"]
    host = subprocess.run(["dpkg-query", "-W", "grafana"], capture_output=True, text=True, check=False)
    assert host.returncode != 0  # not on the host
    assert Path(b.config.lxcpath).is_dir()
