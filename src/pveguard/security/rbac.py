"""RBAC on PVE: one user and API token per service-container role, least privilege, as desired state.

Per container role `<role>` (security.access.rbac; docs/rbac.md has the how-to):

* a user `pveguard-<role>@pve` (realm pve, no password: it only holds the token);
* a token `pveguard-<role>@pve!pveguard` with `privsep=1` (security.access.api_token_privsep), so it has
  only what both its own ACLs and its user's grant (pve-access-control RPCEnvironment.pm permissions);
* one PVE role per role and ACL path family, `PVEGuard<Role><Family>` (e.g. PVEGuardMonitoringVM),
  holding the privileges `security.access.role_grants` gives that role on paths of that family;
* ACLs on exactly the paths the grants name, for the user and (privsep) the token; ACLs of these
  users and tokens that the strategy does not ask for are removed;
* a role that leaves the strategy (its last container does) takes its user, token, PVE roles and ACLs with
  it, and a PVEGuard role no grant asks for any more goes too. Only this installation's: the user's
  comment carries the instance id (COMMENT); its PVEGuard<Role><Family> roles are removed while no ACL of
  anyone else uses them, and the user (the ownership mark) goes last, so a cut-short apply resumes;
* the token secret in every running container of the role at /etc/pveguard/pve-token (0600, root),
  never printed, logged or written to the ledger. PVE shows a secret once, at creation, and has no call
  that regenerates one (API2/User.pm: POST creates, PUT changes privsep/expire/comment), so a new secret
  means deleting and re-creating the token (which drops the token's ACLs: they are put back at once).

Grants are `PRIV[,PRIV...] on PATH`; PATH is an ACL path (`/vms`, `/storage/local`, `/pool/x`...) or
`self` (each of the role's own containers, /vms/<vmid>), `guests` (the guests backups cover:
each managed container's /vms/<vmid>, or /vms with backup.containers.guests: all) or `backup-storage`
(/storage/<backup.containers.storage>).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pveguard.security.grants import DEFAULT_GRANT as DEFAULT_GRANT  # re-exported: the grants live there
from pveguard.security.grants import KNOWN_PRIVS as KNOWN_PRIVS
from pveguard.security.grants import PLACEHOLDERS as PLACEHOLDERS
from pveguard.security.grants import Grant as Grant
from pveguard.security.grants import default_grants as default_grants
from pveguard.security.grants import parse_grant as parse_grant
from pveguard.security.isolation import Ct, FwChange, FwPlan

if TYPE_CHECKING:
    from pveguard.strategy.models import Strategy

REALM = "pve"
TOKEN_NAME = "pveguard"
SECRET_PATH = "/etc/pveguard/pve-token"
USER_PREFIX = "pveguard-"
ROLE_PREFIX = "PVEGuard"
# a user whose comment does not carry this installation's instance is not ours: it is left alone
COMMENT = "pveguard: service user of role {role} instance={instance}"

_FAMILY = {"vms": "VM", "storage": "Storage", "nodes": "Node", "pool": "Pool", "sdn": "SDN", "access": "Access",
           "mapping": "Mapping", "": "DC"}


def camel(role: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", role) if p)


def userid_of(role: str) -> str:
    return f"{USER_PREFIX}{role}@{REALM}"


def tokenid_of(role: str) -> str:
    """The full token id (user!token) of the role's API token."""
    return f"{userid_of(role)}!{TOKEN_NAME}"


def pve_role_name(role: str, path: str) -> str:
    top = path.strip("/").split("/", 1)[0]
    return f"{ROLE_PREFIX}{camel(role)}{_FAMILY.get(top, camel(top))}"


# --- desired ------------------------------------------------------------------------------------


@dataclass
class RoleWant:
    role: str
    userid: str
    tokenid: str
    privsep: bool
    pve_roles: dict[str, list[str]]  # PVE role -> sorted privileges
    acls: dict[str, str]  # path -> PVE role
    containers: list[Ct]  # the role's existing managed containers (the secret goes to each)
    pending: list[str]  # the role's containers not created yet (theirs: after their creation)
    instance: str = ""  # this installation (in the comment of the users and tokens it owns)

    @property
    def comment(self) -> str:
        return COMMENT.format(role=self.role, instance=self.instance)

    @property
    def full_tokenid(self) -> str:
        return f"{self.userid}!{self.tokenid}"


