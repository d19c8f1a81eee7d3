"""The lxc isolation table as rendered (checked by the kernel with `nft -c -f`), its rules, drift and probes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pveguard.backends import lxc_isolation as iso
from pveguard.backends.lxc_isolation import Entry, NftRule
from pveguard.errors import ConfigError
from pveguard.security.isolation_lxc import PROBE_PORT, Probe, Seen, lxc_rules, plan_probes, probe_violations
from pveguard.strategy.models import Strategy


def nft_check(text: str) -> None:
    """`nft -c -f`: the kernel parses and validates the ruleset without applying it."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("nft -c needs nft and root")
    proc = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr + text


ENTRIES = [Entry(101, [NftRule("tcp", "22", "192.168.1.0/24"), NftRule("tcp", "80,443"),
                       NftRule("udp", "1000:2000", "fd00::/8")], "10.101.100.0/24", "10.101.0.0/16"),
           Entry(102, [], None, None)]


def rules_of(text: str, chain: str) -> list[str]:
    prefix = f"add rule bridge pveguard-iso-vmbr0 {chain} "
    return [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]


def test_the_rendered_table_is_valid_nft_and_touches_its_own_table_only() -> None:
    text = iso.render("vmbr0", ENTRIES)
    nft_check(text)
    assert "flush ruleset" not in text and "delete table" not in text
    assert all(" pveguard-iso-vmbr0" in line for line in text.splitlines() if line.startswith(("add", "flush",
                                                                                             "delete", "table")))
    fresh = iso.render_fresh("vmbr0", ENTRIES)
    nft_check(fresh)
    assert fresh.splitlines()[:2] == ["table bridge pveguard-iso-vmbr0", "delete table bridge pveguard-iso-vmbr0"]


def test_a_rewrite_removes_the_chains_and_counters_of_containers_that_left() -> None:
    text = iso.render("vmbr0", ENTRIES, ["forward", "in_101", "out_105", "in_105"], ["drop_101", "drop_105"])
    assert "delete chain bridge pveguard-iso-vmbr0 in_105" in text
    assert "delete counter bridge pveguard-iso-vmbr0 drop_105" in text
    assert "delete counter bridge pveguard-iso-vmbr0 drop_101" not in text
    lines = text.splitlines()
    flushed = [line.split()[-1] for line in lines if line.startswith("flush chain")]
    assert lines.index("flush chain bridge pveguard-iso-vmbr0 forward") < lines.index(
        "delete chain bridge pveguard-iso-vmbr0 in_105")  # the jumps to it go first
    assert set(flushed) >= {"forward", "input", "output", "in_101", "out_101", "in_105", "out_105"}


def test_every_drop_counts_into_its_containers_counter() -> None:
    text = iso.render("vmbr0", ENTRIES)
    drops = [line for line in text.splitlines() if line.startswith("add rule") and line.endswith(" drop")]
    assert drops and all('counter name "drop_10' in d for d in drops)
    assert "counter drop_101 { }" in text and "counter drop_102 { }" in text
    assert rules_of(text, "in_101")[-1] == 'counter name "drop_101" drop'  # the default: drop, last


def test_rules_become_matches_in_the_containers_own_chain() -> None:
    text = iso.render("vmbr0", ENTRIES)
    in101 = "\n".join(rules_of(text, "in_101"))
    assert "ip saddr 192.168.1.0/24 tcp dport 22 update @flows4" in in101
    assert "ether type ip tcp dport { 80, 443 } update @flows4" in in101  # from any: both families
    assert "ether type ip6 tcp dport { 80, 443 } update @flows6" in in101
    assert "ip6 saddr fd00::/8 udp dport 1000-2000" in in101
    # VLANs apart on pveguard's own network, both ways
    assert 'ip saddr 10.101.0.0/16 ip saddr != 10.101.100.0/24 counter name "drop_101" drop' in in101
    assert ('ip daddr 10.101.0.0/16 ip daddr != 10.101.100.0/24 counter name "drop_101" drop'
            in rules_of(text, "out_101"))
    in102 = "\n".join(rules_of(text, "in_102"))
    assert "update @" not in in102 and "10.101" not in in102  # admits nothing new, no segment known


def test_the_hooks_jump_by_host_veth() -> None:
    text = iso.render("vmbr0", ENTRIES)
    assert 'oifname vmap { "veth101i0" : jump in_101, "veth102i0" : jump in_102 }' in rules_of(text, "output")
    assert 'iifname vmap { "veth101i0" : jump out_101, "veth102i0" : jump out_102 }' in rules_of(text, "input")


def test_a_table_without_containers_is_still_valid() -> None:
    nft_check(iso.render("vmbr0", []))


@pytest.mark.parametrize(("pve", "nft"), [("22", "22"), ("80,443", "{ 80, 443 }"), ("1000:2000", "1000-2000"),
                                          ("8000-8010", "8000-8010")])
def test_port_lists_in_nft_syntax(pve: str, nft: str) -> None:
    assert iso.nft_ports(pve) == nft


