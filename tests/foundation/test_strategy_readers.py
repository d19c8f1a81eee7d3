"""Every strategy key does something, or says that it does not yet (issue 11).

A key counts as read when code outside `src/pveguard/strategy/` accesses it as an attribute. Names
shared by several models (`storage`, `schedule`, `bridge`, ...) only count when the access names
the owner too: `.proxmox.storage`, or a variable called like the owning field (`offsite.target`).
Strategy's own accessors (`Strategy.container_bridge`) count for the fields they read when code
outside strategy/ calls them. Every key that is not read must be listed in
`strategy/enforcement.py`'s NOT_ENFORCED, which makes `check` warn about it.

The limit of reading names: a generic name (`.description`, `.name`) read for another object in a
module that also handles strategy objects looks like a reader. Finding `core_functions` unread
took a look by hand; the table says so now.
"""

from __future__ import annotations

import ast
import typing
from collections import defaultdict
from pathlib import Path

import pytest
from pydantic import BaseModel

from pveguard.strategy import enforcement, models
from pveguard.strategy.enforcement import NOT_ENFORCED, issue_for
from pveguard.strategy.models import Strategy
from pveguard.strategy.reference import _model_of

SRC = Path(__file__).resolve().parents[2] / "src/pveguard"
STRATEGY_DIR = SRC / "strategy"

# Keys whose only reader is the loader's own capacity check: their whole effect is the warning
# `check` prints ("containers ask for ... more than the host can give"). Checked below to really be
# read by strategy/load.py, so this list cannot hide a dead key.
LOADER_CHECKS = {"resources.max_cpu_overcommit", "resources.max_memory_overcommit",
                 "resources.host_reserved_memory", "resources.host.cores", "resources.host.memory"}
# Keys the model enforces itself: a value pveguard cannot honour is refused when the strategy loads
# (audit logging cannot be switched off: every action is in the ledger).
MODEL_CHECKS = {"security.access.audit_logging"}

# key, field name, owning field, owning model, loc
Leaf = tuple[str, str, str | None, type[BaseModel], tuple[str | int, ...]]


def leaves(model: type[BaseModel] = Strategy, prefix: str = "", owner: str | None = None,
           loc: tuple[str | int, ...] = ()) -> list[Leaf]:
    """Every scalar/list key of the strategy with the field and the model that hold it."""
    out: list[Leaf] = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        here = (*loc, name, *((0,) if is_list and sub else ()))
        if sub is None:
            out.append((f"{prefix}{name}", name, owner, model, (*loc, name)))
        else:
            out += leaves(sub, f"{prefix}{name}{'[]' if is_list else ''}.", name, here)
    return out


def owners() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    todo: list[type[BaseModel]] = [Strategy]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            found[name].add(model.__name__)
            sub = _model_of(field.annotation)
            if sub is not None:
                todo.append(sub)
    return found


class Accesses:
    """Attribute names accessed in one module (or method), and every identifier it uses."""

    def __init__(self, tree: ast.AST) -> None:
        self.names: set[str] = set()
        self.words: set[str] = set()
        self.pairs: set[tuple[str, str]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                self.names.add(node.attr)
                if isinstance(node.value, ast.Attribute | ast.Name):
                    owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
                    self.pairs.add((owner, node.attr))
            elif isinstance(node, ast.Name):
                self.words.add(node.id)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                self.names.add(node.args[1].value)
        self.words |= self.names


def outside_accesses() -> list[Accesses]:
    """One entry per module outside strategy/, plus Strategy's accessor methods that they call."""
    found = [Accesses(ast.parse(path.read_text(), str(path)))
             for path in SRC.rglob("*.py") if STRATEGY_DIR not in path.parents]
    called = set().union(*(a.names for a in found))
    module = ast.parse(Path(models.__file__).read_text())
    for cls in module.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "Strategy":
            found += [Accesses(method) for method in cls.body
                      if isinstance(method, ast.FunctionDef) and method.name in called]
    return found


def is_read(leaf: Leaf, modules: list[Accesses], shared: dict[str, set[str]]) -> bool:
    """Read when some module accesses `.name`. For a name several models share, that module must
    also show it handles the owning model: it uses the owning field's name (`.proxmox`,
    `containers`) or accesses a field only that model has (`.smtp_host` for notifiers)."""
    _, name, owner, model, _ = leaf
    if len(shared[name]) == 1 or owner is None:
        return any(name in m.names for m in modules)
    own = {f for f in model.model_fields if len(shared[f]) == 1}
    return any(name in m.names and (owner in m.words or own & m.names) for m in modules)


def test_every_key_is_read_outside_strategy_or_marked_not_enforced() -> None:
    acc, shared = outside_accesses(), owners()
    silent = [leaf[0] for leaf in leaves()
              if leaf[0] not in LOADER_CHECKS | MODEL_CHECKS and issue_for(leaf[-1]) is None
              and not is_read(leaf, acc, shared)]
    assert not silent, (f"strategy keys nothing outside src/pveguard/strategy/ reads: {silent}; make them work or "
                        "add them to NOT_ENFORCED in src/pveguard/strategy/enforcement.py with the issue that will")


def test_loader_check_keys_are_really_read_by_the_loader() -> None:
    acc = Accesses(ast.parse((STRATEGY_DIR / "load.py").read_text()))
    for key in LOADER_CHECKS:
        owner, name = key.split(".")[-2:]
        assert (owner, name) in acc.pairs, key


def test_not_enforced_table_names_real_keys() -> None:
    keys = {key for key, *_ in leaves()}
    sections = {key.rsplit(".", 1)[0] for key in keys} | {k.split(".")[0] for k in keys}
    for key in NOT_ENFORCED:
        prefixes = {k[: len(key)] for k in keys if k.startswith(key)}
        assert key in keys or key in sections or prefixes == {key}, f"{key} is not a strategy key"


def test_the_check_detects_a_key_nobody_reads() -> None:
    """The test above can fail: an enforced key whose reads are hidden from the scan is reported
    (NOT_ENFORCED has shrunk to keys with generic names, like serve.container, or to nothing, so the
    test no longer takes keys out of it)."""
    acc, shared = outside_accesses(), owners()

    def silent_keys(modules: list[Accesses]) -> set[str]:
        return {leaf[0] for leaf in leaves()
                if leaf[0] not in LOADER_CHECKS | MODEL_CHECKS and enforcement.issue_for(leaf[-1]) is None
                and not is_read(leaf, modules, shared)}

    assert "emergency.resource_exhaustion.scale_step" not in silent_keys(acc)
    for m in acc:  # nobody reads scale_step any more
        m.names.discard("scale_step")
        m.words.discard("scale_step")
    assert "emergency.resource_exhaustion.scale_step" in silent_keys(acc)


def test_model_check_keys_are_refused_when_off() -> None:
    """Keys enforced by the model itself (a value that cannot be honoured is refused)."""
    import pydantic

    for key in MODEL_CHECKS:
        doc: dict[str, typing.Any] = {}
        *parents, last = key.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = False
        with pytest.raises(pydantic.ValidationError):
            Strategy.model_validate(doc)
