"""The strategy: one validated model that every part of pveguard reads.

Defaults equal the container-first strategy's own numbers (four service containers, alerts at
80/85/90 %, containers backed up daily and kept 7 days, host configuration hourly and kept 30 days,
ALLOW_CORE_ONLY / REQUIRE_APPROVAL / CONTAINER_FIRST all on). `defaults.py` renders them as the
commented file `pveguard init` writes.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from pveguard.strategy.units import GIB, MIB, format_duration, format_size, parse_duration, parse_size

Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FREQUENCY_KEYWORDS = {"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly"}


def _check_frequency(value: str) -> str:
    """`hourly`, `daily`, ... or a PVE calendar event (validated by the backup calendar parser)."""
    text = str(value).strip()
    if not text:
        raise ValueError("empty schedule; use e.g. 'daily', 'hourly' or a calendar event like 'mon..fri 02:30'")
    if text in _FREQUENCY_KEYWORDS:
        return text
    import importlib

    try:
        calendar = importlib.import_module("pveguard.backup.calendar")
    except ImportError:  # until the calendar parser ships, accept the text as given
        return text
    try:
        calendar.parse(text)
    except ValueError as exc:
        message, hint = getattr(exc, "message", str(exc)), getattr(exc, "hint", None)
        raise ValueError(f"{message}; {hint}" if hint else message) from None
    return text


Frequency = Annotated[str, BeforeValidator(_check_frequency)]


def _check_vlan(v: int) -> int:
    if not 1 <= v <= 4094:
        raise ValueError(f"VLAN {v} is outside 1..4094")
    return v


Vlan = Annotated[int, AfterValidator(_check_vlan)]


class StrictModel(BaseModel):
    """Unknown keys are errors (reported with a "did you mean" hint by the loader)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


# --- core functions and installation policy -------------------------------------------------


class CoreFunction(StrictModel):
    name: str
    description: str = ""
    packages: list[str] = Field(default_factory=list, description="package names that implement it")


DEFAULT_CORE_FUNCTIONS: list[dict[str, Any]] = [
    {"name": "hypervisor", "description": "KVM/QEMU and LXC guest runtime",
     "packages": ["pve-qemu-kvm", "qemu-server", "pve-container", "lxc-pve", "lxcfs"]},
    {"name": "storage", "description": "storage plugins, ZFS, Ceph client, LVM",
     "packages": ["libpve-storage-perl", "zfsutils-linux", "lvm2", "ceph-common"]},
    {"name": "network", "description": "bridges, bonds, VLANs, SDN",
     "packages": ["ifupdown2", "libpve-network-perl"]},
    {"name": "cluster", "description": "corosync, pmxcfs, HA manager",
     "packages": ["pve-cluster", "corosync", "pve-ha-manager"]},
    {"name": "backup-restore-core", "description": "vzdump and the PBS client",
     "packages": ["pve-manager", "proxmox-backup-client"]},
    {"name": "security-access-control", "description": "users, realms, ACLs, firewall, certificates",
     "packages": ["libpve-access-control", "pve-firewall"]},
    {"name": "hardware-monitoring", "description": "SMART, sensors, RRD statistics",
     "packages": ["smartmontools", "rrdcached"]},
]


class InstallationPolicy(StrictModel):
    """The apt guard's policy: ALLOW_CORE_ONLY / REQUIRE_APPROVAL / CONTAINER_FIRST."""

    allow_core_only: bool = True
    require_approval: bool = True
    container_first: bool = True
    core_roots: list[str] = Field(default_factory=lambda: ["proxmox-ve"], min_length=1)
    extra_allowed: list[str] = Field(default_factory=list)
    approval_ttl: Duration = timedelta(hours=24)


# --- containers -------------------------------------------------------------------------------


