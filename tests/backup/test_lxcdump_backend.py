"""Backups of containers made by pveguard's own LXC backend (loop-image roots), real LXC:
archive while running (through the frozen init's root) and while stopped (read-only loop mount),
verify, test-restore, and leave no mount or loop device behind."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backup.lxcdump import container_state, dump_container, restore_test
from pveguard.backup.verify import verify_archive
from tests.lxc.conftest import lxc_env, lxcfs  # noqa: F401  (fixtures: private lxcpath, bridges, cleanup)

pytestmark = pytest.mark.slow


def test_backend_container_running_and_stopped(lxc_env: Any, tmp_path: Path) -> None:  # noqa: F811
    b = lxc_env.backend
    br = lxc_env.bridge("k")
    g = b.create(GuestSpec(name="pgt-bk", role="test", cores=1, memory_mib=256, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=br, ip="10.250.40.2/24")))  # fmt: skip
    b.start(g)
    data = secrets.token_hex(16)
    assert b.exec(g, ["sh", "-c", f"mkdir -p /srv/app && echo {data} > /srv/app/data.txt && sync"]).ok
    lxcpath = Path(b.lxcpath)
    dump = tmp_path / "dump"

    live = dump_container(str(g.vmid), g.vmid, dump, lxcpath, mode="suspend", notes="pgt-bk")
    assert container_state(str(g.vmid), lxcpath) == "RUNNING"
    listing = subprocess.run(["tar", "--zstd", "-tf", str(live.archive)], capture_output=True, text=True,
                             check=True).stdout.splitlines()  # fmt: skip
    assert "./srv/app/data.txt" in listing and "./etc/vzdump/lxc.conf" in listing
    assert "./etc/vzdump/pveguard.json" in listing
    # other file systems (proc, sys, dev, run) are empty directories in the archive, as with vzdump
    holes = {"./proc/", "./sys/", "./dev/"}
    assert holes <= set(listing)
    assert not any(n.startswith(tuple(holes)) and n not in holes for n in listing)
    assert verify_archive(live.archive).ok

    # restored where an unprivileged container's mapped root can walk (not pytest's 0700 tmp)
    restored = restore_test(live.archive, lxc_env.root / "rt", ["cat", "/srv/app/data.txt"], expect_output=data)
    assert restored.ok, restored.problems
    if b.get_config(g).get("unprivileged"):
        # the mapped root cannot walk pytest's 0700 tmp: a clear problem naming it, not lxc-start's "see the log"
        closed = restore_test(live.archive, tmp_path / "closed")
        assert not closed.ok and "is not searchable by other users" in closed.problems[0], closed.problems
        assert not list((tmp_path / "closed").iterdir())

    b.stop(g)
    time.sleep(1)  # archive names carry whole seconds
    cold = dump_container(str(g.vmid), g.vmid, dump, lxcpath, mode="stop")
    assert container_state(str(g.vmid), lxcpath) == "STOPPED"  # was stopped, stays stopped
    assert verify_archive(cold.archive).ok
    assert "./srv/app/data.txt" in subprocess.run(["tar", "--zstd", "-tf", str(cold.archive)], capture_output=True,
                                                  text=True, check=True).stdout.splitlines()  # fmt: skip
    mounts = Path("/proc/self/mounts").read_text()
    assert ".pveguard-mnt-" not in mounts
    b.destroy(g)
    assert lxc_env.leftovers(keep=lxc_env.bridges) == []
