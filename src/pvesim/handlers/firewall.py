"""Firewall (pve-firewall): cluster groups/rules/options/aliases/ipsets and the same per guest.

Every collection answers with the config file's `digest`; writes check a given `digest` first.
As pve-firewall's API2/Firewall/*.pm: a new rule goes first (create_rule unshifts, whatever `pos`
says) and is disabled unless `enable` is given; `moveto` puts a rule before the one that was at that
position; a new IP set entry goes first, is normalized and a duplicate or a /0 is a parameter error;
an existing group or IP set name is a parameter error; group creation checks the digest only when
renaming.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.state import _new_firewall, die, param_error

RULE_KEYS = (
    "type",
    "action",
    "enable",
    "macro",
    "proto",
    "source",
    "dest",
    "sport",
    "dport",
    "iface",
    "icmp-type",
    "log",
    "comment",
)


def _digest(fw: dict[str, Any]) -> str:
    return hashlib.sha1(
        repr((fw.get("options"), fw.get("rules"), fw.get("aliases"), fw.get("ipsets"), fw.get("version"))).encode()
    ).hexdigest()


def _clean_cidr(text: str) -> str:
    """An IP set entry as pve-firewall stores it: an alias name as given; an address or network with its
    host bits cleared (clean_cidr) and a /32 or /128 dropped (parse_ip_or_cidr)."""
    if re.fullmatch(r"(?:dc/|guest/)?[A-Za-z][A-Za-z0-9_-]+", text):
        return text
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise die("value does not look like a valid IP address or CIDR network") from None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _check_digest(ctx: Ctx, fw: dict[str, Any]) -> None:
    if ctx.p.get("digest") and str(ctx.p["digest"]) != _digest(fw):
        raise die("detected modified configuration - file changed by other user? Try again.")


def _bump(ctx: Ctx, fw: dict[str, Any]) -> None:
    fw["version"] = int(fw.get("version", 0)) + 1
    ctx.sim.changed()


def _guest_fw(ctx: Ctx, kind: str) -> dict[str, Any]:
    g = ctx.guest(kind)
    return ctx.sim.fw_guest.setdefault(g.vmid, _new_firewall())


def _cluster_fw(ctx: Ctx) -> dict[str, Any]:
    return ctx.sim.fw_cluster


def _group_fw(ctx: Ctx) -> dict[str, Any]:
    name = str(ctx.p["group"])
    g = ctx.sim.fw_groups.get(name)
    if g is None:
        raise die(f"no such security group '{name}'")
    return g


def _rule_view(fw: dict[str, Any], i: int, r: dict[str, Any]) -> dict[str, Any]:
    return (
        {**r, "pos": i, "digest": _digest(fw), "ipversion": r.get("ipversion")}
        if r.get("ipversion")
        else {**r, "pos": i, "digest": _digest(fw)}
    )


def _validate_rule(ctx: Ctx, r: dict[str, Any], guest: bool) -> None:
    typ = r.get("type")
    action = str(r.get("action", ""))
    if typ == "group":
        if action not in ctx.sim.fw_groups:
            raise param_error({"action": f"security group '{action}' does not exist"})
    elif action and action not in ("ACCEPT", "DROP", "REJECT"):
        raise param_error(
            {"action": f"value '{action}' does not have a value in the enumeration 'ACCEPT, DROP, REJECT'"}
        )
    if guest and r.get("iface") and not str(r["iface"]).startswith("net"):
        raise param_error({"iface": f"invalid interface name '{r['iface']}'"})
    for k in ("source", "dest"):
        v = str(r.get(k, ""))
        if v.startswith("+"):
            name = v[1:].split("/")[-1]
            sets = ctx.sim.fw_cluster["ipsets"]
            if name not in sets and not any(name in fw["ipsets"] for fw in ctx.sim.fw_guest.values()):
                raise param_error({k: f"no such ipset '{name}'"})


def _rules_handlers(base: str, getfw: Callable[[Ctx], dict[str, Any]], guest: bool) -> None:
    def list_(ctx: Ctx) -> list[dict[str, Any]]:
        fw = getfw(ctx)
        return [_rule_view(fw, i, r) for i, r in enumerate(fw["rules"])]

    def create(ctx: Ctx) -> None:
        fw = getfw(ctx)
        _check_digest(ctx, fw)
        r = {k: ctx.p[k] for k in RULE_KEYS if k in ctx.p and str(ctx.p[k]) not in ("", "-")}
        _validate_rule(ctx, r, guest)
        if "enable" not in ctx.p:
            r["enable"] = 0  # Rules.pm create_rule: a rule without `enable` is written disabled
        fw["rules"].insert(0, r)
        _bump(ctx, fw)
        return None

    def _rule(ctx: Ctx) -> tuple[dict[str, Any], int]:
        fw = getfw(ctx)
        pos = int(ctx.p["pos"])
        if pos < 0 or pos >= len(fw["rules"]):
            raise die(f"no rule at position {pos}")
        return fw, pos

    def get(ctx: Ctx) -> dict[str, Any]:
        fw, pos = _rule(ctx)
        return _rule_view(fw, pos, fw["rules"][pos])

    def update(ctx: Ctx) -> None:
        fw, pos = _rule(ctx)
        _check_digest(ctx, fw)
        r = fw["rules"][pos]
        if ctx.p.get("moveto") is not None:
            # before the rule that was at `moveto` (counted with this one still in place), else last
            moveto = int(ctx.p["moveto"])
            if moveto != pos:
                rest = [x for i, x in enumerate(fw["rules"]) if i != pos]
                at = moveto if moveto < pos else moveto - 1
                rest.insert(min(at, len(rest)), r)
                fw["rules"][:] = rest
        else:
            new = dict(r)
            for k in split_list(str(ctx.p.get("delete", ""))):
                new.pop(k, None)
            new.update({k: ctx.p[k] for k in RULE_KEYS if k in ctx.p})
            _validate_rule(ctx, new, guest)
            fw["rules"][pos] = new
        _bump(ctx, fw)
        return None

    def delete(ctx: Ctx) -> None:
        fw, pos = _rule(ctx)
        _check_digest(ctx, fw)
        fw["rules"].pop(pos)
        _bump(ctx, fw)
        return None

    api("GET", base)(list_)
    api("POST", base)(create)
    api("GET", base + "/{pos}")(get)
    api("PUT", base + "/{pos}")(update)
    api("DELETE", base + "/{pos}")(delete)


def _options_handlers(base: str, getfw: Callable[[Ctx], dict[str, Any]]) -> None:
    def get(ctx: Ctx) -> dict[str, Any]:
        fw = getfw(ctx)
        return {**fw["options"], "digest": _digest(fw)}

    def put(ctx: Ctx) -> None:
        fw = getfw(ctx)
        _check_digest(ctx, fw)
        for k in split_list(str(ctx.p.get("delete", ""))):
            fw["options"].pop(k, None)
        for k, v in ctx.p.items():
            if k not in ("delete", "digest", "node", "vmid"):
                fw["options"][k] = v
        _bump(ctx, fw)
        return None

    api("GET", base)(get)
    api("PUT", base)(put)


def _alias_handlers(base: str, getfw: Callable[[Ctx], dict[str, Any]]) -> None:
    def list_(ctx: Ctx) -> list[dict[str, Any]]:
        fw = getfw(ctx)
        return [{"name": n, **a, "digest": _digest(fw)} for n, a in sorted(fw["aliases"].items())]

    def create(ctx: Ctx) -> None:
        fw = getfw(ctx)
        name = str(ctx.p["name"])
        if name.lower() in (n.lower() for n in fw["aliases"]):
            raise die(f"alias '{name}' already exists")
        fw["aliases"][name] = {
            "cidr": ctx.p["cidr"],
            **({"comment": ctx.p["comment"]} if "comment" in ctx.p else {}),
        }
        _bump(ctx, fw)
        return None

    def _one(ctx: Ctx) -> tuple[dict[str, Any], str]:
        fw = getfw(ctx)
        name = str(ctx.p["name"])
        if name not in fw["aliases"]:
            raise die(f"no such alias '{name}'")
        return fw, name

    def get(ctx: Ctx) -> dict[str, Any]:
        fw, name = _one(ctx)
        return {"name": name, **fw["aliases"][name], "digest": _digest(fw)}

    def update(ctx: Ctx) -> None:
        fw, name = _one(ctx)
        _check_digest(ctx, fw)
        a = fw["aliases"].pop(name)
        a["cidr"] = ctx.p["cidr"]
        if "comment" in ctx.p:
            a["comment"] = ctx.p["comment"]
        new = str(ctx.p.get("rename") or name)
        if new != name and new in fw["aliases"]:
            fw["aliases"][name] = a
            raise die(f"alias '{new}' already exists")
        fw["aliases"][new] = a
        _bump(ctx, fw)
        return None

    def delete(ctx: Ctx) -> None:
        fw, name = _one(ctx)
        _check_digest(ctx, fw)
        del fw["aliases"][name]
        _bump(ctx, fw)
        return None

    api("GET", base)(list_)
    api("POST", base)(create)
    api("GET", base + "/{name}")(get)
    api("PUT", base + "/{name}")(update)
    api("DELETE", base + "/{name}")(delete)


def _ipset_handlers(base: str, getfw: Callable[[Ctx], dict[str, Any]]) -> None:
    def list_(ctx: Ctx) -> list[dict[str, Any]]:
        fw = getfw(ctx)
        return [
            {"name": n, **({"comment": s["comment"]} if s.get("comment") else {}), "digest": _digest(fw)}
            for n, s in sorted(fw["ipsets"].items())
        ]

    def create(ctx: Ctx) -> None:
        fw = getfw(ctx)
        _check_digest(ctx, fw)
        name = str(ctx.p["name"])
        if ctx.p.get("rename"):
            old = str(ctx.p["rename"])
            if old not in fw["ipsets"]:
                raise param_error({"name": f"IPSet '{old}' does not exist"})
            if name in fw["ipsets"] and name != old:
                raise param_error({"name": f"IPSet '{name}' does already exist"})
            fw["ipsets"][name] = fw["ipsets"].pop(old)
            if "comment" in ctx.p:
                fw["ipsets"][name]["comment"] = ctx.p["comment"]
        else:
            if name in fw["ipsets"]:
                raise param_error({"name": f"IPSet '{name}' already exists"})
            fw["ipsets"][name] = {"comment": ctx.p.get("comment", ""), "entries": []}
        _bump(ctx, fw)
        return None

    def _set(ctx: Ctx) -> tuple[dict[str, Any], dict[str, Any]]:
        fw = getfw(ctx)
        name = str(ctx.p["name"])
        s = fw["ipsets"].get(name)
        if s is None:
            raise die(f"no such IPSet '{name}'")
        return fw, s

    def entries(ctx: Ctx) -> list[dict[str, Any]]:
        fw, s = _set(ctx)
        return [{**e, "digest": _digest(fw)} for e in s["entries"]]

    def add(ctx: Ctx) -> None:
        fw, s = _set(ctx)
        cidr = _clean_cidr(str(ctx.p["cidr"]))
        if any(e["cidr"] == cidr for e in s["entries"]):
            raise param_error({"cidr": f"address '{cidr}' already exists"})
        if re.search(r"/0+$", cidr):
            raise param_error({"cidr": "a zero prefix is not allowed in ipset entries"})
        e: dict[str, Any] = {"cidr": cidr}
        if ctx.p.get("nomatch"):
            e["nomatch"] = 1
        if ctx.p.get("comment"):
            e["comment"] = ctx.p["comment"]
        s["entries"].insert(0, e)  # IPSet.pm create_ip unshifts
        _bump(ctx, fw)
        return None

    def delete_set(ctx: Ctx) -> None:
        fw, s = _set(ctx)
        if s["entries"] and not ctx.p.get("force"):
            raise die(f"IPSet '{ctx.p['name']}' is not empty")
        del fw["ipsets"][str(ctx.p["name"])]
        _bump(ctx, fw)
        return None

    def _entry(ctx: Ctx) -> tuple[dict[str, Any], dict[str, Any], int]:
        fw, s = _set(ctx)
        cidr = _clean_cidr(str(ctx.p["cidr"]))
        for i, e in enumerate(s["entries"]):
            if e["cidr"] == cidr:
                return fw, s, i
        raise param_error({"cidr": "no such IP/Network"})

    def get_entry(ctx: Ctx) -> dict[str, Any]:
        _fw, s, i = _entry(ctx)
        return dict(s["entries"][i])

    def put_entry(ctx: Ctx) -> None:
        fw, s, i = _entry(ctx)
        _check_digest(ctx, fw)
        e = s["entries"][i]
        if "nomatch" in ctx.p:
            if ctx.p["nomatch"]:
                e["nomatch"] = 1
            else:
                e.pop("nomatch", None)
        if "comment" in ctx.p:
            e["comment"] = ctx.p["comment"]
        _bump(ctx, fw)
        return None

    def del_entry(ctx: Ctx) -> None:
        fw, s, i = _entry(ctx)
        _check_digest(ctx, fw)
        s["entries"].pop(i)
        _bump(ctx, fw)
        return None

    api("GET", base)(list_)
    api("POST", base)(create)
    api("GET", base + "/{name}")(entries)
    api("POST", base + "/{name}")(add)
    api("DELETE", base + "/{name}")(delete_set)
    api("GET", base + "/{name}/{cidr}")(get_entry)
    api("PUT", base + "/{name}/{cidr}")(put_entry)
    api("DELETE", base + "/{name}/{cidr}")(del_entry)


for _kind in ("lxc", "qemu"):
    _base = f"/nodes/{{node}}/{_kind}/{{vmid}}/firewall"

    def _mk(kind: str) -> Callable[[Ctx], dict[str, Any]]:
        return lambda ctx: _guest_fw(ctx, kind)

    _rules_handlers(_base + "/rules", _mk(_kind), True)
    _options_handlers(_base + "/options", _mk(_kind))
    _alias_handlers(_base + "/aliases", _mk(_kind))
    _ipset_handlers(_base + "/ipset", _mk(_kind))

_rules_handlers("/cluster/firewall/rules", _cluster_fw, False)
_options_handlers("/cluster/firewall/options", _cluster_fw)
_alias_handlers("/cluster/firewall/aliases", _cluster_fw)
_ipset_handlers("/cluster/firewall/ipset", _cluster_fw)
_rules_handlers("/cluster/firewall/groups/{group}", _group_fw, False)


@api("GET", "/cluster/firewall/groups")
def groups(ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"group": n, **({"comment": g["comment"]} if g.get("comment") else {}), "digest": _groups_digest(ctx)}
        for n, g in sorted(ctx.sim.fw_groups.items())
    ]


def _groups_digest(ctx: Ctx) -> str:
    return hashlib.sha1(repr(sorted((k, _digest(v)) for k, v in ctx.sim.fw_groups.items())).encode()).hexdigest()


@api("POST", "/cluster/firewall/groups")
def group_create(ctx: Ctx) -> None:
    name = str(ctx.p["group"])
    if ctx.p.get("rename"):
        # Groups.pm: the digest is checked only when renaming
        if ctx.p.get("digest") and ctx.p["digest"] != _groups_digest(ctx):
            raise die("detected modified configuration - file changed by other user? Try again.")
        old = str(ctx.p["rename"])
        if old not in ctx.sim.fw_groups:
            raise param_error({"group": f"Security group '{old}' does not exist"})
        if name in ctx.sim.fw_groups and name != old:
            raise param_error({"group": f"Security group '{name}' does already exist"})
        ctx.sim.fw_groups[name] = ctx.sim.fw_groups.pop(old)
        for fw in [ctx.sim.fw_cluster, *ctx.sim.fw_guest.values()]:
            for r in fw["rules"]:  # rules referencing the group follow the rename
                if r.get("type") == "group" and r.get("action") == old:
                    r["action"] = name
    else:
        if name in ctx.sim.fw_groups:
            raise param_error({"group": f"Security group '{name}' already exists"})
        ctx.sim.fw_groups[name] = _new_firewall()
    if "comment" in ctx.p:
        ctx.sim.fw_groups[name]["comment"] = ctx.p["comment"]
    ctx.sim.changed()
    return None


@api("DELETE", "/cluster/firewall/groups/{group}")
def group_delete(ctx: Ctx) -> None:
    g = _group_fw(ctx)
    name = str(ctx.p["group"])
    if g["rules"]:
        raise die(f"Security group '{name}' is not empty")
    # pve-firewall does not check whether rules still reference the group (they then match nothing)
    del ctx.sim.fw_groups[name]
    ctx.sim.changed()
    return None


@api("GET", "/cluster/firewall")
def fw_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": n} for n in ("aliases", "groups", "ipset", "macros", "options", "refs", "rules")]


# --- the firewall log (pvefw-logger's /var/log/pve-firewall.log) ----------------------------------
#
# pve-firewall logs a packet only where its ruleset has an NFLOG rule: a guest chain's policy DROP/REJECT
# when the guest's log_level_in/out is set (ruleset_add_chain_policy; a policy ACCEPT adds no log rule),
# and a rule that carries `log` (ruleset_generate_rule, message "<ACTION>: "). Nothing is compiled while
# the datacenter firewall is off, and a guest's chains exist only for interfaces with firewall=1 and the
# guest firewall enabled. pvefw-logger writes `<vmid> <level> <chain> <dd/Mon/YYYY:HH:MM:SS> <zone>
# <msg>IN=...`; PVE::Firewall::Helpers::dump_fw_logfile serves it (a guest's endpoint: the lines that
# start with "<vmid> "), with PVE::Tools::dump_logfile_by_filehandle's paging: `start` skips that many
# matching lines, `limit` (default 50, 0 = all) caps the answer, `n` counts from 1, and an empty answer
# is one line "no content".

LOG_LEVELS = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "err": 3, "crit": 2, "alert": 1, "emerg": 0}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _log_time(ts: float) -> str:
    import time as _time

    t = _time.gmtime(ts)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def _on(v: Any) -> bool:
    return str(v if v is not None else 0) in ("1", "on", "yes", "true")


def _ports(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in str(spec).split(","):
        a, _, b = part.strip().partition(":")
        if a.isdigit():
            out.append((int(a), int(b) if b.isdigit() else int(a)))
    return out


def _addr_in(sim: Any, fw: dict[str, Any], spec: str, addr: str) -> bool:
    """A rule's source/dest (empty, CIDR list, +ipset, alias) holds `addr`."""
    if not spec:
        return True
    ip = ipaddress.ip_address(addr)
    for item in str(spec).split(","):
        item = item.strip()
        if item.startswith("+"):
            name = item[1:].split("/")[-1]
            s = fw["ipsets"].get(name) or sim.fw_cluster["ipsets"].get(name) or {"entries": []}
            nets = [e["cidr"] for e in s["entries"] if not e.get("nomatch")]
        else:
            name = item.split("/")[-1]
            alias = fw["aliases"].get(name) or sim.fw_cluster["aliases"].get(name)
            nets = [alias["cidr"]] if alias else [item]
        for n in nets:
            try:
                if ip in ipaddress.ip_network(str(n), strict=False):
                    return True
            except ValueError:
                continue
    return False


