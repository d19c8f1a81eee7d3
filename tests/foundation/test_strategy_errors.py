"""Broken strategy files: every error is reported at once, with its line, column and a hint."""

from __future__ import annotations

import textwrap

import pytest

from pveguard.strategy.load import check_text

CONTAINER = """\
containers:
  - name: web
    role: gateway
    resources:
      cores: 1
      memory: {memory}
"""

# (id, yaml, [(line, col, loc, message substring)], severity-of-first)
CASES: list[tuple[str, str, list[tuple[int, int, str, str]]]] = [
    ("bad-size", CONTAINER.format(memory="2XB"),
     [(6, 15, "containers[0].resources.memory", "'2XB' is not a size; use e.g. 512M or 2G")]),
    ("negative-size", CONTAINER.format(memory="-5"),
     [(6, 15, "containers[0].resources.memory", "sizes cannot be negative")]),
    ("tiny-memory", CONTAINER.format(memory="1M"),
     [(6, 15, "containers[0].resources.memory", "too little memory")]),
    # the ledger cannot be switched off: refused, never accepted and ignored
    ("audit-logging-off", "security:\n  access:\n    audit_logging: false\n",
     [(3, 20, "security.access.audit_logging", "audit logging cannot be turned off")]),
    # named by the seed but not built: refused with what to do instead, never quietly acting as 'alert'
    ("on-exhausted-restore", "emergency:\n  container_failure:\n    on_exhausted: restore-last-backup\n",
     [(3, 19, "emergency.container_failure.on_exhausted",
       "'restore-last-backup' is not built yet (after the alert, restore the container from its last backup by "
       "hand ('pct restore' on PVE)); use 'alert' or 'quarantine'")]),
    ("on-exhausted-migrate", "emergency:\n  container_failure:\n    on_exhausted: migrate\n",
     [(3, 19, "emergency.container_failure.on_exhausted", "'migrate' is not built yet")]),
    ("on-exhausted-unknown", "emergency:\n  container_failure:\n    on_exhausted: reboot\n",
     [(3, 19, "emergency.container_failure.on_exhausted", "'reboot' is not allowed; use one of 'alert' or "
       "'quarantine'")]),
    ("unknown-top-key", "monitorng:\n  poll_interval: 30s\n",
     [(1, 1, "monitorng", "unknown key 'monitorng'; did you mean 'monitoring'?")]),
    ("unknown-nested-key", "monitoring:\n  treshold: {cpu: 80}\n",
     [(2, 3, "monitoring.treshold", "did you mean 'thresholds'?")]),
    ("unknown-key-no-suggestion", "network:\n  zebra: 1\n",
     [(2, 3, "network.zebra", "unknown key 'zebra'; allowed here: bridge")]),
    ("vlan-too-big", "network:\n  container_vlan: 5000\n",
     [(2, 19, "network.container_vlan", "VLAN 5000 is outside 1..4094")]),
    ("vlan-zero-in-container", CONTAINER.format(memory="1G") + "    network:\n      vlan: 0\n",
     [(8, 13, "containers[0].network.vlan", "VLAN 0 is outside 1..4094")]),
    ("threshold-over-100", "monitoring:\n  thresholds:\n    cpu: 150\n",
     [(3, 10, "monitoring.thresholds.cpu", "must be at most 100")]),
    ("threshold-zero", "monitoring:\n  thresholds:\n    disk: 0\n",
     [(3, 11, "monitoring.thresholds.disk", "must be at least 1")]),
    ("bad-duration", "monitoring:\n  poll_interval: soon\n",
     [(2, 18, "monitoring.poll_interval", "'soon' is not a duration; use e.g. 30s")]),
    ("bad-bool", "installation_policy:\n  allow_core_only: maybe\n",
     [(2, 20, "installation_policy.allow_core_only", "'maybe' is not true or false")]),
    ("bad-backend", "target:\n  backend: docker\n",
     [(2, 12, "target.backend", "'docker' is not allowed; use one of 'auto', 'proxmox' or 'lxc'")]),
    ("missing-cores", "containers:\n  - name: web\n    role: x\n    resources:\n      memory: 1G\n",
     [(5, 7, "containers[0].resources.cores", "required but missing")]),
    ("missing-resources", "containers:\n  - name: web\n    role: x\n",
     [(2, 5, "containers[0].resources", "required but missing")]),
    ("bad-hostname", CONTAINER.format(memory="1G").replace("name: web", "name: Web_1"),
     [(2, 11, "containers[0].name", "'Web_1' is not a valid hostname")]),
    ("duplicate-names", CONTAINER.format(memory="1G") + CONTAINER.format(memory="1G").split("\n", 1)[1],
     [(7, 11, "containers[1].name", "duplicate container name 'web' (also containers[0])")]),
    ("duplicate-key", "network:\n  bridge: vmbr0\n  bridge: vmbr1\n",
     [(3, 3, "network.bridge", "duplicate key")]),
    ("bad-ip", CONTAINER.format(memory="1G") + "    network:\n      ip: 10.0.0.300/24\n",
     [(8, 11, "containers[0].network.ip", "is not 'dhcp' or an address in CIDR form")]),
    ("ip-without-prefix", CONTAINER.format(memory="1G") + "    network:\n      ip: 10.0.0.5\n",
     [(8, 11, "containers[0].network.ip", "needs a prefix length, e.g. 10.0.0.5/24")]),
    ("cores-not-number", CONTAINER.format(memory="1G").replace("cores: 1", "cores: two"),
     [(5, 14, "containers[0].resources.cores", "'two' is not a whole number")]),
    ("list-expected", "containers: web\n",
     [(1, 13, "containers", "expected a list")]),
    ("mapping-expected", "network: vmbr0\n",
     [(1, 10, "network", "expected a mapping")]),
    ("bad-schedule", "backup:\n  containers:\n    schedule: ''\n",
     [(3, 15, "backup.containers.schedule", "empty schedule")]),
    ("bad-calendar-event", "backup:\n  host_config:\n    schedule: 'mon..fry 2:00'\n",
     [(3, 15, "backup.host_config.schedule", "'fry' is neither a keyword nor a weekday")]),
    ("unknown-feature", CONTAINER.format(memory="1G") + "    features: {nesting: true, warp: true}\n",
     [(7, 15, "containers[0].features", "unknown feature 'warp'")]),
    ("webhook-without-url", "monitoring:\n  notify:\n    - type: webhook\n",
     [(3, 7, "monitoring.notify[0]", "a webhook notifier needs 'url'")]),
    ("offsite-without-target", "backup:\n  offsite:\n    type: sftp\n",
     [(3, 5, "backup.offsite", "offsite type 'sftp' needs 'target'")]),
    ("health-check-incomplete", CONTAINER.format(memory="1G") + "    health_checks:\n      - type: tcp\n",
     [(8, 9, "containers[0].health_checks[0]", "a tcp health check needs 'port'")]),
    ("version-wrong", "version: 2\n",
     [(1, 10, "version", "2 is not allowed; use one of 1")]),
    ("top-level-not-mapping", "- a\n- b\n",
     [(1, 1, "", "the strategy must be a mapping of sections")]),
    ("yaml-syntax-unclosed", "network:\n  bridge: [vmbr0\n",
     [(3, 1, "", "YAML syntax error")]),
    ("yaml-syntax-indent", "network:\n  bridge: vmbr0\n   vlan: 3\n",
     [(3, 8, "", "YAML syntax error")]),
    ("yaml-tab", "network:\n\tbridge: vmbr0\n",
     [(2, 1, "", "YAML syntax error")]),
]


