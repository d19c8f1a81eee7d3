"""`pveguard migrate plan`: what moving one host service into a container involves, from the audit's facts.

Pure over `HostFacts` + the strategy (plus file sizes read below the audited root): the unit and its
packages, the config and data paths with their sizes, ports, users, the target container (the
audit's suggestion unless named), the disk it needs, the network path, the backup policy, and the
nine steps of the seed's checklist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pveguard.audit import services, suggest, unitfile
from pveguard.audit.facts import HostFacts, Unit
from pveguard.audit.pkggraph import DependencyGraph
from pveguard.errors import UsageError
from pveguard.packages.classify import Classifier
from pveguard.strategy.models import Container, Strategy

SCHEMA = "pveguard.migrate.plan/1"
GIB = 1024 ** 3
# A Debian 12 template with a service's packages installed: what a root disk holds before the data.
BASE_FOOTPRINT = 1 * GIB
# Keep this much of the root disk free after the data moved in (the monitor warns at 90 %).
HEADROOM = 0.8
MIB = 1024 ** 2
# Memory: a container's own processes (systemd, journald, sshd...) plus the service's memory now
# (the source's cgroup, read live) with half of it again for peaks; grown in steps of 256 MiB.
BASE_MEMORY = 128 * MIB
MEMORY_HEADROOM = 1.5
MEMORY_STEP = 256 * MIB

# The seed's checklist: identify -> plan -> create -> install -> migrate data -> test -> switch traffic
# -> remove from host -> validate. The first two are this command; `migrate run` performs the rest.
STEPS: tuple[tuple[str, str], ...] = (
    ("identify", "the unit, its packages, config and data paths, ports and users (the audit's facts)"),
    ("plan", "target container, resources and disk, network path, backup policy (this document)"),
    ("create", "create or grow the target container through provisioning"),
    ("install", "install the same packages inside (same versions where the container's distribution has them)"),
    ("migrate-data", "first sync while the service runs; stop it on the source; final sync (owners, modes, users)"),
    ("test", "unit active inside, ports listening, protocol probe equal to the source's answer"),
    ("switch-traffic", "forward the source's ports to the container (DNAT), clients keep the source address"),
    ("remove-from-host", "stop and disable the unit, remove its packages through the guard, keep a rollback bundle"),
    ("validate", "latency before vs after, open ports as expected, backup made and verified, monitored"),
)
RUN_STEPS = tuple(name for name, _ in STEPS[2:])


@dataclass(frozen=True)
class PathSize:
    path: str
    exists: bool
    bytes: int
    files: int


def find_unit(facts: HostFacts, service: str) -> Unit:
    """The unit a user means by `service` (`nginx`, `nginx.service`)."""
    name = service if "." in service else f"{service}.service"
    unit = facts.units.get(name)
    if unit is None:
        candidates = sorted(n.removesuffix(".service") for n, u in facts.units.items()
                            if u.kind == "service" and services.listed(u) and (u.package or u.path))
        close = [c for c in candidates if service.split(".")[0] in c][:5]
        raise UsageError(f"no systemd unit {name} on {facts.root}",
                         hint=("did you mean: " + ", ".join(close)) if close else
                         "run 'pveguard audit --full' to list the services this host runs")
    return unit


def service_packages(unit: Unit, facts: HostFacts, graph: DependencyGraph,
                     classifier: services.HostClassifier) -> list[str]:
    """The unit's package, the packages built from the same source, and the installed non-core
    packages that exist to pull it in (nginx for nginx-common's unit); never a core package."""
    if not unit.package:
        return []
    pkg = facts.packages.get(unit.package)
    source = (pkg.fields.get("source", "").split(" ")[0] if pkg else "") or unit.package
    out = {unit.package}
    for name in graph.installed:
        other = facts.packages[name]
        if (other.fields.get("source", "").split(" ")[0] or name) == source:
            out.add(name)
    for name in graph.dependents([unit.package]):
        if source in name or name in facts.auto_installed:
            continue
        deps = {d for group in facts.packages[name].depends() for d in group}
        if unit.package in deps:
            out.add(name)
    return sorted(n for n in out if not classifier.classify(n).core or n == unit.package)


def path_size(root: Path, path: str) -> PathSize:
    """Bytes (apparent sizes, symlinks not followed) and files below `path` inside `root`."""
    full = root / path.lstrip("/")
    if not os.path.lexists(full):
        return PathSize(path, False, 0, 0)
    total = files = 0
    if full.is_file() or full.is_symlink():
        return PathSize(path, True, full.lstat().st_size, 1)
    for dirpath, _dirs, names in os.walk(full):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
                files += 1
            except OSError:
                continue
    return PathSize(path, True, total, files)


_INSTALLED_SIZE = re.compile(r"^Package: (\S+)\n(?:.+\n)*?Installed-Size: (\d+)", re.MULTILINE)


def installed_sizes(root: Path) -> dict[str, int]:
    """Package -> Installed-Size in bytes, from dpkg's status file."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return {m.group(1): int(m.group(2)) * 1024 for m in _INSTALLED_SIZE.finditer(text)}


def _container(strategy: Strategy, name: str) -> Container | None:
    return next((c for c in strategy.containers if c.name == name), None)


def _user_docs(mig: suggest.MigrationFacts, facts: HostFacts) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for text in mig.users:
        name = text.split(" ", 1)[0]
        if name.startswith("("):
            continue
        uid = facts.users.get(name, (None, ""))[0]
        if name not in [u["name"] for u in out]:
            out.append({"name": name, "uid": uid, "create": name != "root"})
    return out


def _port_numbers(ports: list[str]) -> list[dict[str, Any]]:
    out = []
    for text in ports:  # "tcp/80 on 0.0.0.0"
        proto, _, rest = text.partition("/")
        port, _, addr = rest.partition(" on ")
        if port.isdigit():
            entry = {"proto": proto.rstrip("6"), "port": int(port), "address": addr}
            if entry not in out:
                out.append(entry)
    return out


def disk_gib_for(needed: int) -> int:
    """The root disk (whole GiB) that holds `needed` bytes with the headroom left free."""
    return -(-int(needed / HEADROOM) // GIB)


def memory_needed(service_bytes: int | None) -> int | None:
    """The memory a container needs for a service that uses `service_bytes` now (None: unknown)."""
    if service_bytes is None:
        return None
    return BASE_MEMORY + int(service_bytes * MEMORY_HEADROOM)


def memory_for(needed: int) -> int:
    """`needed` rounded up to the next 256 MiB step, in MiB."""
    return -(-needed // MEMORY_STEP) * (MEMORY_STEP // MIB)


def build(facts: HostFacts, strategy: Strategy, service: str, to: str | None = None,
          source: str = "local", sizer: Callable[[str], PathSize] | None = None,
          memory_bytes: int | None = None) -> dict[str, Any]:
    """The migration plan document (docs/json.md `migrate plan`). `sizer` measures a path (default:
    below the audited root); `memory_bytes` is the service's memory now (read live; None offline)."""
    unit = find_unit(facts, service)
    graph = DependencyGraph(facts.packages)
    policy = strategy.installation_policy
    backend = suggest.role_backend(strategy.target.backend, facts.pve_detected, graph.installed)
    classifier = services.HostClassifier(Classifier(facts.packages, strategy.core_roots(),
                                                    tuple(policy.extra_allowed)), graph,
                                         host_role=suggest.host_role(facts.packages, backend, graph))
    verdict = services.classify_unit(unit, classifier)
    notes: list[str] = []
    if verdict.core:
        raise UsageError(f"{unit.name} is core ({verdict.detail}): it stays on the host",
                         hint="only non-core services are migrated; see 'pveguard audit'")
    containers = [(c.name, c.components) for c in strategy.containers]
    sug = suggest.suggest(suggest.service_names(unit, facts), containers)
    target = to or sug.container
    if target is None:
        raise UsageError(f"no strategy container matches {unit.name} ({sug.evidence})",
                         hint="name the target with --to CONTAINER")
    mig = suggest.migration_facts(unit, facts)
    notes += mig.notes
    sizes = installed_sizes(facts.root)
    packages: list[dict[str, Any]] = [
        {"name": n, "version": facts.packages[n].version, "installed_size_bytes": sizes.get(n, 0)}
        for n in service_packages(unit, facts, graph, classifier)]
    size = sizer or (lambda p: path_size(facts.root, p))
    data_paths = list(mig.data_paths)
    provides = {x for n in service_packages(unit, facts, graph, classifier) for x in facts.packages[n].provides()}
    if "httpd" in provides and "/var/www" not in data_paths and size("/var/www").exists:
        data_paths.append("/var/www")  # a web server's documents (created by its admin, listed by no package)
    carry: list[str] = []
    if not unit.package and unit.path:   # a hand-made unit: its file and its program move with it
        carry.append(unit.path)
        for value in mig.exec_start:
            argv = unitfile.exec_argv(value)
            if argv and argv[0].startswith(("/usr/local/", "/opt/", "/srv/")):
                carry.append(argv[0])
    config = [_size_doc(size(p)) for p in mig.config_paths]
    data = [_size_doc(size(p)) for p in sorted(data_paths)]
    data_bytes = sum(p["bytes"] for p in config + data)
    pkg_bytes = sum(p["installed_size_bytes"] for p in packages)
    needed = BASE_FOOTPRINT + pkg_bytes + data_bytes
    spec = _container(strategy, target)
    mem_needed = memory_needed(memory_bytes)
    resources: dict[str, Any] = {"disk_needed_bytes": needed, "data_bytes": data_bytes,
                                 "packages_bytes": pkg_bytes, "disk_bytes": None, "cores": None,
                                 "memory_bytes": None, "must_grow": None, "grow_to": None,
                                 "service_memory_bytes": memory_bytes, "memory_needed_bytes": mem_needed,
                                 "memory_grow_to": None}
    base = _container(strategy, sug.container) if sug.container else None
    if spec is None:
        notes.append(f"{target} is not a strategy container: if it does not exist, 'migrate run' creates it "
                     f"with the defaults of {base.name} (role {base.role})" if base else
                     f"{target} is not a strategy container and the audit suggests none to take defaults from: "
                     "it must exist before 'migrate run'")
    sized = spec or base
    if sized is not None:
        disk = sized.resources.storage
        must_grow = needed > disk * HEADROOM
        grow_gib = disk_gib_for(needed) if must_grow else None
        grow_mem = memory_for(mem_needed) if mem_needed is not None and mem_needed > sized.resources.memory else None
        resources.update(disk_bytes=disk, cores=sized.resources.cores, memory_bytes=sized.resources.memory,
                         must_grow=must_grow or grow_mem is not None, grow_to=f"{grow_gib}G" if grow_gib else None,
                         memory_grow_to=f"{grow_mem}M" if grow_mem else None)
    ports = _port_numbers(mig.ports)
    net = spec.network if spec is not None else None
    network: dict[str, Any] = {
        "source": source,
        "bridge": (net.bridge if net and net.bridge else strategy.network.bridge),
        "vlan": (net.vlan if net and net.vlan is not None else strategy.network.container_vlan),
        "ip": net.ip if net else None,
        "ports": ports,
        "switch": "DNAT on the source: each port above is forwarded to the container's address, "
                  "clients keep using the source's address (127.0.0.1 on the source too; not ::1, which the kernel "
                  "cannot forward: docs/migrate.md)",
    }
    if spec is not None and spec.network.firewall and ports:
        network["switch"] += ("; the container's firewall admits those ports from the source's address (kept "
                              "in its desired firewall state until rollback)")
    if not ports and facts.is_unavailable("listening sockets"):
        network["switch"] += "; the ports are read live by 'migrate run' (offline root: none known)"
    bpol = strategy.backup.containers
    covered = spec is not None or bpol.guests == "all"
    backup = {"covered": covered, "schedule": bpol.schedule if covered else None,
              "retention_days": bpol.retention.days if covered else None,
              "reason": ("strategy container (backup.containers.guests: managed)" if spec is not None
                         else "backup.containers.guests: all" if covered
                         else "not a strategy container and backup.containers.guests is managed")}
    return {
        "schema": SCHEMA,
        "service": unit.name,
        "host": {"hostname": facts.hostname, "root": str(facts.root), "live": facts.live},
        "unit": {"name": unit.name, "path": unit.path, "package": unit.package, "enablement": unit.enablement,
                 "active": unit.active, "exec_start": mig.exec_start, "classification": verdict.detail},
        "packages": packages,
        "config_paths": config,
        "data_paths": data,
        "log_paths": mig.log_paths,
        "unit_paths": carry,
        "ports": ports,
        "users": _user_docs(mig, facts),
        "target": {"container": target, "chosen_by": "--to" if to else "audit suggestion",
                   "suggestion": sug.container, "confidence": sug.confidence, "evidence": sug.evidence,
                   "in_strategy": spec is not None},
        "resources": resources,
        "network": network,
        "backup": backup,
        "steps": [{"n": i + 1, "name": name, "what": what} for i, (name, what) in enumerate(STEPS)],
        "notes": notes,
    }


def _size_doc(p: PathSize) -> dict[str, Any]:
    return {"path": p.path, "exists": p.exists, "bytes": p.bytes, "files": p.files}


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render_text(doc: dict[str, Any]) -> str:
    """The plan for a terminal: plain lines (no table: the paths are long)."""
    r = doc["resources"]
    t = doc["target"]
    lines = [f"migrate {doc['service']} from {doc['host']['hostname']} to {t['container']} ({t['chosen_by']})"]
    lines.append("  packages: " + (", ".join(f"{p['name']} {p['version']}" for p in doc["packages"]) or "none"))
    for kind in ("config_paths", "data_paths"):
        for p in doc[kind]:
            state = human_bytes(p["bytes"]) + f", {p['files']} files" if p["exists"] else "missing"
            lines.append(f"  {kind.split('_')[0]}: {p['path']} ({state})")
    lines.append("  ports: " + (", ".join(f"{p['proto']}/{p['port']}" for p in doc["ports"]) or "none known"))
    lines.append("  users: " + (", ".join(u["name"] for u in doc["users"]) or "none"))
    if r["disk_bytes"] is not None:
        grow = f"the container must grow to {r['grow_to']}" if r["grow_to"] else "fits"
        lines.append(f"  disk: needs {human_bytes(r['disk_needed_bytes'])} of {human_bytes(r['disk_bytes'])} ({grow})")
    if r["memory_bytes"] is not None and r["memory_needed_bytes"] is not None:
        grow = f"the container must grow to {r['memory_grow_to']}" if r["memory_grow_to"] else "fits"
        lines.append(f"  memory: needs {human_bytes(r['memory_needed_bytes'])} of {human_bytes(r['memory_bytes'])} "
                     f"({grow}; the service uses {human_bytes(r['service_memory_bytes'])} now)")
    n = doc["network"]
    lines.append(f"  network: bridge {n['bridge']} vlan {n['vlan']}; {n['switch']}")
    b = doc["backup"]
    lines.append(f"  backup: {'covered, ' + str(b['schedule']) if b['covered'] else 'NOT covered'} ({b['reason']})")
    lines.append("  steps:")
    lines += [f"    {s['n']}. {s['name']}: {s['what']}" for s in doc["steps"]]
    lines += [f"  note: {x}" for x in doc["notes"]]
    return "\n".join(lines) + "\n"