def _matches(sim: Any, fw: dict[str, Any], r: dict[str, Any], pkt: dict[str, Any]) -> bool:
    if r.get("macro"):
        return False  # macros (SSH, HTTP, ...) are not expanded by the emulator
    if r.get("proto") and str(r["proto"]).lower() != pkt["proto"]:
        return False
    if r.get("dport") and (pkt.get("dport") is None
                           or not any(a <= int(pkt["dport"]) <= b for a, b in _ports(str(r["dport"])))):
        return False
    return _addr_in(sim, fw, str(r.get("source", "")), pkt["src"]) and \
        _addr_in(sim, fw, str(r.get("dest", "")), pkt["dst"])


def judge(sim: Any, g: Any, pkt: dict[str, Any]) -> tuple[str, str | None]:
    """What the guest's firewall does with a new connection (`direction` in = to the guest, out = from it):
    (action, the log line it writes or None)."""
    direction = pkt["direction"]
    fw = sim.fw_guest.get(g.vmid) or _new_firewall()
    net = str(g.config.get("net0", ""))
    active = _on(sim.fw_cluster["options"].get("enable")) and _on(fw["options"].get("enable")) \
        and "firewall=1" in net.split(",")
    if not active:
        return "ACCEPT", None
    action, log, msg = "", None, ""
    for r in fw["rules"]:
        if not _on(r.get("enable")):
            continue
        if r.get("type") == "group":
            group = sim.fw_groups.get(str(r.get("action")), {"rules": []})
            for gr in group["rules"]:
                if _on(gr.get("enable")) and gr.get("type") == direction and _matches(sim, fw, gr, pkt):
                    action, log, msg = str(gr["action"]), gr.get("log"), f"{gr['action']}: "
                    break
        elif r.get("type") == direction and _matches(sim, fw, r, pkt):
            action, log, msg = str(r["action"]), r.get("log"), f"{r['action']}: "
        if action:
            break
    if not action:
        key = "policy_in" if direction == "in" else "policy_out"
        action = str(fw["options"].get(key) or ("DROP" if direction == "in" else "ACCEPT"))
        if action == "ACCEPT":
            return action, None  # a policy ACCEPT has no log rule
        log = fw["options"].get("log_level_in" if direction == "in" else "log_level_out")
        msg = f"policy {action}: "
    if not log or log == "nolog" or log not in LOG_LEVELS:
        return action, None
    chain = f"{'veth' if g.type == 'lxc' else 'tap'}{g.vmid}i0-{'IN' if direction == 'in' else 'OUT'}"
    proto = pkt["proto"].upper()
    ports = f"SPT={pkt.get('sport', 40000)} DPT={pkt['dport']} " if pkt.get("dport") is not None else ""
    tcp = "SEQ=0 ACK=0 WINDOW=64240 SYN " if proto == "TCP" else ("LEN=8 " if proto == "UDP" else "TYPE=8 CODE=0 ")
    iface = chain.rsplit("-", 1)[0]
    text = (f"{g.vmid} {LOG_LEVELS[log]} {chain} {_log_time(sim.now())} {msg}"
            f"IN=fwbr{g.vmid}i0 OUT=fwbr{g.vmid}i0 PHYSIN=fwln{g.vmid}i0 PHYSOUT={iface} "
            f"SRC={pkt['src']} DST={pkt['dst']} LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO={proto} {ports}{tcp}")
    sim.fw_log.setdefault(g.node, []).append(text)
    return action, text


