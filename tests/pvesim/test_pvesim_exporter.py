"""The unmodified prometheus-pve-exporter (PyPI) scrapes pvesim over loopback HTTPS: a real third-party
client. Both its in-process collector and its CLI/HTTP server are exercised."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pvesim.testing import SimHandle

pve_exporter = pytest.importorskip("pve_exporter", reason="prometheus-pve-exporter is in the dev extra")


def _options() -> object:
    from pve_exporter.collector import CollectorsOptions

    return CollectorsOptions(
        status=True,
        version=True,
        subscription=True,
        node=True,
        cluster=True,
        resources=True,
        backup_info=True,
        config=True,
        replication=True,
        qdevice=True,
    )


def test_collector_scrapes_pvesim(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    from pve_exporter.collector import collect_pve

    sim: SimHandle = pvesim_factory(guests=8, seed=11)
    sim.control("POST", "/guests/100", {"cpu": 0.5})
    config = {
        "user": sim.username,
        "token_name": sim.token_name,
        "token_value": sim.token_value,
        "verify_ssl": sim.cafile,
        "port": sim.port,
    }
    text = collect_pve(config, sim.hostname, True, True, _options()).decode()
    assert 'pve_up{id="node/pve1"} 1.0' in text
    rel = sim.sim.release
    assert f'pve_version_info{{release="{rel.release}",repoid="{rel.repoid}",version="{rel.version}"}} 1.0' in text
    assert 'pve_cluster_info{id="cluster/pvesim",nodes="3",quorate="1",version="5"} 1.0' in text
    assert 'pve_cpu_usage_ratio{id="lxc/100"} 0.5' in text
    # every seeded guest appears with memory and disk figures
    for vmid in range(100, 108):
        assert f'id="lxc/{vmid}"' in text or f'id="qemu/{vmid}"' in text
    assert "pve_not_backed_up_total" in text
    assert "pve_onboot_status" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_exporter_cli_serves_metrics(pvesim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=4, seed=2)
    cfg = tmp_path / "pve.yml"
    cfg.write_text(
        f"default:\n  user: {sim.username}\n  token_name: {sim.token_name}\n"
        f"  token_value: {sim.token_value}\n  verify_ssl: {sim.cafile}\n"
    )
    port = _free_port()
    exe = Path(sys.executable).with_name("pve_exporter")
    proc = subprocess.Popen(
        [str(exe), "--config.file", str(cfg), "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        url = f"http://127.0.0.1:{port}/pve?target={sim.host}&cluster=1&node=1"
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert 'pve_up{id="node/pve1"} 1.0' in body, body[:2000]
        assert 'pve_node_info{id="node/pve1"' in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
