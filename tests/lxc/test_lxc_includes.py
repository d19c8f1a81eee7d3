"""The LXC backend refuses to write a config whose `lxc.include` files are missing (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.lxc import LxcBackend, check_includes, config_includes
from pveguard.errors import BackendError
from pveguard.strategy.models import LxcTarget

from .test_lxc_logic import facts


def backend(tmp_path: Path, config_dir: Path, *, ids: bool = True) -> LxcBackend:
    target = LxcTarget(lxcpath=str(tmp_path / "lxc"), disk_dir=str(tmp_path / "disks"),
                       template_cache=str(tmp_path / "cache"))
    # pve_dir exists: a PVE host, where pveguard never makes a missing bridge itself
    b = LxcBackend(target, lxc_config_dir=config_dir, pve_dir=tmp_path)
    b._facts = facts(2, ids=ids)  # host facts as on a host with an id range, without probing this one
    return b


def spec() -> GuestSpec:
    return GuestSpec(name="web", role="test", cores=1, memory_mib=256, swap_mib=0, disk_gib=1,
                     net=NetSpec(bridge="pgtnone0"))


def test_create_names_the_missing_include_and_its_package_and_leaves_nothing(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "common.conf").write_text("")  # what `lxc` alone ships
    b = backend(tmp_path, config_dir)
    with pytest.raises(BackendError) as err:
        b.create(spec())
    assert f"{config_dir}/debian.common.conf" in err.value.message
    assert "lxc-templates" in err.value.message and err.value.hint == "apt-get install lxc-templates"
    assert not (tmp_path / "lxc").exists() and not (tmp_path / "disks").exists()


def test_unprivileged_needs_the_userns_include_too(tmp_path: Path) -> None:
    (tmp_path / "debian.common.conf").write_text("")
    conf = {"unprivileged": 1}
    with pytest.raises(BackendError, match=r"debian\.userns\.conf"):
        check_includes(config_includes(conf, facts(2, ids=True), tmp_path))
    check_includes(config_includes(conf, facts(2, ids=False), tmp_path))  # runs privileged: one include
    (tmp_path / "debian.userns.conf").write_text("")
    check_includes(config_includes(conf, facts(2, ids=True), tmp_path))


def test_with_the_includes_present_create_goes_on_to_the_next_check(tmp_path: Path) -> None:
    for name in ("debian.common.conf", "debian.userns.conf"):
        (tmp_path / name).write_text("")
    with pytest.raises(BackendError, match="bridge 'pgtnone0' does not exist"):
        backend(tmp_path, tmp_path).create(spec())
