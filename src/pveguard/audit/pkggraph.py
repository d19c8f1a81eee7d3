"""The installed packages' dependency graph, resolved once, for the many closures the audit takes.

Same semantics as `packages.classify.closure` (Depends/Pre-Depends; an alternative group is satisfied
by its first alternative that is installed directly or through Provides; Recommends ignored), but
the relations are parsed and resolved once instead of on every call: the audit asks for a closure
per non-core service and per manually installed package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pveguard.packages.classify import providers
from pveguard.packages.status import Package


class DependencyGraph:
    def __init__(self, packages: Mapping[str, Package]) -> None:
        self.provided = providers(packages)
        self.installed = {n for n, p in packages.items() if p.installed}
        self.edges: dict[str, list[str]] = {}
        for name in self.installed:
            out: list[str] = []
            for group in packages[name].depends():
                for alt in group:
                    resolved = self.resolve(alt)
                    if resolved:
                        out.extend(resolved)
                        break
            self.edges[name] = out
        self.reverse: dict[str, set[str]] = {}
        for name, deps in self.edges.items():
            for dep in deps:
                self.reverse.setdefault(dep, set()).add(name)

    def resolve(self, name: str) -> list[str]:
        """An installed package of that name, else the installed packages that provide it."""
        if name in self.installed:
            return [name]
        return list(self.provided.get(name, []))

    def closure(self, roots: Iterable[str]) -> dict[str, str]:
        """Installed packages reachable from `roots` -> the package that pulled each in (a root: itself)."""
        via: dict[str, str] = {}
        stack: list[tuple[str, str]] = []
        for root in roots:
            stack.extend((r, root) for r in self.resolve(root))
        while stack:
            name, parent = stack.pop()
            if name in via:
                continue
            via[name] = parent
            stack.extend((d, name) for d in self.edges.get(name, ()) if d not in via)
        return via

    def dependents(self, names: Iterable[str]) -> set[str]:
        """Installed packages that depend on any of `names`, directly or transitively (names included)."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(self.reverse.get(name, ()))
        return seen