def enforced(strategy: Strategy) -> bool:
    return bool(strategy.security.access.rbac)


def desired_rbac(strategy: Strategy, cts: Iterable[Ct], instance: str) -> list[RoleWant]:
    """Per container role of the strategy: user, token, PVE roles and ACLs (vmid paths of existing ones)."""
    existing = {c.name: c for c in cts}
    by_role: dict[str, list[str]] = {}
    for c in strategy.containers:
        by_role.setdefault(c.role, []).append(c.name)
    grants = strategy.security.access.role_grants
    guests_all = strategy.backup.containers.guests == "all"
    managed_paths = sorted(f"/vms/{c.vmid}" for c in existing.values())
    out: list[RoleWant] = []
    for role, names in by_role.items():
        own = [existing[n] for n in names if n in existing]
        paths_of = {"self": [f"/vms/{c.vmid}" for c in own],
                    "guests": ["/vms"] if guests_all else managed_paths,
                    "backup-storage": [f"/storage/{strategy.backup.containers.storage}"]}
        privs_on: dict[str, set[str]] = {}
        for text in grants.get(role, [DEFAULT_GRANT]):
            g = parse_grant(text)
            for p in paths_of.get(g.path, [g.path]):
                privs_on.setdefault(p, set()).update(g.privileges)
        pve_roles: dict[str, set[str]] = {}
        acls: dict[str, str] = {}
        for p, privs in privs_on.items():
            name = pve_role_name(role, p)
            pve_roles.setdefault(name, set()).update(privs)
            acls[p] = name
        out.append(RoleWant(role, userid_of(role), TOKEN_NAME, strategy.security.access.api_token_privsep,
                            {k: sorted(v) for k, v in sorted(pve_roles.items())}, dict(sorted(acls.items())),
                            own, [n for n in names if n not in existing], instance))
    return out


def acl_paths(strategy: Strategy) -> list[str]:
    """The ACL paths (not /vms/<vmid>) the grants name, for pveguard's own privilege check."""
    out: set[str] = set()
    for texts in strategy.security.access.role_grants.values():
        for text in texts:
            g = parse_grant(text)
            if g.path == "backup-storage":
                out.add(f"/storage/{strategy.backup.containers.storage}")
            elif g.path == "guests" and strategy.backup.containers.guests == "all":
                out.add("/vms")
            elif g.path not in PLACEHOLDERS and not re.fullmatch(r"/vms/\d+", g.path):
                out.add(g.path)
    return sorted(out)


# --- observed -----------------------------------------------------------------------------------

Call = Callable[..., Any]
# True/False: the token file is there with the role's token id or not (absent, empty, another token's id); a
# text: why it cannot be told (stopped, pct unreachable)
HasSecret = Callable[[Ct], "bool | str"]


@dataclass
class RbacSeen:
    users: dict[str, dict[str, Any]]  # our users: userid -> entry
    tokens: dict[str, dict[str, Any]]  # full token id -> entry
    roles: dict[str, list[str]]  # our PVE roles -> sorted privileges
    acl: list[dict[str, Any]]  # ACL entries of our users and tokens
    secrets: dict[int, bool | str]  # vmid -> the secret file is there (a text: why that cannot be told)
    # PVE roles that ACL entries of anyone but pveguard's role users and tokens use (never removed)
    used_elsewhere: set[str] = dataclasses.field(default_factory=set)
    # role -> containers that still exist and were given its current secret but are no longer of the role
    # (their role changed, or they left the strategy unpruned): the secret they hold must stop working
    left: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def ours(ugid: str) -> bool:
    return ugid.startswith(USER_PREFIX) and ugid.split("!", 1)[0].endswith(f"@{REALM}")


def observe_acl(call: Call) -> list[dict[str, Any]]:
    return [dict(e) for e in call("GET", "/access/acl") or [] if ours(str(e.get("ugid", "")))]


def role_of_user(userid: str) -> str | None:
    """`pveguard-<role>@pve` -> role (None for any other user id)."""
    if userid.startswith(USER_PREFIX) and userid.endswith(f"@{REALM}"):
        return userid[len(USER_PREFIX):-len(REALM) - 1] or None
    return None


def mine(user: dict[str, Any], instance: str) -> bool:
    """Whether a role user is this installation's: its comment carries `instance=<id>` (COMMENT)."""
    return bool(instance) and f"instance={instance}" in str(user.get("comment") or "").split()


