"""Done-when, end to end against pvesim: one API call per poll, cpu 95 % -> pending -> firing after the
sustain -> exactly one notification at a real webhook receiver, a real SMTP server and a real
Alertmanager; 78 % stays firing (hysteresis); a restart mid-alert sends nothing twice; 70 % resolves
with one resolved notification each; a flapping guest goes quiet; a stopped managed container alerts.

The monitor's clock is pvesim's clock, which the test advances instead of sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pveguard.monitor.alerts import Rule
from pveguard.monitor.collector import ProxmoxResourcesSource
from pveguard.monitor.engine import Monitor, load_states
from pveguard.monitor.notify import AlertmanagerNotifier, EmailNotifier, WebhookNotifier
from pveguard.store import Store

from .receivers import (
    ALERTMANAGER,
    Alertmanager,
    SmtpReceiver,
    WebhookReceiver,
    alertmanager,
    smtp_receiver,
    webhook_receiver,
)

testing = pytest.importorskip("pvesim.testing")
pytestmark = pytest.mark.skipif(not testing.schema_available(), reason="PVE API schema not found (pvesim)")

POLL = 30.0
RULES = [Rule("cpu", "cpu", 80, sustain=120, hysteresis=5, renotify=4 * 3600, severity="warning"),
         Rule("memory", "memory", 85, sustain=120, hysteresis=5, renotify=4 * 3600),
         Rule("down", "down", 1, sustain=60, hysteresis=0, renotify=4 * 3600, severity="critical",
              managed_only=True)]


@dataclass
class Rig:
    sim: Any
    state_dir: Path
    webhook: WebhookReceiver
    smtp: SmtpReceiver
    am: Alertmanager | None

    def monitor(self) -> Monitor:
        """A fresh monitor process: new store connection, new source, same state directory."""
        clock = self.sim.sim.now
        notifiers: list[Any] = [WebhookNotifier(self.webhook.url, b"k", name="hook"),
                                EmailNotifier(self.smtp.host, self.smtp.port, "pveguard@test", ["ops@test"],
                                              name="mail")]
        if self.am:
            notifiers.append(AlertmanagerNotifier(self.am.url, name="am"))
        source = ProxmoxResourcesSource(self.sim.proxmoxer("token"), ["db"], clock=clock)
        return Monitor(Store(self.state_dir), source, RULES, notifiers, clock=clock)

    def advance(self, seconds: float = POLL) -> None:
        self.sim.control("POST", "/clock", {"advance": seconds})

    def set(self, vmid: int, **doc: Any) -> None:
        self.sim.control("POST", f"/guests/{vmid}", doc)

    def notes(self, target: str) -> list[str]:
        return [f"{b['kind']}:{b['rule']}" for b in self.webhook.bodies() if b["target"] == target]

    def mails(self, target: str) -> list[str]:
        return [m["Subject"].split("]")[0].strip("[") for m in self.smtp.messages if target in m.get_payload()]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with testing.running(nodes=1, guests=4, seed=7, running_share=1.0, qemu_share=0.0) as sim, \
            webhook_receiver() as hook, smtp_receiver() as smtp:
        vmids = sorted(g["vmid"] for g in sim.control("GET", "/guests"))
        for v in vmids:  # calm, steady guests unless a test says otherwise
            sim.control("POST", f"/guests/{v}", {"cpu": 0.10, "mem": 100 * 1024 * 1024})
        if os.path.exists(ALERTMANAGER):
            with alertmanager(tmp_path / "am") as am:
                yield Rig(sim, tmp_path / "state", hook, smtp, am)
        else:  # pragma: no cover - the setup script installs it
            yield Rig(sim, tmp_path / "state", hook, smtp, None)


def _state(mon: Monitor, rule: str, target: str) -> str:
    st = load_states(mon.store).get((rule, target))
    return st.state if st else "inactive"


@pytest.mark.slow
def test_cpu_alert_lifecycle_one_notification_each(rig: Rig) -> None:
    if rig.am is None:
        pytest.skip("prometheus-alertmanager not installed")
    vmid = sorted(g["vmid"] for g in rig.sim.control("GET", "/guests"))[0]
    target = f"lxc/{vmid}"
    mon = rig.monitor()
    rig.sim.control("DELETE", "/calls")

    rig.set(vmid, cpu=0.95)
    res = mon.poll()
    assert _state(mon, "cpu", target) == "pending" and res.events == []
    for _ in range(3):  # 30, 60, 90 s: still inside the 120 s sustain
        rig.advance()
        mon.poll()
        assert _state(mon, "cpu", target) == "pending"
    rig.advance()
    res = mon.poll()  # 120 s
    assert _state(mon, "cpu", target) == "firing"
    assert [e.kind for e in res.events] == ["firing"]
    assert rig.notes(target) == ["firing:cpu"]
    assert rig.mails(target) == ["FIRING"]
    (alert,) = rig.am.alerts()
    assert alert["labels"]["id"] == target and alert["labels"]["alertname"] == "PveguardCpu"

    rig.set(vmid, cpu=0.78)  # inside the hysteresis band: stays firing, says nothing
    for _ in range(3):
        rig.advance()
        mon.poll()
        assert _state(mon, "cpu", target) == "firing"

    mon = rig.monitor()  # restart mid-alert
    for _ in range(2):
        rig.advance()
        assert mon.poll().events == []
    assert _state(mon, "cpu", target) == "firing"
    assert rig.notes(target) == ["firing:cpu"] and rig.mails(target) == ["FIRING"]

    rig.set(vmid, cpu=0.70)
    rig.advance()
    res = mon.poll()
    assert [e.kind for e in res.events] == ["resolved"]
    assert _state(mon, "cpu", target) == "inactive"
    assert rig.notes(target) == ["firing:cpu", "resolved:cpu"]
    assert rig.mails(target) == ["FIRING", "RESOLVED"]
    assert rig.am.alerts() == []
    assert rig.am.received() == {"firing": 1.0, "resolved": 1.0}
    for _ in range(3):  # quiet afterwards
        rig.advance()
        assert mon.poll().events == []
    assert len(rig.webhook.requests) == 2 and len(rig.smtp.messages) == 2

    # one GET /cluster/resources per poll, nothing else (1 + 3 + 1 + 3 + 2 + 1 + 3 polls)
    calls = rig.sim.control("GET", "/calls")
    assert calls["calls"] == {"GET /cluster/resources": 14}


@pytest.mark.slow
def test_flapping_guest_goes_quiet(rig: Rig) -> None:
    vmid = sorted(g["vmid"] for g in rig.sim.control("GET", "/guests"))[1]
    target = f"lxc/{vmid}"
    mon = rig.monitor()
    for _ in range(4):  # fire (sustain 120 s), then drop, four times over 12 minutes
        rig.set(vmid, cpu=0.95)
        for _ in range(5):
            mon.poll()
            rig.advance()
        rig.set(vmid, cpu=0.20)
        mon.poll()
        rig.advance()
    # the first two episodes are told; then it is flapping and the next ones are held back
    assert rig.notes(target) == ["firing:cpu", "resolved:cpu", "firing:cpu", "resolved:cpu"]
    st = load_states(mon.store)[("cpu", target)]
    assert st.flapping(rig.sim.sim.now())


@pytest.mark.slow
def test_managed_container_down(rig: Rig) -> None:
    vmid = sorted(g["vmid"] for g in rig.sim.control("GET", "/guests"))[2]
    rig.set(vmid, config={"tags": "pveguard"})
    target = f"lxc/{vmid}"
    mon = rig.monitor()
    mon.poll()
    rig.set(vmid, status="stopped")
    for _ in range(3):
        rig.advance()
        mon.poll()
    assert rig.notes(target) == ["firing:down"]
    rig.set(vmid, status="running")
    rig.advance()
    mon.poll()
    assert rig.notes(target) == ["firing:down", "resolved:down"]
    # unmanaged guests that stop do not alert
    other = sorted(g["vmid"] for g in rig.sim.control("GET", "/guests"))[3]
    rig.set(other, status="stopped")
    for _ in range(4):
        rig.advance()
        mon.poll()
    assert rig.notes(f"lxc/{other}") == []
