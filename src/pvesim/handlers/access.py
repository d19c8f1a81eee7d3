"""Access-control handlers: tickets, users, groups, tokens, roles, ACLs, permissions."""

from __future__ import annotations

from typing import Any

from pvesim.access import ALL_PRIVS, AclEntry, AuthError, PermError, User
from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.state import ApiError, die


def _changed(ctx: Ctx) -> None:
    ctx.sim.access.changed()
    ctx.sim.changed()


@api("GET", "/access")
def access_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"subdir": s}
        for s in (
            "users",
            "groups",
            "roles",
            "acl",
            "domains",
            "openid",
            "tfa",
            "ticket",
            "password",
            "permissions",
        )
    ]


@api("GET", "/access/ticket")
def ticket_get(ctx: Ctx) -> None:
    return None


@api("POST", "/access/ticket")
def ticket_post(ctx: Ctx) -> dict[str, Any]:
    sim = ctx.sim
    try:
        userid = sim.access.login(str(ctx.p["username"]), str(ctx.p["password"]), ctx.p.get("realm"))
    except AuthError:
        if sim.opts.auth_fail_delay:
            import time

            time.sleep(sim.opts.auth_fail_delay)
        raise ApiError(401, "authentication failure") from None
    ticket, csrf = sim.access.make_ticket(userid)
    cap: dict[str, dict[str, int]] = {}
    for area, path in (
        ("vms", "/vms"),
        ("storage", "/storage"),
        ("access", "/access"),
        ("nodes", "/nodes"),
        ("dc", "/"),
        ("sdn", "/sdn"),
        ("mapping", "/mapping"),
    ):
        cap[area] = {p: 1 for p in sorted(sim.access.privs(userid, path))}
    return {
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "username": userid,
        "cap": cap,
        "clustername": sim.opts.cluster_name,
    }


@api("GET", "/access/domains")
def domains(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"realm": r, "type": r, "comment": c} for r, c in ctx.sim.access.realms.items()]


# -- users -----------------------------------------------------------------------------------------
def _user_entry(ctx: Ctx, u: User, full: bool) -> dict[str, Any]:
    e: dict[str, Any] = {
        "userid": u.userid,
        "enable": u.enable,
        "expire": u.expire,
        "realm-type": u.userid.rsplit("@", 1)[1],
    }
    for k in ("firstname", "lastname", "email", "comment", "keys"):
        if getattr(u, k):
            e[k] = getattr(u, k)
    if u.groups:
        e["groups"] = ",".join(sorted(u.groups))
    if full:
        e["tokens"] = [_token_entry(t) for (uid, _), t in ctx.sim.access.tokens.items() if uid == u.userid]
    return e


def _token_entry(t: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"tokenid": t.tokenid, "privsep": t.privsep, "expire": t.expire}
    if t.comment:
        e["comment"] = t.comment
    return e


