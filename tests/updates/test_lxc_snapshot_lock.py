"""The plain-LXC snapshot lock: held by a live process it refuses, left by a dead one it is taken over
(a snapshot killed half-way must not lock the container for ever)."""

from __future__ import annotations

import os
import subprocess

from pveguard.backends.lxc import _process_id, _stale_snapshot_lock


def test_a_snapshot_lock_of_a_live_process_is_not_stale() -> None:
    assert not _stale_snapshot_lock({"lock": "snapshot", "locker": _process_id(os.getpid())})


def test_a_snapshot_lock_of_a_gone_process_is_stale() -> None:
    proc = subprocess.Popen(["true"])
    who = _process_id(proc.pid)
    proc.wait()
    for lock in ("snapshot", "rollback", "snapshot-delete"):
        assert _stale_snapshot_lock({"lock": lock, "locker": who})
    assert not _stale_snapshot_lock({"lock": "create", "locker": who})  # create has its own rule
    assert not _stale_snapshot_lock({"lock": "snapshot"})  # no locker recorded: never guessed stale
