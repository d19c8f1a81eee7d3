"""The emulated cluster: clock, nodes, storages and volumes, guests, tasks, and the resource index.

All mutation happens under `Sim.lock` (the HTTP layer takes it around every handler).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvesim.access import Access, Auth
from pvesim.schema import check_version, default_version
from pvesim.usage import STAT_INTERVAL, USAGE_KEYS, GuestConsts, guest_consts, node_usage, usage_at
from pvesim.versions import RELEASES

log = logging.getLogger("pvesim")

GiB = 1024**3
MiB = 1024**2

DEFAULT_TASK_SECONDS: dict[str, float] = {
    "vzcreate": 2.0,
    "vzrestore": 2.0,
    "vzstart": 1.0,
    "vzstop": 0.5,
    "vzshutdown": 1.0,
    "vzreboot": 1.5,
    "vzdestroy": 1.0,
    "vzmigrate": 2.0,
    "vzdump": 2.0,
    "download": 1.0,
    "qmstart": 1.0,
    "qmstop": 0.5,
    "qmshutdown": 1.0,
    "qmreboot": 1.5,
    "qmdestroy": 1.0,
    "hastart": 1.0,
    "hastop": 1.0,
    "hamigrate": 2.0,
    "imgdel": 0.2,
}

TEMPLATES = [
    ("debian-12-standard_12.7-1_amd64.tar.zst", "debian", "12.7-1", 126_000_000),
    ("ubuntu-24.04-standard_24.04-2_amd64.tar.zst", "ubuntu", "24.04-2", 141_000_000),
    ("alpine-3.20-default_20240908_amd64.tar.xz", "alpine", "3.20-0", 3_100_000),
]
APLINFO_EXTRA = [
    ("debian-11-standard_11.7-1_amd64.tar.zst", "debian", "11.7-1", 123_000_000),
    ("rockylinux-9-default_20240912_amd64.tar.xz", "centos", "9-0", 104_000_000),
    ("archlinux-base_20240911-1_amd64.tar.zst", "archlinux", "20240911-1", 187_000_000),
    ("ubuntu-22.04-standard_22.04-1_amd64.tar.zst", "ubuntu", "22.04-1", 129_000_000),
]


class ApiError(Exception):
    """An error answer: `500 msg` for handler dies, or any status (400 with errors, 403, 501, 595...)."""

    def __init__(
        self, status: int, message: str, errors: dict[str, str] | None = None, empty_body: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.empty_body = empty_body


def die(msg: str) -> ApiError:
    """PVE's `die "msg\\n"` inside a handler: 500 with the message."""
    return ApiError(500, msg)


def param_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.", errors)


class Clock:
    """Sim time: wall time at start + elapsed * time_scale + manual advances."""

    def __init__(self, time_scale: float = 1.0, start: float | None = None) -> None:
        self.time_scale = time_scale
        self._t0 = start if start is not None else time.time()
        self._m0 = time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return self._t0 + (time.monotonic() - self._m0) * self.time_scale + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def set_scale(self, scale: float) -> None:
        now = self.now()
        self._t0, self._m0, self.offset, self.time_scale = now, time.monotonic(), 0.0, scale


@dataclass
class Node:
    name: str
    index: int
    maxcpu: int
    maxmem: int
    maxdisk: int
    ip: str
    boot: float
    online: bool = True
    level: str = ""
    # HA node maintenance (ha-manager crm-command node-maintenance enable): the node's LRM runs in
    # maintenance mode and the CRM's node_status says "maintenance" (pve-ha-manager NodeStatus.pm), which
    # /cluster/resources shows as the node row's hastate (pve-manager PVE/API2/Cluster.pm)
    maintenance: bool = False


@dataclass
class Storage:
    storage: str
    type: str
    content: list[str]
    shared: int = 0
    path: str | None = None
    nodes: list[str] | None = None
    prune_backups: str | None = None
    maxdisk: int = 100 * GiB
    disable: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "storage": self.storage,
            "type": self.type,
            "content": ",".join(self.content),
            "digest": hashlib.sha1(repr(self.__dict__).encode()).hexdigest(),
        }
        if self.path:
            d["path"] = self.path
        if self.shared:
            d["shared"] = 1
        if self.nodes:
            d["nodes"] = ",".join(self.nodes)
        if self.prune_backups:
            d["prune-backups"] = self.prune_backups
        if self.disable:
            d["disable"] = 1
        d.update(self.extra)
        return d


