"""The installation's identity: init writes one, the state keeps it, check says to pin it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.cli import run_cli
from pveguard.provision.instance import identity, state_instance
from pveguard.store import Store
from pveguard.strategy.models import Strategy, Target


def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(list(argv), capsys)


def test_init_writes_the_state_instance_into_the_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s, st = tmp_path / "s.yaml", tmp_path / "state"
    assert cli("--strategy", str(s), "--state-dir", str(st), "init", capsys=capsys)[0] == 0
    pinned = yaml.safe_load(s.read_text())["target"]["instance"]
    with Store(st) as store:
        assert pinned and state_instance(store) == pinned
    code, out, err = cli("--strategy", str(s), "--state-dir", str(st), "check", capsys=capsys)
    assert code == 0 and "target.instance" not in out + err
    # init --force keeps the identity (same installation)
    assert cli("--strategy", str(s), "--state-dir", str(st), "init", "--force", capsys=capsys)[0] == 0
    assert yaml.safe_load(s.read_text())["target"]["instance"] == pinned


def test_check_says_to_pin_the_state_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.strategy.defaults import render

    s, st = tmp_path / "s.yaml", tmp_path / "state"
    s.write_text(render())
    code, _out, err = cli("--strategy", str(s), "--state-dir", str(st), "check", capsys=capsys)
    assert code == 0 and "target.instance: not set" in err and "pveguard init" in err
    assert not st.exists()  # check reads, never creates
    with Store(st) as store:
        kept = identity(Strategy(), store, lambda *a, **k: None).id
    code, _out, err = cli("--strategy", str(s), "--state-dir", str(st), "check", capsys=capsys)
    assert code == 0 and f"add 'instance: {kept}' under 'target:'" in err


def test_identity_is_generated_once_and_the_strategy_wins(tmp_path: Path) -> None:
    recorded: list[tuple[str, str]] = []

    def record(action: str, target: str = "", **_details: object) -> None:
        recorded.append((action, target))

    with Store(tmp_path) as store:
        first = identity(Strategy(), store, record)
        assert first.source == "state" and identity(Strategy(), store, record) == first
        assert recorded == [("provision.instance", first.id)]
        pinned = identity(Strategy(target=Target(instance="pinned-1")), store, record)
        assert pinned.id == "pinned-1" and state_instance(store) == "pinned-1"
        assert recorded[-1] == ("provision.instance", "pinned-1")


@pytest.mark.parametrize("bad", ["", "has space", "-leading", "x" * 64, "a=b"])
def test_instance_must_fit_in_the_marker(bad: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Target(instance=bad)
