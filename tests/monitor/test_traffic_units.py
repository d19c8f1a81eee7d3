"""The traffic watch's pure parts: pvefw-logger lines, `nft -j list counters`, conntrack and fib_trie text,
destinations as admins type them, and the watch's bookkeeping (a log line counted once, counter resets,
learning vs new)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pveguard.monitor.collector import Sample, Sweep
from pveguard.monitor.traffic import (
    PveFirewallLog,
    Reading,
    TrafficWatch,
    parse_conntrack,
    parse_dest,
    parse_fib_trie,
    parse_log_line,
    parse_nft_counters,
)
from pveguard.store import Store

# the shape pvefw-logger.c documents ("117 6 tap117i0-IN 14/Mar/2014:12:47:07 +0100 policy REJECT: IN=vmbr1 ...")
# with the fields its print_iphdr/print_tcp write
DROP = ("117 6 veth117i0-IN 14/Mar/2014:12:47:07 +0100 policy DROP: IN=fwbr117i0 OUT=fwbr117i0 PHYSIN=fwln117i0 "
        "PHYSOUT=veth117i0 MAC=aa:bb SRC=198.51.100.9 DST=10.10.0.5 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF "
        "PROTO=TCP SPT=40000 DPT=5432 SEQ=1 ACK=0 WINDOW=64240 SYN ")
OUT = ("117 6 veth117i0-OUT 14/Mar/2014:12:47:08 +0100 ACCEPT: IN=fwbr117i0 OUT=fwbr117i0 PHYSIN=veth117i0 "
       "SRC=10.10.0.5 DST=2001:db8::7 LEN=60 PROTO=UDP SPT=5353 DPT=53 LEN=40 ")


def test_log_lines() -> None:
    e = parse_log_line(DROP)
    assert e is not None
    assert (e.vmid, e.level, e.chain, e.action, e.policy, e.direction, e.dropped) == \
        (117, 6, "veth117i0-IN", "DROP", True, "in", True)
    assert e.ts == 1394797627.0  # 12:47:07 +0100
    assert e.destination() is None  # inbound: who talked to the guest, not where it talks
    o = parse_log_line(OUT)
    assert o is not None and (o.action, o.policy, o.dropped) == ("ACCEPT", False, False)
    assert o.destination() == "udp/[2001:db8::7]:53"
    assert parse_log_line("no content") is None
    host = parse_log_line("0 6 PVEFW-HOST-IN 14/Mar/2014:12:47:07 +0100 smurf: IN=vmbr0 SRC=1.2.3.4")
    assert host is not None and (host.vmid, host.action, host.direction) == (0, "", "in")


def test_nft_counters_only_from_pveguard_iso_tables() -> None:
    doc: dict[str, Any] = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "inet", "name": "drop_101", "table": "pveguard-iso", "handle": 2, "packets": 7,
                     "bytes": 420}},
        {"counter": {"family": "bridge", "name": "drop_101", "table": "pveguard-iso-br", "packets": 3, "bytes": 1}},
        {"counter": {"family": "inet", "name": "drop_102", "table": "someone-else", "packets": 99, "bytes": 1}},
        {"counter": {"family": "inet", "name": "accepted_103", "table": "pveguard-iso", "packets": 5, "bytes": 1}},
    ]}
    assert parse_nft_counters(doc) == {101: 10}
    assert parse_nft_counters({"nftables": []}) == {}


def test_conntrack_and_fib_trie() -> None:
    text = ("ipv4     2 tcp      6 117 TIME_WAIT src=10.0.3.5 dst=93.184.216.34 sport=51000 dport=443 "
            "src=93.184.216.34 dst=10.0.3.5 sport=443 dport=51000 [ASSURED] mark=0 zone=0 use=2\n"
            "ipv4     2 udp      17 20 src=10.0.3.5 dst=10.0.3.1 sport=5353 dport=53 [UNREPLIED] src=10.0.3.1 "
            "dst=10.0.3.5 sport=53 dport=5353 mark=0 zone=0 use=2\n"
            "ipv4     2 icmp     1 29 src=10.0.3.5 dst=10.0.3.1 type=8 code=0 id=1 src=10.0.3.1 dst=10.0.3.5 "
            "type=0 code=0 id=1 mark=0 zone=0 use=2\n")
    assert parse_conntrack(text) == [("10.0.3.5", "tcp/93.184.216.34:443"), ("10.0.3.5", "udp/10.0.3.1:53"),
                                     ("10.0.3.5", "icmp/10.0.3.1")]
    trie = ("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n"
            "     +-- 10.0.3.0/24 2 0 2\n        |-- 10.0.3.0\n           /24 link UNICAST\n"
            "        |-- 10.0.3.5\n           /32 host LOCAL\n"
            "     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n"
            "Local:\n        |-- 10.0.3.5\n           /32 host LOCAL\n")
    assert parse_fib_trie(trie) == ["10.0.3.5"]


def test_destinations_as_typed() -> None:
    assert parse_dest("TCP/10.0.0.5:443") == "tcp/10.0.0.5:443"
    assert parse_dest("udp/[2001:db8:0::7]:53") == "udp/[2001:db8::7]:53"
    assert parse_dest("icmp/10.0.0.1") == "icmp/10.0.0.1"
    for bad in ("10.0.0.5:443", "tcp/host.example:443", "tcp/10.0.0.5:port"):
        with pytest.raises(ValueError):
            parse_dest(bad)


def _sweep(ts: float) -> Sweep:
    return Sweep(ts, [Sample(id="node/pve1", type="node", node="pve1", status="online"),
                      Sample(id="lxc/117", type="lxc", node="pve1", status="running", name="web", vmid=117)])


class FakeLog:
    """What GET /nodes/{node}/firewall/log answers, with PVE's since/start/limit semantics."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self.calls: list[dict[str, Any]] = []

    def __call__(self, method: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls.append(params)
        kept = [t for ts, t in self.lines if ts >= params["since"]]
        page = kept[params["start"]:params["start"] + params["limit"]]
        return [{"n": params["start"] + i + 1, "t": t} for i, t in enumerate(page)] or [{"n": 1, "t": "no content"}]


def _line(ts: float, vmid: int = 117, dport: int = 5432) -> str:
    import time

    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ts))
    return f"{vmid} 6 veth{vmid}i0-IN {stamp} policy DROP: IN=fwbr SRC=198.51.100.9 DST=10.0.0.5 PROTO=TCP DPT={dport} "


