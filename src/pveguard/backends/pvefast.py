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

import json
from collections.abc import Callable
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
