"""--latency MS: every /api2 request waits that long (a node over a LAN/WAN); concurrent ones overlap."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pvesim.testing import SimHandle


def timed(sim: SimHandle, n: int, workers: int) -> float:
    px = sim.proxmoxer()
    px.version.get()  # connect (TLS handshake) outside the measurement

    def one(_: int) -> None:
        px.version.get()

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t


def test_every_api_call_waits_and_concurrent_calls_overlap(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(latency=200)
    assert timed(sim, 3, 1) >= 0.6  # one after another: 3 x 200 ms at least
    assert timed(sim, 8, 8) < 1.2  # 8 at once: one round trip (plus this loaded machine), not 8 x 200 ms
    t = time.perf_counter()
    sim.control("GET", "")  # the control API is the test harness, not PVE: never delayed
    assert time.perf_counter() - t < 0.2


def test_latency_changes_at_run_time_and_rejects_negative(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory()
    assert timed(sim, 3, 1) < 0.6
    assert sim.control("POST", "/options", {"latency": 300})["latency"] == 300
    assert timed(sim, 2, 1) >= 0.6
    with pytest.raises(RuntimeError, match="latency must be at least 0"):
        sim.control("POST", "/options", {"latency": -5})
    assert sim.control("GET", "/options")["latency"] == 300


def test_cli_refuses_negative_latency() -> None:
    r = subprocess.run([sys.executable, "-m", "pvesim", "--port", "0", "--latency", "-1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--latency at least 0" in r.stderr and "Traceback" not in r.stderr
