"""The JSON document matches the shape documented in docs/audit.md, key for key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.strategies import defaults_file

from .test_golden import CASES, audit_case

DOC = Path(__file__).resolve().parents[2] / "docs/audit.md"
TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,),
                                      "null": (type(None),)}


def documented_shape() -> dict[str, Any]:
    text = DOC.read_text()
    block = re.search(r"## JSON shape.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/audit.md has no JSON shape block"
    shape: dict[str, Any] = json.loads(block.group(1))
    return shape


def check(value: Any, shape: Any, defs: dict[str, Any], path: str = "$") -> list[str]:
    """Problems of `value` against `shape` (empty when it conforms)."""
    if isinstance(shape, str):
        problems = []
        for alt in shape.split("|"):
            if alt.startswith("object:"):
                sub = check(value, defs[alt.split(":", 1)[1]], defs, path) if isinstance(value, dict) else ["x"]
                if not sub:
                    return []
                problems += sub
            elif isinstance(value, TYPES[alt]) and not (alt in ("int", "float") and isinstance(value, bool)):
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
    keys = {k for k in shape if not k.startswith("$")}
    problems = [f"{path}: undocumented key {k!r}" for k in sorted(set(value) - keys)]
    problems += [f"{path}: missing key {k!r}" for k in sorted(keys - set(value))]
    for k in keys & set(value):
        problems += check(value[k], shape[k], defs, f"{path}.{k}")
    return problems


def assert_conforms(doc: dict[str, Any]) -> None:
    shape = documented_shape()
    defs = {k[1:]: v for k, v in shape.items() if k.startswith("$")}
    problems = check(doc, shape, defs)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("case", CASES)
def test_offline_documents_conform(case: str) -> None:
    assert_conforms(audit_case(case))


def test_this_host_conforms() -> None:
    """The live audit of the machine running the tests, through the real command line."""
    proc = subprocess.run([sys.executable, "-m", "pveguard", "--strategy", defaults_file(),
                           "--state-dir", "/nonexistent/state", "audit", "--json"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "pveguard.audit/1" and doc["host"]["live"] is True
    assert_conforms(doc)


@pytest.mark.parametrize(("value", "bad"), [
    ({"a": 1, "extra": 2}, "undocumented key 'extra'"),
    ({}, "missing key 'a'"),
    ({"a": "1"}, "is not int"),
    ({"a": True}, "is not int"),
])
def test_checker_catches_drift(value: dict[str, Any], bad: str) -> None:
    assert any(bad in p for p in check(value, {"a": "int"}, {}))
