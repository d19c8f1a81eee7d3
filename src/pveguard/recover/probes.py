"""Health checks (`containers[].health_checks`), all run inside the container through `backend.exec`.

Inside, because that is the one place every backend reaches the same way (PVE over pct/ssh, plain
LXC by lxc-attach), needs no route from this host to the container's network, and checks the
service itself rather than a firewall in between: tcp connects to 127.0.0.1:port (bash's /dev/tcp),
http fetches the URL with curl or wget, command runs the given argv. Each is bounded by its
`timeout` (coreutils `timeout`). A check that could not be run at all (the backend failed) is
*unknown*, never *unhealthy*: the watchdog does not restart a container it could not look at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pveguard.backends.base import Backend, Guest
from pveguard.errors import BackendError
from pveguard.strategy.models import HealthCheck

_HTTP = ('if command -v curl >/dev/null 2>&1; then exec curl -fsS -o /dev/null -m "$1" "$0"; '
         'elif command -v wget >/dev/null 2>&1; then exec wget -q -O /dev/null -T "$1" "$0"; '
         'else echo "neither curl nor wget in the container" >&2; exit 127; fi')


@dataclass(frozen=True)
class ProbeResult:
    check: str  # e.g. "tcp 22", "http http://127.0.0.1/", "command systemctl is-active nginx"
    ok: bool | None  # None: could not be run (unknown)
    detail: str = ""


def describe(check: HealthCheck) -> str:
    if check.type == "tcp":
        return f"tcp {check.port}"
    if check.type == "http":
        return f"http {check.url}"
    return "command " + " ".join(check.command or [])


def argv_for(check: HealthCheck) -> list[str]:
    """The command that runs one check inside the container."""
    seconds = str(max(1, math.ceil(check.timeout.total_seconds())))
    if check.type == "tcp":
        return ["timeout", seconds, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{check.port}"]
    if check.type == "http":
        return ["timeout", seconds, "sh", "-c", _HTTP, str(check.url), seconds]
    return ["timeout", seconds, *(check.command or [])]


def probe(backend: Backend, guest: Guest, check: HealthCheck) -> ProbeResult:
    name = describe(check)
    try:
        res = backend.exec(guest, argv_for(check), timeout=check.timeout.total_seconds() + 10)
    except BackendError as exc:
        return ProbeResult(name, None, exc.message)
    if res.ok:
        return ProbeResult(name, True)
    why = (res.stderr or res.stdout).strip().splitlines()
    detail = "timed out" if res.returncode == 124 else f"exit {res.returncode}"
    return ProbeResult(name, False, detail + (f": {why[-1][:200]}" if why else ""))


def run_checks(backend: Backend, guest: Guest, checks: list[HealthCheck]) -> list[ProbeResult]:
    """Every check once; stops at the first failure (the container is unhealthy either way)."""
    out: list[ProbeResult] = []
    for c in checks:
        r = probe(backend, guest, c)
        out.append(r)
        if r.ok is False:
            break
    return out


def verdict(results: list[ProbeResult]) -> bool | None:
    """True all passed, False one failed, None one could not be run (and none failed)."""
    if any(r.ok is False for r in results):
        return False
    if any(r.ok is None for r in results):
        return None
    return True
