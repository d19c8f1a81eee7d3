"""restore_config: which lines of an archived lxc config a throwaway restore container keeps, and
the id map it gets (pure; the real restores are in test_lxcdump*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.backup.lxcdump import restore_config

ROOTFS = Path("/var/lib/pveguard/restore-test/rt/rootfs")
UNPRIV = """lxc.include = /usr/share/lxc/config/debian.common.conf
lxc.include = /usr/share/lxc/config/debian.userns.conf
lxc.uts.name = web
lxc.rootfs.path = loop:/var/lib/vz/images/101/vm-101-disk-0.raw
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
lxc.net.0.type = veth
lxc.net.0.link = vmbr0
lxc.mount.entry = /srv/data srv/data none bind 0 0
lxc.hook.pre-start = /usr/local/bin/x
lxc.start.auto = 1
lxc.cgroup2.memory.max = 268435456
"""
PRIV = """lxc.include = /usr/share/lxc/config/debian.common.conf
lxc.uts.name = web
lxc.rootfs.path = dir:/var/lib/lxc/web/rootfs
lxc.cgroup2.memory.max = 268435456
"""


def idmaps(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("lxc.idmap")]


@pytest.mark.parametrize(
    ("original", "owner", "maps"),
    [
        # the archived map is kept as it is, whatever the root dir's owner
        (UNPRIV, (100000, 100000), ["lxc.idmap = u 0 100000 65536", "lxc.idmap = g 0 100000 65536"]),
        # privileged archive, root-owned root: no map
        (PRIV, (0, 0), []),
        # no map in the config but a root dir owned by a mapped uid: PVE's 65536-id map from that owner
        (PRIV, (200000, 300000), ["lxc.idmap = u 0 200000 65536", "lxc.idmap = g 0 300000 65536"]),
        ("", (100000, 100000), ["lxc.idmap = u 0 100000 65536", "lxc.idmap = g 0 100000 65536"]),
    ],
)
def test_id_map(original: str, owner: tuple[int, int], maps: list[str]) -> None:
    assert idmaps(restore_config(original, "rt", ROOTFS, owner)) == maps


def test_identity_network_mounts_and_hooks_are_replaced_or_dropped() -> None:
    lines = restore_config(UNPRIV, "pveguard-restoretest-101-abc", ROOTFS, (100000, 100000))
    assert lines[:3] == ["lxc.uts.name = pveguard-restoretest-101-abc", f"lxc.rootfs.path = dir:{ROOTFS}",
                         "lxc.net.0.type = empty"]  # fmt: skip
    rest = lines[3:]
    assert not [ln for ln in rest if ln.startswith(("lxc.uts.", "lxc.rootfs.", "lxc.net.", "lxc.mount.entry",
                                                    "lxc.hook.", "lxc.start."))]  # fmt: skip
    assert "lxc.include = /usr/share/lxc/config/debian.userns.conf" in rest
    assert "lxc.cgroup2.memory.max = 268435456" in rest


def test_inferred_map_brings_the_userns_include_and_a_config_without_include_gets_common() -> None:
    lines = restore_config("", "rt", ROOTFS, (100000, 100000))
    assert "lxc.include = /usr/share/lxc/config/common.conf" in lines
    assert "lxc.include = /usr/share/lxc/config/userns.conf" in lines
    assert restore_config("", "rt", ROOTFS, (0, 0))[3:] == ["lxc.include = /usr/share/lxc/config/common.conf"]
