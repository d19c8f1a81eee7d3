"""Whether an alert was sent anywhere: with no notifier configured, `alerts` and `monitor` say so
instead of "notified: yes" and "1 notification(s)" (issue 11). The alert fires through the real
engine and store; `pveguard alerts` runs as a subprocess on that state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pveguard.monitor.alerts import Rule
from pveguard.monitor.cli import status_table
from pveguard.monitor.engine import Monitor
from pveguard.monitor.notify import WebhookNotifier
from pveguard.store import Store

from .receivers import webhook_receiver
from .test_engine import ScriptedSource

WEBHOOK_STRATEGY = """\
version: 1
monitoring:
  notify:
    - type: webhook
      name: hook
      url: {url}
"""


def fire(state: Path, notifiers: list[WebhookNotifier]) -> str:
    """One poll that fires a cpu alert; the title `monitor --once` shows for it."""
    src = ScriptedSource()
    src.cpu = 0.9
    with Store(state) as store:
        mon = Monitor(store, src, [Rule("cpu", "cpu", 80, sustain=0)], notifiers, clock=lambda: src.now)
        res = mon.poll()
        assert [e.kind for e in res.events] == ["firing"]
        return str(status_table(mon).title)


def alerts(state: Path, strategy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PVEGUARD_STATE_DIR": str(state), "PVEGUARD_STRATEGY": str(strategy), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pveguard", "alerts", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_without_a_notifier_nothing_claims_to_be_notified(tmp_path: Path) -> None:
    title = fire(tmp_path / "state", [])
    assert "1 alert event(s), not sent: no notifier configured" in title and "notification(s)" not in title
    strategy = tmp_path / "strategy.yaml"
    strategy.write_text("version: 1\n")
    r = alerts(tmp_path / "state", strategy)
    assert r.returncode == 0, r.stderr
    assert "no notifier" in r.stdout and " yes " not in r.stdout
    assert "nothing is configured to notify" in r.stdout and "monitoring.notify" in r.stdout
    data = json.loads(alerts(tmp_path / "state", strategy, "--json").stdout)
    [alert] = data["alerts"]
    assert data["notifiers_configured"] == 0
    assert (alert["notified"], alert["notification"], alert["delivered_to"]) == (False, "no notifier", [])


def test_with_a_notifier_delivered_is_yes(tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        assert "1 notification(s)" in fire(tmp_path / "state", [WebhookNotifier(hook.url, name="hook", attempts=1)])
        strategy = tmp_path / "strategy.yaml"
        strategy.write_text(WEBHOOK_STRATEGY.format(url=hook.url))
        data = json.loads(alerts(tmp_path / "state", strategy, "--json").stdout)
    [alert] = data["alerts"]
    assert data["notifiers_configured"] == 1
    assert (alert["notified"], alert["notification"], alert["delivered_to"]) == (True, "yes", ["hook"])