def leftovers(wants: list[RoleWant], users: dict[str, dict[str, Any]], instance: str) -> list[str]:
    """This installation's role users whose role left the strategy."""
    wanted = {w.userid for w in wants}
    return sorted(u for u, entry in users.items()
                  if u not in wanted and role_of_user(u) is not None and mine(entry, instance))


def observe_rbac(call: Call, wants: list[RoleWant], has_secret: HasSecret | None, instance: str = "") -> RbacSeen:
    users = {str(u["userid"]): dict(u) for u in call("GET", "/access/users") or []
             if str(u.get("userid", "")).startswith(USER_PREFIX)}
    tokens: dict[str, dict[str, Any]] = {}
    for userid in [w.userid for w in wants] + leftovers(wants, users, instance or _instance_of(wants)):
        if userid in users:
            for t in call("GET", f"/access/users/{userid}/token") or []:
                tokens[f"{userid}!{t['tokenid']}"] = dict(t)
    roles = {str(r["roleid"]): sorted(p for p in str(r.get("privs") or "").split(",") if p)
             for r in call("GET", "/access/roles") or [] if str(r.get("roleid", "")).startswith(ROLE_PREFIX)}
    secrets: dict[int, bool | str] = {}
    if has_secret is not None:
        for w in wants:
            for c in w.containers:
                secrets[c.vmid] = has_secret(c)
    acl = [dict(e) for e in call("GET", "/access/acl") or []]
    return RbacSeen(users, tokens, roles, [e for e in acl if ours(str(e.get("ugid", "")))], secrets,
                    {str(e.get("roleid")) for e in acl if not ours(str(e.get("ugid", "")))})


def _instance_of(wants: list[RoleWant]) -> str:
    return next((w.instance for w in wants if w.instance), "")


FAMILIES = frozenset(_FAMILY.values())


def stale_roles(role: str, seen: RbacSeen, wanted_roles: set[str], extra_families: Iterable[str] = ()) -> list[str]:
    """PVEGuard<Role><Family> roles of `role` that no grant asks for and no one else's ACL uses."""
    head = f"{ROLE_PREFIX}{camel(role)}"
    families = FAMILIES | set(extra_families)
    return sorted(r for r in seen.roles if r.startswith(head) and r[len(head):] in families
                  and r not in wanted_roles and r not in seen.used_elsewhere)


def _removals(wants: list[RoleWant], seen: RbacSeen, instance: str) -> tuple[list[FwChange], list[str]]:
    """Changes that take away what this installation owns and the strategy no longer asks for: the users,
    tokens, ACLs and PVE roles of roles that left it (ACLs, token, roles, then the user: the user's comment
    is the ownership mark), and PVE roles of remaining roles that no grant names any more."""
    out: list[FwChange] = []
    notes: list[str] = []
    wanted_roles = {r for w in wants for r in w.pve_roles}
    for userid in leftovers(wants, seen.users, instance):
        role = role_of_user(userid) or userid
        entries = [e for e in seen.acl if str(e["ugid"]).split("!", 1)[0] == userid]
        for e in sorted(entries, key=lambda e: (str(e["path"]), str(e["type"]), str(e["ugid"]))):
            out.append(FwChange(f"acl{e['path']}", role, f"{e['type']} {e['ugid']}", str(e["roleid"]), "(none)",
                                op="acl-remove", data={"path": str(e["path"]), "type": str(e["type"]),
                                                       "ugid": str(e["ugid"]), "role": str(e["roleid"]),
                                                       "leftover": True}))
        for full in sorted(t for t in seen.tokens if t.split("!", 1)[0] == userid):
            out.append(FwChange(f"token/{full}", role, "token", "exists", "(none)", op="token-remove",
                                data={"userid": userid, "tokenid": full.split("!", 1)[1], "leftover": True}))
        used = {str(e["roleid"]) for e in entries}
        for name in stale_roles(role, seen, wanted_roles, {u[len(ROLE_PREFIX) + len(camel(role)):] for u in used
                                                           if u.startswith(ROLE_PREFIX + camel(role))}):
            out.append(FwChange(f"role/{name}", role, "privileges", ",".join(seen.roles[name]) or "(none)",
                                "(no such role)", op="role-remove", data={"leftover": True}))
        out.append(FwChange(f"user/{userid}", role, "user", userid, "(none)", op="user-remove",
                            data={"userid": userid, "leftover": True}))
        notes.append(f"role {role} left the strategy: its user {userid}, token, PVE roles and ACLs are removed "
                     f"(a container of the role that is still there keeps a token file that no longer works)")
    for w in wants:
        if w.userid not in seen.users or not mine(seen.users[w.userid], instance):
            continue  # another installation's role user (or none yet): its roles are not ours to judge
        for name in stale_roles(w.role, seen, wanted_roles):
            out.append(FwChange(f"role/{name}", w.role, "privileges", ",".join(seen.roles[name]) or "(none)",
                                "(no such role)", op="role-remove", data={"leftover": True}))
    return out, notes


