"""HTTP(S) front end: PVE's request pipeline (auth, routing, permissions, proxy, validation) and envelope.

Pipeline order follows pve-http-server / PVE::HTTPServer: authenticate -> find the method
(501) -> API-token restriction and schema permission check (403) -> proxy to `node` (595 when
offline) -> parameter validation (400) -> handler (500 on `die`).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pvesim import control
from pvesim.access import Auth, AuthError, PermError, evaluate_check
from pvesim.handlers import HANDLERS, Ctx, RawData, Reply, load_all
from pvesim.schema import Schema, active, load_schema
from pvesim.state import ApiError, Sim
from pvesim.validate import MethodValidator, ParamError

log = logging.getLogger("pvesim")

_UNAUTH = {
    ("GET", "/access/domains"),
    ("GET", "/access/ticket"),
    ("POST", "/access/ticket"),
    ("POST", "/access/vncticket"),
    ("GET", "/version/__never__"),
}
_TOKEN_RX = re.compile(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)")
_COOKIE_RX = re.compile(r"(?:^|[;\s])PVEAuthCookie=([^;]*)")


@dataclass
class Answer:
    """A complete HTTP answer."""

    status: int
    reason: str
    body: bytes
    content_type: str = "application/json;charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()


def _reason(msg: str) -> str:
    first = msg.strip().split("\n", 1)[0]
    return re.sub(r"[\r\n]", " ", first) or "Error"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_form(body: bytes) -> dict[str, Any]:
    """application/x-www-form-urlencoded, repeated keys become lists."""
    out: dict[str, Any] = {}
    for k, vs in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
        out[k] = vs[0] if len(vs) == 1 else vs
    return out


class Api:
    """Request dispatcher bound to one Sim and the schema."""

    def __init__(self, sim: Sim, schema: Schema | None = None) -> None:
        load_all()
        self.sim = sim
        self.schema = schema or load_schema(version=sim.opts.pve_version)
        self._validators: dict[tuple[str, str], MethodValidator] = {}
        self._vlock = threading.Lock()

    def validator(self, method: str, path: str) -> MethodValidator:
        v = self._validators.get((method, path))
        if v is None:
            with self._vlock:
                v = MethodValidator(self.schema.methods[(method, path)].parameters)
                self._validators[(method, path)] = v
        return v

    # -- the pipeline -----------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        with active(self.schema):  # handlers' schema look-ups follow the emulated release
            return self._handle(method, target, headers, body)

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/_sim"):
            status, data = control.handle(self, method, path, parts.query, body)
            return Answer(status, "OK" if status == 200 else _reason(str(data.get("error", "Error"))), _json(data))
        m = re.match(r"/api2/(json|extjs)(/.*)?$", path)
        if not m:
            return Answer(501, f"Method '{method} {path}' not implemented", _json({"data": None}))
        fmt = m.group(1)
        api_path = m.group(2) or "/"
        if self.sim.opts.latency:
            # the round trip of a real node over a LAN/WAN: outside the sim lock, so concurrent callers overlap
            time.sleep(self.sim.opts.latency / 1000)
        ans = self._api(method, api_path, parts.query, headers, body)
        if fmt == "extjs" and ans.status != 200 and ans.status < 590:
            doc: dict[str, Any] = {"success": 0, "status": ans.status, "message": ans.reason, "data": None}
            try:
                errs = json.loads(ans.body or b"{}").get("errors")
                if errs:
                    doc["errors"] = errs
            except ValueError:
                pass
            return Answer(200, "OK", _json(doc))
        if fmt == "extjs" and ans.status == 200:
            return Answer(200, "OK", ans.body[:-1] + b',"success":1}' if ans.body.endswith(b"}") else ans.body)
        return ans

    def _count(self, key: str) -> None:
        with self.sim.lock:
            self.sim.calls[key] = self.sim.calls.get(key, 0) + 1
            self.sim.calls_total += 1

    def _take_fault(self, method: str, api_path: str) -> dict[str, Any] | None:
        """The first injected fault matching this call (its `times` counted down), or None."""
        hit = None
        with self.sim.lock:
            for f in self.sim.faults:
                if f.get("method") and f["method"].upper() != method:
                    continue
                if not re.search(f.get("path", ".*"), api_path):
                    continue
                hit = dict(f)
                if f.get("times") is not None:
                    f["times"] -= 1
                break
            self.sim.faults = [f for f in self.sim.faults if f.get("times") is None or f["times"] > 0]
        return hit

    @staticmethod
    def _fault_answer(hit: dict[str, Any]) -> Answer | None:
        """The injected answer: a delay, an error status, or a malformed 200 (`data` / raw `body`)."""
        if hit.get("delay_ms"):
            time.sleep(float(hit["delay_ms"]) / 1000)
        if "body" in hit:
            return Answer(int(hit.get("status") or 200), "OK", str(hit["body"]).encode())
        if "data" in hit:
            return Answer(int(hit.get("status") or 200), "OK", _json({"data": hit["data"]}))
        status = int(hit.get("status") or 0)
        if not status:
            return None
        msg = str(hit.get("message") or "simulated failure")
        if status >= 590 or status == 401:
            return Answer(status, _reason(msg), b"")
        doc: dict[str, Any] = {"data": None, "message": msg if msg.endswith("\n") else msg + "\n"}
        if hit.get("errors"):
            doc["errors"] = hit["errors"]
        return Answer(status, _reason(msg), _json(doc))

    def _authenticate(self, method: str, headers: dict[str, str]) -> Auth:
        authz = headers.get("authorization", "")
        tm = _TOKEN_RX.search(authz)
        if tm:
            return self.sim.access.verify_token(unquote(tm.group(1)))
        cm = _COOKIE_RX.search(headers.get("cookie", "")) or _COOKIE_RX.search(authz)
        if not cm:
            raise AuthError("No ticket")
        userid = self.sim.access.verify_ticket(unquote(cm.group(1)))
        if method != "GET" and not self.sim.access.verify_csrf(userid, headers.get("csrfpreventiontoken")):
            raise AuthError("Permission denied - invalid csrf token")
        return Auth(userid, ticket=True)

    def _api(self, method: str, api_path: str, query: str, headers: dict[str, str], body: bytes) -> Answer:
        segments = [unquote(s) for s in api_path.strip("/").split("/")] if api_path.strip("/") else []
        routed = self.schema.route(segments) if segments else None
        template = routed[0] if routed else None
        self._count(f"{method} {template or api_path}")
        hit = self._take_fault(method, api_path)
        if hit is not None and not hit.get("after"):
            fault = self._fault_answer(hit)
            if fault is not None:
                return fault
        ans = self._pipeline(method, api_path, query, headers, body, routed, template)
        if hit is not None and hit.get("after"):  # PVE did the work; the answer is lost or mangled on the way
            return self._fault_answer(hit) or ans
        return ans

    def _pipeline(
        self,
        method: str,
        api_path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        routed: tuple[str, dict[str, str]] | None,
        template: str | None,
    ) -> Answer:
        sim = self.sim
        minfo = self.schema.methods.get((method, template)) if template else None
        auth: Auth | None = None
        if (method, template) not in _UNAUTH:
            try:
                with sim.lock:
                    auth = self._authenticate(method, headers)
            except AuthError as e:
                if sim.opts.auth_fail_delay:
                    time.sleep(sim.opts.auth_fail_delay)
                return Answer(401, str(e), b"")
        if minfo is None or template is None or routed is None:
            msg = f"Method '{method} {api_path}' not implemented"
            return Answer(501, msg, _json({"data": None, "message": msg + "\n"}))
        # parameters: query, body (form or JSON), path
        params: dict[str, Any] = parse_form(query.encode()) if query else {}
        if body:
            ctype = headers.get("content-type", "")
            if "json" in ctype:
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict):
                    return Answer(
                        400,
                        "Parameter verification failed.",
                        _json(
                            {
                                "data": None,
                                "errors": {"_": "unable to parse JSON body"},
                                "message": "Parameter verification failed.\n",
                            }
                        ),
                    )
                params.update(doc)
            else:
                params.update(parse_form(body))
        for k, v in routed[1].items():
            if k in params and str(params[k]) != v:
                return self._error(
                    ApiError(
                        400,
                        "Parameter verification failed.",
                        {k: "duplicate parameter (already defined in URI) with conflicting values!"},
                    )
                )
            params[k] = v
        try:
            with sim.lock:
                sim.tick()
                if auth is not None:
                    if auth.tokenid and not minfo.allowtoken:
                        raise PermError(f"URI '{api_path}' not available with API token, need proper ticket.\n")
                    self._check_perms(auth, minfo.permissions, params)
                    self._proxy_check(minfo.proxyto, params)
            # pve-manager PVE/HTTPServer.pm rest_handler: the schema's permission check and the proxy
            # decision, then pve-common RESTHandler.pm handle: validation, then the method's code (where
            # quorum is checked: check_cfs_quorum, or the write to /etc/pve)
            typed = self.validator(method, template).validate(params)
            handler = HANDLERS.get((method, template))
            if handler is None and method == "GET" and self.schema.children.get(template):
                return self._ok(self._index(minfo.returns, self.schema.children[template]))
            if handler is None:
                msg = f"Method '{method} {api_path}' not implemented"
                return Answer(501, msg, _json({"data": None, "message": msg + "\n"}))
            with sim.lock:
                sim.tick()
                if auth is not None and method != "GET" and template != "/access/ticket" and not sim.quorate():
                    raise ApiError(500, "cluster not ready - no quorum?")
                result = handler(Ctx(sim, auth or Auth("anonymous@pve"), typed, method, template))
                return self._ok(result)
        except ParamError as e:
            return self._error(ApiError(400, "Parameter verification failed.", e.errors))
        except PermError as e:
            return self._error(ApiError(403, str(e)))
        except AuthError as e:
            return Answer(401, str(e), _json({"data": None}))
        except ApiError as e:
            return self._error(e)
        except Exception as e:  # a handler bug must still answer like PVE (500), and be logged
            log.exception("handler failed: %s %s", method, api_path)
            return self._error(ApiError(500, f"pvesim internal error: {e}"))

    @staticmethod
    def _index(returns: dict[str, Any], children: list[str]) -> list[dict[str, str]]:
        """Directory-style index answers (`[{"subdir": "config"}, ...]`) generated from the schema tree."""
        key = "subdir"
        for link in returns.get("links") or []:
            m = re.fullmatch(r"\{(\w+)\}", str(link.get("href", "")))
            if m:
                key = m.group(1)
        return [{key: c} for c in children if not c.startswith("{")]

    def _check_perms(self, auth: Auth, perms: dict[str, Any] | None, params: dict[str, Any]) -> None:
        """pve-access-control RPCEnvironment.pm check_api2_permissions: the user root@pam passes every
        schema check (not its tokens: their auth id is `root@pam!<id>`); a method without `permissions`
        is root@pam's alone."""
        if auth.authid == "root@pam":
            return
        if perms is None:
            raise PermError("user != root@pam")
        if perms.get("user") in ("all", "world"):
            return
        check = perms.get("check")
        if check:
            evaluate_check(self.sim.access, auth, check, params)

    def _proxy_check(self, proxyto: str | None, params: dict[str, Any]) -> None:
        if proxyto != "node":
            return
        node = str(params.get("node", ""))
        n = self.sim.nodes.get(node)
        if n is None:
            if node == "localhost":
                return
            raise ApiError(
                500,
                f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known",
            )
        if not n.online:
            raise ApiError(595, "No route to host", empty_body=True)

    def _ok(self, result: Any) -> Answer:
        if isinstance(result, RawData):
            return Answer(200, "OK", b'{"data":' + result.json + b"}")
        if isinstance(result, Reply):
            doc = {"data": result.data, **result.extra}
            return Answer(200, "OK", _json(doc))
        return Answer(200, "OK", _json({"data": result}))

    def _error(self, e: ApiError) -> Answer:
        if e.empty_body:
            return Answer(e.status, _reason(e.message), b"")
        doc: dict[str, Any] = {"data": None}
        if e.errors:
            doc["errors"] = e.errors
        doc["message"] = e.message if e.message.endswith("\n") else e.message + "\n"
        return Answer(e.status, _reason(e.message), _json(doc))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    sys_version = ""
    api: Api

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        ans = self.api.handle(self.command, self.path, headers, body)
        self.log_request(ans.status)
        head = [
            f"HTTP/1.1 {ans.status} {ans.reason}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {ans.content_type}",
            f"Content-Length: {len(ans.body)}",
            "Cache-Control: max-age=0",
            "Pragma: no-cache",
            "Expires: " + self.date_time_string(),
        ]
        head += [f"{k}: {v}" for k, v in ans.headers]
        if self.close_connection:
            head.append("Connection: close")
        # Headers and body in one write: two small writes meet Nagle + delayed ACK (40 ms stalls).
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + ans.body)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed TLS handshakes (clients that do not trust the cert) and dropped connections are
        # normal for a server: log them, never print tracebacks onto the test's stderr.
        log.debug("connection from %s failed", client_address, exc_info=True)


