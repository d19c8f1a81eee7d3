"""SMTP notifications and TLS: a real aiosmtpd relay on loopback offering STARTTLS with a
self-signed certificate (made by openssl for this test) and a login (issue 12, "secrets in transit")."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pveguard.errors import ConfigError
from pveguard.monitor.notify import DeliveryError, EmailNotifier, notifiers_from_strategy
from pveguard.strategy.models import Notifier as NotifierConfig

from .receivers import SmtpReceiver, free_port
from .test_notify import _event

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")

FROM, TO = "pveguard@example.test", ["ops@example.test"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@contextmanager
def starttls_relay(cert: tuple[Path, Path], logins: list[tuple[str, str]]) -> Iterator[SmtpReceiver]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    rec = SmtpReceiver("127.0.0.1", free_port())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert[0]), str(cert[1]))

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            from email import message_from_bytes

            rec.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    controller = Controller(Handler(), hostname=rec.host, port=rec.port, tls_context=server_ctx,
                            require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    controller.start()
    try:
        yield rec
    finally:
        controller.stop()


def test_self_signed_relay_is_refused_by_default(cert: tuple[Path, Path]) -> None:
    logins: list[tuple[str, str]] = []
    with starttls_relay(cert, logins) as rec:
        n = EmailNotifier(rec.host, rec.port, FROM, TO, starttls=True, user="alerts", password="hunter2",
                          attempts=1)
        with pytest.raises(DeliveryError, match=r"certificate is not trusted .*smtp_ca_file"):
            n.send(_event())
        assert rec.messages == [] and logins == []  # the password never left


def test_self_signed_relay_is_accepted_with_its_ca_file(cert: tuple[Path, Path]) -> None:
    logins: list[tuple[str, str]] = []
    with starttls_relay(cert, logins) as rec:
        EmailNotifier(rec.host, rec.port, FROM, TO, starttls=True, user="alerts", password="hunter2",
                      ca_file=str(cert[0])).send(_event())
        assert len(rec.messages) == 1 and logins == [("alerts", "hunter2")]


def test_verification_off_is_explicit_and_loud(cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    with starttls_relay(cert, []) as rec, caplog.at_level(logging.WARNING):
        EmailNotifier(rec.host, rec.port, FROM, TO, starttls=True, tls_verify=False).send(_event())
        assert len(rec.messages) == 1
    assert "NOT checked" in caplog.text


def test_credentials_without_tls_are_refused() -> None:
    with pytest.raises(ConfigError, match="refusing to send the SMTP login over an unencrypted connection") as e:
        EmailNotifier("127.0.0.1", 25, FROM, TO, user="alerts", password="hunter2")
    assert "smtp_starttls: true" in (e.value.hint or "")
    # `pveguard check` already says so for the strategy file.
    with pytest.raises(ValueError, match="an SMTP login needs 'smtp_starttls: true'"):
        NotifierConfig(type="email", smtp_host="relay", mail_from=FROM, mail_to=TO, smtp_user="alerts",
                       smtp_password_file="/etc/pveguard/smtp.pw")


def test_strategy_ca_file_reaches_the_notifier(cert: tuple[Path, Path]) -> None:
    cfg = NotifierConfig(type="email", smtp_host="127.0.0.1", smtp_port=2525, mail_from=FROM, mail_to=TO,
                         smtp_starttls=True, smtp_ca_file=str(cert[0]))
    [n] = notifiers_from_strategy([cfg])
    assert isinstance(n, EmailNotifier) and n.tls_context is not None
    assert n.tls_context.verify_mode == ssl.CERT_REQUIRED and n.tls_context.check_hostname


def test_plain_smtp_without_login_still_works() -> None:
    from .receivers import smtp_receiver

    with smtp_receiver() as rec:
        EmailNotifier(rec.host, rec.port, FROM, TO).send(_event())
        assert len(rec.messages) == 1