class ContainerResources(StrictModel):
    cores: int = Field(ge=1, le=8192)
    memory: Size
    swap: Size = 512 * MIB
    storage: Size = 8 * GIB
    cpulimit: float = Field(0, ge=0, le=8192, description="0 = no quota beyond cores")
    cpuunits: int = Field(100, ge=1, le=10000)

    @field_validator("memory")
    @classmethod
    def _memory_min(cls, v: int) -> int:
        if v < 16 * MIB:
            raise ValueError(f"{format_size(v)} is too little memory; PVE needs at least 16M")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_min(cls, v: int) -> int:
        if v < GIB:
            raise ValueError(f"{format_size(v)} is too small for a root disk; use at least 1G")
        return v


class ContainerNetwork(StrictModel):
    bridge: str | None = Field(None, description="default: network.bridge")
    vlan: Vlan | None = Field(None, description="default: network.container_vlan")
    ip: str = Field("dhcp", description="dhcp, or a static address in CIDR form like 10.10.0.5/24")
    gateway: str | None = None
    firewall: bool = True

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        import ipaddress

        if v in ("dhcp", "manual"):
            return v
        try:
            ipaddress.ip_interface(v)
        except ValueError:
            raise ValueError(f"{v!r} is not 'dhcp' or an address in CIDR form like 10.10.0.5/24") from None
        if "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/24")
        return v


class Startup(StrictModel):
    order: int = Field(1, ge=0)
    up: int | None = Field(None, ge=0, description="seconds to wait after start")
    down: int | None = Field(None, ge=0)


class HealthCheck(StrictModel):
    type: Literal["tcp", "http", "command"]
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = None
    command: list[str] | None = None
    interval: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _needs_target(self) -> HealthCheck:
        needed = {"tcp": "port", "http": "url", "command": "command"}[self.type]
        if getattr(self, needed) is None:
            raise ValueError(f"a {self.type} health check needs '{needed}'")
        return self


class BackupVolume(StrictModel):
    size: Size = 100 * GIB
    mountpoint: str = Field("/srv/backup", description="an absolute path inside the container, like /srv/backup")
    storage: str | None = None

    @field_validator("mountpoint")
    @classmethod
    def _mountpoint(cls, v: str) -> str:
        # it becomes a word of an lxc.mount.entry line and PVE's mp= (no symlinks, no '..')
        if not re.fullmatch(r"/[A-Za-z0-9._/-]*[A-Za-z0-9._-]", v) or ".." in v.split("/") or v == "/":
            raise ValueError(f"{v!r} is not an absolute path of letters, digits, '.', '_', '-' and '/' "
                             "like /srv/backup")
        return v


class Container(StrictModel):
    name: str
    role: str = Field(description="short role used as a tag, e.g. monitoring")
    purpose: str = ""
    components: list[str] = Field(default_factory=list)
    resources: ContainerResources
    template: str = "debian-12-standard"
    storage: str | None = Field(None, description="storage for the root disk; default: target's")
    network: ContainerNetwork = Field(default_factory=ContainerNetwork)
    unprivileged: bool = True
    features: dict[str, bool] = Field(default_factory=lambda: {"nesting": True})
    onboot: bool = True
    startup: Startup = Field(default_factory=Startup)
    tags: list[str] = Field(default_factory=list)
    packages: list[str] = Field(default_factory=list)
    health_checks: list[HealthCheck] = Field(default_factory=list)
    node: str | None = Field(None, description="pin to a PVE node; default: most free memory")
    vmid: int | None = Field(None, ge=100, le=999999999)
    backup_volume: BackupVolume | None = None

    @field_validator("name")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid hostname; use lower-case letters, digits and '-'")
        return v

    @field_validator("features")
    @classmethod
    def _features(cls, v: dict[str, bool]) -> dict[str, bool]:
        known = {"nesting", "keyctl", "fuse", "mknod", "force_rw_sys"}
        for key in v:
            if key not in known:
                raise ValueError(f"unknown feature {key!r}; known: {', '.join(sorted(known))}")
        return v


