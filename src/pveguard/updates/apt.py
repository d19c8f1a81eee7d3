"""What apt inside a container says: pending upgrades (with their origins) and the upgrade commands.

Pending upgrades come from `apt-get -s upgrade` (a simulation: no lock, no change), whose `Inst` lines
name each package's installed version, the candidate and the release files it comes from:

    Inst libc6 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian:12.6/stable, Debian-Security:12/stable-security [amd64])

An upgrade is a *security* update when one of those release files is a security archive: its origin
or label says Security (Debian-Security) or its suite ends in `-security` (bookworm-security,
jammy-security) -- the same test unattended-upgrades' default origins pattern makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# DEBIAN_FRONTEND and the conffile choice: an upgrade never stops at a question (keep the admin's
# changed config files, take the package's for untouched ones).
NONINTERACTIVE = ["env", "DEBIAN_FRONTEND=noninteractive", "NEEDRESTART_MODE=a", "APT_LISTCHANGES_FRONTEND=none"]
DPKG_OPTS = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]

REFRESH = [*NONINTERACTIVE, "apt-get", "-q", "update"]
SIMULATE = [*NONINTERACTIVE, "apt-get", "-s", "-q", "upgrade"]

_INST = re.compile(r"^Inst (?P<name>\S+) \[(?P<old>[^\]]+)\] \((?P<new>\S+) (?P<origins>.*?) ?\[(?P<arch>[^\]]+)\]\)")


@dataclass(frozen=True)
class Pending:
    name: str
    installed: str
    candidate: str
    origins: tuple[str, ...]
    arch: str

    @property
    def security(self) -> bool:
        return any(is_security(o) for o in self.origins)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "installed": self.installed, "candidate": self.candidate,
                "security": self.security, "origins": list(self.origins)}


def is_security(origin: str) -> bool:
    """`Debian-Security:12/stable-security`, `Ubuntu:22.04/jammy-security`, `local:stable-security` (a
    release without a version, as apt prints it: Origin:Suite): a security archive."""
    low = origin.lower()
    name, _, rest = low.partition(":")
    suite = rest.rsplit("/", 1)[-1]
    return any(w == "security" or w.endswith("-security") for w in (name, suite))


def parse_simulation(text: str) -> list[Pending]:
    """The upgrades an `apt-get -s upgrade` run would make (new installs have no `[installed]` and are left out)."""
    out: list[Pending] = []
    for line in text.splitlines():
        m = _INST.match(line.strip())
        if not m:
            continue
        origins = tuple(o.strip() for o in m["origins"].split(",") if o.strip())
        out.append(Pending(m["name"], m["old"], m["new"], origins, m["arch"]))
    return out


def upgrade_argv(packages: list[Pending] | None) -> list[str]:
    """`apt-get upgrade` for everything pending, or `install --only-upgrade` of the named packages only."""
    base = [*NONINTERACTIVE, "apt-get", "-y", "-q", *DPKG_OPTS]
    if packages is None:
        return [*base, "upgrade"]
    return [*base, "install", "--only-upgrade", *sorted(p.name for p in packages)]
