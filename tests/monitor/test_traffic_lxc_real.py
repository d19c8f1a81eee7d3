"""The lxc path of the traffic watch on this host's real kernel: a network namespace joined to the host by
a veth pair stands in for a container (its address is found the way the watch finds a container's: from
/proc/<pid>/net/fib_trie of a process inside it), an nftables table `pveguard-iso-test<id>` holds the
named counter `drop_<vmid>` (the contract with the lxc isolation rules) and drops one port, and the
host's conntrack table shows where the namespace connects. Through the real engine: dropped SYNs raise
the counter, the metric and `fw_drops`; a port first used after the learning window fires
`new_destination`. Everything made is removed, also on failure.

Run under the shared lock: flock /tmp/pveguard-slow.lock python -m pytest tests/monitor/test_traffic_lxc_real.py
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pveguard.monitor.collector import Sample, Sweep
from pveguard.monitor.engine import Monitor, load_states
from pveguard.monitor.exporter import ExportView, render
from pveguard.monitor.traffic import CONNTRACK, LxcFirewall, TrafficWatch, lxc_addresses, traffic_rules
from pveguard.store import Store
from pveguard.strategy.models import Monitoring

pytestmark = pytest.mark.slow

VMID = 9731


def _skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/debian-packages.txt lists iproute2 and nftables)"
    if not CONNTRACK.exists():
        return f"{CONNTRACK} is missing (the nf_conntrack module is not loaded)"
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Net:
    ns: str
    host_if: str
    host_ip: str
    ns_ip: str
    table: str
    pid: int

    def connect(self, port: int, timeout: float = 0.4) -> bool:
        """A TCP connection from inside the namespace; True when it was answered."""
        code = (f"import socket\ns=socket.socket();s.settimeout({timeout})\n"
                f"try:\n s.connect(('{self.host_ip}',{port}));print('ok')\nexcept OSError:\n print('no')")
        return sh("ip", "netns", "exec", self.ns, sys.executable, "-c", code).stdout.strip() == "ok"


def _listen(ip: str) -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind((ip, 0))
    s.listen(16)

    def serve() -> None:
        while True:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                return
    threading.Thread(target=serve, daemon=True).start()
    return s, s.getsockname()[1]


@pytest.fixture
def net() -> Iterator[Net]:
    why = _skip()
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(2)
    octet = 100 + int(tag, 16) % 150
    n = Net(ns=f"pvgtr{tag}", host_if=f"pvgtrh{tag}", host_ip=f"10.251.{octet}.1", ns_ip=f"10.251.{octet}.2",
            table=f"pveguard-iso-test{tag}", pid=0)
    proc: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "netns", "add", n.ns)
        sh("ip", "link", "add", n.host_if, "type", "veth", "peer", "name", f"pvgtrc{tag}")
        sh("ip", "link", "set", f"pvgtrc{tag}", "netns", n.ns)
        sh("ip", "addr", "add", f"{n.host_ip}/30", "dev", n.host_if)
        sh("ip", "link", "set", n.host_if, "up")
        sh("ip", "netns", "exec", n.ns, "ip", "addr", "add", f"{n.ns_ip}/30", "dev", f"pvgtrc{tag}")
        sh("ip", "netns", "exec", n.ns, "ip", "link", "set", f"pvgtrc{tag}", "up")
        sh("ip", "netns", "exec", n.ns, "ip", "link", "set", "lo", "up")
        rules = (f'table inet {n.table} {{\n counter drop_{VMID} {{ }}\n'
                 f' chain input {{ type filter hook input priority 0; policy accept;\n'
                 f'  ct state established,related accept\n'
                 f'  iifname "{n.host_if}" tcp dport 9 counter name "drop_{VMID}" drop\n }}\n}}\n')
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True, timeout=30)
        proc = subprocess.Popen(["ip", "netns", "exec", n.ns, "sleep", "600"])
        for _ in range(50):  # the pid is in the namespace once `ip netns exec` has exec'd sleep
            if Path(f"/proc/{proc.pid}/net/fib_trie").exists() and \
                    n.ns_ip in Path(f"/proc/{proc.pid}/net/fib_trie").read_text():
                break
            time.sleep(0.05)
        n.pid = proc.pid
        yield n
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        sh("nft", "delete", "table", "inet", n.table, check=False)
        sh("ip", "link", "del", n.host_if, check=False)
        sh("ip", "netns", "del", n.ns, check=False)
    assert n.table not in sh("nft", "list", "tables").stdout
    assert n.ns not in sh("ip", "netns", "list").stdout


class OneGuest:
    """The usage side of the poll (not under test here): one running container VMID."""

    name = "test"

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def sweep(self) -> Sweep:
        return Sweep(self.clock(), [Sample(id=f"lxc/{VMID}", type="lxc", node="here", status="running", name="ns-ct",
                                           vmid=VMID, managed=True)], api_calls=0)


class Pids:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def running_pids(self) -> dict[int, int]:
        return {VMID: self.pid}


def test_nft_drop_counter_and_conntrack_destinations_through_the_engine(net: Net, tmp_path: Path) -> None:
    ok_srv, ok_port = _listen(net.host_ip)
    new_srv, new_port = _listen(net.host_ip)
    try:
        m = Monitoring.model_validate({"traffic": {"read_every": "1s", "learning": "3s", "drops_per_minute": 1}})
        addresses = lxc_addresses(Pids(net.pid))
        assert addresses() == {net.ns_ip: VMID}  # found from the namespace's own fib_trie
        store = Store(tmp_path)
        watch = TrafficWatch(store, LxcFirewall(addresses), 1.0, 3.0)
        mon = Monitor(store, OneGuest(time.time), traffic_rules(m), record_series=False, traffic=watch)

        first = mon.poll()
        assert first.error is None and first.traffic is not None and not first.traffic.errors
        c = first.traffic.containers[0]
        assert (c.target, c.dropped_total, c.drop_rate) == (f"lxc/{VMID}", 0.0, None)  # counter seen, no rate yet

        assert net.connect(ok_port)  # during learning: baseline
        assert not net.connect(9) and not net.connect(9)  # dropped by the table's rule, counted
        time.sleep(1.1)
        second = mon.poll()
        c = second.traffic.containers[0]
        assert c.dropped_total is not None and c.dropped_total >= 2 and c.drop_rate is not None and c.drop_rate > 1
        assert (f"tcp/{net.host_ip}:{ok_port}", "learned") in [(d["dest"], d["state"]) for d in c.destinations]
        assert load_states(store)[("fw_drops", f"lxc/{VMID}")].state == "firing"
        assert [e.rule for e in second.events if e.kind == "firing"] == ["fw_drops"]
        text = render(ExportView(sweep=mon.last_good, traffic=mon.last_traffic)).decode()
        assert f'pveguard_container_firewall_dropped_total{{id="lxc/{VMID}",name="ns-ct"}} {c.dropped_total}' in text

        time.sleep(3)  # learning ends
        assert net.connect(ok_port) and net.connect(new_port)
        third = mon.poll()
        new_target = f"lxc/{VMID}>tcp/{net.host_ip}:{new_port}"
        assert [(e.kind, e.rule, e.target, e.name) for e in third.events] == \
            [("resolved", "fw_drops", f"lxc/{VMID}", "ns-ct"), ("firing", "new_destination", new_target, "ns-ct")]
        c = third.traffic.containers[0]
        assert c.new() == [f"tcp/{net.host_ip}:{new_port}"] and c.new_total == 1
        store.close()
    finally:
        ok_srv.close()
        new_srv.close()


def test_no_pveguard_iso_table_means_unknown_not_zero(tmp_path: Path) -> None:
    why = _skip()
    if why:
        pytest.skip(why)
    if "pveguard-iso" in sh("nft", "list", "tables").stdout:
        pytest.skip("another pveguard-iso table exists on this host right now")
    store = Store(tmp_path)
    watch = TrafficWatch(store, LxcFirewall(dict), 1.0, 60.0)
    view = watch.observe(time.time(), OneGuest(time.time).sweep())
    assert [(c.dropped_total, c.drop_rate) for c in view.containers] == [(None, None)]
    assert view.errors == []
    assert view.observations() == ({}, {})
    store.close()
