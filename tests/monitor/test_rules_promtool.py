"""Exported Prometheus rules checked and unit-tested by the real promtool; the Grafana dashboard's
queries are checked by promtool too (as recording rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pveguard.monitor.rules import grafana_dashboard, prometheus_rules_yaml
from pveguard.strategy.models import Strategy

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package 'prometheus')")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_check_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(Strategy()))
    res = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 rules found" in res.stdout  # 4 threshold rules + the traffic watch's 2
    off = Strategy.model_validate({"network": {"isolation": {"traffic_monitoring": False}}})
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(off))
    res = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert res.returncode == 0 and "4 rules found" in res.stdout, res.stdout + res.stderr


@needs_promtool
def test_check_rules_rejects_broken_file(tmp_path: Path) -> None:
    # guard against a check that cannot fail
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(Strategy()).replace("pve_up{", "pve_up{{", 1))
    assert _promtool("check", "rules", "rules.yml", cwd=tmp_path).returncode != 0


UNIT_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      # 95 % for 5 min, then 78 % (inside the hysteresis band) for 5 min, then 70 %
      - series: 'pve_cpu_usage_ratio{id="lxc/101"}'
        values: '0.95x9 0.78x9 0.70x9'
      # 78 % all along: never crosses 80, so never fires even though it is above the clear line
      - series: 'pve_cpu_usage_ratio{id="lxc/102"}'
        values: '0.78x29'
      # memory 90 % of 1 GiB; disk 95 % of the container's root disk
      - series: 'pve_memory_usage_bytes{id="lxc/103"}'
        values: '966367641x29'
      - series: 'pve_memory_size_bytes{id="lxc/103"}'
        values: '1073741824x29'
      - series: 'pve_disk_usage_bytes{id="lxc/103"}'
        values: '95x29'
      - series: 'pve_disk_size_bytes{id="lxc/103"}'
        values: '100x29'
      # a VM reports disk 0 of its size: no disk alert for qemu
      - series: 'pve_disk_usage_bytes{id="qemu/200"}'
        values: '0x29'
      - series: 'pve_disk_size_bytes{id="qemu/200"}'
        values: '100x29'
      # managed (tag) and unmanaged guests, both stopped
      - series: 'pve_up{id="lxc/104"}'
        values: '0x29'
      - series: 'pve_guest_info{id="lxc/104",name="x",node="pve1",tags="db;pveguard",template="0",type="lxc"}'
        values: '1x29'
      - series: 'pve_up{id="lxc/105"}'
        values: '0x29'
      - series: 'pve_guest_info{id="lxc/105",name="scratch",node="pve1",tags="",template="0",type="lxc"}'
        values: '1x29'
      # managed by name (a strategy container), no tag
      - series: 'pve_up{id="lxc/106"}'
        values: '0x29'
      - series: 'pve_guest_info{id="lxc/106",name="pve-monitoring",node="pve1",tags="",template="0",type="lxc"}'
        values: '1x29'
    alert_rule_test:
      - eval_time: 1m
        alertname: PveguardCpuHigh
        exp_alerts: []          # pending: sustain is 2m
      - eval_time: 3m
        alertname: PveguardCpuHigh
        exp_alerts:
          - exp_labels: {id: lxc/101, severity: warning, rule: cpu, source: pveguard}
            exp_annotations:
              summary: "CPU of lxc/101 at 95.0%"
              description: "cpu >= 80% for 2m; clears below 75%"
      - eval_time: 8m
        alertname: PveguardCpuHigh
        exp_alerts:             # 78 %: hysteresis keeps it firing
          - exp_labels: {id: lxc/101, severity: warning, rule: cpu, source: pveguard}
            exp_annotations:
              summary: "CPU of lxc/101 at 78.0%"
              description: "cpu >= 80% for 2m; clears below 75%"
      - eval_time: 11m
        alertname: PveguardCpuHigh
        exp_alerts: []          # 70 %: resolved
      - eval_time: 3m
        alertname: PveguardMemoryHigh
        exp_alerts:
          - exp_labels: {id: lxc/103, severity: warning, rule: memory, source: pveguard}
            exp_annotations:
              summary: "memory of lxc/103 at 90.0%"
              description: "memory >= 85% for 2m; clears below 80%"
      - eval_time: 3m
        alertname: PveguardDiskHigh
        exp_alerts:
          - exp_labels: {id: lxc/103, severity: critical, rule: disk, source: pveguard}
            exp_annotations:
              summary: "root disk of lxc/103 at 95.0%"
              description: "disk >= 90% for 2m; clears below 85%"
      - eval_time: 3m
        alertname: PveguardManagedContainerDown
        exp_alerts:
          - exp_labels: {id: lxc/104, severity: critical, rule: down, source: pveguard}
            exp_annotations:
              summary: "managed guest lxc/104 is not running"
              description: "a guest pveguard manages has not been running for 2m"
          - exp_labels: {id: lxc/106, severity: critical, rule: down, source: pveguard}
            exp_annotations:
              summary: "managed guest lxc/106 is not running"
              description: "a guest pveguard manages has not been running for 2m"
"""