def _default_containers() -> list[Container]:
    return [
        Container(
            name="pve-monitoring", role="monitoring",
            purpose="Grafana, Prometheus and metric collectors, off the hypervisor",
            components=["grafana", "prometheus", "custom metrics collectors", "performance analyzers",
                        "node-exporter", "alertmanager", "loki", "influxdb", "telegraf"],
            resources=ContainerResources(cores=2, memory=4 * GIB, storage=20 * GIB),
            startup=Startup(order=2),
            health_checks=[HealthCheck(type="tcp", port=22)],
        ),
        Container(
            name="pve-backup-manager", role="backup",
            purpose="backup schedulers, retention, offsite sync and verification",
            components=["backup schedulers", "retention managers", "offsite sync tools",
                        "backup verification", "restic", "rclone", "borg", "borgbackup", "rsync"],
            # "storage based on backup needs": a modest root disk plus an optional backup volume.
            resources=ContainerResources(cores=1, memory=2 * GIB, storage=16 * GIB),
            startup=Startup(order=3),
        ),
        Container(
            name="pve-dev-tools", role="devtools",
            purpose="CI/CD pipelines, testing frameworks, development environments",
            components=["ci/cd pipelines", "testing frameworks", "development environments",
                        "code repositories", "gitlab-runner", "jenkins", "docker", "podman", "git"],
            resources=ContainerResources(cores=2, memory=4 * GIB, storage=50 * GIB),
            onboot=False, startup=Startup(order=4),
        ),
        Container(
            name="pve-api-gateway", role="gateway",
            purpose="API servers, integration services, custom scripts and webhooks",
            components=["api servers", "integration services", "custom scripts", "webhooks",
                        "nginx", "caddy", "traefik", "haproxy", "webhook"],
            resources=ContainerResources(cores=1, memory=2 * GIB, storage=10 * GIB),
            startup=Startup(order=1),
        ),
    ]


# --- network, resources -----------------------------------------------------------------------


class ManagementNetwork(StrictModel):
    bridge: str = "vmbr0"
    vlan: Vlan | None = None
    cidr: str | None = Field(None, description="the admins' network, e.g. 192.168.1.0/24 (firewall rules "
                                               "'from management' admit it)")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not a network like 192.168.1.0/24") from None
        return v


class Isolation(StrictModel):
    separate_vlans: bool | Literal["per-role"] = Field(
        True, description="true: containers on network.container_vlan, apart from management; "
                          "per-role: each role its own VLAN, container_vlan + the role's index; "
                          "false: untagged (unless a container names its vlan)")
    firewall_rules: bool = True
    traffic_monitoring: bool = True


class Network(StrictModel):
    bridge: str = "vmbr0"
    container_vlan: Vlan = 100
    management: ManagementNetwork = Field(default_factory=ManagementNetwork)
    isolation: Isolation = Field(default_factory=Isolation)


class HostCapacity(StrictModel):
    cores: int | None = Field(None, ge=1, description="default: detected")
    memory: Size | None = Field(None, description="default: detected")


class Resources(StrictModel):
    hard_limits: bool = Field(True, description=(
        "true: memory, swap and cpulimit are hard cgroup caps (as on PVE); false (lxc backend only): memory "
        "is a reclaim target (memory.high), cpulimit is not applied, cpuunits and cores stay; Proxmox VE "
        "refuses false"))
    host: HostCapacity = Field(default_factory=HostCapacity)
    max_cpu_overcommit: float = Field(2.0, gt=0, le=64)
    max_memory_overcommit: float = Field(1.0, gt=0, le=8)
    host_reserved_memory: Size = 2 * GIB


# --- monitoring ---------------------------------------------------------------------------------


Metric = Literal["cpu_usage", "memory_usage", "disk_io", "network_traffic", "disk_usage"]
DEFAULT_METRICS: tuple[Metric, ...] = ("cpu_usage", "memory_usage", "disk_io", "network_traffic")


class Thresholds(StrictModel):
    cpu: float = Field(80, ge=1, le=100)
    memory: float = Field(85, ge=1, le=100)
    disk: float = Field(90, ge=1, le=100)


