"""Certificates: every PVE node's certificates and ACME configuration, and the TLS endpoints of the
containers (their https health checks), each with the days it has left.

Reading is `collect` (I/O at the edges: the PVE API through the backend, one TLS handshake per
endpoint); judging is pure (`expiring`, `observations`); `check` feeds the judgement into the monitor's
alert state machine (the same store, rules, silences and notifiers as `pveguard monitor`); `renew`
orders an ACME certificate where a node has ACME configured.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pveguard.errors import BackendError, ConfigError, PveguardError, UsageError
from pveguard.monitor.alerts import AlertState, Event, Rule, evaluate
from pveguard.output import iso_utc
from pveguard.strategy.models import Strategy

DAY = 86400.0
RULE = "certificate"
METRIC = "cert_expiring"
PROXY_CERT = "pveproxy-ssl.pem"  # PVE's custom/ACME certificate (PVE::CertHelpers::cert_path_prefix)


@dataclass(frozen=True)
class Cert:
    """One certificate: a node's file or what a TLS endpoint presented."""

    kind: Literal["node", "endpoint"]
    where: str  # node name, or the container the endpoint belongs to
    name: str  # file name (pve-ssl.pem ...), or the endpoint URL
    subject: str | None = None
    issuer: str | None = None
    san: tuple[str, ...] = ()
    fingerprint: str | None = None
    not_after: float | None = None
    error: str | None = None  # why it could not be read (then the fields above are empty)

    @property
    def target(self) -> str:
        """The alert target: node/pve1/pve-ssl.pem or tls/https://host:port/path."""
        return f"node/{self.where}/{self.name}" if self.kind == "node" else f"tls/{self.name}"

    def days_left(self, now: float) -> int | None:
        """Whole days until notAfter (negative once expired)."""
        return None if self.not_after is None else math.floor((self.not_after - now) / DAY)

    def expiring(self, now: float, warn_before: float) -> bool:
        return self.not_after is not None and self.not_after - now <= warn_before

    def as_dict(self, now: float, warn_before: float) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "name": self.name, "subject": self.subject,
                "issuer": self.issuer, "san": list(self.san), "fingerprint": self.fingerprint,
                "not_after": iso_utc(self.not_after), "days_left": self.days_left(now),
                "expiring": self.expiring(now, warn_before), "error": self.error}


@dataclass(frozen=True)
class NodeAcme:
    """A node's ACME settings (the `acme` and `acmedomainN` keys of /nodes/{node}/config)."""

    node: str
    account: str | None = None
    domains: tuple[tuple[str, str], ...] = ()  # (domain, plugin)
    error: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.domains)

    def as_dict(self) -> dict[str, Any]:
        # configured is null when it cannot be told (node offline, its config unreadable: see error)
        return {"node": self.node, "configured": None if self.error else self.configured, "account": self.account,
                "domains": [{"domain": d, "plugin": p} for d, p in self.domains], "error": self.error}


@dataclass
class Report:
    now: float
    warn_before: float
    backend: str = ""
    nodes_reason: str = ""  # why there are no node certificates (plain LXC, API unreachable)
    certs: list[Cert] = field(default_factory=list)
    acme: list[NodeAcme] = field(default_factory=list)
    acme_accounts: list[str] = field(default_factory=list)

    def expiring(self) -> list[Cert]:
        return [c for c in self.certs if c.expiring(self.now, self.warn_before)]

    def as_dict(self) -> dict[str, Any]:
        return {"generated_at": iso_utc(self.now), "warn_before_days": self.warn_before / DAY,
                "backend": self.backend, "nodes_reason": self.nodes_reason,
                "certificates": [c.as_dict(self.now, self.warn_before) for c in self.certs],
                "acme": {"accounts": self.acme_accounts, "nodes": [a.as_dict() for a in self.acme]},
                "expiring": len(self.expiring())}


# --- reading ------------------------------------------------------------------------------------


def _kv(text: str, default_key: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, str(text).split(",")):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
        elif default_key:
            out[default_key] = part.strip()
    return out


def acme_of(node: str, config: dict[str, Any]) -> NodeAcme:
    """ACME settings from a node config, read as PVE::NodeConfig::get_acme_conf does (`acme: domains=a;b`
    means the standalone plugin; `acmedomainN: domain,plugin=...`)."""
    acme = _kv(config.get("acme", ""))
    domains = [(d.lower(), "standalone") for d in acme.get("domains", "").split(";") if d]
    for key in sorted(k for k in config if k.startswith("acmedomain")):
        entry = _kv(config[key], "domain")
        if entry.get("domain"):
            domains.append((entry["domain"].lower(), entry.get("plugin", "standalone")))
    account = acme.get("account", "default") if domains or "acme" in config else None
    return NodeAcme(node, account, tuple(domains))


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, PveguardError) else f"{type(exc).__name__}: {exc}"