@pytest.mark.parametrize("bad", ["0", "70000", "22,,", "2000:1000", "a"])
def test_a_bad_port_list_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        iso.nft_ports(bad)


def test_port_allowed() -> None:
    assert iso.port_allowed("80,443", 443) and iso.port_allowed("1000:2000", 1500)
    assert not iso.port_allowed("80,443", 22)


def test_normalize_drops_what_traffic_changes() -> None:
    live = ("table bridge t {\n\tcounter drop_1 {\n\t\tpackets 5 bytes 300\n\t}\n\tset flows4 {\n"
            "\t\telements = { tcp . 1.2.3.4 . 80 . 5.6.7.8 . 999 expires 3s,\n\t\t\t     udp . 1.1.1.1 . 53 }\n"
            "\t}\n\tchain in_1 {\n\t\tip saddr 1.2.3.4 counter packets 3 bytes 9 accept\n\t}\n}\n")
    quiet = live.replace("5 bytes 300", "0 bytes 0").replace("packets 3 bytes 9", "packets 0 bytes 0")
    assert iso.normalize(live) == iso.normalize(quiet.replace(
        "\t\telements = { tcp . 1.2.3.4 . 80 . 5.6.7.8 . 999 expires 3s,\n\t\t\t     udp . 1.1.1.1 . 53 }\n", ""))
    assert "packets" not in iso.normalize(live) and "elements" not in iso.normalize(live)


def test_policy_files_round_trip(tmp_path: Path) -> None:
    (tmp_path / "101").mkdir()
    rules = [NftRule("tcp", "22", "10.0.0.0/8"), NftRule("udp", "53")]
    iso.write_policy(tmp_path, 101, rules)
    assert iso.read_policy(tmp_path, 101) == rules
    iso.write_policy(tmp_path, 101, None)
    assert iso.read_policy(tmp_path, 101) is None
    with pytest.raises(ConfigError):
        iso.write_policy(tmp_path, 101, [NftRule("tcp", "99999")])
    assert iso.read_policy(tmp_path, 101) is None  # nothing half-written


def test_entries_follow_the_containers_on_the_bridge(tmp_path: Path) -> None:
    for vmid, bridge, tag in ((101, "br0", "100"), (102, "br0", None), (103, "other", None), (104, "br0", None)):
        (tmp_path / str(vmid)).mkdir()
        net0 = f"name=eth0,bridge={bridge}" + (f",tag={tag}" if tag else "")
        (tmp_path / str(vmid) / "pveguard.json").write_text(json.dumps({"config": {"net0": net0}}))
        if vmid != 104:  # 104 has no policy: pveguard keeps no firewall for it
            iso.write_policy(tmp_path, vmid, [NftRule("tcp", "22")])
    entries = iso.entries_of(tmp_path, "br0", iso.segment_lookup("10.101.0.0/16"))
    assert [(e.vmid, e.segment) for e in entries] == [(101, "10.101.100.0/24"), (102, "10.101.0.0/24")]
    assert [e.segment for e in iso.entries_of(tmp_path, "br0")] == [None, None]


def test_dropped_counters_reads_only_pveguards_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    def c(table: str, name: str, packets: int) -> dict[str, object]:
        return {"counter": {"family": "bridge", "table": table, "name": name, "packets": packets}}

    out = {"nftables": [{"metainfo": {}}, c("pveguard-iso-br0", "drop_101", 7), c("pveguard-iso-br1", "drop_101", 1),
                        c("pveguard-iso-br0", "other", 3), c("someone", "drop_5", 9)]}

    def fake(argv: list[str], what: str, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, json.dumps(out), "")

    monkeypatch.setattr(iso, "_nft", fake)
    assert iso.dropped_counters() == {101: 8}


# --- the rules' source: the PVE side's computation -------------------------------------------------


def test_lxc_rules_are_the_pve_rules_with_management_resolved() -> None:
    s = Strategy()
    assert lxc_rules(s, "pve-monitoring") == []  # every default rule is 'from management', which is unset
    s.network.management.cidr = "192.168.1.7/24"
    s.security.network.allowed_inbound = ["tcp/22 from management", "tcp/443 from any"]
    rules = lxc_rules(s, "pve-monitoring")
    assert rules is not None
    assert NftRule("tcp", "22", "192.168.1.0/24") in rules and NftRule("tcp", "443", "") in rules
    assert NftRule("tcp", "3000", "192.168.1.0/24") in rules  # grafana, a component of the role
    s.containers[0].network.firewall = False
    assert lxc_rules(s, s.containers[0].name) is None


def seen(name: str, vmid: int, tag: str | None, addr: str, rules: list[NftRule] | None) -> Seen:
    return Seen(name, vmid, "br0", tag, addr, rules)


