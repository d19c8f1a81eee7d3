"""Exporter: golden file from a JSON fixture, and value/label agreement with the real
prometheus-pve-exporter collectors fed the same API replies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pveguard.monitor.alerts import AlertState
from pveguard.monitor.collector import Sweep, parse_resources
from pveguard.monitor.exporter import ExportView, render

HERE = Path(__file__).parent
RESOURCES = json.loads((HERE / "fixtures" / "cluster_resources.json").read_text())
STATUS = json.loads((HERE / "fixtures" / "cluster_status.json").read_text())
GOLDEN = HERE / "golden" / "metrics.txt"
OVERLAP = {"pve_up", "pve_cpu_usage_ratio", "pve_cpu_usage_limit", "pve_memory_usage_bytes",
           "pve_memory_size_bytes", "pve_disk_usage_bytes", "pve_disk_size_bytes", "pve_uptime_seconds",
           "pve_storage_shared", "pve_network_receive_bytes_total", "pve_network_transmit_bytes_total",
           "pve_disk_read_bytes_total", "pve_disk_written_bytes_total", "pve_guest_info", "pve_storage_info"}


def _view() -> ExportView:
    sweep = Sweep(1_700_000_000.0, parse_resources(RESOURCES), api_calls=1, duration=0.012)
    states = {("cpu", "lxc/103"): AlertState("cpu", "lxc/103", "legacy", "firing", 1.0, 0.5, 95.0, True),
              ("memory", "lxc/103"): AlertState("memory", "lxc/103", "legacy", "pending", 1.0, 1.0, 93.1)}
    return ExportView(sweep, states, polls=7, errors=1, poll_duration=0.02,
                      severities={"cpu": "warning", "memory": "warning"})


def test_golden_metrics() -> None:
    text = render(_view()).decode()
    if os.environ.get("PVEGUARD_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed; rerun with PVEGUARD_UPDATE_GOLDEN=1 if intended"


class _FakeCall:
    """Just enough of proxmoxer's attribute chain to replay the fixtures to the exporter's collectors."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, name: str) -> _FakeCall:
        return _FakeCall(f"{self.path}/{name}")

    def get(self, **params: Any) -> Any:
        if self.path == "/cluster/resources":
            kind = params.get("type")
            items = [dict(r) for r in RESOURCES]
            if kind == "vm":
                return [r for r in items if r["type"] in ("lxc", "qemu")]
            return [r for r in items if r["type"] == kind] if kind else items
        if self.path == "/cluster/status":
            return [dict(e) for e in STATUS]
        raise AssertionError(f"unexpected call {self.path}")


def _families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_agrees_with_prometheus_pve_exporter() -> None:
    cluster = pytest.importorskip("pve_exporter.collector.cluster")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(cluster.StatusCollector(_FakeCall("")))
    registry.register(cluster.ClusterResourcesCollector(_FakeCall("")))
    theirs = _families(generate_latest(registry).decode())
    ours = _families(render(_view()).decode())
    theirs = {k: v for k, v in theirs.items() if k[0] in OVERLAP}
    ours_overlap = {k: v for k, v in ours.items() if k[0] in OVERLAP}
    # the exporter adds pve_up for the cluster itself (from /cluster/status); everything else must match
    extra = {k for k in theirs if k not in ours_overlap}
    assert extra == {("pve_up", (("id", "cluster/lab"),))}
    assert {k for k in ours_overlap if k not in theirs} == set()
    assert {k: theirs[k] for k in ours_overlap} == ours_overlap
    names = {k[0] for k in ours_overlap}
    assert {"pve_up", "pve_cpu_usage_ratio", "pve_network_receive_bytes_total", "pve_disk_written_bytes_total",
            "pve_memory_size_bytes", "pve_disk_size_bytes"} <= names


