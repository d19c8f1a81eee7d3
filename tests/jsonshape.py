"""Check JSON documents against the typed shapes the docs publish (docs/json.md, docs/audit.md):
the docs are the source of truth, the tests read them.

Type names: str, int, float (also an int), bool, null, iso (ISO 8601 UTC with a Z), any; `a|b`
either; a list shows its items' shape, `list:TYPE` a list of scalars inside an alternative
(`null|list:str`); `"*"` any key; a `?key` is optional; `"$name"` defines a shape that
`object:name` refers to (anywhere in the block).
"""

from __future__ import annotations

import json
import re
from typing import Any

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,),
                                      "null": (type(None),)}


def blocks(markdown: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(info string after 'json', shape) of every ```json block whose info string starts with `prefix`."""
    out = []
    for info, body in re.findall(r"^```json([^\n]*)\n(.*?)^```", markdown, re.S | re.M):
        if info.strip().startswith(prefix):
            out.append((info.strip(), json.loads(body)))
    return out


def definitions(shape: Any) -> dict[str, Any]:
    """Every `"$name": shape` in the block, wherever it sits."""
    found: dict[str, Any] = {}
    if isinstance(shape, dict):
        for k, v in shape.items():
            if k.startswith("$"):
                found[k[1:]] = v
            found.update(definitions(v))
    elif isinstance(shape, list):
        for item in shape:
            found.update(definitions(item))
    return found


def _scalar(value: Any, alt: str) -> bool:
    if alt == "any":
        return True
    if alt == "iso":
        return isinstance(value, str) and bool(ISO_UTC.match(value))
    if alt in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[alt])


def check(value: Any, shape: Any, defs: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Problems of `value` against `shape` (empty when it conforms)."""
    defs = definitions(shape) if defs is None else defs
    if isinstance(shape, str):
        problems: list[str] = []
        for alt in shape.split("|"):
            if alt.startswith("object:"):
                if isinstance(value, dict):
                    sub = check(value, defs[alt.split(":", 1)[1]], defs, path)
                    if not sub:
                        return []
                    problems += sub
            elif alt.startswith("list:"):
                if isinstance(value, list):
                    sub = check(value, [alt.split(":", 1)[1]], defs, path)
                    if not sub:
                        return []
                    problems += sub
            elif _scalar(value, alt):
                return []
        return [f"{path}: {value!r} is not {shape}", *problems]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [p for i, item in enumerate(value) for p in check(item, shape[0], defs, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {value!r}"]
    if set(shape) == {"*"}:
        return [p for k, v in value.items() for p in check(v, shape["*"], defs, f"{path}.{k}")]
    keys = {k.lstrip("?"): k for k in shape if not k.startswith("$")}
    required = {k for k, raw in keys.items() if not raw.startswith("?")}
    problems = [f"{path}: undocumented key {k!r}" for k in sorted(set(value) - set(keys))]
    problems += [f"{path}: missing key {k!r}" for k in sorted(required - set(value))]
    for k in set(keys) & set(value):
        problems += check(value[k], shape[keys[k]], defs, f"{path}.{k}")
    return problems
