"""Where a non-core service should go: match it against the strategy containers' components, and
gather what a migration needs to know (ports, config and data paths, users); and what must stay,
because the host's own role needs it (`host_role`), so that no suggestion ever removes it.

Pure functions over names, packages and `HostFacts`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pveguard.audit import unitfile
from pveguard.audit.facts import HostFacts, Unit
from pveguard.audit.pkggraph import DependencyGraph
from pveguard.packages.status import Package, parse_relations

# Names that mean a component without containing it (package or binary -> component).
ALIASES = {
    "docker.io": "docker", "docker-ce": "docker", "dockerd": "docker", "moby-engine": "docker",
    "containerd": "docker", "containerd.io": "docker",
    "borgbackup": "borg", "borgmatic": "borg",
    "node_exporter": "node-exporter", "prometheus-alertmanager": "alertmanager",
    "influxd": "influxdb", "gitlab-ci-multi-runner": "gitlab-runner",
}
# How much a match on each kind of name counts: the unit and package names are the strongest evidence.
SOURCE_WEIGHT = {"package": 1.0, "unit": 1.0, "source": 0.9, "binary": 0.85, "command": 0.8}
EXACT, ALIAS, CONTAINS = 1.0, 0.95, 0.8
AMBIGUOUS_FACTOR = 0.6
_SPLIT = re.compile(r"[-_.@\s/]+")


@dataclass(frozen=True)
class Match:
    container: str
    component: str
    confidence: float
    evidence: str         # e.g. "package grafana = component grafana"


@dataclass(frozen=True)
class Suggestion:
    container: str | None
    component: str | None
    confidence: float
    evidence: str
    alternatives: tuple[Match, ...] = ()


def _tokens(name: str) -> list[str]:
    return [t for t in _SPLIT.split(name.lower()) if t]


def _component_forms(component: str) -> list[list[str]]:
    """'webhooks' also matches as 'webhook'; multi-word components match as a token sequence."""
    toks = _tokens(component)
    forms = [toks]
    if toks and toks[-1].endswith("s") and len(toks[-1]) > 3:
        forms.append([*toks[:-1], toks[-1][:-1]])
    return forms


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def match_name(name: str, component: str) -> float:
    """How well one name (package, unit stem, binary) matches one component, 0..1."""
    stem = name.lower().removesuffix(".service").removesuffix(".timer").removesuffix(".socket")
    aliased = ALIASES.get(stem)
    forms = _component_forms(component)
    name_toks = _tokens(stem)
    for form in forms:
        if name_toks == form:
            return EXACT
    if aliased is not None and any(_tokens(aliased) == form for form in forms):
        return ALIAS
    for form in forms:
        if form and _contains(name_toks, form):
            # A longer component is more specific: node-exporter beats prometheus in prometheus-node-exporter.
            return min(CONTAINS + 0.05 * (len(form) - 1) - 0.02 * (len(name_toks) - len(form)), 0.9)
    return 0.0


def suggest(names: Mapping[str, Iterable[str]], containers: Sequence[tuple[str, Sequence[str]]]) -> Suggestion:
    """Best container for a service known by `names` (kind -> names: unit, package, source, binary).

    `containers` is (container name, components) in strategy order. Confidence is the best match's
    score times its source weight, lowered when another container matches almost as well.
    """
    best_per_container: dict[str, Match] = {}
    for kind, values in names.items():
        weight = SOURCE_WEIGHT.get(kind, 0.7)
        for value in values:
            for container, components in containers:
                for component in components:
                    score = match_name(value, component) * weight
                    if score <= 0:
                        continue
                    current = best_per_container.get(container)
                    if current is None or score > current.confidence:
                        best_per_container[container] = Match(container, component, round(score, 2),
                                                              f"{kind} {value} ~ component {component!r}")
    if not best_per_container:
        return Suggestion(None, None, 0.0, "no strategy container lists a matching component")
    ranked = sorted(best_per_container.values(), key=lambda m: -m.confidence)
    top = ranked[0]
    confidence = top.confidence
    evidence = top.evidence
    if len(ranked) > 1 and ranked[1].confidence >= top.confidence - 0.05:
        confidence = round(confidence * AMBIGUOUS_FACTOR, 2)
        evidence += f"; also matches {ranked[1].container} ({ranked[1].evidence})"
    return Suggestion(top.container, top.component, confidence, evidence, tuple(ranked[1:]))


def service_names(unit: Unit, facts: HostFacts) -> dict[str, list[str]]:
    """The names a service is known by: unit stem, owning package and its source, ExecStart binary."""
    names: dict[str, list[str]] = {"unit": [unit.name.rsplit(".", 1)[0].split("@", 1)[0]]}
    if unit.package:
        names["package"] = [unit.package]
        pkg = facts.packages.get(unit.package)
        source = pkg.fields.get("source", "").split(" ")[0] if pkg else ""
        if source and source != unit.package:
            names["source"] = [source]
    binaries = []
    for origin in (unit, activated_service(unit, facts)):
        if origin is not None and origin.file is not None:
            for value in origin.file.get("Service", "ExecStart"):
                argv = unitfile.exec_argv(value)
                if argv:
                    binaries.append(argv[0].rsplit("/", 1)[-1])
    if binaries:
        names["binary"] = binaries
    return names


def activated_service(unit: Unit, facts: HostFacts) -> Unit | None:
    """The service a timer or socket starts (Unit=, else the same-named .service)."""
    if unit.kind not in ("timer", "socket") or unit.file is None:
        return None
    section = "Timer" if unit.kind == "timer" else "Socket"
    stem = unit.name.rsplit(".", 1)[0]
    return facts.units.get(unit.file.first(section, "Unit") or f"{stem}.service")


# --- migration facts -------------------------------------------------------------------------

# Below /etc these hold one file per package; the file itself is the config to carry over.
_ETC_SHARED = ("default", "logrotate.d", "cron.d", "sudoers.d", "sysctl.d", "security", "apparmor.d",
               "modprobe.d", "rsyslog.d", "profile.d", "tmpfiles.d", "sysusers.d")
_ETC_SKIP = ("systemd", "init.d", "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d",
             "init", "apt", "dpkg", "ld.so.conf.d")
_DATA_PREFIXES = ("/var/lib/", "/srv/", "/opt/", "/var/spool/", "/data/")


@dataclass
class MigrationFacts:
    ports: list[str] = field(default_factory=list)
    config_paths: list[str] = field(default_factory=list)
    data_paths: list[str] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    exec_start: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _top(path: str, depth: int) -> str:
    parts = path.strip("/").split("/")
    return "/" + "/".join(parts[:depth])


def package_paths(files: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(config, data, log) locations a package ships, summarised to their top directories."""
    config: set[str] = set()
    data: set[str] = set()
    logs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")
        if parts[0] == "etc" and len(parts) >= 2:
            if parts[1] in _ETC_SKIP:
                continue
            if parts[1] in _ETC_SHARED:
                if len(parts) >= 3:
                    config.add(_top(path, 3))
                continue
            config.add(_top(path, 2))
        elif path.startswith("/var/log/") and len(parts) >= 3:
            logs.add(_top(path, 3))
        elif path.startswith(_DATA_PREFIXES):
            depth = 3 if path.startswith(("/var/", "/srv/")) else 2
            if len(parts) >= depth:
                data.add(_top(path, depth))
    return sorted(config), sorted(data), sorted(logs)


