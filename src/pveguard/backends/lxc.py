"""Plain LXC on any Linux host, shaped like a Proxmox VE node.

Layout per container (VMID = container name, as PVE's /var/lib/lxc/<vmid>):

* `<lxcpath>/<vmid>/config` — the lxc config, generated from the metadata on every create,
  update and start (never edited by hand);
* `<lxcpath>/<vmid>/pveguard.json` — the metadata: the PVE-form config (`get_config`), the
  managed marker (in `description`), tags, the template and a `lock` while a create runs;
* `<disk_dir>/<vmid>/vm-<vmid>-disk-0.raw` — the root disk: a sparse ext4 image of the configured
  size that LXC loop-mounts as the rootfs (`lxc.rootfs.path = loop:...`) inside the container's
  mount namespace; the loop device is released when the container stops;
* `<disk_dir>/<vmid>/mp0/` — the data volume (`backup_volume`, config `mp0`): a host directory
  bind-mounted at its mount point (`lxc.mount.entry`), owned by the container's root. Its size is
  recorded as PVE records it, not enforced (a directory has no size).

Limits follow PVE's cgroup mapping (backends.cgroups), networking PVE's veth/bridge/VLAN model
(backends.lxc_net), templates PVE's vztmpl tarballs (backends.lxc_template).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pveguard import subproc
from pveguard.backends import cgroups, lxc_gateway, lxc_isolation, lxc_net, lxc_template
from pveguard.backends.base import (
    MANAGED_MARKER,
    MANAGED_TAG,
    Backend,
    Capabilities,
    DataVolume,
    ExecResult,
    GrowTo,
    Guest,
    GuestSpec,
    GuestState,
    GuestStats,
    Preflight,
    Snapshot,
    read_marker,
)
from pveguard.errors import BackendError, BackendUnavailable, ConfigError
from pveguard.invocation import during
from pveguard.strategy.models import LxcTarget, Strategy

GIB = 1024 ** 3
MIB = 1024 ** 2
FIRST_VMID = 100
META = "pveguard.json"
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LXCFS_DIR = Path("/var/lib/lxcfs")
# The commands the backend runs, and the Debian package of each.
TOOLS = {"lxc-start": "lxc", "lxc-attach": "lxc", "lxc-stop": "lxc", "lxc-ls": "lxc", "lxc-info": "lxc",
         "lxc-wait": "lxc", "lxc-usernsexec": "lxc", "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
         "resize2fs": "e2fsprogs", "ip": "iproute2", "losetup": "mount", "tar": "tar"}
# Keys a running container takes at once (cgroup writes or metadata only).
LIVE_KEYS = frozenset({"memory", "swap", "cores", "cpulimit", "cpuunits", "hard_limits", "onboot", "startup",
                       "tags", "description"})
# Keys written into the lxc config or the root disk, which LXC reads only at start.
RESTART_KEYS = frozenset({"hostname", "net0", "features", "rootfs", "mp0"})
SUPPORTED_FEATURES = frozenset({"nesting", "fuse", "keyctl"})
LXC_CONFIG_DIR = Path("/usr/share/lxc/config")
# The Debian package that ships each file an `lxc.include` of ours names: `debian.*` come from
# lxc-templates, which `apt-get install --no-install-recommends lxc` leaves out.
INCLUDE_PACKAGES = {"debian.common.conf": "lxc-templates", "debian.userns.conf": "lxc-templates",
                    "common.conf": "lxc", "userns.conf": "lxc"}


# --- host facts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


@dataclass(frozen=True)
class HostFacts:
    """What this host offers, detected once per backend instance."""

    layout: cgroups.CgroupLayout
    uid_range: IdRange | None
    gid_range: IdRange | None
    apparmor: bool
    lxcfs: bool
    vlan_module: bool
    cpus: list[int] = field(default_factory=list)

    @property
    def unprivileged_ok(self) -> bool:
        return self.uid_range is not None and self.gid_range is not None


def parse_subid(text: str, user: str = "root", need: int = 65536) -> IdRange | None:
    """The first range of at least `need` ids that /etc/subuid (or subgid) grants `user`."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if (len(parts) == 3 and parts[0] in (user, "0") and parts[1].isdigit() and parts[2].isdigit()
                and int(parts[2]) >= need):
            return IdRange(int(parts[1]), need)
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def detect_facts(subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> HostFacts:
    """Detect the cgroup layout, id ranges for unprivileged containers, AppArmor, lxcfs, 8021q."""
    uids, gids = parse_subid(_read_text(subuid)), parse_subid(_read_text(subgid))
    if (uids is None or gids is None) and shutil.which("newuidmap") is None:
        # Without shadow's newuidmap nobody hands out subordinate ids, and LXC lets root map any
        # range; take PVE's default one.
        uids = gids = IdRange(100000, 65536)
    return HostFacts(
        layout=cgroups.detect_layout(),
        uid_range=uids,
        gid_range=gids,
        apparmor=_read_text(Path("/sys/module/apparmor/parameters/enabled")).strip() == "Y",
        lxcfs=(LXCFS_DIR / "proc/meminfo").exists(),
        vlan_module=Path("/proc/net/vlan").exists(),
        cpus=cgroups.host_cpus(),
    )


# --- the PVE-form config and the lxc config rendered from it (pure) ------------------------------


def rootfs_string(storage: str | None, vmid: int, disk_gib: int) -> str:
    """PVE's rootfs value for a raw image on dir storage: `local:101/vm-101-disk-0.raw,size=8G`."""
    return f"{storage or 'local'}:{vmid}/vm-{vmid}-disk-0.raw,size={disk_gib}G"


def mp_string(storage: str | None, vmid: int, vol: DataVolume) -> str:
    """PVE's mp0 value for the data volume: `local:101/vm-101-disk-1,mp=/srv/backup,backup=1,size=100G`."""
    return f"{storage or 'local'}:{vmid}/vm-{vmid}-disk-1,mp={vol.mountpoint},backup=1,size={vol.size_gib}G"


def parse_mp(text: str) -> dict[str, str]:
    """A mount point value as key -> value; the leading bare part is the `volume`."""
    out: dict[str, str] = {}
    for i, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
        elif i == 0:
            out["volume"] = part.strip()
    return out


def mp_dir(image: Path) -> Path:
    """The host directory of a container's data volume, next to its root disk (removed with it)."""
    return image.parent / "mp0"


def rootfs_size_gib(rootfs: str) -> int:
    """The `size=` of a rootfs value in GiB (whole GiB, rounded up)."""
    for part in rootfs.split(","):
        key, _, value = part.partition("=")
        if key == "size":
            m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value.strip(), re.IGNORECASE)
            if m:
                factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
                return max(1, -(-int(float(m.group(1)) * factor) // GIB))
    raise ConfigError(f"rootfs {rootfs!r} has no size=<n>G", hint="write it like local:101/vm-101-disk-0.raw,size=8G")


def parse_features(text: str) -> dict[str, bool]:
    """`nesting=1,fuse=0` -> {'nesting': True, 'fuse': False}."""
    out = {}
    for part in str(text or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip() in ("1", "on", "yes", "true")
    return out


def format_features(features: dict[str, bool]) -> str:
    return ",".join(f"{k}=1" for k, v in sorted(features.items()) if v)


def pve_config(spec: GuestSpec, vmid: int, unprivileged: bool, hwaddr: str) -> dict[str, Any]:
    """A new container's configuration in PVE's key/value form."""
    net: dict[str, str] = {"name": "eth0", "bridge": spec.net.bridge, "hwaddr": hwaddr, "ip": spec.net.ip,
                           "type": "veth", "firewall": "1" if spec.net.firewall else "0"}
    if spec.net.vlan is not None:
        net["tag"] = str(spec.net.vlan)
    if spec.net.gateway:
        net["gw"] = spec.net.gateway
    tags = sorted({MANAGED_TAG, *(t.lower() for t in spec.tags), spec.role.lower()} - {""})
    description = spec.description.strip() or MANAGED_MARKER
    if read_marker(description) is None:  # the caller's marker (with its instance) stays as written
        description = f"{description}\n{MANAGED_MARKER}"
    conf: dict[str, Any] = {
        "arch": "amd64",
        "ostype": "debian",
        "hostname": spec.name,
        "cores": spec.cores,
        "memory": spec.memory_mib,
        "swap": spec.swap_mib,
        "cpuunits": spec.cpuunits,
        "rootfs": rootfs_string(spec.storage, vmid, spec.disk_gib),
        "net0": lxc_net.format_net0(net),
        "tags": ";".join(tags),
        "description": description + "\n",
    }
    if spec.cpulimit:
        conf["cpulimit"] = spec.cpulimit
    if spec.backup_volume is not None:
        conf["mp0"] = mp_string(spec.backup_volume.storage or spec.storage, vmid, spec.backup_volume)
    if not spec.hard_limits:
        conf["hard_limits"] = 0  # pveguard's own key (PVE has no soft limits): see cgroups.Limits.hard
    if unprivileged:
        conf["unprivileged"] = 1
    feats = format_features(spec.features)
    if feats:
        conf["features"] = feats
    if spec.onboot:
        conf["onboot"] = 1
    startup = {"order": spec.startup_order, "up": getattr(spec, "startup_up", None),
               "down": getattr(spec, "startup_down", None)}
    startup_text = ",".join(f"{k}={v}" for k, v in startup.items() if v is not None)
    if startup_text:
        conf["startup"] = startup_text
    return conf


def limits_of(conf: dict[str, Any], cpuset: str | None) -> cgroups.Limits:
    return cgroups.Limits(memory_mib=int(conf.get("memory", 512)), swap_mib=int(conf.get("swap", 0)),
                          cpulimit=float(conf.get("cpulimit", 0) or 0), cpuunits=int(conf.get("cpuunits", 100)),
                          cpuset=cpuset, hard=int(conf.get("hard_limits", 1)) == 1)


@dataclass(frozen=True)
class NetPlan:
    """Where a container's veth goes on this host."""

    link: str  # the bridge the veth joins
    vlan_id: int | None  # set in vlan_filtering mode only
    mode: str  # "untagged" | "vlan_filtering" | "bridge_per_vlan"


def plan_net(net0: dict[str, str], configured_mode: str, bridge_filters: bool) -> NetPlan:
    """The bridge (and PVID) for a net0, given the VLAN mode."""
    bridge = net0.get("bridge", "")
    tag = net0.get("tag")
    if not tag:
        return NetPlan(bridge, None, "untagged")
    mode = lxc_net.resolve_vlan_mode(configured_mode, bridge_filters)
    if mode == "vlan_filtering":
        return NetPlan(bridge, int(tag), mode)
    return NetPlan(lxc_net.vlan_bridge_name(bridge, int(tag)), None, mode)


def config_includes(conf: dict[str, Any], facts: HostFacts, config_dir: Path = LXC_CONFIG_DIR) -> list[Path]:
    """The files the lxc config of `conf` includes (LXC's own Debian defaults)."""
    unpriv = bool(int(conf.get("unprivileged", 0))) and facts.unprivileged_ok
    names = ["debian.common.conf", *(["debian.userns.conf"] if unpriv else [])]
    return [config_dir / n for n in names]


def check_includes(paths: list[Path]) -> None:
    """Refuse to write a config whose includes are missing: LXC would fail later at start, less clearly."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        packages = sorted({INCLUDE_PACKAGES.get(p.name, "lxc") for p in missing})
        raise BackendUnavailable(
            f"missing LXC config include{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
            f"(from the Debian package {', '.join(packages)})", hint=f"apt-get install {' '.join(packages)}")


def render_lxc_config(vmid: int, conf: dict[str, Any], facts: HostFacts, *, image: Path, net: NetPlan,
                      cpuset: str | None, config_dir: Path = LXC_CONFIG_DIR, network_hook: str | None = None,
                      isolation_hook: str | None = None) -> str:
    """The lxc config for a container, from its PVE-form config and this host's facts.

    `network_hook` is the pre-start command that brings up pveguard's own network (lxc_gateway);
    without it, a per-VLAN bridge gets a hook that only makes the bridge. `isolation_hook` re-renders
    the bridge's isolation table (lxc_isolation) before the container's veth appears.
    """
    unpriv = bool(int(conf.get("unprivileged", 0))) and facts.unprivileged_ok
    features = parse_features(conf.get("features", ""))
    net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
    lines = ["# generated by pveguard from pveguard.json; change it with pveguard, edits here are overwritten"]
    lines += [f"lxc.include = {p}" for p in config_includes(conf, facts, config_dir)]
    lines += [
        f"lxc.arch = {conf.get('arch', 'amd64')}",
        f"lxc.uts.name = {conf['hostname']}",
        f"lxc.rootfs.path = loop:{image}",
        # systemd halts on SIGRTMIN+3; LXC's default SIGPWR only reaches sigpwr.target.
        "lxc.signal.halt = SIGRTMIN+3",
        f"lxc.apparmor.profile = {'generated' if facts.apparmor else 'unconfined'}",
    ]
    if facts.apparmor and features.get("nesting"):
        lines.append("lxc.apparmor.allow_nesting = 1")
    if unpriv:
        assert facts.uid_range is not None and facts.gid_range is not None
        lines.append(f"lxc.idmap = u 0 {facts.uid_range.start} {facts.uid_range.count}")
        lines.append(f"lxc.idmap = g 0 {facts.gid_range.start} {facts.gid_range.count}")
    if features.get("nesting"):
        # As LXC's nesting.conf: a spare proc/sys for nested container managers.
        lines.append("lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0")
        lines.append("lxc.mount.entry = sys dev/.lxc/sys sysfs create=dir,optional 0 0")
    if features.get("fuse"):
        lines.append("lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file,optional 0 0")
    if conf.get("mp0"):
        target = str(parse_mp(str(conf["mp0"]))["mp"]).lstrip("/")
        lines.append(f"lxc.mount.entry = {mp_dir(image)} {target} none bind,create=dir 0 0")
    lines += [
        "lxc.net.0.type = veth",
        f"lxc.net.0.link = {net.link}",
        f"lxc.net.0.veth.pair = {lxc_net.host_veth_name(vmid)}",
        f"lxc.net.0.name = {net0.get('name', 'eth0')}",
        "lxc.net.0.flags = up",
    ]
    if net0.get("hwaddr"):
        lines.append(f"lxc.net.0.hwaddr = {net0['hwaddr']}")
    if net.vlan_id is not None:
        lines.append(f"lxc.net.0.veth.vlan.id = {net.vlan_id}")
    # Bridges (and pveguard's DHCP and NAT) do not survive a reboot; the hook makes lxc-start /
    # lxc-autostart (onboot) bring them back even when pveguard is not the one starting the container.
    if network_hook:
        lines.append(f"lxc.hook.pre-start = {network_hook}")
    elif net.mode == "bridge_per_vlan":
        lines.append(f"lxc.hook.pre-start = {lxc_net.ensure_bridge_command(net0['bridge'], int(net0['tag']))}")
    if isolation_hook:
        lines.append(f"lxc.hook.pre-start = {isolation_hook}")
    lines.append(f"lxc.start.auto = {1 if int(conf.get('onboot', 0)) else 0}")
    startup = dict(p.partition("=")[::2] for p in str(conf.get("startup", "")).split(",") if "=" in p)
    if startup.get("order", "").isdigit():
        lines.append(f"lxc.start.order = {startup['order']}")
    if startup.get("up", "").isdigit():
        lines.append(f"lxc.start.delay = {startup['up']}")
    layout = facts.layout
    lines += cgroups.lxc_config_lines(limits_of(conf, cpuset), layout.version,
                                      memsw=layout.memsw or layout.version == 2)
    return "\n".join(lines) + "\n"


def next_free_vmid(taken: set[int], start: int = FIRST_VMID) -> int:
    """PVE's nextid: the lowest VMID >= 100 not in use."""
    vmid = start
    while vmid in taken:
        vmid += 1
    return vmid


def parse_lxc_ls(text: str) -> dict[str, tuple[str, int | None]]:
    """`lxc-ls -f -F NAME,STATE,PID` output -> {name: (state, pid)}."""
    out: dict[str, tuple[str, int | None]] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            pid = int(parts[2]) if len(parts) >= 3 and parts[2].isdigit() else None
            out[parts[0]] = (parts[1], pid)
    return out


def parse_lxc_info(text: str) -> dict[str, str]:
    """`lxc-info -s -p` output (`State:   RUNNING`, `PID:  123`) -> {'State': 'RUNNING', 'PID': '123'}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _monitord_running(lxcpath: Path) -> bool:
    """Whether an lxc-monitord serves this lxcpath already (LXC spawns one per lxcpath on demand)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"lxc-monitord") and str(lxcpath).encode() in argv[1:]:
            return True
    return False


def _state(lxc_state: str | None) -> GuestState:
    if lxc_state == "RUNNING":
        return "running"
    if lxc_state in ("STOPPED", None):
        return "stopped"
    return "unknown"


# --- the backend --------------------------------------------------------------------------------


class LxcBackend(Backend):
    """Guests as LXC containers on this host (see the module docstring for the layout)."""

    name = "lxc"
    soft_limits = True

    def __init__(self, config: LxcTarget, *, subuid: Path = Path("/etc/subuid"),
                 subgid: Path = Path("/etc/subgid"), lxc_config_dir: Path = LXC_CONFIG_DIR,
                 run_dir: Path = lxc_gateway.RUN_DIR, pve_dir: Path = Path("/etc/pve"),
                 bridges: list[str] | None = None) -> None:
        self.config = config
        self.lxcpath = Path(config.lxcpath)
        self.template_cache = Path(config.template_cache)
        self.disk_dir = Path(config.disk_dir)
        self.node = socket.gethostname()
        self._subuid, self._subgid = subuid, subgid
        self.lxc_config_dir = lxc_config_dir
        self.run_dir = run_dir
        self.pve_dir = pve_dir
        self.bridges = list(dict.fromkeys(bridges or []))  # the strategy's, for preflight
        self._facts: HostFacts | None = None
        self._cpu_samples: dict[int, tuple[float, int]] = {}

    # -- plumbing --

    @property
    def facts(self) -> HostFacts:
        if self._facts is None:
            self._require_tools()
            self._facts = detect_facts(self._subuid, self._subgid)
        return self._facts

    @staticmethod
    def _require_tools() -> None:
        missing = [t for t in ("lxc-start", "lxc-attach", "lxc-stop", "lxc-ls", "mkfs.ext4", "ip")
                   if shutil.which(t) is None]
        if missing:
            raise BackendUnavailable(f"the LXC backend needs {', '.join(missing)}, which is not installed",
                                     hint="apt-get install lxc e2fsprogs iproute2")
        if os.geteuid() != 0:
            raise BackendUnavailable("the LXC backend must run as root (it creates containers, bridges and "
                                     "loop mounts)", hint="run pveguard with sudo, or use the proxmox backend")

    def _run(self, argv: list[str], *, what: str, timeout: float = 120, input: bytes | None = None,
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            with during(what):  # what a Ctrl-C interrupted
                proc = subproc.run(argv, input=input, timeout=timeout)  # lxc-attach's children go too
        except subprocess.TimeoutExpired:
            raise BackendError(f"{what} did not finish within {timeout:.0f}s ({' '.join(argv[:4])} ...)") from None
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed; needed to {what}") from None
        if check and proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            raise BackendError(f"{what} failed: {err or f'{argv[0]} exited with {proc.returncode}'}")
        return proc

    def _dir(self, vmid: int) -> Path:
        return self.lxcpath / str(vmid)

    def _image(self, vmid: int) -> Path:
        return self.disk_dir / str(vmid) / f"vm-{vmid}-disk-0.raw"

    def _read_meta(self, vmid: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir(vmid) / META).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise BackendError(f"the metadata of container {vmid} ({self._dir(vmid) / META}) is unreadable: {e}",
                               hint="restore the file, or remove the container with lxc-destroy") from None
        return data if isinstance(data, dict) else None

    def _meta(self, vmid: int) -> dict[str, Any]:
        meta = self._read_meta(vmid)
        if meta is None:
            raise BackendError(f"container {vmid} was not created by pveguard (no {META} in {self._dir(vmid)})",
                               hint="pveguard only changes containers it created")
        return meta

    def _write_meta(self, vmid: int, meta: dict[str, Any]) -> None:
        _atomic_write(self._dir(vmid) / META, json.dumps(meta, indent=1, sort_keys=True) + "\n")

    def _lxc_ls(self) -> dict[str, tuple[str, int | None]]:
        if not self.lxcpath.is_dir():
            return {}
        proc = self._run(["lxc-ls", "-P", str(self.lxcpath), "-f", "-F", "NAME,STATE,PID"], what="list containers")
        return parse_lxc_ls(proc.stdout.decode(errors="replace"))

    def running_pids(self) -> dict[int, int]:
        """vmid -> init pid of every running container (one lxc-ls call; the traffic watch maps addresses)."""
        return {int(name): pid for name, (state, pid) in self._lxc_ls().items()
                if name.isdigit() and pid is not None and _state(state) == "running"}

    def _status(self, vmid: int) -> tuple[GuestState, int | None]:
        proc = self._run(["lxc-info", "-P", str(self.lxcpath), "-n", str(vmid), "-s", "-p"],
                         what=f"read the state of {vmid}", check=False)
        info = parse_lxc_info(proc.stdout.decode(errors="replace"))
        pid = info.get("PID", "")
        return _state(info.get("State")), int(pid) if pid.isdigit() else None

    def _vmids(self) -> list[int]:
        if not self.lxcpath.is_dir():
            return []
        return sorted(int(p.name) for p in self.lxcpath.iterdir()
                      if p.name.isdigit() and ((p / "config").exists() or (p / META).exists()))

    def _cpusets_in_use(self, exclude: int) -> list[list[int]]:
        out = []
        for vmid in self._vmids():
            if vmid == exclude:
                continue
            meta = self._read_meta(vmid)
            if meta and meta.get("cpuset"):
                out.append(cgroups.parse_cpulist(str(meta["cpuset"])))
        return out

    def _choose_cpuset(self, vmid: int, cores: int) -> str:
        return cgroups.format_cpulist(cgroups.choose_cpuset(cores, self.facts.cpus, self._cpusets_in_use(vmid)))

    def _net_plan(self, conf: dict[str, Any]) -> NetPlan:
        net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
        return plan_net(net0, self.config.vlan_mode, lxc_net.vlan_filtering(net0.get("bridge", "")))

    def _owns_network(self, bridge: str) -> bool:
        """Whether `bridge` is (or will be) pveguard's own network: made by it, or missing on a non-PVE host."""
        if lxc_net.exists(bridge):
            return lxc_gateway.owned(bridge)
        return not self.pve_dir.is_dir()

    def _ensure_network(self, conf: dict[str, Any]) -> None:
        """The bridge (and VLAN bridge) a container joins, with DHCP and NAT when the network is pveguard's."""
        net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
        bridge = net0.get("bridge", "")
        tag = int(net0["tag"]) if net0.get("tag") else None
        if self._owns_network(bridge):
            lxc_gateway.ensure_segment(bridge, tag, self.config.subnet, self.run_dir)
            return
        if not lxc_net.is_bridge(bridge):
            raise BackendError(f"bridge {bridge!r} does not exist on this host",
                               hint="create the bridge, or change net0 with pveguard")
        if tag is not None and self._net_plan(conf).mode == "bridge_per_vlan":
            lxc_net.ensure_vlan_bridge(bridge, tag)

    def _prune_network(self, bridge: str) -> None:
        """Remove the segments of pveguard's network that no remaining container is configured on."""
        if not lxc_gateway.owned(bridge):
            return
        in_use = set()
        for vmid in self._vmids():
            conf = (self._read_meta(vmid) or {}).get("config", {})
            net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
            if net0.get("bridge") == bridge:
                in_use.add(self._net_plan(conf).link)
        lxc_gateway.prune(bridge, in_use, self.run_dir)

    def _write_lxc_config(self, vmid: int, meta: dict[str, Any]) -> None:
        conf = meta["config"]
        check_includes(config_includes(conf, self.facts, self.lxc_config_dir))
        net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
        hook = None
        if self._owns_network(net0.get("bridge", "")):
            tag = int(net0["tag"]) if net0.get("tag") else None
            hook = lxc_gateway.ensure_command(net0["bridge"], tag, self.config.subnet, self.run_dir)
        bridge = net0.get("bridge", "")
        iso = lxc_isolation.restore_command(self.lxcpath, bridge, self._pool_of(bridge), self.run_dir)
        text = render_lxc_config(vmid, conf, self.facts, image=self._image(vmid), net=self._net_plan(conf),
                                 cpuset=meta.get("cpuset"), config_dir=self.lxc_config_dir, network_hook=hook,
                                 isolation_hook=iso)
        _atomic_write(self._dir(vmid) / "config", text)

    # -- isolation (nftables, backends.lxc_isolation) --

    def _pool_of(self, bridge: str) -> str | None:
        """The pool of pveguard's own network on `bridge` (its segments are kept apart), else None."""
        return self.config.subnet if self._owns_network(bridge) else None

    def bridge_of(self, vmid: int) -> str:
        conf = (self._read_meta(vmid) or {}).get("config", {})
        return lxc_net.parse_net0(str(conf.get("net0", ""))).get("bridge", "")

    def isolation_entries(self, bridge: str) -> list[lxc_isolation.Entry]:
        return lxc_isolation.entries_of(self.lxcpath, bridge, lxc_isolation.segment_lookup(self._pool_of(bridge)))

    def isolation_policy(self, vmid: int) -> list[lxc_isolation.NftRule] | None:
        """What the container admits (None: pveguard keeps no firewall for it)."""
        return lxc_isolation.read_policy(self.lxcpath, vmid)

    def set_isolation(self, vmid: int, rules: list[lxc_isolation.NftRule] | None) -> None:
        """Record what the container admits (None: no firewall) and rewrite its bridge's table."""
        self._meta(vmid)
        lxc_isolation.write_policy(self.lxcpath, vmid, rules)
        self.render_isolation(self.bridge_of(vmid))

    def render_isolation(self, bridge: str) -> None:
        """The bridge's isolation table as its containers' policies say (removed when none has one)."""
        if not bridge:
            return
        entries = self.isolation_entries(bridge)
        if entries or lxc_isolation.listing(bridge) is not None:
            lxc_isolation.apply_table(bridge, entries, self.run_dir)

    def isolation_state(self, bridge: str) -> str | None:
        """None when the bridge's live table is what its containers' policies render to, else what is wrong."""
        return lxc_isolation.table_state(bridge, self.isolation_entries(bridge), self.run_dir)

    def _guest(self, vmid: int) -> Guest:
        return Guest(vmid=vmid, name=str(vmid), node=self.node, type="lxc", status="unknown")

    # -- preflight (doctor): read-only checks, each with its one-line fix --

    def preflight(self) -> list[Preflight]:
        return [self._check_tools(), self._check_includes(), *self._check_bridges(), self._check_network_tools(),
                self._check_subids(), self._check_cgroups()]

    @staticmethod
    def _check_tools() -> Preflight:
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            packages = " ".join(sorted({TOOLS[t] for t in missing}))
            return Preflight("lxc-tools", False, f"missing: {', '.join(missing)}", f"apt-get install {packages}")
        return Preflight("lxc-tools", True, "lxc, e2fsprogs and iproute2 commands found")

    def _check_includes(self) -> Preflight:
        paths = [self.lxc_config_dir / n for n in ("debian.common.conf", "debian.userns.conf")]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            packages = " ".join(sorted({INCLUDE_PACKAGES[p.name] for p in missing}))
            return Preflight("lxc-config-includes", False,
                             f"missing {', '.join(map(str, missing))} (from the package {packages})",
                             f"apt-get install {packages}")
        return Preflight("lxc-config-includes", True, f"{', '.join(p.name for p in paths)} in {self.lxc_config_dir}")

    def _check_bridges(self) -> list[Preflight]:
        out = []
        for bridge in self.bridges:
            name = f"bridge-{bridge}"
            if lxc_gateway.owned(bridge):
                out.append(Preflight(name, True, f"{bridge} is pveguard's network ({lxc_net.alias(bridge)})"))
            elif lxc_net.is_bridge(bridge):
                out.append(Preflight(name, True, f"{bridge} exists (your bridge: pveguard serves no DHCP on it)"))
            elif lxc_net.exists(bridge):
                out.append(Preflight(name, False, f"{bridge} exists but is not a bridge",
                                     "set network.bridge to a bridge, or a free name for pveguard to create"))
            elif self._owns_network(bridge):
                out.append(Preflight(name, True, f"{bridge} does not exist: pveguard creates it with DHCP and NAT "
                                                 f"for {self.config.subnet} at the first start"))
            else:
                out.append(Preflight(name, False, f"{bridge} does not exist on this PVE host",
                                     f"create {bridge} in /etc/network/interfaces (ifreload -a), or set "
                                     f"network.bridge"))
        return out

    def _check_network_tools(self) -> Preflight:
        if not any(self._owns_network(b) for b in self.bridges):
            return Preflight("lxc-dhcp-nat", None, "no pveguard network here (the bridges are yours)")
        missing = {t: p for t, p in (("dnsmasq", "dnsmasq-base"), ("nft", "nftables")) if shutil.which(t) is None}
        if missing:
            return Preflight("lxc-dhcp-nat", False, f"pveguard's network needs {', '.join(missing)}",
                             f"apt-get install {' '.join(missing.values())}")
        return Preflight("lxc-dhcp-nat", True, "dnsmasq (DHCP) and nft (NAT) found")

    def _check_subids(self) -> Preflight:
        uids, gids = parse_subid(_read_text(self._subuid)), parse_subid(_read_text(self._subgid))
        if uids and gids:
            return Preflight("subid-range", True, f"root has ids {uids.start}-{uids.start + uids.count - 1} "
                                                  f"for unprivileged containers")
        if shutil.which("newuidmap") is None:
            return Preflight("subid-range", True, "no newuidmap: LXC maps root's containers to 100000-165535")
        files = " ".join(str(f) for f, r in ((self._subuid, uids), (self._subgid, gids)) if r is None)
        return Preflight("subid-range", False, f"{files} give root no range of 65536 ids: containers would run "
                                               f"privileged", f"echo root:100000:65536 | tee -a {files}")

    @staticmethod
    def _check_cgroups() -> Preflight:
        fix = "boot with the unified cgroup v2 hierarchy (Debian 12's default; drop systemd.unified_cgroup_hierarchy=0)"
        try:
            layout = cgroups.detect_layout()
        except OSError as e:
            return Preflight("cgroups", False, f"cannot read the cgroup layout: {e.strerror}", fix)
        if layout.version == 2:
            return Preflight("cgroups", True, "cgroup v2 (unified): limits as lxc.cgroup2.*")
        missing = [c for c in ("memory", "cpu", "cpuset") if c not in layout.v1]
        if missing:
            return Preflight("cgroups", False, f"cgroup v1 without the {', '.join(missing)} controller: "
                                               f"limits cannot be enforced", fix)
        swap = "" if layout.memsw else "; no swap accounting, swap limits are not enforced"
        return Preflight("cgroups", True, f"cgroup v1: limits as lxc.cgroup.*{swap} (v2 is what PVE 8 uses)")

    # -- Backend verbs --

    def capabilities(self) -> Capabilities:
        f = self.facts
        notes = [f"cgroup v{f.layout.version}" + (" (hybrid: v1 controllers, cgroup2 without them)"
                                                   if f.layout.version == 1 and f.layout.v2 else "")
                 + ": limits are written as " + ("lxc.cgroup2.*" if f.layout.version == 2 else "lxc.cgroup.*")]
        if f.layout.version == 1 and not f.layout.memsw:
            notes.append("no swap accounting (memory.memsw.*): swap limits are recorded, not enforced")
        if f.unprivileged_ok:
            assert f.uid_range is not None
            notes.append(f"unprivileged containers map root to uid {f.uid_range.start}")
        else:
            notes.append("unprivileged containers are not available: /etc/subuid and /etc/subgid grant root no "
                         "range of 65536 ids, and LXC refuses id maps without one when newuidmap is "
                         "installed; containers run PRIVILEGED (unprivileged=0). Add 'root:100000:65536' "
                         "to both files, as PVE does, to enable them for new containers")
        if not f.lxcfs:
            notes.append("lxcfs is not mounted at /var/lib/lxcfs: limits apply, but free/top inside show the "
                         "host's memory and CPUs")
        if not f.apparmor:
            notes.append("AppArmor is not enabled: containers run without an AppArmor profile")
        mode: str = self.config.vlan_mode
        if mode == "auto":
            aware = sorted(p.name for p in lxc_net.SYS_NET.iterdir() if lxc_net.vlan_filtering(p.name))
            mode = "vlan_filtering" if aware else "bridge_per_vlan"
            notes.append(f"VLAN mode auto: tags ride on VLAN-aware bridges ({', '.join(aware)})" if aware else
                         "VLAN mode auto: no bridge here is VLAN-aware, so each tag gets its own bridge "
                         "<bridge>v<tag>")
        if not f.vlan_module:
            notes.append("no 8021q: per-VLAN bridges are host-local segments, not joined to an uplink")
        notes.append("firewall: nftables tables pveguard-iso-<bridge> on the host, per container interface "
                     "(docs/isolation.md)")
        return Capabilities(name=self.name, live_memory_update=True, live_cpu_update=True, vlan_mode=mode,
                            backups=False, notes=notes)

    def list_guests(self) -> list[Guest]:
        """Every container in lxcpath named by a VMID: one directory scan plus one lxc-ls call."""
        states = self._lxc_ls()
        guests = []
        for vmid in self._vmids():
            meta = self._read_meta(vmid) or {}
            if _stale_create(meta):
                continue  # a create that died half-way: not a guest; the next create clears it
            conf = meta.get("config", {})
            state, _ = states.get(str(vmid), ("STOPPED", None))
            name = conf.get("hostname") or _uts_name(self._dir(vmid) / "config") or str(vmid)
            tags = [t for t in str(conf.get("tags", "")).split(";") if t]
            managed = read_marker(str(conf.get("description", ""))) is not None
            maxdisk = rootfs_size_gib(conf["rootfs"]) * GIB if conf.get("rootfs") else 0
            lock = None if _stale_snapshot_lock(meta) else meta.get("lock")
            guests.append(Guest(vmid=vmid, name=name, node=self.node, type="lxc", status=_state(state), tags=tags,
                                managed=managed, maxmem=int(conf.get("memory", 0)) * MIB, maxdisk=maxdisk,
                                cpus=float(conf.get("cores", 0)), lock=lock))
        return guests

    def get_config(self, guest: Guest) -> dict[str, Any]:
        meta = self._read_meta(guest.vmid)
        if meta is None:
            if not (self._dir(guest.vmid) / "config").exists():
                raise BackendError(f"container {guest.vmid} does not exist in {self.lxcpath}")
            return {"hostname": _uts_name(self._dir(guest.vmid) / "config") or str(guest.vmid), "arch": "amd64"}
        conf = dict(meta["config"])
        conf["digest"] = hashlib.sha1(json.dumps(conf, sort_keys=True).encode()).hexdigest()
        if meta.get("lock"):
            conf["lock"] = meta["lock"]
        return conf

    def wait_unlocked(self, guest: Guest, what: str, progress: Any = None, timeout: float = 900
                      ) -> dict[str, Any]:
        """Wait while another process is still creating the container (its `lock: create`)."""
        start = time.monotonic()
        while True:
            meta = self._meta(guest.vmid)
            if not meta.get("lock"):
                return self.get_config(guest)
            if _stale_create(meta):
                raise BackendError(f"{what}: the creation of CT {guest.vmid} was interrupted",
                                   hint="run the command again: the next create clears the leftovers")
            if time.monotonic() - start > timeout:
                raise BackendError(f"{what}: CT {guest.vmid} is still locked ({meta['lock']}) after {timeout:.0f}s",
                                   hint="another pveguard process is creating it; wait for it, then run again")
            if callable(progress):
                progress(f"{what}: CT {guest.vmid} is locked ({meta['lock']}), waiting")
            time.sleep(1)

    def next_vmid(self) -> int:
        """The lowest VMID >= 100 without a container, a disk or a host veth of that number."""
        taken = set(self._vmids())
        if self.disk_dir.is_dir():
            taken |= {int(p.name) for p in self.disk_dir.iterdir() if p.name.isdigit()}
        vmid = next_free_vmid(taken)
        while lxc_net.exists(lxc_net.host_veth_name(vmid)):
            taken.add(vmid)
            vmid = next_free_vmid(taken)
        return vmid

    def create(self, spec: GuestSpec, progress: Any = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        say = progress if callable(progress) else (lambda _msg: None)
        _validate_spec(spec)
        facts = self.facts
        unpriv = spec.unprivileged and facts.unprivileged_ok
        # Before anything is made: a create that could never start is refused while nothing is left over.
        check_includes(config_includes({"unprivileged": int(unpriv)}, facts, self.lxc_config_dir))
        owned = self._owns_network(spec.net.bridge)
        if owned:
            lxc_gateway.segment_subnet(self.config.subnet, spec.net.vlan)  # the VLAN fits the pool
        elif not lxc_net.is_bridge(spec.net.bridge):
            raise BackendError(f"bridge {spec.net.bridge!r} does not exist on this host",
                               hint=f"create it (ip link add {spec.net.bridge} type bridge) or set network.bridge"
                                    f" (pveguard makes its own bridge only on hosts without PVE)")
        if spec.net.vlan is not None and self.config.vlan_mode == "vlan_filtering" \
                and not lxc_net.vlan_filtering(spec.net.bridge):
            raise BackendError(f"target.lxc.vlan_mode is vlan_filtering but bridge {spec.net.bridge} is not "
                               f"VLAN-aware", hint="set vlan_mode: auto (one bridge per VLAN) or enable "
                                                   "vlan_filtering on the bridge")
        self.lxcpath.mkdir(parents=True, exist_ok=True)
        self._clear_stale_creates()
        if unpriv:
            closed = [p for p in (self.lxcpath, *self.lxcpath.parents) if not p.stat().st_mode & 0o001]
            if closed:
                raise BackendError(f"unprivileged containers cannot reach {self.lxcpath}: {closed[0]} is not "
                                   f"searchable by other users", hint=f"chmod o+x {closed[0]}, or move lxcpath")
        vmid = self._claim_vmid(spec.vmid)
        meta: dict[str, Any] = {"version": 1, "lock": "create", "creator": _process_id(os.getpid()),
                                "template": spec.template,
                                "config": pve_config(spec, vmid, unpriv, spec.net.hwaddr or lxc_net.random_hwaddr())}
        try:
            if before_request:
                before_request(vmid, self.node)
            self._write_meta(vmid, meta)
            say(f"{vmid}: template {spec.template}")
            tarball = lxc_template.ensure(self.template_cache, spec.template, say)
            say(f"{vmid}: root disk {spec.disk_gib}G")
            self._make_disk(vmid, spec.disk_gib, tarball, unpriv)
            if spec.backup_volume is not None:
                say(f"{vmid}: data volume at {spec.backup_volume.mountpoint}")
                self._make_mp_dir(vmid, unpriv)
            meta["cpuset"] = self._choose_cpuset(vmid, spec.cores)
            self._write_lxc_config(vmid, meta)
            meta.pop("lock", None)
            self._write_meta(vmid, meta)
        except BaseException:
            self._remove_files(vmid)
            raise
        g = self._guest(vmid)
        g.name, g.status, g.managed, g.tags = spec.name, "stopped", True, meta["config"]["tags"].split(";")
        g.maxmem, g.maxdisk, g.cpus = spec.memory_mib * MIB, spec.disk_gib * GIB, float(spec.cores)
        return g

    def _clear_stale_creates(self) -> None:
        """Remove what creates killed half-way left behind (their process is gone), freeing the VMIDs."""
        for vmid in self._vmids():
            meta = self._read_meta(vmid)
            if meta is not None and _stale_create(meta):
                self._remove_files(vmid)

    def _claim_vmid(self, wanted: int | None) -> int:
        """Reserve a VMID by creating its directory (atomic, so parallel creates never share one)."""
        if wanted is not None:
            try:
                self._dir(wanted).mkdir()
            except FileExistsError:
                raise BackendError(f"VMID {wanted} is already in use in {self.lxcpath}",
                                   hint="choose another vmid, or leave it out to get the next free one") from None
            return wanted
        for _ in range(100):
            vmid = self.next_vmid()
            try:
                self._dir(vmid).mkdir()
                return vmid
            except FileExistsError:
                continue
        raise BackendError("could not reserve a free VMID after 100 attempts")

    def _make_disk(self, vmid: int, size_gib: int, tarball: Path, unpriv: bool) -> None:
        image = self._image(vmid)
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size_gib * GIB)  # sparse: only what is written takes space
        owner = []
        if unpriv:
            uid, gid = self._ids()
            owner = ["-E", f"root_owner={uid}:{gid}"]
        self._run(["mkfs.ext4", "-q", "-F", *owner, str(image)], what=f"format the root disk of {vmid}")
        with self._mounted(vmid) as root:
            # The tarball arrives on stdin and tar works in its cwd, so an id-mapped tar needs no
            # access to the host paths above the mount (a 0700 /tmp/... or /var/cache/...).
            argv = ["tar", "--numeric-owner", "--xattrs", "-xp", *_decompress_flag(tarball), "-f", "-", "-C", "."]
            if unpriv:
                # As PVE: unpack inside the container's id map, so files belong to the mapped ids.
                fu, fg = self.facts.uid_range, self.facts.gid_range
                assert fu is not None and fg is not None
                argv = ["lxc-usernsexec", "-m", f"u:0:{fu.start}:{fu.count}", "-m", f"g:0:{fg.start}:{fg.count}",
                        "--", *argv, "--exclude=./dev/*"]
            with open(tarball, "rb") as src:
                try:
                    proc = subprocess.run(argv, stdin=src, cwd=root, capture_output=True, timeout=900, check=False)
                except subprocess.TimeoutExpired:
                    raise BackendError(f"unpacking the template into {vmid}'s root disk took over 900s") from None
            if proc.returncode != 0:
                raise BackendError(f"unpacking the template into {vmid}'s root disk failed: "
                                   f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
            # '/' as on any Debian system: templates built in a mkdtemp directory carry its 0700, and
            # then no service user (nginx's www-data...) can reach a single file
            root.chmod(0o755)

    def _make_mp_dir(self, vmid: int, unpriv: bool) -> None:
        path = mp_dir(self._image(vmid))
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        if unpriv:
            os.chown(path, *self._ids())  # the container's root owns its data volume

    def _ids(self) -> tuple[int, int]:
        f = self.facts
        assert f.uid_range is not None and f.gid_range is not None
        return f.uid_range.start, f.gid_range.start

    def _wait_released(self, vmid: int) -> None:
        wait_image_released(self._image(vmid), f"container {vmid}")

    @contextlib.contextmanager
    def _mounted(self, vmid: int) -> Iterator[Path]:
        """The root disk mounted on a temporary host directory (loop device released on unmount)."""
        self._wait_released(vmid)
        mnt = Path(tempfile.mkdtemp(prefix=f".mnt-{vmid}-", dir=self.disk_dir))
        try:
            self._run(["mount", "-o", "loop,nosuid,nodev", str(self._image(vmid)), str(mnt)],
                      what=f"mount the root disk of {vmid}")
            try:
                yield mnt
            finally:
                proc = self._run(["umount", str(mnt)], what=f"unmount {mnt}", check=False)
                if proc.returncode != 0:
                    self._run(["umount", "-l", str(mnt)], what=f"unmount {mnt}", check=False)
        finally:
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def _write_guest_files(self, vmid: int, meta: dict[str, Any], root: Path) -> None:
        """hostname, hosts and the network config inside the root disk, as PVE writes them at start."""
        conf = meta["config"]
        net0 = lxc_net.parse_net0(str(conf.get("net0", "")))
        ip, gw = net0.get("ip", "dhcp"), net0.get("gw")
        owner = self._ids() if int(conf.get("unprivileged", 0)) and self.facts.unprivileged_ok else (0, 0)
        files = {"etc/hostname": conf["hostname"] + "\n",
                 "etc/hosts": lxc_net.render_hosts(conf["hostname"], ip),
                 "etc/network/interfaces": lxc_net.render_interfaces(ip, gw, net0.get("name", "eth0"))}
        for rel, text in files.items():
            _write_inside(root, rel, text.encode(), 0o644, owner)

    def _grow_disk(self, vmid: int, size_gib: int) -> None:
        image = self._image(vmid)
        if image.stat().st_size >= size_gib * GIB:
            return
        self._wait_released(vmid)
        with open(image, "r+b") as f:
            f.truncate(size_gib * GIB)
        fsck = self._run(["e2fsck", "-f", "-p", str(image)], what=f"check the root disk of {vmid}",
                         check=False, timeout=600)  # fmt: skip
        if fsck.returncode >= 4:  # 1 and 2 mean errors were fixed
            err = (fsck.stderr or fsck.stdout).decode(errors="replace").strip()[-500:]
            raise BackendError(f"checking the root disk of {vmid} before growing it failed: {err}",
                               hint=f"run e2fsck -f {image} by hand, then start the container again")
        self._run(["resize2fs", str(image)], what=f"grow the root disk of {vmid} to {size_gib}G", timeout=600)

    def start(self, guest: Guest) -> None:
        vmid = guest.vmid
        meta = self._meta(vmid)
        state, _ = self._status(vmid)
        if state == "running":
            return
        conf = meta["config"]
        self._ensure_network(conf)
        self.render_isolation(lxc_net.parse_net0(str(conf.get("net0", ""))).get("bridge", ""))
        if conf.get("rootfs"):
            self._grow_disk(vmid, rootfs_size_gib(conf["rootfs"]))
        with self._mounted(vmid) as root:
            self._write_guest_files(vmid, meta, root)
        self._write_lxc_config(vmid, meta)
        log = self._dir(vmid) / "start.log"
        log.unlink(missing_ok=True)
        proc = self._run(["lxc-start", "-P", str(self.lxcpath), "-n", str(vmid), "-o", str(log), "-l", "ERROR"],
                         what=f"start container {vmid}", check=False)
        if proc.returncode != 0:
            # LXC logs the cause first and a cascade of "failed to start" after it.
            detail = [line.split(" - ", 1)[-1] for line in _read_text(log).strip().splitlines()][:6]
            raise BackendError(f"container {vmid} failed to start:\n  " + "\n  ".join(detail or [
                proc.stderr.decode(errors="replace").strip()]),
                hint=f"run 'lxc-start -P {self.lxcpath} -n {vmid} -F' to see the full boot")
        self._run(["lxc-wait", "-P", str(self.lxcpath), "-n", str(vmid), "-s", "RUNNING", "-t", "30"],
                  what=f"wait for container {vmid} to run")
        self._wait_booted(vmid)

    def _wait_booted(self, vmid: int, timeout: float = 90) -> None:
        """Wait until systemd inside has finished booting, so exec right after start sees the network up.

        `is-system-running --wait` can return `starting` (or fail) while PID 1 is still setting up its
        bus, so it is asked again until it reports a settled state. A template without systemd
        (exit 127) or a timeout is not an error: the container runs, it is just still booting.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._run(["lxc-attach", "-P", str(self.lxcpath), "-n", str(vmid), "--clear-env", "--set-var",
                              f"PATH={PATH}", "--", "systemctl", "is-system-running", "--wait"],
                             what=f"wait for {vmid} to boot", timeout=max(1.0, deadline - time.monotonic()),
                             check=False)
            state = proc.stdout.decode(errors="replace").strip()
            if proc.returncode == 127 or state in ("running", "degraded", "maintenance", "stopping"):
                return
            time.sleep(0.2)

    def watch_stops(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """`lxc-monitor` on this lxcpath: every container that reaches STOPPED or ABORTING calls `wake`.

        Only a hint to sweep now: what is done is still decided from one listing. Ending it stops the
        lxc-monitor and, when it was this call that made LXC spawn the lxc-monitord of this lxcpath,
        asks that one to quit (one someone else started keeps serving them).
        """
        if shutil.which("lxc-monitor") is None:
            return None
        self.lxcpath.mkdir(parents=True, exist_ok=True)
        had_monitord = _monitord_running(self.lxcpath)
        proc = subprocess.Popen(["lxc-monitor", "-P", str(self.lxcpath), "-n", ".*"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # 'NAME' changed state to [STOPPED]
                if "[STOPPED]" in line or "[ABORTING]" in line:
                    wake()

        threading.Thread(target=read, name="lxc-monitor", daemon=True).start()

        def end() -> None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not had_monitord:
                subprocess.run(["lxc-monitor", "-P", str(self.lxcpath), "--quit"], capture_output=True, timeout=10,
                               check=False)
        return end

    def stop(self, guest: Guest) -> None:
        self._meta(guest.vmid)
        if self._status(guest.vmid)[0] != "running":
            return
        self._run(["lxc-stop", "-P", str(self.lxcpath), "-n", str(guest.vmid), "-k"],
                  what=f"stop container {guest.vmid}", timeout=60)

    def shutdown(self, guest: Guest, timeout: int = 60) -> None:
        self._meta(guest.vmid)
        if self._status(guest.vmid)[0] != "running":
            return
        proc = self._run(["lxc-stop", "-P", str(self.lxcpath), "-n", str(guest.vmid), "--nokill",
                          "-t", str(timeout)], what=f"shut down container {guest.vmid}", timeout=timeout + 30,
                         check=False)
        if proc.returncode != 0 and self._status(guest.vmid)[0] == "running":
            raise BackendError(f"container {guest.vmid} did not shut down within {timeout}s",
                               hint="stop it (hard stop), or give it more time")

    def destroy(self, guest: Guest) -> None:
        vmid = guest.vmid
        meta = self._meta(vmid)
        if self._status(vmid)[0] == "running":
            self._run(["lxc-stop", "-P", str(self.lxcpath), "-n", str(vmid), "-k"],
                      what=f"stop container {vmid}", timeout=60)
        self._remove_files(vmid)
        conf = meta.get("config", {})
        bridge = lxc_net.parse_net0(str(conf.get("net0", ""))).get("bridge", "")
        self.render_isolation(bridge)  # its policy went with its directory: its rules go too
        if lxc_gateway.owned(bridge):
            self._prune_network(bridge)
            return
        net = self._net_plan(conf)
        if net.mode == "bridge_per_vlan":
            lxc_net.remove_vlan_bridge_if_unused(net.link)

    # -- snapshots: a sparse copy of the root disk image plus the config, as PVE keeps them --
    #
    # `<disk_dir>/<vmid>/snapshots/<name>.raw` is the root disk as it was; the metadata keeps the config
    # under `snapshots.<name>` and `parent` like a PVE config. A running container is frozen (its cgroup,
    # lxc-freeze) and the host's filesystems synced while the image is copied, as PVE freezes a container
    # around its volume snapshots. The data volume (mp0) is a host directory, like a PVE bind mount: not
    # part of a snapshot (backups kept there survive a rollback).

    def _snap_image(self, vmid: int, name: str) -> Path:
        return self._image(vmid).parent / "snapshots" / f"{name}.raw"

    def _locked(self, vmid: int, lock: str) -> dict[str, Any]:
        """Take the container's lock for a snapshot operation. A snapshot lock whose process is gone
        (killed half-way) is taken over, and a container it left frozen is thawed first."""
        meta = self._meta(vmid)
        if meta.get("lock") and _stale_snapshot_lock(meta):
            self._run(["lxc-unfreeze", "-P", str(self.lxcpath), "-n", str(vmid)], what=f"thaw container {vmid}",
                      check=False)
        elif meta.get("lock"):
            raise BackendError(f"CT {vmid} is locked ({meta['lock']})",
                               hint="wait for the operation holding the lock to finish, then try again")
        meta["lock"] = lock
        meta["locker"] = _process_id(os.getpid())
        self._write_meta(vmid, meta)
        return meta

    def _unlock(self, vmid: int, meta: dict[str, Any]) -> None:
        meta.pop("lock", None)
        meta.pop("locker", None)
        self._write_meta(vmid, meta)

    def _copy_image(self, src: Path, dst: Path, what: str) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        try:
            self._run(["cp", "--sparse=always", "--reflink=auto", str(src), str(tmp)], what=what, timeout=1800)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def snapshots(self, guest: Guest) -> list[Snapshot]:
        snaps = self._meta(guest.vmid).get("snapshots", {})
        out = [Snapshot(n, int(s.get("snaptime", 0)), str(s.get("description", "")), s.get("parent"))
               for n, s in snaps.items()]
        return sorted(out, key=lambda s: (s.snaptime, s.name))

    def snapshot(self, guest: Guest, name: str, description: str = "") -> None:
        vmid = guest.vmid
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", name) or len(name) > 40 or name in ("current", "vzdump"):
            raise ConfigError(f"{name!r} is no valid snapshot name",
                              hint="a letter, then letters, digits or _ (at most 40); not current or vzdump")
        meta = self._locked(vmid, "snapshot")
        try:
            if name in meta.get("snapshots", {}):
                raise BackendError(f"snapshot name '{name}' already used")
            state, _ = self._status(vmid)
            frozen = False
            if state == "running":
                self._run(["lxc-freeze", "-P", str(self.lxcpath), "-n", str(vmid)], what=f"freeze container {vmid}")
                frozen = True
            try:
                os.sync()
                self._copy_image(self._image(vmid), self._snap_image(vmid, name), f"copy the root disk of {vmid}")
            finally:
                if frozen:
                    self._run(["lxc-unfreeze", "-P", str(self.lxcpath), "-n", str(vmid)],
                              what=f"thaw container {vmid}")
            snap: dict[str, Any] = {k: v for k, v in meta["config"].items() if k != "description"}
            if meta.get("parent"):
                snap["parent"] = meta["parent"]
            snap["snaptime"] = int(time.time())
            if description:
                snap["description"] = description
            meta.setdefault("snapshots", {})[name] = snap
            meta["parent"] = name
        finally:
            self._unlock(vmid, meta)

    def rollback(self, guest: Guest, name: str, *, start: bool) -> None:
        vmid = guest.vmid
        meta = self._meta(vmid)
        snap = meta.get("snapshots", {}).get(name)
        if snap is None or not self._snap_image(vmid, name).exists():
            raise BackendError(f"snapshot '{name}' does not exist")
        meta = self._locked(vmid, "rollback")
        try:
            if self._status(vmid)[0] == "running":
                self._run(["lxc-stop", "-P", str(self.lxcpath), "-n", str(vmid), "-k"],
                          what=f"stop container {vmid}", timeout=60)
            self._wait_released(vmid)
            self._copy_image(self._snap_image(vmid, name), self._image(vmid), f"restore the root disk of {vmid}")
            conf = {k: v for k, v in snap.items() if k not in ("snaptime", "description", "parent")}
            if meta["config"].get("description"):
                conf["description"] = meta["config"]["description"]
            meta["config"] = conf
            meta["parent"] = name
        finally:
            self._unlock(vmid, meta)
        if start:
            self.start(guest)

    def delete_snapshot(self, guest: Guest, name: str) -> None:
        vmid = guest.vmid
        if name not in self._meta(vmid).get("snapshots", {}):
            raise BackendError(f"snapshot '{name}' does not exist")
        meta = self._locked(vmid, "snapshot-delete")
        try:
            snap = meta["snapshots"][name]
            self._snap_image(vmid, name).unlink(missing_ok=True)
            new_parent = snap.get("parent")
            for holder in [meta, *(s for n, s in meta["snapshots"].items() if n != name)]:
                if holder.get("parent") == name:
                    if new_parent:
                        holder["parent"] = new_parent
                    else:
                        holder.pop("parent", None)
            del meta["snapshots"][name]
        finally:
            self._unlock(vmid, meta)

    def _remove_files(self, vmid: int) -> None:
        """Everything a container owns on the host: loop devices, temp mounts, disk, lxc directory."""
        image = self._image(vmid)
        if image.exists():
            for dev in loop_devices_of(image):
                for mp in _mountpoints_of(dev):
                    self._run(["umount", "-l", mp], what=f"unmount {mp}", check=False)
                self._run(["losetup", "-d", dev], what=f"detach {dev}", check=False)
        shutil.rmtree(image.parent, ignore_errors=True)
        shutil.rmtree(self._dir(vmid), ignore_errors=True)

    def update(self, guest: Guest, changes: dict[str, Any], delete: list[str] | None = None) -> list[str]:
        vmid = guest.vmid
        meta = self._meta(vmid)
        old = dict(meta["config"])
        new = dict(old)
        defaults: dict[str, Any] = {"cpulimit": 0, "onboot": 0, "tags": "", "description": "", "features": "",
                                    "startup": "", "cpuunits": 100, "swap": 0, "hard_limits": 1}
        for key in delete or []:
            if key not in defaults:
                raise ConfigError(f"cannot delete {key!r} from container {vmid}",
                                  hint=f"deletable keys: {', '.join(sorted(defaults))}")
            new.pop(key, None)
        changes = dict(changes)
        digest = changes.pop("digest", None)
        if digest is not None and digest != self.get_config(guest)["digest"]:
            raise BackendError(f"the configuration of container {vmid} changed since it was read",
                               hint="read it again (plan again) and retry")
        mp = changes.pop("mp0", None)
        if isinstance(mp, DataVolume):  # a new data volume
            unpriv = bool(int(old.get("unprivileged", 0))) and self.facts.unprivileged_ok
            self._make_mp_dir(vmid, unpriv)
            new["mp0"] = mp_string(mp.storage or str(old.get("rootfs", "local:")).split(":", 1)[0], vmid, mp)
        elif isinstance(mp, GrowTo):  # the planner grows the existing one
            if "mp0" not in old:
                raise ConfigError(f"container {vmid} has no mp0 to resize")
            current = rootfs_size_gib(str(old["mp0"]))
            if rootfs_size_gib(f"size={mp.size}") < current:
                raise BackendError(f"mp0 of {vmid} cannot shrink from {current}G to {mp.size}",
                                   hint="disks only grow")
            new["mp0"] = (",".join(p for p in str(old["mp0"]).split(",") if not p.startswith("size="))
                          + f",size={mp.size}")
        elif mp is not None:  # its whole configuration (e.g. backup=1 set on it)
            if "mp" not in parse_mp(str(mp)):
                raise ConfigError(f"mp0 of container {vmid}: {mp!r} names no mount point (mp=PATH)",
                                  hint="give the volume's whole configuration, or GrowTo(size) to grow it")
            new["mp0"] = str(mp)
        for key, value in changes.items():
            new[key] = _checked_value(key, value, old)
        for key in ("cpulimit", "onboot", "features", "startup", "tags"):
            if key in new and new[key] in (0, "", "0"):
                new.pop(key)
        if new.get("hard_limits") == 1:  # the default: not stored
            new.pop("hard_limits")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not changed:
            return []
        if "rootfs" in changed and rootfs_size_gib(new["rootfs"]) < rootfs_size_gib(old["rootfs"]):
            raise BackendError(f"rootfs of {vmid} cannot shrink from {rootfs_size_gib(old['rootfs'])}G to "
                               f"{rootfs_size_gib(new['rootfs'])}G", hint="disks only grow")
        state, pid = self._status(vmid)
        cpuset = meta.get("cpuset")
        if "cores" in changed:
            cpuset = self._choose_cpuset(vmid, int(new["cores"]))
        if state == "running" and pid is not None:
            self._apply_live(vmid, pid, limits_of(old, meta.get("cpuset")), limits_of(new, cpuset))
        grown_live = ("rootfs" in changed and state == "running" and pid is not None
                      and self._grow_disk_online(vmid, pid, rootfs_size_gib(new["rootfs"])))
        meta["config"], meta["cpuset"] = new, cpuset
        self._write_meta(vmid, meta)
        self._write_lxc_config(vmid, meta)
        if "net0" in changed:
            old_bridge = lxc_net.parse_net0(str(old.get("net0", ""))).get("bridge", "")
            self.render_isolation(old_bridge)  # the new bridge's table is rendered at the next start
        if state != "running":
            return []
        return [k for k in changed if k in RESTART_KEYS and not (k == "rootfs" and grown_live)]

    def _grow_disk_online(self, vmid: int, pid: int, size_gib: int) -> bool:
        """Grow a running container's root disk in place, as PVE's resize does for a raw image on dir
        storage: the image file is extended, the loop device LXC mounted it through re-reads its size
        (losetup -c), and ext4 grows mounted (the EXT4_IOC_RESIZE_FS ioctl resize2fs uses online, on
        the container's root seen through /proc/PID/root: the filesystem is mounted only in the
        container's mount namespace, where the host's resize2fs would not find it). False when this
        is not possible (not one loop device, not ext4, the kernel refuses online growth): the image
        is then left as it was and the disk grows at the next start (resize2fs, unmounted)."""
        image = self._image(vmid)
        size = size_gib * GIB
        if not image.exists():
            return False
        old_size = image.stat().st_size
        if old_size >= size:
            return True
        devices = loop_devices_of(image)
        if len(devices) != 1:
            return False
        fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _fs_type(Path(f"/proc/{pid}/mounts"), "/") != "ext4":
                return False
            block = os.fstatvfs(fd).f_frsize
            with open(image, "r+b") as f:
                f.truncate(size)  # sparse, as at creation
            self._run(["losetup", "-c", devices[0]], what=f"refresh the size of {devices[0]} ({vmid}'s disk)")
            try:
                fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("=Q", size // block))
            except OSError:
                # e.g. EPERM from a kernel that allows no online resize: nothing used the new blocks,
                # so the image goes back to its size and grows offline at the next start
                with open(image, "r+b") as f:
                    f.truncate(old_size)
                self._run(["losetup", "-c", devices[0]], what=f"refresh the size of {devices[0]}", check=False)
                return False
        finally:
            os.close(fd)
        return True

    def _apply_live(self, vmid: int, pid: int, old: cgroups.Limits, new: cgroups.Limits) -> None:
        layout = self.facts.layout
        paths = cgroups.container_paths(_read_text(Path(f"/proc/{pid}/cgroup")), str(vmid))
        for key, value in cgroups.live_writes(old, new, layout.version, memsw=layout.memsw or layout.version == 2):
            try:
                if key == "cpuset.cpus" and layout.version == 1:
                    _write_cpuset_tree(cgroups.file_path(layout, paths, key), value)
                else:
                    cgroups.write_setting(layout, paths, key, value)
            except OSError as e:
                raise BackendError(f"the kernel refused {key} = {value} for container {vmid}: {e.strerror or e}",
                                   hint="a memory limit below what the container uses now is refused; stop "
                                        "services inside first, or change it while the container is stopped"
                                   ) from None

    def cgroup_value(self, guest: Guest, key: str) -> str | None:
        """The live value of one cgroup file of a running container (e.g. memory.limit_in_bytes)."""
        state, pid = self._status(guest.vmid)
        if state != "running" or pid is None:
            return None
        paths = cgroups.container_paths(_read_text(Path(f"/proc/{pid}/cgroup")), str(guest.vmid))
        return cgroups.read_setting(self.facts.layout, paths, key)

    def _attach(self, vmid: int, argv: list[str], *, input: bytes | None, timeout: float
                ) -> subprocess.CompletedProcess[bytes]:
        if self._status(vmid)[0] != "running":
            raise BackendError(f"container {vmid} is not running", hint="start it first")
        cmd = ["lxc-attach", "-P", str(self.lxcpath), "-n", str(vmid), "--clear-env",
               "--set-var", f"PATH={PATH}", "--set-var", "LANG=C.UTF-8", "--set-var", "HOME=/root", "--", *argv]
        try:
            return subprocess.run(cmd, capture_output=True, input=input, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"'{' '.join(argv)}' in container {vmid} did not finish within {timeout:.0f}s"
                               ) from None

    def exec(self, guest: Guest, argv: list[str], *, input: str | None = None, timeout: float = 600) -> ExecResult:
        proc = self._attach(guest.vmid, argv, input=input.encode() if input is not None else None, timeout=timeout)
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def push(self, guest: Guest, local: str, remote: str, mode: int = 0o644) -> None:
        try:
            data = Path(local).read_bytes()
        except OSError as e:
            raise BackendError(f"cannot read {local}: {e.strerror}") from None
        if not remote.startswith("/"):
            raise ConfigError(f"the path inside the container must be absolute, not {remote!r}")
        vmid = guest.vmid
        meta = self._meta(vmid)
        if self._status(vmid)[0] == "running":
            proc = self._attach(vmid, ["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "sh", remote, f"{mode:o}"],
                                input=data, timeout=300)
            if proc.returncode != 0:
                raise BackendError(f"writing {remote} in container {vmid} failed: "
                                   f"{proc.stderr.decode(errors='replace').strip()}")
            return
        owner = self._ids() if int(meta["config"].get("unprivileged", 0)) and self.facts.unprivileged_ok else (0, 0)
        with self._mounted(vmid) as root:
            _write_inside(root, remote.lstrip("/"), data, mode, owner)

    def pull(self, guest: Guest, remote: str, local: str) -> None:
        vmid = guest.vmid
        self._meta(vmid)
        if self._status(vmid)[0] == "running":
            proc = self._attach(vmid, ["cat", "--", remote], input=None, timeout=300)
            if proc.returncode != 0:
                raise BackendError(f"reading {remote} in container {vmid} failed: "
                                   f"{proc.stderr.decode(errors='replace').strip()}")
            data = proc.stdout
        else:
            with self._mounted(vmid) as root:
                path = _inside(root, remote.lstrip("/"))
                if not path.is_file():
                    raise BackendError(f"{remote} does not exist in container {vmid}")
                data = path.read_bytes()
        Path(local).write_bytes(data)

    def stats(self) -> list[GuestStats]:
        """Usage of every container: one lxc-ls call, then cgroup, /proc and /sys reads."""
        states = self._lxc_ls()
        layout = self.facts.layout
        now = time.monotonic()
        ticks = os.sysconf("SC_CLK_TCK")
        uptime_host = float(_read_text(Path("/proc/uptime")).split()[0] or 0)
        out = []
        for vmid in self._vmids():
            meta = self._read_meta(vmid) or {}
            conf = meta.get("config", {})
            state, pid = states.get(str(vmid), ("STOPPED", None))
            cores = float(conf.get("cores", 0) or len(self.facts.cpus))
            cpulimit = float(conf.get("cpulimit", 0) or 0)
            cpus = min(cores, cpulimit) if cpulimit else cores
            name = conf.get("hostname") or _uts_name(self._dir(vmid) / "config") or str(vmid)
            s = GuestStats(vmid=vmid, name=name, node=self.node, status=_state(state),
                           cpus=cpus, maxmem=int(conf.get("memory", 0)) * MIB,
                           maxdisk=rootfs_size_gib(conf["rootfs"]) * GIB if conf.get("rootfs") else 0)
            if s.status == "running" and pid is not None:
                paths = cgroups.container_paths(_read_text(Path(f"/proc/{pid}/cgroup")), str(vmid))
                usage = cgroups.read_usage(layout, paths)
                s.mem, s.diskread, s.diskwrite = usage.mem, usage.diskread, usage.diskwrite
                stat = _read_text(Path(f"/proc/{pid}/stat")).rsplit(")", 1)[-1].split()
                started = int(stat[19]) / ticks if len(stat) > 19 else uptime_host
                s.uptime = max(0, int(uptime_host - started))
                prev = self._cpu_samples.get(vmid)
                if prev is not None and now > prev[0] and usage.cpu_ns >= prev[1]:
                    s.cpu = (usage.cpu_ns - prev[1]) / 1e9 / (now - prev[0]) / max(cpus, 1e-9)
                elif s.uptime > 0:
                    s.cpu = usage.cpu_ns / 1e9 / s.uptime / max(cpus, 1e-9)
                self._cpu_samples[vmid] = (now, usage.cpu_ns)
                s.cpu = min(1.0, max(0.0, s.cpu))
                with contextlib.suppress(OSError):
                    st = os.statvfs(f"/proc/{pid}/root")
                    s.disk = (st.f_blocks - st.f_bfree) * st.f_frsize
                rx, tx = lxc_net.counters(lxc_net.host_veth_name(vmid))
                s.netin, s.netout = tx, rx  # the host side's transmit is the guest's receive
            else:
                self._cpu_samples.pop(vmid, None)
            out.append(s)
        return out


def connect(strategy: Strategy, env: Any = None) -> LxcBackend:
    """The backend for a strategy (backends.connect calls this): its target and the bridges it uses."""
    bridges = [strategy.network.bridge, *(strategy.container_bridge(c) for c in strategy.containers)]
    return LxcBackend(strategy.target.lxc, bridges=bridges)


# --- helpers ------------------------------------------------------------------------------------


def _write_cpuset_tree(path: Path | None, value: str) -> None:
    """Set a v1 cpuset on a container's cgroup and its children (systemd's init.scope and others).

    v1 requires every child's CPUs to be a subset of its parent's at every moment: first every
    level (top down) gets the union of old and new, then every level (bottom up) the new set.
    """
    if path is None:
        raise OSError("no cpuset cgroup for this container")
    levels = sorted((p.parent for p in path.parent.rglob("cpuset.cpus")), key=lambda d: len(d.parts))
    union = cgroups.format_cpulist(cgroups.parse_cpulist(value) + cgroups.parse_cpulist(_read_text(path)))
    for d in levels:
        (d / "cpuset.cpus").write_text(union)
    for d in reversed(levels):
        (d / "cpuset.cpus").write_text(value)


def _process_id(pid: int) -> list[int]:
    """(pid, start time in ticks): names a process without mistaking a later one with the same pid."""
    fields = _read_text(Path(f"/proc/{pid}/stat")).rsplit(")", 1)[-1].split()
    return [pid, int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0]


def _stale_snapshot_lock(meta: dict[str, Any]) -> bool:
    """True for a snapshot, rollback or snapshot-delete lock whose process is gone."""
    if meta.get("lock") not in ("snapshot", "rollback", "snapshot-delete"):
        return False
    locker = meta.get("locker")
    if not isinstance(locker, list) or len(locker) != 2:
        return False
    return _process_id(int(locker[0])) != [int(locker[0]), int(locker[1])]


def _stale_create(meta: dict[str, Any]) -> bool:
    """True for a create whose process is gone (killed or crashed before it finished)."""
    if meta.get("lock") != "create":
        return False
    creator = meta.get("creator")
    if not isinstance(creator, list) or len(creator) != 2:
        return False
    return _process_id(int(creator[0])) != [int(creator[0]), int(creator[1])]


def _decompress_flag(tarball: Path) -> list[str]:
    for suffix, flag in ((".zst", "--zstd"), (".gz", "--gzip"), (".xz", "--xz")):
        if tarball.name.endswith(suffix):
            return [flag]
    return []


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _uts_name(config: Path) -> str | None:
    for line in _read_text(config).splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "lxc.uts.name":
            return value.strip()
    return None


# linux/ext4.h: _IOW('f', 16, __u64), the new block count
EXT4_IOC_RESIZE_FS = 0x40086610


def _fs_type(mounts: Path, mountpoint: str) -> str | None:
    """The filesystem type mounted on `mountpoint` in a mounts table (the last mount wins)."""
    found = None
    for line in _read_text(mounts).splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == mountpoint:
            found = parts[2]
    return found


def loop_devices_of(image: Path) -> list[str]:
    """The loop devices backed by `image` (`losetup -j`), e.g. ['/dev/loop3']."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False)
    return [line.split(":", 1)[0] for line in out.stdout.splitlines() if line]


def wait_image_released(image: Path, owner: str, timeout: float = 60) -> None:
    """Wait until no loop device holds a stopped container's root image any more.

    LXC's loop device is released only when the container's mount namespace goes away, which can be
    a moment after lxc-stop returns (always so for unprivileged containers). Checking, growing or
    mounting the image before then races the kernel: its final unmount writes back the superblock it
    had in memory, undoing e2fsck's marks (resize2fs then refuses), and a second mount would replay
    the journal under a live one.
    """
    deadline = time.monotonic() + timeout
    while True:
        holders = loop_devices_of(image)
        if not holders:
            return
        if time.monotonic() > deadline:
            raise BackendError(f"the root disk of {owner} is still held by {', '.join(holders)} "
                               f"{timeout:.0f}s after it stopped",
                               hint=f"find who holds it (losetup -a; grep {holders[0]} /proc/*/mountinfo), "
                                    f"release it (umount, losetup -d {holders[0]}), then try again")
        time.sleep(0.2)


def _mountpoints_of(device: str) -> list[str]:
    out = []
    for line in _read_text(Path("/proc/self/mounts")).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == device:
            out.append(parts[1])
    return out


def _inside(root: Path, rel: str) -> Path:
    """`rel` under a mounted container root, refusing symlinks that lead out of it."""
    path = root / rel
    parent = path.parent.resolve()
    if parent != root.resolve() and root.resolve() not in parent.parents:
        raise BackendError(f"/{rel} leads outside the container (symlinked directory); refusing to touch it")
    return parent / path.name


def _write_inside(root: Path, rel: str, data: bytes, mode: int, owner: tuple[int, int]) -> None:
    """Write a file into a mounted container root without following a symlink out of it."""
    path = _inside(root, rel)
    if not path.parent.is_dir():
        raise BackendError(f"/{Path(rel).parent} does not exist in the container")
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def _validate_spec(spec: GuestSpec) -> None:
    if not HOSTNAME_RE.match(spec.name):
        raise ConfigError(f"{spec.name!r} is not a valid hostname; use lower-case letters, digits and '-'")
    if spec.memory_mib < 16:
        raise ConfigError(f"memory {spec.memory_mib} MiB is below PVE's minimum of 16 MiB")
    if spec.cores < 1:
        raise ConfigError(f"cores must be at least 1, not {spec.cores}")
    if spec.disk_gib < 1:
        raise ConfigError(f"the root disk must be at least 1G, not {spec.disk_gib}G")
    if spec.vmid is not None and spec.vmid < FIRST_VMID:
        raise ConfigError(f"VMID {spec.vmid} is below {FIRST_VMID}")
    unknown = set(spec.features) - SUPPORTED_FEATURES
    if any(spec.features[k] for k in unknown):
        raise ConfigError(f"feature(s) {', '.join(sorted(unknown))} are not supported by the LXC backend",
                          hint=f"supported: {', '.join(sorted(SUPPORTED_FEATURES))}")
    lxc_net.validate_ip(spec.net.ip, spec.net.gateway)
    lxc_net.validate_bridge(spec.net.bridge)
    if spec.net.vlan is not None and not 1 <= spec.net.vlan <= 4094:
        raise ConfigError(f"VLAN tag {spec.net.vlan} is outside 1..4094")


def _checked_value(key: str, value: Any, old: dict[str, Any]) -> Any:
    """A config value from `update`, validated and in the type get_config returns."""
    ints = {"cores": 1, "memory": 16, "swap": 0, "cpuunits": 1, "onboot": 0}
    try:
        if key in ints:
            v = int(value)
            if v < ints[key]:
                raise ConfigError(f"{key} must be at least {ints[key]}, not {v}")
            return v
        if key == "hard_limits":
            if str(value) not in ("0", "1"):
                raise ConfigError(f"hard_limits must be 0 or 1, not {value!r}")
            return int(value)
        if key == "cpulimit":
            f = float(value)
            if not 0 <= f <= 8192:
                raise ConfigError(f"cpulimit must be between 0 and 8192, not {f}")
            return int(f) if f == int(f) else f
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, not {value!r}") from None
    if key == "unprivileged":
        if int(value) != int(old.get("unprivileged", 0)):
            raise BackendError("unprivileged cannot change on an existing container",
                               hint="create a new container and move the data")
        return old.get("unprivileged", 0)
    if key == "hostname":
        if not HOSTNAME_RE.match(str(value)):
            raise ConfigError(f"{value!r} is not a valid hostname")
        return str(value)
    if key == "net0":
        net = lxc_net.parse_net0(str(value))
        if not net.get("bridge"):
            raise ConfigError(f"net0 {value!r} has no bridge=")
        lxc_net.validate_bridge(net["bridge"])
        if net.get("tag") and not (net["tag"].isdigit() and 1 <= int(net["tag"]) <= 4094):
            raise ConfigError(f"net0 tag {net['tag']!r} is not a VLAN id (1..4094)")
        lxc_net.validate_ip(net.get("ip", "dhcp"), net.get("gw"))
        oldnet = lxc_net.parse_net0(str(old.get("net0", "")))
        for keep in ("name", "hwaddr", "type"):  # PVE keeps what the caller left out
            if keep not in net and keep in oldnet:
                net[keep] = oldnet[keep]
        return lxc_net.format_net0(net)
    if key == "rootfs":
        text = str(value).strip()
        if "," not in text and ":" not in text:  # just a size ("20G"), as the planner sends it
            volume = str(old.get("rootfs", "")).split(",", 1)[0]
            text = f"{volume},size={text}"
        rootfs_size_gib(text)
        return text
    if key == "features":
        feats = parse_features(str(value))
        bad = {k for k, v in feats.items() if v} - SUPPORTED_FEATURES
        if bad:
            raise ConfigError(f"feature(s) {', '.join(sorted(bad))} are not supported by the LXC backend")
        return format_features(feats)
    if key in ("tags", "description", "startup"):
        return str(value) if key != "description" or str(value).endswith("\n") else str(value) + "\n"
    raise ConfigError(f"the LXC backend cannot change {key!r}",
                      hint="changeable: cores, memory, swap, cpulimit, cpuunits, hard_limits, hostname, net0, rootfs, "
                           "features, onboot, startup, tags, description")
