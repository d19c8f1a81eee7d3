"""pveguard.packages.classify over a dpkg status snippet shaped like a PVE 8 node's.

tests/guard/data/pve8-status.txt was assembled from the real Depends lines of proxmox-ve,
pve-manager, qemu-server, pve-container, lxc-pve, libpve-storage-perl and pve-cluster (their
PVE 8 debian/control files) with the exact dpkg status syntax (folded fields, `:any` qualifiers, version
constraints, alternatives, Provides, a config-files-only package).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pveguard.packages import classify
from pveguard.packages.classify import Classifier, static_verdict
from pveguard.packages.status import Package, read_status

STATUS = read_status(Path(__file__).parent / "data/pve8-status.txt")
CLASSIFIER = Classifier(STATUS, ("proxmox-ve",), ("zabbix-agent*",))

# name -> (core, reason, detail)
GOLDEN = {
    "proxmox-ve": (True, "closure", "a core root"),
    "pve-manager": (True, "closure", "via proxmox-ve"),
    "qemu-server": (True, "closure", "via proxmox-ve"),
    "pve-container": (True, "closure", "via pve-manager"),
    "lxc-pve": (True, "closure", "via pve-container"),
    "libpve-storage-perl": (True, "closure", None),  # reached via several parents; any one is right
    "ceph-common": (True, "closure", "via libpve-storage-perl"),
    "smartmontools": (True, "closure", "via libpve-storage-perl"),
    "corosync": (True, "closure", "via pve-cluster"),
    # An alternative group takes the first installed alternative: ifupdown2, not ifenslave...
    "ifupdown2": (True, "closure", "via pve-manager"),
    "ifenslave": (False, "non-core", ""),
    # ...and a virtual name resolves to whatever installed package provides it.
    "exim4-daemon-light": (True, "closure", "via pve-manager"),
    "python3": (True, "closure", "via ifupdown2"),  # `python3:any` drops the qualifier
    "rsync": (True, "closure", "via pve-manager"),
    "libc6": (True, "closure", "via lxc-pve"),
    "proxmox-kernel-6.8.12-4-pve-signed": (True, "kernel", ""),
    "grub-efi-amd64": (True, "boot", ""),
    "bash": (True, "essential", ""),
    "zfsutils-linux": (True, "optional", ""),
    "zabbix-agent2": (True, "extra", ""),
    "vim-tiny": (False, "non-core", ""),  # Priority: important is not a rule
    "grafana": (False, "non-core", ""),
    "adduser": (False, "non-core", ""),  # only a non-core package depends on it
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    core, reason, detail = GOLDEN[name]
    verdict = CLASSIFIER.classify(name)
    assert (verdict.core, verdict.reason) == (core, reason)
    if detail is not None:
        assert verdict.detail == detail


def test_config_files_only_package_is_not_installed_nor_core() -> None:
    assert not STATUS["htop"].installed
    assert "htop" not in CLASSIFIER.core_set()
    assert "htop" not in CLASSIFIER.closure


def test_core_set() -> None:
    expected = {n for n, (core, _r, _d) in GOLDEN.items() if core}
    assert expected <= CLASSIFIER.core_set()
    assert not {"grafana", "vim-tiny", "adduser", "ifenslave", "htop"} & CLASSIFIER.core_set()


@pytest.mark.parametrize(("name", "pkg", "core", "reason"), [
    ("proxmox-ve", None, True, "closure"),  # a root is core before it is installed
    ("pve-manager", None, True, "pveversion"),
    ("proxmox-kernel-6.11.0-1-pve", None, True, "kernel"),
    ("newthing", Package("newthing", essential=True), True, "essential"),
    ("newlib", Package("newlib", priority="required"), True, "required"),
    ("zabbix-agent", None, True, "extra"),
    ("ceph", None, True, "optional"),
    ("grafana", Package("grafana", priority="optional"), False, "non-core"),
])
def test_static_verdict_for_packages_not_installed(name: str, pkg: Package | None, core: bool, reason: str) -> None:
    v = static_verdict(name, pkg, ("proxmox-ve",), ("zabbix-agent*",))
    assert (v.core, v.reason) == (core, reason)


PATTERN_SETS = [classify.KERNEL_PATTERNS, classify.NEVER_STOP_UNITS, ("a*", "a", "*", "", "a?c", "[ab]*", "a*b*"),
                ("x[*", "x]", "*x", "x**")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERN_SETS),
       st.lists(st.sampled_from([*"apxrmoeknl-*?[]\n", "proxmox-kernel-", "pve-headers-"]),
                max_size=8).map("".join))
def test_name_matcher_is_fnmatchcase(patterns: tuple[str, ...], name: str) -> None:
    expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert classify.name_matcher(patterns)(name) is expected
    for kernel in ("proxmox-kernel-6.8", "pve-headers-6.5.13-1-pve", "proxmox-default-kernel", "proxmox-kernel-\n"):
        assert classify.name_matcher(classify.KERNEL_PATTERNS)(kernel)
