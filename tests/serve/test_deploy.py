"""The systemd unit for serve (checked by systemd-analyze verify) and what apply pushes into the
strategy's serve.container."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pveguard.errors import ConfigError, OperationError
from pveguard.serve.deploy import ENV_FILE, STRATEGY, TOKEN_FILE, UNIT_NAME, install_plan, render_unit
from pveguard.strategy.defaults import render
from pveguard.strategy.load import check_text
from pveguard.strategy.models import Strategy

FP = ":".join(["AB"] * 32)
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("true") or "/bin/true"
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(exe, "/etc/pveguard/strategy.yaml", "/var/lib/pveguard", "0.0.0.0:8450",
                                env_file="/etc/pveguard/serve.env"))
    text = unit.read_text()
    assert f"ExecStart={exe} --strategy /etc/pveguard/strategy.yaml --state-dir /var/lib/pveguard serve " \
           "--listen 0.0.0.0:8450\n" in text
    assert "KillSignal=SIGTERM" in text and "StateDirectory=pveguard" in text
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    # a broken unit does fail the same check (the check can fail)
    unit.write_text(text.replace("Type=simple", "Type=nonsense"))
    bad = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         check=False)
    assert "nonsense" in bad.stderr


def test_unit_needs_absolute_paths() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        render_unit("pveguard", "/etc/s.yaml", "/var/lib/pveguard")


def test_install_plan_pushes_the_strategy_unit_and_wheel_never_a_secret(tmp_path: Path) -> None:
    doc = yaml.safe_load(render())
    doc["serve"]["container"] = "pve-api-gateway"
    doc["serve"]["listen"] = "0.0.0.0:8450"
    strategy = Strategy.model_validate(doc)
    wheel = tmp_path / "pveguard-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK-fake-wheel")
    plan = install_plan(strategy, doc, wheel, "10.0.0.1:8006", "pveguard@pve", "gateway", FP)
    assert plan.container == "pve-api-gateway" and plan.version == "0.1.0"
    # the role token RBAC delivered stays where it is: serve reads it in the container
    assert TOKEN_FILE not in plan.files
    assert plan.files[STRATEGY][1] == 0o600 and plan.files[ENV_FILE][1] == 0o600
    assert b"PVEGUARD_SELF_CONTAINER=pve-api-gateway\n" in plan.files[ENV_FILE][0]
    assert f"/root/{wheel.name}" not in plan.manifest()["files"]  # the wheel is compared by its version
    pushed_text = plan.files[STRATEGY][0].decode()
    pushed, problems = check_text(pushed_text, "pushed.yaml")
    assert pushed is not None, problems
    px = pushed.target.proxmox
    assert (pushed.target.backend, px.host, px.user, px.token_id, px.token_secret_file, px.fingerprint) == (
        "proxmox", "10.0.0.1:8006", "pveguard@pve", "gateway", TOKEN_FILE, FP)
    assert pushed.serve.listen == "0.0.0.0:8450"
    unit = plan.files[f"/etc/systemd/system/{UNIT_NAME}"][0].decode()
    assert f"EnvironmentFile=-{ENV_FILE}" in unit and "/opt/pveguard/bin/pveguard" in unit
    assert plan.files[f"/root/{wheel.name}"][0] == b"PK-fake-wheel"
    cmds = plan.as_dict()["commands"]
    assert cmds[-2:] == [f"systemctl enable {UNIT_NAME}", f"systemctl restart {UNIT_NAME}"]
    assert cmds[0] == "python3 -m venv /opt/pveguard"
    # an admin's CA file (a path on the admin's machine) travels as its content, or not at all
    doc["target"]["proxmox"]["ca_file"] = "/home/admin/pve-root-ca.pem"
    assert yaml.safe_load(install_plan(strategy, doc, wheel, "h:8006", "u@pve", "t").files[STRATEGY][0]
                          )["target"]["proxmox"]["ca_file"] is None
    with_ca = install_plan(strategy, doc, wheel, "h:8006", "u@pve", "t", ca_pem=b"-----BEGIN CERTIFICATE-----\n")
    assert with_ca.files["/etc/pveguard/pve-ca.pem"] == (b"-----BEGIN CERTIFICATE-----\n", 0o644)
    assert yaml.safe_load(with_ca.files[STRATEGY][0])["target"]["proxmox"]["ca_file"] == "/etc/pveguard/pve-ca.pem"


def test_install_plan_refusals(tmp_path: Path) -> None:
    doc = yaml.safe_load(render())
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not set"):
        install_plan(Strategy.model_validate(doc), doc, wheel, "h", "a@pve", "b")
    doc["serve"]["container"] = "nope"
    with pytest.raises(ConfigError, match="not one of the strategy's containers"):
        install_plan(Strategy.model_validate(doc), doc, wheel, "h", "a@pve", "b")
    doc["serve"]["container"] = "pve-api-gateway"
    with pytest.raises(ConfigError, match="not a wheel file name"):
        install_plan(Strategy.model_validate(doc), doc, wheel, "h", "a@pve", "b")
    with pytest.raises(OperationError, match="no pveguard wheel"):
        install_plan(Strategy.model_validate(doc), doc, tmp_path / "pveguard-1-py3-none-any.whl", "h", "a@pve", "b")


def test_a_token_secret_file_may_be_the_role_token_file() -> None:
    from pveguard.backends import token_secret_of

    assert token_secret_of("# comment\nPVE_TOKEN_ID=u@pve!pveguard\nPVE_TOKEN_SECRET=abc-123\n") == "abc-123"
    assert token_secret_of("abc-123\n") == "abc-123"


@needs_systemd
def test_serve_print_unit_verifies(tmp_path: Path) -> None:
    import os
    import sys

    from infra.strategies import defaults_file

    proc = subprocess.run([sys.executable, "-m", "pveguard", "--strategy", defaults_file(), "--state-dir",
                           str(tmp_path / "state"), "serve", "--listen", "127.0.0.1:8450", "--print-unit"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert f"--state-dir {tmp_path / 'state'} serve --listen 127.0.0.1:8450" in proc.stdout
    unit = tmp_path / UNIT_NAME
    unit.write_text(proc.stdout)
    check = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0 and not check.stderr.strip(), check.stderr