# --- plan ---------------------------------------------------------------------------------------


def _acl_changes(wants: list[RoleWant], acl: list[dict[str, Any]], tokens_present: set[str]) -> list[FwChange]:
    out: list[FwChange] = []
    want_entries: set[tuple[str, str, str, str]] = set()  # (path, type, ugid, role)
    for w in wants:
        holders = [("user", w.userid)] + ([("token", w.full_tokenid)] if w.privsep else [])
        for path, role in w.acls.items():
            for typ, ugid in holders:
                want_entries.add((path, typ, ugid, role))
    have = {(str(e["path"]), str(e["type"]), str(e["ugid"]), str(e["roleid"])): int(e.get("propagate", 1))
            for e in acl}
    role_of = {w.userid: w.role for w in wants} | {w.full_tokenid: w.role for w in wants}
    for path, typ, ugid, role in sorted(want_entries):
        prop = have.get((path, typ, ugid, role))
        if prop == 1:
            continue
        if typ == "token" and ugid not in tokens_present:
            continue  # the token is created first; its ACLs follow in the same apply
        out.append(FwChange(f"acl{path}", role_of[ugid], f"{typ} {ugid}",
                            "(none)" if prop is None else f"{role} (propagate 0)", role, op="acl-add",
                            data={"path": path, "type": typ, "ugid": ugid, "role": role}))
    for (path, typ, ugid, role) in sorted(have):
        if (path, typ, ugid, role) not in want_entries and ugid.split("!", 1)[0] in {w.userid for w in wants}:
            out.append(FwChange(f"acl{path}", role_of.get(ugid, ugid), f"{typ} {ugid}", role, "(none)",
                                op="acl-remove", data={"path": path, "type": typ, "ugid": ugid, "role": role}))
    return out


def owned(wants: list[RoleWant], users: dict[str, dict[str, Any]]) -> tuple[list[RoleWant], list[RoleWant]]:
    """(roles whose user is this installation's or does not exist yet, roles whose user is someone else's)."""
    mine: list[RoleWant] = []
    other: list[RoleWant] = []
    for w in wants:
        u = users.get(w.userid)
        (mine if u is None or f"instance={w.instance}" in str(u.get("comment") or "").split() else other).append(w)
    return mine, other


