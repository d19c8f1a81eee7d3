"""LxcBackend.preflight(): what `pveguard doctor` shows for a plain-LXC host, each failure with its fix.

The host is built in a temp dir: the commands on PATH, the LXC config dir, /etc/subuid and
/etc/subgid, /etc/pve and the cgroup layout. No root needed; nothing on the host is changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.backends import cgroups
from pveguard.backends.base import Preflight
from pveguard.backends.lxc import TOOLS, LxcBackend
from pveguard.strategy.models import LxcTarget

from .test_lxc_logic import HYBRID_MOUNTINFO, V2_MOUNTINFO

MISSING_BRIDGE = "pgtnone0"


class Host:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.bin, self.config = root, root / "bin", root / "lxc-config"
        self.bin.mkdir()
        self.config.mkdir()
        monkeypatch.setenv("PATH", str(self.bin))
        self.layout = cgroups.parse_layout(V2_MOUNTINFO)
        monkeypatch.setattr(cgroups, "detect_layout", lambda: self.layout)

    def tools(self, *names: str) -> None:
        for name in names:
            (self.bin / name).write_text("#!/bin/sh\n")
            (self.bin / name).chmod(0o755)

    def healthy(self) -> Host:
        self.tools(*TOOLS, "dnsmasq", "nft", "newuidmap")
        for name in ("debian.common.conf", "debian.userns.conf"):
            (self.config / name).write_text("")
        for f in ("subuid", "subgid"):
            (self.root / f).write_text("root:100000:65536\n")
        return self

    def checks(self, *, pve: bool = False, bridges: tuple[str, ...] = (MISSING_BRIDGE,)) -> dict[str, Preflight]:
        target = LxcTarget(lxcpath=str(self.root / "lxc"), disk_dir=str(self.root / "disks"),
                           template_cache=str(self.root / "cache"), subnet="10.77.0.0/16")
        b = LxcBackend(target, subuid=self.root / "subuid", subgid=self.root / "subgid",
                       lxc_config_dir=self.config, pve_dir=self.root if pve else self.root / "no-pve",
                       bridges=list(bridges))
        result = b.preflight()
        for check in result:
            assert check.ok is not False or (check.fix and "\n" not in check.fix), check
        return {c.name: c for c in result}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(tmp_path, monkeypatch)


def test_a_ready_host_passes_every_check_and_pveguard_will_make_the_bridge(host: Host) -> None:
    checks = host.healthy().checks()
    assert {n: c.ok for n, c in checks.items()} == {
        "lxc-tools": True, "lxc-config-includes": True, f"bridge-{MISSING_BRIDGE}": True, "lxc-dhcp-nat": True,
        "subid-range": True, "cgroups": True}
    assert "pveguard creates it with DHCP and NAT for 10.77.0.0/16" in checks[f"bridge-{MISSING_BRIDGE}"].detail


def test_a_fresh_debian_host_gets_one_fix_per_missing_piece(host: Host) -> None:
    host.tools("lxc-start", "lxc-attach", "newuidmap")  # lxc without lxc-templates, nothing else
    (host.config / "common.conf").write_text("")
    checks = host.checks()
    assert checks["lxc-tools"].ok is False and "lxc-ls" in checks["lxc-tools"].detail
    assert checks["lxc-tools"].fix == "apt-get install e2fsprogs iproute2 lxc mount tar"
    assert checks["lxc-config-includes"].ok is False
    assert "debian.common.conf" in checks["lxc-config-includes"].detail
    assert checks["lxc-config-includes"].fix == "apt-get install lxc-templates"
    assert checks["lxc-dhcp-nat"].fix == "apt-get install dnsmasq-base nftables"
    assert checks["subid-range"].ok is False and "root:100000:65536" in checks["subid-range"].fix
    assert str(host.root / "subuid") in checks["subid-range"].fix


def test_cgroup_v1_works_and_says_what_it_lacks(host: Host) -> None:
    host.healthy()
    host.layout = cgroups.parse_layout(HYBRID_MOUNTINFO, memsw=False)
    check = host.checks()["cgroups"]
    assert check.ok is True and "cgroup v1" in check.detail and "swap limits are not enforced" in check.detail
    host.layout = cgroups.parse_layout(HYBRID_MOUNTINFO.replace("rw,memory", "rw,pids"))
    check = host.checks()["cgroups"]
    assert check.ok is False and "memory" in check.detail and "cgroup v2" in check.fix


def test_on_a_pve_host_a_missing_bridge_is_an_error_and_no_network_is_made(host: Host) -> None:
    checks = host.healthy().checks(pve=True)
    bridge = checks[f"bridge-{MISSING_BRIDGE}"]
    assert bridge.ok is False and "/etc/network/interfaces" in bridge.fix
    assert checks["lxc-dhcp-nat"].ok is None


def test_an_interface_that_is_not_a_bridge_is_refused(host: Host) -> None:
    check = host.healthy().checks(bridges=("lo",))["bridge-lo"]
    assert check.ok is False and "not a bridge" in check.detail


def test_without_newuidmap_no_range_is_needed(host: Host) -> None:
    host.healthy()
    (host.bin / "newuidmap").unlink()
    (host.root / "subuid").write_text("")
    assert host.checks()["subid-range"].ok is True