def migration_facts(unit: Unit, facts: HostFacts) -> MigrationFacts:
    """Ports, config/data/log paths and users of a service, from sockets, its package and its unit file."""
    out = MigrationFacts()
    for s in facts.sockets:
        if s.unit == unit.name:
            text = f"{s.proto}/{s.port} on {s.address}"
            if text not in out.ports:
                out.ports.append(text)
    if facts.is_unavailable("listening sockets"):
        out.notes.append("ports: unavailable (" + _reason(facts, "listening sockets") + ")")
    config: set[str] = set()
    data: set[str] = set()
    logs: set[str] = set()
    if unit.package:
        c, d, lg = package_paths(facts.package_files.get(unit.package, []))
        config.update(c)
        data.update(d)
        logs.update(lg)
        config.update(package_paths(facts.conffiles.get(unit.package, []))[0])
    user = "root"
    source = activated_service(unit, facts) or unit
    if source.file is not None:
        f = source.file
        dirs = unitfile.directories(f)
        config.update(dirs.get("ConfigurationDirectory", []))
        data.update(dirs.get("StateDirectory", []) + dirs.get("CacheDirectory", []))
        logs.update(dirs.get("LogsDirectory", []))
        for wd in f.get("Service", "WorkingDirectory"):
            wd = wd.lstrip("-")
            if wd.startswith("/") and wd.startswith(_DATA_PREFIXES):
                data.add(wd)
        for env in f.get("Service", "EnvironmentFile"):
            config.add(env.lstrip("-"))
        for value in f.get("Service", "ExecStart"):
            out.exec_start.append(value)
            for arg in unitfile.exec_argv(value)[1:]:
                path = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
                if path.startswith("/etc/"):
                    config.add(path)
                elif path.startswith(_DATA_PREFIXES):
                    data.add(path)
                elif path.startswith("/var/log/"):
                    logs.add(path)
        user = f.first("Service", "User") or ("(dynamic user)" if f.first("Service", "DynamicUser") in (
            "yes", "true", "1") else "root")
        group = f.first("Service", "Group")
        out.users.append(user if not group else f"{user} (group {group})")
    stem = unit.name.rsplit(".", 1)[0]
    for candidate in {stem, unit.package or "", stem.split("-")[0]}:
        if candidate and candidate in facts.users and candidate != user and candidate not in out.users:
            out.users.append(f"{candidate} (system user, uid {facts.users[candidate][0]})")
    out.config_paths = _collapse(config)
    out.data_paths = _collapse(data)
    out.log_paths = _collapse(logs)
    return out


