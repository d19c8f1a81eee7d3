"""Shared by the fake `pvesh` and `pct`: find the running pvesim and call it (stdlib only).

The sim is found through PVESIM_INFO (path of a file holding the JSON line `python -m pvesim`
prints; `pvesim.testing.running()` writes one, see SimHandle.info_file) or through PVESIM_URL,
PVESIM_TOKEN and optionally PVESIM_CAFILE.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def config() -> dict[str, str]:
    info = os.environ.get("PVESIM_INFO")
    if info:
        try:
            with open(info, encoding="utf-8") as fh:
                doc = json.loads(fh.read().strip().splitlines()[0])
        except (OSError, ValueError, IndexError) as e:
            sys.stderr.write(f"pvesim: cannot read PVESIM_INFO file {info}: {e}\n")
            sys.exit(255)
        return {"url": doc["url"], "token": doc["token"], "cafile": doc.get("cafile") or ""}
    url = os.environ.get("PVESIM_URL")
    if not url:
        sys.stderr.write(
            "pvesim: set PVESIM_INFO (file with the sim's JSON line) or PVESIM_URL and "
            "PVESIM_TOKEN to reach a running pvesim\n"
        )
        sys.exit(255)
    return {
        "url": url,
        "token": os.environ.get("PVESIM_TOKEN", ""),
        "cafile": os.environ.get("PVESIM_CAFILE", ""),
    }


def _context(cfg: dict[str, str]) -> ssl.SSLContext | None:
    if not cfg["url"].startswith("https"):
        return None
    if cfg["cafile"]:
        return ssl.create_default_context(cafile=cfg["cafile"])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(
    cfg: dict[str, str],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    req = urllib.request.Request(cfg["url"] + path, data=body, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, context=_context(cfg), timeout=60) as r:
            return r.status, r.reason, r.read()
    except urllib.error.HTTPError as e:
        return e.code, str(e.reason), e.read()
    except urllib.error.URLError as e:
        sys.stderr.write(f"pvesim: cannot reach {cfg['url']}: {e.reason}\n")
        sys.exit(255)


def control(cfg: dict[str, str], method: str, path: str, doc: dict[str, Any]) -> Any:
    status, reason, body = request(
        cfg, method, "/_sim" + path, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    parsed = json.loads(body or b"{}")
    if status != 200:
        sys.stderr.write(f"pvesim: control call failed: {status} {parsed.get('error', reason)}\n")
        sys.exit(255)
    return parsed["data"]


def api(cfg: dict[str, str], method: str, path: str, params: list[tuple[str, str]]) -> tuple[int, str, Any]:
    q = urllib.parse.urlencode(params)
    full = "/api2/json" + urllib.parse.quote(path)
    headers = {"Authorization": f"PVEAPIToken={cfg['token']}"}
    body = None
    if method in ("GET", "DELETE"):
        full += ("?" + q) if q else ""
    else:
        body = q.encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    status, reason, raw = request(cfg, method, full, body, headers)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    return status, reason, doc
