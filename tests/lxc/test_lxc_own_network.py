"""The default strategy on a plain Debian host, end to end (slow; root, lxc, dnsmasq, nft needed).

What a new user does after `./bootstrap run`: `pveguard apply` of the default strategy, whose bridge
does not exist on a host without PVE. pveguard makes its own network (bridge, a per-VLAN segment
for VLAN 100, DHCP, NAT); the four seed containers come up with a DHCP address on the segment and
install a package from the Debian mirror through the NAT (the only outside address they reach).
`apply --prune` of an empty strategy removes the containers and the whole network again.

The bridge name and subnet are the test's own, so nothing here touches a real network.
"""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
import subprocess
import time
from typing import Any

import pytest
import yaml

from pveguard.backends import lxc_gateway

from .conftest import pveguard

pytestmark = pytest.mark.slow
SEEDS = ["pve-monitoring", "pve-backup-manager", "pve-dev-tools", "pve-api-gateway"]
PACKAGE = "less"  # small, not in the template: proves apt reached the mirror through the NAT


def free_pool() -> str:
    """A private /16 no route of this host touches."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                            check=False).stdout
    taken = [ipaddress.ip_network(w, strict=False) for w in routes.split() if _is_net(w)]
    for second in random.Random().sample(range(200, 250), 50):
        pool = ipaddress.ip_network(f"10.{second}.0.0/16")
        if not any(pool.overlaps(t) for t in taken):
            return str(pool)
    pytest.skip("no free 10.x.0.0/16 for the test network")


def _is_net(word: str) -> bool:
    try:
        ipaddress.ip_network(word, strict=False)
    except ValueError:
        return False
    return True


@pytest.fixture
def ip_forward_restored() -> Any:
    before = lxc_gateway.IP_FORWARD.read_text()
    saved = lxc_gateway.RUN_DIR / "ip_forward.saved"
    had_saved = saved.exists()
    yield
    lxc_gateway.IP_FORWARD.write_text(before)
    if not had_saved:
        saved.unlink(missing_ok=True)


def test_default_strategy_applies_with_pveguards_own_network(lxc_env: Any, ip_forward_restored: Any) -> None:
    for tool in ("dnsmasq", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/debian-packages.txt lists it)")
    b = lxc_env.backend
    bridge = f"{lxc_env.prefix}n"
    pool = free_pool()
    strategy = lxc_env.root / "strategy.yaml"
    env = lxc_env.init_env()
    doc = yaml.safe_load(strategy.read_text())
    assert [c["name"] for c in doc["containers"]] == SEEDS and doc["network"]["bridge"] == "vmbr0"
    doc["network"]["bridge"] = bridge
    doc["target"]["lxc"].update(lxcpath=b.config.lxcpath, disk_dir=b.config.disk_dir,
                                template_cache=b.config.template_cache, subnet=pool)
    for c in doc["containers"]:
        c["packages"] = [PACKAGE]
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))

    started = time.monotonic()
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    applied = time.monotonic() - started

    segment = lxc_gateway.segment_subnet(pool, doc["network"]["container_vlan"])
    guests = {g.name: g for g in b.list_guests()}
    assert sorted(guests) == sorted(SEEDS)
    for name, g in guests.items():
        assert g.status == "running", name
        r = b.exec(g, ["ip", "-4", "-j", "addr", "show", "dev", "eth0"])
        addrs = [a["local"] for i in json.loads(r.stdout) for a in i["addr_info"]]
        assert any(ipaddress.ip_address(a) in segment for a in addrs), (name, addrs, segment)
        assert b.exec(g, ["dpkg", "-s", PACKAGE]).ok, name
    print(f"apply of the four seed containers with {PACKAGE}: {applied:.0f}s")

    # After a reboot lxc-autostart, not pveguard, starts onboot containers: their pre-start hook
    # brings back DHCP and NAT. (Here: one container stopped, dnsmasq and the table gone.)
    g = guests["pve-api-gateway"]
    b.stop(g)
    lxcpath = b.config.lxcpath
    lxc_gateway.stop_dnsmasq(f"{bridge}v100", lxc_gateway.RUN_DIR)
    subprocess.run(["nft", "delete", "table", "ip", lxc_gateway.table_name(bridge)], check=True)
    start = subprocess.run(["lxc-start", "-P", lxcpath, "-n", str(g.vmid)], capture_output=True, text=True,
                           check=False)
    assert start.returncode == 0, start.stderr
    assert (lxc_gateway.RUN_DIR / f"dnsmasq-{bridge}v100.pid").exists()
    assert lxc_gateway.table_name(bridge) in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                                            text=True, check=False).stdout

    # The network is pveguard's: marked, and removed with the last container.
    assert lxc_gateway.owned(bridge)
    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes", "--prune")
    assert code == 0, out + err
    assert b.list_guests() == []
    assert lxc_env.leftovers() == []
    assert not (lxc_gateway.RUN_DIR / f"dnsmasq-{bridge}v100.pid").exists()