def plan_rbac(wants: list[RoleWant], seen: RbacSeen, instance: str = "") -> FwPlan:
    """What converging users, PVE roles, tokens, ACLs and delivered secrets would change (and removing
    what this installation made for roles that left the strategy)."""
    out = FwPlan()
    instance = instance or _instance_of(wants)
    all_wants = wants
    wants, others = owned(wants, seen.users)
    for w in others:
        out.notes.append(f"role {w.role}: the user {w.userid} exists but is not this installation's (its comment: "
                         f"{str(seen.users[w.userid].get('comment') or '(none)')!r}); it is left alone: give the "
                         f"role another name, or remove that user if it is a leftover")
    for w in wants:
        u = seen.users.get(w.userid)
        if u is None:
            out.changes.append(FwChange(f"user/{w.userid}", w.role, "user", "(none)", w.userid, op="user-create",
                                        data={"role": w.role}))
        elif str(u.get("enable", 1)) != "1":
            out.changes.append(FwChange(f"user/{w.userid}", w.role, "enable", "0", "1", op="user-enable"))
        for name, privs in w.pve_roles.items():
            have = seen.roles.get(name)
            if have is None:
                out.changes.append(FwChange(f"role/{name}", w.role, "privileges", "(no such role)", ",".join(privs),
                                            op="role-create", data={"privs": privs}))
            elif have != privs:
                out.changes.append(FwChange(f"role/{name}", w.role, "privileges", ",".join(have) or "(none)",
                                            ",".join(privs), op="role-privs", data={"privs": privs}))
        tok = seen.tokens.get(w.full_tokenid)
        # the containers pveguard can put the token file into now
        reach = [c for c in w.containers if isinstance(seen.secrets.get(c.vmid), bool)]
        to = {"to": [c.vmid for c in reach]}
        if tok is None:
            if reach:
                out.changes.append(FwChange(f"token/{w.full_tokenid}", w.role, "token", "(none)",
                                            f"privsep={int(w.privsep)}, secret to {', '.join(c.name for c in reach)}",
                                            op="token-create", data=to))
            continue
        if int(tok.get("privsep", 1)) != int(w.privsep):
            out.changes.append(FwChange(f"token/{w.full_tokenid}", w.role, "privsep", str(tok.get("privsep", 1)),
                                        str(int(w.privsep)), op="token-privsep", data={"privsep": int(w.privsep)}))
        missing = [c for c in reach if seen.secrets.get(c.vmid) is False]
        left = seen.left.get(w.role, [])
        if missing or left:
            # a new secret: delivered to the role's containers, and the one a container that left the role
            # still holds stops working (PVE cannot change a secret: the token is deleted and made again)
            old = "; ".join([*([f"missing or old in {', '.join(c.name for c in missing)}"] if missing else []),
                             *([f"also held by {', '.join(left)} (no longer of the role)"] if left else [])])
            out.changes.append(FwChange(f"token/{w.full_tokenid}", w.role, "secret", old,
                                        f"new secret in {', '.join(c.name for c in reach) or 'no container yet'}",
                                        op="rotate", data=to))
    for w in wants:
        why = {c.name: v for c in w.containers if isinstance(v := seen.secrets.get(c.vmid), str)}
        if why:
            waits = "" if w.full_tokenid in seen.tokens or any(
                isinstance(seen.secrets.get(c.vmid), bool) for c in w.containers) else "its token waits: "
            out.notes.append(f"role {w.role}: {waits}the token file cannot be checked or delivered in "
                             + "; ".join(f"{n} ({r})" for n, r in why.items()))
        if w.pending:
            out.notes.append(f"role {w.role}: created containers get their ACLs and token in the same apply: "
                             f"{', '.join(w.pending)}")
    out.changes.extend(_acl_changes(wants, seen.acl, set(seen.tokens)))
    removals, notes = _removals(all_wants, seen, instance)
    out.changes.extend(removals)
    out.notes.extend(notes)
    return out


# --- apply --------------------------------------------------------------------------------------

Record = Callable[..., None]
# Puts the secret file into a container (0600, root); raises PveguardError when it cannot.
Deliver = Callable[[Ct, str], None]
# Called after a token got a new secret: (role, containers it reached).
Rotated = Callable[[str, list[Ct]], None]


def id_line_of(role: str) -> str:
    """The token file's line naming the role's token (not secret): plan checks the file holds this exact line."""
    return f"PVE_TOKEN_ID={tokenid_of(role)}"


def secret_file(w: RoleWant, secret: str) -> str:
    """What the container gets: the token id and its secret, shell-sourcable."""
    return (f"# pveguard: PVE API token of role {w.role} (rotated by 'pveguard tokens rotate {w.role}')\n"
            f"{id_line_of(w.role)}\nPVE_TOKEN_SECRET={secret}\n")


def new_secret(call: Call, w: RoleWant, deliver: Deliver, record: Record, rotated: Rotated,
               running: list[Ct], recreate: bool) -> None:
    """Create (or delete and re-create) the token and deliver its secret to `running`; the secret stays here."""
    target = f"token/{w.full_tokenid}"
    details = {"before": {"token": "exists" if recreate else None},
               "after": {"token": "new secret", "privsep": int(w.privsep),
                         "delivered": [f"{c.name}:{SECRET_PATH}" for c in running]}}
    record("rbac", target, w.role, None, **details)
    base = f"/access/users/{w.userid}/token/{w.tokenid}"
    if recreate:
        call("DELETE", base)
    got = call("POST", base, {"privsep": int(w.privsep), "comment": w.comment}) or {}
    secret = str(got.get("value") or "")
    for c in running:
        deliver(c, secret_file(w, secret))
    del secret, got
    rotated(w.role, running)
    record("rbac", target, w.role, "ok", **details)


