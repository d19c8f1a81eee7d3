"""Core or non-core for systemd units, on top of the shared package classification.

Rules, in order: the never-stop list (units a PVE node cannot lose: pve-cluster, corosync,
pveproxy, ssh, ...) is core whatever owns it; otherwise a unit is what its owning package is (the
shared `Classifier`); a unit file that no package owns is non-core (someone put it there by hand);
a unit without any file (transient, generated) is runtime state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pveguard.audit.facts import Unit
from pveguard.audit.pkggraph import DependencyGraph
from pveguard.packages.classify import REASON_TEXT, Classifier, is_never_stop_unit
from pveguard.packages.status import Package

# Priorities counted as Debian's base system: a non-PVE host's systemd, cron, iproute2 are not "non-core".
BASE_PRIORITIES = ("important",)
AUDIT_REASON_TEXT = {**REASON_TEXT, "base": "Debian base system (Priority: important)",
                     "host-role": "host role"}

# Units worth listing: what a service inventory shows (targets, mounts, paths are plumbing).
SERVICE_KINDS = ("service", "timer", "socket")


@dataclass(frozen=True)
class PackageVerdict:
    """A package's class for the audit: the shared `Verdict`'s fields, with the audit's extra reasons."""

    core: bool
    reason: str
    detail: str = ""

    @property
    def text(self) -> str:
        why = AUDIT_REASON_TEXT.get(self.reason, self.reason)
        return f"{why}, {self.detail}" if self.detail else why


class PackageClassifier(Protocol):
    def classify(self, name: str, pkg: Package | None = None) -> PackageVerdict: ...


@dataclass
class HostClassifier:
    """The shared classification (`packages.classify.Classifier`, the guard's rules) plus three audit rules:

    * base: a `Priority: important` package is Debian's base system (core on any host);
    * needed by core: an installed package a core package depends on (libapt-pkg for apt, libc6 for
      everything) stays on the host with it, so it is core too;
    * host role: what the host's own role needs (`suggest.host_role`: the active backend's packages,
      what the base system depends on or recommends) is core, so nothing suggests removing it.
    """

    base: Classifier
    graph: DependencyGraph | None = None
    needed_by: dict[str, str] = field(default_factory=dict)
    host_role: Mapping[str, str] = field(default_factory=dict)  # package -> why the host needs it

    def __post_init__(self) -> None:
        packages = self.base.packages
        self.graph = self.graph or DependencyGraph(packages)
        self.core = {n for n, p in packages.items() if p.installed and self.classify_own(n, p).core}
        self.needed_by = self.graph.closure(sorted(self.core))

    def classify_own(self, name: str, pkg: Package | None = None) -> PackageVerdict:
        """The shared verdict plus the base-system rule (no dependency closure of core)."""
        pkg = pkg or self.base.packages.get(name)
        v = self.base.classify(name, pkg)
        if not v.core and pkg is not None and pkg.priority in BASE_PRIORITIES:
            return PackageVerdict(True, "base")
        return PackageVerdict(v.core, v.reason, v.detail)

    def classify(self, name: str, pkg: Package | None = None) -> PackageVerdict:
        verdict = self.classify_own(name, pkg)
        if not verdict.core and name in self.needed_by:
            return PackageVerdict(True, "closure", f"needed by core package {self.needed_by[name]}")
        if not verdict.core and name in self.host_role:
            return PackageVerdict(True, "host-role", self.host_role[name])
        return verdict

    def core_set(self) -> set[str]:
        """Core packages and everything installed that they depend on."""
        return set(self.needed_by)


@dataclass(frozen=True)
class ServiceVerdict:
    core: bool
    reason: str      # never-stop | package | local | runtime
    detail: str


def classify_unit(unit: Unit, classifier: PackageClassifier) -> ServiceVerdict:
    """The verdict for one unit, with a human-readable reason."""
    stem = unit.name.rsplit(".", 1)[0]
    # A socket or timer that starts a never-stop service (ssh.socket -> ssh.service) is as vital as it.
    if is_never_stop_unit(unit.name) or (unit.kind in ("socket", "timer") and is_never_stop_unit(stem)):
        owner = f" (owned by {unit.package})" if unit.package else ""
        return ServiceVerdict(True, "never-stop", f"on the never-stop list{owner}")
    if unit.package:
        verdict = classifier.classify(unit.package)
        return ServiceVerdict(verdict.core, "package", f"owned by {unit.package}: {verdict.text}")
    if unit.path:
        return ServiceVerdict(False, "local", f"unit file {unit.path} is not owned by any package")
    if unit.enablement == "masked":
        return ServiceVerdict(True, "masked", "masked (linked to /dev/null) and no unit file behind it")
    return ServiceVerdict(True, "runtime", "transient or generated unit (no unit file, no package)")


def listed(unit: Unit) -> bool:
    """Services, timers and sockets, each once: templates appear through their instances, aliases
    through their target."""
    return unit.kind in SERVICE_KINDS and not unit.name.endswith("@.service") and unit.enablement != "alias"


def in_use(unit: Unit) -> bool:
    """Enabled or currently active: what runs (or will run at boot) on the host."""
    return unit.enabled or unit.active == "active"
