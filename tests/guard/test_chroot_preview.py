"""`guard check` before the guard is installed previews its decisions with real apt (issue 11)."""

from __future__ import annotations

import json

import pytest
from aptchroot import AptChroot

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_check_previews_decisions_before_install(chroot: AptChroot) -> None:
    assert chroot.pveguard("guard", "uninstall").returncode == 0
    before = chroot.status_sha()
    r = chroot.pveguard("guard", "check", "--", "apt-get", "install", "-y", "grafana")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "guard not installed: this is what it would decide" in r.stdout
    assert "the guard would REFUSE this transaction" in r.stdout
    r = chroot.pveguard("guard", "check", "--json", "--", "apt-get", "install", "-y", "grafana")
    assert r.returncode == 3, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["installed"] is False and data["ran_hook"] is True
    assert {i["package"]: i["verdict"] for i in data["items"]} == {"grafana": "refuse", "grafana-data": "refuse"}
    r = chroot.pveguard("guard", "check", "--", "apt-get", "install", "-y", "pve-zsync")
    assert r.returncode == 0 and "the guard would ALLOW this transaction" in r.stdout
    # Nothing was installed or registered: apt still runs unguarded.
    assert chroot.status_sha() == before
    assert not chroot.path("/etc/apt/apt.conf.d/05pveguard").exists()
    assert "pveguard" not in chroot.run(["apt-config", "dump"]).stdout
    assert chroot.apt("install", "htop").returncode == 0