def test_log_lines_are_counted_once_across_reads(tmp_path: Path) -> None:
    log = FakeLog()
    store = Store(tmp_path)
    watch = TrafficWatch(store, PveFirewallLog(log), every=60, learning=3600)
    t0 = 1_800_000_000.0
    watch.observe(t0, _sweep(t0))
    log.lines += [(t0 + 10, _line(t0 + 10, dport=p)) for p in range(5)]
    v = watch.observe(t0 + 30, _sweep(t0 + 30))
    assert v.containers[0].dropped_total == 0  # not due yet (every 60 s): the stored state
    v = watch.observe(t0 + 60, _sweep(t0 + 60))
    assert v.containers[0].dropped_total == 5 and v.containers[0].drop_rate == 5.0
    # the next read asks from the newest second it saw (inclusive) and skips the lines it already counted
    log.lines += [(t0 + 10, _line(t0 + 10, dport=99)), (t0 + 70, _line(t0 + 70))]
    v = watch.observe(t0 + 120, _sweep(t0 + 120))
    assert log.calls[-1]["since"] == int(t0 + 10)
    assert v.containers[0].dropped_total == 7
    store.close()


def test_long_logs_are_paged(tmp_path: Path) -> None:
    log = FakeLog()
    store = Store(tmp_path)
    watch = TrafficWatch(store, PveFirewallLog(log), every=60, learning=3600)
    t0 = 1_800_000_000.0
    watch.observe(t0, _sweep(t0))
    log.lines += [(t0 + 5, _line(t0 + 5, dport=i)) for i in range(2500)]
    v = watch.observe(t0 + 60, _sweep(t0 + 60))
    assert v.containers[0].dropped_total == 2500
    assert [c["start"] for c in log.calls[1:]] == [0, 1000, 2000]
    store.close()


