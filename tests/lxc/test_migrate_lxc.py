"""`pveguard migrate` for real (slow; root, lxc, dnsmasq, nft, the Debian mirror through the test's NAT).

A "host" container (a strategy container of its own, with nginx and nftables from the mirror) runs
nginx serving a page and `ticker`, a hand-made stateful service that appends to /var/lib/ticker/log.
Both are migrated into pve-api-gateway with `--source lxc:<host>`:

* nginx: a client requests the host's address every 50 ms from before the first step until after
  the last; no request that started after the switch fails, and the longest run of failures (the
  gap between stopping nginx on the host and the port forward) is below 2 s. The first run is
  killed (SIGKILL, at the boundary after `install`, through PVEGUARD_MIGRATE_KILL_AFTER); running it
  again converges (the ticker's run is killed inside migrate-data, after the stop on the host, and
  converges too). Rollback brings nginx back on the host (reinstalled from the mirror) and removes
  the forward.
* ticker: every line the host wrote before the final sync is in the container's log; after rollback
  the host's log holds the lines the container wrote meanwhile.
* the target keeps its firewall (plain LXC's nftables isolation): migrate admits the moved port from
  the host's address only (a port not moved stays filtered), `plan`/`apply`/`isolation check` treat
  the rule as desired state, the host's own 127.0.0.1:80 is forwarded, and rollback removes the rule
  and sets ip_forward and route_localnet back to 0.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import pveguard
from .test_lxc_own_network import free_pool, ip_forward_restored  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow
PAGE = "<h1>served by the host before, by the container after</h1>\n"
TICKER = "#!/bin/sh\nmkdir -p /var/lib/ticker\nwhile true; do date +%s.%N >> /var/lib/ticker/log; sleep 0.1; done\n"
TICKER_UNIT = """[Unit]
Description=hand-made stateful ticker (migrate test)

[Service]
ExecStart=/usr/local/bin/ticker
StateDirectory=ticker

[Install]
WantedBy=multi-user.target
"""


class Client(threading.Thread):
    """GET http://address/ every 50 ms: (start time, ok) per request."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.results: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import urllib.request

        while not self.stop.is_set():
            t0 = time.time()
            try:
                # a long timeout: the validate step's backup freezes the container (lxc suspend mode); a
                # request then waits in the listen queue instead of failing, as it would on PVE
                with urllib.request.urlopen(f"http://{self.address}/", timeout=10) as r:
                    ok = r.status == 200 and r.read().decode() == PAGE
            except OSError:
                ok = False
            self.results.append((t0, time.time(), ok))
            self.stop.wait(max(0.0, 0.05 - (time.time() - t0)))

    def longest_gap(self) -> float:
        """Seconds from the first failed request of a run of failures to the next good answer."""
        worst = 0.0
        start: float | None = None
        for t0, _t1, ok in self.results:
            if not ok and start is None:
                start = t0
            elif ok and start is not None:
                worst = max(worst, t0 - start)
                start = None
        return worst


