"""Strategy keys that are accepted but not enforced yet, each with the issue that will enforce it.

This table is the one place that says so. `check` and every command that loads the strategy
warn when a strategy sets one of these keys to a value other than its default; `check` also
notes the ones left at their defaults; `init` marks them in its comments and the README's status
section is generated from it. When code starts to enforce a key, delete its line here.

A test (tests/foundation/test_strategy_readers.py) fails when a strategy key has no reader
outside `strategy/` and is not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pveguard.strategy.models import Container, Strategy

# Key path (``containers[].x`` means that key of every container; a section covers every key below
# it) -> the issue that will implement it.
NOT_ENFORCED: dict[str, int] = {
}

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Unenforced:
    """A not-enforced key as this strategy sets it: `loc` is the concrete place, `key` the table's."""

    loc: Loc
    key: str
    issue: int

    def message(self) -> str:
        return f"accepted but not enforced yet (issue #{self.issue})"


def issue_for(loc: Loc) -> int | None:
    """The issue that will enforce the key at `loc` (or a section above it), None when enforced."""
    parts = [("[]" if isinstance(p, int) else p) for p in loc]
    for end in range(len(parts), 0, -1):
        key = ".".join(str(p) for p in parts[:end]).replace(".[]", "[]")
        if key in NOT_ENFORCED:
            return NOT_ENFORCED[key]
    return None


def non_default(strategy: Strategy) -> list[Unenforced]:
    """Every not-enforced key this strategy sets to something other than its default, leaf by leaf.

    A container's keys compare with the default strategy's container of the same name (so the
    defaults `init` writes raise no warning), else with the field's own default.
    """
    data = strategy.model_dump(mode="json")
    defaults = Strategy().model_dump(mode="json")
    seed = {c["name"]: c for c in defaults["containers"]}
    found: list[Unenforced] = []
    for key, issue in NOT_ENFORCED.items():
        if key.startswith("containers[]."):
            name = key.removeprefix("containers[].")
            field_default = Container.model_fields[name].get_default(call_default_factory=True)
            for i, container in enumerate(data["containers"]):
                base = seed[container["name"]][name] if container["name"] in seed else _json(field_default)
                found += _diff(container[name], base, ("containers", i, name), key, issue)
        else:
            parts = key.split(".")
            found += _diff(_at(data, parts), _at(defaults, parts), tuple(parts), key, issue)
    return found


def at_default(strategy: Strategy) -> list[str]:
    """Table keys this strategy leaves entirely at their defaults (so an admin may believe they act)."""
    changed = {u.key for u in non_default(strategy)}
    return [key for key in NOT_ENFORCED if key not in changed]


def _at(data: Any, parts: list[str]) -> Any:
    for part in parts:
        data = data[part]
    return data


def _json(value: Any) -> Any:
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _diff(value: Any, default: Any, loc: Loc, key: str, issue: int) -> list[Unenforced]:
    """The leaves under `loc` where `value` differs from `default` (lists compare whole)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out: list[Unenforced] = []
        for name, item in value.items():
            out += _diff(item, default.get(name), (*loc, name), key, issue)
        return out
    return [] if value == default else [Unenforced(loc, key, issue)]
