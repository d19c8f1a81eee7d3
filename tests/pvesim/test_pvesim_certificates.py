"""Node certificates and ACME as PVE answers them (pve-manager PVE/API2/Certificates.pm, ACME.pm,
NodeConfig.pm; pve-common PVE::Certificate::get_certificate_info)."""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

from pvesim.testing import SimHandle, running
from pvesim.tls import fingerprint


def _served(sim: SimHandle) -> x509.Certificate:
    """The certificate the client sees, verified against the cafile pvesim hands out."""
    host, port = sim.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=sim.cafile)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _info(sim: SimHandle, node: str = "pve1") -> dict[str, dict[str, object]]:
    st, _r, body = sim.api("GET", f"/nodes/{node}/certificates/info")
    assert st == 200 and body is not None
    return {row["filename"]: row for row in body["data"]}


def test_info_reports_the_certificate_the_client_sees() -> None:
    with running(nodes=2) as sim:
        info = _info(sim)
        assert list(info) == ["pve-root-ca.pem", "pve-ssl.pem"]
        served = _served(sim)
        assert info["pve-ssl.pem"]["fingerprint"] == fingerprint(served) == sim.fingerprint
        assert info["pve-ssl.pem"]["issuer"] == info["pve-root-ca.pem"]["subject"]
        assert "127.0.0.1" in info["pve-ssl.pem"]["san"]  # type: ignore[operator]
        assert str(info["pve-root-ca.pem"]["subject"]).startswith("/CN=Proxmox Virtual Environment/OU=")
        # another node has its own pve-ssl.pem, signed by the same cluster CA
        other = _info(sim, "pve2")
        assert other["pve-ssl.pem"]["fingerprint"] != info["pve-ssl.pem"]["fingerprint"]
        subject = "/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN=pve2.localdomain"
        assert other["pve-ssl.pem"]["subject"] == subject
        assert other["pve-root-ca.pem"] == info["pve-root-ca.pem"]


def test_expiry_control_reissues_the_served_certificate() -> None:
    with running(nodes=1) as sim:
        sim.control("POST", "/certificates/pve1", {"days": 5})
        info = _info(sim)["pve-ssl.pem"]
        assert abs(int(info["notafter"]) - (time.time() + 5 * 86400)) < 120  # type: ignore[call-overload]
        served = _served(sim)  # still trusted through the root CA
        assert fingerprint(served) == info["fingerprint"]
        assert abs(served.not_valid_after_utc.timestamp() - int(info["notafter"])) < 1  # type: ignore[call-overload]


def test_acme_order_needs_domains_then_an_account() -> None:
    with running(nodes=1, task_seconds={"acmenewcert": 0, "acmeregister": 0, "acmerenew": 0}) as sim:
        st, _r, body = sim.api("POST", "/nodes/pve1/certificates/acme/certificate")
        assert st == 400 and body and "ACME domain list in node configuration is missing!" in body["message"]
        st, _r, body = sim.api("PUT", "/nodes/pve1/certificates/acme/certificate")
        assert st == 500 and body and "No current (custom) certificate found" in body["message"]
        assert sim.api("PUT", "/nodes/pve1/config", {"acme": "domains=pve1.example.com"})[0] == 200
        st, _r, body = sim.api("GET", "/nodes/pve1/config")
        assert body and body["data"]["acme"] == "domains=pve1.example.com" and len(body["data"]["digest"]) == 40
        st, _r, body = sim.api("POST", "/nodes/pve1/certificates/acme/certificate")
        assert st == 200 and body
        task = sim.api("GET", f"/nodes/pve1/tasks/{body['data']}/status")[2]
        assert task and task["data"]["exitstatus"] == "ACME account config file 'default' does not exist."
        # registering an ACME account is root@pam's alone in PVE: a token, even root's, is refused
        assert sim.api("POST", "/cluster/acme/account", {"contact": "admin@example.com"})[0] == 403
        sim.proxmoxer(auth="password").cluster.acme.account.post(contact="admin@example.com")
        st, _r, body = sim.api("POST", "/nodes/pve1/certificates/acme/certificate")
        task = sim.api("GET", f"/nodes/pve1/tasks/{body['data']}/status")[2]  # type: ignore[index]
        assert task and task["data"]["exitstatus"] == "OK"
        info = _info(sim)
        assert info["pveproxy-ssl.pem"]["san"][0] == "pve1.example.com"  # type: ignore[index]
        assert fingerprint(_served(sim)) == info["pveproxy-ssl.pem"]["fingerprint"]  # pveproxy serves it now
        # a renewal 90 days before expiry needs force, as PVE's 30-day rule says
        st, _r, body = sim.api("PUT", "/nodes/pve1/certificates/acme/certificate")
        assert st == 400 and body and "does not expire within the next 30 days" in body["errors"]["force"]
        st, _r, body = sim.api("POST", "/nodes/pve1/certificates/acme/certificate")
        assert st == 400 and body and "'force' is not set" in body["errors"]["force"]