@needs_promtool
def test_promtool_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(Strategy()))
    (tmp_path / "test.yml").write_text(UNIT_TESTS)
    res = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # and the same tests fail against rules without hysteresis (the 8m case must catch it)
    s = Strategy()
    s.monitoring.hysteresis = 0
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(s))
    res = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode != 0 and "at 78.0%" in res.stdout + res.stderr


@needs_promtool
def test_grafana_dashboard_panels_and_queries(tmp_path: Path) -> None:
    s = Strategy()
    dash = grafana_dashboard(s)
    by_metric = {p["pveguard_metric"]: p for p in dash["panels"] if "pveguard_metric" in p}
    assert set(s.monitoring.metrics) <= set(by_metric)
    assert by_metric["cpu_usage"]["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == 80
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    doc = {"groups": [{"name": "dash", "rules": [{"record": f"dash:q{i}", "expr": e}
                                                   for i, e in enumerate(exprs)]}]}
    (tmp_path / "q.yml").write_text(yaml.safe_dump(doc))
    res = _promtool("check", "rules", "q.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


TRAFFIC_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 30 drops a minute for 10 minutes, then none
      - series: 'pveguard_container_firewall_dropped_total{id="lxc/101",name="pve-monitoring"}'
        values: '0+30x10 300x10'
      # 5 a minute: under the default 10/min
      - series: 'pveguard_container_firewall_dropped_total{id="lxc/102",name="pve-backup-manager"}'
        values: '0+5x20'
      - series: 'pveguard_container_unaccepted_destinations{id="lxc/103",name="pve-dev-tools"}'
        values: '0x4 2x4 0x4'
    alert_rule_test:
      - eval_time: 6m
        alertname: PveguardFirewallDrops
        exp_alerts:
          - exp_labels: {id: lxc/101, name: pve-monitoring, severity: warning, rule: fw_drops, source: pveguard}
            exp_annotations:
              summary: "the firewall drops 30.0 connections/min of pve-monitoring (lxc/101)"
              description: "dropped connections >= 10/min over 5m"
      - eval_time: 18m
        alertname: PveguardFirewallDrops
        exp_alerts: []
      - eval_time: 6m
        alertname: PveguardNewDestination
        exp_alerts:
          - exp_labels: {id: lxc/103, name: pve-dev-tools, severity: warning, rule: new_destination, source: pveguard}
            exp_annotations:
              summary: "pve-dev-tools (lxc/103) talks to 2 destination(s) never seen before"
              description: >-
                see them with 'pveguard monitor traffic'; accept one into the baseline
                with 'pveguard monitor traffic accept NAME DEST'
      - eval_time: 10m
        alertname: PveguardNewDestination
        exp_alerts: []
"""


@needs_promtool
def test_promtool_traffic_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(Strategy()))
    (tmp_path / "test.yml").write_text(TRAFFIC_TESTS)
    res = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # a higher threshold must make the 6m expectation fail (the test can fail)
    s = Strategy.model_validate({"monitoring": {"traffic": {"drops_per_minute": 40}}})
    (tmp_path / "rules.yml").write_text(prometheus_rules_yaml(s))
    res = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode != 0
