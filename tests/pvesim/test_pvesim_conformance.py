"""Conformance with the official schema: every path/method routes, and every implemented GET handler's
answer (plus the answers of the writes a scenario makes) matches the method's `returns` schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from pvesim.handlers import HANDLERS, load_all
from pvesim.schema import load_schema
from pvesim.testing import SimHandle, running, schema_available

pytestmark = pytest.mark.skipif(not schema_available(), reason="PVE API schema not found (set PVESIM_SCHEMA)")

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
# Documented PVE quirks: Perl stringification leaks numbers as strings.
KNOWN_LEAKS = {("GET", "/cluster/nextid")}
# Where `returns` says only "string" for values PVE passes through from a guest's config file, the
# value's type is the config key's: pve-container src/PVE/LXC/Config.pm parse_pct_config -> check_type
# gives integers and booleans as Perl numbers (JSON numbers) and leaves numbers and strings as the
# file's text. answer (method, path) -> the method whose parameters type the row's `key`.
KEYED_VALUES = {("GET", "/nodes/{node}/lxc/{vmid}/pending"): ("PUT", "/nodes/{node}/lxc/{vmid}/config")}


def keyed_value_errors(rows: Any, params: dict[str, Any], where: str = "$") -> list[str]:
    """Rows `{key, value?, pending?}` whose values must have the JSON type their config key has in PVE."""
    props = params.get("properties") or {}
    errs: list[str] = []
    for i, row in enumerate(rows if isinstance(rows, list) else []):
        key = str(row.get("key"))
        typ = (props.get(key) or props.get(re.sub(r"\d+$", "[n]", key)) or {}).get("type")
        numeric = typ in ("integer", "boolean")
        for field in ("value", "pending"):
            if field not in row:
                continue
            v = row[field]
            ok = isinstance(v, int) and not isinstance(v, bool) if numeric else isinstance(v, str)
            if not ok:
                errs.append(f"{where}[{i}].{field} ({key}): {v!r} should be a JSON {'number' if numeric else 'string'}")
    return errs


def conform(schema: dict[str, Any] | None, value: Any, where: str = "$") -> list[str]:
    """Differences between a value and a PVE `returns` schema (types, required properties, enums, items)."""
    if not schema:
        return []
    typ = schema.get("type")
    if value is None:
        return [] if typ in (None, "null") or schema.get("optional") else [f"{where}: null for {typ}"]
    errs: list[str] = []
    if typ == "string" and not isinstance(value, str):
        errs.append(f"{where}: {value!r} is not a string")
    elif typ == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        errs.append(f"{where}: {value!r} is not an integer")
    elif typ == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        errs.append(f"{where}: {value!r} is not a number")
    elif typ == "boolean" and value not in (0, 1, True, False):
        errs.append(f"{where}: {value!r} is not a boolean")
    elif typ == "null":
        errs.append(f"{where}: {value!r} should be null")
    elif typ == "array":
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__} is not an array"]
        for i, item in enumerate(value):
            errs += conform(schema.get("items"), item, f"{where}[{i}]")
    elif typ == "object":
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} is not an object"]
        for k, sub in (schema.get("properties") or {}).items():
            if k not in value:
                if not sub.get("optional"):
                    errs.append(f"{where}.{k}: required property missing")
                continue
            errs += conform(sub, value[k], f"{where}.{k}")
    if schema.get("enum") and isinstance(value, str) and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    return errs


def test_every_schema_path_routes() -> None:
    schema = load_schema()
    for _m, path in schema.methods:
        concrete = [("x1" if seg.startswith("{") else seg) for seg in path.strip("/").split("/")]
        got = schema.route(concrete)
        assert got is not None and got[0] == path, path


def test_unimplemented_schema_method_answers_501(pvesim: SimHandle) -> None:
    load_all()
    schema = load_schema()
    missing = [
        (m, p)
        for (m, p) in schema.methods
        if (m, p) not in HANDLERS and "{" not in p and m == "GET" and not schema.children.get(p)
    ]
    assert missing, "expected some schema methods without a handler"
    m, p = missing[0]
    status, reason, _ = pvesim.api(m, p)
    assert (status, reason) == (501, f"Method '{m} {p}' not implemented")


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[SimHandle, dict[str, str]]]:
    with running(
        guests=12,
        seed=7,
        task_seconds={"vzcreate": 0, "vzdump": 0, "vzstart": 0, "vzsnapshot": 0, "download": 0, "acmeregister": 0},
    ) as h:
        api = h.api
        vals: dict[str, str] = {
            "node": "pve1",
            "storage": "local",
            "userid": "root@pam",
            "tokenid": "pvesim",
            "roleid": "PVEAuditor",
        }
        writes: list[tuple[str, str, Any]] = []

        def w(method: str, path: str, params: dict[str, Any] | None = None) -> Any:
            st, rs, body = api(method, path, params)
            assert st == 200, (method, path, st, rs, body)
            writes.append((method, re.sub(r"/(\d+)(?=/|$)", "/{vmid}", path), body["data"] if body else None))
            return body["data"] if body else None

        w(
            "POST",
            "/nodes/pve1/lxc",
            {
                "vmid": 300,
                "ostemplate": TEMPLATE,
                "rootfs": "local-lvm:4",
                "start": 1,
                "net0": "name=eth0,bridge=vmbr0,ip=dhcp",
            },
        )
        w("PUT", "/nodes/pve1/lxc/300/config", {"hostname": "web", "ostype": "ubuntu", "cores": 2})
        w("POST", "/nodes/pve1/lxc/300/snapshot", {"snapname": "s1"})
        w("POST", "/pools", {"poolid": "pool1"})
        w("PUT", "/pools/pool1", {"vms": "300"})
        w("POST", "/access/groups", {"groupid": "grp1"})
        w("POST", "/access/users", {"userid": "u1@pve", "password": "secret12", "groups": "grp1"})
        w("POST", "/access/users/u1@pve/token/t1", {})
        w("PUT", "/access/acl", {"path": "/vms/300", "roles": "PVEAuditor", "users": "u1@pve"})
        # registering an ACME account is root@pam's alone (no permissions in the schema): a ticket
        upid = h.proxmoxer(auth="password").cluster.acme.account.post(contact="admin@example.com")
        writes.append(("POST", "/cluster/acme/account", upid))
        w("PUT", "/nodes/pve1/config", {"acme": "domains=pve1.example.com"})
        w("POST", "/cluster/backup", {"id": "job1", "schedule": "daily", "vmid": "300", "storage": "local"})
        upid = w("POST", "/nodes/pve1/vzdump", {"vmid": 300, "storage": "local", "notes-template": "{{guestname}}"})
        w("POST", "/cluster/firewall/groups", {"group": "web"})
        w(
            "POST",
            "/cluster/firewall/groups/web",
            {"type": "in", "action": "ACCEPT", "dport": "80", "proto": "tcp"},
        )
        w("POST", "/cluster/firewall/rules", {"type": "in", "action": "DROP", "enable": 1})
        w("POST", "/cluster/firewall/aliases", {"name": "lan", "cidr": "192.0.2.0/24"})
        w("POST", "/cluster/firewall/ipset", {"name": "admins"})
        w("POST", "/cluster/firewall/ipset/admins", {"cidr": "192.0.2.10"})
        for base in ("/nodes/pve1/lxc/300/firewall",):
            w("POST", f"{base}/rules", {"type": "group", "action": "web", "enable": 1})
            w("PUT", f"{base}/options", {"enable": 1})
            w("POST", f"{base}/aliases", {"name": "lan", "cidr": "192.0.2.0/24"})
            w("POST", f"{base}/ipset", {"name": "admins"})
            w("POST", f"{base}/ipset/admins", {"cidr": "192.0.2.10"})
        w("POST", "/cluster/ha/groups", {"group": "hg1", "nodes": "pve1,pve2"})
        w("POST", "/cluster/ha/resources", {"sid": "ct:300", "group": "hg1"})
        w(
            "POST",
            "/cluster/notifications/endpoints/gotify",
            {"name": "g1", "server": "http://127.0.0.1:9", "token": "t"},
        )
        w(
            "POST",
            "/cluster/notifications/endpoints/smtp",
            {
                "name": "s1",
                "server": "127.0.0.1",
                "from-address": "pve@example.invalid",
                "mailto-user": "root@pam",
            },
        )
        w(
            "POST",
            "/cluster/notifications/endpoints/webhook",
            {"name": "wh1", "url": "http://127.0.0.1:9/hook", "method": "post"},
        )
        w(
            "POST",
            "/cluster/notifications/matchers",
            {"name": "m1", "target": "g1", "match-field": "exact:type=vzdump"},
        )
        w(
            "POST",
            "/nodes/pve1/aplinfo",
            {"storage": "local", "template": "debian-11-standard_11.7-1_amd64.tar.zst"},
        )
        backups = api("GET", "/nodes/pve1/storage/local/content", {"content": "backup"})[2]["data"]
        qemu = [
            r
            for r in api("GET", "/cluster/resources", {"type": "vm"})[2]["data"]
            if r["type"] == "qemu" and r["node"] == "pve1"
        ]
        vals.update(
            {
                "vmid": "300",
                "upid": upid,
                "volume": backups[0]["volid"],
                "id": "job1",
                "sid": "ct:300",
                "poolid": "pool1",
                "groupid": "grp1",
                "snapname": "s1",
                "pos": "0",
                "cidr": "192.0.2.10",
            }
        )
        h.writes = writes  # type: ignore[attr-defined]
        h.qemu_vmid = str(qemu[0]["vmid"]) if qemu else ""  # type: ignore[attr-defined]
        yield h, vals


NAME_BY_PATH = [
    ("/endpoints/sendmail", "mail-to-root"),
    ("/endpoints/gotify", "g1"),
    ("/endpoints/smtp", "s1"),
    ("/endpoints/webhook", "wh1"),
    ("/matchers", "m1"),
    ("/targets", "g1"),
    ("/aliases", "lan"),
    ("/ipset", "admins"),
    ("/acme/account", "default"),
]
EXTRA = {"timeframe": "hour"}


def _fill(path: str, vals: dict[str, str], qemu_vmid: str) -> str | None:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "vmid" and "/qemu/" in path:
            return qemu_vmid
        if key == "name":
            return next((v for frag, v in NAME_BY_PATH if frag in path), "x")
        if key == "group":
            return "hg1" if "/ha/" in path else "web"
        return quote(vals.get(key, "MISSING"), safe="")

    filled = re.sub(r"\{([^}]+)\}", sub, path)
    return None if "MISSING" in filled or filled.count("//") else filled


def test_get_handlers_conform_to_returns(world: tuple[SimHandle, dict[str, str]]) -> None:
    sim, vals = world
    schema = load_schema()
    load_all()
    checked = 0
    problems: list[str] = []
    root = sim.proxmoxer(auth="password")
    for method, path in sorted(HANDLERS):
        if method != "GET" or (method, path) in KNOWN_LEAKS:
            continue
        m = schema.methods[(method, path)]
        if "/qemu/" in path and not sim.qemu_vmid:  # type: ignore[attr-defined]
            continue
        url = _fill(path, vals, sim.qemu_vmid)  # type: ignore[attr-defined]
        assert url is not None, f"no value for a path parameter of {path}"
        props = m.parameters.get("properties") or {}
        extra = {**EXTRA, "volume": vals["volume"]}
        params = {
            k: extra[k] for k, s in props.items() if not s.get("optional") and k in extra and "{" + k + "}" not in path
        }
        if m.permissions is None:  # no permissions in the schema: root@pam's alone, by ticket (not a token)
            try:
                data = root.get(url.lstrip("/"), **params)
            except Exception as exc:  # proxmoxer's ResourceException names status and reason
                problems.append(f"GET {url}: {exc}")
                continue
        else:
            status, reason, body = sim.api("GET", url, params)
            if status != 200:
                problems.append(f"GET {url}: {status} {reason}")
                continue
            data = body["data"] if body else None
        if (method, path) in KEYED_VALUES:  # values checked by their key's type, the rest by `returns`
            typed_by = schema.methods[KEYED_VALUES[(method, path)]].parameters
            problems += [f"GET {path}: {e}" for e in keyed_value_errors(data, typed_by)]
            data = [{k: v for k, v in row.items() if k not in ("value", "pending")} for row in data]
        problems += [f"GET {path}: {e}" for e in conform(m.returns, data)]
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 60


def test_write_answers_conform_to_returns(world: tuple[SimHandle, dict[str, str]]) -> None:
    sim, _vals = world
    schema = load_schema()
    problems = []
    for method, path, data in sim.writes:  # type: ignore[attr-defined]
        route = (
            schema.route([s for s in path.strip("/").split("/")])
            if "{vmid}" not in path
            else (path.replace("/{vmid}", "/{vmid}"), {})
        )
        tmpl = route[0] if route else path
        m = schema.methods.get((method, tmpl))
        if m is None:
            continue
        problems += [f"{method} {tmpl}: {e}" for e in conform(m.returns, data)]
    assert not problems, "\n".join(problems)


def test_nextid_is_a_string_like_pve(world: tuple[SimHandle, dict[str, str]]) -> None:
    sim, _ = world
    data = sim.api("GET", "/cluster/nextid")[2]
    assert isinstance(data["data"], str) and data["data"].isdigit()