@pytest.mark.parametrize("text,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_broken_strategy_is_reported_with_position(text: str, expected: list[tuple[int, int, str, str]]) -> None:
    strategy, problems = check_text(text, "strategy.yaml")
    assert strategy is None, "a broken file must not load"
    errors = [p for p in problems if p.severity == "error"]
    for line, col, loc, message in expected:
        matching = [p for p in errors if p.loc == loc and message in p.message]
        assert matching, f"no error {loc}: {message!r} in {[str(p) for p in errors]}"
        p = matching[0]
        assert (p.line, p.col) == (line, col), str(p)
        assert str(p).startswith(f"strategy.yaml:{line}:{col}: ")


def test_all_errors_are_reported_at_once() -> None:
    text = textwrap.dedent("""\
        monitorng: {}
        network:
          container_vlan: 9999
        containers:
          - name: web
            role: x
            resources: {cores: 1, memory: 2XB}
        """)
    strategy, problems = check_text(text, "s.yaml")
    assert strategy is None
    locs = {p.loc for p in problems}
    assert {"monitorng", "network.container_vlan", "containers[0].resources.memory"} <= locs


def test_host_overcommit_is_a_warning_not_an_error() -> None:
    text = "resources:\n  host: {cores: 1, memory: 4G}\n"
    strategy, problems = check_text(text, "s.yaml")
    assert strategy is not None
    warnings = [p for p in problems if p.severity == "warning"]
    assert any("more than the host can give" in p.message for p in warnings)
    assert any("cores" in p.message for p in warnings)


def test_issue_example_message_format() -> None:
    text = "containers:\n  - name: a\n    role: x\n    resources: {cores: 1, memory: 1G}\n" \
           "  - name: b\n    role: x\n    resources:\n      cores: 1\n      memory: 2XB\n"
    _, problems = check_text(text, "strategy.yaml")
    assert "strategy.yaml:9:15: containers[1].resources.memory: '2XB' is not a size; use e.g. 512M or 2G" in \
        [p.text() for p in problems]