class Counters:
    def __init__(self) -> None:
        self.value: int | None = None
        self.dests: set[str] = set()
        self.name = "fake"

    def read(self, store: Store, now: float, sweep: Sweep) -> Reading:
        return Reading(ts=now, cumulative=True, drops={} if self.value is None else {117: self.value},
                       destinations={117: set(self.dests)})


def test_counter_resets_learning_and_new(tmp_path: Path) -> None:
    src = Counters()
    store = Store(tmp_path)
    watch = TrafficWatch(store, src, every=60, learning=600)
    t0 = 1_800_000_000.0
    v = watch.observe(t0, _sweep(t0))
    assert (v.containers[0].dropped_total, v.containers[0].drop_rate) == (None, None)  # no counter: unknown
    src.value, src.dests = 100, {"tcp/10.0.0.1:53"}
    v = watch.observe(t0 + 60, _sweep(t0 + 60))
    assert (v.containers[0].dropped_total, v.containers[0].drop_rate) == (0, None)  # first sight: no rate yet
    src.value = 130
    v = watch.observe(t0 + 120, _sweep(t0 + 120))
    assert (v.containers[0].dropped_total, v.containers[0].drop_rate) == (30, 30.0)
    src.value = 12  # the table was recreated: the counter starts over
    v = watch.observe(t0 + 180, _sweep(t0 + 180))
    assert (v.containers[0].dropped_total, v.containers[0].drop_rate) == (42, 12.0)
    src.dests = {"tcp/10.0.0.1:53", "tcp/203.0.113.9:22"}
    v = watch.observe(t0 + 660, _sweep(t0 + 660))  # past learning
    c = v.containers[0]
    assert c.new() == ["tcp/203.0.113.9:22"] and not c.learning
    obs, names = v.observations()
    key = "lxc/117>tcp/203.0.113.9:22"
    assert obs[key] == {"new_destination": 1.0} and names[key] == "web"
    store.close()


def test_new_destination_alerts_are_capped_per_container(tmp_path: Path) -> None:
    from pveguard.monitor.traffic import MAX_NEW_ALERTS

    src = Counters()
    store = Store(tmp_path)
    watch = TrafficWatch(store, src, every=60, learning=0)
    t0 = 1_800_000_000.0
    src.dests = {f"tcp/203.0.113.{i}:443" for i in range(MAX_NEW_ALERTS + 5)}
    v = watch.observe(t0, _sweep(t0))
    obs, _ = v.observations()
    assert len(v.containers[0].new()) == MAX_NEW_ALERTS + 5 and v.containers[0].new_total == MAX_NEW_ALERTS + 5
    assert len([k for k in obs if ">" in k]) == MAX_NEW_ALERTS
    store.close()


def test_a_node_log_the_token_may_not_read_is_named_with_the_privilege(tmp_path: Path) -> None:
    from pveguard.backends.proxmox import PveCallError

    def call(method: str, path: str, params: dict[str, Any]) -> Any:
        raise PveCallError("GET /nodes/pve1/firewall/log: Permission check failed (/nodes/pve1, Sys.Syslog)",
                           status=403)

    store = Store(tmp_path)
    view = TrafficWatch(store, PveFirewallLog(call), every=60, learning=60).observe(1e9, _sweep(1e9))
    assert len(view.errors) == 1 and "needs Sys.Syslog on /nodes/pve1" in view.errors[0]
    assert [(c.dropped_total, c.drop_rate) for c in view.containers] == [(None, None)]  # unknown, not 0
    store.close()