def reach(b: Any, guest: Any, address: str, port: int) -> str:
    """From inside `guest`: open (connected), closed (refused: the firewall let it through) or filtered."""
    r = b.exec(guest, ["timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], timeout=30)
    return "open" if r.returncode == 0 else "filtered" if r.returncode == 124 else "closed"


@pytest.fixture
def bridged_traffic_unfiltered() -> Any:
    """Container-to-container traffic inside one segment stays at layer 2. With br_netfilter loaded
    and its global bridge-nf-call-iptables=1, the kernel ignores the bridge's own nf_call_iptables 0
    that lxc_gateway sets, and bridged packets meet the gateway's "segments apart" forward rule
    (both addresses in the pool: dropped). Off for the test, restored after."""
    knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    before = knob.read_text() if knob.exists() else None
    if before is not None:
        knob.write_text("0")
    yield
    if before is not None:
        knob.write_text(before)


def test_migrate_nginx_and_a_stateful_service(lxc_env: Any, ip_forward_restored: Any,  # noqa: F811
                                              bridged_traffic_unfiltered: Any) -> None:
    for tool in ("dnsmasq", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/debian-packages.txt lists it)")
    b = lxc_env.backend
    strategy = lxc_env.root / "strategy.yaml"
    env = lxc_env.init_env()
    doc = yaml.safe_load(strategy.read_text())
    doc["network"]["bridge"] = f"{lxc_env.prefix}n"
    doc["target"]["lxc"].update(lxcpath=b.config.lxcpath, disk_dir=b.config.disk_dir,
                                template_cache=b.config.template_cache, subnet=free_pool())
    gateway = next(c for c in doc["containers"] if c["name"] == "pve-api-gateway")
    # 1G: too small for nginx (a 1 GiB Debian base plus packages and data, 80 % full at most), so
    # create grows it through provisioning: online (the loop image, its loop device, ext4 mounted)
    # where the kernel allows it, else with a restart before anything is in it
    gateway["resources"].update(memory="1G", storage="1G")
    gateway["packages"] = ["acl", "attr"]   # getfacl/getfattr to look at what arrived
    # the target keeps its firewall (plain LXC's nftables isolation, default drop): the management
    # network is this machine alone (its address on the containers' segment), so the gateway role admits
    # 22 and 80/443 from here (the test step's probes) but nothing from the "host" container; what
    # arrives from there (the forwarded clients, masqueraded) passes only by the rule migrate adds
    from pveguard.backends import lxc_gateway

    segment = lxc_gateway.segment_subnet(doc["target"]["lxc"]["subnet"], doc["network"]["container_vlan"])
    doc["network"]["management"]["cidr"] = f"{lxc_gateway.gateway_of(segment).ip}/32"
    # the "host" plays the PVE host, which has no guest firewall of pveguard's
    host = {"name": "mfw-host", "role": "host", "purpose": "plays the PVE host in the migrate test",
            "resources": {"cores": 1, "memory": "1G", "storage": "4G"},
            "packages": ["nginx", "nftables", "acl", "attr"],
            "network": {"firewall": False}}
    doc["containers"] = [gateway, host]
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    guests = {g.name: g for g in b.list_guests()}
    hg, ct = guests["mfw-host"], guests["pve-api-gateway"]
    sh = lambda g, script, **kw: b.exec(g, ["sh", "-c", script], **kw)  # noqa: E731
    assert sh(hg, "cat > /var/www/html/index.html", input=PAGE).ok
    # a file with a POSIX ACL and a user xattr: both must arrive (tar --acls --xattrs on both ends)
    assert sh(hg, "echo secret > /var/www/html/acl.txt && setfacl -m u:www-data:rw,g:adm:r /var/www/html/acl.txt"
                  " && setfattr -n user.origin -v the-host /var/www/html/acl.txt").ok
    acl_before = sh(hg, "getfacl -c /var/www/html/acl.txt").stdout
    assert "user:www-data:rw-" in acl_before
    assert int(sh(ct, "df -B1 --output=size / | tail -1").stdout) < int(1.05 * 1024 ** 3)   # 1G before
    assert sh(hg, "cat > /usr/local/bin/ticker && chmod 755 /usr/local/bin/ticker", input=TICKER).ok
    assert sh(hg, "cat > /etc/systemd/system/ticker.service", input=TICKER_UNIT).ok
    assert sh(hg, "systemctl daemon-reload && systemctl enable --now ticker && systemctl restart nginx").ok
    # the host's routing and loopback knobs as a fresh PVE host has them (rollback must give them back)
    assert sh(hg, "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/conf/eth0/route_localnet").ok
    host_ip = sh(hg, "hostname -I").stdout.split()[0]
    ct_ip = sh(ct, "hostname -I").stdout.split()[0]
    source = f"lxc:{hg.vmid}"
    assert reach(b, hg, ct_ip, 80) == "filtered"    # before: the host is not admitted to the gateway

    client = Client(host_ip)
    client.start()
    time.sleep(1)
    try:
        # killed at a step boundary (after install), then run again: it resumes and converges
        code, out, err = pveguard({**env, "PVEGUARD_MIGRATE_KILL_AFTER": "install"}, "migrate", "run", "nginx",
                                  "--source", source, "--yes")
        assert code == -9, out + err
        code, out, err = pveguard(env, "migrate", "status", "nginx", "--json")
        steps = {s["name"]: s["state"] for s in json.loads(out)["migrations"][0]["steps"]}
        assert steps["install"] == "done" and steps["migrate-data"] == "pending", steps
        code, out, err = pveguard(env, "migrate", "run", "nginx", "--source", source, "--yes", "--json")
        assert code == 0, out + err
        time.sleep(2)
    finally:
        client.stop.set()
        client.join(5)
    status = json.loads(out)
    assert status["state"] == "done", status
    assert [s["state"] for s in status["steps"]] == ["done"] * 7
    switch = next(s for s in status["steps"] if s["name"] == "switch-traffic")["detail"]
    switched_at = switch["switched_at"]
    failed_after = [t0 for t0, _t1, ok in client.results if not ok and t0 >= switched_at]
    assert failed_after == []
    gap = client.longest_gap()
    fails = sum(1 for r in client.results if not r[2])
    slowest = max(t1 - t0 for t0, t1, _ in client.results if t0 >= switched_at)
    print(f"\nmigrate nginx: {len(client.results)} requests every 50 ms, {fails} failed, longest gap "
          f"{gap:.3f}s (stop on the host -> forward: {switch['gap_seconds']}s); slowest request after the "
          f"switch {slowest:.3f}s")
    assert gap < 2.0
    assert client.results[-1][2]
    # the host no longer runs nginx: the package is gone, the container answers through the forward
    assert not b.exec(hg, ["dpkg-query", "-W", "-f", "${Status}", "nginx"]).stdout.endswith(" installed")
    assert b.exec(ct, ["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
    create = next(s for s in status["steps"] if s["name"] == "create")["detail"]
    assert create["grown"]["before"]["disk_gib"] == 1 and create["grown"]["after"]["disk_gib"] == 2, create
    # the filesystem inside is 2G now (restarted: the kernel refused the online ext4 resize)
    assert int(sh(ct, "df -B1 --output=size / | tail -1").stdout) > int(1.8 * 1024 ** 3)
    print(f"\ncreate grew pve-api-gateway 1G -> 2G {'with a restart' if create['restarted'] else 'online'}")
    code, out, err = pveguard(env, "plan", "--detailed-exitcode")
    assert code == 0 and "grown by migrate nginx.service: rootfs 1G -> 2G" in out, out + err
    assert sh(ct, "getfacl -c /var/www/html/acl.txt").stdout == acl_before
    assert sh(ct, "getfattr --only-values -n user.origin /var/www/html/acl.txt").stdout == "the-host"
    validate = next(s for s in status["steps"] if s["name"] == "validate")["detail"]
    assert validate["backup"]["ok"] and validate["monitoring"]["ok"]
    assert 80 in validate["open_ports"]
    assert validate["firewall"].startswith("as desired"), validate
    # the target's firewall: the moved port is admitted from the host only, a port not moved stays filtered
    assert reach(b, hg, ct_ip, 80) == "open"
    assert reach(b, hg, ct_ip, 8080) == "filtered"
    policy = json.loads((Path(b.config.lxcpath) / str(ct.vmid) / "firewall.json").read_text())["rules"]
    assert {"proto": "tcp", "dport": "80", "source": host_ip} in policy
    # the source's own clients on 127.0.0.1 reach the container too (output DNAT + route_localnet)
    local = b.exec(hg, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && "
                                      "timeout 5 cat <&3"])
    assert local.ok and local.stdout.endswith(PAGE), local.stdout + local.stderr
    # the rule is desired state: plan shows it and has nothing to change, apply keeps it
    code, out, err = pveguard(env, "plan", "--json")
    assert code == 0, out + err
    fw = json.loads(out)["firewall"]
    kept = f"pve-api-gateway: tcp/80 from {host_ip} (migrate:nginx.service)"
    assert fw["changes"] == [] and any(kept in n for n in fw["notes"]), fw
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    assert reach(b, hg, ct_ip, 80) == "open"
    code, out, err = pveguard(env, "isolation", "check", "--json")
    assert code == 0, out + err

    # ticker: a hand-made unit with state; killed inside migrate-data, right after the stop on the host
    code, out, err = pveguard({**env, "PVEGUARD_MIGRATE_KILL_AFTER": "migrate-data:source-stopped"}, "migrate",
                              "run", "ticker", "--to", "pve-api-gateway", "--source", source, "--yes")
    assert code == -9, out + err
    code, out, err = pveguard(env, "migrate", "status", "ticker", "--json")
    steps = {s["name"]: s["state"] for s in json.loads(out)["migrations"][0]["steps"]}
    assert steps["migrate-data"] == "running", steps
    code, out, err = pveguard(env, "migrate", "run", "ticker", "--yes")    # resumes: same source and target
    assert code == 0, out + err
    host_log = sh(hg, "cat /var/lib/ticker/log").stdout.splitlines()
    time.sleep(1)
    ct_log = sh(ct, "cat /var/lib/ticker/log").stdout.splitlines()
    assert len(host_log) > 10 and ct_log[:len(host_log)] == host_log   # all written before the final sync
    assert len(ct_log) > len(host_log)                                  # and it goes on in the container
    assert b.exec(hg, ["systemctl", "is-active", "ticker"]).stdout.strip() != "active"

    code, out, err = pveguard(env, "migrate", "rollback", "ticker", "--yes")
    assert code == 0, out + err
    time.sleep(0.5)
    ct_last = sh(ct, "cat /var/lib/ticker/log").stdout.splitlines()
    back = sh(hg, "cat /var/lib/ticker/log").stdout.splitlines()
    assert back[:len(ct_last)] == ct_last and len(ct_last) > len(ct_log)  # nothing written meanwhile is lost
    assert b.exec(hg, ["systemctl", "is-active", "ticker"]).stdout.strip() == "active"
    assert b.exec(ct, ["systemctl", "is-active", "ticker"]).stdout.strip() != "active"

    code, out, err = pveguard(env, "migrate", "rollback", "nginx", "--yes")
    assert code == 0, out + err
    assert b.exec(hg, ["dpkg-query", "-W", "-f", "${Status}", "nginx"]).stdout.endswith(" installed")
    assert b.exec(hg, ["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
    assert "pveguard_mig" not in b.exec(hg, ["nft", "list", "tables"]).stdout
    knobs = sh(hg, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/eth0/route_localnet").stdout.split()
    assert knobs == ["0", "0"]
    assert reach(b, hg, ct_ip, 80) == "filtered"     # the rule left with the migration
    # the floor create raised is released: the disk stays 2G (never shrinks), plan says so and no more
    code, out, err = pveguard(env, "plan")
    assert "grown by migrate" not in out and "rootfs cannot change from 2G to 1G" in out, out + err
    import urllib.request

    with urllib.request.urlopen(f"http://{host_ip}/", timeout=2) as r:
        assert r.read().decode() == PAGE
    code, out, err = pveguard(env, "migrate", "status", "--json")
    assert {m["service"]: m["state"] for m in json.loads(out)["migrations"]} == {
        "nginx.service": "rolled-back", "ticker.service": "rolled-back"}
    code, out, err = pveguard(env, "audit-log", "verify")
    assert code == 0, out + err

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes", "--prune")
    assert code == 0, out + err
