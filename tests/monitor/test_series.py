"""The tiered series store: raw for a day, 5-minute buckets for 30 days, bounded targets."""

from __future__ import annotations

from pathlib import Path

from pveguard.monitor.series import BUCKET, SeriesStore, TargetInfo, select_targets
from pveguard.store import Store

DAY = 86400.0


def _t(i: int, managed: bool = False) -> TargetInfo:
    return TargetInfo(f"lxc/{100 + i}", 100 + i, f"ct{i}", "pve1", "lxc", managed, 0.0)


def test_tiers_downsample_and_prune(tmp_path: Path) -> None:
    s = SeriesStore(Store(tmp_path))
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % BUCKET)
    target = _t(1)
    # 2 days at one point a minute: cpu ramps 0..59 within every hour
    for i in range(0, int(2 * DAY), 60):
        s.record(t0 + i, {target.id: {"cpu": float((i // 60) % 60)}}, [target])
    now = t0 + 2 * DAY - 60
    counts = s.counts()
    assert 1440 <= counts["monitor_raw"] <= 1440 + BUCKET // 60  # a day of raw points (pruned every 5 min)
    tier, raw = s.history(target.id, "cpu", now - 3600, now)
    assert tier == "raw" and len(raw) == 61
    tier, buckets = s.history(target.id, "cpu", now - 2 * DAY, now)
    assert tier == "5m" and len(buckets) == 2 * 288
    first = buckets[0]
    assert (first.min, first.max, first.value) == (0.0, 4.0, 2.0)  # avg/min/max of 0,1,2,3,4
    # 31 days later everything has aged out
    s.prune(now + 31 * DAY)
    assert s.counts() == {"monitor_raw": 0, "monitor_5m": 0, "monitor_targets": 0}


def test_bounded_targets_managed_first(tmp_path: Path) -> None:
    targets = [_t(i) for i in range(10)] + [_t(50, managed=True)]
    assert "lxc/150" in select_targets(targets, 3)
    s = SeriesStore(Store(tmp_path), max_targets=3)
    kept = s.record(1000.0, {t.id: {"cpu": 1.0, "memory": 2.0} for t in targets}, targets)
    assert kept == 6
    assert {t.id for t in s.targets()} == {"lxc/150", "lxc/100", "lxc/101"}


def test_resolve_by_id_vmid_and_name(tmp_path: Path) -> None:
    s = SeriesStore(Store(tmp_path))
    s.record(1000.0, {"lxc/107": {"cpu": 1.0}}, [_t(7)])
    assert s.resolve("lxc/107") and s.resolve("107") and s.resolve("ct7")
    assert s.resolve("nope") is None
    assert s.latest("lxc/107", "cpu") == [1.0]
