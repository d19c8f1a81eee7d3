"""RBAC per container role against pvesim: issue #13's done-when, each role's token as PVE evaluates it."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env
from .test_exec_pvesim import fake_ssh

pytest.importorskip("pvesim.testing")

FORBIDDEN_ON_ROOT = {"Sys.Modify", "Permissions.Modify", "User.Modify", "VM.Allocate"}
# what each default role may hold anywhere (its grants in the default strategy)
ALLOWED = {
    "monitoring": {"Sys.Audit", "Sys.Syslog", "VM.Audit", "Datastore.Audit"},  # Sys.Syslog: the firewall log
    "backup": {"VM.Audit", "VM.Backup", "Datastore.Audit", "Datastore.AllocateSpace"},
    "devtools": {"VM.Audit"},
    "gateway": {"VM.Audit"},
}
NAMES = {"monitoring": "pve-monitoring", "backup": "pve-backup-manager", "devtools": "pve-dev-tools",
         "gateway": "pve-api-gateway"}
SECRET = "/etc/pveguard/pve-token"


def vmids(penv: Env) -> dict[str, int]:
    return {g["name"]: int(g["vmid"]) for g in penv.lxc()}


def token_file(penv: Env, vmid: int) -> dict[str, str]:
    files = penv.sim.control("GET", f"/guests/{vmid}/files")
    text = base64.b64decode(files[SECRET]).decode()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def as_token(penv: Env, role: str, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
    f = token_file(penv, vmids(penv)[NAMES[role]])
    return penv.sim.api(method, path, params, token=f"{f['PVE_TOKEN_ID']}={f['PVE_TOKEN_SECRET']}")


def with_pct(penv: Env, tmp_path: Path) -> None:
    """pct exec/push on the sim's nodes through a fake ssh (the token file goes in with pct push)."""
    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    penv.env.update(PATH=f"{bindir}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"])


