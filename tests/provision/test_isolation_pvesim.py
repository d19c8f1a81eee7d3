"""Firewall and VLAN isolation on pvesim (issue 13): apply converges it, drift shows in plan and in
`isolation check`, apply restores it with intent and result in the ledger."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pveguard.security.isolation import MGMT_IPSET, group_name

from .conftest import Env
from .test_apply_pvesim import EXPECTED, ledger_entries, managed

pytest.importorskip("pvesim.testing")


def _api(penv: Env, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
    status, reason, body = penv.sim.api(method, path, params)
    assert status == 200, (method, path, status, reason, body)
    return body["data"] if body else None


def _fw(penv: Env, g: dict[str, Any], what: str) -> Any:
    return _api(penv, "GET", f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall/{what}")


def _mgmt_here(doc: dict[str, Any]) -> None:
    # pvesim listens on 127.0.0.1: a management network covering it lets pveguard turn the datacenter on
    doc.setdefault("network", {}).setdefault("management", {})["cidr"] = "127.0.0.0/8"


def test_apply_puts_every_managed_ct_behind_its_firewall(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    plan = penv.json("plan", capsys=capsys)
    fw = plan["firewall"]
    assert {c["target"] for c in fw["changes"]} >= {f"ipset/{MGMT_IPSET}", "group/pvg-monitoring"}
    assert any("pveguard will not turn it on: network.management.cidr is not set" in n for n in fw["notes"])
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    guests = managed(penv)
    for name, g in guests.items():
        opts = _fw(penv, g, "options")
        assert (opts.get("enable"), opts.get("policy_in")) == (1, "DROP"), name
        rules = _fw(penv, g, "rules")
        role = EXPECTED[name][4]
        assert [(r["type"], r["action"], r["enable"]) for r in rules] == [("group", group_name(role), 1)]
    mon = _api(penv, "GET", "/cluster/firewall/groups/pvg-monitoring")
    got = [(r["proto"], r["dport"], r.get("source"), r["enable"]) for r in mon]
    assert got[0] == ("tcp", "22", f"+{MGMT_IPSET}", 1)  # allowed_inbound first
    assert ("tcp", "3000", f"+{MGMT_IPSET}", 1) in got and ("tcp", "9090", f"+{MGMT_IPSET}", 1) in got
    assert [(r["proto"], r["dport"]) for r in _api(penv, "GET", "/cluster/firewall/groups/pvg-backup")] == \
        [("tcp", "22")]
    # the datacenter firewall stays off (no management network set); nothing left to do
    assert _api(penv, "GET", "/cluster/firewall/options").get("enable", 0) == 0
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "Nothing to do" in out, out
    assert "will not turn it on" in out
    # the check says the truth: rules exist but have no effect while the datacenter is off
    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 1 and "datacenter firewall is off" in out


def test_drift_shows_in_plan_and_check_and_apply_restores_it(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(_mgmt_here)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert _api(penv, "GET", "/cluster/firewall/options")["enable"] == 1
    assert "127.0.0.0/8" in [e["cidr"] for e in _api(penv, "GET", "/cluster/firewall/ipset/management")]
    code, out, err = penv.run("isolation", "check", capsys=capsys)
    assert code == 0, out + err
    assert "all 4 managed container(s) isolated" in out
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out

    g = managed(penv)["pve-monitoring"]
    base = f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall"
    _api(penv, "PUT", base + "/options", {"enable": 0})  # by hand, through the API
    other = managed(penv)["pve-api-gateway"]
    _api(penv, "PUT", f"/nodes/{other['node']}/lxc/{other['vmid']}/firewall/options", {"policy_in": "ACCEPT"})
    grp = _api(penv, "GET", "/cluster/firewall/groups/pvg-monitoring")
    port_3000 = next(r for r in grp if r["dport"] == "3000")
    _api(penv, "DELETE", f"/cluster/firewall/groups/pvg-monitoring/{port_3000['pos']}")

    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 1
    assert f"VIOLATION pve-monitoring (CT {g['vmid']}): the guest firewall is off" in out
    assert f"VIOLATION pve-api-gateway (CT {other['vmid']}): policy_in is ACCEPT, not DROP" in out
    assert "security group pvg-monitoring lacks tcp/3000 from +pveguard-mgmt" in out
    code, out, _ = penv.run("isolation", "check", "--json", capsys=capsys)
    import json

    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert {"name": "pve-monitoring", "vmid": g["vmid"], "kind": "firewall-off",
            "detail": "the guest firewall is off"} in report["violations"]

    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 2
    assert f"ct/{g['vmid']} firewall: off -> on (pve-monitoring)" in out
    assert f"ct/{other['vmid']} policy_in: ACCEPT -> DROP (pve-api-gateway)" in out
    flat = " ".join(out.split())  # a long change wraps at words at the terminal's width
    assert re.search(r"group/pvg-monitoring rules: tcp/22 from \+pveguard-mgmt; tcp/9090 .* -> "
                     r"tcp/22 from \+pveguard-mgmt; tcp/3000", flat), out

    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert _api(penv, "GET", base + "/options")["enable"] == 1
    assert penv.run("isolation", "check", capsys=capsys)[0] == 0
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0
    fw = [e for e in ledger_entries(penv, "provision.firewall") if e.target == f"ct/{g['vmid']}"]
    assert [e.action for e in fw[-2:]] == ["provision.firewall.intent", "provision.firewall"]
    assert fw[-1].details["before"] == {"firewall": "off"} and fw[-1].details["after"] == {"firewall": "on"}
    assert fw[-1].details["result"] == "ok"


def test_unmanaged_guest_on_the_container_vlan_is_named(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(_mgmt_here)
    assert penv.run("apply", capsys=capsys)[0] == 0
    intruder = _api(penv, "GET", "/cluster/nextid")
    _api(penv, "POST", "/nodes/pve1/lxc", {"vmid": intruder, "hostname": "intruder", "ostemplate":
                                           "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
                                           "storage": "local-lvm", "net0": "name=eth0,bridge=vmbr0,tag=100,ip=dhcp"})
    import time

    for _ in range(100):
        if any(x["vmid"] == int(intruder) for x in penv.lxc()):
            break
        time.sleep(0.05)
    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 1
    assert f"VIOLATION intruder (CT {intruder}): not managed by this installation but on the container VLAN 100" \
        in out


def test_untagged_managed_container_is_named(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(_mgmt_here)
    assert penv.run("apply", capsys=capsys)[0] == 0
    g = managed(penv)["pve-backup-manager"]
    cfg = penv.config(g["vmid"])
    net = ",".join(kv for kv in cfg["net0"].split(",") if not kv.startswith("tag="))
    _api(penv, "PUT", f"/nodes/{g['node']}/lxc/{g['vmid']}/config", {"net0": net})
    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 1
    assert f"VIOLATION pve-backup-manager (CT {g['vmid']}): net0 has no VLAN tag on the management bridge " \
           f"(wants 100)" in out


def test_per_role_vlans(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.setdefault("network", {}).setdefault("isolation", {}).update(separate_vlans="per-role"))
    assert penv.run("apply", capsys=capsys)[0] == 0
    tags = {n: dict(kv.split("=", 1) for kv in penv.config(g["vmid"])["net0"].split(","))["tag"]
            for n, g in managed(penv).items()}
    assert tags == {"pve-monitoring": "100", "pve-backup-manager": "101", "pve-dev-tools": "102",
                    "pve-api-gateway": "103"}


def test_a_bad_allowed_inbound_entry_is_a_config_error(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.setdefault("security", {}).setdefault("network", {}).update(allowed_inbound=["ssh"]))
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 2 and "allowed_inbound: 'ssh' is not '<tcp|udp>/<port> from" in err
    assert "Traceback" not in out + err


def _groups(penv: Env) -> dict[str, str]:
    return {g["group"]: g.get("comment", "") for g in _api(penv, "GET", "/cluster/firewall/groups")}


def test_a_group_no_role_uses_goes_unless_a_rule_still_references_it(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Only this installation's groups (the instance in the comment) go, never one a guest's rule still
    names (PVE itself would delete it: Rules.pm refuses only a group with rules); an older pveguard's group
    the strategy still uses gets the mark, one it no longer uses is left alone."""
    from .test_apply_pvesim import instance

    assert penv.run("apply", capsys=capsys)[0] == 0
    mine = f"pveguard role rules instance={instance(penv)}"
    assert {g: c for g, c in _groups(penv).items() if g.startswith("pvg-")} == {
        "pvg-monitoring": mine, "pvg-backup": mine, "pvg-devtools": mine, "pvg-gateway": mine}
    # another installation's group, a group an older pveguard made (no mark), and our monitoring group
    # as an older pveguard left it
    _api(penv, "POST", "/cluster/firewall/groups", {"group": "pvg-ci", "comment": "pveguard role rules instance=0ther"})
    _api(penv, "POST", "/cluster/firewall/groups", {"group": "pvg-old", "comment": "pveguard role rules"})
    _api(penv, "POST", "/cluster/firewall/groups", {"group": "pvg-monitoring", "rename": "pvg-monitoring",
                                                    "comment": "pveguard role rules"})
    guests = managed(penv)
    dev, gw = guests["pve-dev-tools"], guests["pve-api-gateway"]
    penv.edit(lambda d: d.update(containers=[c for c in d["containers"]
                                             if c["name"] not in ("pve-dev-tools", "pve-api-gateway")]))

    # both left containers are kept (no --prune) and their rules still name their groups: nothing goes
    fw = penv.json("plan", capsys=capsys)["firewall"]
    got = [(c["target"], c["field"], c["old"], c["new"]) for c in fw["changes"]]
    assert got == [("group/pvg-monitoring", "comment", "pveguard role rules", mine)], got
    kept = [n for n in fw["notes"] if "is kept: still referenced" in n]
    assert len(kept) == 2 and f"CT {dev['vmid']} (pve-dev-tools)" in kept[0] and "pvg-devtools" in kept[0]
    assert f"CT {gw['vmid']} (pve-api-gateway)" in kept[1] and "pvg-gateway" in kept[1]
    assert any("pvg-old is no longer used" in n and "left alone" in n for n in fw["notes"])
    assert not any("pvg-ci" in n for n in fw["notes"])
    # with --prune the dev-tools container goes first in the same apply: its reference does not count
    fw = penv.json("plan", "--prune", capsys=capsys)["firewall"]
    assert ("group/pvg-devtools", "group", "tcp/22 from +pveguard-mgmt; tcp/8080 from +pveguard-mgmt", "(none)") \
        in [(c["target"], c["field"], c["old"], c["new"]) for c in fw["changes"]]

    # the admin takes the gateway's group rule out of its guest firewall: now the group can go
    base = f"/nodes/{gw['node']}/lxc/{gw['vmid']}/firewall/rules"
    rule = next(r for r in _api(penv, "GET", base) if r["type"] == "group")
    _api(penv, "DELETE", f"{base}/{rule['pos']}", {"digest": rule["digest"]})
    code, out, err = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 2 and "group/pvg-gateway group: tcp/22 from +pveguard-mgmt; tcp/80" in " ".join(out.split()), out
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    groups = _groups(penv)
    assert "pvg-gateway" not in groups
    assert {"pvg-devtools", "pvg-ci", "pvg-old", "pvg-monitoring", "pvg-backup"} <= set(groups)
    assert groups["pvg-monitoring"] == mine and groups["pvg-ci"].endswith("instance=0ther")
    fw = penv.json("plan", capsys=capsys)["firewall"]
    assert fw["changes"] == [], fw
    entries = [e for e in ledger_entries(penv, "provision.firewall") if e.target == "group/pvg-gateway"]
    assert [e.details.get("result") for e in entries[-2:]] == [None, "ok"]
    assert entries[-1].details["after"] == {"group": "(none)"}
    assert entries[-1].details["before"]["group"].startswith("tcp/22 from +pveguard-mgmt")


