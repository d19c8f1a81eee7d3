"""The audit's resolved dependency graph gives the shared closure's answers, on recorded roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.audit.pkggraph import DependencyGraph
from pveguard.packages.classify import closure
from pveguard.packages.status import read_status

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("case", ["debian-nginx", "pve-fake", "pve-alternatives"])
def test_closure_equals_shared_closure(case: str) -> None:
    packages = read_status(GOLDEN / case / "root/var/lib/dpkg/status")
    graph = DependencyGraph(packages)
    names = sorted(n for n, p in packages.items() if p.installed)
    samples = [[n] for n in names[::5]] + [["proxmox-ve"], ["mail-transport-agent"], ["not-installed"], names[:30]]
    for roots in samples:
        assert graph.closure(roots) == closure(roots, packages), roots
    for target in names[::9]:
        dependents = graph.dependents([target])
        for name in names[::4]:
            assert (name in dependents) == (target in graph.closure([name])), (name, target)