class Notifier(StrictModel):
    type: Literal["webhook", "email", "alertmanager"]
    name: str | None = None
    url: str | None = None
    secret_file: str | None = Field(None, description="webhook HMAC-SHA256 key file")
    smtp_host: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_ca_file: str | None = Field(None, description="CA certificate (PEM) that signed the relay's certificate")
    smtp_tls_verify: bool = Field(True, description="false: STARTTLS without certificate checks (warned on each send)")
    smtp_user: str | None = None
    smtp_password_file: str | None = None
    mail_from: str | None = None
    mail_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> Notifier:
        if self.type in ("webhook", "alertmanager") and not self.url:
            raise ValueError(f"a {self.type} notifier needs 'url'")
        if self.type == "email" and (not self.smtp_host or not self.mail_to or not self.mail_from):
            raise ValueError("an email notifier needs 'smtp_host', 'mail_from' and 'mail_to'")
        if self.type == "email" and (self.smtp_user or self.smtp_password_file) and not self.smtp_starttls:
            raise ValueError("an SMTP login needs 'smtp_starttls: true' (the password would travel in clear)")
        return self


class TrafficWatch(StrictModel):
    """The firewall's view of each container's traffic (on while both traffic_monitoring switches are)."""

    read_every: Duration = Field(timedelta(minutes=1), description=(
        "how often the firewall log (PVE) or the nftables counters and conntrack (lxc) are read; "
        "polls in between reuse the last reading"))
    drops_per_minute: float = Field(10, gt=0, description=(
        "alert when a container's dropped connections reach this rate"))
    learning: Duration = Field(timedelta(days=1), description=(
        "destinations a container talks to in its first `learning` are its baseline; a new one after "
        "that raises an alert"))


class Monitoring(StrictModel):
    metrics: list[Metric] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    poll_interval: Duration = timedelta(seconds=30)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    sustain: Duration = timedelta(minutes=2)
    hysteresis: float = Field(5, ge=0, le=50, description="percentage points below the threshold to clear")
    renotify: Duration = timedelta(hours=4)
    notify: list[Notifier] = Field(default_factory=list)
    traffic: TrafficWatch = Field(default_factory=TrafficWatch)


# --- security -----------------------------------------------------------------------------------


class SecurityNetwork(StrictModel):
    vlans: bool = Field(True, description="false: containers untagged and VLANs not checked (as separate_vlans: "
                                          "false)")
    firewall_rules: bool = True
    traffic_monitoring: bool = True
    allowed_inbound: list[str] = Field(
        default_factory=lambda: ["tcp/22 from management"],
        description="firewall rules for the container VLAN, e.g. 'tcp/443 from any'",
    )


class Certificates(StrictModel):
    manage: bool = True
    warn_before: Duration = timedelta(days=30)


def _default_grants() -> dict[str, list[str]]:
    from pveguard.security.grants import default_grants

    return default_grants()


