"""pveguard's own LXC network, the pure parts: segment subnets, dnsmasq and nftables as written."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from pydantic import ValidationError

from pveguard.backends import lxc_gateway as gw
from pveguard.errors import ConfigError
from pveguard.strategy.models import LxcTarget


@pytest.mark.parametrize(("pool", "tag", "segment"), [
    ("10.101.0.0/16", None, "10.101.0.0/24"),
    ("10.101.0.0/16", 100, "10.101.100.0/24"),
    ("10.101.0.0/16", 255, "10.101.255.0/24"),
    ("172.16.0.0/12", 4094, "172.31.254.0/24"),
    ("192.168.7.0/24", None, "192.168.7.0/24"),
])  # fmt: skip
def test_segment_subnet(pool: str, tag: int | None, segment: str) -> None:
    assert gw.segment_subnet(pool, tag) == ipaddress.IPv4Network(segment)


def test_a_vlan_beyond_the_pool_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="VLAN 256 has no /24") as err:
        gw.segment_subnet("10.101.0.0/16", 256)
    assert "/12" in err.value.hint
    with pytest.raises(ConfigError):
        gw.segment_subnet("192.168.7.0/24", 1)


def test_gateway_and_dhcp_range_leave_room_for_static_addresses() -> None:
    seg = ipaddress.IPv4Network("10.101.100.0/24")
    assert str(gw.gateway_of(seg)) == "10.101.100.1/24"
    assert tuple(map(str, gw.dhcp_range(seg))) == ("10.101.100.100", "10.101.100.254")


def test_dnsmasq_is_bound_to_its_bridge_only(tmp_path: Path) -> None:
    argv = gw.dnsmasq_argv("vmbr0v100", ipaddress.IPv4Network("10.101.100.0/24"), tmp_path)
    assert argv[0] == "dnsmasq" and "--conf-file=/dev/null" in argv and "--bind-interfaces" in argv
    assert "--interface=vmbr0v100" in argv and "--listen-address=10.101.100.1" in argv
    assert f"--pid-file={tmp_path}/dnsmasq-vmbr0v100.pid" in argv
    assert f"--dhcp-leasefile={tmp_path}/dnsmasq-vmbr0v100.leases" in argv


def test_nft_ruleset_replaces_its_own_table_only() -> None:
    text = gw.nft_ruleset("vmbr0", "10.101.0.0/16")
    lines = [line.strip() for line in text.splitlines()]
    # declare-then-delete-then-define: one atomic replacement, also when the table did not exist
    assert lines[:3] == ["table ip pveguard-vmbr0", "delete table ip pveguard-vmbr0", "table ip pveguard-vmbr0 {"]
    assert "ip saddr 10.101.0.0/16 ip daddr != 10.101.0.0/16 masquerade" in lines
    assert "ip saddr 10.101.0.0/16 ip daddr 10.101.0.0/16 drop" in lines  # no routing between VLANs
    assert sum("table" in line for line in lines) == 3 and "flush ruleset" not in text


def test_the_alias_marks_the_network() -> None:
    assert gw.pool_of_alias("pveguard network 10.101.0.0/16") == "10.101.0.0/16"
    assert gw.pool_of_alias("pveguard vlan bridge vmbr0 tag 100") is None
    assert gw.pool_of_alias("uplink") is None


@pytest.mark.parametrize("subnet", ["8.8.0.0/16", "10.0.0.0/25", "10.1.2.3", "nonsense", "fd00::/64"])
def test_the_strategy_refuses_a_subnet_that_cannot_be_pveguards(subnet: str) -> None:
    with pytest.raises(ValidationError):
        LxcTarget(subnet=subnet)
    assert LxcTarget(subnet="10.1.0.0/16").subnet == "10.1.0.0/16"


def test_traffic_inside_a_segment_passes_the_forward_hook() -> None:
    # with br_netfilter (host-wide bridge-nf-call-iptables=1) bridged traffic meets the IP forward hook,
    # entering and leaving by the same bridge: it must not meet the rule that keeps segments apart
    lines = [line.strip() for line in gw.nft_ruleset("vmbr0", "10.101.0.0/16", ["vmbr0", "vmbr0v100"]).splitlines()]
    accept = lines.index('iifname . oifname { "vmbr0" . "vmbr0", "vmbr0v100" . "vmbr0v100" } accept')
    assert accept < lines.index("ip saddr 10.101.0.0/16 ip daddr 10.101.0.0/16 drop")