def node_certificates(backend: Any) -> tuple[list[Cert], list[NodeAcme], list[str]]:
    """Every node's certificates and ACME settings, and the cluster's ACME account names."""
    certs: list[Cert] = []
    acme: list[NodeAcme] = []
    for n in backend.nodes():
        if not n.online:
            certs.append(Cert("node", n.name, "-", error="node offline"))
            acme.append(NodeAcme(n.name, error="node offline"))  # unknown, not "not configured"
            continue
        try:
            rows = backend.call("GET", f"/nodes/{n.name}/certificates/info",
                                what=f"reading the certificates of node {n.name}")
            certs += [_from_info(n.name, r) for r in rows]
        except PveguardError as exc:
            certs.append(Cert("node", n.name, "-", error=exc.message))
        try:
            conf = backend.call("GET", f"/nodes/{n.name}/config", what=f"reading the config of node {n.name}")
            acme.append(acme_of(n.name, dict(conf or {})))
        except PveguardError as exc:
            acme.append(NodeAcme(n.name, error=exc.message))
    try:
        accounts = [str(a["name"]) for a in backend.call("GET", "/cluster/acme/account",
                                                          what="listing the ACME accounts")]
    except PveguardError:
        accounts = []  # listed as none; each node's ACME entry still says whether it is configured
    return certs, acme, accounts


def _from_info(node: str, row: dict[str, Any]) -> Cert:
    after = row.get("notafter")
    return Cert("node", node, str(row.get("filename", "?")), row.get("subject"), row.get("issuer"),
                tuple(str(s) for s in row.get("san") or ()), row.get("fingerprint"),
                float(after) if after is not None else None)


def endpoints(strategy: Strategy) -> list[tuple[str, str, float]]:
    """(container, url, timeout) for every http health check with an https URL."""
    out = []
    for c in strategy.containers:
        for hc in c.health_checks:
            if hc.type == "http" and hc.url and hc.url.lower().startswith("https://"):
                out.append((c.name, hc.url, hc.timeout.total_seconds()))
    return out


def endpoint_certificate(container: str, url: str, timeout: float = 5.0) -> Cert:
    """The certificate an https endpoint presents (read without trusting it: an untrusted or expired
    certificate is exactly what this has to report)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or 443
    except ValueError:
        return Cert("endpoint", container, url, error=f"bad port in {url}")
    if not host:
        return Cert("endpoint", container, url, error=f"no host in {url}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=None if _is_ip(host) else host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return Cert("endpoint", container, url, error=f"cannot read the certificate at {host}:{port}: {exc}")
    if not der:
        return Cert("endpoint", container, url, error=f"{host}:{port} presented no certificate")
    return from_x509(container, url, x509.load_der_x509_certificate(der))


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def from_x509(container: str, url: str, cert: x509.Certificate) -> Cert:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = tuple(str(n.value) for n in ext)
    except x509.ExtensionNotFound:
        san = ()
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return Cert("endpoint", container, url, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), san,
                ":".join(fp[i:i + 2] for i in range(0, len(fp), 2)), cert.not_valid_after_utc.timestamp())


def collect(strategy: Strategy, backend: Any | None, now: float | None = None, backend_error: str = "") -> Report:
    """Node certificates and ACME (PVE only) and the containers' TLS endpoints."""
    now = time.time() if now is None else now
    warn = strategy.security.access.certificates.warn_before.total_seconds()
    report = Report(now, warn, backend=getattr(backend, "name", "") if backend is not None else "")
    if backend is None:
        report.nodes_reason = backend_error or "no backend"
    elif not hasattr(backend, "call"):
        report.nodes_reason = f"the {report.backend} backend has no PVE node certificates"
    else:
        try:
            certs, report.acme, report.acme_accounts = node_certificates(backend)
            report.certs += certs
        except PveguardError as exc:
            report.nodes_reason = exc.message
    report.certs += [endpoint_certificate(c, u, t) for c, u, t in endpoints(strategy)]
    return report


# --- judging and alerting -------------------------------------------------------------------------


def rule(strategy: Strategy) -> Rule:
    """The expiry alert: fires at once (a certificate does not un-expire by waiting) and repeats at
    the monitor's re-notification interval."""
    days = strategy.security.access.certificates.warn_before.total_seconds() / DAY
    return Rule(RULE, METRIC, 1.0, sustain=0.0, hysteresis=0.0,
                renotify=strategy.monitoring.renotify.total_seconds(), severity="warning",
                summary=f"certificate expires within {days:g} days")


