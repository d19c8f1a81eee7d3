"""Container suggestions and migration facts: tables of names against the default strategy."""

from __future__ import annotations

import pytest

from pveguard.audit import suggest
from pveguard.strategy.models import Strategy

CONTAINERS = [(c.name, c.components) for c in Strategy().containers]


@pytest.mark.parametrize(("names", "container", "min_conf"), [
    # the examples, by package and by unit name
    ({"package": ["grafana"], "unit": ["grafana-server"]}, "pve-monitoring", 1.0),
    ({"package": ["prometheus"]}, "pve-monitoring", 1.0),
    ({"package": ["prometheus-node-exporter"]}, "pve-monitoring", 0.8),
    ({"unit": ["node_exporter"]}, "pve-monitoring", 0.9),
    ({"package": ["restic"]}, "pve-backup-manager", 1.0),
    ({"package": ["rclone"]}, "pve-backup-manager", 1.0),
    ({"package": ["borgbackup"]}, "pve-backup-manager", 0.9),
    ({"package": ["gitlab-runner"]}, "pve-dev-tools", 1.0),
    ({"package": ["jenkins"]}, "pve-dev-tools", 1.0),
    ({"package": ["docker.io"], "unit": ["docker"]}, "pve-dev-tools", 1.0),
    ({"package": ["containerd"]}, "pve-dev-tools", 0.9),
    ({"package": ["nginx-common"], "unit": ["nginx"]}, "pve-api-gateway", 1.0),
    ({"package": ["caddy"]}, "pve-api-gateway", 1.0),
    ({"package": ["traefik"]}, "pve-api-gateway", 1.0),
    ({"package": ["webhook"]}, "pve-api-gateway", 1.0),
    ({"unit": ["webhook-relay"], "binary": ["webhook"]}, "pve-api-gateway", 0.8),
    ({"command": ["restic", "backup", "etc"]}, "pve-backup-manager", 0.75),
])
def test_suggestions(names: dict[str, list[str]], container: str, min_conf: float) -> None:
    s = suggest.suggest(names, CONTAINERS)
    assert s.container == container, s
    assert s.confidence >= min_conf, s


@pytest.mark.parametrize("names", [
    {"package": ["postgresql-common"], "unit": ["postgresql"]},
    {"package": ["apparmor"]},
    {"unit": ["gitweb"]},          # 'git' must not match inside another word
    {"unit": ["dockerish"]},
])
def test_no_suggestion(names: dict[str, list[str]]) -> None:
    s = suggest.suggest(names, CONTAINERS)
    assert s.container is None and s.confidence == 0.0


def test_more_specific_component_wins() -> None:
    assert suggest.match_name("prometheus-node-exporter", "node-exporter") > \
        suggest.match_name("prometheus-node-exporter", "prometheus")


def test_ambiguous_match_lowers_confidence() -> None:
    containers = [("a", ["metrics"]), ("b", ["metrics"])]
    s = suggest.suggest({"package": ["metrics"]}, containers)
    assert s.container == "a" and s.confidence == pytest.approx(0.6)
    assert "also matches b" in s.evidence


def test_package_paths_summarised() -> None:
    files = ["/etc", "/etc/grafana", "/etc/grafana/grafana.ini", "/etc/grafana/provisioning/x.yaml",
             "/etc/default/grafana-server", "/etc/init.d/grafana-server", "/etc/systemd/system/x.service",
             "/var/lib/grafana", "/var/lib/grafana/plugins", "/var/log/grafana", "/opt/grafana/bin/x",
             "/usr/share/grafana/public/index.html", "/srv"]
    assert suggest.package_paths(files) == (
        ["/etc/default/grafana-server", "/etc/grafana"], ["/opt/grafana", "/var/lib/grafana"], ["/var/log/grafana"])
