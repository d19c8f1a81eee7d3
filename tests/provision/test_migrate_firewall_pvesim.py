"""A migrated service's ports on PVE's guest firewall (pvesim): `migrate` opens them through apply's own
firewall converge, `plan`/`apply`/`isolation check` treat them as desired state, rollback removes them;
an admin's own guest rule is never touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pveguard.context import AppContext
from pveguard.migrate import run as mr
from pveguard.migrate.endpoints import Local
from pveguard.migrate.journal import Journal
from pveguard.security.isolation import EXTRA_COMMENT

from .conftest import Env
from .test_apply_pvesim import ledger_entries, managed
from .test_isolation_pvesim import _api, _fw, _mgmt_here

pytest.importorskip("pvesim.testing")
SOURCE_IP = "10.0.0.5"


def _extra(rules: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    return [(r["proto"], r["dport"], r.get("source", ""), r["enable"]) for r in rules
            if str(r.get("comment", "")).startswith(EXTRA_COMMENT)]


def _migration(penv: Env) -> mr.Migration:
    app = AppContext(penv.strategy, penv.dir / "state")
    journal = Journal(app.store)
    doc = {"service": "nginx.service", "ports": [{"proto": "tcp", "port": 80, "address": "0.0.0.0"},
                                                 {"proto": "tcp", "port": 443, "address": "::"}],
           "config_paths": [], "data_paths": [], "packages": []}
    # what the earlier steps learned: the container's address and the route the source reaches it by
    run = journal.begin("nginx.service", "ssh:pve1", "pve-api-gateway",
                        {"plan": doc, "state": {"ct_address": "10.0.0.9", "fw_source": SOURCE_IP,
                                                "route_dev": "vmbr0"}})
    return mr.Migration(app, journal, run, Local(), lambda text: None)


def test_migrated_ports_join_the_guest_firewall_and_apply_keeps_them(
        penv: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    penv.edit(_mgmt_here)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    for k, v in penv.env.items():
        monkeypatch.setenv(k, v)
    g = managed(penv)["pve-api-gateway"]
    base = f"/nodes/{g['node']}/lxc/{g['vmid']}/firewall/rules"
    # an admin's own rule on the same guest: pveguard leaves it alone throughout
    _api(penv, "POST", base, {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "8443", "enable": 1,
                              "comment": "the admin's"})

    m = _migration(penv)
    opened = mr._open_firewall(m)
    assert opened["rules"] == [f"tcp/80,443 from {SOURCE_IP}"]
    assert any("extra rules: (none) -> tcp/80,443 from 10.0.0.5" in c for c in opened["converged"]), opened
    rules = _fw(penv, g, "rules")
    assert _extra(rules) == [("tcp", "80,443", SOURCE_IP, 1)]
    assert any(r["type"] == "group" for r in rules) and any(r.get("comment") == "the admin's" for r in rules)
    entries = [e for e in ledger_entries(penv, "migrate.firewall") if e.target == f"ct/{g['vmid']}"]
    assert [e.action for e in entries] == ["migrate.firewall.intent", "migrate.firewall"]
    assert entries[-1].details["after"] == {"extra rules": f"tcp/80,443 from {SOURCE_IP}"}
    assert entries[-1].details["service"] == "nginx.service" and entries[-1].details["result"] == "ok"
    assert [e.details["after"] for e in ledger_entries(penv, "migrate.firewall-desired")] == [
        [f"tcp/80,443 from {SOURCE_IP}"]]
    m.app.close()

    # desired state: plan has nothing to change and names it, apply keeps it, the check expects it
    plan = penv.json("plan", capsys=capsys)
    assert plan["firewall"]["changes"] == []
    assert f"kept beyond the strategy: pve-api-gateway: tcp/80,443 from {SOURCE_IP} (migrate:nginx.service)" in \
        plan["firewall"]["notes"]
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert _extra(_fw(penv, g, "rules")) == [("tcp", "80,443", SOURCE_IP, 1)]
    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 0, out

    # removed by hand: drift that plan shows, the check names and apply puts back
    ours = next(r for r in _fw(penv, g, "rules") if str(r.get("comment", "")).startswith(EXTRA_COMMENT))
    _api(penv, "DELETE", f"{base}/{ours['pos']}", {"digest": ours["digest"]})
    code, out, _ = penv.run("isolation", "check", capsys=capsys)
    assert code == 1 and f"its guest rules lack tcp/80,443 from {SOURCE_IP}" in out, out
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 2 and f"ct/{g['vmid']} extra rules: (none) -> tcp/80,443 from {SOURCE_IP}" in out, out
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert _extra(_fw(penv, g, "rules")) == [("tcp", "80,443", SOURCE_IP, 1)]

    # rollback's part: the rows go, the converge removes the rule, the admin's stays
    m = _migration_again(penv)
    closed = mr._close_firewall(m)
    assert closed["removed"] == [f"tcp/80,443 from {SOURCE_IP}"]
    rules = _fw(penv, g, "rules")
    assert _extra(rules) == [] and any(r.get("comment") == "the admin's" for r in rules)
    m.app.close()
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def _migration_again(penv: Env) -> mr.Migration:
    app = AppContext(penv.strategy, Path(penv.dir / "state"))
    journal = Journal(app.store)
    run = journal.get("nginx.service")
    assert run is not None
    return mr.Migration(app, journal, run, Local(), lambda text: None)
