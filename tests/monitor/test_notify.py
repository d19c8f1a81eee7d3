"""Notifiers against real receivers on loopback: HTTP (webhook, HMAC, retries), SMTP (aiosmtpd),
Alertmanager (the real binary); and the outbox's exactly-once delivery across a restart."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

import pytest

from pveguard.monitor.alerts import Event
from pveguard.monitor.notify import (
    SIGNATURE_HEADER,
    AlertmanagerNotifier,
    Dispatcher,
    EmailNotifier,
    WebhookNotifier,
    enqueue,
)
from pveguard.monitor.series import open_monitor_store
from pveguard.store import Store

from .receivers import ALERTMANAGER, alertmanager, smtp_receiver, webhook_receiver

T0 = time.time()


def _event(kind: str = "firing", started: float = T0, ts: float = T0) -> dict[str, object]:
    return Event(kind, "cpu", "lxc/101", "web", "warning", 95.0, 80.0, ts, started, "cpu >= 80%").to_dict()  # type: ignore[arg-type]


def test_webhook_json_and_hmac_signature() -> None:
    with webhook_receiver() as rec:
        WebhookNotifier(rec.url, secret=b"s3cret").send(_event())
        (req,) = rec.requests
        body = req["body"]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert req["headers"][SIGNATURE_HEADER] == expected
        data = rec.bodies()[0]
        assert data["kind"] == "firing" and data["target"] == "lxc/101" and data["value"] == 95.0
        assert data["summary"].startswith("[FIRING] warning: web")


def test_webhook_retries_with_backoff_then_succeeds() -> None:
    with webhook_receiver() as rec:
        rec.fail_next = 2
        WebhookNotifier(rec.url, attempts=4, max_wait=0.1).send(_event())
        assert rec.attempts == 3 and len(rec.requests) == 1


def test_webhook_gives_up_with_a_clear_error() -> None:
    from pveguard.monitor.notify import DeliveryError

    with webhook_receiver() as rec:
        rec.fail_next = 10
        with pytest.raises(DeliveryError, match="503"):
            WebhookNotifier(rec.url, attempts=2, max_wait=0.05).send(_event())
        assert rec.attempts == 2


def test_smtp_mail() -> None:
    with smtp_receiver() as rec:
        EmailNotifier(rec.host, rec.port, "pveguard@example.test", ["ops@example.test"]).send(_event())
        (msg,) = rec.messages
        assert msg["Subject"].startswith("[FIRING] warning: web cpu >= 80%")
        assert msg["X-Rcpt"] == "ops@example.test"
        assert "lxc/101" in msg.get_payload()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(ALERTMANAGER), reason="prometheus-alertmanager not installed")
def test_alertmanager_receives_firing_then_resolved(tmp_path: Path) -> None:
    with alertmanager(tmp_path / "am") as am:
        n = AlertmanagerNotifier(am.url)
        now = time.time()
        n.send(_event(started=now - 60, ts=now))
        (alert,) = am.alerts()
        assert alert["labels"]["alertname"] == "PveguardCpu" and alert["labels"]["id"] == "lxc/101"
        assert alert["status"]["state"] == "active"
        n.send(_event("resolved", started=now - 60, ts=now + 1))
        assert am.alerts() == []  # resolved alerts are no longer listed as active
        assert am.received() == {"firing": 1.0, "resolved": 1.0}


def test_outbox_delivers_each_pair_once_and_retries_failures(tmp_path: Path) -> None:
    store = open_monitor_store(Store(tmp_path))
    with webhook_receiver() as good, webhook_receiver() as bad:
        bad.fail_next = 100
        notifiers = [WebhookNotifier(good.url, name="good"), WebhookNotifier(bad.url, name="bad", attempts=1)]
        with store.transaction() as conn:
            enqueue(conn, [_event()], ["good", "bad"], T0)
            enqueue(conn, [_event()], ["good", "bad"], T0)  # the same event twice: queued once
        assert Dispatcher(store, notifiers).deliver(T0) == {"sent": 1, "failed": 1}
        # a restart: a new dispatcher over the same store sends nothing twice, retries the failure
        d2 = Dispatcher(Store(tmp_path), notifiers)
        bad.fail_next = 0
        assert d2.deliver(T0 + 30) == {"sent": 1, "failed": 0}
        assert d2.deliver(T0 + 60) == {"sent": 0, "failed": 0}
        assert len(good.requests) == 1 and len(bad.requests) == 1
        assert d2.undelivered() == []