def test_probes_cover_admitted_dropped_and_cross_vlan() -> None:
    a = seen("a", 101, "100", "10.1.100.2", [NftRule("tcp", "8080")])
    b = seen("b", 102, "100", "10.1.100.3", [NftRule("tcp", "8080"), NftRule("tcp", "22", "10.9.0.0/16")])
    d = seen("d", 103, "101", "10.1.101.2", [])
    probes = plan_probes([b], [a, b, d], {102: [8080, 5432]})
    got = {(p.src, p.port, p.expect) for p in probes}
    # 8080 admitted from any (a answers for it); 22 only from 10.9/16, where no prober is: not probed;
    # 5432 listens but no rule admits it; d is on another VLAN
    assert got == {("a", 8080, "answers"), ("a", 5432, "dropped"), ("d", 8080, "dropped")}
    # nothing listening beyond the admitted: the probe port stands in
    assert ("a", PROBE_PORT, "dropped") in {(p.src, p.port, p.expect) for p in plan_probes([b], [a, b], {})}


def test_probe_results_become_named_violations() -> None:
    def p(expect: str, why: str, result: str) -> Probe:
        return Probe("a", 101, "b", 102, "10.1.100.3", 8080, expect, why, result)

    kinds = [v.kind for v in probe_violations([
        p("answers", "admitted: tcp/8080 from any", "filtered"), p("answers", "admitted: x", "closed"),
        p("dropped", "no rule admits it", "open"), p("dropped", "across VLANs (101 -> 100)", "closed"),
        p("dropped", "no rule admits it", "filtered"), p("dropped", "no rule admits it", "error: no bash")])]
    assert kinds == ["allowed-dropped", "disallowed-open", "cross-vlan-open"]


def counter_packets(table: str, name: str) -> int:
    out = json.loads(subprocess.run(["nft", "-j", "list", "counters", "table", "bridge", table], capture_output=True,
                                    text=True, check=True).stdout)
    return next(int(i["counter"]["packets"]) for i in out["nftables"] if i.get("counter", {}).get("name") == name)


def test_drift_of_a_real_table(tmp_path: Path) -> None:
    """apply_table / table_state against the kernel (a bridge-family table needs no bridge to exist)."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("needs nft and root")
    bridge = f"pgsl{os.getpid() % 10000}"
    table = iso.table_name(bridge)
    try:
        assert iso.table_state(bridge, ENTRIES, tmp_path) == "missing"
        # a count from earlier traffic (nft takes a new counter's start values)
        subprocess.run(["nft", "add", "table", "bridge", table], check=True)
        subprocess.run(["nft", "add", "counter", "bridge", table, "drop_101", "{ packets 5 bytes 300 }"], check=True)
        iso.apply_table(bridge, ENTRIES, tmp_path)
        assert iso.table_state(bridge, ENTRIES, tmp_path) is None
        assert iso.chains_present(bridge, 101) == (True, True)
        # traffic-made state (a flow, a counted packet) is no drift
        subprocess.run(["nft", "add", "element", "bridge", table, "flows4", "{ tcp . 10.0.0.1 . 80 . 10.0.0.2 . 999 }"],
                       check=True)
        assert iso.table_state(bridge, ENTRIES, tmp_path) is None
        assert iso.table_state(bridge, ENTRIES[:1], tmp_path) == "out of date"  # a container's rules changed
        # a rewrite (another container starts, one leaves) keeps the flows and the drop counts
        iso.apply_table(bridge, ENTRIES[:1], tmp_path)
        live = iso.listing(bridge) or ""
        assert "10.0.0.1" in live and "in_102" not in live and "drop_102" not in live
        assert counter_packets(table, "drop_101") == 5  # the count survives rewrites
        assert iso.table_state(bridge, ENTRIES[:1], tmp_path) is None
        iso.apply_table(bridge, ENTRIES, tmp_path)
        subprocess.run(["nft", "insert", "rule", "bridge", table, "in_101", "accept"], check=True)
        assert iso.table_state(bridge, ENTRIES, tmp_path) == "changed by hand"
        subprocess.run(["nft", "flush", "chain", "bridge", table, "in_101"], check=True)
        assert iso.chains_present(bridge, 101) == (False, True)
        iso.apply_table(bridge, ENTRIES, tmp_path)  # rewritten as a whole
        assert iso.table_state(bridge, ENTRIES, tmp_path) is None
        iso.apply_table(bridge, [], tmp_path)  # no container with rules: no table
        assert iso.listing(bridge) is None and not iso.snapshot_path(tmp_path, bridge).exists()
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", table], capture_output=True, check=False)


def test_a_port_nft_cannot_take_is_refused_at_plan_time_naming_the_rule() -> None:
    s = Strategy()
    s.security.network.allowed_inbound = ["tcp/99999 from any"]
    with pytest.raises(ConfigError, match="allowed_inbound: tcp/99999 from any"):
        lxc_rules(s, "pve-monitoring")


def test_the_hook_entry_point_says_how_to_call_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert iso.main(["nonsense"]) == 2
    assert "usage: python -m pveguard.backends.lxc_isolation restore" in capsys.readouterr().err