class Access(StrictModel):
    rbac: bool = Field(True, description="proxmox backend: one PVE user and API token per container role, "
                                         "least privilege (docs/rbac.md)")
    audit_logging: bool = Field(True, description="always true: every action pveguard takes is in its ledger "
                                "(docs/ledger.md); false is refused")
    api_token_privsep: bool = Field(True, description="the role tokens have only what their own ACLs grant")
    role_grants: dict[str, list[str]] = Field(
        default_factory=_default_grants,
        description="per container role: 'PRIV[,PRIV] on PATH' (PATH: an ACL path, self, guests or "
                    "backup-storage); a role not listed gets 'VM.Audit on self'")
    certificates: Certificates = Field(default_factory=Certificates)


    @field_validator("audit_logging")
    @classmethod
    def _audit_always(cls, v: bool) -> bool:
        # the ledger is how every other guarantee is checked: it cannot be switched off, and a key
        # that said so while pveguard went on recording would be a lie
        if not v:
            raise ValueError("audit logging cannot be turned off: pveguard records every action in its "
                             "hash-chained ledger (docs/ledger.md); remove the key or set it to true")
        return v

    @field_validator("role_grants")
    @classmethod
    def _grants(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from pveguard.security.grants import parse_grant

        for texts in v.values():
            for text in texts:
                parse_grant(text)
        return v


class Security(StrictModel):
    network: SecurityNetwork = Field(default_factory=SecurityNetwork)
    access: Access = Field(default_factory=Access)
    ledger_hmac_key_file: str | None = Field(None, description="key file that makes the audit chain keyed")


# --- backup -------------------------------------------------------------------------------------


class Keep(StrictModel):
    """PVE/PBS keep-* rules; when set they replace what `retention` implies."""

    last: int | None = Field(None, ge=0)
    hourly: int | None = Field(None, ge=0)
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    yearly: int | None = Field(None, ge=0)


class ContainerBackups(StrictModel):
    schedule: Frequency = "daily"
    retention: Duration = timedelta(days=7)
    keep: Keep | None = None
    guests: Literal["managed", "all"] = "managed"
    storage: str = "local"
    mode: Literal["snapshot", "suspend", "stop"] = "snapshot"
    compress: Literal["zstd", "gzip", "lzo", "0"] = "zstd"
    notes_template: str = "{{guestname}} (pveguard)"


def _default_config_paths() -> list[str]:
    return ["/etc/pve", "/etc/network", "/etc/apt", "/etc/pveguard", "/etc/hosts", "/etc/hostname",
            "/etc/fstab", "/etc/systemd/system", "/etc/corosync", "/etc/ssh", "/etc/lvm", "/etc/modprobe.d",
            "/etc/sysctl.d", "/etc/cron.d", "/etc/vzdump.conf", "/root/.ssh"]


class HostConfigBackups(StrictModel):
    schedule: Frequency = "hourly"
    retention: Duration = timedelta(days=30)
    paths: list[str] = Field(default_factory=_default_config_paths)
    repository: str | None = Field(None, description="restic repository; default: <state-dir>/restic")
    password_file: str | None = Field(None, description="default: <state-dir>/restic.pass (created)")


class Offsite(StrictModel):
    type: Literal["none", "restic", "directory", "sftp", "rclone"] = "none"
    target: str | None = None
    schedule: Frequency = "daily"

    @model_validator(mode="after")
    def _target(self) -> Offsite:
        if self.type != "none" and not self.target:
            raise ValueError(f"offsite type {self.type!r} needs 'target'")
        return self


class Verification(StrictModel):
    enabled: bool = True
    schedule: Frequency = "weekly"
    restore_test: bool = True
    restic_read_data_subset: str = "5%"


class Backup(StrictModel):
    containers: ContainerBackups = Field(default_factory=ContainerBackups)
    host_config: HostConfigBackups = Field(default_factory=HostConfigBackups)
    offsite: Offsite = Field(default_factory=Offsite)
    verification: Verification = Field(default_factory=Verification)


# --- emergency ----------------------------------------------------------------------------------


NOT_BUILT_ON_EXHAUSTED = {
    "restore-last-backup": "after the alert, restore the container from its last backup by hand ('pct restore' on PVE)",
    "migrate": "after the alert, move the container by hand ('pct migrate') when its node is at fault",
}


class ContainerFailure(StrictModel):
    restart: bool = True
    max_restarts: int = Field(3, ge=0, le=100)
    window: Duration = timedelta(hours=1)
    backoff: Duration = Field(timedelta(seconds=30), description="wait before the 2nd restart in the window; "
                              "doubles for each further one (the 1st is at once)")
    on_exhausted: Literal["alert", "quarantine"] = Field(
        "alert", description="alert: alert and wait for the window to free a restart; quarantine: alert and stop "
        "trying until 'pveguard recover clear NAME'")
    interval: Duration = Field(timedelta(seconds=10),
                               description="how often 'pveguard recover' sweeps (without --once)")

    @field_validator("on_exhausted", mode="before")
    @classmethod
    def _not_built(cls, v: object) -> object:
        # named in the seed's vocabulary but not built: refused rather than quietly acting as 'alert'
        if v in NOT_BUILT_ON_EXHAUSTED:
            raise ValueError(f"{v!r} is not built yet ({NOT_BUILT_ON_EXHAUSTED[str(v)]}); use 'alert' or "
                             "'quarantine'")
        return v


ExhaustionAction = Literal["identify_high_usage", "scale_resources", "migrate", "root_cause_analysis"]
DEFAULT_EXHAUSTION_ACTIONS: tuple[ExhaustionAction, ...] = (
    "identify_high_usage", "scale_resources", "migrate", "root_cause_analysis")


class ResourceExhaustion(StrictModel):
    actions: list[ExhaustionAction] = Field(default_factory=lambda: list(DEFAULT_EXHAUSTION_ACTIONS))
    scale_step: float = Field(0.25, gt=0, le=4, description="grow limits by this fraction per step")
    scale_max: float = Field(2.0, ge=1, le=16, description="never beyond this multiple of the strategy")


class Emergency(StrictModel):
    container_failure: ContainerFailure = Field(default_factory=ContainerFailure)
    resource_exhaustion: ResourceExhaustion = Field(default_factory=ResourceExhaustion)


# --- updates ------------------------------------------------------------------------------------


class Updates(StrictModel):
    """Safe updates of the managed containers (`pveguard update`, docs/updates.md)."""

    schedule: Frequency | Literal["never"] = Field(
        "daily", description="when the timer runs 'pveguard update --scheduled' (a PVE calendar event, or never)")
    security_only: bool = Field(True, description="the scheduled run installs only security updates")
    keep_snapshots: int = Field(1, ge=0, le=50, description="update snapshots kept per container after a "
                                "successful update (older ones are deleted)")
    health_timeout: Duration = Field(timedelta(seconds=60), description="how long the health checks may take "
                                     "to pass after an upgrade before it is rolled back")


# --- target -------------------------------------------------------------------------------------


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint as PVE shows it (AA:BB:..., 32 bytes); accepts any case, with or
    without colons. ValueError says what a fingerprint looks like."""
    hexits = text.strip().replace(":", "").upper()
    if not re.fullmatch(r"[0-9A-F]{64}", hexits):
        raise ValueError("a certificate fingerprint is the SHA-256 shown by 'pvenode cert info': 32 hex bytes "
                         "like AB:CD:...:EF (64 hex digits, colons optional)")
    return ":".join(hexits[i:i + 2] for i in range(0, 64, 2))


class ProxmoxTarget(StrictModel):
    host: str | None = Field(None, description="host[:port]; empty = the local node (pvesh)")
    user: str | None = Field(None, description="user@realm for password or token auth")
    token_id: str | None = None
    token_secret_file: str | None = None
    password_file: str | None = None
    verify_ssl: bool = True
    fingerprint: str | None = Field(
        None, description="pin the API certificate: its SHA-256 as 'pvenode cert info' shows it (AA:BB:...)")
    ca_file: str | None = Field(None, description="CA certificate(s) to verify the API with, e.g. a copy of "
                                                  "/etc/pve/pve-root-ca.pem")
    node: str | None = Field(None, description="pin every container to this node")
    storage: str = "local-lvm"
    template_storage: str = "local"
    ssh_user: str = "root"
    task_timeout: Duration = timedelta(minutes=10)

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        return None if v is None else normalize_fingerprint(v)


class LxcTarget(StrictModel):
    lxcpath: str = "/var/lib/lxc"
    template_cache: str = "/var/cache/pveguard/templates"
    disk_dir: str = "/var/lib/pveguard/disks"
    vlan_mode: Literal["auto", "vlan_filtering", "bridge_per_vlan"] = "auto"
    subnet: str = Field("10.101.0.0/16", description="when pveguard creates the bridge: its private IPv4 "
                        "pool (DHCP, NAT); untagged gets the first /24, VLAN n the n-th")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 network like 10.101.0.0/16") from None
        if not net.is_private or net.prefixlen > 24:
            raise ValueError(f"{v} must be a private IPv4 network of /24 or larger, like 10.101.0.0/16")
        return str(net)


class Target(StrictModel):
    backend: Literal["auto", "proxmox", "lxc"] = "auto"
    instance: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="this installation's identity in the marker of the containers it owns (pveguard init writes one)")
    proxmox: ProxmoxTarget = Field(default_factory=ProxmoxTarget)
    lxc: LxcTarget = Field(default_factory=LxcTarget)


# --- the strategy -------------------------------------------------------------------------------


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` / `on` as a boolean: take it as the word the user wrote."""
    return {False: "off", True: "on"}[value] if isinstance(value, bool) else value


class ServeTls(StrictModel):
    mode: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = Field(
        "auto", description="auto: plain HTTP on loopback, TLS elsewhere; off is refused off loopback")
    cert_file: str | None = Field(None, description="PEM certificate; empty = one serve creates in the state dir")
    key_file: str | None = Field(None, description="PEM private key for cert_file")


class ServeSchedules(StrictModel):
    monitor: Duration | None = Field(None, description="monitor poll + alerts; empty = monitoring.poll_interval")
    recover: Duration | None = Field(
        None, description="watchdog sweep; empty = emergency.container_failure.interval")
    backups: Duration = Field(timedelta(minutes=5), description="how often due backups / verifications are checked")
    audit: Duration = Field(timedelta(days=1), description="host audit and its compliance score")
    certs: Duration = Field(timedelta(hours=12), description="certificate expiry checks")


class Serve(StrictModel):
    listen: str = Field("127.0.0.1:8450", description="HOST:PORT; plain HTTP only on loopback")
    tls: ServeTls = Field(default_factory=ServeTls)
    session_ttl: Duration = Field(timedelta(hours=8), description="web session lifetime after login")
    schedules: ServeSchedules = Field(default_factory=ServeSchedules)
    container: str | None = Field(
        None, description="apply installs and starts 'pveguard serve' in this strategy container "
        "(e.g. pve-api-gateway); empty = not installed by apply")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8450 or [::1]:8450)")
        return value