class SimServer:
    """The emulator listening on host:port (HTTPS with a generated self-signed cert unless tls=False)."""

    def __init__(
        self, sim: Sim, host: str = "127.0.0.1", port: int = 0, tls: bool = True, certdir: Path | None = None
    ) -> None:
        self.sim = sim
        self.api = Api(sim)
        handler = type("Handler", (_Handler,), {"api": self.api})
        self.httpd = _Server((host, port), handler)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.tls = tls
        self.cafile: str | None = None
        self.fingerprint: str | None = None
        self._ctx: ssl.SSLContext | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if tls:
            if certdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="pvesim-tls-")
                certdir = Path(self._tmp.name)
            cert, key, cafile = self._node_certificate(certdir, [host] if host not in ("0.0.0.0", "::") else [])
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            # Handshake in the connection's thread, not in the accept loop (a silent client must not
            # stall everyone else).
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.cafile = str(cafile)
            self._ctx = ctx
        self._thread: threading.Thread | None = None
        self._statd: threading.Thread | None = None
        self._stopping = threading.Event()

    def _node_certificate(self, certdir: Path, hostnames: list[str]) -> tuple[Path, Path, Path]:
        """The first node's pve-ssl.pem, signed by the cluster's pve-root-ca.pem, as on PVE: clients trust
        the root CA file (`cafile`), and certificates/info reports the fingerprint they see. A new
        certificate for that node (ACME, a changed expiry) is written over it and loaded for new
        connections, as pveproxy's reload does. Returns (cert, key, root CA) paths."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        from pvesim import tls
        from pvesim.certstore import DAY, CertFile

        store = self.sim.certs
        root = store.root()
        sans = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hostnames]))
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "pvesim"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pvesim (PVE API emulator)"),
            ]
        )
        now = self.sim.now()
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = tls.issue(name, sans, now - 300, now + 365 * DAY, key, issuer=(root.cert, root.key))
        certdir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path, ca_path = (
            certdir / "pvesim-cert.pem",
            certdir / "pvesim-key.pem",
            certdir / "pve-root-ca.pem",
        )
        ca_path.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))

        def install(cf: CertFile) -> None:
            cert_path.write_bytes(cf.cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(
                cf.key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            key_path.chmod(0o600)
            if self._ctx is not None:
                self._ctx.load_cert_chain(str(cert_path), str(key_path))
            self.fingerprint = tls.fingerprint(cf.cert)

        install(CertFile(leaf, key))
        if self.sim.nodes:
            store.adopt_served(next(iter(self.sim.nodes)), leaf, key, sans)
            store.on_served_change = install
        return cert_path, key_path, ca_path

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def info(self) -> dict[str, Any]:
        """What `python -m pvesim` prints: url, token, username, password, fingerprint, cafile."""
        return {
            "url": self.url,
            "token": self.sim.token,
            "username": "root@pam",
            "password": self.sim.password,
            "fingerprint": self.fingerprint,
            "cafile": self.cafile,
            "pve_version": self.sim.release.version,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="pvesim", daemon=True)
        self._thread.start()
        self.start_statd()

    def start_statd(self) -> None:
        """Refresh guest stats at each stat-interval boundary in the background (like pvestatd)."""
        self._statd = threading.Thread(target=self._statd_loop, name="pvesim-statd", daemon=True)
        self._statd.start()

    def _statd_loop(self) -> None:
        from pvesim.usage import STAT_INTERVAL

        last = -1
        while not self._stopping.is_set():
            sim = self.sim
            now = sim.now()
            bucket = int(now) // STAT_INTERVAL
            if bucket != last and sim.guests:
                with sim.lock:
                    sim.tick()
                    last = sim.refresh_stats()
                    self._prebuild_resources()
            scale = max(sim.clock.time_scale, 1e-6)
            wait = ((bucket + 1) * STAT_INTERVAL - sim.now()) / scale
            # at high --time-scale refresh at most twice a second; polls in between recompute lazily
            self._stopping.wait(min(max(wait, 0.5), 1.0))

    def _prebuild_resources(self) -> None:
        """Encode the full /cluster/resources answers (all and type=vm) so the next poll is a cache hit."""
        from pvesim.access import Auth
        from pvesim.handlers.cluster import resources

        for typ in (None, "vm"):
            resources(Ctx(self.sim, Auth("root@pam"), {"type": typ} if typ else {}, "GET", "/cluster/resources"))

    def serve_forever(self) -> None:
        self.start_statd()
        self.httpd.serve_forever()

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
