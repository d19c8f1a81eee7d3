"""One apply at a time per state directory: two concurrent runs would both see a container missing."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pveguard.errors import OperationError

LOCK_NAME = "provision.lock"


@contextmanager
def state_lock(state_dir: Path, name: str, what: str) -> Iterator[None]:
    """Hold an exclusive flock on <state-dir>/<name>; fail at once, naming the holder's pid and
    `what` it runs, if another process holds it.

    The kernel drops the lock when the holder dies (kill -9 included), so a crash never leaves it stuck.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / name, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OperationError(f"another pveguard {what} is running (pid {holder})",
                                 hint="wait for it to finish, then run this command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def apply_lock(state_dir: Path) -> Iterator[None]:
    """One apply (or update, or watchdog sweep) at a time: <state-dir>/provision.lock."""
    with state_lock(state_dir, LOCK_NAME, "apply"):
        yield
