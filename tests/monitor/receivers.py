"""Real notification receivers on loopback for the tests: an HTTP server, an SMTP server (aiosmtpd)
and a real Alertmanager process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from infra.processes import stop

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebhookReceiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer 503 to this many requests first (to exercise retries)
    attempts: int = 0

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                rec.attempts += 1
                if rec.fail_next > 0:
                    rec.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                rec.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    host: str
    port: int
    messages: list[Message] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    from aiosmtpd.controller import Controller

    rec = SmtpReceiver("127.0.0.1", free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            msg = message_from_bytes(envelope.content)
            msg["X-Rcpt"] = ",".join(envelope.rcpt_tos)
            rec.messages.append(msg)
            return "250 OK"

    controller = Controller(Handler(), hostname=rec.host, port=rec.port)
    controller.start()
    try:
        yield rec
    finally:
        controller.stop()


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def alerts(self, active: bool = True) -> list[dict[str, Any]]:
        params = {"active": str(active).lower(), "silenced": "true", "inhibited": "true",
                  "unprocessed": "true"}
        r = requests.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        r.raise_for_status()
        return list(r.json())

    def received(self) -> dict[str, float]:
        """alertmanager_alerts_received_total by status: how many alerts were POSTed to it."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("alertmanager_alerts_received_total{"):
                labels, value = line.rsplit(" ", 1)
                status = labels.split('status="', 1)[1].split('"', 1)[0]
                out[status] = out.get(status, 0.0) + float(value)
        return out


@contextmanager
def alertmanager(tmp: Path) -> Iterator[Alertmanager]:
    """A real Alertmanager on a free loopback port with its own config and storage; clustering off."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "alertmanager.yml"
    cfg.write_text("route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    log = (tmp / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={cfg}", f"--storage.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    am = Alertmanager(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {(tmp / 'alertmanager.log').read_text()}")
            try:
                if requests.get(f"{am.url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("alertmanager did not become ready in 30 s")
            time.sleep(0.1)
        yield am
    finally:
        stop(proc)
        log.close()
