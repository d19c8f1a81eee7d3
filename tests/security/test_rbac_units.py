"""RBAC desired state and plan, table by table (pure: no PVE)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from pveguard.security.isolation import Ct
from pveguard.security.rbac import RbacSeen, desired_rbac, parse_grant, plan_rbac
from pveguard.strategy.models import Strategy

CTS = [Ct("pve-monitoring", 100, "pve1"), Ct("pve-backup-manager", 101, "pve1"), Ct("pve-dev-tools", 102, "pve2"),
       Ct("pve-api-gateway", 103, "pve2")]


def strategy(**access: Any) -> Strategy:
    return Strategy.model_validate({"security": {"access": access}} if access else {})


@pytest.mark.parametrize(("text", "error"), [
    ("VM.Audit", "is not 'PRIV[,PRIV] on PATH'"),
    ("VM.Audti on self", "VM.Audti is not a PVE privilege"),
    ("VM.Audit on vms", "the path must be an ACL path"),
])
def test_bad_grants_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_grant(text)
    with pytest.raises(ValidationError, match=re.escape(error)):
        strategy(role_grants={"devtools": [text]})


def test_grants_normalize_paths() -> None:
    assert parse_grant(" VM.Audit , VM.PowerMgmt  on //vms/101/ ").path == "/vms/101"
    assert parse_grant("VM.Audit,VM.PowerMgmt on self").privileges == ("VM.Audit", "VM.PowerMgmt")


def test_default_strategy_wants_narrow_acls_per_family() -> None:
    wants = {w.role: w for w in desired_rbac(strategy(), CTS, "abc")}
    assert wants["monitoring"].acls == {"/nodes": "PVEGuardMonitoringNode", "/storage": "PVEGuardMonitoringStorage",
                                        "/vms": "PVEGuardMonitoringVM"}
    assert wants["monitoring"].pve_roles["PVEGuardMonitoringVM"] == ["VM.Audit"]
    backup = wants["backup"]
    assert backup.acls == {**{f"/vms/{c.vmid}": "PVEGuardBackupVM" for c in CTS},
                           "/storage/local": "PVEGuardBackupStorage"}
    assert backup.pve_roles == {"PVEGuardBackupStorage": ["Datastore.AllocateSpace", "Datastore.Audit"],
                                "PVEGuardBackupVM": ["VM.Audit", "VM.Backup"]}
    assert wants["gateway"].acls == {"/vms/103": "PVEGuardGatewayVM"}
    assert all("/" not in w.acls for w in wants.values())
    assert wants["gateway"].comment.endswith("instance=abc") and wants["gateway"].full_tokenid == \
        "pveguard-gateway@pve!pveguard"


def test_a_container_not_created_yet_has_no_acl_yet() -> None:
    [gw] = [w for w in desired_rbac(strategy(), CTS[:3], "abc") if w.role == "gateway"]
    assert gw.acls == {} and gw.pending == ["pve-api-gateway"]


def _seen(wants: Any, **kw: Any) -> RbacSeen:
    """Everything converged (token files everywhere), then `kw` replaces parts."""
    users = {w.userid: {"userid": w.userid, "enable": 1, "comment": w.comment} for w in wants}
    tokens = {w.full_tokenid: {"tokenid": w.tokenid, "privsep": 1} for w in wants}
    roles = {n: p for w in wants for n, p in w.pve_roles.items()}
    acl = [{"path": p, "type": t, "ugid": u, "roleid": r, "propagate": 1} for w in wants for p, r in w.acls.items()
           for t, u in (("user", w.userid), ("token", w.full_tokenid))]
    secrets: dict[int, bool | str] = {c.vmid: True for w in wants for c in w.containers}
    return RbacSeen(**{"users": users, "tokens": tokens, "roles": roles, "acl": acl, "secrets": secrets, **kw})


def test_converged_is_empty_and_each_drift_is_one_change() -> None:
    wants = desired_rbac(strategy(), CTS, "abc")
    assert plan_rbac(wants, _seen(wants)).changes == []
    seen = _seen(wants)
    seen.roles["PVEGuardMonitoringVM"] = ["VM.Audit", "VM.PowerMgmt"]
    seen.acl.append({"path": "/", "type": "token", "ugid": "pveguard-devtools@pve!pveguard", "roleid": "PVEAdmin",
                     "propagate": 1})
    seen.secrets[103] = False
    got = [(c.op, c.target, c.old, c.new) for c in plan_rbac(wants, seen).changes]
    assert got == [
        ("role-privs", "role/PVEGuardMonitoringVM", "VM.Audit,VM.PowerMgmt", "VM.Audit"),
        ("rotate", "token/pveguard-gateway@pve!pveguard", "missing or old in pve-api-gateway",
         "new secret in pve-api-gateway"),
        ("acl-remove", "acl/", "PVEAdmin", "(none)")]


def test_without_privsep_the_token_has_no_acls_of_its_own() -> None:
    wants = desired_rbac(strategy(api_token_privsep=False), CTS, "abc")
    seen = _seen(wants)
    ops = {(c.op, c.field) for c in plan_rbac(wants, seen).changes}
    assert ("token-privsep", "privsep") in ops
    assert all(c.op == "acl-remove" and c.field.startswith("token ") for c in plan_rbac(wants, seen).changes
               if c.op.startswith("acl"))


def test_a_token_waits_for_a_container_it_can_reach() -> None:
    wants = [w for w in desired_rbac(strategy(), CTS, "abc") if w.role == "gateway"]
    seen = _seen(wants, tokens={}, acl=[], secrets={103: "not running"})
    p = plan_rbac(wants, seen)
    assert [c.op for c in p.changes] == ["acl-add"]  # the user's ACL; the token's follows the token
    assert p.notes == ["role gateway: its token waits: the token file cannot be checked or delivered in "
                       "pve-api-gateway (not running)"]


def test_another_installations_user_is_left_alone() -> None:
    wants = desired_rbac(strategy(), CTS, "abc")
    seen = _seen(wants)
    seen.users["pveguard-backup@pve"]["comment"] = "pveguard: service user of role backup instance=other"
    seen.acl = [e for e in seen.acl if not e["ugid"].startswith("pveguard-backup@")]
    p = plan_rbac(wants, seen)
    assert p.changes == [] and any("pveguard-backup@pve exists but is not this installation's" in n for n in p.notes)
