"""The defaults are the strategy's own numbers, and `init` output loads back to them."""

from datetime import timedelta

from pveguard.strategy.defaults import render
from pveguard.strategy.load import check_text
from pveguard.strategy.models import Strategy
from pveguard.strategy.units import GIB

EXPECTED_CONTAINERS = {
    # name: (cores, memory, storage)
    "pve-monitoring": (2, 4 * GIB, 20 * GIB),
    "pve-backup-manager": (1, 2 * GIB, None),  # storage "based on backup needs": configurable
    "pve-dev-tools": (2, 4 * GIB, 50 * GIB),
    "pve-api-gateway": (1, 2 * GIB, 10 * GIB),
}


def test_four_containers_with_the_strategy_numbers() -> None:
    s = Strategy()
    assert [c.name for c in s.containers] == list(EXPECTED_CONTAINERS)
    for c in s.containers:
        cores, memory, storage = EXPECTED_CONTAINERS[c.name]
        assert c.resources.cores == cores, c.name
        assert c.resources.memory == memory, c.name
        if storage is not None:
            assert c.resources.storage == storage, c.name
        assert c.unprivileged and c.network.firewall, c.name


def test_backup_manager_storage_is_configurable_with_optional_volume() -> None:
    text = render().replace("backup_volume: null", "backup_volume: {size: 500G}", 2)
    s, problems = check_text(text)
    assert s is not None, problems
    bm = s.container("pve-backup-manager")
    assert bm.resources.storage >= 8 * GIB
    assert any(c.backup_volume and c.backup_volume.size == 500 * GIB for c in s.containers)


def test_thresholds_policy_and_backup_defaults() -> None:
    s = Strategy()
    t = s.monitoring.thresholds
    assert (t.cpu, t.memory, t.disk) == (80, 85, 90)
    p = s.installation_policy
    assert (p.allow_core_only, p.require_approval, p.container_first) == (True, True, True)
    assert p.core_roots == ["proxmox-ve"]
    assert s.backup.containers.schedule == "daily"
    assert s.backup.containers.retention == timedelta(days=7)
    assert s.backup.host_config.schedule == "hourly"
    assert s.backup.host_config.retention == timedelta(days=30)
    assert set(s.monitoring.metrics) >= {"cpu_usage", "memory_usage", "disk_io", "network_traffic"}
    assert s.network.bridge == "vmbr0"
    assert s.target.backend == "auto"


def test_core_functions_cover_the_strategy_list() -> None:
    names = {f.name for f in Strategy().core_functions}
    assert names == {"hypervisor", "storage", "network", "cluster", "backup-restore-core",
                     "security-access-control", "hardware-monitoring"}


def test_init_output_round_trips_and_is_commented() -> None:
    text = render()
    assert text.count("\n#") >= 10
    s, problems = check_text(text)
    assert s is not None, problems
    assert s == Strategy()
    assert not [p for p in problems if p.severity == "error"]


def test_units_accept_admin_spellings() -> None:
    from pveguard.strategy.units import parse_duration, parse_size

    assert parse_size("4GB") == parse_size("4G") == parse_size("4096M") == parse_size("4GiB") == 4 * GIB
    assert parse_size("512MiB") == 512 << 20
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("30d") == timedelta(days=30)
