"""Firewall and VLAN isolation on plain LXC, for real (slow; root, lxc, dnsmasq, nft needed).

Three containers on two VLANs (separate_vlans: per-role): web-a and web-b (role web, VLAN 100) and
db (role db, VLAN 101), on pveguard's own network on a bridge of the test's own. `apply` writes the
nftables isolation table; connections tried from inside the containers (independently of
`isolation check`, then by it) prove that an admitted port answers, one no rule admits does not,
and nothing crosses the VLANs; the drop counter of the probed container grows. A table deleted by
hand shows in `plan` and `isolation check`, and comes back with `apply` and with the pre-start hook;
removing a container removes its rules, removing the last one the table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.backends import lxc_gateway, lxc_isolation, lxc_net
from pveguard.backends.base import Guest
from pveguard.backends.lxc import LxcBackend
from tests.jsonshape import blocks, check

from .test_lxc_own_network import free_pool, ip_forward_restored, pveguard

pytestmark = pytest.mark.slow
__all__ = ["ip_forward_restored"]  # the fixture, used by name

ADMITTED = 8080  # allowed_inbound: tcp/8080 from any
HIDDEN = 5432  # web-b listens here, no rule admits it
DOC = Path(__file__).resolve().parents[2] / "docs/json.md"


def container(name: str, role: str) -> dict[str, Any]:
    return {"name": name, "role": role, "resources": {"cores": 1, "memory": "256M", "swap": "128M", "storage": "1G"},
            "template": "debian-12-standard"}


def connect(b: LxcBackend, g: Guest, address: str, port: int) -> str:
    """From inside g: open, closed (refused) or filtered (no answer within 2 s)."""
    r = b.exec(g, ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], timeout=30)
    if r.returncode == 0:
        return "open"
    if r.returncode == 124:
        return "filtered"
    assert "refused" in r.stderr, r
    return "closed"


def address(b: LxcBackend, g: Guest) -> str:
    r = b.exec(g, ["ip", "-4", "-j", "addr", "show", "dev", "eth0"])
    return str(json.loads(r.stdout)[0]["addr_info"][0]["local"])


def listing(bridge: str) -> str:
    return lxc_isolation.listing(bridge) or ""


def test_three_containers_on_two_vlans_are_isolated(lxc_env: Any, ip_forward_restored: Any) -> None:
    for tool in ("dnsmasq", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/debian-packages.txt lists it)")
    b = lxc_env.backend
    bridge = f"{lxc_env.prefix}i"
    pool = free_pool()
    b = LxcBackend(b.config.model_copy(update={"subnet": pool}))  # the strategy's network, as the CLI sees it
    web_segment = lxc_gateway.segment_subnet(pool, 100)
    strategy = lxc_env.root / "strategy.yaml"
    env = lxc_env.init_env()
    doc = yaml.safe_load(strategy.read_text())
    doc["network"].update(bridge=bridge, management={"bridge": bridge, "cidr": str(web_segment)},
                          isolation={"separate_vlans": "per-role", "firewall_rules": True})
    doc["security"]["network"]["allowed_inbound"] = [f"tcp/{ADMITTED} from any", "tcp/22 from management"]
    doc["target"]["backend"] = "lxc"
    doc["target"]["lxc"].update(lxcpath=b.config.lxcpath, disk_dir=b.config.disk_dir,
                                template_cache=b.config.template_cache, subnet=pool)
    doc["containers"] = [container("web-a", "web"), container("web-b", "web"), container("db", "db")]
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))

    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    guests = {g.name: g for g in b.list_guests()}
    a, w, d = guests["web-a"], guests["web-b"], guests["db"]
    assert [b.get_config(g)["net0"].split("tag=")[1].split(",")[0] for g in (a, w, d)] == ["100", "100", "101"]
    table = listing(bridge)
    for g in (a, w, d):
        assert f"chain in_{g.vmid} " in table and f"counter drop_{g.vmid} " in table
    assert b.isolation_state(bridge) is None

    # web-b serves the admitted port and one no rule admits.
    for port in (ADMITTED, HIDDEN):
        r = b.exec(w, ["sh", "-c", f"setsid nc -lk {port} </dev/null >/dev/null 2>&1 &"])
        assert r.ok, r
    wb = address(b, w)
    assert ipaddress_in(wb, str(web_segment))

    # Probes of our own, before the command's: same VLAN admitted / not admitted, across VLANs.
    before = lxc_isolation.dropped_counters().get(w.vmid, 0)
    assert connect(b, a, wb, ADMITTED) == "open"
    assert connect(b, a, wb, 22) == "closed"  # admitted from management (web-a is in it); nothing listens
    assert connect(b, a, wb, HIDDEN) == "filtered"
    assert connect(b, d, wb, ADMITTED) == "filtered"  # admitted from any, but not across VLANs
    after = lxc_isolation.dropped_counters().get(w.vmid, 0)
    assert after > before, (before, after)
    # without the table the same port answers: the drop above is the table's, not a deaf port
    subprocess.run(["nft", "delete", "table", "bridge", lxc_isolation.table_name(bridge)], check=True)
    assert connect(b, a, wb, HIDDEN) == "open"

    # A deleted table is drift: named by the check, shown by plan, restored by apply.
    code, out, err = pveguard(env, "isolation", "check", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"], out + err
    assert {v["kind"] for v in report["violations"]} >= {"table-missing", "disallowed-open"}
    code, out, err = pveguard(env, "plan", "--json")
    changes = json.loads(out)["firewall"]["changes"]
    assert [(c["target"], c["old"]) for c in changes] == [(f"nft/{lxc_isolation.table_name(bridge)}", "missing")]
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    code, out, err = pveguard(env, "plan", "--detailed-exitcode")
    assert code == 0, out + err

    before = lxc_isolation.dropped_counters().get(w.vmid, 0)
    started = time.monotonic()
    code, out, err = pveguard(env, "isolation", "check", "--json")
    took = time.monotonic() - started
    report = json.loads(out)
    assert code == 0 and report["ok"], out + err
    print(f"isolation check of 3 containers with {len(report['probes'])} probes: {took:.1f}s")
    probes = {(p["from"], p["to"], p["port"]): p for p in report["probes"]}
    assert probes[("web-a", "web-b", ADMITTED)]["result"] == "open"
    assert probes[("web-a", "web-b", HIDDEN)]["result"] == "filtered"
    assert any(p["from"] == "db" and p["to"] == "web-b" and p["result"] == "filtered" for p in report["probes"])
    assert all(p["ok"] for p in report["probes"])
    assert lxc_isolation.dropped_counters().get(w.vmid, 0) > before
    shape = dict(blocks(DOC.read_text(), "pveguard "))["pveguard isolation check --json"]
    assert check(report, shape) == []  # the documented shape, with probes in it

    # Anything else joining a container VLAN's segment is named (here a hand-made veth).
    intruder = f"{lxc_env.prefix}x"
    subprocess.run(["ip", "link", "add", intruder, "type", "veth", "peer", "name", f"{lxc_env.prefix}y"], check=True)
    subprocess.run(["ip", "link", "set", intruder, "master", lxc_net.vlan_bridge_name(bridge, 100)], check=True)
    code, out, err = pveguard(env, "isolation", "check", "--json", "--no-probe")
    report = json.loads(out)
    assert code == 1 and [(v["name"], v["kind"]) for v in report["violations"]] == [(intruder, "unmanaged-on-vlan")]
    assert report["probes"] == []
    subprocess.run(["ip", "link", "del", intruder], check=True)

    # Each change is in the ledger with before/after.
    code, out, _ = pveguard(env, "audit-log", "show", "--json", "--action", "provision.firewall")
    entries = json.loads(out)
    assert {e["target"] for e in entries} >= {f"ct/{g.vmid}" for g in (a, w, d)}
    assert all("before" in e["details"] and "after" in e["details"] for e in entries)

    # After a reboot lxc-autostart starts the container: its pre-start hook brings the table back.
    b.stop(a)
    subprocess.run(["nft", "delete", "table", "bridge", lxc_isolation.table_name(bridge)], check=True)
    start = subprocess.run(["lxc-start", "-P", b.config.lxcpath, "-n", str(a.vmid)], capture_output=True, text=True,
                           check=False)
    assert start.returncode == 0, start.stderr
    assert f"chain in_{a.vmid} " in listing(bridge) and b.isolation_state(bridge) is None

    # Removing a container removes its rules; the last one takes the table with it.
    doc["containers"] = [c for c in doc["containers"] if c["name"] != "db"]
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes", "--prune")
    assert code == 0, out + err
    table = listing(bridge)
    assert f"in_{d.vmid}" not in table and f"drop_{d.vmid}" not in table and f"in_{w.vmid}" in table
    assert d.vmid not in lxc_isolation.dropped_counters()
    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes", "--prune")
    assert code == 0, out + err
    assert lxc_isolation.listing(bridge) is None
    assert lxc_env.leftovers() == []


def ipaddress_in(addr: str, net: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)