def observations(report: Report) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Alert observations (1 = inside warn_before) and display names per target. A certificate that
    could not be read has no observation, which resolves an earlier alert only once it is gone."""
    obs: dict[str, dict[str, float]] = {}
    names: dict[str, str] = {}
    for c in report.certs:
        if c.error is not None:
            continue
        obs[c.target] = {METRIC: 1.0 if c.expiring(report.now, report.warn_before) else 0.0}
        left = c.days_left(report.now)
        names[c.target] = f"{c.where} {c.name} ({left} days left)" if c.kind == "node" else \
            f"{c.where} ({left} days left)"
    return obs, names


def check(store: Any, report: Report, strategy: Strategy, notifiers: Iterable[Any]) -> tuple[
        dict[tuple[str, str], AlertState], list[Event], dict[str, int]]:
    """Step the certificate alerts once; queue and deliver their notifications like a monitor poll."""
    from pveguard.monitor.engine import load_silences, load_states, save_states
    from pveguard.monitor.notify import Dispatcher, enqueue

    r = rule(strategy)
    obs, names = observations(report)
    old = {k: s for k, s in load_states(store).items() if k[0] == RULE}
    ev = evaluate([r], old, obs, report.now, names, silences=load_silences(store, report.now))
    dispatcher = Dispatcher(store, list(notifiers))
    with store.transaction() as conn:
        save_states(conn, old, ev.states)
        enqueue(conn, [e.to_dict() for e in ev.events], list(dispatcher.notifiers), report.now)
    return ev.states, ev.events, dispatcher.deliver(report.now)


# --- renewing -------------------------------------------------------------------------------------

PVE_RENEW_WINDOW = 30 * DAY  # PVE renews an ACME certificate without --force only inside 30 days


def due_renewals(report: Report) -> list[tuple[str, bool]]:
    """Nodes whose certificate is inside warn_before and whose ACME is configured: (node, force).
    force when the certificate is further from expiry than PVE's own 30 days (the strategy asks to
    renew earlier than PVE would by itself)."""
    acme = {a.node for a in report.acme if a.configured}
    due: dict[str, bool] = {}
    for c in report.expiring():
        if c.kind == "node" and c.where in acme and c.not_after is not None:
            force = c.not_after - report.now > PVE_RENEW_WINDOW
            due[c.where] = due.get(c.where, True) and force
    return sorted(due.items())


def renew(backend: Any, node: str, force: bool = False) -> tuple[str, str]:
    """Order (no ACME certificate yet) or renew a node's ACME certificate; wait for the task.
    Returns (action, upid). ConfigError when the node has no ACME domains configured."""
    if not hasattr(backend, "call"):
        raise UsageError(f"certificate renewal needs the proxmox backend; this one is {backend.name}",
                         hint="point pveguard at the PVE API (PVEGUARD_PVE_HOST, PVEGUARD_PVE_TOKEN)")
    names = [n.name for n in backend.nodes()]
    if node not in names:
        raise UsageError(f"no node {node!r} in this cluster", hint=f"nodes: {', '.join(names) or 'none'}")
    conf = backend.call("GET", f"/nodes/{node}/config", what=f"reading the config of node {node}")
    acme = acme_of(node, dict(conf or {}))
    if not acme.configured:
        raise ConfigError(
            f"ACME is not configured on node {node}: its config has no ACME domains, so there is nothing to renew",
            hint=f"add a domain first, e.g. 'pvenode config set --acme domains=<fqdn>' on {node} (and an account: "
                 "'pvenode acme account register default <email>'), or upload a certificate of your own")
    rows = backend.call("GET", f"/nodes/{node}/certificates/info", what=f"reading the certificates of node {node}")
    has_custom = any(r.get("filename") == PROXY_CERT for r in rows)
    method, action = ("PUT", "renew") if has_custom else ("POST", "order")
    params = {"force": 1} if force else None
    try:
        upid = str(backend.call(method, f"/nodes/{node}/certificates/acme/certificate", params,
                                what=f"{'renewing' if has_custom else 'ordering'} the ACME certificate of {node}"))
    except BackendError as exc:
        if "does not expire within the next 30 days" in exc.message:
            raise UsageError(f"{exc.message}", hint="PVE renews only inside 30 days of expiry; add --force to "
                                                    "renew now") from None
        raise
    backend.wait_task(upid, f"ACME {action} on {node}")
    return action, upid
