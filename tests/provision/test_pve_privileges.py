"""plan/apply check the credentials' privileges first (GET /access/permissions) and refuse with what is
missing and the pveum commands that grant it; the needed list matches PVE's schema for every call."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.pveprivs import (
    CALLS,
    FIREWALL_CALLS,
    MIGRATE_CALLS,
    RBAC_CALLS,
    UPDATE_CALLS,
    grant_commands,
    needs,
)

from .conftest import Env


def _ok(sim: Any, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
    status, reason, body = sim.api(method, path, params)
    assert status == 200, (method, path, status, reason)
    return body["data"] if body else None


def _token(sim: Any, userid: str, tokenid: str) -> str:
    _ok(sim, "POST", "/access/users", {"userid": userid})
    data = _ok(sim, "POST", f"/access/users/{userid}/token/{tokenid}", {"privsep": 1})
    return f"{data['full-tokenid']}={data['value']}"


def _schema() -> dict[tuple[str, str], dict[str, Any]]:
    try:
        from pvesim.schema import SchemaNotFoundError, find_schema
    except ImportError:  # pragma: no cover
        pytest.skip("pvesim is not importable")
    try:
        path = find_schema()
    except SchemaNotFoundError as exc:
        pytest.skip(str(exc))
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def walk(nodes: list[dict[str, Any]]) -> None:
        for n in nodes:
            for method, info in (n.get("info") or {}).items():
                out[(method, n["path"])] = info
            walk(n.get("children") or [])

    walk(json.loads(path.read_text()))
    return out


_KIND_OF_PATH = {"/vms/{vmid}": "vms", "/nodes/{node}": "nodes", "/": "root",
                 "/storage/{storage}": ("rootfs", "templates")}


def test_needed_privileges_cover_the_schema_checks_of_every_call() -> None:
    schema = _schema()
    kinds: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for method, path, kind, priv in CALLS + UPDATE_CALLS + MIGRATE_CALLS + FIREWALL_CALLS:
        assert (method, path) in schema, f"{method} {path} is not a PVE API call"
        kinds.setdefault((method, path), set()).add((kind, priv))
    for (method, path), have in kinds.items():
        check = (schema[(method, path)].get("permissions") or {}).get("check")
        if not check:
            continue  # 'user: all' (checked inside): taken from the PVE code, see pveprivs' docstring
        assert check[0] == "perm", (method, path, check)
        want_kind = _KIND_OF_PATH[check[1]]
        kinds_ok = want_kind if isinstance(want_kind, tuple) else (want_kind,)
        privs = set(check[2])
        covered = {p for k, p in have if k in kinds_ok and p in privs}
        if "any" in check:
            assert covered, (method, path, check)
        else:
            assert covered == privs, (method, path, check)


def test_rbac_privileges_cover_the_schema_checks_of_the_access_calls() -> None:
    """The RBAC calls (security.access.rbac) against the schema's checks: 'perm' on /access, the user
    checks (userid-param Realm.AllocateUser, userid-group User.Modify) and perm-modify on the ACL path."""
    schema = _schema()
    have: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for method, path, kind, priv in RBAC_CALLS:
        assert (method, path) in schema, f"{method} {path} is not a PVE API call"
        have.setdefault((method, path), set()).add((kind, priv))

    def leaves(check: list[Any]) -> list[list[Any]]:
        return [x for sub in check[1:] for x in leaves(sub)] if check[0] in ("and", "or") else [check]

    for (method, path), got in have.items():
        check = (schema[(method, path)].get("permissions") or {}).get("check")
        if not check:
            continue  # user: all (filtered inside): ACL.pm read_acl wants Sys.Audit on /access for all of them
        for leaf in leaves(check):
            if leaf[0] == "perm":
                assert leaf[1] == "/access" and {("access", p) for p in leaf[2]} <= got, (method, path, leaf)
            elif leaf == ["userid-param", "Realm.AllocateUser"]:
                assert ("realm", "Realm.AllocateUser") in got
            elif leaf[0] == "userid-group":
                assert ("access-groups", "User.Modify") in got
            elif leaf[0] == "perm-modify":  # check_perm_modify: VM.Allocate on /vms/<vmid>, else Permissions.Modify
                assert {("vms", "VM.Allocate"), ("acl", "Permissions.Modify")} <= got
            else:
                assert leaf == ["userid-param", "self"], (method, path, leaf)  # an 'or' alternative


def _spec(**kw: Any) -> GuestSpec:
    base: dict[str, Any] = {"name": "a", "role": "r", "cores": 1, "memory_mib": 512, "swap_mib": 0, "disk_gib": 4,
                            "net": NetSpec("vmbr0", 100)}
    return GuestSpec(**{**base, **kw})


def test_needs_follow_the_strategy() -> None:
    got = {(n.path, n.priv) for n in needs([_spec(), _spec(storage="fast", net=NetSpec("vmbr1"),
                                                       unprivileged=False)], "local-lvm", "local")}
    assert {("/vms", "VM.Audit"), ("/vms", "VM.Allocate"), ("/nodes", "Sys.Audit"),
            ("/storage/local-lvm", "Datastore.AllocateSpace"), ("/storage/fast", "Datastore.AllocateSpace"),
            ("/storage/local", "Datastore.AllocateTemplate"), ("/sdn/zones/localnetwork/vmbr0/100", "SDN.Use"),
            ("/sdn/zones/localnetwork/vmbr1", "SDN.Use"), ("/", "Sys.Modify")} <= got
    assert ("/", "Sys.Modify") not in {(n.path, n.priv) for n in needs([_spec()], "local-lvm", "local")}


def test_token_that_cannot_see_guests_is_refused_and_the_grant_commands_work(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("apply", capsys=capsys)[0] == 0  # four containers exist (made with the root token)
    sim = penv.sim
    token = _token(sim, "plan@pve", "ro")
    # the user may read everything, its token /nodes and /storage only: it cannot see the guests. The
    # ACLs the hint adds on deeper paths replace the auditor role there, so the suggested role must
    # carry what that role gave too (Datastore.Audit on the template storage)
    _ok(sim, "PUT", "/access/acl", {"path": "/", "roles": "PVEAuditor", "users": "plan@pve"})
    for path in ("/nodes", "/storage"):
        _ok(sim, "PUT", "/access/acl", {"path": path, "roles": "PVEAuditor", "tokens": "plan@pve!ro"})
    penv.env["PVEGUARD_PVE_TOKEN"] = token
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 3, err  # refused, never "4 to create"
    assert "to create" not in out
    assert "plan@pve!ro lacks privileges that plan and apply need" in err
    assert re.search(r"/vms: VM\.Audit \(see the guests[^)]*\), VM\.Allocate", err)
    # the backup storage also takes Permissions.Modify: the backup role's ACL goes there (security.access.rbac)
    assert "/storage/local: Datastore.AllocateTemplate (download a missing template), Permissions.Modify" in err
    assert "/access/groups: User.Modify" in err and "/access/realm/pve: Realm.AllocateUser" in err
    assert "/storage/local-lvm: Datastore.AllocateSpace" in err
    assert "/sdn/zones/localnetwork/vmbr0/100: SDN.Use" in err
    # Sys.Audit on /nodes it has; only the ACL for the monitoring role's grant is missing there
    assert "/nodes: Permissions.Modify (the role users' and tokens' ACLs)\n" in err
    assert "pveum acl modify /vms --users 'plan@pve' --tokens 'plan@pve!ro' --roles PVEGuard" in err
    assert code == penv.run("apply", capsys=capsys)[0]  # apply refuses the same way

    # do what the hint says (through the API, as pveum would), for the token and its user
    privs = re.search(r'pveum role add PVEGuard --privs "([^"]+)"', err)
    assert privs is not None
    _ok(sim, "POST", "/access/roles", {"roleid": "PVEGuard", "privs": privs[1]})
    for path in re.findall(r"pveum acl modify (\S+) --users", err):
        _ok(sim, "PUT", "/access/acl", {"path": path, "roles": "PVEGuard", "users": "plan@pve",
                                        "tokens": "plan@pve!ro"})
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 0, err
    assert "Plan: 0 to create, 0 to update, 0 to finish, 0 to delete, 4 unchanged." in out


def test_grant_commands_name_user_or_token() -> None:
    from pveguard.backends.pveprivs import Need

    missing = {"/vms": [Need("/vms", "VM.Audit")]}
    assert grant_commands("ops@pve", missing) == [
        'pveum role add PVEGuard --privs "VM.Audit" (if it exists: pveum role modify PVEGuard --append 1 --privs '
        '"VM.Audit")', "pveum acl modify /vms --users 'ops@pve' --roles PVEGuard"]
    assert grant_commands("ops@pve!t", missing)[1] == \
        "pveum acl modify /vms --users 'ops@pve' --tokens 'ops@pve!t' --roles PVEGuard"


def test_root_at_pam_is_not_asked() -> None:
    from pveguard.backends.proxmox import ProxmoxBackend, PveSettings

    class NoApi:
        def __call__(self, *a: Any) -> Any:
            raise AssertionError("root@pam may do anything: no call expected")

    b = ProxmoxBackend(PveSettings(mode="local"), api=NoApi())
    b.specs = [_spec()]
    assert b.missing_privileges() == {}
    b.require_privileges()


def test_what_the_hint_grants_is_enough_to_create_the_guests(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """pvesim checks a container create option by option (check_ct_modify_config_perm: VM.Config.CPU,
    .Memory, .Network, .Disk, .Options, SDN.Use, Datastore.AllocateSpace) and the template
    (AllocateSpace or Audit): the privileges the needed list names must carry a whole apply."""
    sim = penv.sim
    token = _token(sim, "plan@pve", "ro")
    penv.env["PVEGUARD_PVE_TOKEN"] = token
    code, _out, err = penv.run("plan", capsys=capsys)
    assert code == 3, err
    privs = re.search(r'pveum role add PVEGuard --privs "([^"]+)"', err)
    assert privs is not None
    _ok(sim, "POST", "/access/roles", {"roleid": "PVEGuard", "privs": privs[1]})
    for path in re.findall(r"pveum acl modify (\S+) --users", err):
        _ok(sim, "PUT", "/access/acl", {"path": path, "roles": "PVEGuard", "users": "plan@pve",
                                        "tokens": "plan@pve!ro"})
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert len([g for g in sim.sim.guests.values() if g.type == "lxc"]) == 4


def test_update_snapshots_and_exhaustion_migration_privileges_are_named(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """VM.Snapshot (update: snapshot, rollback, prune) and VM.Migrate (exhaustion's migration) are checked by
    plan and doctor like the others: a token granted all but those two is refused with their names."""
    sim = penv.sim
    token = _token(sim, "plan@pve", "ro")
    penv.env["PVEGUARD_PVE_TOKEN"] = token
    code, _out, err = penv.run("plan", capsys=capsys)
    assert code == 3, err
    privs = re.search(r'pveum role add PVEGuard --privs "([^"]+)"', err)
    assert privs is not None and {"VM.Snapshot", "VM.Migrate"} <= set(privs[1].split(","))
    without = ",".join(p for p in privs[1].split(",") if p not in ("VM.Snapshot", "VM.Migrate"))
    _ok(sim, "POST", "/access/roles", {"roleid": "PVEGuard", "privs": without})
    for path in re.findall(r"pveum acl modify (\S+) --users", err):
        _ok(sim, "PUT", "/access/acl", {"path": path, "roles": "PVEGuard", "users": "plan@pve",
                                        "tokens": "plan@pve!ro"})
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 3, out + err
    assert ("/vms: VM.Snapshot (update's snapshot before upgrading, its rollback and pruning), VM.Migrate (move a "
            "capped container to the node with most headroom, resource_exhaustion: migrate)") in err, err
    code, out, err = penv.run("doctor", capsys=capsys)
    line = next(ln for ln in out.splitlines() if "pve-permissions" in ln)
    assert line.startswith("FAIL") and "VM.Snapshot" in out and "VM.Migrate" in out, out
    # without `migrate` in the exhaustion actions only VM.Snapshot is asked for
    penv.edit(lambda d: d.setdefault("emergency", {}).setdefault("resource_exhaustion", {}).update(
        actions=["identify_high_usage", "scale_resources"]))
    code, _out, err = penv.run("plan", capsys=capsys)
    assert code == 3 and "VM.Snapshot" in err and "VM.Migrate" not in err, err
    _ok(sim, "PUT", "/access/roles/PVEGuard", {"privs": "VM.Snapshot", "append": 1})
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 0, out + err
