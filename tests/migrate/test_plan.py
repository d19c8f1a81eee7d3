"""`migrate plan` offline over a fake PVE root (the audit's golden pve-fake root plus nginx's files)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from infra.cli import run_cli
from infra.strategies import defaults_file
from pveguard.migrate.plan import RUN_STEPS, STEPS

GOLDEN = Path(__file__).parents[1] / "audit/golden/pve-fake/root"
NINE = ["identify", "plan", "create", "install", "migrate-data", "test", "switch-traffic", "remove-from-host",
        "validate"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(GOLDEN, root, symlinks=True)
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    (root / "etc/nginx/nginx.conf").write_text("events {}\nhttp { include /etc/nginx/sites-enabled/*; }\n")
    (root / "etc/nginx/sites-enabled/default").write_text("server { listen 80; root /var/www/html; }\n")
    (root / "var/lib/nginx/body").mkdir(parents=True)
    (root / "var/lib/nginx/body/blob").write_bytes(b"x" * 5000)
    return root


def plan(root: Path, capsys: Any, *extra: str) -> tuple[int, dict[str, Any], str]:
    env = {"PVEGUARD_STRATEGY": defaults_file()}
    code, out, err = run_cli(["migrate", "plan", "nginx", "--root", str(root), "--json", *extra], capsys, env)
    return code, (json.loads(out) if code == 0 else {}), err


def test_plan_names_config_target_and_the_nine_steps(root: Path, capsys: Any) -> None:
    code, doc, err = plan(root, capsys)
    assert code == 0, err
    assert doc["service"] == "nginx.service"
    config = {p["path"]: p for p in doc["config_paths"]}
    assert "/etc/nginx" in config
    # sizes are read off the root: the two files written above
    want = len((root / "etc/nginx/nginx.conf").read_bytes()) + len(
        (root / "etc/nginx/sites-enabled/default").read_bytes())
    assert config["/etc/nginx"] == {"path": "/etc/nginx", "exists": True, "bytes": want, "files": 2}
    data = {p["path"]: p for p in doc["data_paths"]}
    assert data["/var/lib/nginx"]["bytes"] == 5000
    assert doc["target"]["container"] == "pve-api-gateway"
    assert doc["target"]["chosen_by"] == "audit suggestion"
    assert [s["name"] for s in doc["steps"]] == NINE
    assert [n for n, _ in STEPS][2:] == list(RUN_STEPS)
    assert [p["name"] for p in doc["packages"]] == ["nginx", "nginx-common"]
    assert all(p["version"] == "1.22.1-9+deb12u9" for p in doc["packages"])
    assert doc["backup"]["covered"] is True and doc["backup"]["schedule"] == "daily"
    assert doc["resources"]["must_grow"] is False
    assert doc["resources"]["disk_bytes"] == 10 * 1024 ** 3       # pve-api-gateway's 10G
    assert doc["network"]["bridge"] == "vmbr0" and doc["network"]["vlan"] == 100


def test_big_data_means_the_container_must_grow(root: Path, capsys: Any) -> None:
    with open(root / "var/lib/nginx/body/big", "wb") as f:   # sparse: apparent size counts
        f.truncate(20 * 1024 ** 3)
    code, doc, err = plan(root, capsys)
    assert code == 0, err
    r = doc["resources"]
    assert r["must_grow"] is True
    assert r["disk_needed_bytes"] > 20 * 1024 ** 3
    grow = int(r["grow_to"].removesuffix("G"))
    assert grow * 1024 ** 3 * 0.8 >= r["disk_needed_bytes"] > (grow - 1) * 1024 ** 3 * 0.8
    code, out, err = run_cli(["migrate", "plan", "nginx", "--root", str(root)], capsys,
                             {"PVEGUARD_STRATEGY": defaults_file()})
    assert f"the container must grow to {grow}G" in out


def test_memory_need_from_the_service_now() -> None:
    from pveguard.migrate.plan import MIB, memory_for, memory_needed

    assert memory_needed(None) is None
    need = memory_needed(400 * MIB)
    assert need == 128 * MIB + 600 * MIB
    assert memory_for(need) == 768            # the next 256 MiB step
    assert memory_for(768 * MIB) == 768


def test_to_another_container_and_one_outside_the_strategy(root: Path, capsys: Any) -> None:
    code, doc, _ = plan(root, capsys, "--to", "pve-dev-tools")
    assert code == 0
    assert doc["target"] == {**doc["target"], "container": "pve-dev-tools", "chosen_by": "--to", "in_strategy": True}
    assert doc["resources"]["disk_bytes"] == 50 * 1024 ** 3
    code, doc, _ = plan(root, capsys, "--to", "web-1")
    assert code == 0
    assert doc["target"]["in_strategy"] is False
    assert doc["backup"]["covered"] is False
    # sized as the container it would be created from: the audit's suggestion (pve-api-gateway, 10G)
    assert doc["resources"]["disk_bytes"] == 10 * 1024 ** 3 and doc["resources"]["must_grow"] is False
    assert any("creates it with the defaults of pve-api-gateway (role gateway)" in n for n in doc["notes"])
    # offline: the service's memory is not known, so neither is the memory it needs
    assert doc["resources"]["memory_needed_bytes"] is None and doc["resources"]["memory_grow_to"] is None


def test_unknown_and_core_services_are_clear_errors(root: Path, capsys: Any) -> None:
    env = {"PVEGUARD_STRATEGY": defaults_file()}
    code, _, err = run_cli(["migrate", "plan", "ngin", "--root", str(root)], capsys, env)
    assert code == 2 and "no systemd unit ngin.service" in err and "did you mean: nginx" in err
    assert "Traceback" not in err
    code, _, err = run_cli(["migrate", "plan", "pveproxy", "--root", str(root)], capsys, env)
    assert code == 2 and "is core" in err
    code, _, err = run_cli(["migrate", "plan", "nginx", "--root", str(root / "nope")], capsys, env)
    assert code == 2 and "not a directory" in err


def test_text_output(root: Path, capsys: Any) -> None:
    code, out, err = run_cli(["migrate", "plan", "nginx", "--root", str(root)], capsys,
                             {"PVEGUARD_STRATEGY": defaults_file()})
    assert code == 0, err
    assert "to pve-api-gateway" in out and "9. validate" in out and "/etc/nginx (" in out
    assert os.linesep in out
