"""Inventory, dependency map, migration facts, findings and score over the hand-written PVE root
(tests/audit/golden/pve-alternatives), where every expected value can be read off the fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pveguard.audit import inventory, score
from pveguard.audit.findings import Finding, GuestView, ServiceRow, container_findings, service_findings
from pveguard.strategy.models import Strategy

from .test_golden import audit_case

ROOT = Path(__file__).parent / "golden/pve-alternatives/root"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return audit_case("pve-alternatives")


def test_enablement_kinds() -> None:
    facts = inventory.collect(ROOT, live=False)
    u = facts.units
    assert u["caddy.service"].enablement == "masked"
    assert u["sshd.service"].enablement == "alias" and u["sshd.service"].package == "openssh-server"
    assert u["getty@tty1.service"].enablement == "enabled" and u["getty@tty1.service"].package == "systemd"
    assert u["systemd-journald.service"].enablement == "static"
    assert u["backup-offsite.service"].enablement == "static"   # no [Install]; its timer is enabled
    assert u["backup-offsite.timer"].enablement == "enabled" and u["backup-offsite.timer"].package is None
    assert u["docker.socket"].wanted_by == ["sockets.target"]
    assert {x.fact for x in facts.unavailable} == {"running units", "listening sockets"}


def test_drop_in_overrides_exec_start_and_extends_after(doc: dict[str, Any]) -> None:
    docker = next(s for s in doc["services"] if s["unit"] == "docker.service")
    assert docker["migration"]["exec_start"] == ["/usr/sbin/dockerd --iptables=false"]
    deps = {d["unit"]: d for d in doc["dependency_map"]}["docker.service"]
    assert "pve-firewall.service" in deps["after"] and "containerd.service" in deps["after"]
    assert deps["requires"] == ["docker.socket"]
    assert deps["wants"] == ["network-online.target", "containerd.service"]
    assert deps["wanted_by"] == ["multi-user.target"]
    # containerd is auto-installed and only docker.io needs it: it leaves with docker
    assert deps["packages"] == ["docker.io", "containerd"]
    assert deps["exclusive_packages"] == ["docker.io", "containerd"]


def test_reverse_dependencies(doc: dict[str, Any]) -> None:
    deps = {d["unit"]: d for d in doc["dependency_map"]}
    assert deps["containerd.service"]["wanted_by"] == ["docker.service", "multi-user.target"]
    assert deps["containerd.service"]["ordered_before"] == ["docker.service"]
    assert deps["docker.socket"]["required_by"] == ["docker.service"]


def test_migration_facts(doc: dict[str, Any]) -> None:
    svc = {s["unit"]: s for s in doc["services"]}
    jenkins = svc["jenkins.service"]["migration"]
    assert jenkins["data_paths"] == ["/var/lib/jenkins"]
    assert jenkins["users"][0] == "jenkins"
    node = svc["prometheus-node-exporter.service"]["migration"]
    assert node["config_paths"] == ["/etc/default/prometheus-node-exporter"]
    assert node["data_paths"] == ["/var/lib/prometheus"]
    assert node["users"] == ["prometheus"]
    timer = svc["backup-offsite.timer"]
    assert timer["suggestion"]["container"] == "pve-backup-manager"   # through the service it starts (rclone)
    assert timer["migration"]["exec_start"] == ["/usr/bin/rclone sync /var/lib/vz/dump remote:pve"]


def test_findings_and_score(doc: dict[str, Any]) -> None:
    by_id = {f["id"]: f for f in doc["findings"]}
    assert by_id["docker-on-host"]["severity"] == "high"
    assert "FORWARD" in by_id["docker-on-host"]["detail"]
    assert "htop" not in by_id["non-core-packages"]["detail"]        # extra_allowed
    assert "restic" in by_id["non-core-packages"]["detail"]
    cron = [f for f in doc["findings"] if f["id"].startswith("cron:")]
    fixes = sorted(f["fix"].split(" and ")[0] for f in cron)
    assert fixes == ["run it in container pve-backup-manager", "run it in container pve-dev-tools"]
    counts = doc["score"]["counts"]
    assert doc["score"]["value"] == max(0, 100 - 25 * counts["critical"] - 10 * counts["high"]
                                        - 5 * counts["medium"] - 2 * counts["low"])
    assert doc["score"]["explanation"].endswith(f"= {doc['score']['value']}")


@pytest.mark.parametrize(("severities", "value"), [
    ([], 100), (["info"], 100), (["low"], 98), (["medium", "low"], 93), (["high"] * 3, 70),
    (["critical"] * 4, 0), (["critical"] * 5, 0),
])
def test_score_formula(severities: list[str], value: int) -> None:
    fs = [Finding(str(i), "x", s, "t", "d", "f") for i, s in enumerate(severities)]  # type: ignore[arg-type]
    assert score.compute(fs).value == value


def test_exposed_service_is_high_loopback_medium() -> None:
    rows = [ServiceRow("a.service", "a", True, True, "pve-monitoring", 1.0, ["tcp/3000 on 0.0.0.0"]),
            ServiceRow("b.service", None, True, True, None, 0.0, ["tcp/9000 on 127.0.0.1", "tcp6/9000 on ::1"]),
            ServiceRow("c.service", "c", False, False, None, 0.0, [])]
    got = {f.id: f.severity for f in service_findings(rows)}
    assert got == {"non-core-service:a": "high", "non-core-service:b.service": "medium"}


def _view(**configs: dict[str, Any]) -> GuestView:
    guests = [{"vmid": 100 + i, "name": n, "status": "running", "type": "lxc"} for i, n in enumerate(configs)]
    return GuestView(True, "", "test", guests, dict(configs))


def test_container_findings() -> None:
    strategy = Strategy()
    good = {"cores": 2, "memory": 4096, "swap": 512, "net0": "name=eth0,bridge=vmbr0,tag=100,firewall=1,ip=dhcp"}
    view = _view(**{"pve-monitoring": good,
                    "pve-backup-manager": {"cores": 1, "memory": 1024, "swap": 512,
                                           "net0": "name=eth0,bridge=vmbr0,ip=dhcp"},
                    "pve-dev-tools": {"cores": 2, "memory": 4096, "swap": 512,
                                      "net0": "name=eth0,bridge=vmbr0,tag=100,firewall=1"}})
    view.guests[2]["status"] = "stopped"
    ids = {f.id: f.severity for f in container_findings(strategy, view)}
    assert ids == {
        "container-missing:pve-api-gateway": "high",
        "container-resources:pve-backup-manager": "medium",
        "container-vlan:pve-backup-manager": "high",
        "container-firewall:pve-backup-manager": "high",
        "container-stopped:pve-dev-tools": "low",   # onboot=False in the default strategy
    }
    assert container_findings(strategy, GuestView(False, "no backend")) == []


@pytest.mark.parametrize(("severities", "text"), [
    ([], "100 (no penalised findings)"), (["info"], "100 (no penalised findings)"),
    (["high", "high", "low"], "100 - 10*2 - 2*1 = 78"),
    (["critical"] * 5, "100 - 25*5 = -25 -> 0"),
])
def test_score_explanation(severities: list[str], text: str) -> None:
    fs = [Finding(str(i), "x", s, "t", "d", "f") for i, s in enumerate(severities)]  # type: ignore[arg-type]
    assert score.compute(fs).explanation == text
