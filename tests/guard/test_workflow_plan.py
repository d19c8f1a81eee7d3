"""`pveguard install PKG... --dry-run` reports every package (issue 11): where each goes, or why
nowhere; exit 3 only when one would be refused. pveguard runs as a subprocess with the default
strategy; a dry run touches no backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra.strategies import defaults_file


def install(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PVEGUARD_STRATEGY": defaults_file(), "PVEGUARD_STATE_DIR": str(tmp_path / "st"),
           "COLUMNS": "200", "PVEGUARD_BACKEND": "lxc"}
    return subprocess.run([sys.executable, "-m", "pveguard", "install", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_reports_each_package(tmp_path: Path) -> None:
    r = install(tmp_path, "grafana", "htop", "restic", "--dry-run", "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    data = json.loads(r.stdout)
    items = {i["package"]: i for i in data["packages"]}
    assert list(items) == ["grafana", "htop", "restic"]  # not cut short at htop
    assert (items["grafana"]["target"], items["grafana"]["container"]) == ("container", "pve-monitoring")
    assert (items["restic"]["target"], items["restic"]["container"]) == ("container", "pve-backup-manager")
    assert (items["htop"]["target"], items["htop"]["status"]) == ("none", "no-container")
    assert "no strategy container lists a component matching 'htop'" in items["htop"]["message"]
    assert "--container NAME" in items["htop"]["message"]
    assert data["refused"] == ["htop"] and data["ok"] is False
    table = install(tmp_path, "grafana", "htop", "--dry-run")
    assert table.returncode == 3 and "no container" in table.stdout and "pve-monitoring" in table.stdout
    assert "Traceback" not in table.stdout + table.stderr


def test_dry_run_of_placeable_packages_succeeds(tmp_path: Path) -> None:
    r = install(tmp_path, "grafana", "htop", "--container", "pve-dev-tools", "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {i["container"] for i in json.loads(r.stdout)["packages"]} == {"pve-dev-tools"}


def test_real_run_with_an_unplaceable_package_installs_nothing(tmp_path: Path) -> None:
    r = install(tmp_path, "grafana", "htop", "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    items = {i["package"]: i for i in json.loads(r.stdout)["packages"]}
    assert items["grafana"]["status"] == "planned" and "not installed: htop has no container" in \
        items["grafana"]["message"]