def test_rbac_least_privilege_converge_rotate(penv: Env, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with_pct(penv, tmp_path)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    ids = vmids(penv)
    secrets = {}
    for role, name in NAMES.items():
        f = token_file(penv, ids[name])
        assert f["PVE_TOKEN_ID"] == f"pveguard-{role}@pve!pveguard"
        secrets[role] = f["PVE_TOKEN_SECRET"]
        assert secrets[role] not in out + err  # never printed
        assert penv.sim.control("GET", f"/guests/{ids[name]}/modes")[SECRET] == "0600"
        # the token as PVE evaluates it, asked as that token
        status, reason, body = as_token(penv, role, "GET", "/access/permissions")
        assert status == 200, reason
        perms: dict[str, dict[str, int]] = body["data"]
        assert not set(perms.get("/", {})) & FORBIDDEN_ON_ROOT, (role, perms.get("/"))
        held = set().union(*(set(p) for p in perms.values())) if perms else set()
        assert held and held <= ALLOWED[role], (role, perms)
        status, _r, body = as_token(penv, role, "GET", "/access/permissions", {"path": "/"})
        assert status == 200 and body["data"]["/"] == {}, (role, body)
    # privilege separation: the token has only what its own ACLs grant (and the user too)
    status, _r, body = penv.sim.api("GET", "/access/acl")
    acl = body["data"]
    assert {e["ugid"] for e in acl if e["type"] == "token"} == {f"pveguard-{r}@pve!pveguard" for r in NAMES}
    gw = [e for e in acl if e["ugid"].startswith("pveguard-gateway@pve")]
    assert {(e["path"], e["type"]) for e in gw} == {(f"/vms/{ids['pve-api-gateway']}", "user"),
                                                    (f"/vms/{ids['pve-api-gateway']}", "token")}

    # monitoring reads the cluster but cannot stop a guest
    status, _r, body = as_token(penv, "monitoring", "GET", "/cluster/resources")
    assert status == 200 and {g["vmid"] for g in body["data"] if g.get("type") == "lxc"} == set(ids.values())
    g = next(x for x in penv.lxc() if x["name"] == "pve-api-gateway")
    status, reason, _b = as_token(penv, "monitoring", "POST", f"/nodes/{g['node']}/lxc/{g['vmid']}/status/stop")
    assert status == 403, reason
    # the gateway sees itself only
    status, _r, body = as_token(penv, "gateway", "GET", "/cluster/resources", {"type": "vm"})
    assert [x["vmid"] for x in body["data"]] == [ids["pve-api-gateway"]]

    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "Nothing to do" in out, out

    # a removed ACL is drift: plan shows it, apply restores it, the ledger has before/after
    mon = ids["pve-monitoring"]
    penv.sim.api("PUT", "/access/acl", {"path": "/vms", "roles": "PVEGuardMonitoringVM",
                                        "tokens": "pveguard-monitoring@pve!pveguard", "delete": 1})
    status, _r, body = as_token(penv, "monitoring", "GET", "/cluster/resources", {"type": "vm"})
    assert body["data"] == []  # PVE hides what the token may not see
    plan = penv.json("plan", capsys=capsys)
    assert [(c["target"], c["field"], c["old"], c["new"]) for c in plan["rbac"]["changes"]] == [
        ("acl/vms", "token pveguard-monitoring@pve!pveguard", "(none)", "PVEGuardMonitoringVM")]
    # an ACL nobody asked for is drift too (a wider grant to a role token is removed)
    penv.sim.api("PUT", "/access/acl", {"path": "/", "roles": "PVEAdmin", "users": "pveguard-devtools@pve"})
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert "rbac" in out or "RBAC" in out
    status, _r, body = as_token(penv, "monitoring", "GET", "/cluster/resources", {"type": "vm"})
    assert len(body["data"]) == 4
    status, _r, body = as_token(penv, "devtools", "GET", "/access/permissions", {"path": "/"})
    assert body["data"]["/"] == {}
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out

    # rotate: a new secret in the file, the old one stops working
    old = secrets["monitoring"]
    code, out, err = penv.run("tokens", "rotate", "monitoring", capsys=capsys)
    assert code == 0, out + err
    new = token_file(penv, mon)["PVE_TOKEN_SECRET"]
    assert new != old and new not in out + err
    status, _r, _b = penv.sim.api("GET", "/version", token=f"pveguard-monitoring@pve!pveguard={old}")
    assert status == 401
    status, _r, body = as_token(penv, "monitoring", "GET", "/cluster/resources", {"type": "vm"})
    assert status == 200 and len(body["data"]) == 4  # the re-created token has its ACLs back
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out

    # a container that was stopped during a rotation keeps the old secret: plan shows it once it runs
    penv.sim.control("POST", f"/guests/{mon}", {"status": "stopped"})
    code, out, err = penv.run("tokens", "rotate", "monitoring", capsys=capsys)
    assert code == 0 and "not running" in out, out + err
    stale = token_file(penv, mon)["PVE_TOKEN_SECRET"]
    assert stale == new
    penv.sim.control("POST", f"/guests/{mon}", {"status": "running"})
    plan = penv.json("plan", capsys=capsys)
    assert [(c["target"], c["field"], c["old"]) for c in plan["rbac"]["changes"]] == [
        ("token/pveguard-monitoring@pve!pveguard", "secret", "missing or old in pve-monitoring")]
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    new = token_file(penv, mon)["PVE_TOKEN_SECRET"]
    assert new != stale
    status, _r, body = as_token(penv, "monitoring", "GET", "/cluster/resources", {"type": "vm"})
    assert status == 200 and len(body["data"]) == 4
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out

    listing = penv.json("tokens", capsys=capsys)
    rows = {r["role"]: r for r in listing["tokens"]}
    assert set(rows) == set(NAMES)
    assert rows["monitoring"]["privsep"] is True and rows["monitoring"]["exists"] is True
    assert rows["monitoring"]["delivered"] == [{"container": "pve-monitoring", "vmid": mon, "path": SECRET}]
    assert rows["monitoring"]["rotated"] and rows["monitoring"]["rotated"] > rows["backup"]["rotated"]
    assert new not in json.dumps(listing)

    with Store(penv.dir / "state") as store:
        entries = [e for e in Ledger(store).entries() if "rbac" in e.action or "tokens" in e.action]
    restored = [e for e in entries if e.action == "provision.rbac" and e.target == "acl/vms"
                and e.details["before"] == {"token pveguard-monitoring@pve!pveguard": "(none)"}]
    assert [e.details["after"] for e in restored] == [{"token pveguard-monitoring@pve!pveguard":
                                                       "PVEGuardMonitoringVM"}] * len(restored) and restored
    assert [e for e in entries if e.action == "tokens.rotate.intent" and e.target.startswith("token/")]
    dump = json.dumps([e.details for e in entries])
    assert entries and old not in dump and new not in dump
    assert all(s not in dump for s in secrets.values())


def test_without_pct_the_token_waits_and_the_plan_says_why(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """No ssh to the nodes: users, roles and user ACLs converge; no token is made whose secret would be lost."""
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    status, _r, body = penv.sim.api("GET", "/access/users/pveguard-monitoring@pve/token")
    assert status == 200 and body["data"] == []
    plan = penv.json("plan", capsys=capsys)
    assert plan["changes"] is False
    assert any("monitoring: its token waits" in n and "pct exec does not reach it" in n for n in plan["rbac"]["notes"])
    listing = penv.json("tokens", capsys=capsys)
    assert {r["role"]: r["exists"] for r in listing["tokens"]} == dict.fromkeys(NAMES, False)
    code, _out, err = penv.run("tokens", "rotate", capsys=capsys)
    assert code != 0 and "no token yet" in err and "Traceback" not in err


def test_plan_refuses_when_its_own_token_cannot_manage_users(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """pveguard's token with what provisioning needs but not User.Modify etc.: plan names them and stops."""
    sim = penv.sim
    ok = [sim.api("POST", "/access/users", {"userid": "ops@pve"}),
          sim.api("PUT", "/access/acl", {"path": "/", "roles": "PVEAdmin", "users": "ops@pve"})]
    assert all(s == 200 for s, _r, _b in ok)
    _s, _r, body = sim.api("POST", "/access/users/ops@pve/token/plan", {"privsep": 0})
    # PVEAdmin lacks Sys.Modify (roles) and Permissions.Modify (ACLs on /vms, /nodes, /storage)
    penv.env["PVEGUARD_PVE_TOKEN"] = f"{body['data']['full-tokenid']}={body['data']['value']}"
    code, _out, err = penv.run("plan", capsys=capsys)
    assert code != 0 and "Traceback" not in err
    assert "Sys.Modify" in err and "Permissions.Modify" in err and "pveum" in err, err
    _s, _r, body = sim.api("GET", "/access/users")
    assert not [u for u in body["data"] if u["userid"].startswith("pveguard-")]  # nothing was changed


def test_lxc_backend_lists_no_tokens_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from infra.cli import run_cli
    from infra.strategies import defaults_file

    env = {"PVEGUARD_STRATEGY": defaults_file(), "PVEGUARD_STATE_DIR": str(tmp_path / "state"),
           "PVEGUARD_BACKEND": "lxc"}
    code, out, err = run_cli(["tokens", "--json"], capsys, env)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["backend"] == "lxc" and doc["tokens"] == [] and "proxmox backend" in doc["note"]


def test_a_role_that_leaves_the_strategy_takes_its_user_token_roles_and_acls(
        penv: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only this installation's: another installation's role user and its PVEGuard role stay, and a PVEGuard
    role someone else's ACL uses stays; each removal is in the ledger with before/after."""
    with_pct(penv, tmp_path)
    assert penv.run("apply", capsys=capsys)[0] == 0
    sim = penv.sim
    # another installation's role user, role and ACL on the same PVE
    ok = [sim.api("POST", "/access/users", {"userid": "pveguard-ci@pve",
                                            "comment": "pveguard: service user of role ci instance=0therinst"}),
          sim.api("POST", "/access/roles", {"roleid": "PVEGuardCiVM", "privs": "VM.Audit"}),
          sim.api("PUT", "/access/acl", {"path": "/vms", "roles": "PVEGuardCiVM", "users": "pveguard-ci@pve"}),
          # an admin gave the gateway's role to a user of their own: that role is in use, it stays
          sim.api("POST", "/access/users", {"userid": "alice@pve"}),
          sim.api("PUT", "/access/acl", {"path": "/pool/x", "roles": "PVEGuardGatewayVM", "users": "alice@pve"})]
    assert all(s == 200 for s, _r, _b in ok), ok
    dev = vmids(penv)["pve-dev-tools"]
    gw = vmids(penv)["pve-api-gateway"]

    def drop(doc: dict[str, Any]) -> None:
        doc["containers"] = [c for c in doc["containers"] if c["name"] not in ("pve-dev-tools", "pve-api-gateway")]
    penv.edit(drop)
    plan = penv.json("plan", capsys=capsys)
    got = [(c["target"], c["field"], c["old"], c["new"]) for c in plan["rbac"]["changes"]]
    # the backup role no longer covers the two (a container that left the strategy, as before)
    assert [g for g in got if "backup" in g[1]] == [
        (f"acl/vms/{v}", f"{t} pveguard-backup@pve{s}", "PVEGuardBackupVM", "(none)")
        for v in (dev, gw) for t, s in (("token", "!pveguard"), ("user", ""))]
    assert [g for g in got if "backup" not in g[1]] == [
        (f"acl/vms/{dev}", "token pveguard-devtools@pve!pveguard", "PVEGuardDevtoolsVM", "(none)"),
        (f"acl/vms/{dev}", "user pveguard-devtools@pve", "PVEGuardDevtoolsVM", "(none)"),
        ("token/pveguard-devtools@pve!pveguard", "token", "exists", "(none)"),
        ("role/PVEGuardDevtoolsVM", "privileges", "VM.Audit", "(no such role)"),
        ("user/pveguard-devtools@pve", "user", "pveguard-devtools@pve", "(none)"),
        (f"acl/vms/{gw}", "token pveguard-gateway@pve!pveguard", "PVEGuardGatewayVM", "(none)"),
        (f"acl/vms/{gw}", "user pveguard-gateway@pve", "PVEGuardGatewayVM", "(none)"),
        ("token/pveguard-gateway@pve!pveguard", "token", "exists", "(none)"),
        ("user/pveguard-gateway@pve", "user", "pveguard-gateway@pve", "(none)")], got
    assert any("role devtools left the strategy" in n for n in plan["rbac"]["notes"])
    code, out, err = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 2 and "user/pveguard-devtools@pve" in out, out + err
    old = token_file(penv, dev)

    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    _s, _r, body = sim.api("GET", "/access/users")
    users = {u["userid"] for u in body["data"]}
    assert "pveguard-devtools@pve" not in users and "pveguard-gateway@pve" not in users
    assert {"pveguard-ci@pve", "alice@pve", "pveguard-monitoring@pve", "pveguard-backup@pve"} <= users
    _s, _r, body = sim.api("GET", "/access/roles")
    roles = {r["roleid"] for r in body["data"]}
    assert "PVEGuardDevtoolsVM" not in roles and {"PVEGuardCiVM", "PVEGuardGatewayVM", "PVEGuardMonitoringVM"} <= roles
    _s, _r, body = sim.api("GET", "/access/acl")
    assert not [e for e in body["data"] if e["ugid"].startswith(("pveguard-devtools@", "pveguard-gateway@"))]
    assert {(e["path"], e["ugid"]) for e in body["data"] if e["roleid"] in ("PVEGuardCiVM", "PVEGuardGatewayVM")} \
        == {("/vms", "pveguard-ci@pve"), ("/pool/x", "alice@pve")}
    status, _r, _b = sim.api("GET", "/version", token=f"{old['PVE_TOKEN_ID']}={old['PVE_TOKEN_SECRET']}")
    assert status == 401  # the token file left in the unpruned container opens nothing any more
    plan = penv.json("plan", capsys=capsys)
    assert plan["rbac"]["changes"] == [], plan["rbac"]

    with Store(penv.dir / "state") as store:
        entries = [e for e in Ledger(store).entries() if e.action.startswith("provision.rbac")]
        from pveguard.security import rbac_state

        assert set(rbac_state.load(store)) == {"monitoring", "backup"}  # where the removed secrets went: forgotten
    user = [e for e in entries if e.target == "user/pveguard-devtools@pve"]
    assert [e.details.get("result") for e in user][-2:] == [None, "ok"]
    assert user[-1].details["before"] == {"user": "pveguard-devtools@pve"} and user[-1].details["after"] == {
        "user": "(none)"}
    assert [e for e in entries if e.target == "role/PVEGuardDevtoolsVM" and e.details.get("result") == "ok"
            and e.details["before"] == {"privileges": "VM.Audit"}]


def _works(penv: Env, f: dict[str, str]) -> bool:
    status, _r, _b = penv.sim.api("GET", "/version", token=f"{f['PVE_TOKEN_ID']}={f['PVE_TOKEN_SECRET']}")
    return status == 200


def test_a_container_that_changes_role_gets_the_new_roles_token_and_the_old_secret_stops_working(
        penv: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The container kept its name and moved to another role: its token file becomes the new role's, and
    the old role's secret it held opens nothing any more (the old role's other container gets a new one)."""
    with_pct(penv, tmp_path)

    def both_devtools(doc: dict[str, Any]) -> None:
        for c in doc["containers"]:
            if c["name"] == "pve-api-gateway":
                c["role"] = "devtools"
    penv.edit(both_devtools)
    assert penv.run("apply", capsys=capsys)[0] == 0
    ids = vmids(penv)
    dev, gw = ids["pve-dev-tools"], ids["pve-api-gateway"]
    before = token_file(penv, gw)
    assert before["PVE_TOKEN_ID"] == "pveguard-devtools@pve!pveguard" and token_file(penv, dev) == before

    def back_to_gateway(doc: dict[str, Any]) -> None:
        for c in doc["containers"]:
            if c["name"] == "pve-api-gateway":
                c["role"] = "gateway"
    penv.edit(back_to_gateway)
    plan = penv.json("plan", capsys=capsys)
    assert [a["action"] for a in plan["actions"] if a["name"] == "pve-api-gateway"] != ["create"]
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert vmids(penv)["pve-api-gateway"] == gw  # kept, not re-created
    now = token_file(penv, gw)
    assert now["PVE_TOKEN_ID"] == "pveguard-gateway@pve!pveguard" and _works(penv, now)
    assert not _works(penv, before), "the devtools secret the gateway container held still opens PVE"
    kept = token_file(penv, dev)
    assert kept["PVE_TOKEN_ID"] == "pveguard-devtools@pve!pveguard" and _works(penv, kept)
    assert before["PVE_TOKEN_SECRET"] not in out + err + now["PVE_TOKEN_SECRET"] + kept["PVE_TOKEN_SECRET"]
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0, out
