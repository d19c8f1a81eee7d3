"""Every schema method (so every implemented handler), called with schema-valid parameters (required
ones, then all optional ones with simple valid values), answers like PVE would - never with a pvesim
internal error."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pvesim.handlers import HANDLERS, load_all
from pvesim.schema import load_schema
from pvesim.testing import SimHandle, running, schema_available

pytestmark = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found (set PVESIM_SCHEMA)")

KNOWN = {
    "node": "pve1",
    "vmid": "100",
    "storage": "local",
    "userid": "u1@pve",
    "tokenid": "t1",
    "roleid": "PVEAuditor",
    "poolid": "pool1",
    "groupid": "grp1",
    "snapname": "s1",
    "pos": "0",
    "id": "job1",
    "sid": "ct:100",
    "group": "web",
    "name": "x1",
    "cidr": "192.0.2.10",
    "upid": "UPID:x",
    "volume": "local:backup/none",
    "target": "pve2",
    "newid": "990",
    "template": "nope",
    "type": "vm",
}


def _value(name: str, s: dict[str, Any]) -> Any:
    if name in KNOWN:
        return KNOWN[name]
    if s.get("enum"):
        return s["enum"][0]
    t = s.get("type", "string")
    if t == "boolean":
        return 0
    if t in ("integer", "number"):
        lo = s.get("minimum")
        return int(float(lo)) if lo is not None else 1
    fmt = s.get("format")
    if fmt == "pve-vmid":
        return "100"
    if fmt == "pve-node":
        return "pve1"
    if fmt in ("pve-configid", "pve-storage-id", "pve-poolid", "pve-roleid", "pve-groupid"):
        return "x1"
    if fmt == "pve-calendar-event":
        return "daily"
    if isinstance(fmt, dict) or fmt is not None or s.get("pattern"):
        return None  # hard to synthesise; leave optional ones out
    return "x1"


@pytest.fixture(scope="module")
def sim() -> Any:
    with running(guests=4, seed=2, qemu_share=0.0, task_seconds={"vzcreate": 0}) as h:
        h.api("POST", "/pools", {"poolid": "pool1"})
        h.api("POST", "/access/users", {"userid": "u1@pve", "password": "password1"})
        yield h


def _sweep(sim: SimHandle, token: str | None = None) -> tuple[list[str], dict[int, int]]:
    load_all()
    schema = load_schema()
    crashes = []
    seen: dict[int, int] = {}
    for method, path in sorted(HANDLERS):
        m = schema.methods[(method, path)]
        props = m.parameters.get("properties") or {}
        url = re.sub(r"\{([^}]+)\}", lambda mm: KNOWN.get(mm.group(1), "x1"), path)
        for with_optional in (False, True):
            params = {}
            for k, s in props.items():
                if "{" + k + "}" in path or k.endswith("[n]"):
                    continue
                if s.get("optional") and not with_optional:
                    continue
                v = _value(k, s)
                if v is not None:
                    params[k] = v
            status, reason, _body = sim.api(method, url, params, token=token)
            seen[status] = seen.get(status, 0) + 1
            if status == 500 and reason.startswith("pvesim internal error"):
                crashes.append(f"{method} {url} {params}: {reason}")
    sim.control("POST", "/tasks/finish")
    with sim.sim.lock:
        crashes += [
            f"task {t.upid}: {t.exitstatus}"
            for t in sim.sim.task_order
            if str(t.exitstatus).startswith("pvesim internal error")
        ]
    return crashes, seen


def test_no_handler_crashes_as_root(sim: SimHandle) -> None:
    crashes, seen = _sweep(sim)
    assert not crashes, "\n".join(crashes)
    assert seen.get(200, 0) > 150, seen  # most calls must get through validation to the handler


def test_no_handler_crashes_without_privileges() -> None:
    with running(guests=4, seed=3, qemu_share=0.0, running_share=1.0) as h:
        h.api("POST", "/access/users", {"userid": "nobody@pve", "password": "password1"})
        tok = h.api("POST", "/access/users/nobody@pve/token/nt", {"privsep": 0})[2]["data"]
        crashes, seen = _sweep(h, token=f"nobody@pve!nt={tok['value']}")
        assert not crashes, "\n".join(crashes)
        assert seen.get(403, 0) > 100, seen
