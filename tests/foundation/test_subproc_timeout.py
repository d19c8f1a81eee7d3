"""A runner's timeout takes the whole process tree down: the `pct` under `sh`/`ssh`, not only the child.

The fake `pct` here starts a grandchild (`sleep`) and waits for it, as pct's perl waits for lxc-attach;
after the timeout the grandchild must be gone, not reparented to init and still running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pveguard import subproc
from pveguard.backends.base import Guest
from pveguard.backends.proxmox import ProxmoxBackend, PveSettings
from pveguard.errors import BackendError, OperationError
from pveguard.migrate.endpoints import Local


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for good (it only waits for its parent, init here, to reap it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def assert_gone(pidfile: Path) -> None:
    """The process whose pid the child wrote is gone soon (killed here if not, so the test leaves nothing)."""
    pid = int(pidfile.read_text())
    try:
        assert gone_soon(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def gone_soon(pid: int, within: float = 3.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def grandchild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A `pct` on PATH that leaves a sleeping grandchild; yields a function reading its pid."""
    pidfile = tmp_path / "grandchild.pid"
    pct = tmp_path / "bin" / "pct"
    pct.parent.mkdir()
    pct.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    pct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{pct.parent}:{os.environ['PATH']}")

    def pid() -> int:
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                return int(pidfile.read_text())
            time.sleep(0.02)
        raise AssertionError("the fake pct never started its grandchild")

    pids: list[int] = []
    yield lambda: pids.append(pid()) or pids[-1]
    for p in pids:  # a failing test leaves nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def backend() -> ProxmoxBackend:
    # local mode on node pve1: pct runs here (the fake), no API call is made
    return ProxmoxBackend(PveSettings(mode="local", local_node="pve1"), api=object())


def test_pct_exec_timeout_kills_pct_children(grandchild) -> None:  # type: ignore[no-untyped-def]
    g = Guest(101, "ct", "pve1", "lxc", "running")
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="no result within 1s"):
        backend().exec(g, ["true"], timeout=1)
    assert time.monotonic() - t0 < 10
    assert gone_soon(grandchild()), "pct's child outlived the timeout"


def test_has_files_timeout_kills_pct_under_sh_and_xargs(grandchild) -> None:  # type: ignore[no-untyped-def]
    g = Guest(101, "ct", "pve1", "lxc", "running")
    got = backend().has_files([g], "/etc/pveguard/pve-token", timeout=1)
    assert "no result within 1s" in str(got[101])
    assert gone_soon(grandchild()), "sh -> xargs -> sh -> pct -> sleep outlived the timeout"


def test_migrate_endpoint_timeout_kills_the_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(OperationError, match="did not finish within 1s"):
        Local().sh(f"sleep 300 & echo $! > {pidfile}; wait", timeout=1)
    assert_gone(pidfile)


def test_ctrl_c_kills_the_tree(tmp_path: Path) -> None:
    """KeyboardInterrupt while waiting (the child, in its own session, does not see the terminal's ^C)."""
    pidfile = tmp_path / "pid"
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            subproc.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert_gone(pidfile)


def test_output_and_status_as_subprocess_run() -> None:
    p = subproc.run(["sh", "-c", "cat; echo err >&2; exit 3"], input=b"in\n", timeout=10)
    assert (p.returncode, p.stdout, p.stderr) == (3, b"in\n", b"err\n")
    with pytest.raises(FileNotFoundError):
        subproc.run(["/nonexistent/pveguard-no-such-tool"], timeout=5)
    assert isinstance(p, subprocess.CompletedProcess)
