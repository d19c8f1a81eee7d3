"""Dependency map of a service: unit dependencies both ways, the packages it pulls in, its ports.

Pure functions over `HostFacts`; package closures come from the resolved `DependencyGraph` (the shared
`packages.classify.closure` semantics).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pveguard.audit.facts import HostFacts, Unit
from pveguard.audit.pkggraph import DependencyGraph

FORWARD = ("Requires", "Requisite", "BindsTo", "Wants", "PartOf", "After")


@dataclass
class DepEntry:
    unit: str
    requires: list[str] = field(default_factory=list)
    requisite: list[str] = field(default_factory=list)
    binds_to: list[str] = field(default_factory=list)
    wants: list[str] = field(default_factory=list)
    part_of: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    required_by: list[str] = field(default_factory=list)   # Requires=/BindsTo=/Requisite= on it, .requires links
    wanted_by: list[str] = field(default_factory=list)     # Wants= on it, .wants links (enablement)
    ordered_before: list[str] = field(default_factory=list)  # units that start after it
    packages: list[str] = field(default_factory=list)      # non-core packages its package pulls in (itself first)
    exclusive_packages: list[str] = field(default_factory=list)  # of those, needed by nothing else installed
    ports: list[str] = field(default_factory=list)


@dataclass
class ReverseIndex:
    """Who points at whom, built once over all unit files."""

    required_by: dict[str, set[str]] = field(default_factory=dict)
    wanted_by: dict[str, set[str]] = field(default_factory=dict)
    after_it: dict[str, set[str]] = field(default_factory=dict)
    before_it: dict[str, set[str]] = field(default_factory=dict)


def reverse_index(units: Mapping[str, Unit]) -> ReverseIndex:
    idx = ReverseIndex()
    for name, unit in units.items():
        if unit.file is None or unit.path is None or name != unit.file.name:
            continue  # instances and aliases share the template's file; count each file once
        for key in ("Requires", "BindsTo", "Requisite"):
            for target in unit.file.units("Unit", key):
                idx.required_by.setdefault(target, set()).add(name)
        for target in unit.file.units("Unit", "Wants"):
            idx.wanted_by.setdefault(target, set()).add(name)
        for target in unit.file.units("Unit", "After"):
            idx.after_it.setdefault(target, set()).add(name)
        for target in unit.file.units("Unit", "Before"):
            idx.before_it.setdefault(target, set()).add(name)
    for name, unit in units.items():
        for by in unit.wanted_by:
            idx.wanted_by.setdefault(name, set()).add(by)
    return idx


def dependencies(unit: Unit, facts: HostFacts, idx: ReverseIndex, core: set[str],
                 manual: Iterable[str], graph: DependencyGraph | None = None) -> DepEntry:
    """The dependency map entry of one unit.

    `core` = core packages and everything they depend on (staying on the host anyway); `manual` =
    manually installed packages (what keeps other packages installed besides the core).
    """
    entry = DepEntry(unit=unit.name)
    if unit.file is not None:
        f = unit.file
        entry.requires = f.units("Unit", "Requires")
        entry.requisite = f.units("Unit", "Requisite")
        entry.binds_to = f.units("Unit", "BindsTo")
        entry.wants = f.units("Unit", "Wants")
        entry.part_of = f.units("Unit", "PartOf")
        entry.after = f.units("Unit", "After")
    entry.after = sorted(set(entry.after) | idx.before_it.get(unit.name, set()))
    entry.required_by = sorted(idx.required_by.get(unit.name, set()))
    entry.wanted_by = sorted(idx.wanted_by.get(unit.name, set()))
    entry.ordered_before = sorted(idx.after_it.get(unit.name, set()))
    entry.ports = sorted({f"{s.proto}/{s.port}" for s in facts.sockets if s.unit == unit.name})
    if unit.package and unit.package in facts.packages:
        graph = graph or DependencyGraph(facts.packages)
        pulled = graph.closure([unit.package])
        non_core = [p for p in pulled if p not in core]
        entry.packages = [unit.package, *sorted(p for p in non_core if p != unit.package)]
        others = set(graph.closure([m for m in manual if m != unit.package])) | core
        entry.exclusive_packages = [p for p in entry.packages if p not in others]
    return entry
