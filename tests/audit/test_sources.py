"""How the audit asks the guard, the backends and the backup module: each answer or a stated reason.

The guard functions and backends here are small stand-ins with the real interfaces' shape, to reach
the failure paths; `test_real_guard_finding_shape` and tests/audit/test_guard_real.py use the real
guard, tests/audit/test_containers_pvesim.py the real proxmox backend.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pveguard.audit import findings, sources
from pveguard.backends.base import Guest
from pveguard.context import AppContext
from pveguard.errors import BackendUnavailable
from pveguard.strategy.models import Strategy


@pytest.fixture()
def ctx(tmp_path: Path) -> AppContext:
    return AppContext(tmp_path / "strategy.yaml", tmp_path / "state")


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)


def test_guard_without_state_is_not_installed_and_writes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                 ctx: AppContext) -> None:
    calls = []
    monkeypatch.setattr("pveguard.guard.install.guard_findings", lambda c: calls.append(c) or [])
    result, _ = sources.guard(ctx, Path("/"))
    assert calls == [] and not ctx.state_dir.exists()
    got = findings.guard_findings(result)
    assert [(f.id, f.severity) for f in got] == [("guard:not-installed", "high")]


def test_guard_offline_root_is_unavailable(monkeypatch: pytest.MonkeyPatch, ctx: AppContext) -> None:
    monkeypatch.setattr("pveguard.guard.install.guard_findings", lambda c: [])
    result, reason = sources.guard(ctx, Path("/mnt/other"))
    assert result is None and "offline audit of /mnt/other" in reason


@dataclass
class FakeGuardFinding:  # the shape of pveguard.guard.install.GuardFinding
    kind: str
    path: str
    message: str
    hint: str
    severity: str = "critical"


def test_guard_findings_are_normalised(monkeypatch: pytest.MonkeyPatch, ctx: AppContext) -> None:
    ctx.state_dir.mkdir()
    (ctx.state_dir / "pveguard.db").write_bytes(b"")
    items = [FakeGuardFinding("changed", "/etc/apt/apt.conf.d/05pveguard", "the guard's apt-conf file changed",
                              "run 'pveguard guard install'"),
             FakeGuardFinding("not-installed", "/etc/apt/x", "not installed", "install it", "warning")]
    monkeypatch.setattr("pveguard.guard.install.guard_findings", lambda c: items)
    result, reason = sources.guard(ctx, Path("/"))
    assert reason == ""
    got = [f.as_dict() for f in findings.guard_findings(result)]
    assert got[0] == {"id": "guard:changed", "category": "guard", "severity": "critical",
                      "title": "the guard's apt-conf file changed", "detail": "/etc/apt/apt.conf.d/05pveguard",
                      "fix": "run 'pveguard guard install'"}
    assert got[1]["severity"] == "high"


def test_real_guard_finding_shape() -> None:
    from pveguard.guard import install

    f = install.GuardFinding("removed", "/usr/local/sbin/x", "was removed", "reinstall", "critical")
    (got,) = findings.guard_findings([f])
    assert (got.id, got.severity, got.title, got.fix) == ("guard:removed", "critical", "was removed", "reinstall")


class StandInBackend:
    """Only the two verbs the audit uses, with the real Guest type."""

    name = "stand-in"

    def __init__(self, guests: list[Guest], configs: dict[int, dict[str, Any]]) -> None:
        self.guests, self.configs, self.closed, self.config_calls = guests, configs, False, []

    def list_guests(self) -> list[Guest]:
        return self.guests

    def get_config(self, guest: Guest) -> dict[str, Any]:
        self.config_calls.append(guest.name)
        return self.configs[guest.vmid]

    def close(self) -> None:
        self.closed = True


def test_guests_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    import pveguard.backends as backends

    strategy = Strategy()
    assert "offline audit" in sources.guests(strategy, Path("/srv/root"))[0].reason

    def unavailable(s: Strategy) -> Any:
        raise BackendUnavailable("no backend found: /etc/pve does not exist")

    monkeypatch.setattr(backends, "connect", unavailable, raising=False)
    view, backend = sources.guests(strategy, Path("/"))
    assert not view.available and view.reason == "no backend found: /etc/pve does not exist" and backend is None

    stand_in = StandInBackend(
        [Guest(101, "pve-monitoring", "n1", "lxc", "running"), Guest(900, "someone-else", "n1", "qemu", "stopped")],
        {101: {"cores": 2, "memory": 4096, "net0": "bridge=vmbr0,tag=100,firewall=1"}})
    monkeypatch.setattr(backends, "connect", lambda s: stand_in, raising=False)
    view, backend = sources.guests(strategy, Path("/"))
    assert view.available and view.backend == "stand-in"
    assert [g["name"] for g in view.guests] == ["pve-monitoring", "someone-else"]
    assert stand_in.config_calls == ["pve-monitoring"]       # configs only of strategy containers
    got = {f.id for f in findings.container_findings(strategy, view)}
    assert "container-missing:pve-api-gateway" in got and not any("pve-monitoring" in i for i in got)


def test_external_closes_the_backend(monkeypatch: pytest.MonkeyPatch, ctx: AppContext) -> None:
    import pveguard.backends as backends

    stand_in = StandInBackend([], {})
    monkeypatch.setattr(backends, "connect", lambda s: stand_in, raising=False)
    ext = sources.external(ctx, Strategy(), Path("/"))
    assert stand_in.closed and ext.guests.available
    assert ext.backup is not None and ext.backup.statuses == [] and ext.backup_reason == ""
    assert not ctx.state_dir.exists()  # the backup check reads <state-dir>/dump and creates nothing


def test_failing_backend_and_backup_check_are_reported(monkeypatch: pytest.MonkeyPatch, ctx: AppContext) -> None:
    import pveguard.backends as backends

    class Broken(StandInBackend):
        def list_guests(self) -> list[Guest]:
            raise ConnectionError("connection refused")

    broken = Broken([], {})
    monkeypatch.setattr(backends, "connect", lambda s: broken, raising=False)
    view, backend = sources.guests(Strategy(), Path("/"))
    assert not view.available and "ConnectionError: connection refused" in view.reason
    assert backend is None and broken.closed
    ext = sources.external(ctx, Strategy(), Path("/"))
    assert ext.backup is None and ext.backup_reason == "needs the guest list, which is unavailable"

    stand_in = StandInBackend([Guest(101, "web", "n1", "lxc", "running", managed=True),
                               Guest(102, "other", "n1", "lxc", "running")], {})
    monkeypatch.setattr(backends, "connect", lambda s: stand_in, raising=False)

    def failing(*a: Any, **k: Any) -> Any:
        raise RuntimeError("jobs.cfg unreadable")

    monkeypatch.setattr(sources, "collect", failing)
    ext = sources.external(ctx, Strategy(), Path("/"))
    assert ext.backup is None and "RuntimeError: jobs.cfg unreadable" in ext.backup_reason
    monkeypatch.undo()

    # the real check on a non-PVE backend: pveguard's own archives in <state-dir>/dump (none here); only
    # this installation's guest counts (its marker), not another's with the same tag (#15's loose end)
    from pveguard.backends.base import marker_line

    mine = Strategy.model_validate({"target": {"instance": "a1a1a1a1a1a1"}})
    stand_in.guests.append(Guest(103, "theirs", "n1", "lxc", "running", managed=True))
    stand_in.configs.update({101: {"description": marker_line("a1a1a1a1a1a1")},
                             103: {"description": marker_line("b2b2b2b2b2b2")}})
    monkeypatch.setattr(backends, "connect", lambda s: stand_in, raising=False)
    ext = sources.external(ctx, mine, Path("/"))
    assert ext.backup is not None and ext.backup.names == {"lxc/101": "web"}  # only this installation's guest
    got = findings.backup_findings(ext.backup)
    assert [(f.id, f.severity) for f in got] == [("backup-no-backup:web", "high")]
    assert got[0].title == "guest 101 (web) has no backup at all" and "pveguard backup run" in got[0].fix
