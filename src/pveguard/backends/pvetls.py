"""Trusting the PVE API's https endpoint: certificate pinning, a CA file, and failures said plainly.

PVE nodes serve a certificate signed by the cluster's own CA (`/etc/pve/pve-root-ca.pem`), so the
system's CA store does not trust it. Admins either copy that CA (`ca_file`) or pin the node's
certificate by the SHA-256 fingerprint that `pvenode cert info` prints (`fingerprint`). The pin is
checked on every connection by urllib3 itself (`assert_fingerprint`), not by a separate probe, so
no request (and no secret) ever goes to a server that presents another certificate.

`PveAdapter` also turns the transport's generic failures into what happened: a plain-HTTP server on
the port, a fingerprint mismatch (expected vs got), an untrusted certificate (with the fingerprint
to compare and pin), or an https server that is not a PVE API at all.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from proxmoxer.backends.https import ProxmoxHTTPAuthBase
from proxmoxer.core import AuthenticationError
from requests.adapters import HTTPAdapter
from requests.cookies import cookiejar_from_dict
from urllib3.util.ssl_ import create_urllib3_context

from pveguard.backends.inflight import IN_FLIGHT
from pveguard.errors import BackendUnavailable

PVE_PORT = 8006
PIN_HINT = ("compare it with 'pvenode cert info' on the node, then pin it with PVEGUARD_PVE_FINGERPRINT "
            "(target.proxmox.fingerprint), or give the cluster CA with PVEGUARD_PVE_CA_FILE "
            "(a copy of /etc/pve/pve-root-ca.pem)")


@dataclass(frozen=True)
class Trust:
    """How the API's certificate is checked: a pinned fingerprint, a CA file, the system CAs, or not at all."""

    verify_ssl: bool = True
    fingerprint: str | None = None  # AA:BB:... (SHA-256)
    ca_file: str | None = None

    def requests_verify(self) -> bool | str:
        """The `verify` argument for requests: the CA file, else the chain is only checked without a pin
        (a pin replaces the chain check, as `pvenode cert info` fingerprints are meant to)."""
        if self.ca_file:
            return self.ca_file
        if self.fingerprint:
            return False
        return self.verify_ssl

    def describe(self) -> str:
        if self.fingerprint:
            pinned = f"pinned SHA-256 {self.fingerprint[:11]}..."
            return pinned + (f" and CA file {self.ca_file}" if self.ca_file else "")
        if self.ca_file:
            return f"CA file {self.ca_file}"
        return "system CAs" if self.verify_ssl else "NOT verified (verify_ssl off)"


def format_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as PVE prints it: AA:BB:..."""
    hexits = hashlib.sha256(der).hexdigest().upper()
    return ":".join(hexits[i:i + 2] for i in range(0, len(hexits), 2))


def split_host(host: str) -> tuple[str, int]:
    """host[:port] (IPv6 in brackets) -> (host, port), PVE's port 8006 by default."""
    m = re.fullmatch(r"\[(?P<h6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<h>[^:]+)(?::(?P<p>\d+))?", host.strip())
    if not m:
        return host, PVE_PORT
    name = m["h6"] or m["h"]
    port = m["p6"] or m["p"]
    return name, int(port) if port else PVE_PORT


