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

from ..jsonshape import check
from .test_golden import CASES, audit_case

DOC = Path(__file__).resolve().parents[2] / "docs/audit.md"


def documented_shape() -> dict[str, Any]:
    text = DOC.read_text()
    block = re.search(r"## JSON shape.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/audit.md has no JSON shape block"
    shape: dict[str, Any] = json.loads(block.group(1))
    return shape


def assert_conforms(doc: dict[str, Any]) -> None:
    problems = check(doc, documented_shape())
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
    assert any(bad in p for p in check(value, {"a": "int"}))
