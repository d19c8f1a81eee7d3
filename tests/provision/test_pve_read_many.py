"""Many GETs read up front in one thread (ProxmoxBackend.reading -> FastGet.get_many) against pvesim: each
answer is the one a single call gives, each path is requested once, and whatever the loop cannot settle --
PVE's errors, a stalled answer, a wrong pin -- reads exactly as through the one-call path (same message,
hint, status and retry meaning), because that call is then made by the one-call path itself."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from pveguard.backends import proxmox_settings
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.backends.pvefast import MISS
from pveguard.errors import BackendUnavailable
from pveguard.strategy.models import Strategy

from .test_pve_lean_get import WRONG, _env, _outcome, _pair

with contextlib.suppress(ImportError):
    from pvesim.testing import pvesim_factory  # noqa: F401 - fixture


@pytest.fixture
def sim(pvesim_factory: Any) -> Any:
    return pvesim_factory(nodes=2, guests=40, seed=5)


def _paths(b: ProxmoxBackend) -> list[str]:
    cts = [g for g in b.list_guests() if g.type == "lxc"][:12]
    assert len(cts) == 12
    return ["/cluster/status", "/cluster/firewall/options", *(f"/nodes/{g.node}/lxc/{g.vmid}/{what}" for g in cts
                                                               for what in ("config", "firewall/options",
                                                                            "firewall/rules"))]


def test_read_up_front_answers_as_one_call_does_once_each(sim: Any) -> None:
    lean, old = _pair(_env(sim))
    paths = _paths(old)
    want = [_outcome(old, p) for p in paths]
    sim.control("DELETE", "/calls")
    with lean.reading(paths) as ready:
        assert all(ready(p) for p in paths)
        assert sim.control("GET", "/calls")["total"] == len(paths)  # each once, all before anyone asked
        got = [_outcome(lean, p) for p in paths]
        assert sim.control("GET", "/calls")["total"] == len(paths)  # answered from what was read
        assert not any(ready(p) for p in paths)  # each answer is used once
    assert got == want
    # outside, nothing read up front is used: a change made meanwhile shows
    cfg = next(p for p in paths if p.endswith("/config"))
    status, _r, _b = sim.api("PUT", cfg, {"description": "changed by hand"})
    assert status == 200
    assert lean.call("GET", cfg)["description"] == "changed by hand"


@pytest.mark.parametrize("fault", [
    {"status": 500, "message": "Configuration file 'nodes/pve1/lxc/999.conf' does not exist"},
    {"status": 403, "message": "Permission check failed (/vms/100, VM.Audit)"},
    {"status": 500, "message": "CT is locked (backup)"},
    {"data": None},
    {"body": "not json at all"},
])
def test_what_the_loop_cannot_settle_reads_as_one_call_does(sim: Any, fault: dict[str, Any]) -> None:
    env = _env(sim)
    lean, old = _pair(env)
    paths = _paths(old)
    bad = next(p for p in paths if p.endswith("/config"))
    rx = bad.replace("/", "\\/") + "$"
    sim.control("POST", "/faults", {"method": "GET", "path": rx, **fault})
    want = _outcome(old, bad)
    with lean.reading(paths) as ready:
        assert not ready(bad)  # never kept: it goes out again through the one-call path
        assert all(ready(p) for p in paths if p != bad)
        sim.control("DELETE", "/calls")
        got = _outcome(lean, bad)
        assert sim.control("GET", "/calls")["calls"].get("GET /nodes/{node}/lxc/{vmid}/config", 0) >= 1
    sim.control("DELETE", "/faults")
    assert got == want


def test_a_stalled_answer_is_left_to_the_one_call_path(sim: Any) -> None:
    env = _env(sim, PVEGUARD_PVE_HTTP_TIMEOUT="0.4")
    lean, old = _pair(env)
    paths = _paths(old)
    slow = paths[5]
    sim.control("POST", "/faults", {"method": "GET", "path": slow.replace("/", "\\/") + "$", "delay_ms": 1500})
    want = _outcome(old, slow)
    assert want[0] == "error" and "no answer in time (timeout)" in want[1]
    with lean.reading(paths) as ready:
        assert not ready(slow) and all(ready(p) for p in paths if p != slow)
        assert _outcome(lean, slow) == want
    sim.control("DELETE", "/faults")
    with lean.reading(paths) as ready:  # the pool's connections still serve after a stalled one was dropped
        assert all(ready(p) for p in paths)


def test_a_wrong_pin_reads_nothing_and_fails_as_one_call_does(sim: Any) -> None:
    lean, old = _pair(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_FINGERPRINT=WRONG))
    paths = ["/version", "/cluster/status", "/cluster/resources"]
    sim.control("DELETE", "/calls")
    assert lean._fast is not None and lean._fast.get_many(paths, 8) == [MISS] * 3
    errors = []
    for b in (lean, old):
        with b.reading(paths) as ready, pytest.raises(BackendUnavailable) as e:
            assert not ready("/version")
            b.call("GET", "/version")
        errors.append((e.value.message, e.value.hint))
    assert errors[0] == errors[1] and f"expected {WRONG}, got {sim.fingerprint}" in errors[0][0]
    assert sim.control("GET", "/calls")["total"] == 0  # the token never reached the server
    good = ProxmoxBackend(proxmox_settings(Strategy(), _env(sim, PVEGUARD_PVE_VERIFY_SSL="1",
                                                              PVEGUARD_PVE_FINGERPRINT=sim.fingerprint)))
    with good.reading(paths) as ready:
        assert all(ready(p) for p in paths)
