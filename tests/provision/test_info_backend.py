"""`pveguard info` shows the backend it resolved to (not the strategy's `auto`), with PVE's version,
nodes and quorum; an unreachable backend is said so, quickly, without failing the command."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import Env


def test_info_shows_resolved_backend_version_nodes_and_quorum(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/nodes/pve3", {"online": False})
    code, out, err = penv.run("info", capsys=capsys)
    assert code == 0, err
    assert "backend: proxmox (from auto)" not in out  # PVEGUARD_BACKEND=proxmox was asked for explicitly
    assert "backend: proxmox" in out and "backend: auto" not in out
    version = penv.sim.sim.release.version  # 8.4.1, or 9.1.9 under --pve-version 9.1
    assert (f"Proxmox VE {version} (supported: 8.4 and later 8.x, 9.x); nodes: pve1 (online), pve2 (online), "
            "pve3 (offline); quorate") in " ".join(out.split())
    data = json.loads(penv.run("info", "--json", capsys=capsys)[1])
    b = data["backend"]
    assert (b["wanted"], b["resolved"], b["error"]) == ("proxmox", "proxmox", None)
    assert b["proxmox"]["reachable"] is True and b["proxmox"]["version"] == version
    assert b["proxmox"]["supported"] is True
    assert b["proxmox"]["quorate"] is True and {"name": "pve3", "online": False} in b["proxmox"]["nodes"]
    assert data["strategy"]["backend"] == "auto"  # the strategy's own value stays where it was

    penv.env["PVEGUARD_BACKEND"] = ""
    penv.edit(lambda d: d["target"].update(backend="auto"))
    out = penv.run("info", capsys=capsys)[1]
    assert "backend: proxmox (from auto)" in out  # auto + a configured PVE host


def test_info_says_unreachable_and_stays_fast(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.env["PVEGUARD_PVE_HOST"] = "127.0.0.1:9"
    start = time.monotonic()
    code, out, err = penv.run("info", capsys=capsys)
    assert code == 0, err
    assert time.monotonic() - start < 5
    assert "backend: proxmox" in out and "unreachable: " in out and "Connection refused" in out
    assert "Traceback" not in out + err


def test_info_names_the_lxc_backend(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.env["PVEGUARD_BACKEND"] = "lxc"
    data = json.loads(penv.run("info", "--json", capsys=capsys)[1])
    assert data["backend"]["resolved"] == "lxc" and "lxc" in data["backend"]
    assert data["backend"]["lxc"]["version"] == data["host"]["lxc"]
