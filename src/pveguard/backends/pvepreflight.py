"""`ProxmoxBackend.preflight()`: what must hold on the PVE cluster before plan/apply can work.

Each check reads (never writes) and gives one line: what was found and, when it fails, the fix. Once
the API cannot be reached, the checks that need it are reported as skipped, not as failures of their
own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pveguard.backends.base import Preflight
from pveguard.backends.pveprivs import describe_missing, grant_commands
from pveguard.backends.pvetls import assess
from pveguard.errors import BackendError

if TYPE_CHECKING:
    from pveguard.backends.proxmox import ProxmoxBackend

SUPPORTED_MAJOR = (8, 9)  # tested against pvesim emulating PVE 8.4 and 9.1 (their API schemas)
SUPPORTED_FROM = (8, 4)  # the oldest release the tests cover
SUPPORTED_TEXT = "8.4 and later 8.x, 9.x"


def version_support(version: str) -> tuple[bool | None, str, str]:
    """(verdict, what, fix) for a PVE version string like '8.4.1' or '9.1.9'.

    verdict True: supported (8.4+ and 9.x); None: a warning, it may work but is untested (8.0-8.3, or a
    major newer than 9); False: not supported (PVE 7 and older, or an unreadable version).
    """
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        return False, f"PVE reported an unreadable version {version!r}", \
            f"pveguard supports PVE {SUPPORTED_TEXT}; check 'pveversion' on the node"
    major, minor = int(m[1]), int(m[2])
    if major < SUPPORTED_MAJOR[0]:
        return False, f"PVE {major} is not supported (supported: {SUPPORTED_TEXT})", \
            f"upgrade the cluster to PVE {SUPPORTED_FROM[0]}.{SUPPORTED_FROM[1]} or later " \
            f"(see 'pve{major}to{major + 1}')"
    if major > SUPPORTED_MAJOR[-1]:
        return None, f"WARNING: PVE {major} is newer than pveguard knows (supported: {SUPPORTED_TEXT}); " \
                     "its API may have changed", f"use a pveguard release that supports PVE {major}"
    if (major, minor) < SUPPORTED_FROM:
        return None, f"WARNING: PVE {major}.{minor} is older than {SUPPORTED_FROM[0]}.{SUPPORTED_FROM[1]}, the " \
                     f"oldest release pveguard is tested with (supported: {SUPPORTED_TEXT})", \
            "update the nodes to the latest 8.x point release ('apt update && apt full-upgrade')"
    return True, f"supported: {SUPPORTED_TEXT}", ""


def version_verdict(version: str) -> tuple[bool, str]:
    """(supported, fix) for a PVE version string: supported only when tested (8.4+ and 9.x)."""
    verdict, _what, fix = version_support(version)
    return verdict is True, fix


def run(b: ProxmoxBackend) -> list[Preflight]:
    """All proxmox preflights, in the order an admin fixes them."""
    out: list[Preflight] = []
    if b.settings.mode == "https" and b.settings.host:
        ok, detail, fix = assess(b.settings.host, b.settings.trust)
        out.append(Preflight("pve-tls", ok, detail, fix))
    else:
        out.append(Preflight("pve-tls", None, "local node through pvesh: no TLS involved"))
    try:
        version = b.version()
    except BackendError as exc:
        out.append(Preflight("pve-connection", False, f"{b.settings.describe()}: {exc.message}", exc.hint or ""))
        for name in ("pve-version", "pve-permissions", "pve-nodes", "pve-storages", "pve-templates",
                     "pve-bridges", "pve-vmids"):
            out.append(Preflight(name, None, "skipped: the PVE API cannot be reached"))
        return out
    release = str(version.get("version", "?"))
    out.append(Preflight("pve-connection", True, f"{b.settings.describe()}: Proxmox VE {release}"))
    verdict, what, fix = version_support(release)
    # a warning passes (doctor shows it as WARN, with its fix): pveguard may well work there
    out.append(Preflight("pve-version", verdict is not False, f"Proxmox VE {release} ({what})", fix))
    out.append(_guarded("pve-permissions", lambda: _permissions(b)))
    nodes: list[str] = []
    out.append(_guarded("pve-nodes", lambda: _nodes(b, nodes)))
    out.append(_guarded("pve-storages", lambda: _storages(b, nodes)))
    out.append(_guarded("pve-templates", lambda: _templates(b, nodes)))
    out.append(_guarded("pve-bridges", lambda: _bridges(b, nodes)))
    out.append(_guarded("pve-vmids", lambda: _vmids(b)))
    return out


def _guarded(name: str, check: Callable[[], Preflight]) -> Preflight:
    try:
        return check()
    except BackendError as exc:
        return Preflight(name, False, f"could not check: {exc.message}", exc.hint or "")


def _permissions(b: ProxmoxBackend) -> Preflight:
    authid = b.settings.authid
    missing = b.missing_privileges()
    if not missing:
        return Preflight("pve-permissions", True, f"{authid} has every privilege plan and apply need")
    detail = describe_missing(authid, missing).replace(":\n  ", ": ").replace("\n  ", "; ")
    return Preflight("pve-permissions", False, detail, "grant them as root on a node: "
                     + "; ".join(grant_commands(authid, missing, b.needed_privileges())))


def _target_nodes(b: ProxmoxBackend, online: list[str]) -> list[str]:
    """The nodes new containers may land on: the pinned ones, else every online node."""
    pinned = sorted({s.node for s in b.specs if s.node} | ({b.settings.node} if b.settings.node else set()))
    unpinned = any(not s.node for s in b.specs) and not b.settings.node
    return sorted(set(pinned) | (set(online) if unpinned or not pinned else set()))


def _nodes(b: ProxmoxBackend, found: list[str]) -> Preflight:
    nodes = b.nodes()
    online = sorted(n.name for n in nodes if n.online)
    offline = sorted(n.name for n in nodes if not n.online)
    quorate = b.quorum()
    targets = _target_nodes(b, online)
    found.extend(t for t in targets if t in online)
    missing = [t for t in targets if t not in {n.name for n in nodes}]
    down = [t for t in targets if t in offline]
    detail = f"{len(online)} of {len(nodes)} nodes online ({', '.join(online) or 'none'})" + \
             (f", offline: {', '.join(offline)}" if offline else "") + \
             ("" if quorate is None else (", quorate" if quorate else ", NOT quorate"))
    if quorate is False:
        return Preflight("pve-nodes", False, detail, "PVE refuses changes without quorum: bring nodes back "
                                                     "('pvecm status' shows the votes)")
    if missing:
        return Preflight("pve-nodes", False, detail + f"; pinned node(s) not in the cluster: {', '.join(missing)}",
                         "fix 'node:' in the strategy (or PVEGUARD_PVE_NODE) to name a cluster node")
    if down or not found:
        return Preflight("pve-nodes", False, detail + "; no online node to place containers on"
                         + (f" (pinned: {', '.join(down)})" if down else ""),
                         "bring the node back, or pin the containers to an online node")
    return Preflight("pve-nodes", True, detail)


def _storages(b: ProxmoxBackend, nodes: list[str]) -> Preflight:
    wanted: dict[str, set[str]] = {}
    for s in b.specs or []:
        wanted.setdefault(s.storage or b.settings.storage, set()).add("rootdir")
    if not b.specs:
        wanted.setdefault(b.settings.storage, set()).add("rootdir")
    wanted.setdefault(b.settings.template_storage, set()).add("vztmpl")
    if b.backup_storage:
        wanted.setdefault(b.backup_storage, set()).add("backup")
    problems: list[str] = []
    fixes: list[str] = []
    for node in nodes:
        rows = b.call("GET", f"/nodes/{node}/storage", what=f"listing the storages of {node}")
        have = {str(r["storage"]): r for r in rows or []}
        for sid, content in sorted(wanted.items()):
            row = have.get(sid)
            if row is None:
                problems.append(f"'{sid}' is not available on {node}")
                fixes.append(f"add storage '{sid}' for {node} (Datacenter -> Storage) or name an existing one "
                             f"in target.proxmox / backup.containers.storage")
                continue
            has = set(str(row.get("content", "")).split(","))
            lack = sorted(content - has)
            if lack:
                problems.append(f"'{sid}' on {node} does not hold {', '.join(lack)} (has {row.get('content')})")
                fixes.append(f"pvesm set {sid} --content {','.join(sorted(has | content))}")
            elif not int(row.get("active", 1) or 0):
                problems.append(f"'{sid}' on {node} is not active")
                fixes.append(f"check 'pvesm status' on {node}")
    what = ", ".join(f"{sid} ({'/'.join(sorted(c))})" for sid, c in sorted(wanted.items()))
    if problems:
        return Preflight("pve-storages", False, "; ".join(dict.fromkeys(problems)), "; ".join(dict.fromkeys(fixes)))
    return Preflight("pve-storages", True, f"{what} on {', '.join(nodes)}")


def _templates(b: ProxmoxBackend, nodes: list[str]) -> Preflight:
    names = sorted({s.template for s in b.specs})
    if not names:
        return Preflight("pve-templates", None, "no containers in the strategy")
    storage = b.settings.template_storage
    notes: list[str] = []
    problems: list[str] = []
    for node in nodes:
        listing = b.call("GET", f"/nodes/{node}/storage/{storage}/content", {"content": "vztmpl"},
                         what=f"listing templates on {node}:{storage}")
        have = [str(c.get("volid", "")) for c in listing or []]
        avail: list[str] | None = None
        for name in names:
            if ":" in name:
                if name not in have and not _volid_exists(b, node, name):
                    problems.append(f"{name} does not exist on {node}")
                continue
            if any(v.split("vztmpl/", 1)[-1].startswith(name) for v in have):
                continue
            if avail is None:
                avail = [str(a.get("template", "")) for a in b.call(
                    "GET", f"/nodes/{node}/aplinfo", what=f"listing downloadable templates on {node}") or []]
            if any(a.startswith(name) for a in avail):
                notes.append(f"{name} will be downloaded to {node}:{storage}")
            else:
                problems.append(f"{name} is neither on {node}:{storage} nor downloadable")
    if problems:
        return Preflight("pve-templates", False, "; ".join(problems),
                         "run 'pveam update' on the node(s), or set 'template:' to an existing volid "
                         "(pveam list " + storage + ")")
    return Preflight("pve-templates", True, ", ".join(names) + (" (" + "; ".join(notes) + ")" if notes else
                                                                  f" on {storage}"))


def _volid_exists(b: ProxmoxBackend, node: str, volid: str) -> bool:
    storage = volid.split(":", 1)[0]
    rows = b.call("GET", f"/nodes/{node}/storage/{storage}/content", {"content": "vztmpl"},
                  what=f"listing templates on {node}:{storage}")
    return any(str(r.get("volid")) == volid for r in rows or [])


def _bridges(b: ProxmoxBackend, nodes: list[str]) -> Preflight:
    wanted = sorted({s.net.bridge for s in b.specs})
    if not wanted:
        return Preflight("pve-bridges", None, "no containers in the strategy")
    problems = []
    for node in nodes:
        rows: list[dict[str, Any]] = b.call("GET", f"/nodes/{node}/network", {"type": "any_bridge"},
                                            what=f"listing the bridges of {node}") or []
        have = {str(r.get("iface")) for r in rows}
        problems += [f"{br} does not exist on {node}" for br in wanted if br not in have]
    if problems:
        return Preflight("pve-bridges", False, "; ".join(problems),
                         "create the bridge on each node (Node -> System -> Network -> Create -> Linux Bridge, "
                         "then Apply), or set network.bridge to an existing one")
    return Preflight("pve-bridges", True, f"{', '.join(wanted)} on {', '.join(nodes)}")


def _vmids(b: ProxmoxBackend) -> Preflight:
    fixed = {s.vmid: s.name for s in b.specs if s.vmid is not None}
    if not fixed:
        return Preflight("pve-vmids", True, "no fixed VMIDs: PVE hands out free ones (/cluster/nextid)")
    taken = []
    for g in b.list_guests():
        name = fixed.get(g.vmid)
        if name is not None and not (g.type == "lxc" and g.name == name):
            taken.append(f"{g.vmid} (wanted by {name}) is {g.type} '{g.name}' on {g.node}")
    if taken:
        return Preflight("pve-vmids", False, "; ".join(taken),
                         "change or remove 'vmid:' for those containers in the strategy")
    return Preflight("pve-vmids", True, "free or already ours: " + ", ".join(str(v) for v in sorted(fixed)))