class Strategy(StrictModel):
    version: Literal[1] = 1
    core_functions: list[CoreFunction] = Field(
        default_factory=lambda: [CoreFunction(**c) for c in DEFAULT_CORE_FUNCTIONS]
    )
    installation_policy: InstallationPolicy = Field(default_factory=InstallationPolicy)
    containers: list[Container] = Field(default_factory=_default_containers)
    network: Network = Field(default_factory=Network)
    resources: Resources = Field(default_factory=Resources)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    security: Security = Field(default_factory=Security)
    backup: Backup = Field(default_factory=Backup)
    emergency: Emergency = Field(default_factory=Emergency)
    updates: Updates = Field(default_factory=Updates)
    target: Target = Field(default_factory=Target)
    serve: Serve = Field(default_factory=Serve)

    def container(self, name: str) -> Container:
        """The container called `name`; KeyError when the strategy has none."""
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)

    def core_roots(self) -> tuple[str, ...]:
        """The packages whose dependency closure is core: `installation_policy.core_roots`, then the
        packages every core function names (first occurrence kept). The guard's policy file and the
        audit both classify by this one set, so what the strategy calls a core function stays allowed."""
        names = [*self.installation_policy.core_roots, *(p for f in self.core_functions for p in f.packages)]
        return tuple(dict.fromkeys(names))

    def container_bridge(self, c: Container) -> str:
        return c.network.bridge or self.network.bridge

    def container_vlan(self, c: Container) -> int | None:
        """The container's own vlan, else none when VLANs are not wanted (security.network.vlans or
        separate_vlans false), else
        (separate_vlans: per-role) container_vlan + the index of its role in the order roles first appear
        among the containers, else container_vlan."""
        if c.network.vlan is not None:
            return c.network.vlan
        if not self.security.network.vlans or self.network.isolation.separate_vlans is False:
            return None  # VLANs not wanted: untagged unless the container names its vlan
        if self.network.isolation.separate_vlans == "per-role":
            roles = list(dict.fromkeys(x.role for x in self.containers))
            return self.network.container_vlan + roles.index(c.role)
        return self.network.container_vlan