def _log_ts(line: str) -> float | None:
    import datetime as _dt

    words = line.split(" ")
    try:
        return _dt.datetime.strptime(f"{words[3]} {words[4]}", "%d/%b/%Y:%H:%M:%S %z").timestamp()
    except (IndexError, ValueError):
        return None


def _dump_log(ctx: Ctx, lines: list[str]) -> list[dict[str, Any]]:
    since, until = ctx.p.get("since"), ctx.p.get("until")
    if since is not None or until is not None:
        def keep(line: str) -> bool:
            ts = _log_ts(line)
            return ts is not None and not (since and ts < int(since)) and not (until and ts > int(until))
        lines = [x for x in lines if keep(x)]
    start = int(ctx.p.get("start") or 0)
    limit = int(ctx.p["limit"]) if ctx.p.get("limit") is not None else 50
    if not lines:
        return [{"n": 1, "t": "no content"}]
    chosen = lines[start:] if limit == 0 else lines[start:start + limit]
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(chosen)]


@api("GET", "/nodes/{node}/firewall/log")
def node_log(ctx: Ctx) -> list[dict[str, Any]]:
    return _dump_log(ctx, list(ctx.sim.fw_log.get(ctx.node, [])))


def _guest_log(kind: str) -> Callable[[Ctx], list[dict[str, Any]]]:
    def handler(ctx: Ctx) -> list[dict[str, Any]]:
        g = ctx.guest(kind)
        return _dump_log(ctx, [x for x in ctx.sim.fw_log.get(ctx.node, []) if x.startswith(f"{g.vmid} ")])

    return handler


api("GET", "/nodes/{node}/lxc/{vmid}/firewall/log")(_guest_log("lxc"))
api("GET", "/nodes/{node}/qemu/{vmid}/firewall/log")(_guest_log("qemu"))