@dataclass
class Volume:
    volid: str
    content: str
    format: str
    size: int
    ctime: int
    vmid: int | None = None
    notes: str = ""
    protected: int = 0
    subtype: str | None = None
    guest_config: dict[str, Any] | None = None  # backups: the guest config they were made from

    def entry(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "volid": self.volid,
            "content": self.content,
            "format": self.format,
            "size": self.size,
            "ctime": self.ctime,
        }
        if self.vmid is not None:
            d["vmid"] = self.vmid
        if self.content in ("images", "rootdir"):
            d["used"] = self.size // 3
        if self.content == "backup":
            if self.subtype:
                d["subtype"] = self.subtype
            if self.notes:
                d["notes"] = self.notes.split("\n", 1)[0]
            if self.protected:
                d["protected"] = 1
        return d


@dataclass
class Guest:
    vmid: int
    type: str  # lxc | qemu
    node: str
    config: dict[str, Any]
    status: str = "stopped"
    started_at: float = 0.0
    crashes: int = 0  # how often it crashed (control API), for tests and benchmarks
    pending: dict[str, Any] = field(default_factory=dict)
    pending_delete: list[str] = field(default_factory=list)
    override: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: float = 0.0
    version: int = 0
    _digest: str | None = None
    _static: tuple[Any, ...] | None = None
    _fast: tuple[Any, ...] | None = None

    def touch(self) -> None:
        self.version += 1
        self._digest = None

    @property
    def name(self) -> str:
        key = "hostname" if self.type == "lxc" else "name"
        return str(self.config.get(key) or (f"CT{self.vmid}" if self.type == "lxc" else f"VM{self.vmid}"))

    def config_text(self) -> str:
        """The raw config file (what PVE hashes for `digest`)."""
        lines: list[str] = []
        desc = self.config.get("description")
        if desc:
            lines += ["#" + line for line in str(desc).split("\n")]
        for k in sorted(self.config):
            if k != "description":
                lines.append(f"{k}: {_text(self.config[k])}")
        if self.pending or self.pending_delete:
            lines.append("")
            lines.append("[pve:pending]")
            for k in sorted(self.pending):
                lines.append(f"{k}: {_text(self.pending[k])}")
            if self.pending_delete:
                lines.append("delete: " + ",".join(self.pending_delete))
        for sname in sorted(self.snapshots):
            lines.append("")
            lines.append(f"[{sname}]")
            for k in sorted(self.snapshots[sname]):
                lines.append(f"{k}: {_text(self.snapshots[sname][k])}")
        return "\n".join(lines) + "\n"

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = hashlib.sha1(self.config_text().encode()).hexdigest()
        return self._digest

    def config_view(self, current: bool) -> dict[str, Any]:
        """The config as GET .../config answers: with pending changes applied unless `current`."""
        cfg = dict(self.config)
        if not current:
            for k in self.pending_delete:
                cfg.pop(k, None)
            cfg.update(self.pending)
        cfg["digest"] = self.digest
        return cfg

    def maxmem(self) -> int:
        mem = self.config.get("memory", 512 if self.type == "lxc" else 2048)
        m = re.match(r"(?:current=)?(\d+)", str(mem))
        return int(m.group(1)) * MiB if m else 512 * MiB

    def maxdisk(self) -> int:
        key = "rootfs" if self.type == "lxc" else _boot_disk(self.config)
        val = str(self.config.get(key or "", ""))
        m = re.search(r"size=(\d+(?:\.\d+)?)([KMGT]?)", val)
        if not m:
            return 4 * GiB if self.type == "lxc" else 0
        mult = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}[m.group(2)]
        return int(float(m.group(1)) * mult)

    def cpus(self, node_cpus: int) -> int | float:
        """maxcpu/cpus: cores (x sockets) or cpulimit; all node CPUs for an unlimited CT."""
        if self.type == "qemu":
            return int(self.config.get("cores", 1)) * int(self.config.get("sockets", 1))
        limit = self.config.get("cpulimit")
        if limit:
            f = float(limit)
            return int(f) if f.is_integer() else f
        return int(self.config.get("cores") or node_cpus)


def _boot_disk(cfg: dict[str, Any]) -> str | None:
    for k in ("scsi0", "virtio0", "sata0", "ide0"):
        if k in cfg:
            return k
    return None


def _text(v: Any) -> str:
    return str(v)


@dataclass(order=True)
class Task:
    end: float
    upid: str = field(compare=False)
    node: str = field(compare=False)
    pid: int = field(compare=False)
    pstart: int = field(compare=False)
    starttime: int = field(compare=False)
    type: str = field(compare=False)
    id: str = field(compare=False)
    user: str = field(compare=False)
    tokenid: str | None = field(compare=False, default=None)
    log: list[str] = field(compare=False, default_factory=list)
    work: Callable[[], list[str] | None] | None = field(compare=False, default=None)
    on_error: Callable[[str], str] | None = field(compare=False, default=None)
    forced_error: str | None = field(compare=False, default=None)
    status: str = field(compare=False, default="running")
    exitstatus: str | None = field(compare=False, default=None)
    endtime: int | None = field(compare=False, default=None)

    def status_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "upid": self.upid,
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.type,
            "id": self.id,
            "user": self.user,
            "status": self.status,
        }
        if self.tokenid:
            d["tokenid"] = self.tokenid
        if self.exitstatus is not None:
            d["exitstatus"] = self.exitstatus
        return d


