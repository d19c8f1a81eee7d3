"""Users, groups, API tokens, roles and ACLs with PVE's propagation rules (pve-access-control)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

PRIVS_VM = [
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.Migrate",
    "VM.Monitor",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
]
PRIVS_SYS = [
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
]
PRIVS_DS = ["Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit"]
PRIVS_OTHER = [
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "User.Modify",
    "Group.Allocate",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "Pool.Allocate",
    "Pool.Audit",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
]
ALL_PRIVS = frozenset(PRIVS_VM + PRIVS_SYS + PRIVS_DS + PRIVS_OTHER)

_VM_USER = {"VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.Backup", "VM.PowerMgmt", "VM.Audit"}
_AUDIT = {"VM.Audit", "Sys.Audit", "Datastore.Audit", "SDN.Audit", "Pool.Audit", "Mapping.Audit"}

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "Administrator": ALL_PRIVS,
    "NoAccess": frozenset(),
    "PVEAdmin": ALL_PRIVS - {"Sys.PowerMgmt", "Sys.Modify", "Realm.Allocate", "Permissions.Modify"},
    "PVEAuditor": frozenset(_AUDIT),
    "PVEVMAdmin": frozenset(PRIVS_VM),
    "PVEVMUser": frozenset(_VM_USER),
    "PVETemplateUser": frozenset({"VM.Clone", "VM.Audit"}),
    "PVESysAdmin": frozenset({"Sys.Audit", "Sys.Console", "Sys.Syslog", "Sys.AccessNetwork"}),
    "PVEDatastoreAdmin": frozenset(PRIVS_DS),
    "PVEDatastoreUser": frozenset({"Datastore.AllocateSpace", "Datastore.Audit"}),
    "PVESDNAdmin": frozenset({"SDN.Allocate", "SDN.Audit", "SDN.Use"}),
    "PVESDNUser": frozenset({"SDN.Audit", "SDN.Use"}),
    "PVEUserAdmin": frozenset({"User.Modify", "Group.Allocate", "Realm.AllocateUser", "Sys.Audit"}),
    "PVEPoolAdmin": frozenset({"Pool.Allocate", "Pool.Audit"}),
    "PVEPoolUser": frozenset({"Pool.Audit"}),
    "PVEMappingAdmin": frozenset({"Mapping.Audit", "Mapping.Modify", "Mapping.Use"}),
    "PVEMappingUser": frozenset({"Mapping.Audit", "Mapping.Use"}),
}

TICKET_LIFETIME = 7200


class AuthError(Exception):
    """401: the reason phrase is the message."""


class PermError(Exception):
    """403 Permission check failed (...); pve-common Exception.pm raise_perm_exc: no parentheses when
    there is nothing to say (`raise_perm_exc()`)."""

    def __init__(self, what: str = "") -> None:
        super().__init__(f"Permission check failed ({what})" if what else "Permission check failed")


@dataclass
class User:
    userid: str
    password: str | None = None
    enable: int = 1
    expire: int = 0
    firstname: str = ""
    lastname: str = ""
    email: str = ""
    comment: str = ""
    keys: str = ""
    groups: set[str] = field(default_factory=set)


@dataclass
class Token:
    userid: str
    tokenid: str
    secret: str
    privsep: int = 1
    expire: int = 0
    comment: str = ""


@dataclass
class AclEntry:
    path: str
    type: str  # user | group | token
    ugid: str
    roleid: str
    propagate: int = 1


@dataclass
class Auth:
    """Who is calling: userid plus optional token id."""

    userid: str
    tokenid: str | None = None
    ticket: bool = False

    @property
    def authid(self) -> str:
        return f"{self.userid}!{self.tokenid}" if self.tokenid else self.userid


def normalize_path(path: str) -> str:
    """AccessControl.pm normalize_path: one leading '/', no doubled or trailing slashes."""
    return "/" + "/".join(p for p in path.split("/") if p)


def _split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    out = ["/"]
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[: i + 1]))
    return out


class Access:
    """The access-control configuration and permission evaluation (with a per-(authid, path) cache)."""

    def __init__(self, root_password: str, secret: bytes) -> None:
        self.users: dict[str, User] = {"root@pam": User("root@pam", password=root_password, email="root@localhost")}
        self.groups: dict[str, dict[str, Any]] = {}
        self.tokens: dict[tuple[str, str], Token] = {}
        self.acl: list[AclEntry] = []
        self.roles: dict[str, frozenset[str]] = dict(BUILTIN_ROLES)
        self.realms = {"pam": "Linux PAM standard authentication", "pve": "Proxmox VE authentication server"}
        self._secret = secret
        self._cache: dict[tuple[str, str], frozenset[str]] = {}
        self._pcache: dict[tuple[str, str], dict[str, int]] = {}
        self.pool_of: dict[int, str] = {}  # vmid -> pool, maintained by the state
        # storage -> pools it is a member of (a storage may belong to several), maintained by the state
        self.storage_pools: dict[str, set[str]] = {}

    def pools_changed(self, pools: dict[str, dict[str, Any]]) -> None:
        """Re-read pool membership (`{pool: {"vms": {vmid}, "storage": {id}}}`) and drop the caches."""
        self.pool_of = {vm: pid for pid, p in pools.items() for vm in p.get("vms", ())}
        self.storage_pools = {}
        for pid, p in pools.items():
            for sid in p.get("storage", ()):
                self.storage_pools.setdefault(sid, set()).add(pid)
        self.changed()

    def changed(self) -> None:
        """Drop the permission caches (call after any user/group/token/ACL/pool change)."""
        self._cache.clear()
        self._pcache.clear()

    # -- credentials -------------------------------------------------------------------------
    def _sign(self, data: str) -> str:
        return base64.b64encode(hmac.new(self._secret, data.encode(), hashlib.sha256).digest()).decode()

    def make_ticket(self, userid: str, now: float | None = None) -> tuple[str, str]:
        """Return (ticket, CSRFPreventionToken) for an authenticated user."""
        ts = f"{int(now if now is not None else time.time()):08X}"
        plain = f"PVE:{userid}:{ts}"
        ticket = f"{plain}::{self._sign(plain)}"
        csrf = f"{ts}:{self._sign(ts + ':' + userid)[:43]}"
        return ticket, csrf

    def verify_ticket(self, ticket: str) -> str:
        """Return the userid of a valid ticket or raise AuthError."""
        m = re.fullmatch(r"(PVE:([^:]+):([0-9A-F]{8}))::(.+)", ticket)
        if not m or not hmac.compare_digest(self._sign(m.group(1)), m.group(4)):
            raise AuthError("Authentication failed!")
        age = time.time() - int(m.group(3), 16)
        if age > TICKET_LIFETIME or age < -300:
            raise AuthError("Authentication failed!")
        userid = m.group(2)
        self._check_user_enabled(userid)
        return userid

    def verify_csrf(self, userid: str, token: str | None) -> bool:
        if not token or ":" not in token:
            return False
        ts = token.split(":", 1)[0]
        if not hmac.compare_digest(f"{ts}:{self._sign(ts + ':' + userid)[:43]}", token):
            return False
        try:
            return time.time() - int(ts, 16) <= TICKET_LIFETIME
        except ValueError:
            return False

    def _check_user_enabled(self, userid: str) -> User:
        u = self.users.get(userid)
        if u is None or not u.enable or (u.expire and u.expire < time.time()):
            raise AuthError("Authentication failed!")
        return u

    def login(self, username: str, password: str, realm: str | None = None) -> str:
        """Check a password (or a ticket used as password, for renewal); return the userid."""
        if realm and "@" not in username:
            username = f"{username}@{realm}"
        if password.startswith("PVE:"):
            try:
                uid = self.verify_ticket(password)
            except AuthError:
                raise AuthError("authentication failure") from None
            if uid != username:
                raise AuthError("authentication failure")
            return uid
        u = self.users.get(username)
        if u is None or u.password is None or not hmac.compare_digest(u.password, password):
            raise AuthError("authentication failure")
        try:
            self._check_user_enabled(username)
        except AuthError:
            raise AuthError("authentication failure") from None
        return username

    def verify_token(self, value: str) -> Auth:
        """Authorization value after `PVEAPIToken=`: USER@REALM!TOKENID=SECRET."""
        if "=" not in value or "!" not in value:
            raise AuthError("Authentication failed!")
        full, secret = value.rsplit("=", 1)
        userid, tokenid = full.rsplit("!", 1)
        tok = self.tokens.get((userid, tokenid))
        if tok is None or not hmac.compare_digest(tok.secret, secret):
            raise AuthError("Authentication failed!")
        if tok.expire and tok.expire < time.time():
            raise AuthError("Authentication failed!")
        self._check_user_enabled(userid)
        return Auth(userid, tokenid)

    def add_token(
        self,
        userid: str,
        tokenid: str,
        privsep: int = 1,
        comment: str = "",
        expire: int = 0,
        secret: str | None = None,
    ) -> Token:
        tok = Token(userid, tokenid, secret or str(uuid.uuid4()), privsep, expire, comment)
        self.tokens[(userid, tokenid)] = tok
        self.changed()
        return tok

    # -- permissions ---------------------------------------------------------------------------
    def _roles(self, ugid: str, is_token: bool, path: str) -> dict[str, int]:
        roles: dict[str, int] = {}
        user = self.users.get(ugid.split("!")[0])
        by_path: dict[str, list[AclEntry]] = {}
        for e in self.acl:
            by_path.setdefault(e.path, []).append(e)
        for p in _split_path(path):
            entries = by_path.get(p)
            if not entries:
                continue
            final = p == path
            new: dict[str, int] = {}
            kind = "token" if is_token else "user"
            for e in entries:
                if e.type == kind and e.ugid == ugid and (final or e.propagate):
                    new[e.roleid] = e.propagate
            if new:
                roles = new
                continue
            if is_token:
                continue
            for e in entries:
                if e.type == "group" and user and e.ugid in user.groups and (final or e.propagate):
                    new[e.roleid] = e.propagate
            if new:
                roles = new
        if "NoAccess" in roles:
            return {"NoAccess": roles["NoAccess"]}
        return roles

    def _member_pools(self, path: str) -> list[str]:
        """The pools whose ACLs apply to a path: a guest's pool for /vms/N, a storage's pools for
        /storage/ID (pve-access-control RPCEnvironment.pm compile_acl_path: `poolroles` is filled from
        each pool's `vms` and `storage` members)."""
        m = re.fullmatch(r"/vms/(\d+)", path)
        if m:
            pool = self.pool_of.get(int(m.group(1)))
            return [pool] if pool is not None else []
        m = re.fullmatch(r"/storage/([^/]+)", path)
        return sorted(self.storage_pools.get(m.group(1), ())) if m else []

    def _compiled(self, ugid: str, is_token: bool, path: str) -> dict[str, int]:
        """PVE's compile_acl_path for one user or token: the roles on the path, plus the roles on
        /pool/<pool> of every pool the guest or storage belongs to (never over NoAccess, never
        propagating; a pool's NoAccess trumps the path's other roles), as privilege -> propagate flag."""
        roles = dict(self._roles(ugid, is_token, path))
        pool_roles: set[str] = set()
        for pool in self._member_pools(path):
            pool_roles |= set(self._roles(ugid, is_token, f"/pool/{pool}"))
        if pool_roles and "NoAccess" not in roles:
            if "NoAccess" in pool_roles:
                roles = {"NoAccess": 0}
            else:
                for r in pool_roles:
                    roles.setdefault(r, 0)
        privs: dict[str, int] = {}
        for role, propagate in roles.items():
            for p in self.roles.get(role, frozenset()):
                # a privilege propagates when any role that grants it does (Perl: ||=)
                privs[p] = privs.get(p) or propagate
        return privs

    def permissions(self, authid: str, path: str) -> dict[str, int]:
        """PVE's RPCEnvironment::permissions: privilege -> propagate flag (1/0) of a user or token on a path.

        root@pam has every privilege; a token without privilege separation has its user's; a separated
        token has what both its own ACLs and its user grant (root@pam's tokens: their own ACLs only).
        """
        key = (authid, path)
        got = self._pcache.get(key)
        if got is not None:
            return got
        userid, _, tokenid = authid.partition("!")
        res: dict[str, int]
        if authid == "root@pam":
            res = dict.fromkeys(ALL_PRIVS, 1)
        elif not tokenid:
            res = self._compiled(userid, False, path)
        elif (tok := self.tokens.get((userid, tokenid))) is None:
            res = {}
        else:
            user_perms = self.permissions(userid, path)
            if not tok.privsep:
                res = dict(user_perms)
            else:
                own = self._compiled(authid, True, path)
                res = own if userid == "root@pam" else {
                    p: user_perms[p] and flag for p, flag in own.items() if p in user_perms}
        self._pcache[key] = res
        return res

    def privs(self, authid: str, path: str) -> frozenset[str]:
        """Effective privileges of a user or token on a path (guests and storages also inherit from their pools)."""
        key = (authid, path)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = frozenset(self.permissions(authid, path))
        return got

    def check(self, authid: str, path: str, privs: list[str], any_of: bool = False) -> None:
        """Raise PermError like PVE's check_perm."""
        have = self.privs(authid, path)
        if any_of:
            if not any(p in have for p in privs):
                raise PermError(f"{path}, {'|'.join(privs)}")
            return
        for p in privs:
            if p not in have:
                raise PermError(f"{path}, {p}")

    def check_perm_modify(self, authid: str, path: str | None) -> None:
        """RPCEnvironment.pm check_perm_modify: Permissions.Modify on the path, or the object's own allocate
        privilege (VM.Allocate on /vms/X, Datastore.Allocate on /storage/X, Pool.Allocate on /pool/X);
        without a path, Permissions.Modify on /access."""
        if not path:
            self.check(authid, "/access", ["Permissions.Modify"])
            return
        privs = ["Permissions.Modify"]
        for prefix, priv in (("/storage/", "Datastore.Allocate"), ("/vms/", "VM.Allocate"),
                             ("/pool/", "Pool.Allocate")):
            if path.startswith(prefix) and len(path) > len(prefix):
                privs.append(priv)
        self.check(authid, path, privs, any_of=True)

    def allowed(self, authid: str, path: str, priv: str) -> bool:
        return priv in self.privs(authid, path)

    def any_priv_below(self, authid: str, prefix: str, privs: set[str]) -> bool:
        """True if some ACL path at or below prefix grants one of privs (for index filtering)."""
        if self.privs(authid, prefix) & privs:
            return True
        return any(e.path.startswith(prefix) and self.privs(authid, e.path) & privs for e in self.acl)


def evaluate_check(access: Access, auth: Auth, check: list[Any], params: dict[str, Any]) -> None:
    """Evaluate a schema `permissions.check` expression; raise PermError when it fails."""
    kind = check[0]
    if kind in ("and", "or"):
        err: PermError | None = None
        for sub in check[1:]:
            try:
                evaluate_check(access, auth, sub, params)
                if kind == "or":
                    return
            except PermError as e:
                if kind == "and":
                    raise
                err = e
        if kind == "or" and err is not None:
            # RPCEnvironment.pm exec_api2_perm_check: the alternatives run with noerr, and when none
            # passes the answer is a bare raise_perm_exc()
            raise PermError()
        return
    if kind == "perm":
        path = re.sub(r"\{([^}]+)\}", lambda m: str(params.get(m.group(1), "")), check[1])
        privs = list(check[2])
        opts = check[3:]
        any_of = "any" in opts and bool(opts[opts.index("any") + 1]) if "any" in opts else False
        if "require_param" in opts and params.get(opts[opts.index("require_param") + 1]) is None:
            raise PermError()  # exec_api2_perm_check: a missing required parameter fails the check
        access.check(auth.authid, path, privs, any_of)
        return
    if kind == "userid-param":
        if check[1] == "self":
            if params.get("userid") != auth.userid:
                raise PermError("/access, self")
            return
        userid = str(params.get("userid", ""))
        realm = userid.split("@", 1)[1] if "@" in userid else ""
        if params.get("userid") == auth.userid:
            return
        access.check(auth.authid, f"/access/realm/{realm}", [check[1]])
        return
    if kind == "userid-group":
        if access.allowed(auth.authid, "/access/groups", "User.Modify"):
            return
        raise PermError("/access/groups, User.Modify")
    if kind == "perm-modify":
        path = re.sub(r"\{([^}]+)\}", lambda m: str(params.get(m.group(1), "")), check[1])
        access.check_perm_modify(auth.authid, normalize_path(path))
        return
    if kind == "admin":
        if auth.authid != "root@pam":
            raise PermError("/, Sys.Modify")
        return
    # Unknown check kinds: only root passes, like an unsatisfiable requirement (root@pam itself: the
    # server lets it through before evaluating any check).
    if auth.authid != "root@pam":
        raise PermError(f"{kind}")
