"""`pveguard certs` end to end: node certificates from pvesim, a real loopback https endpoint with a
five-day certificate, the expiry alert (state machine, `pveguard alerts`, a webhook delivery), the audit
finding, and ACME renewal refused without ACME and done with it."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra.cli import run_cli
from tests.monitor.receivers import WebhookReceiver, webhook_receiver

testing = pytest.importorskip("pvesim.testing")
DAY = 86400


def _short_lived_cert(directory: Path, days: float) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 that expires in `days`; (cert, key, SHA-256 fingerprint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grafana.test")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cp, kp = directory / "cert.pem", directory / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return cp, kp, ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Rig:
    sim: Any
    dir: Path
    env: dict[str, str]
    url: str
    endpoint_fp: str
    hook: WebhookReceiver

    def run(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        return run_cli(list(argv), capsys, self.env)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    if not testing.schema_available():
        pytest.skip("PVE API schema not found (pvesim)")
    from pveguard.strategy.defaults import render

    cert, key, fp = _short_lived_cert(tmp_path / "tls", 5 + 1 / 24)  # 5 days and an hour: "5 days left"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/api/health"
    try:
        with testing.running(nodes=2, task_seconds={"acmenewcert": 0.1, "acmerenew": 0.1, "acmeregister": 0}) as sim, \
                webhook_receiver() as hook:
            doc = yaml.safe_load(render())
            doc["containers"][0]["health_checks"] = [{"type": "http", "url": url}]
            doc.setdefault("monitoring", {})["notify"] = [{"type": "webhook", "url": hook.url}]
            (tmp_path / "strategy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            env = {"PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"), "PVEGUARD_STATE_DIR": str(tmp_path / "state"),
                   "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
                   "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
                   "PVEGUARD_PVE_POLL_INTERVAL": "0.1", "COLUMNS": "200"}
            yield Rig(sim, tmp_path, env, url, fp, hook)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _served_fingerprint(sim: Any) -> str:
    host, port = sim.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    assert der
    fp = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))


def _by(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["where"], c["name"]): c for c in doc["certificates"]}


def test_certs_lists_node_certificates_and_the_endpoint_with_days_left(rig: Rig,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rig.run("certs", "--json", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    certs = _by(doc)
    assert {k for k in certs if k[0] == "pve1"} == {("pve1", "pve-root-ca.pem"), ("pve1", "pve-ssl.pem")}
    node = certs[("pve1", "pve-ssl.pem")]
    assert node["fingerprint"] == _served_fingerprint(rig.sim)  # what the client sees
    # whole days left; a certificate made within the last second can still count its full first day
    assert node["days_left"] in (364, 365) and node["expiring"] is False  # pvesim's certificate: one year
    assert certs[("pve2", "pve-ssl.pem")]["days_left"] in (729, 730)  # other nodes: PVE's two years
    ep = certs[("pve-monitoring", rig.url)]
    assert ep["kind"] == "endpoint" and ep["days_left"] == 5 and ep["expiring"] is True
    assert ep["fingerprint"] == rig.endpoint_fp and ep["san"] == ["127.0.0.1"] and ep["error"] is None
    assert doc["expiring"] == 1 and doc["warn_before_days"] == 30
    assert doc["acme"] == {"accounts": [], "nodes": [
        {"node": n, "configured": False, "account": None, "domains": [], "error": None} for n in ("pve1", "pve2")]}
    code, out, _ = rig.run("certs", capsys=capsys)
    assert code == 0 and "pve-ssl.pem" in out and rig.url in out


def test_an_offline_nodes_acme_state_is_unknown(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.sim.control("POST", "/nodes/pve2", {"online": False})
    code, out, err = rig.run("certs", "--json", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert _by(doc)[("pve2", "-")]["error"] == "node offline"
    assert doc["acme"]["nodes"] == [
        {"node": "pve1", "configured": False, "account": None, "domains": [], "error": None},
        {"node": "pve2", "configured": None, "account": None, "domains": [], "error": "node offline"}]
    code, out, err = rig.run("certs", capsys=capsys)
    assert "ACME on pve2: unknown (node offline)" in out + err


def test_expiry_fires_the_alert_and_survives_monitor_polls(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rig.run("certs", "check", "--json", capsys=capsys)
    assert code == 1, err  # one certificate inside warn_before
    assert json.loads(out)["alerts_firing"] == [f"tls/{rig.url}"]
    bodies = rig.hook.bodies()
    assert len(bodies) == 1 and bodies[0]["rule"] == "certificate" and bodies[0]["kind"] == "firing"
    assert bodies[0]["target"] == f"tls/{rig.url}" and "expires within 30 days" in bodies[0]["description"]
    # a node certificate close to expiry: pvesim re-issues pve1's served certificate for 3 days
    rig.sim.control("POST", "/certificates/pve1", {"days": 3})
    code, out, _ = rig.run("certs", "check", "--json", capsys=capsys)
    doc = json.loads(out)
    assert code == 1 and doc["alerts_firing"] == ["node/pve1/pve-ssl.pem", f"tls/{rig.url}"]
    node = _by(doc)[("pve1", "pve-ssl.pem")]
    assert node["days_left"] == 2 and node["fingerprint"] == _served_fingerprint(rig.sim)
    assert len(rig.hook.bodies()) == 2  # only the new alert notified, the first not repeated
    # the container monitor's poll keeps the certificate alerts (its own rules only)
    assert rig.run("monitor", "--once", capsys=capsys)[0] == 0
    code, out, _ = rig.run("alerts", "--json", capsys=capsys)
    firing = {(a["rule"], a["target"]) for a in json.loads(out)["alerts"] if a["state"] == "firing"}
    assert {("certificate", "node/pve1/pve-ssl.pem"), ("certificate", f"tls/{rig.url}")} <= firing
    # renewed: the alert resolves and says so
    rig.sim.control("POST", "/certificates/pve1", {"days": 200})
    code, out, _ = rig.run("certs", "check", "--json", capsys=capsys)
    assert json.loads(out)["alerts_firing"] == [f"tls/{rig.url}"]
    assert [b["kind"] for b in rig.hook.bodies()][-1] == "resolved"


def test_audit_reports_the_expiring_certificate(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rig.run("audit", "--json", capsys=capsys)
    assert code == 0, err
    found = [f for f in json.loads(out)["findings"] if f["category"] == "certificates"]
    assert [f["id"] for f in found] == [f"certificate:tls/{rig.url}"]
    assert found[0]["severity"] == "high" and "expires in 5 day(s)" in found[0]["title"]


def test_renew_says_when_acme_is_not_configured_and_renews_when_it_is(rig: Rig,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = rig.run("certs", "renew", "pve1", capsys=capsys)
    assert code == 2 and "ACME is not configured on node pve1" in err and "Traceback" not in err
    code, _out, err = rig.run("certs", "renew", "pve9", capsys=capsys)
    assert code == 2 and "no node 'pve9'" in err
    assert rig.sim.api("PUT", "/nodes/pve1/config", {"acme": "domains=pve1.example.com"})[0] == 200
    # configured but without an account: PVE's task fails and says why
    code, _out, err = rig.run("certs", "renew", "pve1", capsys=capsys)
    assert code == 1 and "ACME account config file 'default' does not exist." in err
    # registering an ACME account is root@pam's alone in PVE (no permissions in the schema): a
    # token, even root's, is refused
    assert rig.sim.api("POST", "/cluster/acme/account", {"contact": "admin@example.com"})[0] == 403
    rig.sim.proxmoxer(auth="password").cluster.acme.account.post(contact="admin@example.com")
    code, _out, err = rig.run("certs", "renew", "pve1", capsys=capsys)
    assert code == 0, err
    assert "order done" in err
    code, out, _ = rig.run("certs", "--json", capsys=capsys)
    doc = json.loads(out)
    acme = _by(doc)[("pve1", "pveproxy-ssl.pem")]
    assert acme["days_left"] == 89 and acme["san"][0] == "pve1.example.com"
    assert acme["fingerprint"] == _served_fingerprint(rig.sim)  # pveproxy serves the new certificate
    assert doc["acme"]["accounts"] == ["default"]
    assert doc["acme"]["nodes"][0]["domains"] == [{"domain": "pve1.example.com", "plugin": "standalone"}]
    # a renewal 89 days before expiry is PVE's "not within 30 days": said, with the way out
    code, _out, err = rig.run("certs", "renew", "pve1", capsys=capsys)
    assert code == 2 and "--force" in err
    code, _out, err = rig.run("certs", "renew", "pve1", "--force", capsys=capsys)
    assert code == 0 and "renew done" in err, err
    code, out, _ = rig.run("audit-log", "show", "--json", "--action", "certs", capsys=capsys)
    actions = [(e["action"], e["details"].get("ok")) for e in json.loads(out)]
    assert ("certs.renew.result", True) in actions and ("certs.renew.result", False) in actions


def test_managed_certificates_are_renewed_by_the_check(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """security.access.certificates.manage: `certs check` (run by its timer and by serve) renews a
    node's ACME certificate inside warn_before before it raises the alert; off, it only alerts."""
    assert rig.sim.api("PUT", "/nodes/pve1/config", {"acme": "domains=pve1.example.com"})[0] == 200
    rig.sim.proxmoxer(auth="password").cluster.acme.account.post(contact="admin@example.com")
    assert rig.run("certs", "renew", "pve1", capsys=capsys)[0] == 0  # pveproxy-ssl.pem, 90 days
    rig.sim.control("POST", "/certificates/pve1", {"file": "pveproxy-ssl.pem", "days": 5})

    off = yaml.safe_load(Path(rig.env["PVEGUARD_STRATEGY"]).read_text())
    off.setdefault("security", {}).setdefault("access", {})["certificates"] = {"manage": False}
    (rig.dir / "off.yaml").write_text(yaml.safe_dump(off, sort_keys=False))
    off_env = {**rig.env, "PVEGUARD_STRATEGY": str(rig.dir / "off.yaml")}
    code, out, err = run_cli(["certs", "check", "--json"], capsys, off_env)
    doc = json.loads(out)
    assert code == 1 and doc["renewals"] == [], err
    assert "node/pve1/pveproxy-ssl.pem" in doc["alerts_firing"]
    assert _by(doc)[("pve1", "pveproxy-ssl.pem")]["days_left"] == 4

    code, out, err = rig.run("certs", "check", "--json", capsys=capsys)
    doc = json.loads(out)
    assert [(r["node"], r["ok"], r["action"]) for r in doc["renewals"]] == [("pve1", True, "renew")], err
    assert _by(doc)[("pve1", "pveproxy-ssl.pem")]["days_left"] == 89
    assert "node/pve1/pveproxy-ssl.pem" not in doc["alerts_firing"]  # resolved by the renewal
    assert _by(doc)[("pve1", "pveproxy-ssl.pem")]["fingerprint"] == _served_fingerprint(rig.sim)
    code, out, _ = rig.run("audit-log", "show", "--json", "--action", "certs.renew", capsys=capsys)
    intents = [e for e in json.loads(out) if e["action"] == "certs.renew.intent"]
    assert intents[-1]["details"] == {"force": False, "by": "certificates.manage"}
    # pve2 has no ACME: its certificate is never renewed by pveguard, only alerted on
    rig.sim.control("POST", "/certificates/pve2", {"days": 3})
    code, out, _ = rig.run("certs", "check", "--json", capsys=capsys)
    doc = json.loads(out)
    assert doc["renewals"] == [] and "node/pve2/pve-ssl.pem" in doc["alerts_firing"]
