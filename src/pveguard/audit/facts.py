"""What the audit knows about a host: plain dataclasses filled by `inventory.py`, read by the pure
modules (services, suggest, depmap, findings, score) and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pveguard.audit.unitfile import UnitFile
from pveguard.packages.status import Package


@dataclass
class Unit:
    """A systemd unit found on the host (a unit file, or a loaded unit the live system reports)."""

    name: str
    path: str | None = None              # path of the unit file inside the audited root
    package: str | None = None           # owning package (dpkg file lists), None for local files
    enablement: str = "unknown"          # enabled | disabled | static | masked | alias | indirect | unknown
    active: str | None = None            # active | inactive | failed | ... ; None when not live
    sub: str | None = None               # running | exited | dead | ... ; None when not live
    wanted_by: list[str] = field(default_factory=list)  # units whose .wants/.requires link to this one
    file: UnitFile | None = None

    @property
    def kind(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def running(self) -> bool:
        return self.active == "active" and self.sub in ("running", "listening", "waiting", "mounted", "plugged",
                                                        "active", "elapsed")

    @property
    def enabled(self) -> bool:
        return self.enablement in ("enabled", "alias", "indirect")


@dataclass
class Socket:
    """A listening TCP socket or a bound UDP socket."""

    proto: str            # tcp | tcp6 | udp | udp6
    address: str
    port: int
    inode: int
    pid: int | None = None
    process: str | None = None
    unit: str | None = None

    @property
    def loopback(self) -> bool:
        return self.address.startswith("127.") or self.address == "::1"


@dataclass
class CronJob:
    source: str           # file the job comes from
    schedule: str         # cron fields, @keyword, or the run-parts directory (daily, hourly, ...)
    user: str
    command: str
    package: str | None = None


@dataclass
class Unavailable:
    """A fact the audit could not collect, and why (offline root, not root, tool missing)."""

    fact: str
    reason: str


@dataclass
class HostFacts:
    root: Path
    live: bool
    hostname: str = ""
    pve_detected: bool = False
    pve_evidence: str = ""
    systemd_running: bool = False
    packages: dict[str, Package] = field(default_factory=dict)
    auto_installed: set[str] = field(default_factory=set)
    package_files: dict[str, list[str]] = field(default_factory=dict)  # package -> paths it ships
    conffiles: dict[str, list[str]] = field(default_factory=dict)      # package -> its conffiles
    units: dict[str, Unit] = field(default_factory=dict)
    sockets: list[Socket] = field(default_factory=list)
    cron: list[CronJob] = field(default_factory=list)
    container_runtimes: dict[str, list[str]] = field(default_factory=dict)  # docker|podman -> evidence
    users: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (uid, home)
    unavailable: list[Unavailable] = field(default_factory=list)
    needs_root: list[str] = field(default_factory=list)

    def missing(self, fact: str, reason: str) -> None:
        self.unavailable.append(Unavailable(fact, reason))

    def is_unavailable(self, fact: str) -> bool:
        return any(u.fact == fact for u in self.unavailable)