def _covered(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _collapse(paths: Iterable[str]) -> list[str]:
    """Sorted, without entries that sit below another entry."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda x: (x.count("/"), x)):
        if not _covered(p, out):
            out.append(p)
    return sorted(out)


def _reason(facts: HostFacts, fact: str) -> str:
    return next((u.reason for u in facts.unavailable if u.fact == fact), "unknown")


# --- what the host's own role needs --------------------------------------------------------------

# The packages each backend needs on the host that runs it: for lxc the Debian packages docs/lxc.md
# lists (lxc-* tools, lxcfs, debootstrap for templates, mkfs.ext4, ip, zstd), newuidmap (uidmap),
# the config includes (lxc-templates) and the DHCP server of its bridges (dnsmasq-base). On a PVE
# node the core roots (proxmox-ve) already are the host's role.
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {
    "lxc": ("lxc", "lxcfs", "lxc-templates", "uidmap", "dnsmasq-base", "debootstrap", "e2fsprogs", "iproute2",
            "zstd"),
    "proxmox": (),
}
# Debian's base system: what every Debian host is expected to run (systemd, cron, iproute2, apt...).
BASE_PRIORITIES = ("required", "important")


def role_backend(configured: str, pve_detected: bool, installed: Iterable[str]) -> str | None:
    """The backend this host serves pveguard with: the configured one, else the rule of `auto`
    (a PVE node is proxmox; a host with the lxc tools is lxc), applied to the audited root."""
    if configured != "auto":
        return configured
    if pve_detected:
        return "proxmox"
    return "lxc" if "lxc" in set(installed) else None


def host_role(packages: Mapping[str, Package], backend: str | None,
              graph: DependencyGraph | None = None) -> dict[str, str]:
    """Installed packages the host's own role needs -> why, never to be suggested for removal.

    The roots are the active backend's packages and Debian's base system (Essential, Priority
    required/important); then everything they depend on or recommend, an alternative group by its
    first installed member. Recommends count here (unlike the core closure) because they are what
    the base system runs with: systemd recommends dbus and systemd-timesyncd, lxc its templates.
    """
    graph = graph or DependencyGraph(packages)
    why: dict[str, str] = {}
    queue: deque[str] = deque()

    def add(name: str, reason: str) -> None:
        for resolved in graph.resolve(name):
            if resolved not in why:
                why[resolved] = reason
                queue.append(resolved)

    for name in BACKEND_PACKAGES.get(backend or "", ()):
        add(name, f"needed by the {backend} backend")
    for name in sorted(graph.installed):
        pkg = packages[name]
        if pkg.essential or pkg.priority in BASE_PRIORITIES:
            add(name, "Debian base system (" + ("Essential: yes" if pkg.essential else f"Priority: {pkg.priority}")
                + ")")
    while queue:
        name = queue.popleft()
        pkg = packages[name]
        for kind, groups in (("needed", pkg.depends()), ("recommended", parse_relations(pkg.fields.get(
                "recommends", "")))):
            for group in groups:
                for alt in group:
                    if graph.resolve(alt):
                        add(alt, f"{kind} by {name}")
                        break
    return why