def converge(call: Call, plan: FwPlan, wants: list[RoleWant], record: Record, deliver: Deliver,
             rotated: Rotated, forget: Callable[[str], None] | None = None) -> list[str]:
    """What roles that left the strategy had goes first (`forget(role)` once its user is gone); then users,
    PVE roles, tokens (new secrets delivered), then the ACLs read again and converged."""
    done: list[str] = remove(call, [c for c in plan.changes if c.data.get("leftover")], record, forget)
    by_role = {w.role: w for w in wants}
    for c in plan.changes:
        if c.op.startswith("acl-") or c.data.get("leftover"):
            continue
        w = by_role[c.name]
        details = {"before": {c.field: c.old}, "after": {c.field: c.new}}
        if c.op in ("token-create", "rotate"):
            to = [ct for ct in w.containers if ct.vmid in c.data["to"]]
            new_secret(call, w, deliver, record, rotated, to, recreate=c.op == "rotate")
            done.append(c.text())
            continue
        record("rbac", c.target, c.name, None, **details)
        if c.op == "user-create":
            call("POST", "/access/users", {"userid": w.userid, "comment": w.comment, "enable": 1})
        elif c.op == "user-enable":
            call("PUT", f"/access/users/{w.userid}", {"enable": 1})
        elif c.op == "role-create":
            call("POST", "/access/roles", {"roleid": c.target.split("/", 1)[1], "privs": ",".join(c.data["privs"])})
        elif c.op == "role-privs":
            call("PUT", f"/access/roles/{c.target.split('/', 1)[1]}", {"privs": ",".join(c.data["privs"])})
        elif c.op == "token-privsep":
            call("PUT", f"/access/users/{w.userid}/token/{w.tokenid}", {"privsep": c.data["privsep"]})
        record("rbac", c.target, c.name, "ok", **details)
        done.append(c.text())
    done.extend(converge_acls(call, wants, record))
    return done


def remove(call: Call, changes: list[FwChange], record: Record,
           forget: Callable[[str], None] | None = None) -> list[str]:
    """Take away what a role that left the strategy had, in plan order (ACLs, token, roles, user last),
    each with its ledger intent and result. Something already gone counts as done."""
    done: list[str] = []
    for c in changes:
        d = c.data
        details = {"before": {c.field: c.old}, "after": {c.field: c.new}}
        record("rbac", c.target, c.name, None, **details)
        try:
            if c.op == "acl-remove":
                call("PUT", "/access/acl", {"path": d["path"], "roles": d["role"], f"{d['type']}s": d["ugid"],
                                            "delete": 1})
            elif c.op == "token-remove":
                call("DELETE", f"/access/users/{d['userid']}/token/{d['tokenid']}")
            elif c.op == "role-remove":
                call("DELETE", f"/access/roles/{c.target.split('/', 1)[1]}")
            elif c.op == "user-remove":
                call("DELETE", f"/access/users/{d['userid']}")
        except Exception:
            record("rbac", c.target, c.name, "failed", **details)
            raise
        record("rbac", c.target, c.name, "ok", **details)
        if c.op == "user-remove" and forget is not None:
            forget(c.name)
        done.append(c.text())
    return done


def converge_acls(call: Call, wants: list[RoleWant], record: Record) -> list[str]:
    """Read the ACLs and tokens again and add/remove what differs (a re-created token lost its ACLs)."""
    listed = {str(u.get("userid")): dict(u) for u in call("GET", "/access/users") or []}
    users = set(listed)
    wants, _others = owned(wants, listed)
    tokens = set()
    for w in wants:
        if w.userid in users:
            for t in call("GET", f"/access/users/{w.userid}/token") or []:
                tokens.add(f"{w.userid}!{t['tokenid']}")
    done = []
    for c in _acl_changes(wants, observe_acl(call), tokens):
        d = c.data
        details = {"before": {c.field: c.old}, "after": {c.field: c.new}}
        record("rbac", c.target, c.name, None, **details)
        params: dict[str, Any] = {"path": d["path"], "roles": d["role"], f"{d['type']}s": d["ugid"], "propagate": 1}
        if c.op == "acl-remove":
            params["delete"] = 1
            params.pop("propagate")
        call("PUT", "/access/acl", params)
        record("rbac", c.target, c.name, "ok", **details)
        done.append(c.text())
    return done
