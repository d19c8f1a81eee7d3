"""The poll cycle's edges: a failing source is reported, not raised, and queued notifications still go."""

from __future__ import annotations

from pathlib import Path

from pveguard.errors import BackendError
from pveguard.monitor.alerts import Rule
from pveguard.monitor.collector import Sweep, parse_resources
from pveguard.monitor.engine import Monitor, load_states
from pveguard.monitor.exporter import ExportView, render
from pveguard.store import Store

from .receivers import webhook_receiver


class ScriptedSource:
    """Returns prepared sweeps, or raises like an unreachable API."""

    name = "scripted"

    def __init__(self) -> None:
        self.cpu: float | None = 0.1
        self.now = 0.0

    def sweep(self) -> Sweep:
        if self.cpu is None:
            raise BackendError("GET /cluster/resources failed: 595 connection refused")
        item = {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "n", "status": "running", "name": "web",
                "cpu": self.cpu, "maxcpu": 1, "mem": 1, "maxmem": 10, "uptime": 10}
        return Sweep(self.now, parse_resources([item]))


def test_source_failure_is_reported_and_delivery_continues(tmp_path: Path) -> None:
    src = ScriptedSource()
    with webhook_receiver() as hook:
        hook.fail_next = 100  # the receiver is down when the alert fires
        from pveguard.monitor.notify import WebhookNotifier

        mon = Monitor(Store(tmp_path), src, [Rule("cpu", "cpu", 80, sustain=0)],
                      [WebhookNotifier(hook.url, name="hook", attempts=1)], clock=lambda: src.now)
        src.cpu = 0.9
        res = mon.poll()
        assert [e.kind for e in res.events] == ["firing"] and res.delivery == {"sent": 0, "failed": 1}
        hook.fail_next = 0
        src.cpu, src.now = None, 30.0  # now the API is down too
        res = mon.poll()
        assert res.error and "connection refused" in res.error
        assert res.delivery == {"sent": 1, "failed": 0}  # the queued firing still went out
        assert [b["kind"] for b in hook.bodies()] == ["firing"]
        assert load_states(mon.store)[("cpu", "lxc/101")].state == "firing"  # an outage does not resolve
        assert mon.errors == 1 and mon.polls == 2
        text = render(ExportView(mon.last_good, res.states, mon.polls, mon.errors)).decode()
        assert "pveguard_poll_errors_total 1.0" in text


def test_series_follow_the_strategy_metrics(tmp_path: Path) -> None:
    from pveguard.monitor.engine import series_for

    assert series_for(["cpu_usage"]) == {"cpu", "memory", "disk"}
    assert series_for(["network_traffic", "disk_io"]) == {"cpu", "memory", "disk", "net_in", "net_out",
                                                          "disk_read", "disk_write"}
    src = ScriptedSource()
    mon = Monitor(Store(tmp_path), src, [], clock=lambda: src.now, series_metrics={"cpu"})
    mon.poll()
    assert mon.series.latest("lxc/101", "cpu") == [10.0]
    assert mon.series.latest("lxc/101", "memory") == []


def test_rates_survive_a_restart(tmp_path: Path) -> None:
    class Counting(ScriptedSource):
        def sweep(self) -> Sweep:
            sw = super().sweep()
            item = {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "n", "status": "running",
                    "netin": int(self.now * 100), "uptime": 1000 + int(self.now)}
            return Sweep(self.now, parse_resources([item]) + sw.samples[1:])

    src = Counting()
    Monitor(Store(tmp_path), src, [], clock=lambda: src.now).poll()
    src.now = 30.0
    res = Monitor(Store(tmp_path), src, [], clock=lambda: src.now).poll()  # a new process
    assert res.derived["lxc/101"].values["net_in"] == 100.0
    src.now = 30.0 + 7200  # counters older than an hour are not used
    res = Monitor(Store(tmp_path), src, [], clock=lambda: src.now).poll()
    assert "net_in" not in res.derived["lxc/101"].values
