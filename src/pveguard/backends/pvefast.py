"""GETs to the PVE API without requests' and proxmoxer's per-call machinery, on the same pinned connections.

A converged plan reads three things per managed guest (config, firewall options, firewall rules): 3,000
GETs for 1,000 containers. Through proxmoxer and a requests Session each costs ~0.7 ms of client CPU
(merging session settings, cookies, hooks, URL parsing, typing checks), more than pvesim takes to answer
it. `FastGet` sends them with a request prepared once (the same headers the session would send, the API
token or ticket included) straight to the urllib3 connection pool that requests itself would use: the
pool comes from our `PveAdapter` (`get_connection_with_tls_context`), so the certificate pin
(`assert_fingerprint`), the CA file or `verify_ssl` are enforced by the very same pool, during every
handshake, before a byte of the request is sent. ~0.2 ms a call.

Only a plain success (2xx with a JSON body) is read here. Anything else -- an error status, a page that
is not JSON, a TLS or transport failure -- goes through exactly what the requests path does with it
(`PveAdapter.after`, proxmoxer's ResourceException, requests' exception types, `_tls_failure`), so
messages, hints and retry decisions do not depend on which path read the answer. Redirects (PVE sends
none) and a proxy between us and PVE (`https_proxy`) are left to the requests path.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import client as httplib
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import requests
from proxmoxer.backends.https import JsonSerializer
from proxmoxer.core import ANYEVENT_HTTP_STATUS_CODES, ResourceException
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, InvalidHeader, ProxyError, ReadTimeout, RetryError, SSLError
from requests.utils import requote_uri, select_proxy
from urllib3 import HTTPConnectionPool, Timeout
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import InvalidHeader as Urllib3InvalidHeader
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError

from pveguard.backends.pvetls import PveAdapter, TicketAuth

Headers = Callable[[], dict[str, str]]


def _loads(body: bytes) -> Any:
    """json.loads(body.decode("utf-8")), in a third of the time for the common answer: orjson parses
    well-formed JSON to the very same values (a 10,000-guest /cluster/resources, 3 MB: 30 -> 14 ms); what it
    refuses (NaN literals, lone surrogates, ...) goes to json, so errors and edge cases stay json's. One
    difference is left: an integer literal past 64 bits comes as the nearest float, not an int; PVE sends
    none (Perl's integers are 64-bit, larger numbers are floats it writes with an exponent)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body.decode("utf-8"))


_JSON = JsonSerializer()
MISS = object()  # get_many: this one is left to `get` (an error, an unusual answer, a broken connection)


class FastGet:
    """GET path?params -> the answer's `data`, as proxmoxer's `api(path).get(**params)` returns it."""

    def __init__(self, session: requests.Session, base_url: str, headers: Headers, timeout: float,
                 verify: bool | str) -> None:
        adapter = session.get_adapter(base_url)
        assert isinstance(adapter, PveAdapter)
        self._adapter = adapter
        self._base_url = base_url
        self._prefix = urlsplit(base_url).path
        self._headers = headers
        self._verify = verify
        self._timeout = Timeout(connect=timeout, read=timeout)  # requests' TimeoutSauce is this class
        probe = self._prepared(base_url + "/version")
        pool = adapter.get_connection_with_tls_context(probe, verify)
        assert isinstance(pool, HTTPConnectionPool)
        self._pool = pool
        adapter.cert_verify(pool, probe.url or base_url, verify, None)  # type: ignore[no-untyped-call]  # as every send does

    def _prepared(self, url: str) -> requests.PreparedRequest:
        return requests.Request("GET", url, headers=self._headers()).prepare()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        rel = requote_uri("/" + path.strip("/"))
        if params:
            rel += "?" + urlencode(params, doseq=True)
        try:
            r = self._pool.urlopen("GET", self._prefix + rel, headers=self._headers(), redirect=False,
                                   assert_same_host=False, preload_content=False, decode_content=False,
                                   retries=self._adapter.max_retries, timeout=self._timeout)
        except (ProtocolError, OSError, MaxRetryError, ClosedPoolError, Urllib3HTTPError) as exc:
            raise self._transport_error(exc, self._base_url + rel) from None
        ctype = r.headers.get("Content-Type", "").lower()
        if 200 <= r.status < 300 and "json" in ctype:
            body = r.read(decode_content=True)
            r.release_conn()
            try:
                return _loads(body)["data"]
            except (UnicodeDecodeError, ValueError):
                return {"errors": body}
        # the rare answers: exactly as PveAdapter.send and proxmoxer's _request treat them
        request = self._prepared(self._base_url + rel)
        resp = self._adapter.build_response(request, r)
        self._adapter.after(request, resp, timeout=self._timeout, verify=self._verify, proxies={})
        if resp.status_code >= 400:
            code = resp.status_code
            raise ResourceException(code, httplib.responses.get(code, ANYEVENT_HTTP_STATUS_CODES.get(code)),
                                    resp.reason, errors=_JSON.loads_errors(resp))
        if 200 <= resp.status_code < 300:
            return _JSON.loads(resp)
        return None  # 1xx/3xx: proxmoxer answers None too

    def get_many(self, paths: list[str], in_flight: int) -> list[Any]:
        """Many plain GETs (no parameters) in one thread: up to `in_flight` keep-alive connections of the same
        pool, driven by one selector loop, one request at a time on each -- no thread per call, no urllib3 and
        http.client per call. The connections are the pool's own (`_get_conn`; new ones connect, pin and
        all, through urllib3's `connect`, the handshakes in parallel) and go back to the pool after.

        Only a complete 2xx JSON answer with a Content-Length is read here; for anything else (an error
        status, chunked or compressed otherwise than gzip, a closed or stalled connection, a timeout) the
        entry is MISS and the caller sends that GET again through `get`, the path whose errors, hints and
        retries are the tested ones. A GET is safe to send twice."""
        out: list[Any] = [MISS] * len(paths)
        if not paths:
            return out
        todo = deque(range(len(paths)))
        conns = self._connections(min(in_flight, len(paths)))
        netloc = urlsplit(self._base_url).netloc
        head = "".join(f"{k}: {v}\r\n" for k, v in self._headers().items())
        timeout = self._timeout.read_timeout if isinstance(self._timeout.read_timeout, int | float) else 60.0
        sel = selectors.DefaultSelector()
        state: dict[Any, list[Any]] = {}  # conn -> [index, received bytes, deadline]
        good: list[Any] = []
        timeouts = {c: c.sock.gettimeout() for c in conns}

        def start(conn: Any) -> bool:
            if not todo:
                return False
            i = todo.popleft()
            rel = requote_uri("/" + paths[i].strip("/"))
            req = f"GET {self._prefix}{rel} HTTP/1.1\r\nHost: {netloc}\r\n{head}\r\n".encode()
            try:
                _send_all(conn.sock, req, timeout)
            except (OSError, ValueError):
                return False
            state[conn] = [i, bytearray(), time.monotonic() + timeout]
            return True

        def drop(conn: Any) -> None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                sel.unregister(conn.sock)
            state.pop(conn, None)
            conn.close()

        try:
            for conn in conns:
                conn.sock.setblocking(False)
                if start(conn):
                    sel.register(conn.sock, selectors.EVENT_READ, conn)
                else:
                    conn.close()
            while state:
                now = time.monotonic()
                wait = max(0.0, min(st[2] for st in state.values()) - now)
                for key, _ev in sel.select(wait):
                    conn = key.data
                    st = state[conn]
                    closed = _receive(conn.sock, st[1])
                    got = _answer(st[1]) if not closed or st[1] else None
                    if got is None and not closed:
                        continue  # more to come
                    if got is not None and got is not _INCOMPLETE:
                        value, keep = got
                        out[st[0]] = value
                        if keep and start(conn):
                            continue
                        if keep and not todo:
                            sel.unregister(conn.sock)
                            state.pop(conn)
                            good.append(conn)
                            continue
                    drop(conn)
                now = time.monotonic()
                for conn in [c for c, st in state.items() if st[2] < now]:
                    drop(conn)  # stalled: its GET is left to `get`, with urllib3's timeouts and errors
        finally:
            for conn in list(state):
                drop(conn)
            for conn in good:
                conn.sock.settimeout(timeouts[conn])
            for conn in conns:
                self._pool._put_conn(conn if conn in good else None)
        return out

    def _connections(self, n: int) -> list[Any]:
        """n of the pool's connections, connected (urllib3's handshake: pin, CA file or verify_ssl as set)."""
        got: list[Any] = []
        pool: Any = self._pool
        try:
            for _ in range(n):
                got.append(pool._get_conn(timeout=0.001))
        except Exception:  # the pool is busy or closed: fewer connections (or none) here
            pass

        def ready(conn: Any) -> Any:
            try:
                if conn.sock is None or conn.is_connected is False:
                    conn.close()
                    conn.timeout = self._timeout.connect_timeout
                    conn.connect()
                return conn if isinstance(conn.sock, ssl.SSLSocket) else None
            except Exception:  # `get` meets the same failure and reports it as requests would
                conn.close()
                return None

        fresh = [c for c in got if c.sock is None or c.is_connected is False]
        if len(fresh) > 1:
            with ThreadPoolExecutor(max_workers=len(fresh)) as ex:
                done = dict(zip(fresh, ex.map(ready, fresh), strict=True))
        else:
            done = {c: ready(c) for c in fresh}
        usable = [c for c in got if (done[c] if c in done else ready(c)) is not None]
        for c in got:
            if c not in usable:
                pool._put_conn(None)
        return usable

    def _transport_error(self, exc: BaseException, url: str) -> Exception:
        """The exception requests' HTTPAdapter.send raises for this urllib3 failure (TLS ones explained)."""
        request = self._prepared(url)
        out: Exception
        if isinstance(exc, MaxRetryError):
            reason = exc.reason
            if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
                out = ConnectTimeout(exc, request=request)
            elif isinstance(reason, ResponseError):
                out = RetryError(exc, request=request)
            elif isinstance(reason, Urllib3ProxyError):
                out = ProxyError(exc, request=request)
            elif isinstance(reason, Urllib3SSLError):
                out = SSLError(exc, request=request)
            else:
                out = RequestsConnectionError(exc, request=request)
        elif isinstance(exc, ProtocolError | OSError | ClosedPoolError):
            out = RequestsConnectionError(exc, request=request)
        elif isinstance(exc, Urllib3ProxyError):
            out = ProxyError(exc)
        elif isinstance(exc, Urllib3SSLError):
            out = SSLError(exc, request=request)
        elif isinstance(exc, ReadTimeoutError):
            out = ReadTimeout(exc, request=request)
        elif isinstance(exc, Urllib3InvalidHeader):
            out = InvalidHeader(exc, request=request)
        else:
            return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
        if isinstance(out, SSLError):
            return self._adapter.tls_failure(out)
        return out


def fast_get(api: Any, token_header: str | None, timeout: float, verify: bool | str) -> FastGet | None:
    """A FastGet on proxmoxer's session for this API, or None where the requests path must stay: a proxy
    applies to the host, or the environment's CA bundle is still read per call (`fixed_environment`)."""
    session = api._store["session"]  # proxmoxer has no public hook for its transport
    base_url = str(api._store["base_url"])
    if session.trust_env or select_proxy(base_url, session.proxies):
        return None
    if not isinstance(session.get_adapter(base_url), PveAdapter):
        return None
    fixed = {k: str(v) for k, v in session.headers.items()}
    auth = session.auth
    if token_header is not None:
        static = {**fixed, "Authorization": token_header}

        def headers() -> dict[str, str]:
            return static
    elif isinstance(auth, TicketAuth):
        def headers() -> dict[str, str]:
            return {**fixed, "Cookie": f"PVEAuthCookie={auth.current_ticket()}"}
    else:
        return None
    return FastGet(session, base_url, headers, timeout, verify)


_INCOMPLETE = object()


def _send_all(sock: ssl.SSLSocket, data: bytes, timeout: float) -> None:
    """A request (a few hundred bytes) on a non-blocking TLS socket: usually one send."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            n = sock.send(view)
            view = view[n:]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            if time.monotonic() > deadline:
                raise OSError("send timed out") from None
            selectors.DefaultSelector().select(0.01)


def _receive(sock: ssl.SSLSocket, buf: bytearray) -> bool:
    """Read what is there (TLS may hold more than the socket showed); True when the connection closed."""
    while True:
        try:
            chunk = sock.recv(262144)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            return True
        if not chunk:
            return True
        buf += chunk


def _answer(buf: bytearray) -> Any:
    """(data, keep-alive) for a complete plain 2xx JSON answer; _INCOMPLETE; or None while it is still coming.
    _INCOMPLETE means: not one this loop reads (the caller leaves it to `get`)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return _INCOMPLETE
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if not sep:
            return _INCOMPLETE
        headers[k.strip().lower()] = v.strip()
    status = int(parts[1])
    length = headers.get("content-length", "")
    if not 200 <= status < 300 or "json" not in headers.get("content-type", "").lower() or not length.isdigit() \
            or "transfer-encoding" in headers:
        return _INCOMPLETE
    if len(buf) < end + 4 + int(length):
        return None
    if len(buf) > end + 4 + int(length):
        return _INCOMPLETE  # more than one answer: not something this loop asked for
    body = bytes(buf[end + 4:])
    enc = headers.get("content-encoding", "identity").lower()
    try:
        if enc == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif enc != "identity":
            return _INCOMPLETE
        doc = _loads(body)
    except (ValueError, zlib.error):
        return _INCOMPLETE
    if not isinstance(doc, dict) or "data" not in doc:
        return _INCOMPLETE
    keep = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
    return doc["data"], keep