@api("GET", "/access/users")
def users(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    can_all = ctx.can("/access/groups", "User.Modify") or ctx.can("/access", "Sys.Audit")
    for u in ctx.sim.access.users.values():
        if not can_all and u.userid != ctx.auth.userid:
            continue
        if ctx.p.get("enabled") is not None and u.enable != int(ctx.p["enabled"]):
            continue
        out.append(_user_entry(ctx, u, bool(ctx.p.get("full"))))
    return out


@api("POST", "/access/users")
def user_create(ctx: Ctx) -> None:
    acc = ctx.sim.access
    userid = str(ctx.p["userid"])
    if userid in acc.users:
        raise die(f"create user failed: user '{userid}' already exists")
    realm = userid.rsplit("@", 1)[1]
    if realm not in acc.realms:
        raise die(f"create user failed: domain '{realm}' does not exist")
    u = User(userid, password=ctx.p.get("password"))
    for k in ("enable", "expire"):
        if k in ctx.p:
            setattr(u, k, int(ctx.p[k]))
    for k in ("firstname", "lastname", "email", "comment", "keys"):
        if k in ctx.p:
            setattr(u, k, str(ctx.p[k]))
    for gid in split_list(str(ctx.p.get("groups", ""))):
        if gid not in acc.groups:
            raise die(f"create user failed: no such group '{gid}'")
        u.groups.add(gid)
    acc.users[userid] = u
    _changed(ctx)
    return None


def _user(ctx: Ctx) -> User:
    u = ctx.sim.access.users.get(str(ctx.p["userid"]))
    if u is None:
        raise die(f"no such user ('{ctx.p['userid']}')")
    return u


@api("GET", "/access/users/{userid}")
def user_get(ctx: Ctx) -> dict[str, Any]:
    u = _user(ctx)
    e = _user_entry(ctx, u, False)
    e.pop("userid")
    e.pop("realm-type", None)
    e["groups"] = sorted(u.groups)
    e["tokens"] = {
        t.tokenid: {k: v for k, v in _token_entry(t).items() if k != "tokenid"}
        for (uid, _), t in ctx.sim.access.tokens.items()
        if uid == u.userid
    }
    return e


@api("PUT", "/access/users/{userid}")
def user_update(ctx: Ctx) -> None:
    u = _user(ctx)
    acc = ctx.sim.access
    for k in ("enable", "expire"):
        if k in ctx.p:
            setattr(u, k, int(ctx.p[k]))
    for k in ("firstname", "lastname", "email", "comment", "keys"):
        if k in ctx.p:
            setattr(u, k, str(ctx.p[k]))
    if "groups" in ctx.p:
        gs = set(split_list(str(ctx.p["groups"])))
        for gid in gs:
            if gid not in acc.groups:
                raise die(f"no such group '{gid}'")
        u.groups = gs if not ctx.p.get("append") else u.groups | gs
    _changed(ctx)
    return None


@api("DELETE", "/access/users/{userid}")
def user_delete(ctx: Ctx) -> None:
    u = _user(ctx)
    acc = ctx.sim.access
    del acc.users[u.userid]
    acc.tokens = {k: t for k, t in acc.tokens.items() if k[0] != u.userid}
    acc.acl = [
        e
        for e in acc.acl
        if not (e.type == "user" and e.ugid == u.userid)
        and not (e.type == "token" and e.ugid.startswith(u.userid + "!"))
    ]
    _changed(ctx)
    return None


@api("PUT", "/access/password")
def password(ctx: Ctx) -> None:
    userid = str(ctx.p["userid"])
    if userid != ctx.auth.userid and not ctx.can("/access", "User.Modify") and not ctx.is_root:
        raise PermError(f"/access/realm/{userid.rsplit('@', 1)[-1]}, User.Modify")
    u = ctx.sim.access.users.get(userid)
    if u is None:
        raise die(f"no such user ('{userid}')")
    u.password = str(ctx.p["password"])
    return None


# -- tokens ----------------------------------------------------------------------------------------
@api("GET", "/access/users/{userid}/token")
def tokens(ctx: Ctx) -> list[dict[str, Any]]:
    u = _user(ctx)
    return [_token_entry(t) for (uid, _), t in ctx.sim.access.tokens.items() if uid == u.userid]


def _token(ctx: Ctx) -> Any:
    u = _user(ctx)
    t = ctx.sim.access.tokens.get((u.userid, str(ctx.p["tokenid"])))
    if t is None:
        raise die(f"no such token '{ctx.p['tokenid']}' for user '{u.userid}'")
    return t


@api("GET", "/access/users/{userid}/token/{tokenid}")
def token_get(ctx: Ctx) -> dict[str, Any]:
    t = _token(ctx)
    e = _token_entry(t)
    e.pop("tokenid")
    return e


@api("POST", "/access/users/{userid}/token/{tokenid}")
def token_create(ctx: Ctx) -> dict[str, Any]:
    u = _user(ctx)
    tid = str(ctx.p["tokenid"])
    if (u.userid, tid) in ctx.sim.access.tokens:
        raise die("Token already exists.")
    t = ctx.sim.access.add_token(
        u.userid,
        tid,
        int(ctx.p.get("privsep", 1)),
        str(ctx.p.get("comment", "")),
        int(ctx.p.get("expire", u.expire)),
    )
    _changed(ctx)
    info = _token_entry(t)
    info.pop("tokenid")
    return {"full-tokenid": f"{u.userid}!{tid}", "info": info, "value": t.secret}


@api("PUT", "/access/users/{userid}/token/{tokenid}")
def token_update(ctx: Ctx) -> dict[str, Any]:
    t = _token(ctx)
    for k in ("privsep", "expire"):
        if k in ctx.p:
            setattr(t, k, int(ctx.p[k]))
    if "comment" in ctx.p:
        t.comment = str(ctx.p["comment"])
    _changed(ctx)
    e = _token_entry(t)
    e.pop("tokenid")
    return e


@api("DELETE", "/access/users/{userid}/token/{tokenid}")
def token_delete(ctx: Ctx) -> None:
    t = _token(ctx)
    acc = ctx.sim.access
    del acc.tokens[(t.userid, t.tokenid)]
    acc.acl = [e for e in acc.acl if not (e.type == "token" and e.ugid == f"{t.userid}!{t.tokenid}")]
    _changed(ctx)
    return None


# -- groups ----------------------------------------------------------------------------------------
@api("GET", "/access/groups")
def groups(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for gid, g in ctx.sim.access.groups.items():
        members = sorted(u.userid for u in ctx.sim.access.users.values() if gid in u.groups)
        e: dict[str, Any] = {"groupid": gid, "users": ",".join(members)}
        if g.get("comment"):
            e["comment"] = g["comment"]
        out.append(e)
    return out


@api("POST", "/access/groups")
def group_create(ctx: Ctx) -> None:
    gid = str(ctx.p["groupid"])
    if gid in ctx.sim.access.groups:
        raise die(f"create group failed: group '{gid}' already exists")
    ctx.sim.access.groups[gid] = {"comment": ctx.p.get("comment", "")}
    _changed(ctx)
    return None


@api("GET", "/access/groups/{groupid}")
def group_get(ctx: Ctx) -> dict[str, Any]:
    gid = str(ctx.p["groupid"])
    g = ctx.sim.access.groups.get(gid)
    if g is None:
        raise die(f"group '{gid}' does not exist")
    return {
        "comment": g.get("comment", ""),
        "members": sorted(u.userid for u in ctx.sim.access.users.values() if gid in u.groups),
    }


@api("PUT", "/access/groups/{groupid}")
def group_update(ctx: Ctx) -> None:
    gid = str(ctx.p["groupid"])
    g = ctx.sim.access.groups.get(gid)
    if g is None:
        raise die(f"group '{gid}' does not exist")
    if "comment" in ctx.p:
        g["comment"] = ctx.p["comment"]
    return None


@api("DELETE", "/access/groups/{groupid}")
def group_delete(ctx: Ctx) -> None:
    gid = str(ctx.p["groupid"])
    acc = ctx.sim.access
    if gid not in acc.groups:
        raise die(f"group '{gid}' does not exist")
    del acc.groups[gid]
    for u in acc.users.values():
        u.groups.discard(gid)
    acc.acl = [e for e in acc.acl if not (e.type == "group" and e.ugid == gid)]
    _changed(ctx)
    return None


# -- roles -----------------------------------------------------------------------------------------
@api("GET", "/access/roles")
def roles(ctx: Ctx) -> list[dict[str, Any]]:
    from pvesim.access import BUILTIN_ROLES

    return [
        {"roleid": r, "privs": ",".join(sorted(p)), "special": int(r in BUILTIN_ROLES)}
        for r, p in ctx.sim.access.roles.items()
    ]


def _privs_arg(ctx: Ctx) -> frozenset[str]:
    privs = set(split_list(str(ctx.p.get("privs", ""))))
    bad = privs - ALL_PRIVS
    if bad:
        raise die(f"invalid privilege '{sorted(bad)[0]}'")
    return frozenset(privs)


@api("POST", "/access/roles")
def role_create(ctx: Ctx) -> None:
    rid = str(ctx.p["roleid"])
    if rid in ctx.sim.access.roles:
        raise die(f"role '{rid}' already exists")
    ctx.sim.access.roles[rid] = _privs_arg(ctx)
    _changed(ctx)
    return None


def _existing_role(ctx: Ctx, change: str | None = None) -> str:
    """The role id in the path; it must exist and, when `change` ("modify"/"delete") is given,
    must not be a built-in role (PVE's wording for both)."""
    from pvesim.access import BUILTIN_ROLES

    rid = str(ctx.p["roleid"])
    if rid not in ctx.sim.access.roles:
        raise die(f"role '{rid}' does not exist")
    if change and rid in BUILTIN_ROLES:
        raise die(f"cannot {change} builtin role '{rid}'")
    return rid


@api("GET", "/access/roles/{roleid}")
def role_get(ctx: Ctx) -> dict[str, Any]:
    rid = _existing_role(ctx)
    return {p: 1 for p in sorted(ctx.sim.access.roles[rid])}


@api("PUT", "/access/roles/{roleid}")
def role_update(ctx: Ctx) -> None:
    rid = _existing_role(ctx, "modify")
    privs = _privs_arg(ctx)
    ctx.sim.access.roles[rid] = (ctx.sim.access.roles[rid] | privs) if ctx.p.get("append") else privs
    _changed(ctx)
    return None


@api("DELETE", "/access/roles/{roleid}")
def role_delete(ctx: Ctx) -> None:
    rid = _existing_role(ctx, "delete")
    del ctx.sim.access.roles[rid]
    ctx.sim.access.acl = [e for e in ctx.sim.access.acl if e.roleid != rid]
    _changed(ctx)
    return None


# -- ACLs ------------------------------------------------------------------------------------------
@api("GET", "/access/acl")
def acl(ctx: Ctx) -> list[dict[str, Any]]:
    # ACL.pm read_acl: everything with Sys.Audit on /access, else the paths the caller may modify
    # permissions on (check_perm_modify)
    acc = ctx.sim.access
    audit = ctx.is_root or ctx.can("/access", "Sys.Audit")
    out = []
    for e in acc.acl:
        if audit or _may_modify(ctx, e.path):
            out.append({"path": e.path, "type": e.type, "ugid": e.ugid, "roleid": e.roleid, "propagate": e.propagate})
    return out


def _may_modify(ctx: Ctx, path: str) -> bool:
    try:
        ctx.sim.access.check_perm_modify(ctx.auth.authid, path)
    except PermError:
        return False
    return True


@api("PUT", "/access/acl")
def acl_update(ctx: Ctx) -> None:
    acc = ctx.sim.access
    path = "/" + str(ctx.p["path"]).strip("/") if str(ctx.p["path"]) != "/" else "/"
    if not ctx.is_root:
        acc.check_perm_modify(ctx.auth.authid, path)
    roles_ = split_list(str(ctx.p["roles"]))
    for r in roles_:
        if r not in acc.roles:
            raise die(f"role '{r}' does not exist")
    targets: list[tuple[str, str]] = []
    for u in split_list(str(ctx.p.get("users", ""))):
        if u not in acc.users:
            raise die(f"user '{u}' does not exist")
        targets.append(("user", u))
    for g in split_list(str(ctx.p.get("groups", ""))):
        if g not in acc.groups:
            raise die(f"group '{g}' does not exist")
        targets.append(("group", g))
    for t in split_list(str(ctx.p.get("tokens", ""))):
        uid, _, tid = t.rpartition("!")
        if (uid, tid) not in acc.tokens:
            raise die(f"no such token '{tid}' for user '{uid}'")
        targets.append(("token", t))
    if not targets:
        raise die("either 'users', 'groups' or 'tokens' is required")
    propagate = int(ctx.p.get("propagate", 1))
    for typ, ugid in targets:
        for r in roles_:
            acc.acl = [
                e for e in acc.acl if not (e.path == path and e.type == typ and e.ugid == ugid and e.roleid == r)
            ]
            if not ctx.p.get("delete"):
                acc.acl.append(AclEntry(path, typ, ugid, r, propagate))
    _changed(ctx)
    return None


@api("GET", "/access/permissions")
def permissions(ctx: Ctx) -> dict[str, dict[str, int]]:
    """As pve-access-control's `permissions`: own (or an owned token's) permissions for anyone, another
    user's with Sys.Audit on /access; `path` dumps that path (even when empty), else the top-level paths,
    every ACL path and the pool members' paths, leaving out those without any privilege."""
    acc = ctx.sim.access
    who = str(ctx.p.get("userid") or ctx.auth.authid)
    owner = who.split("!", 1)[0] if "!" in who else None
    if who != ctx.auth.authid and owner != ctx.auth.authid:
        ctx.check("/access", ["Sys.Audit"])
    if ctx.p.get("path"):
        path = str(ctx.p["path"])
        return {path: dict(sorted(acc.permissions(who, path).items()))}
    paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}
    paths |= {e.path for e in acc.acl}
    for pool in ctx.sim.pools.values():
        paths |= {f"/vms/{v}" for v in pool.get("vms", ())}
        paths |= {f"/storage/{s}" for s in pool.get("storage", ())}
    out = {}
    for p in sorted(paths):
        perms = acc.permissions(who, p)
        if perms:
            out[p] = dict(sorted(perms.items()))
    return out
