"""pvesim's firewall API answers as pve-firewall's does (src/PVE/API2/Firewall/Rules.pm, Groups.pm,
IPSet.pm, src/PVE/Firewall.pm): rule positions, default `enable`, `moveto`, IP set entries, group
names, errors and digests."""

from __future__ import annotations

from typing import Any

from pvesim.testing import SimHandle

G = "/cluster/firewall/groups"


def _ok(sim: SimHandle, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
    status, reason, body = sim.api(method, path, params)
    assert status == 200, (method, path, status, reason, body)
    return body["data"] if body else None


def _err(sim: SimHandle, method: str, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    status, reason, body = sim.api(method, path, params)
    assert status != 200, (method, path)
    return status, (body or {}).get("errors") or reason


def test_a_new_rule_goes_first_and_is_disabled_unless_enabled(pvesim: SimHandle) -> None:
    _ok(pvesim, "POST", G, {"group": "web"})
    _ok(pvesim, "POST", f"{G}/web", {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "80"})
    _ok(pvesim, "POST", f"{G}/web", {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "443",
                                     "enable": 1, "pos": 5})
    rules = _ok(pvesim, "GET", f"{G}/web")
    assert [(r["pos"], r["dport"], r["enable"]) for r in rules] == [(0, "443", 1), (1, "80", 0)]


def test_moveto_puts_the_rule_before_the_one_at_that_position(pvesim: SimHandle) -> None:
    _ok(pvesim, "POST", G, {"group": "web"})
    for port in ("3", "2", "1", "0"):  # each goes first: 0 1 2 3
        _ok(pvesim, "POST", f"{G}/web", {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": port})
    _ok(pvesim, "PUT", f"{G}/web/0", {"moveto": 2})
    assert [r["dport"] for r in _ok(pvesim, "GET", f"{G}/web")] == ["1", "0", "2", "3"]
    _ok(pvesim, "PUT", f"{G}/web/3", {"moveto": 0})
    assert [r["dport"] for r in _ok(pvesim, "GET", f"{G}/web")] == ["3", "1", "0", "2"]
    _ok(pvesim, "PUT", f"{G}/web/0", {"moveto": 9})
    assert [r["dport"] for r in _ok(pvesim, "GET", f"{G}/web")] == ["1", "0", "2", "3"]


def test_group_names_and_errors(pvesim: SimHandle) -> None:
    _ok(pvesim, "POST", G, {"group": "web"})
    assert _err(pvesim, "POST", G, {"group": "web"}) == (400, {"group": "Security group 'web' already exists"})
    # a stale digest does not matter when creating, only when renaming
    _ok(pvesim, "POST", G, {"group": "db", "digest": "0" * 40})
    status, _ = _err(pvesim, "POST", G, {"group": "web2", "rename": "web", "digest": "0" * 40})
    assert status == 500
    assert _err(pvesim, "POST", G, {"group": "x9", "rename": "nosuch"}) == \
        (400, {"group": "Security group 'nosuch' does not exist"})
    # PVE's pattern and 18 characters at most
    assert _err(pvesim, "POST", G, {"group": "pveguard-monitoring"})[0] == 400
    assert _err(pvesim, "POST", G, {"group": "1web"})[0] == 400
    _ok(pvesim, "POST", f"{G}/db", {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "5432"})
    assert _err(pvesim, "DELETE", f"{G}/db") == (500, "Security group 'db' is not empty")


def test_ipset_entries_go_first_normalized_and_duplicates_are_refused(pvesim: SimHandle) -> None:
    base = "/cluster/firewall/ipset"
    _ok(pvesim, "POST", base, {"name": "mgmt"})
    assert _err(pvesim, "POST", base, {"name": "mgmt"}) == (400, {"name": "IPSet 'mgmt' already exists"})
    _ok(pvesim, "POST", f"{base}/mgmt", {"cidr": "10.1.2.3/16"})
    _ok(pvesim, "POST", f"{base}/mgmt", {"cidr": "192.168.1.7/32"})
    assert [e["cidr"] for e in _ok(pvesim, "GET", f"{base}/mgmt")] == ["192.168.1.7", "10.1.0.0/16"]
    assert _err(pvesim, "POST", f"{base}/mgmt", {"cidr": "10.1.9.9/16"}) == \
        (400, {"cidr": "address '10.1.0.0/16' already exists"})
    assert _err(pvesim, "POST", f"{base}/mgmt", {"cidr": "0.0.0.0/0"}) == \
        (400, {"cidr": "a zero prefix is not allowed in ipset entries"})
    _ok(pvesim, "DELETE", f"{base}/mgmt/10.1.0.0%2F16")
    assert [e["cidr"] for e in _ok(pvesim, "GET", f"{base}/mgmt")] == ["192.168.1.7"]
    assert _err(pvesim, "DELETE", f"{base}/mgmt") == (500, "IPSet 'mgmt' is not empty")


def test_guest_options_take_only_pve_policies(pvesim: SimHandle) -> None:
    pvesim.control("POST", "/guests", {"count": 1, "type": "lxc"})
    g = next(g for g in _ok(pvesim, "GET", "/cluster/resources", {"type": "vm"}) if g["type"] == "lxc")
    vmid, node = g["vmid"], g["node"]
    base = f"/nodes/{node}/lxc/{vmid}/firewall/options"
    digest = _ok(pvesim, "GET", base)["digest"]
    _ok(pvesim, "PUT", base, {"enable": 1, "policy_in": "DROP", "digest": digest})
    assert _err(pvesim, "PUT", base, {"policy_in": "DENY"})[0] == 400
    assert _err(pvesim, "PUT", base, {"enable": 0, "digest": digest})[0] == 500  # stale digest
    got = _ok(pvesim, "GET", base)
    assert (got["enable"], got["policy_in"]) == (1, "DROP")


def _lxc(sim: SimHandle) -> dict[str, Any]:
    return next(g for g in sim.control("GET", "/guests") if g["type"] == "lxc")


def test_connections_are_judged_and_logged_as_pve_firewall_would(pvesim_factory: Any, tmp_path: Any) -> None:
    sim: SimHandle = pvesim_factory(guests=2, seed=2, qemu_share=0.0, running_share=1.0)
    g = _lxc(sim)
    base = f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall"
    pkt = {"vmid": g["vmid"], "direction": "in", "src": "198.51.100.9", "dst": "10.0.0.5", "proto": "tcp",
           "dport": 5432}
    # the datacenter firewall off: nothing is compiled, nothing filtered or logged
    _ok(sim, "PUT", base + "/options", {"enable": 1, "log_level_in": "info"})
    assert sim.control("POST", "/firewall/connect", pkt) == {"action": "ACCEPT", "logged": []}
    _ok(sim, "PUT", "/cluster/firewall/options", {"enable": 1})
    got = sim.control("POST", "/firewall/connect", pkt)  # policy_in defaults to DROP
    assert got["action"] == "DROP" and len(got["logged"]) == 1
    assert got["logged"][0].startswith(f"{g['vmid']} 6 veth{g['vmid']}i0-IN ") and " policy DROP: " in got["logged"][0]
    # a rule that accepts it, with its own log level: "ACCEPT: " at that level
    _ok(sim, "POST", base + "/rules", {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "5000:6000",
                                       "source": "198.51.100.0/24", "log": "warning", "enable": 1})
    got = sim.control("POST", "/firewall/connect", pkt)
    assert got["action"] == "ACCEPT" and f"{g['vmid']} 4 veth{g['vmid']}i0-IN " in got["logged"][0]
    assert " ACCEPT: " in got["logged"][0]
    # outbound: policy_out ACCEPT has no log rule; nolog logs nothing either
    out = {**pkt, "direction": "out", "src": "10.0.0.5", "dst": "203.0.113.7", "dport": 443}
    assert sim.control("POST", "/firewall/connect", out) == {"action": "ACCEPT", "logged": []}
    _ok(sim, "PUT", base + "/options", {"policy_out": "REJECT", "log_level_out": "nolog"})
    assert sim.control("POST", "/firewall/connect", out) == {"action": "REJECT", "logged": []}
    # the guest's endpoint shows its lines; paging as dump_logfile_by_filehandle (n from 1, default 50)
    lines = _ok(sim, "GET", base + "/log")
    assert [x["n"] for x in lines] == [1, 2] and all(x["t"].startswith(f"{g['vmid']} ") for x in lines)
    assert _ok(sim, "GET", base + "/log", {"start": 1, "limit": 1}) == [{"n": 2, "t": lines[1]["t"]}]
    assert _ok(sim, "GET", base + "/log", {"since": 4_000_000_000}) == [{"n": 1, "t": "no content"}]
    assert [x["t"] for x in _ok(sim, "GET", f"/nodes/{g['node']}/firewall/log")] == [x["t"] for x in lines]
    # the log survives a save
    path = tmp_path / "s.json"
    sim.control("POST", "/save", {"path": str(path)})
    import json

    assert json.loads(path.read_text())["fw_log"][g["node"]] == [x["t"] for x in lines]