def peer_fingerprint(host: str, port: int, timeout: float = 5.0) -> str | None:
    """The fingerprint of the certificate the server presents (None when no TLS handshake completes).
    Used only to explain a failure, never to decide trust."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return format_fingerprint(der) if der else None


def speaks_plain_http(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when the port answers a plain-text HTTP request with an HTTP status line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def _tls_failure(exc: requests.exceptions.SSLError, host: str, port: int, trust: Trust) -> BackendUnavailable:
    text = str(exc)
    where = f"{host}:{port}"
    m = re.search(r'Fingerprints did not match\. Expected "([0-9a-fA-F:]+)", got "([0-9a-fA-F]+)"', text)
    if m or "Fingerprints did not match" in text:
        got = peer_fingerprint(host, port) or (m[2] if m else "unknown")
        if m and len(m[2]) == 64:
            got = ":".join(m[2].upper()[i:i + 2] for i in range(0, 64, 2))
        return BackendUnavailable(
            f"the certificate of {where} does not match the pinned fingerprint: expected {trust.fingerprint}, "
            f"got {got}",
            hint="if the node's certificate was renewed on purpose, check the new one with 'pvenode cert info' "
                 "on the node and update PVEGUARD_PVE_FINGERPRINT / target.proxmox.fingerprint; otherwise "
                 "something else answers on that address: do not connect")
    if speaks_plain_http(host, port):
        return BackendUnavailable(
            f"{where} speaks plain HTTP, not HTTPS: PVE's API is https on port {PVE_PORT}",
            hint=f"check PVEGUARD_PVE_HOST / target.proxmox.host: it should name the node's pveproxy "
                 f"(host or host:{PVE_PORT})")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        reason = re.search(r"certificate verify failed: ([^(\"']+)", text)
        why = reason[1].strip().rstrip(".") if reason else "certificate verify failed"
        got = peer_fingerprint(host, port)
        if trust.ca_file:
            return BackendUnavailable(
                f"the TLS certificate of {where} is not signed by the CA in {trust.ca_file} ({why})"
                + (f"; its SHA-256 fingerprint is {got}" if got else ""),
                hint="copy the cluster CA again from /etc/pve/pve-root-ca.pem on a node, or " + PIN_HINT)
        return BackendUnavailable(
            f"the TLS certificate of {where} is not trusted ({why})"
            + (f"; its SHA-256 fingerprint is {got}" if got else ""),
            hint=PIN_HINT + "; PVEGUARD_PVE_VERIFY_SSL=0 turns checking off (only on a trusted network)")
    short = re.sub(r"\s+", " ", text)[:200]
    return BackendUnavailable(f"the TLS handshake with {where} failed: {short}",
                              hint=f"check that {where} is the node's pveproxy (https, port {PVE_PORT})")


def _is_json(resp: requests.Response) -> bool:
    return "json" in resp.headers.get("Content-Type", "").lower()


class PveAdapter(HTTPAdapter):
    """requests transport for the PVE API: enforces the pin on the connection and explains failures."""

    def __init__(self, host: str, trust: Trust) -> None:
        self._host, self._port = split_host(host)
        self._trust = trust
        # one pooled connection per call in flight (observe and friends read in parallel): requests' default
        # of 10 would drop the extra connections after each call and pay a new TLS handshake every time
        super().__init__(pool_connections=2, pool_maxsize=IN_FLIGHT)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        # One TLS context for every connection: without one urllib3 builds a context per connection and,
        # when no CA is named (a pin, or verify_ssl off), loads the system's whole CA store into it -- ~23 ms
        # of CPU each, that verification never uses (it checks with CERT_NONE plus the pin, or with the CA
        # file it is given). The pool still sets verify_mode, hostname checking and the CA file on it.
        verify = self._trust.requests_verify()
        kwargs.setdefault("ssl_context", create_urllib3_context(
            cert_reqs=ssl.CERT_NONE if verify is False else ssl.CERT_REQUIRED))
        if self._trust.fingerprint:
            # checked by urllib3 during the handshake, before any byte of the request is sent
            kwargs["assert_fingerprint"] = self._trust.fingerprint
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # through an https_proxy the TLS session to PVE is tunnelled: the pin must hold there as well
        if self._trust.fingerprint:
            proxy_kwargs["assert_fingerprint"] = self._trust.fingerprint
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            resp = super().send(request, *args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise self.tls_failure(exc) from None
        return self.after(request, resp, *args, **kwargs)

    def tls_failure(self, exc: requests.exceptions.SSLError) -> BackendUnavailable:
        """What a failed handshake with this endpoint means, said plainly (pin mismatch, plain HTTP...)."""
        return _tls_failure(exc, self._host, self._port, self._trust)

    def after(self, request: requests.PreparedRequest, resp: requests.Response, *args: Any,
              **kwargs: Any) -> requests.Response:
        """An answer that may not come from PVE at all (404/405/501, a page that is not JSON) is checked."""
        if resp.status_code in (404, 405, 501) or (resp.ok and not _is_json(resp)):
            self._require_pve(request, resp, *args, **kwargs)
        return resp

    def _require_pve(self, request: requests.PreparedRequest, resp: requests.Response,
                     *args: Any, **kwargs: Any) -> None:
        """A 404/405, an unknown method or a page that is not JSON may come from another server: ask
        GET /api2/json/version (with the same credentials) before saying so. Every PVE answers it with
        its version, or refuses the credentials (401/403)."""
        url = str(request.url or "")
        base = url.split("/api2/json/", 1)[0] if "/api2/json/" in url else \
            f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        version_url = base + "/api2/json/version"
        if url.split("?", 1)[0] == version_url:
            probe = resp
        else:
            req = request.copy()
            req.method, req.body = "GET", None
            req.prepare_url(version_url, None)
            for h in ("Content-Length", "Content-Type"):
                req.headers.pop(h, None)
            try:
                probe = super().send(req, *args, **kwargs)
            except requests.exceptions.RequestException:
                return
        if probe.status_code in (401, 403):
            return  # a PVE (or something guarded) that refuses these credentials: the caller reports that
        try:
            is_pve = probe.status_code == 200 and "version" in (probe.json().get("data") or {})
        except (ValueError, AttributeError):
            is_pve = False
        if not is_pve:
            what = str(probe.status_code) + ("" if _is_json(probe) or probe.status_code != 200 else " (not JSON)")
            raise BackendUnavailable(
                f"{self._host}:{self._port} answered HTTPS but is not a Proxmox VE API "
                f"(GET /api2/json/version: {what})",
                hint=f"check PVEGUARD_PVE_HOST / target.proxmox.host: PVE's API is served by pveproxy on port "
                     f"{PVE_PORT}")


class TicketAuth(ProxmoxHTTPAuthBase):  # type: ignore[misc]
    """Password login through our own (pinned) transport; proxmoxer's login would bypass the pin.

    Keeps proxmoxer's behaviour otherwise: the ticket cookie on every request, the CSRF token on writes,
    a renewal (with the ticket as password) before the two-hour lifetime ends.
    """

    renew_age = 3600

    def __init__(self, login: requests.Session, base_url: str, username: str, password: str, *,
                 verify: bool | str, timeout: float) -> None:
        super().__init__(timeout=timeout, service="PVE", verify_ssl=verify)
        self._login, self._url, self._user = login, base_url + "/access/ticket", username
        self._ticket = self._csrf = ""
        self._born = 0.0
        self._renew(password)

    def _renew(self, password: str) -> None:
        r = self._login.post(self._url, data={"username": self._user, "password": password},
                             verify=self.verify_ssl, timeout=self.timeout)
        if r.status_code != 200:
            raise AuthenticationError(f"login of {self._user} refused (HTTP {r.status_code})")
        try:
            data = r.json()["data"]
            self._ticket, self._csrf = str(data["ticket"]), str(data["CSRFPreventionToken"])
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError(f"login of {self._user}: unexpected answer") from None
        self._born = time.monotonic()

    def get_cookies(self) -> Any:
        return cookiejar_from_dict({"PVEAuthCookie": self._ticket})  # type: ignore[no-untyped-call]

    def get_tokens(self) -> tuple[str, str]:
        return self._ticket, self._csrf

    def current_ticket(self) -> str:
        """The ticket, renewed first when it is due (for requests sent without this auth object)."""
        if time.monotonic() - self._born >= self.renew_age:
            self._renew(self._ticket)
        return self._ticket

    def __call__(self, req: requests.PreparedRequest) -> requests.PreparedRequest:
        self.current_ticket()
        if req.method != "GET":
            req.headers["CSRFPreventionToken"] = self._csrf
        return req


def session_for(host: str, trust: Trust) -> requests.Session:
    """A plain requests session with the PVE transport mounted (for the password login)."""
    s = requests.Session()
    s.mount("https://", PveAdapter(host, trust))
    return s


def assess(host: str, trust: Trust, timeout: float = 5.0) -> tuple[bool, str, str]:
    """(ok, what was found, fix) about the endpoint's TLS, for `pveguard doctor`. Uses the same rules as
    the connection (pin, CA file, system CAs), on its own handshake."""
    name, port = split_host(host)
    where = f"{name}:{port}"
    got = peer_fingerprint(name, port, timeout)
    if got is None:
        if speaks_plain_http(name, port, timeout):
            return (False, f"{where} speaks plain HTTP, not HTTPS: PVE's API is https on port {PVE_PORT}",
                    "point PVEGUARD_PVE_HOST / target.proxmox.host at the node's pveproxy")
        return False, f"no TLS handshake with {where} (nothing listening, or not TLS)", \
            f"check PVEGUARD_PVE_HOST / target.proxmox.host and that pveproxy runs (port {PVE_PORT})"
    if trust.fingerprint and got != trust.fingerprint:
        return (False, f"{where}: certificate does not match the pin: expected {trust.fingerprint}, got {got}",
                "if the node's certificate was renewed on purpose, compare with 'pvenode cert info' and update "
                "PVEGUARD_PVE_FINGERPRINT / target.proxmox.fingerprint; otherwise do not connect")
    if trust.fingerprint and not trust.ca_file:
        return True, f"{where}: certificate matches the pinned SHA-256 {got}", ""
    if trust.ca_file or trust.verify_ssl:
        try:
            ctx = ssl.create_default_context(cafile=trust.ca_file)
            with socket.create_connection((name, port), timeout=timeout) as sock, \
                    ctx.wrap_socket(sock, server_hostname=name):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (False, f"{where}: certificate not trusted ({exc.verify_message}); its SHA-256 fingerprint is "
                           f"{got}", PIN_HINT)
        except (OSError, ssl.SSLError) as exc:
            return False, f"{where}: TLS handshake failed ({exc})", f"check that {where} is the node's pveproxy"
        by = f"the CA in {trust.ca_file}" if trust.ca_file else "the system CAs"
        return True, f"{where}: certificate verified by {by}" + (" and the pin" if trust.fingerprint else ""), ""
    return (False, f"{where}: certificate NOT verified (verify_ssl off); its SHA-256 fingerprint is {got}",
            f"compare it with 'pvenode cert info' on the node, then pin it: PVEGUARD_PVE_FINGERPRINT={got} "
            f"(target.proxmox.fingerprint)")
