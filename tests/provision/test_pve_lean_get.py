"""The lean GET transport (backends/pvefast.py) against pvesim: it is the path GETs take over https, it
answers what proxmoxer's path answers, and every failure -- PVE's errors, a non-PVE page, a refused
connection, a timeout, a pin mismatch -- reads exactly as it does through requests (same message, hint,
status and retry meaning). Each case runs once on each path against the same sim."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest

from pveguard.backends import proxmox_settings
from pveguard.backends.proxmox import ProxmoxBackend, PveCallError
from pveguard.errors import BackendUnavailable, PveguardError
from pveguard.strategy.models import Strategy

with contextlib.suppress(ImportError):
    from pvesim.testing import pvesim_factory  # noqa: F401 - fixture

WRONG = ":".join(["AB"] * 32)


@pytest.fixture
def sim(pvesim_factory: Any) -> Any:
    return pvesim_factory(nodes=2, guests=6, seed=3)


def _env(sim: Any, **extra: str) -> dict[str, str]:
    return {"PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token, "PVEGUARD_PVE_VERIFY_SSL": "0",
            "PVEGUARD_PVE_RETRY_WAIT": "0.01", "PVEGUARD_PVE_RETRIES": "2", **extra}


def _pair(env: dict[str, str]) -> tuple[ProxmoxBackend, ProxmoxBackend]:
    """(lean, proxmoxer) backends on the same settings."""
    lean = ProxmoxBackend(proxmox_settings(Strategy(), env))
    old = ProxmoxBackend(proxmox_settings(Strategy(), env))
    old._fast = None
    assert lean._fast is not None
    return lean, old


def _outcome(b: ProxmoxBackend, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        return ("ok", b.call("GET", path, params, what="reading"))
    except PveCallError as exc:
        return ("error", exc.message, exc.hint, exc.status, exc.retryable, exc.meaning)
    except PveguardError as exc:
        return ("unavailable", type(exc).__name__, exc.message, exc.hint)


def test_gets_take_the_lean_path_and_answer_the_same(sim: Any) -> None:
    lean, old = _pair(_env(sim))
    g = next(g for g in old.list_guests() if g.type == "lxc")
    paths: list[tuple[str, dict[str, Any] | None]] = [
        ("/cluster/resources", {"type": "vm"}), ("/cluster/status", None), ("/version", None),
        (f"/nodes/{g.node}/lxc/{g.vmid}/config", None), (f"/nodes/{g.node}/lxc/{g.vmid}/firewall/options", None),
        (f"/nodes/{g.node}/lxc/{g.vmid}/firewall/rules", None),
        ("/access/permissions", {"path": "/vms"}), ("/cluster/nextid", None)]
    for path, params in paths:
        sim.control("DELETE", "/calls")
        got = _outcome(lean, path, params)
        assert sim.control("GET", "/calls")["total"] == 1  # one request, no probe, no retry
        assert got == _outcome(old, path, params), path
        assert got[0] == "ok"


@pytest.mark.parametrize("fault", [
    {"status": 500, "message": "Configuration file 'nodes/pve1/lxc/999.conf' does not exist"},
    {"status": 403, "message": "Permission check failed (/vms/100, VM.Audit)"},
    {"status": 595, "message": "Connection refused"},
    {"status": 500, "message": "CT is locked (backup)"},
    {"status": 400, "message": "Parameter verification failed.", "errors": {"vmid": "invalid format"}},
    {"data": None},  # {"data": null} where an object belongs
    {"body": "not json at all"},
])
def test_errors_read_the_same_on_both_paths(sim: Any, fault: dict[str, Any]) -> None:
    lean, old = _pair(_env(sim))
    g = next(g for g in old.list_guests() if g.type == "lxc")
    path = f"/nodes/{g.node}/lxc/{g.vmid}/config"
    outcomes = []
    for b in (lean, old):
        sim.control("DELETE", "/faults")
        sim.control("POST", "/faults", {"method": "GET", "path": "/lxc/\\d+/config$", **fault})
        sim.control("DELETE", "/calls")
        outcomes.append((_outcome(b, path), sim.control("GET", "/calls")["total"]))
    sim.control("DELETE", "/faults")
    assert outcomes[0] == outcomes[1]
    # a body that is not JSON becomes proxmoxer's {"errors": body}, which has an object's shape: both
    # paths let it through alike (the equality above is what this test is about)
    assert outcomes[0][0][0] != "ok" or "body" in fault


def test_a_refused_connection_and_a_timeout_read_the_same(sim: Any) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lean, old = _pair(_env(sim, PVEGUARD_PVE_HOST=f"127.0.0.1:{port}"))
    a, b = _outcome(lean, "/version"), _outcome(old, "/version")
    assert a == b and a[0] == "error" and "Connection refused" in a[1] and a[4] is True  # retryable
    slow = _env(sim, PVEGUARD_PVE_HTTP_TIMEOUT="0.3")
    lean, old = _pair(slow)
    sim.control("POST", "/faults", {"method": "GET", "path": "^/version$", "delay_ms": 1500})
    a, b = _outcome(lean, "/version"), _outcome(old, "/version")
    sim.control("DELETE", "/faults")
    assert a == b and a[0] == "error" and "no answer in time (timeout)" in a[1] and a[4] is True


def test_a_wrong_pin_stops_the_lean_path_before_any_request(sim: Any) -> None:
    lean, old = _pair(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_FINGERPRINT=WRONG))
    sim.control("DELETE", "/calls")
    errors = []
    for b in (lean, old):
        with pytest.raises(BackendUnavailable) as e:
            b.call("GET", "/version")
        errors.append((e.value.message, e.value.hint))
    assert errors[0] == errors[1]
    assert f"expected {WRONG}, got {sim.fingerprint}" in errors[0][0]
    assert sim.control("GET", "/calls")["total"] == 0  # the token never reached the server
    good, _ = _pair(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_FINGERPRINT=sim.fingerprint))
    assert good.call("GET", "/version")["version"]


def test_a_ca_file_is_enforced_on_the_lean_path(sim: Any, tmp_path: Any) -> None:
    good, _ = _pair(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_CA_FILE=sim.cafile))
    assert good.call("GET", "/version")["version"]
    from pvesim.tls import make_self_signed

    cert, _key, _fp = make_self_signed(tmp_path / "other")
    lean, _ = _pair(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_CA_FILE=str(cert)))
    sim.control("DELETE", "/calls")
    with pytest.raises(BackendUnavailable, match=f"not signed by the CA in {cert}"):
        lean.call("GET", "/version")
    assert sim.control("GET", "/calls")["total"] == 0


def test_a_password_login_reads_through_the_lean_path_with_its_ticket(sim: Any) -> None:
    env = {"PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_USER": sim.username, "PVEGUARD_PVE_PASSWORD": sim.password,
           "PVEGUARD_PVE_VERIFY_SSL": "0"}
    lean, old = _pair(env)
    assert _outcome(lean, "/cluster/status") == _outcome(old, "/cluster/status")
    auth = lean.api._store["session"].auth
    auth._born -= auth.renew_age  # the ticket is due: the next GET renews it first, as proxmoxer's path does
    sim.control("DELETE", "/calls")
    assert lean.call("GET", "/version")["version"]
    assert sim.control("GET", "/calls")["calls"] == {"POST /access/ticket": 1, "GET /version": 1}


def test_a_proxy_or_an_environment_ca_bundle_keeps_the_requests_path(sim: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert ProxmoxBackend(proxmox_settings(Strategy(), _env(sim)))._fast is None
    monkeypatch.delenv("https_proxy")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sim.cafile)
    b = ProxmoxBackend(proxmox_settings(Strategy(), _env(sim, PVEGUARD_PVE_VERIFY_SSL="1")))
    assert b._fast is None and b.call("GET", "/version")["version"]
