"""Load and validate the strategy file, reporting every problem with its line and column.

Messages look like compiler errors so editors can jump to them:
`strategy.yaml:23:15: containers[1].resources.memory: '2XB' is not a size; use e.g. 512M or 2G`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from pveguard.errors import ConfigError
from pveguard.strategy import enforcement
from pveguard.strategy.models import Strategy

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
        if isinstance(part, str) and len(part) > 60:  # a hostile key must not fill the terminal
            part = part[:60] + "..."
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Limits checked on the YAML event stream before any node or Python object is built, so a hostile
# file costs at most a bounded parse. The default strategy is about 10 KB, 300 lines and 700 values;
# the limits leave room for a hundred containers and still stop an alias bomb within its first
# expansions.
MAX_BYTES = 256 << 10
MAX_DEPTH = 32
MAX_VALUES = 20_000


class _Limit(Exception):
    """The event stream broke a limit; the Problem says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


# libyaml's parser (PyYAML built with it, as Debian's python3-yaml and the wheels are): ~10x faster than
# the pure-Python one on a 1,000-container file, with the same line/column marks on events and errors.
FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _screen(text: str, path: str) -> None:
    """Walk the YAML events once: nesting depth, alias use and the size after alias expansion.

    PyYAML's composer and our constructor recurse and expand aliases; the event stream does neither,
    so these limits hold before anything is built. Raises _Limit; YAML syntax errors propagate.
    """
    # Open collections: [anchor, values inside it so far]; sizes of finished anchors.
    stack: list[list[Any]] = []
    sizes: dict[str, int] = {}
    total = 0

    def at(mark: Any) -> tuple[int, int]:
        return (mark.line + 1, mark.column + 1) if mark else (0, 0)

    def add(count: int, event: yaml.Event) -> None:
        nonlocal total
        total += count
        for frame in stack:
            frame[1] += count
        if total > MAX_VALUES:
            raise _Limit(Problem(path, *at(event.start_mark), "",
                                 f"the file expands to more than {MAX_VALUES} values"
                                 + (" through its aliases" if sizes else "")
                                 + "; a strategy is far smaller - check for aliases (*name) that repeat "
                                   "large parts"))

    for event in yaml.parse(text, Loader=FastLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise _Limit(Problem(path, *at(event.start_mark), "",
                                     f"nested more than {MAX_DEPTH} levels deep; a strategy needs fewer than 10"))
            add(1, event)
            stack.append([event.anchor, 1])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
        elif isinstance(event, yaml.ScalarEvent):
            add(1, event)
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                inside = any(frame[0] == event.anchor for frame in stack)
                name = _short(event.anchor)   # an anchor name can be megabytes long
                raise _Limit(Problem(path, *at(event.start_mark), "",
                                     f"alias *{name} " + (
                                         "refers to the value that contains it (a loop)" if inside else
                                         f"is not defined before this point; define &{name} first")))
            add(sizes[event.anchor], event)


def _construct(node: yaml.Node, loc: Loc, pos: Positions, path: str, problems: list[Problem],
               loader: yaml.SafeLoader) -> Any:
    """Build plain Python data from a composed YAML node, recording positions on the way."""
    pos.values[loc] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                problems.append(Problem(path, *_mark(key_node), format_loc(loc),
                                        f"a key must be plain text, not a {kind}"))
                continue
            key = str(key_node.value)
            child: Loc = (*loc, key)
            if key in out:
                problems.append(Problem(path, *_mark(key_node), format_loc(child),
                                        "duplicate key; remove one of them"))
            pos.keys[child] = _mark(key_node)
            out[key] = _construct(value_node, child, pos, path, problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*loc, i), pos, path, problems, loader) for i, v in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        # Tags (!!python/..., !!binary), impossible dates, integers beyond Python's digit limit.
        reason = getattr(exc, "problem", None) or str(exc)
        problems.append(Problem(path, *_mark(node), format_loc(loc),
                                f"cannot read this value: {_short(reason)}; write plain text, a number or true/false"))
        return None


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _short(value: Any, limit: int = 60) -> str:
    """A value for a message, cut so a megabyte of input never becomes a megabyte of output."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _show(value: Any) -> str:
    """repr() of an input value, cut like _short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + f"... ({len(text)} characters)"


