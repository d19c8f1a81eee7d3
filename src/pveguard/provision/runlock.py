"""One apply at a time per state directory: two concurrent runs would both see a container missing.

The holder writes its pid, what it runs and its command line into the lock file, so a refused run
can say who holds it (an update or the watchdog holds provision.lock too, not only apply)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pveguard import invocation
from pveguard.errors import OperationError

LOCK_NAME = "provision.lock"


@contextmanager
def state_lock(state_dir: Path, name: str, what: str) -> Iterator[None]:
    """Hold an exclusive flock on <state-dir>/<name>; fail at once, naming what the holder runs (its
    `what`), its command line and pid, if another process holds it.

    The kernel drops the lock when the holder dies (kill -9 included), so a crash never leaves it stuck.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / name, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OperationError(held_by(os.pread(fd, 4096, 0).decode(errors="replace"), state_dir / name, what),
                                 hint="wait for it to finish, then run this command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{what}\n{invocation.command_line()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def held_by(content: str, path: Path, what: str) -> str:
    """The refusal: who holds the lock, from its file (`pid`, then what it runs and its command line;
    an older pveguard wrote the pid only)."""
    lines = [ln.strip() for ln in content.splitlines()]
    pid = (lines[0] if lines else "") or "unknown"
    if len(lines) >= 3 and lines[1]:
        return (f"another pveguard {lines[1]} is running ('{lines[2]}', pid {pid}) and holds {path}: "
                f"this {what} cannot run beside it")
    return f"another pveguard {what} is running (pid {pid}; it holds {path})"


@contextmanager
def apply_lock(state_dir: Path, what: str = "apply") -> Iterator[None]:
    """One apply, update, scale or watchdog sweep at a time (`what` this one is): <state-dir>/provision.lock."""
    with state_lock(state_dir, LOCK_NAME, what):
        yield
