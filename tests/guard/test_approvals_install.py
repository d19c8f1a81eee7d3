"""Approvals in the state store and the guard's files under a temporary root (no apt needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.strategies import defaults_file
from pveguard.cli import main as cli_main
from pveguard.context import AppContext
from pveguard.guard import approvals, install
from pveguard.guard.decide import parse_policy
from pveguard.store import Store


@pytest.mark.parametrize(("spec", "expected"), [
    ("grafana", ("grafana", None)),
    ("grafana=10.4.2", ("grafana", "10.4.2")),
    ("zabbix-agent2=1:6.0.14+dfsg-1", ("zabbix-agent2", "1:6.0.14+dfsg-1")),
])
def test_parse_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert approvals.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["Grafana", "g", "grafana=", "grafana=1 0", "-x", ""])
def test_parse_spec_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        approvals.parse_spec(spec)


def test_lifecycle(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        a = approvals.add(store, "grafana", "10.0", "lab", 60, 2, "alice", now=1000)
        b = approvals.add(store, "htop", None, "debug", 10, 1, "bob", now=1000)
        assert [r.id for r in approvals.listing(store, now=1005)] == [a.id, b.id]
        assert [r.id for r in approvals.listing(store, now=1011)] == [a.id]  # htop expired
        assert approvals.consume(store, [a.id, b.id], now=1011) == [a.id]  # an expired one is not spent
        assert approvals.consume(store, [a.id], now=1012) == [a.id]
        assert approvals.consume(store, [a.id], now=1013) == []  # used up
        assert approvals.get(store, a.id).state(1013) == "used-up"  # type: ignore[union-attr]
        assert approvals.revoke(store, b.id, "carol", now=1020).revoked_by == "carol"
        with pytest.raises(ValueError, match="already revoked"):
            approvals.revoke(store, b.id, "carol")
        with pytest.raises(LookupError, match="no approval #99"):
            approvals.revoke(store, 99, "carol")
        states = {r.package: r.state(1020) for r in approvals.listing(store, include_all=True, now=1020)}
        assert states == {"grafana": "used-up", "htop": "revoked"}
        rules = approvals.for_packages(store, ["grafana", "other"])
        assert [(r.package, r.version, r.uses_left) for r in rules] == [("grafana", "10.0", 0)]


def _cli(tmp_path: Path, *args: str) -> int:
    try:
        cli_main(["--strategy", defaults_file(), "--state-dir", str(tmp_path / "state"), *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_approve_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(tmp_path, "approve", "grafana=10.0", "--reason", "lab", "--ttl", "2h", "--uses", "2") == 0
    assert _cli(tmp_path, "approvals", "--json") == 0
    out = capsys.readouterr().out
    listing = json.loads(out[out.index("["):])
    assert listing[0]["package"] == "grafana" and listing[0]["uses_left"] == 2
    assert _cli(tmp_path, "approve", "Bad Name", "--reason", "x") == 2
    assert "is not a Debian package name" in capsys.readouterr().err
    assert _cli(tmp_path, "approve", "x1", "--reason", "x", "--ttl", "soon") == 2
    assert "--ttl" in capsys.readouterr().err
    assert _cli(tmp_path, "revoke", "1") == 0
    assert _cli(tmp_path, "revoke", "7") == 2
    assert "there is no approval #7" in capsys.readouterr().err


def test_install_status_tamper_uninstall_under_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/pve").mkdir(parents=True)
    paths = install.GuardPaths(root)
    ctx = AppContext.from_options(defaults_file(), str(tmp_path / "state"))
    planned = install.install(ctx, dry_run=True, paths=paths)
    assert {r["state"] for r in planned} == {"created"} and not paths.apt_conf.exists()
    report = install.install(ctx, paths=paths)
    assert {r["role"] for r in report} == {"launcher", "policy", "cluster-policy", "apt-conf"}
    assert paths.launcher.stat().st_mode & 0o111
    # isolated (-I) and without site (-S): the hook needs only the standard library and pveguard
    assert paths.launcher.read_text().splitlines()[0].endswith(" -IS")
    assert 'DPkg::Tools::Options::/usr/local/lib/pveguard/apt-hook::InfoFD "20";' in paths.apt_conf.read_text()
    policy = parse_policy(paths.cluster_policy.read_text())
    assert policy.allow_core_only and policy.require_approval and policy.container_first
    assert dict(policy.containers)["pve-monitoring"][0] == "grafana"
    assert install.guard_findings(ctx, paths) == []
    assert {r["state"] for r in install.install(ctx, paths=paths)} == {"unchanged"}

    paths.policy.write_text(paths.policy.read_text().replace("ALLOW_CORE_ONLY=true", "ALLOW_CORE_ONLY=false"))
    paths.launcher.unlink()
    found = {(f.kind, Path(f.path).name) for f in install.guard_findings(ctx, paths)}
    assert found == {("changed", "installation_policy.conf"), ("removed", "apt-hook")}
    install.guard_findings(ctx, paths)  # seen again: not recorded again
    tamper = ctx.ledger.entries(action="guard.tamper")
    assert sorted(e.details["state"] for e in tamper) == ["changed", "removed"]
    data = install.status(ctx, paths)
    assert data["installed"] and not data["intact"] and data["policy"]["allow_core_only"] is True  # /etc/pve copy

    install.uninstall(ctx, paths=paths)
    assert not paths.apt_conf.exists() and not paths.cluster_policy.exists()
    assert [f.kind for f in install.guard_findings(ctx, paths)] == ["not-installed"]
    assert [e.action for e in ctx.ledger.entries(action="guard")][-1] == "guard.uninstall"
    ctx.close()