class TaskError(Exception):
    """Raised by task work functions: the task ends with `TASK ERROR: <msg>` (after `lines`)."""

    def __init__(self, msg: str, lines: list[str] | None = None) -> None:
        super().__init__(msg)
        self.lines = lines or []


def ha_service_state(resource: dict[str, Any]) -> str:
    """A guest's hastate: the CRM's service state for a resource it manages (pve-manager Cluster.pm reads
    service_status first), which the instantly converging sim has already reached: "started" for a
    requested started/enabled, "stopped" for stopped/disabled; an ignored resource has no service
    status, so the configured "ignored" shows (pve-ha-manager Manager.pm, Config.pm)."""
    req = str(resource.get("state") or "started")
    if req in ("started", "enabled"):
        return "started"
    if req in ("stopped", "disabled"):
        return "stopped"
    return req


@dataclass
class SimOptions:
    """Options of one emulator instance (CLI flags and `pvesim.running(**opts)`)."""

    nodes: int = 3
    guests: int = 0
    seed: int = 0
    time_scale: float = 1.0
    password: str | None = None
    token_secret: str | None = None
    cluster_name: str = "pvesim"
    task_seconds: dict[str, float] = field(default_factory=dict)
    qemu_share: float = 0.2
    running_share: float = 0.85
    auth_fail_delay: float = 0.0
    status_lag: float = 0.0  # seconds a new guest shows status "unknown" in /cluster/resources (PVE: ~10)
    pve_version: str = field(default_factory=default_version)  # "8.4" or "9.1" ($PVESIM_PVE_VERSION)
    latency: float = 0.0  # milliseconds every API request waits before it is answered (a LAN ~1-5, a WAN ~20+)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.guests < 0 or self.time_scale <= 0 or self.latency < 0:
            raise ValueError("pvesim needs nodes >= 1, guests >= 0, time_scale > 0 and latency >= 0")
        check_version(self.pve_version)


