"""Notifications reach real peers: an SMTP server (aiosmtpd) and a webhook receiver, both on loopback."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle

aiosmtpd = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is in the dev extra")


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, _Mailbox]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = _Mailbox()
    ctl = aiosmtpd.Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, box
    finally:
        ctl.stop()


@pytest.fixture
def webhook() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], got
    finally:
        srv.shutdown()
        srv.server_close()


def _wait_delivered(sim: SimHandle, n: int) -> list[dict[str, Any]]:
    for _ in range(100):
        sent = sim.control("GET", "/notifications")
        if len(sent) >= n and all(s["delivery"] != "pending" for s in sent):
            return sent  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"notifications not delivered: {sim.control('GET', '/notifications')}")


def test_smtp_target_and_vzdump_mail(pvesim_factory, smtp_server) -> None:  # type: ignore[no-untyped-def]
    port, box = smtp_server
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0, task_seconds={"vzdump": 0})
    px = sim.proxmoxer()
    px.cluster.notifications.endpoints.smtp.post(
        name="mail",
        server="127.0.0.1",
        port=port,
        mode="insecure",
        **{"from-address": "pve@example.invalid", "mailto": "ops@example.invalid"},
    )
    px.cluster.notifications.matchers.post(name="backups", target="mail", **{"match-field": "exact:type=vzdump"})
    px.cluster.notifications.targets("mail").test.post()
    up = px.nodes("pve1").vzdump.post(vmid=100, storage="local")
    assert Tasks.blocking_status(px, up, polling_interval=0.05)["exitstatus"] == "OK"
    sent = _wait_delivered(sim, 3)  # test mail, default-matcher -> mail-to-root (recorded), backups -> mail
    assert {(s["target"], s["delivery"]) for s in sent} >= {("mail", "delivered")}
    subjects = [m[2].decode() for m in box.messages]
    assert any("Subject: Test notification" in m for m in subjects)
    assert any("Subject: vzdump backup status (pve1): backup successful" in m for m in subjects)
    assert all(m[1] == ["ops@example.invalid"] for m in box.messages)


def test_webhook_template_headers_and_secrets(pvesim: SimHandle, webhook) -> None:  # type: ignore[no-untyped-def]
    port, got = webhook

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    px = pvesim.proxmoxer()
    px.cluster.notifications.endpoints.webhook.post(
        name="hook",
        method="post",
        url=f"http://127.0.0.1:{port}/notify?sev={{{{ severity }}}}",
        body=b64('{"title": {{ json title }}, "token": "{{ secrets.tok }}"}'),
        header=f"name=Content-Type,value={b64('application/json')}",
        secret=f"name=tok,value={b64('s3cret')}",
    )
    px.cluster.notifications.targets("hook").test.post()
    _wait_delivered(pvesim, 1)
    assert got[0]["path"] == "/notify?sev=info"
    assert got[0]["headers"]["Content-Type"] == "application/json"
    assert json.loads(got[0]["body"]) == {"title": "Test notification", "token": "s3cret"}
