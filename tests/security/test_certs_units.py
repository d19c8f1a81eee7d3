"""The pure parts of the certificate check: ACME settings as PVE reads them, days left, the finding."""

from __future__ import annotations

import pytest

from pveguard.audit.findings import certificate_findings
from pveguard.security.certs import DAY, Cert, Report, acme_of, rule
from pveguard.strategy.models import Strategy

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("config", "account", "domains"), [
    ({}, None, ()),
    ({"acme": "domains=a.example;B.example"}, "default", (("a.example", "standalone"), ("b.example", "standalone"))),
    ({"acme": "account=le", "acmedomain0": "c.example,plugin=dns1"}, "le", (("c.example", "dns1"),)),
    ({"acmedomain1": "domain=d.example"}, "default", (("d.example", "standalone"),)),
])
def test_acme_settings_as_pve_reads_them(config: dict[str, str], account: str | None,
                                         domains: tuple[tuple[str, str], ...]) -> None:
    a = acme_of("pve1", config)
    assert (a.account, a.domains, a.configured) == (account, domains, bool(domains))


@pytest.mark.parametrize(("after", "left", "expiring"), [
    (NOW + 40 * DAY, 40, False), (NOW + 30 * DAY, 30, True), (NOW + 5.5 * DAY, 5, True),
    (NOW - 0.5 * DAY, -1, True), (None, None, False),
])
def test_days_left_and_expiring(after: float | None, left: int | None, expiring: bool) -> None:
    c = Cert("node", "pve1", "pve-ssl.pem", not_after=after)
    assert c.days_left(NOW) == left
    assert c.expiring(NOW, 30 * DAY) is expiring


def test_findings_high_before_expiry_critical_after() -> None:
    report = Report(NOW, 30 * DAY, certs=[
        Cert("node", "pve1", "pveproxy-ssl.pem", "/CN=pve1.example.com", not_after=NOW + 10 * DAY),
        Cert("endpoint", "pve-monitoring", "https://10.0.0.5/", "CN=grafana", not_after=NOW - 2 * DAY),
        Cert("node", "pve2", "pve-ssl.pem", not_after=NOW + 400 * DAY),
        Cert("node", "pve3", "-", error="node offline"),
    ])
    found = {f.id: f for f in certificate_findings(report)}
    assert set(found) == {"certificate:node/pve1/pveproxy-ssl.pem", "certificate:tls/https://10.0.0.5/"}
    assert found["certificate:node/pve1/pveproxy-ssl.pem"].severity == "high"
    assert "pveguard certs renew pve1" in found["certificate:node/pve1/pveproxy-ssl.pem"].fix
    assert found["certificate:tls/https://10.0.0.5/"].severity == "critical"
    assert "expired 2 day(s) ago" in found["certificate:tls/https://10.0.0.5/"].title
    assert certificate_findings(None) == []


def test_rule_follows_warn_before() -> None:
    s = Strategy.model_validate({"security": {"access": {"certificates": {"warn_before": "14d"}}}})
    r = rule(s)
    assert r.describe() == "certificate expires within 14 days" and r.sustain == 0 and r.breached(1.0)