class Sim:
    """The whole emulated cluster."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.lock = threading.RLock()
        self.rng = random.Random(opts.seed)
        self.seed = opts.seed
        self.clock = Clock(opts.time_scale)
        self.version = 0
        self.password = opts.password or uuid.UUID(int=self.rng.getrandbits(128)).hex[:20]
        self.access = Access(self.password, secret=uuid.UUID(int=self.rng.getrandbits(128)).bytes + uuid.uuid4().bytes)
        token = self.access.add_token(
            "root@pam",
            "pvesim",
            privsep=0,
            comment="pvesim",
            secret=opts.token_secret or str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
        )
        self.token = f"root@pam!pvesim={token.secret}"
        self.task_seconds = {**DEFAULT_TASK_SECONDS, **opts.task_seconds}
        self.default_task_seconds = 1.0
        self.nodes: dict[str, Node] = {}
        now = self.clock.now()
        for i in range(opts.nodes):
            name = f"pve{i + 1}"
            self.nodes[name] = Node(
                name,
                i + 1,
                maxcpu=16 if i % 2 == 0 else 32,
                maxmem=(64 if i % 2 == 0 else 128) * GiB,
                maxdisk=100 * GiB,
                # loopback addresses: a client that reaches for a node (ssh for pct exec) stays on this
                # machine, where tests may run nothing but loopback traffic
                ip=f"127.0.2.{11 + i}",
                boot=now - 86400 * (3 + i),
            )
        self.storages: dict[str, Storage] = {
            "local": Storage(
                "local",
                "dir",
                ["backup", "iso", "vztmpl"],
                path="/var/lib/vz",
                prune_backups="keep-all=1",
                maxdisk=100 * GiB,
            ),
            "local-lvm": Storage(
                "local-lvm",
                "lvmthin",
                ["images", "rootdir"],
                maxdisk=800 * GiB,
                extra={"thinpool": "data", "vgname": "pve"},
            ),
        }
        self.volumes: dict[tuple[str, str], dict[str, Volume]] = {}
        self.guests: dict[int, Guest] = {}
        self.tasks: dict[str, Task] = {}
        self.task_order: list[Task] = []
        self._heap: list[Task] = []
        self._pid = 1000 + self.rng.randrange(100000)
        self.pools: dict[str, dict[str, Any]] = {}
        self.backup_jobs: dict[str, dict[str, Any]] = {}
        self.ha_resources: dict[str, dict[str, Any]] = {}
        self.ha_groups: dict[str, dict[str, Any]] = {}
        # the HA manager (CRM) has run and written its manager status: it becomes active once a resource
        # is configured or a node maintenance is requested (pve-ha-manager CRM.pm can_get_active), and its
        # status file stays after that; only then do node rows carry a hastate
        self.ha_manager = False
        self.fw_cluster: dict[str, Any] = _new_firewall()
        self.fw_groups: dict[str, dict[str, Any]] = {}
        self.fw_guest: dict[int, dict[str, Any]] = {}
        self.fw_log: dict[str, list[str]] = {}  # node -> /var/log/pve-firewall.log lines (handlers/firewall.py)
        self.notif_endpoints: dict[str, dict[str, dict[str, Any]]] = {
            "sendmail": {
                "mail-to-root": {
                    "name": "mail-to-root",
                    "mailto-user": ["root@pam"],
                    "comment": "Send mails to root@pam's email address",
                    "origin": "builtin",
                }
            },
            "gotify": {},
            "smtp": {},
            "webhook": {},
        }
        self.notif_matchers: dict[str, dict[str, Any]] = {
            "default-matcher": {
                "name": "default-matcher",
                "target": ["mail-to-root"],
                "comment": "Route all notifications to mail-to-root",
                "origin": "builtin",
            }
        }
        self.notifications_sent: list[dict[str, Any]] = []
        self.datacenter: dict[str, Any] = {"keyboard": "en-us"}
        from pvesim.certstore import CertStore

        self.certs = CertStore(self.now)  # node certificates, node configs, ACME
        # control-API state
        self.faults: list[dict[str, Any]] = []
        self.task_faults: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        self.calls_total = 0
        self.pct_log: list[dict[str, Any]] = []
        self.pct_scripts: list[dict[str, Any]] = []
        self.pct_default_exit = 0
        self.release = RELEASES[opts.pve_version]
        self.pve_major = self.release.major
        self.pct_version: tuple[int, ...] = self.release.pct_version  # pve-container of the emulated release
        self.pct_keep_env_default = True
        self.guest_packages: dict[int, dict[str, str]] = {}
        self.guest_files: dict[int, dict[str, bytes]] = {}
        # mode of each pushed file (pct push --perms, default 0644 as pct's file_set_contents)
        self.guest_file_modes: dict[int, dict[str, int]] = {}
        # what apt inside a guest could upgrade to: {vmid: {pkg: {"version", "origin", "postinst_fails"}}}
        self.guest_upgrades: dict[int, dict[str, dict[str, Any]]] = {}
        self.unavailable_packages: set[str] = set()
        # scheduled crashes (control API): {"vmid", "at", "every" (None: once), "left" (None: forever)}
        self.crashes: list[dict[str, Any]] = []
        self._res_bytes: dict[Any, bytes] = {}
        self.state_file: str | None = None
        self._consts: dict[int, GuestConsts] = {}
        for name in self.nodes:
            for tmpl, _os, _ver, size in TEMPLATES:
                self.add_volume(
                    name,
                    "local",
                    Volume(f"local:vztmpl/{tmpl}", "vztmpl", _tmpl_format(tmpl), size, int(now) - 86400 * 30),
                )
        if opts.guests:
            self._populate(opts.guests, now)

    # -- bookkeeping --------------------------------------------------------------------------
    def changed(self) -> None:
        self.version += 1
        self._res_bytes.clear()

    def now(self) -> float:
        return self.clock.now()

    def quorate(self) -> bool:
        """More than half of the nodes online (corosync votes, one each)."""
        return sum(1 for n in self.nodes.values() if n.online) * 2 > len(self.nodes)

    def new_pid(self) -> int:
        self._pid += self.rng.randrange(1, 50)
        return self._pid

    # -- storage ------------------------------------------------------------------------------
    def storage_key(self, node: str, storage: str) -> tuple[str, str]:
        st = self.storages.get(storage)
        return ("", storage) if st is not None and st.shared else (node, storage)

    def storage_volumes(self, node: str, storage: str) -> dict[str, Volume]:
        return self.volumes.setdefault(self.storage_key(node, storage), {})

    def add_volume(self, node: str, storage: str, vol: Volume) -> None:
        self.storage_volumes(node, storage)[vol.volid] = vol
        self.changed()

    def storage_used(self, node: str, storage: str) -> int:
        return sum(v.size for v in self.storage_volumes(node, storage).values())

    def storage_enabled_on(self, storage: str, node: str) -> bool:
        st = self.storages.get(storage)
        return st is not None and not st.disable and (not st.nodes or node in st.nodes)

    def alloc_disk(self, node: str, storage: str, vmid: int, size_gib: float, content: str = "rootdir") -> str:
        """Allocate vm-<vmid>-disk-N (subvol- on zfspool); returns the volid."""
        st = self.storages[storage]
        prefix = "subvol" if st.type in ("zfspool",) and content == "rootdir" else "vm"
        vols = self.storage_volumes(node, storage)
        n = 0
        while f"{storage}:{prefix}-{vmid}-disk-{n}" in vols:
            n += 1
        volid = f"{storage}:{prefix}-{vmid}-disk-{n}"
        fmt = "raw" if st.type in ("lvmthin", "lvm", "rbd") else ("subvol" if prefix == "subvol" else "raw")
        self.add_volume(
            node,
            storage,
            Volume(
                volid,
                content if st.type != "dir" else "images",
                fmt,
                int(size_gib * GiB),
                int(self.now()),
                vmid,
            ),
        )
        return volid

    # -- tasks --------------------------------------------------------------------------------
    def new_task(
        self,
        node: str,
        ttype: str,
        tid: str,
        auth: Auth,
        *,
        work: Callable[[], list[str] | None] | None = None,
        on_error: Callable[[str], str] | None = None,
        log: list[str] | None = None,
        seconds: float | None = None,
        error: str | None = None,
    ) -> str:
        """Start a worker task; `work` runs when it ends (raise TaskError to fail it). Returns the UPID."""
        now = self.now()
        pid = self.new_pid()
        nd = self.nodes.get(node)
        pstart = int((now - (nd.boot if nd else now - 1000)) * 100) & 0xFFFFFFFF
        start = int(now)
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{start:08X}:{ttype}:{tid}:{auth.authid}:"
        dur = seconds if seconds is not None else self.task_seconds.get(ttype, self.default_task_seconds)
        for f in self.task_faults:
            if re.search(f.get("type", ".*"), ttype) and re.search(f.get("id", ".*"), tid):
                error = f.get("error", "simulated task failure")
                if f.get("times") is not None:
                    f["times"] -= 1
                if f.get("seconds") is not None:
                    dur = float(f["seconds"])
                break
        self.task_faults = [f for f in self.task_faults if f.get("times") is None or f["times"] > 0]
        t = Task(
            now + dur,
            upid,
            node,
            pid,
            pstart,
            start,
            ttype,
            tid,
            auth.userid,
            auth.tokenid,
            list(log or []),
            work,
            on_error,
            error,
        )
        self.tasks[upid] = t
        self.task_order.append(t)
        heapq.heappush(self._heap, t)
        if dur <= 0:
            self.tick()
        self.changed()
        return upid

    def tick(self) -> None:
        """Finish every task whose end time has passed (their effects apply in end-time order)."""
        if self.crashes:
            self._crash_due()
        if not self._heap:
            return
        now = self.now()
        while self._heap and self._heap[0].end <= now:
            t = heapq.heappop(self._heap)
            self._finish(t)

    def _finish(self, t: Task) -> None:
        err = t.forced_error
        if err is None and t.work is not None:
            try:
                more = t.work()
                if more:
                    t.log.extend(more)
            except TaskError as e:
                t.log.extend(e.lines)
                err = str(e)
            except Exception as e:  # a bug in a work function fails its task, not the request that ticked
                log.exception("task %s failed unexpectedly", t.upid)
                err = f"pvesim internal error: {e}"
        if err is not None and t.on_error is not None:
            err = t.on_error(err)
        warnings = sum(1 for line in t.log if line.startswith("WARN:"))
        if err is not None:
            t.log.append(f"TASK ERROR: {err}")
            t.exitstatus = err
        elif warnings:
            t.log.append(f"TASK WARNINGS: {warnings}")
            t.exitstatus = f"WARNINGS: {warnings}"
        else:
            t.log.append("TASK OK")
            t.exitstatus = "OK"
        t.status = "stopped"
        t.endtime = int(max(t.end, t.starttime))
        self.changed()

    def finish_all(self) -> None:
        """Complete all running tasks now (control API)."""
        while self._heap:
            self._finish(heapq.heappop(self._heap))

    def running_tasks_for(self, vmid: int) -> list[Task]:
        return [t for t in self._heap if t.id == str(vmid)]

    # -- guests -------------------------------------------------------------------------------
    def consts(self, vmid: int) -> GuestConsts:
        c = self._consts.get(vmid)
        if c is None:
            c = self._consts[vmid] = guest_consts(self.seed, vmid)
        return c

    def _usage_tuple(self, g: Guest, node: Node | None) -> tuple[Any, ...]:
        if g.status != "running":
            u: tuple[Any, ...] = (0, 0, 0, 0, 0, 0, 0, 0)
        else:
            u = usage_at(
                self.consts(g.vmid),
                g.vmid,
                g.maxmem(),
                g.maxdisk(),
                g.cpus(node.maxcpu if node else 1),
                self.now(),
                g.started_at,
            )
        if g.override:
            lst = list(u)
            for i, k in enumerate(USAGE_KEYS):
                if k in g.override and (g.status == "running" or k == "disk"):
                    lst[i] = g.override[k]
            u = tuple(lst)
        return u

    def guest_usage(self, g: Guest) -> dict[str, Any]:
        """Current cpu/mem/disk/net/io/uptime (zeros when stopped), with control-API overrides."""
        return dict(zip(USAGE_KEYS, self._usage_tuple(g, self.nodes.get(g.node)), strict=True))

    def resource_json(self, g: Guest, bucket: int, now: float | None = None) -> tuple[bytes, float, int]:
        """The guest's /cluster/resources entry as JSON bytes, plus (cpu x maxcpu, mem) for node totals.

        Cached per stat interval and guest version; the static part is encoded once per version.
        """
        node = self.nodes.get(g.node)
        # "online" here means pvestatd has data: node up and (with --status-lag) the guest old enough
        online = node is not None and node.online
        lag = self.opts.status_lag
        if lag and online and (now if now is not None else self.now()) - g.created_at < lag:
            online = False
        fast = g._fast
        if fast is not None and fast[0] == bucket and fast[1] == g.version and fast[2] == online:
            return fast[3], fast[4], fast[5]
        static = g._static
        if static is None or static[0] != g.version or static[1] != online:
            head = {
                "id": f"{g.type}/{g.vmid}",
                "type": g.type,
                "vmid": g.vmid,
                "node": g.node,
                "status": g.status if online else "unknown",
                "name": g.name,
                "template": int(bool(g.config.get("template"))),
            }
            tail: dict[str, Any] = {}
            pool = self.access.pool_of.get(g.vmid)
            if pool:
                tail["pool"] = pool
            if g.config.get("lock"):
                tail["lock"] = g.config["lock"]
            if g.config.get("tags"):
                tail["tags"] = g.config["tags"]
            ha = self.ha_resources.get(f"ct:{g.vmid}" if g.type == "lxc" else f"vm:{g.vmid}")
            if ha:
                tail["hastate"] = ha_service_state(ha)
            pre = json.dumps(head, separators=(",", ":")).encode()[:-1] + b","
            post = (b"," + json.dumps(tail, separators=(",", ":")).encode()[1:]) if tail else b"}"
            cpus = g.cpus(node.maxcpu if node else 1)
            static = (g.version, online, pre, post, g.maxmem(), g.maxdisk(), cpus)
            g._static = static
        _v, _o, pre, post, maxmem, maxdisk, cpus = static
        u: tuple[Any, ...]
        if not online:
            u = (0, 0, 0, 0, 0, 0, 0, 0)
        elif g.status != "running":
            u = (0, 0, g.override.get("disk", 0), 0, 0, 0, 0, 0)
        else:
            u = usage_at(
                self.consts(g.vmid),
                g.vmid,
                maxmem,
                maxdisk,
                cpus,
                self.now() if now is None else now,
                g.started_at,
            )
            if g.override:
                lst = list(u)
                for i, k in enumerate(USAGE_KEYS):
                    if k in g.override:
                        lst[i] = g.override[k]
                u = tuple(lst)
        cpu, mem, disk, netin, netout, dread, dwrite, up = u
        body = (
            pre
            + (
                b'"uptime":%d,"maxcpu":%s,"cpu":%s,"maxmem":%d,"mem":%d,"maxdisk":%d,"disk":%d,"netin":%d,'
                b'"netout":%d,"diskread":%d,"diskwrite":%d'
                % (
                    up,
                    repr(cpus).encode(),
                    repr(cpu).encode(),
                    maxmem,
                    mem,
                    maxdisk,
                    disk,
                    netin,
                    netout,
                    dread,
                    dwrite,
                )
            )
            + post
        )
        weight = float(cpu) * float(cpus)
        g._fast = (bucket, g.version, online, body, weight, int(mem))
        return body, weight, int(mem)

    def refresh_stats(self) -> int:
        """Precompute every guest's resource entry for the current stat interval (what pvestatd does
        every 10 s on a real node, so /cluster/resources reads a warm cache). Returns the interval."""
        now = self.now()
        bucket = int(now) // STAT_INTERVAL
        for g in list(self.guests.values()):
            self.resource_json(g, bucket, now)
        return bucket

    def resource_entry(self, g: Guest) -> dict[str, Any]:
        """The /cluster/resources entry of a guest as a dict."""
        body, _w, _m = self.resource_json(g, int(self.now()) // STAT_INTERVAL)
        result: dict[str, Any] = json.loads(body)
        return result

    def guest_status(self, g: Guest, with_ha: bool = True) -> dict[str, Any]:
        """status/current (and the per-node guest list entries)."""
        node = self.nodes.get(g.node)
        u = self.guest_usage(g)
        d: dict[str, Any] = {
            "vmid": g.vmid,
            "type": g.type,
            "status": g.status,
            "name": g.name,
            "cpus": g.cpus(node.maxcpu if node else 1),
            "cpu": u["cpu"],
            "mem": u["mem"],
            "maxmem": g.maxmem(),
            "disk": u["disk"],
            "maxdisk": g.maxdisk(),
            "netin": u["netin"],
            "netout": u["netout"],
            "diskread": u["diskread"],
            "diskwrite": u["diskwrite"],
            "uptime": u["uptime"],
        }
        if g.type == "lxc":
            d["swap"] = 0
            d["maxswap"] = int(g.config.get("swap", 512)) * MiB
        if g.status == "running":
            d["pid"] = 100000 + g.vmid
        if g.config.get("tags"):
            d["tags"] = g.config["tags"]
        if g.config.get("template"):
            d["template"] = 1
        if g.config.get("lock"):
            d["lock"] = g.config["lock"]
        if with_ha:
            sid = f"ct:{g.vmid}" if g.type == "lxc" else f"vm:{g.vmid}"
            ha = self.ha_resources.get(sid)
            # PVE::HA::Config::get_service_status: an ignored resource counts as not managed; the state is
            # the CRM's service state, not the requested one; the group only up to PVE 8 (pve-ha-manager
            # 86c4db1 "config: remove groups field from service status data", 5.0.x)
            d["ha"] = (
                {"managed": 1, "state": ha_service_state(ha)}
                if ha and ha.get("state", "started") != "ignored" else {"managed": 0}
            )
            if d["ha"]["managed"] and self.pve_major < 9 and ha and ha.get("group"):
                d["ha"]["group"] = ha["group"]
        if g.type == "qemu":
            d["qmpstatus"] = g.status
        return d

    def crash(self, g: Guest) -> None:
        """A container whose init died: lxc stops it and pve-container's poststop hook runs as on any
        stop (src/lxc-pve-poststop-hook: cleanup, pending changes applied); no task, no lock. The API
        then simply shows it `stopped`."""
        if g.status == "running":
            self.set_running(g, False)
            g.crashes += 1

    def _crash_due(self) -> None:
        now = self.now()
        keep: list[dict[str, Any]] = []
        for c in self.crashes:
            g = self.guests.get(int(c["vmid"]))
            if g is None:
                continue  # destroyed: the schedule goes with it
            while c["at"] <= now and c["left"] != 0:
                self.crash(g)
                c["left"] = None if c["left"] is None else c["left"] - 1
                if not c["every"]:
                    c["left"] = 0
                    break
                c["at"] += float(c["every"])
            if c["left"] != 0:
                keep.append(c)
        self.crashes = keep

    def set_running(self, g: Guest, running: bool) -> None:
        g.status = "running" if running else "stopped"
        g.started_at = self.now() if running else 0.0
        if not running and (g.pending or g.pending_delete):
            apply_pending(g)
        g.touch()
        self.changed()

    def node_entry(self, n: Node, gcpu: float | None = None, gmem: int | None = None) -> dict[str, Any]:
        """The /cluster/resources entry of a node; pass the guests' summed cpu/mem if already known."""
        if gcpu is None or gmem is None:
            gcpu, gmem = 0.0, 0
            now = self.now()
            bucket = int(now) // STAT_INTERVAL
            for g in self.guests.values():
                if g.node == n.name and g.status == "running":
                    _body, weight, mem = self.resource_json(g, bucket, now)
                    gcpu += weight / n.maxcpu
                    gmem += mem
        u = node_usage(self.seed, n.index, n.maxmem, n.maxdisk, gcpu, gmem, self.now())
        e2: dict[str, Any] = {
            "id": f"node/{n.name}",
            "type": "node",
            "node": n.name,
            "status": "online" if n.online else "offline",
            "level": n.level,
            "cgroup-mode": 2,
            "maxcpu": n.maxcpu,
            "maxmem": n.maxmem,
            "maxdisk": n.maxdisk,
        }
        if n.online:
            e2.update({"uptime": int(self.now() - n.boot), "cpu": u["cpu"], "mem": u["mem"], "disk": u["disk"]})
        hastate = self.ha_node_state(n)
        if hastate is not None:
            e2["hastate"] = hastate
        return e2

    def ha_node_state(self, n: Node) -> str | None:
        """The CRM's node_status of a node (pve-ha-manager NodeStatus.pm), None while no manager status
        exists. A node outside the quorate partition turns "unknown", except one whose LRM last said
        maintenance, which stays "maintenance"; "fence" and "gone" (a node with HA services that went
        away, a deleted node) are not emulated."""
        if not self.ha_manager:
            return None
        if n.maintenance:
            return "maintenance"
        return "online" if n.online else "unknown"

    def storage_entry(self, node: str, st: Storage) -> dict[str, Any]:
        n = self.nodes[node]
        return {
            "id": f"storage/{node}/{st.storage}",
            "type": "storage",
            "storage": st.storage,
            "node": node,
            "plugintype": st.type,
            "status": "available" if n.online else "unknown",
            "shared": st.shared,
            "content": ",".join(st.content),
            "disk": self.storage_used(node, st.storage),
            "maxdisk": st.maxdisk,
        }

    # -- initial inventory ----------------------------------------------------------------------
    def _populate(self, count: int, now: float, start: int = 100, nodes: list[str] | None = None) -> None:
        names = nodes or list(self.nodes)
        vmid = start - 1
        for i in range(count):
            vmid += 1
            while vmid in self.guests:
                vmid += 1
            node = names[i % len(names)]
            qemu = self.rng.random() < self.opts.qemu_share
            running = self.rng.random() < self.opts.running_share
            cores = self.rng.choice([1, 1, 2, 2, 4])
            mem = self.rng.choice([512, 1024, 2048, 4096])
            disk = self.rng.choice([4, 8, 8, 16, 32])
            mac = self.mac()
            if qemu:
                vol = self.alloc_disk(node, "local-lvm", vmid, disk, "images")
                cfg: dict[str, Any] = {
                    "boot": "order=scsi0;net0",
                    "cores": cores,
                    "cpu": "x86-64-v2-AES",
                    "memory": str(mem),
                    "meta": "creation-qemu=9.0.2,ctime=1700000000",
                    "name": f"vm{vmid}",
                    "net0": f"virtio={mac},bridge=vmbr0,firewall=1",
                    "numa": 0,
                    "ostype": "l26",
                    "scsi0": f"{vol},iothread=1,size={disk}G",
                    "scsihw": "virtio-scsi-single",
                    "smbios1": f"uuid={uuid.UUID(int=self.rng.getrandbits(128))}",
                    "sockets": 1,
                    "vmgenid": str(uuid.UUID(int=self.rng.getrandbits(128))),
                }
            else:
                vol = self.alloc_disk(node, "local-lvm", vmid, disk)
                cfg = {
                    "arch": "amd64",
                    "cores": cores,
                    "features": "nesting=1",
                    "hostname": f"ct{vmid}",
                    "memory": mem,
                    "net0": f"name=eth0,bridge=vmbr0,firewall=1,hwaddr={mac},ip=dhcp,type=veth",
                    "ostype": "debian",
                    "rootfs": f"{vol},size={disk}G",
                    "swap": 512,
                    "unprivileged": 1,
                }
            g = Guest(vmid, "qemu" if qemu else "lxc", node, cfg)
            if running:
                g.status = "running"
                g.started_at = now - self.rng.randrange(60, 30 * 86400)
            self.guests[vmid] = g
        self.changed()

    def mac(self) -> str:
        """A MAC with Proxmox's BC:24:11 prefix."""
        b = [self.rng.randrange(256) for _ in range(3)]
        return "BC:24:11:" + ":".join(f"{x:02X}" for x in b)

    def next_vmid(self, lo: int = 100, hi: int = 1_000_000) -> int | None:
        for v in range(lo, hi):
            if v not in self.guests:
                return v
        return None


def _tmpl_format(name: str) -> str:
    for ext, fmt in ((".tar.zst", "tzst"), (".tar.gz", "tgz"), (".tar.xz", "txz"), (".tgz", "tgz")):
        if name.endswith(ext):
            return fmt
    return "raw"


def _new_firewall() -> dict[str, Any]:
    return {"options": {}, "rules": [], "aliases": {}, "ipsets": {}, "version": 0}


def apply_pending(g: Guest) -> None:
    """Move pending changes into the running config (on stop/start, like PVE)."""
    for k in g.pending_delete:
        g.config.pop(k, None)
    g.config.update(g.pending)
    g.pending = {}
    g.pending_delete = []
    g.touch()