def test_pveguard_metrics() -> None:
    ours = _families(render(_view()).decode())
    firing = (("id", "lxc/103"), ("name", "legacy"), ("rule", "cpu"), ("severity", "warning"))
    assert ours[("pveguard_alert_firing", firing)] == 1.0
    assert ours[("pveguard_alert_firing", (("id", "lxc/103"), ("name", "legacy"), ("rule", "memory"),
                                            ("severity", "warning")))] == 0.0
    assert ours[("pveguard_api_calls_per_poll", ())] == 1.0
    assert ours[("pveguard_polls_total", ())] == 7.0
    assert not any(k[0] == "pveguard_compliance_score" for k in ours)
    view = _view()
    view.compliance_score = 87.5
    assert _families(render(view).decode())[("pveguard_compliance_score", ())] == 87.5


def test_fast_render_is_byte_identical_to_prometheus_client() -> None:
    from pveguard.monitor.exporter import render_reference

    assert render(_view()) == render_reference(_view())
    nasty = [dict(r) for r in RESOURCES]
    nasty[2] = {**nasty[2], "name": 'we"ird\\na\nme', "tags": 'a"b;c\\d'}
    nasty[7] = {**nasty[7], "content": "z,\"q\",a", "plugintype": "dir\n"}
    nasty.append({"id": "lxc/104", "type": "lxc", "vmid": 104, "node": "pve1", "status": "running",
                  "cpu": 1e-7, "mem": 2**53 + 1, "maxmem": 1.5, "uptime": 12345678901})
    view = ExportView(Sweep(1.0, parse_resources(nasty)), {}, severities={})
    assert render(view) == render_reference(view)
    empty = ExportView(None)
    assert render(empty) == render_reference(empty)


def test_metrics_endpoint_plain_and_gzip() -> None:
    import gzip

    import requests

    from pveguard.monitor.exporter import serve

    from .receivers import free_port

    port = free_port()
    server = serve(f"127.0.0.1:{port}", _view)
    try:
        plain = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
        assert plain.status_code == 200 and plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert plain.content == GOLDEN.read_bytes()
        raw = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5,
                           stream=True)
        assert raw.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(raw.raw.read()) == GOLDEN.read_bytes()
        assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 0.5, 1e-7, 123456.0, 1234567.0, 8589934592.0, 2.0**53 + 1,
                                   1e16, 1e22, 12345678.9, -12345678.9, 0.1 + 0.2, float("inf"), float("-inf"),
                                   float("nan"), 1000000.0, 100000.0])
def test_float_format_matches_prometheus_client(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    from pveguard.monitor.exporter import _go

    assert _go(value) == floatToGoString(value)


def test_scrapes_between_polls_get_the_cached_bytes() -> None:
    """One render per poll however many scrapes; gzip compressed once and served when asked."""
    import gzip

    import requests

    from pveguard.monitor.exporter import serve

    from .receivers import free_port

    polls = [1]
    views: list[int] = []

    def view() -> ExportView:
        views.append(polls[0])
        base = _view()
        return ExportView(sweep=base.sweep, states=base.states, polls=polls[0], errors=base.errors,
                          poll_duration=base.poll_duration, compliance_score=base.compliance_score,
                          severities=base.severities)

    port = free_port()
    server = serve(f"127.0.0.1:{port}", view, get_key=lambda: polls[0])
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        first = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=5).content
        again = [requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=5).content for _ in range(3)]
        zipped = [requests.get(url, headers={"Accept-Encoding": "gzip, deflate"}, timeout=5, stream=True)
                  for _ in range(3)]
        assert all(r.headers["Content-Encoding"] == "gzip" for r in zipped)
        bodies = [r.raw.read() for r in zipped]
        assert again == [first] * 3 and len(set(bodies)) == 1 and gzip.decompress(bodies[0]) == first
        assert views == [1] and server.cache.renders == 1 and server.cache.compressions == 1  # type: ignore[attr-defined]
        assert b"pveguard_polls_total 1.0" in first
        polls[0] = 2  # the next poll: rendered anew on the next scrape, once
        second = [requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=5).content for _ in range(2)]
        assert second[0] == second[1] != first and b"pveguard_polls_total 2.0" in second[0]
        assert views == [1, 2] and server.cache.renders == 2  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