def parse_yaml(text: str, path: str) -> tuple[Any, Positions, list[Problem]]:
    """Parse YAML text within the limits; syntax errors become Problems with the parser's position.

    Returns data None with problems when the text cannot be read or holds no document.
    """
    pos = Positions()
    problems: list[Problem] = []
    if len(text) > MAX_BYTES:
        problems.append(Problem(path, 0, 0, "", f"the file is larger than {MAX_BYTES >> 10} KiB; a strategy is far "
                                                "smaller (the default one is about 10 KiB)"))
        return None, pos, problems
    try:
        _screen(text, path)
        node = yaml.compose(text, Loader=FastLoader)
    except _Limit as exc:
        problems.append(exc.problem)
        return None, pos, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}: {msg}"
        problems.append(Problem(path, line, col, "", f"YAML syntax error: {msg}"))
        return None, pos, problems
    except yaml.YAMLError as exc:
        problems.append(Problem(path, 0, 0, "", f"YAML error: {_short(str(exc), 200)}"))
        return None, pos, problems
    if node is None:
        # An empty file is a mistake (a failed copy, a truncated write), never a wish for the defaults.
        problems.append(Problem(path, 1, 1, "", "the file is empty; write the default strategy with 'pveguard init' "
                                                "(or, to take every default, a file with just 'version: 1')"))
        return None, pos, problems
    loader = yaml.SafeLoader("")
    try:
        return _construct(node, (), pos, path, problems, loader), pos, problems
    finally:
        loader.dispose()


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
                return f"unknown key {_show(name)}; did you mean {close[0]!r}?"
            return f"unknown key {_show(name)}; allowed here: {', '.join(model.model_fields)}"
        return f"unknown key {_show(name)}"
    if typ == "missing":
        return "required but missing"
    if typ == "value_error":
        return _short(str(ctx.get("error", err["msg"])), 300)
    if typ == "literal_error":
        return f"{_show(inp)} is not allowed; use one of {ctx.get('expected')}"
    if typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
                 "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[typ]
        return f"{_show(inp)} is out of range; it must be {bound[0]} {ctx.get(bound[1])}"
    if typ in ("int_parsing", "int_type", "int_from_float"):
        return f"{_show(inp)} is not a whole number"
    if typ in ("float_parsing", "float_type"):
        return f"{_show(inp)} is not a number"
    if typ in ("bool_parsing", "bool_type"):
        return f"{_show(inp)} is not true or false"
    if typ in ("string_type",):
        return f"{_show(inp)} is not text; quote it"
    if typ in ("list_type",):
        return "expected a list (items starting with '- ')"
    if typ in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping (key: value lines)"
    if typ == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    return _short(str(err["msg"]), 300)


def _data_loc(err_loc: tuple[Any, ...], data: Any) -> Loc:
    """The part of a pydantic error location that is a path in the data.

    pydantic puts validator labels between the keys (`function-after[_check_vlan(), int]`); they are
    told apart from keys by walking the data, since a key may contain any character, '[' included.
    """
    loc: list[str | int] = []
    for part in err_loc:
        in_dict = isinstance(data, dict) and part in data
        if in_dict or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]
        elif isinstance(part, str) and "[" in part:
            continue  # a validator label
        else:
            data = None  # below the data (a default's field): keep the rest as it is
        loc.append(part)
    return tuple(loc)


def validation_problems(exc: ValidationError, pos: Positions, path: str, data: Any = None) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _data_loc(tuple(err["loc"]), data)
        is_key = err["type"] == "extra_forbidden"
        line, col = pos.of(loc, key=is_key)
        problems.append(Problem(path, line, col, format_loc(loc), _message(err, loc)))
    return problems


def semantic_problems(strategy: Strategy, pos: Positions, path: str) -> list[Problem]:
    """Checks across fields: duplicate names, VMIDs and static addresses, capacity against the host."""
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

    # One static address per network segment (bridge + VLAN): PVE accepts duplicates and the
    # containers then fight over the address at run time.
    static: dict[tuple[str, int | None, Any], int] = {}
    for i, c in enumerate(strategy.containers):
        if c.network.ip in ("dhcp", "manual"):
            continue
        address = ipaddress.ip_interface(c.network.ip).ip
        segment = (strategy.container_bridge(c), strategy.container_vlan(c), address)
        if segment in static:
            j = static[segment]
            add(("containers", i, "network", "ip"),
                f"address {address} is also given to containers[{j}] ({strategy.containers[j].name}) on the same "
                "bridge and VLAN; give each container its own address, or use dhcp")
        static.setdefault(segment, i)

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
        return None, problems + validation_problems(exc, pos, path, data)
    problems += semantic_problems(strategy, pos, path)
    problems += [Problem(path, *pos.of(u.loc), format_loc(u.loc), u.message(), "warning")
                 for u in enforcement.non_default(strategy)]
    if any(p.severity == "error" for p in problems):
        return None, problems
    return strategy, problems


def read_text(path: Path) -> str:
    """The strategy file's text; ConfigError when it is missing, unreadable or larger than a strategy can be.

    The size is checked before reading, so pointing --strategy at a huge file (or /dev/zero)
    costs nothing.
    """
    shown = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"strategy file {path} does not exist",
            hint="create one with 'pveguard init', or point --strategy / PVEGUARD_STRATEGY at yours",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"strategy file {path} is a directory", hint="point --strategy at the YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read strategy file {path}: {exc.strerror or exc}",
                          hint="check its permissions") from None
    if len(data) > MAX_BYTES:
        raise StrategyInvalid([Problem(shown, 0, 0, "", f"the file is larger than {MAX_BYTES >> 10} KiB; a strategy is "
                                                        "far smaller (the default one is about 10 KiB)")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise StrategyInvalid([Problem(shown, line, col, "", "the file is not UTF-8 text; save it as UTF-8")]) from None


def load(path: Path) -> tuple[Strategy, list[Problem]]:
    """Load and validate a strategy file; raise StrategyInvalid (or ConfigError) on errors."""
    strategy, problems = check_text(read_text(path), str(path))
    if strategy is None:
        raise StrategyInvalid(problems)
    return strategy, problems
