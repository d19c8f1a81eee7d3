"""Stopping the helper daemons tests start (sshd, lxcfs, Alertmanager): politely, then firmly."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL; always reaps the process."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
