"""Load and validate the strategy file, reporting every problem with its line and column.

Messages look like compiler errors so editors can jump to them:
`strategy.yaml:23:15: containers[1].resources.memory: '2XB' is not a size; use e.g. 512M or 2G`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from pveguard.errors import ConfigError
from pveguard.strategy.models import Strategy

DEFAULT_PATH = Path("/etc/pveguard/strategy.yaml")
ENV_VAR = "PVEGUARD_STRATEGY"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One finding about the strategy file; `line`/`col` are 1-based, 0 when unknown."""

    path: str
    line: int
    col: int
    loc: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def text(self) -> str:
        """`FILE:LINE:COL: field.path: message`, without the severity."""
        where = f"{self.path}:{self.line}:{self.col}" if self.line else self.path
        return f"{where}: {self.loc + ': ' if self.loc else ''}{self.message}"

    def __str__(self) -> str:
        return ("warning: " if self.severity == "warning" else "") + self.text()


class StrategyInvalid(ConfigError):
    """The strategy file has errors; `problems` lists all of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__(
            "\n".join(str(p) for p in problems),
            hint=f"{len(errors)} error(s); fix them and run 'pveguard check' again",
        )


@dataclass
class Positions:
    """Where each value (and each mapping key) sits in the YAML text."""

    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def of(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """The position of `loc`, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        while loc:
            if loc in table:
                return table[loc]
            if loc in self.values:
                return self.values[loc]
            loc = loc[:-1]
        return self.values.get((), (1, 1))


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def resolve_path(cli_value: str | os.PathLike[str] | None) -> Path:
    """--strategy, then $PVEGUARD_STRATEGY, then /etc/pveguard/strategy.yaml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def _construct(node: yaml.Node, loc: Loc, pos: Positions, path: str, problems: list[Problem]) -> Any:
    """Build plain Python data from a composed YAML node, recording positions on the way."""
    pos.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(_scalar(key_node))
            child: Loc = (*loc, key)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(Problem(path, line, col, format_loc(child), "duplicate key; remove one of them"))
            pos.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, child, pos, path, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*loc, i), pos, path, problems) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    """int/float/bool/null/str exactly as PyYAML's safe loader would decide."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def parse_yaml(text: str, path: str) -> tuple[Any, Positions, list[Problem]]:
    """Parse YAML text; syntax errors become Problems with the parser's position."""
    pos = Positions()
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}: {msg}"
        problems.append(Problem(path, line, col, "", f"YAML syntax error: {msg}"))
        return None, pos, problems
    except yaml.YAMLError as exc:
        problems.append(Problem(path, 0, 0, "", f"YAML error: {exc}"))
        return None, pos, problems
    if node is None:
        return {}, pos, problems
    return _construct(node, (), pos, path, problems), pos, problems


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at `loc` (for "did you mean")."""
    model: Any = Strategy
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        model = _unwrap_model(ann)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _message(err: Any, loc: Loc) -> str:
    """A readable message for one pydantic error, with a hint where we can give one."""
    typ = err["type"]
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    if typ == "extra_forbidden":
        model = _model_at(loc[:-1])
        name = str(loc[-1])
        if model is not None:
            close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
            if close:
                return f"unknown key {name!r}; did you mean {close[0]!r}?"
            return f"unknown key {name!r}; allowed here: {', '.join(model.model_fields)}"
        return f"unknown key {name!r}"
    if typ == "missing":
        return "required but missing"
    if typ == "value_error":
        return str(ctx.get("error", err["msg"]))
    if typ == "literal_error":
        return f"{inp!r} is not allowed; use one of {ctx.get('expected')}"
    if typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
                 "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[typ]
        return f"{inp!r} is out of range; it must be {bound[0]} {ctx.get(bound[1])}"
    if typ in ("int_parsing", "int_type", "int_from_float"):
        return f"{inp!r} is not a whole number"
    if typ in ("float_parsing", "float_type"):
        return f"{inp!r} is not a number"
    if typ in ("bool_parsing", "bool_type"):
        return f"{inp!r} is not true or false"
    if typ in ("string_type",):
        return f"{inp!r} is not text; quote it"
    if typ in ("list_type",):
        return "expected a list (items starting with '- ')"
    if typ in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping (key: value lines)"
    if typ == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    return str(err["msg"])


def validation_problems(exc: ValidationError, pos: Positions, path: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        is_key = err["type"] == "extra_forbidden"
        line, col = pos.of(loc, key=is_key)
        problems.append(Problem(path, line, col, format_loc(loc), _message(err, loc)))
    return problems


def semantic_problems(strategy: Strategy, pos: Positions, path: str) -> list[Problem]:
    """Checks across fields: duplicate names and VMIDs, capacity against the host."""
    problems: list[Problem] = []

    def add(loc: Loc, msg: str, severity: Literal["error", "warning"] = "error") -> None:
        line, col = pos.of(loc)
        problems.append(Problem(path, line, col, format_loc(loc), msg, severity))

    seen: dict[str, int] = {}
    vmids: dict[int, int] = {}
    for i, c in enumerate(strategy.containers):
        if c.name in seen:
            add(("containers", i, "name"), f"duplicate container name {c.name!r} (also containers[{seen[c.name]}])")
        seen.setdefault(c.name, i)
        if c.vmid is not None:
            if c.vmid in vmids:
                add(("containers", i, "vmid"), f"VMID {c.vmid} is also used by containers[{vmids[c.vmid]}]")
            vmids.setdefault(c.vmid, i)

    host_mem = strategy.resources.host.memory or _detected_memory()
    host_cores = strategy.resources.host.cores or os.cpu_count() or 1
    if host_mem:
        want = sum(c.resources.memory for c in strategy.containers)
        allowed = (host_mem - strategy.resources.host_reserved_memory) * strategy.resources.max_memory_overcommit
        if want > allowed:
            add(("containers",),
                f"containers ask for {want >> 20} MiB of memory, more than the host can give "
                f"({int(allowed) >> 20} MiB after the reserve, overcommit x{strategy.resources.max_memory_overcommit})",
                "warning")
    cores = sum(c.resources.cores for c in strategy.containers)
    if cores > host_cores * strategy.resources.max_cpu_overcommit:
        add(("containers",),
            f"containers ask for {cores} cores, more than {host_cores} host cores allow "
            f"(overcommit x{strategy.resources.max_cpu_overcommit})", "warning")
    return problems


def _detected_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_text(text: str, path: str = "strategy.yaml") -> tuple[Strategy | None, list[Problem]]:
    """Validate strategy text; return the Strategy (None on errors) and every problem found."""
    data, pos, problems = parse_yaml(text, path)
    if data is None and problems:
        return None, problems
    if not isinstance(data, dict):
        return None, [*problems, Problem(path, 1, 1, "", "the strategy must be a mapping of sections")]
    try:
        strategy = Strategy.model_validate(data)
    except ValidationError as exc:
        return None, problems + validation_problems(exc, pos, path)
    problems += semantic_problems(strategy, pos, path)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return strategy, problems


def load(path: Path) -> tuple[Strategy, list[Problem]]:
    """Load and validate a strategy file; raise StrategyInvalid (or ConfigError) on errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"strategy file {path} does not exist",
            hint="create one with 'pveguard init', or point --strategy / PVEGUARD_STRATEGY at yours",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read strategy file {path}: {exc}", hint="check its permissions") from None
    strategy, problems = check_text(text, path.name if path.parent == Path() else str(path))
    if strategy is None:
        raise StrategyInvalid(problems)
    return strategy, problems
