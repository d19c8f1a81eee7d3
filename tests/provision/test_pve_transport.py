"""The https transport at scale: proxies read once (still honoured), enough pooled connections for the
calls in flight, and the in-flight bound read from the environment."""

from __future__ import annotations

import pytest
import requests

from pveguard.backends import inflight
from pveguard.backends.proxmox import fixed_environment
from pveguard.backends.pvetls import PveAdapter, Trust

BASE = "https://pve.example:8006/api2/json"


def test_the_proxy_environment_still_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    s = requests.Session()
    fixed_environment(s, BASE, False)
    assert s.trust_env is False and s.proxies.get("https") == "http://proxy.example:3128"
    monkeypatch.setenv("no_proxy", "pve.example")
    s = requests.Session()
    fixed_environment(s, BASE, False)
    assert s.trust_env is False and "https" not in s.proxies


def test_a_ca_bundle_from_the_environment_keeps_it_live(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    s = requests.Session()
    fixed_environment(s, BASE, True)
    assert s.trust_env is True
    s = requests.Session()
    fixed_environment(s, BASE, "/etc/pveguard/pve-root-ca.pem")  # our own CA file wins anyway
    assert s.trust_env is False


def test_one_pooled_connection_per_call_in_flight() -> None:
    a = PveAdapter("pve.example:8006", Trust(False, None, None))
    assert a._pool_maxsize == inflight.IN_FLIGHT >= 8


@pytest.mark.parametrize(("raw", "n"),
                         [("", inflight.DEFAULT), ("4", 4), ("0", 1), ("1000", 64), ("x", inflight.DEFAULT)])
def test_in_flight_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, n: int) -> None:
    monkeypatch.setenv("PVEGUARD_PVE_CONCURRENCY", raw)
    assert inflight.in_flight() == n