def test_a_group_is_kept_while_a_guests_rules_cannot_be_read(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown is not unused: a guest whose firewall rules PVE will not show keeps every leftover group."""
    assert penv.run("apply", capsys=capsys)[0] == 0
    gw = managed(penv)["pve-api-gateway"]
    other = _api(penv, "GET", "/cluster/nextid")
    _api(penv, "POST", "/nodes/pve1/lxc", {"vmid": other, "hostname": "someones", "ostemplate":
                                           "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
                                           "storage": "local-lvm"})
    import time

    for _ in range(100):
        if any(x["vmid"] == int(other) for x in penv.lxc()):
            break
        time.sleep(0.05)
    penv.edit(lambda d: d.update(containers=[c for c in d["containers"] if c["name"] != "pve-api-gateway"]))
    base = f"/nodes/{gw['node']}/lxc/{gw['vmid']}/firewall/rules"
    rule = next(r for r in _api(penv, "GET", base) if r["type"] == "group")
    _api(penv, "DELETE", f"{base}/{rule['pos']}", {"digest": rule["digest"]})
    penv.sim.control("POST", "/faults", {"method": "GET", "path": rf"^/nodes/pve1/lxc/{other}/firewall/rules$",
                                         "status": 403, "message": "Permission check failed (/vms/x, VM.Audit)"})
    fw = penv.json("plan", capsys=capsys)["firewall"]
    assert fw["changes"] == [], fw
    assert any("pvg-gateway is no longer used by the strategy but is kept" in n
               and f"CT {other} (someones), whose firewall rules could not be read" in n for n in fw["notes"]), fw
    penv.sim.control("DELETE", "/faults")
    fw = penv.json("plan", capsys=capsys)["firewall"]
    assert [c["target"] for c in fw["changes"]] == ["group/pvg-gateway"], fw
