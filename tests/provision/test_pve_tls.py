"""TLS to the PVE API: fingerprint pinning and a CA file enforced on the connection; plain HTTP and
non-PVE servers reported as what they are (loopback servers only)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends import proxmox_settings
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.errors import BackendUnavailable, ConfigError
from pveguard.strategy.models import Strategy

try:
    from pvesim.testing import SimHandle, pvesim_factory  # noqa: F401 - fixture
except ImportError:  # pragma: no cover
    SimHandle = Any  # type: ignore[misc,assignment]

WRONG = ":".join(["AB"] * 32)


def _env(sim: Any, **extra: str) -> dict[str, str]:
    return {"PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token, "PVEGUARD_PVE_RETRY_WAIT": "0.01",
            **extra}


def _backend(env: dict[str, str]) -> ProxmoxBackend:
    return ProxmoxBackend(proxmox_settings(Strategy(), env))


def _calls(sim: Any) -> dict[str, int]:
    return dict(sim.control("GET", "/calls")["calls"])


@pytest.fixture
def sim(pvesim_factory: Any) -> Any:
    return pvesim_factory(nodes=1)


def test_pinned_fingerprint_connects_with_verification_on(sim: Any) -> None:
    b = _backend(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1", PVEGUARD_PVE_FINGERPRINT=sim.fingerprint))
    assert [n.name for n in b.nodes()] == ["pve1"]
    # lower case without colons is the same pin
    b = _backend(_env(sim, PVEGUARD_PVE_FINGERPRINT=sim.fingerprint.replace(":", "").lower()))
    assert b.list_guests() == []
    assert "pinned SHA-256" in b.settings.describe()


def test_wrong_fingerprint_is_refused_before_any_request(sim: Any) -> None:
    sim.control("DELETE", "/calls")
    b = _backend(_env(sim, PVEGUARD_PVE_FINGERPRINT=WRONG))
    with pytest.raises(BackendUnavailable) as e:
        b.list_guests()
    assert f"expected {WRONG}, got {sim.fingerprint}" in e.value.message
    assert "pvenode cert info" in (e.value.hint or "")
    assert _calls(sim) == {}  # the token never reached the server


def test_wrong_fingerprint_stops_a_password_login_too(sim: Any) -> None:
    sim.control("DELETE", "/calls")
    env = {"PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_USER": sim.username, "PVEGUARD_PVE_PASSWORD": sim.password,
           "PVEGUARD_PVE_FINGERPRINT": WRONG}
    with pytest.raises(BackendUnavailable, match="does not match the pinned fingerprint"):
        _backend(env)
    assert _calls(sim) == {}  # the password was never sent
    env["PVEGUARD_PVE_FINGERPRINT"] = sim.fingerprint
    b = _backend(env)
    assert [n.name for n in b.nodes()] == ["pve1"]
    assert b.call("PUT", "/cluster/options", {"description": "pinned"}, what="writing") is None


def test_ca_file_verifies_and_untrusted_certificate_names_its_fingerprint(sim: Any, tmp_path: Path) -> None:
    b = _backend(_env(sim, PVEGUARD_PVE_CA_FILE=sim.cafile))
    assert [n.name for n in b.nodes()] == ["pve1"]
    with pytest.raises(BackendUnavailable) as e:
        _backend(_env(sim, PVEGUARD_PVE_VERIFY_SSL="1")).nodes()
    assert "is not trusted" in e.value.message and sim.fingerprint in e.value.message
    assert "PVEGUARD_PVE_FINGERPRINT" in (e.value.hint or "")
    other = tmp_path / "other-ca.pem"
    from pvesim.tls import make_self_signed

    cert, _key, _fp = make_self_signed(tmp_path / "other")
    other.write_bytes(cert.read_bytes())
    with pytest.raises(BackendUnavailable, match=f"not signed by the CA in {other}"):
        _backend(_env(sim, PVEGUARD_PVE_CA_FILE=str(other))).nodes()


def test_bad_fingerprint_or_ca_file_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PVEGUARD_PVE_FINGERPRINT: a certificate fingerprint is"):
        proxmox_settings(Strategy(), {"PVEGUARD_PVE_HOST": "h", "PVEGUARD_PVE_FINGERPRINT": "AB:CD"})
    with pytest.raises(ConfigError, match="cannot read the CA file"):
        proxmox_settings(Strategy(), {"PVEGUARD_PVE_HOST": "h", "PVEGUARD_PVE_CA_FILE": str(tmp_path / "no.pem")})
    s = Strategy.model_validate({"target": {"proxmox": {"fingerprint": "ab" * 32, "ca_file": None}}})
    assert s.target.proxmox.fingerprint == ":".join(["AB"] * 32)
    from pveguard.strategy.load import check_text

    strategy, problems = check_text("target:\n  proxmox:\n    fingerprint: 'AB:CD'\n", "s.yaml")
    assert strategy is None
    assert next(p.text() for p in problems if p.severity == "error").startswith(
        "s.yaml:3:18: target.proxmox.fingerprint: a certificate fingerprint is the SHA-256")


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(tls_dir: Path | None) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    if tls_dir is not None:
        from pvesim.tls import make_self_signed

        cert, key, _fp = make_self_signed(tls_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def plain_http() -> Iterator[str]:
    yield from _serve(None)


@pytest.fixture
def other_https(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path / "tls")


def test_plain_http_server_is_reported_as_plain_http(plain_http: str) -> None:
    env = {"PVEGUARD_PVE_HOST": plain_http, "PVEGUARD_PVE_TOKEN": "a@pve!t=s", "PVEGUARD_PVE_RETRY_WAIT": "0.01"}
    with pytest.raises(BackendUnavailable) as e:
        _backend(env).list_guests()
    assert e.value.message == f"{plain_http} speaks plain HTTP, not HTTPS: PVE's API is https on port 8006"
    assert "certificate" not in e.value.message


def test_https_server_that_is_not_pve_is_named_so(other_https: str) -> None:
    env = {"PVEGUARD_PVE_HOST": other_https, "PVEGUARD_PVE_TOKEN": "a@pve!t=s", "PVEGUARD_PVE_VERIFY_SSL": "0"}
    with pytest.raises(BackendUnavailable) as e:
        _backend(env).list_guests()
    assert e.value.message == (f"{other_https} answered HTTPS but is not a Proxmox VE API "
                               f"(GET /api2/json/version: 404)")
    env = {"PVEGUARD_PVE_HOST": other_https, "PVEGUARD_PVE_USER": "root@pam", "PVEGUARD_PVE_PASSWORD": "x",
           "PVEGUARD_PVE_VERIFY_SSL": "0"}
    with pytest.raises(BackendUnavailable, match="is not a Proxmox VE API"):
        _backend(env)  # the password login meets the same server


def test_pin_also_holds_through_a_proxy() -> None:
    from pveguard.backends.pvetls import PveAdapter, Trust

    adapter = PveAdapter("pve1:8006", Trust(fingerprint=WRONG))
    assert adapter.poolmanager.connection_pool_kw["assert_fingerprint"] == WRONG
    assert adapter.proxy_manager_for("http://127.0.0.1:3128").connection_pool_kw["assert_fingerprint"] == WRONG
