"""What a service answers: an HTTP status and body hash, or a TCP banner; and how long that takes."""

from __future__ import annotations

import hashlib
import socket
import statistics
import time
from typing import Any

MAX_BODY = 4 << 20


def _read_all(sock: socket.socket, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def probe(address: str, port: int, kind: str | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """One answer of the service at address:port. `kind` None: a TCP banner if the server speaks
    first (within 0.5 s), else HTTP if it answers a GET like one, else just "accepts connections"."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            banner = b""
            if kind in (None, "tcp"):
                sock.settimeout(0.5 if kind is None else timeout)
                try:
                    banner = sock.recv(256)
                except TimeoutError:
                    banner = b""
                if banner or kind == "tcp":
                    return {"kind": "tcp", "ok": True, "banner_sha256": hashlib.sha256(banner).hexdigest(),
                            "ms": round((time.monotonic() - started) * 1000, 2)}
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\nUser-Agent: pveguard-migrate\r\n"
                         "Connection: close\r\n\r\n".encode())
            reply = _read_all(sock)
    except OSError as exc:
        return {"kind": kind or "tcp", "ok": False, "error": str(exc),
                "ms": round((time.monotonic() - started) * 1000, 2)}
    ms = round((time.monotonic() - started) * 1000, 2)
    if reply.startswith(b"HTTP/"):
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if len(head.split(b" ", 2)) > 1 else 0
        return {"kind": "http", "ok": True, "status": status, "body_sha256": hashlib.sha256(body).hexdigest(),
                "ms": ms}
    return {"kind": "tcp", "ok": True, "banner_sha256": hashlib.sha256(b"").hexdigest(), "ms": ms}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two answers are the same answer (timing aside)."""
    keys = ("kind", "ok", "status", "body_sha256", "banner_sha256")
    return all(a.get(k) == b.get(k) for k in keys)


def latency(address: str, port: int, kind: str, count: int = 20) -> dict[str, Any]:
    """Median and worst of `count` probes in milliseconds, and how many failed."""
    times: list[float] = []
    failed = 0
    for _ in range(count):
        r = probe(address, port, kind)
        if r["ok"]:
            times.append(r["ms"])
        else:
            failed += 1
    return {"median_ms": round(statistics.median(times), 2) if times else None,
            "max_ms": max(times) if times else None, "failed": failed, "count": count}
