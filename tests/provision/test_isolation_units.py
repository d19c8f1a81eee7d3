"""security.isolation without a cluster: names, rule parsing, the datacenter decision, the lxc note."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from pveguard.backends.base import Backend
from pveguard.errors import ConfigError
from pveguard.provision.firewall import OTHER_NOTE, firewall_plan
from pveguard.provision.plan import Plan
from pveguard.security.isolation import (
    MGMT_IPSET,
    Ct,
    FwObserved,
    Rule,
    datacenter_decision,
    desired_firewall,
    group_name,
    parse_inbound,
    plan_firewall,
    vlan_violations,
)
from pveguard.strategy.models import Strategy

PVE_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9\-_]+")  # pve-firewall's $security_group_name_pattern


@pytest.mark.parametrize("role", ["monitoring", "backup", "a", "x" * 40, "with space", "rôle"])
def test_group_names_fit_pve(role: str) -> None:
    name = group_name(role)
    assert PVE_GROUP.fullmatch(name) and 2 <= len(name) <= 18, name
    assert group_name("x" * 40) != group_name("x" * 41)


def test_allowed_inbound_parses_and_bad_entries_say_how() -> None:
    assert parse_inbound("tcp/22 from management") == Rule("tcp", "22", f"+{MGMT_IPSET}")
    assert parse_inbound("TCP/443 from any") == Rule("tcp", "443", "")
    assert parse_inbound("udp/5000-5010 from 10.0.0.5/8") == Rule("udp", "5000:5010", "10.0.0.0/8")
    for bad in ("ssh from management", "tcp/22", "tcp/22 from the moon"):
        with pytest.raises(ConfigError) as e:
            parse_inbound(bad)
        assert "allowed_inbound" in e.value.message


def test_datacenter_is_turned_on_only_when_safe() -> None:
    assert "network.management.cidr is not set" in str(datacenter_decision({}, [], [], "10.0.0.2", False))
    assert "outside network.management.cidr" in str(datacenter_decision({}, [], ["192.168.1.0/24"], "10.0.0.2",
                                                                       False))
    assert datacenter_decision({}, [], ["10.0.0.0/8"], "10.0.0.2", False) is None
    assert datacenter_decision({}, [], ["10.0.0.0/8"], None, True) is None  # pvesh on the node
    ssh_drop = [{"type": "in", "action": "DROP", "dport": "22", "enable": 1}]
    assert "port 22" in str(datacenter_decision({}, ssh_drop, ["10.0.0.0/8"], "10.0.0.2", False))


def _seen(**kw: Any) -> FwObserved:
    base: dict[str, Any] = {"cluster_options": {}, "cluster_rules": [], "ipsets": {}, "groups": {},
                            "guest_options": {}, "guest_rules": {}}
    return FwObserved(**{**base, **kw})


def test_plan_shows_guest_drift_as_old_to_new() -> None:
    s = Strategy()
    want = desired_firewall(s)
    groups = {g: [{**r.params(), "pos": i} for i, r in enumerate(rules)] for g, rules in want.groups.items()}
    ct = Ct("pve-monitoring", 101, "pve1")
    seen = _seen(ipsets={MGMT_IPSET: []}, groups=groups,
                 guest_options={101: {"enable": 0, "policy_in": "ACCEPT"}},
                 guest_rules={101: [{"type": "group", "action": "pvg-monitoring", "enable": 0, "pos": 0}]})
    texts = [c.text() for c in plan_firewall(want, seen, [ct]).changes]
    assert texts == ["ct/101 firewall: off -> on", "ct/101 policy_in: ACCEPT -> DROP",
                     "ct/101 log_level_in: (unset) -> info",
                     "ct/101 rules: group pvg-monitoring (disabled) -> group pvg-monitoring"]


def test_traffic_watch_wants_drops_logged_and_leaves_an_admins_level_alone() -> None:
    ct = Ct("pve-monitoring", 101, "pve1")

    def texts(s: Strategy, level: str | None) -> list[str]:
        want = desired_firewall(s)
        groups = {g: [{**r.params(), "pos": i} for i, r in enumerate(rules)] for g, rules in want.groups.items()}
        opts: dict[str, Any] = {"enable": 1, "policy_in": "DROP", **({"log_level_in": level} if level else {})}
        seen = _seen(ipsets={MGMT_IPSET: []}, groups=groups, guest_options={101: opts},
                     guest_rules={101: [{"type": "group", "action": "pvg-monitoring", "enable": 1, "pos": 0}]})
        return [c.text() for c in plan_firewall(want, seen, [ct]).changes if c.target == "ct/101"]

    assert texts(Strategy(), None) == ["ct/101 log_level_in: (unset) -> info"]
    assert texts(Strategy(), "nolog") == ["ct/101 log_level_in: nolog -> info"]
    assert texts(Strategy(), "debug") == []  # any level logs the drops
    off = Strategy.model_validate({"security": {"network": {"traffic_monitoring": False}}})
    assert texts(off, None) == []  # the watch is off: the log level is left as it is


def test_a_backend_without_a_firewall_plans_none_and_says_so() -> None:
    fp = firewall_plan(Strategy(), cast(Backend, object()), Plan())
    assert fp.changes == [] and fp.notes == [OTHER_NOTE]


def test_a_container_without_firewall_is_left_alone() -> None:
    s = Strategy()
    s.containers[0].network.firewall = False
    want = desired_firewall(s)
    assert s.containers[0].name not in want.group_of
    cts = [Ct(s.containers[0].name, 101, "pve1"), Ct(s.containers[1].name, 102, "pve1")]
    targets = {c.target for c in plan_firewall(want, _seen(ipsets={MGMT_IPSET: []}), cts).changes}
    assert "ct/102" in targets and "ct/101" not in targets


@pytest.mark.parametrize(("vlans", "separate", "want"), [(True, True, 100), (True, "per-role", 101),
                                                         (False, True, None), (True, False, None)])
def test_security_network_vlans_and_separate_vlans_decide_the_tag(vlans: bool, separate: Any, want: Any) -> None:
    s = Strategy()
    s.security.network.vlans = vlans
    s.network.isolation.separate_vlans = separate
    assert s.container_vlan(s.containers[1]) == want
    s.containers[1].network.vlan = 42  # a container's own vlan always wins
    assert s.container_vlan(s.containers[1]) == 42


def test_without_vlans_an_untagged_container_is_no_violation() -> None:
    s = Strategy()
    ct = Ct(s.containers[0].name, 101, "pve1")
    untagged = {101: {"net0": "name=eth0,bridge=vmbr0,firewall=1"}}
    assert [v.kind for v in vlan_violations(s, [ct], untagged, [])] == ["untagged"]
    s.security.network.vlans = False
    assert vlan_violations(s, [ct], untagged, [("other", 200, {"net0": "bridge=vmbr0,tag=100"})]) == []
