"""The cluster's certificates as PVE keeps them in /etc/pve: one cluster root CA (pve-root-ca.pem), per
node a pve-ssl.pem signed by it, and optionally a custom or ACME pveproxy-ssl.pem that pveproxy serves
instead (PVE::CertHelpers::cert_path_prefix). Node configuration (`acme`, `acmedomainN`), ACME accounts and
ACME plugins live here too, as /etc/pve/nodes/<node>/config and /etc/pve/priv/acme/ do on PVE.

The node the client talks to serves the emulator's own TLS certificate, so `certificates/info` reports
the fingerprint the client sees: that certificate is the node's pve-ssl.pem (or pveproxy-ssl.pem once one
is set), and replacing it re-keys the listening server (`on_served_change`), as pveproxy's restart does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pvesim import tls

DAY = 86400
ROOT_CA = "pve-root-ca.pem"
NODE_CERT = "pve-ssl.pem"
PROXY_CERT = "pveproxy-ssl.pem"


@dataclass
class CertFile:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass
class NodeCerts:
    files: dict[str, CertFile] = field(default_factory=dict)  # pve-ssl.pem, pveproxy-ssl.pem


class CertStore:
    """Certificates, node configs and ACME state of one emulated cluster (generated lazily)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._root: CertFile | None = None
        self.nodes: dict[str, NodeCerts] = {}
        self.node_config: dict[str, dict[str, Any]] = {}
        self.acme_accounts: dict[str, dict[str, Any]] = {}
        self.acme_plugins: dict[str, dict[str, Any]] = {}
        # the node behind the listening socket and what it serves: set by the server
        self.served_node: str | None = None
        self.served_sans: list[str] = []
        self.on_served_change: Callable[[CertFile], None] | None = None

    def root(self) -> CertFile:
        if self._root is None:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Proxmox Virtual Environment"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(uuid.uuid4())),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PVE Cluster Manager CA"),
                ]
            )
            now = self._now()
            self._root = CertFile(tls.issue(name, [], now - DAY, now + 3650 * DAY, key, ca=True), key)
        return self._root

    def adopt_served(self, node: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, sans: list[str]) -> None:
        """The server's own certificate is `node`'s pve-ssl.pem."""
        self.served_node = node
        self.served_sans = list(sans)
        self.node(node).files[NODE_CERT] = CertFile(cert, key)

    def node(self, name: str) -> NodeCerts:
        nc = self.nodes.get(name)
        if nc is None:
            nc = self.nodes[name] = NodeCerts()
        if NODE_CERT not in nc.files:
            key = ec.generate_private_key(ec.SECP256R1())
            now = self._now()
            nc.files[NODE_CERT] = CertFile(
                tls.issue(_node_subject(name), ["127.0.0.1", "localhost", name], now - DAY, now + 730 * DAY, key,
                          issuer=(self.root().cert, self.root().key)),
                key,
            )
        return nc

    def info(self, node: str) -> list[dict[str, Any]]:
        """GET /nodes/{node}/certificates/info: root CA, pve-ssl.pem, pveproxy-ssl.pem when present."""
        nc = self.node(node)
        out = [tls.certificate_info(self.root().cert, ROOT_CA)]
        for fname in (NODE_CERT, PROXY_CERT):
            if fname in nc.files:
                out.append(tls.certificate_info(nc.files[fname].cert, fname))
        return out

    def active(self, node: str) -> str:
        """The file pveproxy serves: pveproxy-ssl.pem when it exists, else pve-ssl.pem."""
        return PROXY_CERT if PROXY_CERT in self.node(node).files else NODE_CERT

    def set_expiry(self, node: str, fname: str, not_after: float) -> dict[str, Any]:
        """Re-issue one node certificate (same key, subject, SANs and issuer) with a new notAfter."""
        nc = self.node(node)
        old = nc.files.get(fname)
        if old is None:
            raise KeyError(f"node {node} has no {fname}")
        san = tls.certificate_info(old.cert, fname)["san"]
        issuer = None if old.cert.issuer == old.cert.subject else self._issuer_of(old.cert)
        not_before = min(old.cert.not_valid_before_utc.timestamp(), not_after - 60)
        cert = tls.issue(old.cert.subject, list(san), not_before, not_after, old.key, issuer=issuer)
        self.put(node, fname, CertFile(cert, old.key))
        return tls.certificate_info(cert, fname)

    def put(self, node: str, fname: str, cf: CertFile) -> None:
        self.node(node).files[fname] = cf
        if node == self.served_node and self.active(node) == fname and self.on_served_change:
            self.on_served_change(cf)

    def issue_acme(self, node: str, domains: list[str]) -> CertFile:
        """What a finished ACME order leaves behind: pveproxy-ssl.pem for the domains, 90 days.

        No CA is reachable, so the emulator's root CA signs it; the served node keeps its own addresses
        in the SANs so the client's connection stays verifiable."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._now()
        sans = list(domains) + ([s for s in self.served_sans if s not in domains] if node == self.served_node else [])
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
        cert = tls.issue(name, sans, now - 60, now + 90 * DAY, key, issuer=(self.root().cert, self.root().key))
        cf = CertFile(cert, key)
        self.put(node, PROXY_CERT, cf)
        return cf

    def _issuer_of(self, cert: x509.Certificate) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        r = self.root()
        return (r.cert, r.key)


def _node_subject(node: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "PVE Cluster Node"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Proxmox Virtual Environment"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{node}.localdomain"),
        ]
    )
