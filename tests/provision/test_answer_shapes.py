"""The endpoints pveguard uses, checked from both sides against the official schema (read at run time):

* pveguard's own expectations (`ANSWER_SHAPES`, checked where each answer enters) agree with the
  `returns` of the schema;
* every endpoint pveguard calls in a plan/apply/status/monitor/backup run against pvesim is one pvesim
  implements -- so tests/pvesim/test_pvesim_conformance.py validates its answers' types against
  `returns` -- and one whose shape pveguard checks.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from pveguard.backends.proxmox import ANSWER_SHAPES, _shape_of

from .conftest import Env

pytest.importorskip("pvesim.testing")

from pvesim.handlers import HANDLERS, load_all
from pvesim.schema import load_schema
from pvesim.testing import schema_available

pytestmark = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found (set PVESIM_SCHEMA)")

SAMPLE = {"node": "pve1", "vmid": "101", "storage": "local", "upid": "UPID:pve1:x", "id": "job1"}
SCHEMA_TYPE = {"list": "array", "object": "object", "id": "integer", "upid": "string", "null": "null"}


def _concrete(template: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: SAMPLE.get(m.group(1), "x1"), template)


def test_answer_shapes_agree_with_the_schema() -> None:
    schema = load_schema()
    matched: dict[str, list[str]] = {}
    problems = []
    for (method, template), m in sorted(schema.methods.items()):
        shape = _shape_of(method, _concrete(template))
        if shape is None:
            continue
        matched.setdefault(f"{method} {shape}", []).append(template)
        returns: dict[str, Any] = m.returns or {}
        if returns.get("type") != SCHEMA_TYPE[shape]:
            problems.append(f"{method} {template}: schema returns {returns.get('type')}, pveguard expects {shape}")
        if shape == "list" and (returns.get("items") or {}).get("type") != "object":
            problems.append(f"{method} {template}: schema items are {(returns.get('items') or {}).get('type')}")
    assert not problems, "\n".join(problems)
    for method, rx, _shape in ANSWER_SHAPES:  # each entry describes at least one real endpoint
        assert any(re.fullmatch(rx, _concrete(t)) for (m, t) in schema.methods if m == method), (method, rx.pattern)


def test_every_endpoint_pveguard_reads_is_conformance_checked(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.update(containers=d["containers"][:2]))
    penv.reset_calls()
    for argv in (["plan"], ["apply"], ["status"], ["monitor", "--once"], ["backup", "apply", "--dry-run"]):
        code, out, err = penv.run(*argv, capsys=capsys)
        assert code == 0, (argv, out, err)
    penv.edit(lambda d: d["containers"][0]["resources"].update(memory="5G", storage="30G"))
    assert penv.run("apply", capsys=capsys)[0] == 0
    load_all()
    used = [key.split(" ", 1) for key in penv.calls()]
    gets = sorted({t for m, t in used if m == "GET"})
    assert "/cluster/resources" in gets and "/nodes/{node}/lxc/{vmid}/config" in gets
    assert [t for t in gets if ("GET", t) not in HANDLERS] == []  # so pvesim's conformance test checks them
    # everything but the config PUT, which answers null
    unchecked = [f"{m} {t}" for m, t in used if not t.endswith("/config") and _shape_of(m, _concrete(t)) is None]
    assert unchecked == [], "pveguard reads these without checking their shape"
