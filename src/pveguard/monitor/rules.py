"""Exports for the `pve-monitoring` container: the strategy's thresholds as Prometheus alerting rules
over the pve_* metrics (ours or prometheus-pve-exporter's), and a Grafana dashboard with a panel per
strategy metric.

The rules mirror the alert engine: `for:` is the sustain time, and hysteresis is the usual PromQL
idiom: a firing alert keeps matching down to `threshold - hysteresis` by joining its own ALERTS series.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pveguard.strategy.models import Strategy
from pveguard.strategy.units import format_duration

GUESTS = 'id=~"(lxc|qemu)/.+"'
CONTAINERS = 'id=~"lxc/.+"'
_NAME_OK = re.compile(r"^[a-z0-9-]+$")

# metric name -> (title, unit, PromQL expressions with legend)
_PANELS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "cpu_usage": ("CPU usage", "percent", [(f"100 * pve_cpu_usage_ratio{{{GUESTS}}}", "{{id}}")]),
    "memory_usage": ("Memory usage", "percent", [
        (f"100 * pve_memory_usage_bytes{{{GUESTS}}} / (pve_memory_size_bytes{{{GUESTS}}} > 0)", "{{id}}")]),
    "disk_usage": ("Root disk usage", "percent", [
        (f"100 * pve_disk_usage_bytes{{{CONTAINERS}}} / (pve_disk_size_bytes{{{CONTAINERS}}} > 0)", "{{id}}")]),
    "disk_io": ("Disk I/O", "Bps", [
        (f"rate(pve_disk_read_bytes_total{{{GUESTS}}}[5m])", "{{id}} read"),
        (f"-rate(pve_disk_written_bytes_total{{{GUESTS}}}[5m])", "{{id}} write")]),
    "network_traffic": ("Network traffic", "Bps", [
        (f"rate(pve_network_receive_bytes_total{{{GUESTS}}}[5m])", "{{id}} in"),
        (f"-rate(pve_network_transmit_bytes_total{{{GUESTS}}}[5m])", "{{id}} out")]),
}


def _hysteresis_expr(value: str, alert: str, threshold: float, hysteresis: float) -> str:
    fire = f"({value}) >= {threshold:g}"
    if hysteresis <= 0:
        return fire
    keep = f'({value}) >= {threshold - hysteresis:g} and on(id) ALERTS{{alertname="{alert}",alertstate="firing"}}'
    return f"({fire})\nor\n({keep})"


def managed_selector(strategy: Strategy) -> str:
    """pve_guest_info series of the guests pveguard manages: tagged, or named in the strategy."""
    parts = ['pve_guest_info{tags=~"(.*;)?pveguard(;.*)?"}']
    names = [c.name for c in strategy.containers if _NAME_OK.match(c.name)]
    if names:
        parts.append(f'pve_guest_info{{name=~"{"|".join(names)}"}}')
    return " or ".join(parts)


def prometheus_rules(strategy: Strategy) -> dict[str, Any]:
    """The alerting rules as a rule-file document."""
    m = strategy.monitoring
    t = m.thresholds
    hyst = float(m.hysteresis)
    sustain = format_duration(m.sustain)
    specs = [
        ("PveguardCpuHigh", "cpu", "warning", f"100 * pve_cpu_usage_ratio{{{GUESTS}}}", float(t.cpu),
         "CPU of {{ $labels.id }} at {{ $value | printf \"%.1f\" }}%"),
        ("PveguardMemoryHigh", "memory", "warning",
         f"100 * pve_memory_usage_bytes{{{GUESTS}}} / (pve_memory_size_bytes{{{GUESTS}}} > 0)", float(t.memory),
         "memory of {{ $labels.id }} at {{ $value | printf \"%.1f\" }}%"),
        ("PveguardDiskHigh", "disk", "critical",
         f"100 * pve_disk_usage_bytes{{{CONTAINERS}}} / (pve_disk_size_bytes{{{CONTAINERS}}} > 0)", float(t.disk),
         "root disk of {{ $labels.id }} at {{ $value | printf \"%.1f\" }}%"),
    ]
    rules: list[dict[str, Any]] = []
    for alert, rule, severity, value, threshold, summary in specs:
        rules.append({
            "alert": alert,
            "expr": _hysteresis_expr(value, alert, threshold, hyst),
            "for": sustain,
            "labels": {"severity": severity, "rule": rule, "source": "pveguard"},
            "annotations": {"summary": summary,
                            "description": f"{rule} >= {threshold:g}% for {sustain}; clears below "
                                           f"{max(threshold - hyst, 0):g}%"},
        })
    rules.append({
        "alert": "PveguardManagedContainerDown",
        "expr": f"pve_up{{{GUESTS}}} == 0 and on(id) ({managed_selector(strategy)})",
        "for": sustain,
        "labels": {"severity": "critical", "rule": "down", "source": "pveguard"},
        "annotations": {"summary": "managed guest {{ $labels.id }} is not running",
                        "description": f"a guest pveguard manages has not been running for {sustain}"},
    })
    from pveguard.monitor.traffic import enabled as traffic_watch

    if traffic_watch(strategy):
        rules += traffic_prometheus_rules(strategy)
    return {"groups": [{"name": "pveguard", "rules": rules}]}


def traffic_prometheus_rules(strategy: Strategy) -> list[dict[str, Any]]:
    """The traffic watch's two alerts over `pveguard monitor --listen`'s own metrics (no pve_* equivalent)."""
    per_min = float(strategy.monitoring.traffic.drops_per_minute)
    return [
        {"alert": "PveguardFirewallDrops",
         "expr": f"60 * rate(pveguard_container_firewall_dropped_total[5m]) >= {per_min:g}",
         "labels": {"severity": "warning", "rule": "fw_drops", "source": "pveguard"},
         "annotations": {"summary": "the firewall drops {{ $value | printf \"%.1f\" }} connections/min of "
                                    "{{ $labels.name }} ({{ $labels.id }})",
                         "description": f"dropped connections >= {per_min:g}/min over 5m"}},
        {"alert": "PveguardNewDestination",
         "expr": "pveguard_container_unaccepted_destinations > 0",
         "labels": {"severity": "warning", "rule": "new_destination", "source": "pveguard"},
         "annotations": {"summary": "{{ $labels.name }} ({{ $labels.id }}) talks to {{ $value }} destination(s) "
                                    "never seen before",
                         "description": "see them with 'pveguard monitor traffic'; accept one into the baseline "
                                        "with 'pveguard monitor traffic accept NAME DEST'"}},
    ]


def prometheus_rules_yaml(strategy: Strategy) -> str:
    header = ("# Generated by `pveguard export prometheus-rules` from the strategy; regenerate, do not edit.\n"
              "# Works on pve_* metrics from `pveguard monitor --listen` or prometheus-pve-exporter.\n")
    return header + yaml.dump(prometheus_rules(strategy), Dumper=_BlockDumper, sort_keys=False, width=200)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line PromQL as `|` blocks, which people can read and diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def grafana_dashboard(strategy: Strategy) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) with one time-series panel per strategy metric."""
    m = strategy.monitoring
    thresholds = {"cpu_usage": m.thresholds.cpu, "memory_usage": m.thresholds.memory,
                  "disk_usage": m.thresholds.disk}
    metrics = list(dict.fromkeys([*m.metrics, "disk_usage"]))
    panels: list[dict[str, Any]] = []
    for i, metric in enumerate(metrics):
        title, unit, exprs = _PANELS[metric]
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if metric in thresholds:
            steps.append({"color": "red", "value": thresholds[metric]})
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {
                "unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"thresholdsStyle": {"mode": "line" if metric in thresholds else "off"}},
                **({"max": 100, "min": 0} if unit == "percent" else {})}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + j), "expr": e, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (e, legend) in enumerate(exprs)],
            "pveguard_metric": metric,
        })
    n = len(panels)
    panels.append({
        "id": n + 1, "type": "table", "title": "pveguard alerts",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": ((n + 1) // 2) * 8},
        "targets": [{"refId": "A", "expr": "pveguard_alert_firing", "format": "table", "instant": True}],
    })
    return {
        "title": "pveguard: containers", "uid": "pveguard-containers", "tags": ["pveguard", "proxmox"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }
