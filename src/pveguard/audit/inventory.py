"""Collect host facts from a root filesystem (and, for `/`, from the live system).

Read-only. Offline facts come from files below the root: dpkg status and file lists, apt's
extended_states, unit files and enablement links, cron tables, /etc/passwd. Live facts (running
units, listening sockets and their processes) are read only when the root is `/`; everything that
could not be read is recorded in `HostFacts.unavailable` with the reason, and what needs root in
`HostFacts.needs_root`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from pveguard.audit import unitfile
from pveguard.audit.facts import CronJob, HostFacts, Socket, Unit
from pveguard.packages.status import parse_status

UNIT_SUFFIXES = (".service", ".timer", ".socket", ".target", ".path", ".mount")
# systemd's unit search path, most important first (systemd.unit(5), system mode).
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system", "usr/lib/systemd/system",
             "lib/systemd/system")
CONTAINER_RUNTIME_PACKAGES = {
    "docker": ("docker.io", "docker-ce", "docker-ce-cli", "moby-engine", "containerd", "containerd.io"),
    "podman": ("podman", "buildah"),
}
CRON_PERIODIC = ("hourly", "daily", "weekly", "monthly")
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
_CGROUP_UNIT = re.compile(r"([^/]+\.(?:service|socket|scope))(?:/|$)")

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


def canonical(path: str) -> str:
    """Fold merged-/usr aliases so `/lib/x` (what bookworm packages list) equals `/usr/lib/x`."""
    for prefix in ("/usr/lib/", "/usr/bin/", "/usr/sbin/", "/usr/lib64/"):
        if path.startswith(prefix):
            return path[4:]
    return path


def resolve_in_root(root: Path, path: str, hops: int = 40) -> str:
    """Follow symlinks of an absolute `path` as seen from inside `root`; returns the inside path."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    while parts and hops > 0:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        if part == ".":
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            hops -= 1
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/" + "/".join(done)


def collect(root: Path = Path("/"), *, live: bool | None = None, runner: Runner = _run) -> HostFacts:
    """All facts about the host at `root`; live facts only when `root` is `/` (or `live` says so)."""
    root = root.resolve()
    live = (root == Path("/")) if live is None else live
    facts = HostFacts(root=root, live=live)
    facts.hostname = socket.gethostname() if live else _read(root / "etc/hostname").strip() or str(root)
    _packages(facts)
    _units(facts)
    _users(facts)
    _cron(facts)
    if live:
        _live_units(facts, runner)
        _sockets(facts)
    else:
        reason = f"offline audit of {root}: live facts are read only for /"
        facts.missing("running units", reason)
        facts.missing("listening sockets", reason)
    _pve(facts)
    _container_runtimes(facts)
    return facts


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# --- packages --------------------------------------------------------------------------------


def _packages(facts: HostFacts) -> None:
    status = facts.root / "var/lib/dpkg/status"
    try:
        facts.packages = parse_status(status.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        facts.missing("packages", f"cannot read {status}: {exc.strerror}")
        return
    extended = facts.root / "var/lib/apt/extended_states"
    if extended.exists():
        from pveguard.packages.status import read_auto_installed

        facts.auto_installed = read_auto_installed(extended)
    else:
        facts.missing("manual/automatic marks", f"{extended} does not exist (apt never ran here)")
    info = facts.root / "var/lib/dpkg/info"
    try:
        lists = list(os.scandir(info))
    except OSError as exc:
        facts.missing("package file lists", f"cannot read {info}: {exc.strerror}")
        lists = []
    for entry in lists:
        if not entry.name.endswith(".list"):
            continue
        name = entry.name[:-5].split(":", 1)[0]
        facts.package_files[name] = [line for line in _read(Path(entry.path)).splitlines() if line]
    for name, pkg in facts.packages.items():
        raw = pkg.fields.get("conffiles", "")
        facts.conffiles[name] = [line.split()[0] for line in raw.splitlines() if line.strip().startswith("/")]


def owners(facts: HostFacts, prefixes: tuple[str, ...]) -> dict[str, str]:
    """Canonical path -> owning package, for listed paths below `prefixes` (canonical form)."""
    out: dict[str, str] = {}
    for pkg, paths in facts.package_files.items():
        for path in paths:
            c = canonical(path)
            if c.startswith(prefixes):
                out[c] = pkg
    return out


# --- units -----------------------------------------------------------------------------------


def _unit_dirs(root: Path) -> list[tuple[str, Path]]:
    """Existing unit directories (inside path, real path), skipping merged-/usr duplicates."""
    seen: set[Path] = set()
    out: list[tuple[str, Path]] = []
    for rel in UNIT_DIRS:
        inside = resolve_in_root(root, "/" + rel)
        real = root / inside.lstrip("/")
        if real in seen or not real.is_dir():
            continue
        seen.add(real)
        out.append(("/" + rel, real))
    return out


def _units(facts: HostFacts) -> None:
    root = facts.root
    dirs = _unit_dirs(root)
    if not dirs:
        facts.missing("units", f"no systemd unit directories below {root}")
        return
    owned = owners(facts, ("/lib/systemd/system/", "/etc/systemd/system/"))
    fragments: dict[str, tuple[str, Path]] = {}
    masked: set[str] = set()
    aliases: dict[str, str] = {}
    etc_aliased: set[str] = set()
    for inside_dir, real_dir in dirs:
        for entry in _scandir(real_dir):
            name = entry.name
            if not name.endswith(UNIT_SUFFIXES) or name in fragments:
                continue
            inside = f"{inside_dir}/{name}"
            if entry.is_symlink():
                target = resolve_in_root(root, inside)
                if target == "/dev/null":
                    masked.add(name)
                    continue  # a masked unit's file further down the path still says what it is
                target_name = target.rsplit("/", 1)[1]
                if target_name != name and target_name.endswith(UNIT_SUFFIXES):
                    aliases[name] = target_name
                    if inside_dir.startswith("/etc/"):
                        etc_aliased.add(target_name)  # `systemctl enable` made it; vendor aliases do not enable
                    continue
                inside = target
            if (root / inside.lstrip("/")).is_file():
                fragments[name] = (inside, root / inside.lstrip("/"))
    for name, (inside, real) in fragments.items():
        unit = Unit(name=name, path=inside, package=owned.get(canonical(inside)))
        unit.file = unitfile.parse(_read(real), name=name)
        _drop_ins(root, dirs, name, unit)
        facts.units[name] = unit
    for name in masked:
        if name in facts.units:
            facts.units[name].enablement = "masked"
        else:
            facts.units[name] = Unit(name=name, enablement="masked")
    wanted = _wants_links(root, dirs)
    for name, unit in facts.units.items():
        unit.wanted_by = sorted(wanted.get(name, (set(), False))[0])
        if unit.enablement == "masked":
            continue
        in_etc = wanted.get(name, (set(), False))[1]
        instances_enabled = any(
            unitfile.instance_template(n) == name and wanted[n][1] for n in wanted
        )
        if in_etc or instances_enabled or name in etc_aliased:
            unit.enablement = "enabled"
        elif unit.file is not None and not unit.file.has_install:
            unit.enablement = "static"
        else:
            unit.enablement = "disabled"
    # Instances that are enabled (getty@tty1.service) become units of their own, sharing the template file.
    for name, (by, in_etc) in wanted.items():
        template = unitfile.instance_template(name)
        if name in facts.units or template is None or template not in facts.units:
            continue
        base = facts.units[template]
        facts.units[name] = Unit(name=name, path=base.path, package=base.package, file=base.file,
                                 enablement="enabled" if in_etc else "static", wanted_by=sorted(by))
    for alias, target in aliases.items():
        if alias not in facts.units and target in facts.units:
            facts.units[alias] = Unit(name=alias, path=facts.units[target].path, enablement="alias",
                                      package=facts.units[target].package)


def _scandir(path: Path) -> Iterator[os.DirEntry[str]]:
    try:
        yield from sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return


def _drop_ins(root: Path, dirs: list[tuple[str, Path]], name: str, unit: Unit) -> None:
    """Merge `<unit>.d/*.conf` from every unit directory, by file name (the first directory wins a name)."""
    names = [f"{name}.d"]
    template = unitfile.instance_template(name)
    if template:
        names.insert(0, f"{template}.d")
    chosen: dict[str, Path] = {}
    for d in names:
        for _, real_dir in dirs:
            for entry in _scandir(real_dir / d):
                if entry.name.endswith(".conf") and entry.name not in chosen:
                    chosen[entry.name] = Path(entry.path)
    for conf in sorted(chosen):
        unit.file = unitfile.parse(_read(chosen[conf]), unit.file, name)


def _wants_links(root: Path, dirs: list[tuple[str, Path]]) -> dict[str, tuple[set[str], bool]]:
    """unit -> (units that want/require it through links, whether any such link is in /etc)."""
    out: dict[str, tuple[set[str], bool]] = {}
    for inside_dir, real_dir in dirs:
        for entry in _scandir(real_dir):
            if not entry.is_dir() or not entry.name.endswith((".wants", ".requires", ".upholds")):
                continue
            wanting = entry.name.rsplit(".", 1)[0]
            for link in _scandir(Path(entry.path)):
                by, in_etc = out.get(link.name, (set(), False))
                by.add(wanting)
                out[link.name] = (by, in_etc or inside_dir.startswith("/etc/"))
    return out


def _live_units(facts: HostFacts, runner: Runner) -> None:
    if not Path("/run/systemd/system").is_dir():
        comm = _read(Path("/proc/1/comm")).strip() or "unknown"
        facts.missing("running units", f"systemd is not running on this host (PID 1 is {comm})")
        return
    facts.systemd_running = True
    try:
        proc = runner(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "--full"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        facts.missing("running units", f"systemctl failed: {exc}")
        return
    if proc.returncode != 0:
        facts.missing("running units", f"systemctl list-units exited {proc.returncode}: {proc.stderr.strip()}")
        return
    for line in proc.stdout.splitlines():
        cols = line.lstrip("● *").split(None, 4)
        if len(cols) < 4 or not cols[0].endswith(UNIT_SUFFIXES):
            continue
        name, _load, active, sub = cols[:4]
        unit = facts.units.get(name)
        if unit is None:
            template = unitfile.instance_template(name)
            base = facts.units.get(template) if template else None
            unit = Unit(name=name, enablement="static" if base else "transient",
                        path=base.path if base else None, package=base.package if base else None,
                        file=base.file if base else None)
            facts.units[name] = unit
        unit.active, unit.sub = active, sub


# --- sockets ---------------------------------------------------------------------------------


def parse_proc_net(text: str, proto: str) -> list[Socket]:
    """Listening TCP / bound UDP sockets from one /proc/net/{tcp,tcp6,udp,udp6} table."""
    out: list[Socket] = []
    want = _TCP_LISTEN if proto.startswith("tcp") else _UDP_UNCONNECTED
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != want:
            continue
        addr_hex, port_hex = cols[1].split(":")
        port = int(port_hex, 16)
        if port == 0:
            continue
        out.append(Socket(proto=proto, address=_hex_address(addr_hex), port=port, inode=int(cols[9])))
    return out


def _hex_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc prints IPv6 as four little-endian 32-bit words.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    text = socket.inet_ntop(socket.AF_INET6, words)
    return text.removeprefix("::ffff:") if text.startswith("::ffff:") and "." in text else text


def unit_of_cgroup(text: str) -> str | None:
    """The systemd unit a process belongs to, from /proc/PID/cgroup (v1 name=systemd or v2 line)."""
    best = None
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers in ("name=systemd", "") or best is None:
            found = _CGROUP_UNIT.findall(path)
            if found:
                best = found[-1]
                if controllers in ("name=systemd", ""):
                    break
    return best


def _sockets(facts: HostFacts) -> None:
    proc = Path("/proc")
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        text = _read(proc / "net" / proto)
        if text:
            facts.sockets.extend(parse_proc_net(text, proto))
    if not facts.sockets:
        return
    by_inode = {s.inode: s for s in facts.sockets}
    denied = 0
    for entry in _scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = Path(entry.path) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            denied += 1
            continue
        pid_sockets = []
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in by_inode and by_inode[inode].pid is None:
                    pid_sockets.append(by_inode[inode])
        if pid_sockets:
            comm = _read(Path(entry.path) / "comm").strip()
            unit = unit_of_cgroup(_read(Path(entry.path) / "cgroup"))
            for s in pid_sockets:
                s.pid, s.process, s.unit = int(entry.name), comm, unit
    if denied and os.geteuid() != 0:
        facts.needs_root.append(f"map listening sockets to processes and units ({denied} processes' /proc/PID/fd "
                                "were not readable)")
    facts.sockets.sort(key=lambda s: (s.port, s.proto, s.address))


# --- users, cron, PVE, container runtimes -----------------------------------------------------


def _users(facts: HostFacts) -> None:
    for line in _read(facts.root / "etc/passwd").splitlines():
        cols = line.split(":")
        if len(cols) >= 7 and cols[2].isdigit():
            facts.users[cols[0]] = (int(cols[2]), cols[5])


def parse_crontab(text: str, source: str, user: str | None = None) -> list[CronJob]:
    """Jobs of one crontab; `user` None means the system format with a user column."""
    jobs: list[CronJob] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue
        if line.startswith("@"):
            parts = line.split(None, 2 if user else 3)
            schedule, rest = parts[0], parts[1:]
        else:
            parts = line.split(None, 6 if user is None else 5)
            schedule, rest = " ".join(parts[:5]), parts[5:]
        if user is None:
            if len(rest) < 2:
                continue
            job_user, command = rest[0], " ".join(rest[1:])
        else:
            if not rest:
                continue
            job_user, command = user, " ".join(rest)
        jobs.append(CronJob(source=source, schedule=schedule, user=job_user, command=command))
    return jobs


def _cron(facts: HostFacts) -> None:
    root = facts.root
    owned = owners(facts, ("/etc/cron",))
    jobs: list[CronJob] = []
    crontab = root / "etc/crontab"
    if crontab.is_file():
        jobs += parse_crontab(_read(crontab), "/etc/crontab")
    for entry in _scandir(root / "etc/cron.d"):
        if entry.is_file() and not entry.name.startswith("."):
            jobs += parse_crontab(_read(Path(entry.path)), f"/etc/cron.d/{entry.name}")
    for period in CRON_PERIODIC:
        for entry in _scandir(root / f"etc/cron.{period}"):
            if entry.is_file() and not entry.name.startswith("."):
                jobs.append(CronJob(source=f"/etc/cron.{period}/{entry.name}", schedule=period, user="root",
                                    command=f"/etc/cron.{period}/{entry.name}"))
    spool = root / "var/spool/cron/crontabs"
    if spool.is_dir():
        try:
            entries = list(_scandir_strict(spool))
        except PermissionError:
            facts.needs_root.append(f"read user crontabs in {spool}")
            entries = []
        for entry in entries:
            jobs += parse_crontab(_read(Path(entry.path)), f"/var/spool/cron/crontabs/{entry.name}", entry.name)
    for job in jobs:
        job.package = owned.get(job.source)
    facts.cron = jobs


def _scandir_strict(path: Path) -> list[os.DirEntry[str]]:
    return sorted(os.scandir(path), key=lambda e: e.name)


def _pve(facts: HostFacts) -> None:
    root = facts.root
    for name in ("proxmox-ve", "pve-manager"):
        pkg = facts.packages.get(name)
        if pkg is not None and pkg.installed:
            facts.pve_detected, facts.pve_evidence = True, f"package {name} {pkg.version} installed"
            return
    if facts.live and (root / "etc/pve").is_dir():
        facts.pve_detected, facts.pve_evidence = True, "/etc/pve exists"


def _container_runtimes(facts: HostFacts) -> None:
    root = facts.root
    for runtime, pkgs in CONTAINER_RUNTIME_PACKAGES.items():
        evidence: list[str] = []
        for name in pkgs:
            pkg = facts.packages.get(name)
            if pkg is not None and pkg.installed:
                evidence.append(f"package {name} {pkg.version}")
        for binary in (f"usr/bin/{runtime}", f"usr/local/bin/{runtime}"):
            if (root / binary).exists():
                evidence.append(f"/{binary}")
        unit = facts.units.get(f"{runtime}.service")
        if unit is not None:
            state = f", {unit.active}" if unit.active else ""
            evidence.append(f"unit {unit.name} ({unit.enablement}{state})")
        if (root / f"var/lib/{runtime}" if runtime == "docker" else root / "var/lib/containers").is_dir():
            evidence.append("/var/lib/docker" if runtime == "docker" else "/var/lib/containers")
        if facts.live and runtime == "docker" and Path("/run/docker.sock").exists():
            evidence.append("/run/docker.sock")
        if evidence:
            facts.container_runtimes[runtime] = evidence
