"""Where serve listens: plain HTTP only on loopback, TLS (a self-signed certificate it creates, or
the strategy's) elsewhere; a real TLS handshake with the created certificate."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from infra.processes import stop
from pveguard.errors import UsageError
from pveguard.serve.daemon import resolve_listen
from pveguard.strategy.defaults import render
from pveguard.strategy.models import Strategy

from .test_daemon import free_port


def strategy(**tls: object) -> Strategy:
    doc = yaml.safe_load(render())
    doc["serve"]["tls"].update(tls)
    return Strategy.model_validate(doc)


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    assert not resolve_listen(strategy(), tmp_path, "127.0.0.1:8450").tls
    assert not resolve_listen(strategy(), tmp_path, "[::1]:8450").tls
    with pytest.raises(UsageError, match=r"refusing plain HTTP on 0\.0\.0\.0:8450") as exc:
        resolve_listen(strategy(mode="off"), tmp_path, "0.0.0.0:8450")
    assert exc.value.hint and "serve.tls.mode" in exc.value.hint
    with pytest.raises(UsageError, match="not HOST:PORT"):
        resolve_listen(strategy(), tmp_path, "8450")


def test_tls_off_loopback_with_a_created_certificate(tmp_path: Path) -> None:
    got = resolve_listen(strategy(), tmp_path, "0.0.0.0:8450")
    assert got.tls and got.url == "https://0.0.0.0:8450"
    assert got.cert_file is not None and got.key_file is not None
    cert = x509.load_pem_x509_certificate(got.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert oct(got.key_file.stat().st_mode & 0o777) == "0o600"
    # created once, then reused
    again = resolve_listen(strategy(), tmp_path, "0.0.0.0:8450")
    assert again.cert_file is not None and again.cert_file.read_bytes() == got.cert_file.read_bytes()


def test_a_named_certificate_must_exist(tmp_path: Path) -> None:
    from pveguard.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        resolve_listen(strategy(cert_file=str(tmp_path / "nope.pem")), tmp_path, "0.0.0.0:8450")


def test_serves_https_with_tls_on(tmp_path: Path) -> None:
    doc = yaml.safe_load(render())
    doc["serve"]["tls"]["mode"] = "on"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pveguard", "--strategy", str(tmp_path / "s.yaml"),
                                 "--state-dir", str(tmp_path / "state"), "serve", "--listen", f"127.0.0.1:{port}"],
                                env={**os.environ, "PVEGUARD_BACKEND": "lxc"}, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"listening on https://" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "state/serve-tls/cert.pem"))
        with urllib.request.urlopen(f"https://localhost:{port}/healthz", context=ctx, timeout=10) as r:
            assert json.loads(r.read())["ok"] is True
        with pytest.raises(urllib.error.URLError):  # an unpinned client does not trust it: it is self-signed
            urllib.request.urlopen(f"https://localhost:{port}/healthz", timeout=10)
    finally:
        stop(proc)
