"""The traffic watch end to end on pvesim (issue 13): `apply` sets the guests' log_level_in so that
pve-firewall logs what their DROP policy drops; a connection the guest firewall drops (judged by
pvesim against the rules, IP sets and policy `apply` wrote) lands in the node's firewall log;
`pveguard monitor` reads it (one call per node and read), counts it per container, exports it and
fires `fw_drops` through the alert engine; a destination first seen after the learning window fires
`new_destination` naming the container and the destination until it is accepted into the baseline.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pveguard.monitor.exporter import ExportView, render
from pveguard.monitor.traffic import traffic_view
from pveguard.store import Store

from .conftest import Env
from .test_apply_pvesim import managed
from .test_isolation_pvesim import _api, _mgmt_here

pytest.importorskip("pvesim.testing")


def _watch(read_every: str = "1s", learning: str = "1d", drops: int = 10) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        _mgmt_here(doc)
        doc.setdefault("monitoring", {})["traffic"] = {"read_every": read_every, "learning": learning,
                                                        "drops_per_minute": drops}
    return edit


def _connect(penv: Env, **pkt: Any) -> dict[str, Any]:
    return dict(penv.sim.control("POST", "/firewall/connect", pkt))


def _alerts(penv: Env, capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], str]:
    doc = penv.json("alerts", capsys=capsys)
    return {(a["rule"], a["target"]): a["state"] for a in doc["alerts"]}


def _poll(penv: Env, capsys: pytest.CaptureFixture[str], wait: float = 1.1) -> dict[str, Any]:
    time.sleep(wait)  # the watch reads at most every read_every (1 s here)
    code, out, err = penv.run("monitor", "--once", "--json", capsys=capsys)
    assert code == 0, out + err
    import json

    return dict(json.loads(out))


def test_dropped_connections_are_counted_exported_and_alerted(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(_watch())
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    g = managed(penv)["pve-monitoring"]
    base = f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall"
    opts = _api(penv, "GET", base + "/options")
    assert (opts.get("enable"), opts.get("policy_in"), opts.get("log_level_in")) == (1, "DROP", "info")
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "Nothing to do" in out, out  # the log level is part of the converged state

    _poll(penv, capsys, wait=0)  # the watch's first read: nothing dropped yet
    assert _alerts(penv, capsys).get(("fw_drops", f"lxc/{g['vmid']}")) is None

    # allowed by the role's group (tcp/22 from the management IP set): accepted, not logged
    ok = _connect(penv, vmid=g["vmid"], direction="in", src="127.0.0.5", dst="10.10.0.5", proto="tcp", dport=22)
    assert ok == {"action": "ACCEPT", "logged": []}
    # a port nothing allows: the DROP policy takes it and logs it (30 attempts)
    dropped = _connect(penv, vmid=g["vmid"], direction="in", src="198.51.100.9", dst="10.10.0.5", proto="tcp",
                       dport=5432, count=30)
    assert dropped["action"] == "DROP" and len(dropped["logged"]) == 30
    assert dropped["logged"][0].startswith(f"{g['vmid']} 6 veth{g['vmid']}i0-IN ")
    assert " policy DROP: " in dropped["logged"][0] and "DPT=5432" in dropped["logged"][0]
    # what PVE's own endpoints serve: the node's log and the guest's own lines
    lines = _api(penv, "GET", base + "/log", {"limit": 100})
    assert [x["t"] for x in lines] == dropped["logged"] and lines[0]["n"] == 1

    penv.reset_calls()
    _poll(penv, capsys)
    reads = {k: v for k, v in penv.calls().items() if "firewall/log" in k}
    assert reads == {"GET /nodes/{node}/firewall/log": 3}  # one per node (3 nodes), never one per guest
    doc = penv.json("monitor", "traffic", capsys=capsys)
    mine = next(c for c in doc["containers"] if c["id"] == f"lxc/{g['vmid']}")
    assert mine["dropped_total"] == 30 and mine["drops_per_minute"] >= 10
    others = [c for c in doc["containers"] if c["id"] != f"lxc/{g['vmid']}"]
    assert others and all(c["dropped_total"] == 0 for c in others)
    assert _alerts(penv, capsys)[("fw_drops", f"lxc/{g['vmid']}")] == "firing"

    # the same lines are not counted twice by the next read, and the alert clears without new drops
    _poll(penv, capsys)
    doc = penv.json("monitor", "traffic", capsys=capsys)
    assert next(c for c in doc["containers"] if c["id"] == f"lxc/{g['vmid']}")["dropped_total"] == 30
    assert ("fw_drops", f"lxc/{g['vmid']}") not in _alerts(penv, capsys)

    store = Store(penv.dir / "state")
    try:
        text = render(ExportView(sweep=None, traffic=traffic_view(store, time.time(), 86400))).decode()
    finally:
        store.close()
    assert f'pveguard_container_firewall_dropped_total{{id="lxc/{g["vmid"]}",name="pve-monitoring"}} 30.0' in text


def test_a_new_destination_after_learning_fires_until_accepted(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(_watch(learning="3s"))
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    g = managed(penv)["pve-dev-tools"]
    target = f"lxc/{g['vmid']}"
    base = f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall"
    # the admin's egress filtering with logging: pve-firewall logs outbound connections only where a rule or
    # an outbound DROP/REJECT policy carries a log level (a policy ACCEPT logs nothing)
    _api(penv, "POST", base + "/rules", {"type": "out", "action": "ACCEPT", "log": "info", "enable": 1})
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out  # an admin's own guest rule is left alone

    _poll(penv, capsys, wait=0)  # learning starts
    out1 = _connect(penv, vmid=g["vmid"], direction="out", src="10.10.0.7", dst="10.10.0.53", proto="udp", dport=53)
    assert out1["action"] == "ACCEPT" and len(out1["logged"]) == 1 and "ACCEPT: " in out1["logged"][0]
    _poll(penv, capsys)
    doc = penv.json("monitor", "traffic", capsys=capsys)
    mine = next(c for c in doc["containers"] if c["id"] == target)
    assert mine["learning"] is True
    assert [(d["dest"], d["state"]) for d in mine["destinations"]] == [("udp/10.10.0.53:53", "learned")]

    time.sleep(3)  # the learning window ends
    _connect(penv, vmid=g["vmid"], direction="out", src="10.10.0.7", dst="10.10.0.53", proto="udp", dport=53)
    _connect(penv, vmid=g["vmid"], direction="out", src="10.10.0.7", dst="203.0.113.7", proto="tcp", dport=443)
    poll = _poll(penv, capsys)
    new_target = f"{target}>tcp/203.0.113.7:443"
    assert [(n["rule"], n["target"], n["name"]) for n in poll["notifications"] if n["kind"] == "firing"] == \
        [("new_destination", new_target, "pve-dev-tools")]
    assert _alerts(penv, capsys) == {("new_destination", new_target): "firing"}  # the known one is quiet
    code, out, _ = penv.run("monitor", "traffic", capsys=capsys)
    assert code == 0 and "tcp/203.0.113.7:443" in out

    # not the same destination (no port): taken into the baseline ahead of time, and said so
    code, out, err = penv.run("monitor", "traffic", "accept", "pve-dev-tools", "tcp/203.0.113.7", capsys=capsys)
    assert code == 0 and "not seen yet" in out and "new ones: tcp/203.0.113.7:443" in out, out
    assert _alerts(penv, capsys) == {("new_destination", new_target): "firing"}
    code, out, err = penv.run("monitor", "traffic", "accept", "pve-dev-tools", "tcp/203.0.113.7:443", capsys=capsys)
    assert code == 0 and "accepted tcp/203.0.113.7:443" in out, out + err
    poll = _poll(penv, capsys)
    assert [(n["kind"], n["target"]) for n in poll["notifications"]] == [("resolved", new_target)]
    assert _alerts(penv, capsys) == {}
    doc = penv.json("monitor", "traffic", capsys=capsys)
    mine = next(c for c in doc["containers"] if c["id"] == target)
    assert {d["dest"]: d["state"] for d in mine["destinations"]} == \
        {"udp/10.10.0.53:53": "learned", "tcp/203.0.113.7:443": "accepted", "tcp/203.0.113.7": "accepted"}
    assert mine["new_total"] == 1
    code, out, err = penv.run("audit-log", "show", "--action", "monitor.traffic.accept", "--json", capsys=capsys)
    assert code == 0 and "tcp/203.0.113.7:443" in out

    code, out, err = penv.run("monitor", "traffic", "accept", "nope", "tcp/1.2.3.4:5", capsys=capsys)
    assert code == 2 and "knows no container 'nope'" in err and "Traceback" not in err
    code, out, err = penv.run("monitor", "traffic", "accept", "pve-dev-tools", "tcp/not-an-ip:5", capsys=capsys)
    assert code == 2 and "is not an IP address" in err
