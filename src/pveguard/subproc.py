"""Run a child with a timeout and take its whole process tree down when it runs out (or on Ctrl-C).

`subprocess.run(..., timeout=)` kills only the child it started: `ssh` or `sh -c` dies, while the `pct`,
`lxc-attach` or `xargs` under it keep running, holding the container's lock and the pipes. Here the child
starts in its own session (so its own process group, which its descendants inherit unless they leave it),
and on a timeout or a KeyboardInterrupt the whole group gets SIGKILL before the exception goes on. In its
own session the child no longer sees the terminal's Ctrl-C itself: the KeyboardInterrupt path is what
stops it then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import IO, Any


def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Send sig to the child's process group (the child leads it: start_new_session); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's process group, then reap the child."""
    signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()  # a child that left its group itself
    proc.wait()


def _stop(proc: subprocess.Popen[Any]) -> None:
    kill_group(proc)
    for f in (proc.stdin, proc.stdout, proc.stderr):  # not read to the end: one that left the group may hold them
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None,
        stdin: IO[Any] | int | None = None, cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run(argv, capture_output=True, check=False) with the child's process group killed on a
    timeout (subprocess.TimeoutExpired is raised after) or Ctrl-C (KeyboardInterrupt is re-raised).
    `started(proc)`: called once the child runs (to track it); what it raises stops the child and goes on."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if input is not None else stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                            start_new_session=True)
    try:
        if started is not None:
            started(proc)
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise
    except BaseException:  # KeyboardInterrupt (or a signal-raised error): nothing of it may outlive us
        _stop(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
