"""Findings: what is wrong with the host against the strategy, each with a severity and a fix.

Pure functions: inputs are the classified inventory, the strategy, and what the guard, the backend
and the backup module said (each may be unavailable, which is itself reported, not guessed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pveguard.strategy.models import Strategy
from pveguard.strategy.units import MIB

if TYPE_CHECKING:
    from pveguard.backup.coverage import Coverage
    from pveguard.security.certs import Report as CertReport

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
_LOOPBACK = re.compile(r" on (127\.|::1$)")


@dataclass(frozen=True)
class Finding:
    id: str                 # stable key, e.g. "non-core-service:nginx.service"
    category: str           # guard | containers | services | packages | docker | backup | host
    severity: Severity
    title: str
    detail: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "category": self.category, "severity": self.severity, "title": self.title,
                "detail": self.detail, "fix": self.fix}


@dataclass
class GuestView:
    """What the backend said about guests: the listing plus each strategy container's config."""

    available: bool
    reason: str = ""
    backend: str = ""
    guests: list[dict[str, Any]] = field(default_factory=list)        # name, vmid, status, type
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # guest name -> PVE-style config
    listed: list[Any] = field(default_factory=list)  # the backend's Guest objects (not in the report)


@dataclass
class ServiceRow:
    """One classified non-core unit, as the findings need it."""

    unit: str
    package: str | None
    running: bool
    enabled: bool
    suggestion: str | None
    confidence: float
    ports: list[str]


# The guard's own severities (pveguard.guard.install.GuardFinding) on the audit's scale.
GUARD_SEVERITY: dict[str, Severity] = {"critical": "critical", "warning": "high"}


def guard_findings(result: Sequence[Any] | None) -> list[Finding]:
    """Normalise the guard's findings: `GuardFinding` objects (kind, path, message, hint, severity) or
    dicts in the audit's own form (id, severity, title, detail, fix)."""
    if result is None:
        return []
    out = []
    for item in result:
        get = item.get if isinstance(item, Mapping) else (lambda k, d="", _i=item: getattr(_i, k, d))
        raw = str(get("severity", "high"))
        severity: Severity = GUARD_SEVERITY.get(raw) or (raw if raw in SEVERITIES else "high")
        kind = get("kind", "")
        out.append(Finding(
            id=f"guard:{kind}" if kind else str(get("id", "guard")), category="guard", severity=severity,
            title=str(get("message", "") or get("title", "apt guard")),
            detail=str(get("path", "") or get("detail", "")),
            fix=str(get("hint", "") or get("fix", "")),
        ))
    return out


def service_findings(rows: Sequence[ServiceRow]) -> list[Finding]:
    """One finding per package (or per unpackaged unit) with enabled or running non-core units."""
    groups: dict[str, list[ServiceRow]] = {}
    for r in rows:
        if r.running or r.enabled:
            groups.setdefault(r.package or r.unit, []).append(r)
    out = []
    for key, group in groups.items():
        package = group[0].package
        units = [r.unit for r in group]
        ports = sorted({p for r in group for p in r.ports})
        exposed = any(not _LOOPBACK.search(p) for p in ports)
        severity: Severity = "high" if exposed else "medium"
        best = max(group, key=lambda r: r.confidence)
        where = f"move it to container {best.suggestion} (confidence {best.confidence:.2f})" if best.suggestion \
            else "decide which container it belongs in (no strategy container lists it; add it to one's components)"
        states = ", ".join(f"{r.unit} ({'running' if r.running else 'enabled'})" for r in group)
        listens = f"; listens on {', '.join(ports)}" if ports else ""
        what = f"package {package}" if package else f"local unit {key}"
        out.append(Finding(
            id=f"non-core-service:{key}", category="services", severity=severity,
            title=f"non-core service on the host: {what}",
            detail=f"{states} {'is' if len(group) == 1 else 'are'} not a core PVE function{listens}",
            fix=f"{where}; then on the host: systemctl disable --now {' '.join(units)}"
                + (f" && apt-get purge {package}" if package else f" && rm the unit file of {key}"),
        ))
    return out


def package_findings(manual_non_core: Sequence[str], service_packages: set[str]) -> list[Finding]:
    """One finding for manually installed non-core packages that run no service (tools, libraries)."""
    rest = [p for p in manual_non_core if p not in service_packages]
    if not rest:
        return []
    shown = ", ".join(rest[:15]) + (f" and {len(rest) - 15} more" if len(rest) > 15 else "")
    return [Finding(
        id="non-core-packages", category="packages", severity="low",
        title=f"{len(rest)} manually installed non-core package(s) on the host",
        detail=shown,
        fix="install tools inside a service container instead; on the host: apt-get purge <package> "
            "(or allow it in installation_policy.extra_allowed if it must stay)",
    )]


def docker_findings(runtimes: Mapping[str, Sequence[str]], pve: bool) -> list[Finding]:
    out = []
    for runtime, evidence in runtimes.items():
        if runtime == "docker":
            out.append(Finding(
                id="docker-on-host", category="docker", severity="high" if pve else "medium",
                title="Docker on the hypervisor",
                detail="Docker sets the iptables FORWARD policy to DROP and inserts its own chains, which breaks "
                       "bridged guest traffic and conflicts with pve-firewall; evidence: " + "; ".join(evidence),
                fix="run Docker inside the pve-dev-tools container (features: nesting=1,keyctl=1); "
                    "on the host: systemctl disable --now docker.service docker.socket && apt-get purge docker.io "
                    "docker-ce containerd",
            ))
        else:
            out.append(Finding(
                id=f"{runtime}-on-host", category="docker", severity="medium",
                title=f"{runtime.capitalize()} on the hypervisor",
                detail="a container runtime on the host bypasses the strategy's containers; evidence: "
                       + "; ".join(evidence),
                fix=f"run {runtime} inside the pve-dev-tools container; on the host: apt-get purge {runtime}",
            ))
    return out


def cron_findings(jobs: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Cron jobs no package ships: someone's scripts running on the hypervisor."""
    out = []
    for job in jobs:
        if job.get("package") or job.get("core"):
            continue
        target = job.get("suggestion")
        out.append(Finding(
            id=f"cron:{job['source']}:{job['command'][:40]}", category="services", severity="low",
            title=f"custom cron job in {job['source']}",
            detail=f"{job['schedule']} as {job['user']}: {job['command']}",
            fix=(f"run it in container {target}" if target else "run it in a service container")
                + f" and remove it from {job['source']}",
        ))
    return out


def _net_options(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        key, _, val = part.partition("=")
        out[key.strip()] = val.strip()
    return out


def _mib(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        m = re.match(r"^(\d+)", str(value))
        return int(m.group(1)) if m else None


def container_findings(strategy: Strategy, view: GuestView) -> list[Finding]:
    """Strategy containers missing, stopped, mis-sized, off the container VLAN or without firewall=1."""
    if not view.available:
        return []
    by_name = {g["name"]: g for g in view.guests}
    out: list[Finding] = []
    for c in strategy.containers:
        guest = by_name.get(c.name)
        if guest is None:
            out.append(Finding(
                id=f"container-missing:{c.name}", category="containers", severity="high",
                title=f"strategy container {c.name} does not exist",
                detail=f"the strategy defines {c.name} ({c.role}); "
                       f"the {view.backend} backend has no guest of that name",
                fix=f"create it: pveguard plan && pveguard apply (or pveguard apply --only {c.name})"))
            continue
        if guest.get("status") != "running":
            out.append(Finding(
                id=f"container-stopped:{c.name}", category="containers",
                severity="medium" if c.onboot else "low",
                title=f"strategy container {c.name} is {guest.get('status', 'not running')}",
                detail=f"vmid {guest.get('vmid')}; onboot={'1' if c.onboot else '0'} in the strategy",
                fix=f"start it (pct start {guest.get('vmid')}) and look at why it stopped"))
        cfg = view.configs.get(c.name)
        if cfg is None:
            continue
        wrong = []
        if _mib(cfg.get("cores")) not in (None, c.resources.cores):
            wrong.append(f"cores {cfg.get('cores')} (strategy {c.resources.cores})")
        want_mem = c.resources.memory // MIB
        if _mib(cfg.get("memory")) not in (None, want_mem):
            wrong.append(f"memory {cfg.get('memory')} MiB (strategy {want_mem})")
        want_swap = c.resources.swap // MIB
        if _mib(cfg.get("swap")) not in (None, want_swap):
            wrong.append(f"swap {cfg.get('swap')} MiB (strategy {want_swap})")
        if wrong:
            out.append(Finding(
                id=f"container-resources:{c.name}", category="containers", severity="medium",
                title=f"{c.name} has resources other than the strategy's", detail="; ".join(wrong),
                fix="pveguard plan shows the change; pveguard apply makes it"))
        net = _net_options(str(cfg.get("net0", "")))
        vlan = strategy.container_vlan(c)
        if vlan is not None and net.get("tag") != str(vlan):
            out.append(Finding(
                id=f"container-vlan:{c.name}", category="containers", severity="high",
                title=f"{c.name} is off the container VLAN",
                detail=f"net0 tag={net.get('tag') or 'none'}, strategy VLAN {vlan} (net0: {cfg.get('net0', 'none')})",
                fix=f"pct set {guest.get('vmid')} --net0 ...,tag={vlan} (or pveguard apply)"))
        if c.network.firewall and net.get("firewall") != "1":
            out.append(Finding(
                id=f"container-firewall:{c.name}", category="containers", severity="high",
                title=f"{c.name} has no firewall=1 on net0",
                detail=f"net0: {cfg.get('net0', 'none')}",
                fix=f"pct set {guest.get('vmid')} --net0 ...,firewall=1 (or pveguard apply)"))
    return out


# Each kind of backup problem (pveguard.backup.compliance.PROBLEM_KINDS) on the audit's scale.
BACKUP_SEVERITY: dict[str, Severity] = {
    "no-job": "high", "no-backup": "high", "late": "medium", "offsite-overdue": "medium",
    "too-many": "low", "verify-overdue": "low",
}  # fmt: skip


def backup_findings(coverage: Coverage | None) -> list[Finding]:
    """One finding per problem of each guest the backup policy covers (None = coverage unknown).

    A guest in no backup job has no backups either; that is one finding (in no job), not two,
    because one fix (`backup apply`) addresses both until the job's first run."""
    if coverage is None:
        return []
    pve = coverage.storage is not None
    out: list[Finding] = []
    for status in coverage.statuses:
        name = coverage.names.get(status.guest, "")
        vmid = status.guest.rpartition("/")[2]
        who = f"guest {vmid} ({name})" if name else f"guest {vmid}"
        kinds = {i.kind for i in status.issues}
        for issue in status.issues:
            if issue.kind == "no-backup" and "no-job" in kinds:
                continue
            title, detail, fix = _backup_texts(issue.kind, issue.text, who, vmid, coverage, pve,
                                               no_backup="no-backup" in kinds)
            out.append(Finding(id=f"backup-{issue.kind}:{name or status.guest}", category="backup",
                               severity=BACKUP_SEVERITY.get(issue.kind, "medium"), title=title, detail=detail,
                               fix=fix))
    return out


def _backup_texts(kind: str, text: str, who: str, vmid: str, coverage: Coverage, pve: bool,
                  no_backup: bool) -> tuple[str, str, str]:
    where = f"storage {coverage.storage}" if pve else coverage.source
    vzdump = f"vzdump {vmid} --storage {coverage.storage} --mode snapshot --compress zstd"
    run = "pveguard backup run (and pveguard backup install-timers so it runs on schedule)"
    if kind == "no-job":
        detail = ("PVE lists it in /cluster/backup-info/not-backed-up" if pve else "not covered by the policy") + (
            "; it has no backup at all" if no_backup else "")
        return (f"{who} is in no backup job", detail,
                "pveguard backup apply (puts the policy's containers into this installation's vzdump job "
                "pveguard-<instance>)")
    if kind == "no-backup":
        return (f"{who} has no backup at all", f"no archive of it in {where}",
                f"run the job for it now: {vzdump} (or wait for the job's next run)" if pve else run)
    if kind == "late":
        return (f"the last backup of {who} is older than the scheduled run", f"{text} (archives in {where})",
                f"look at the task log of this installation's vzdump job (pveguard-<instance>), then: {vzdump}" if pve
                else f"{run}; check: systemctl status pveguard-backup.timer")
    if kind == "too-many":
        return (f"{who} has more archives than the retention keeps", f"{text} (in {where})",
                f"pvesm prune-backups {coverage.storage} --vmid {vmid} --dry-run, then without --dry-run; "
                "pveguard backup apply sets the job's prune-backups" if pve
                else f"pveguard backup archives prune {coverage.source} --vmid {vmid} with the policy's keep-* "
                     "(pveguard backup run prunes after each archive)")
    if kind == "verify-overdue":
        return (f"the backups of {who} are not verified on schedule", text, "pveguard backup verify")
    if kind == "offsite-overdue":
        return (f"the backups of {who} have no current offsite copy", text,
                "pveguard backup run (its offsite step copies and records the time)")
    return (f"{who}: {text}", text, "pveguard backup status shows the details")


def certificate_findings(report: CertReport | None) -> list[Finding]:
    """One finding per certificate inside security.access.certificates.warn_before (expired: critical)."""
    if report is None:
        return []
    out: list[Finding] = []
    days = report.warn_before / 86400
    for c in report.expiring():
        left = c.days_left(report.now) or 0
        expired = c.not_after is not None and c.not_after <= report.now
        when = f"expired {-left} day(s) ago" if expired else f"expires in {left} day(s)"
        if c.kind == "node":
            title = f"the certificate {c.name} of node {c.where} {when}"
            fix = (f"pveguard certs renew {c.where} (ACME), or upload a new one; pve-ssl.pem is renewed by "
                   f"'pvecm updatecerts --force' on {c.where}" if c.name != "pve-root-ca.pem"
                   else "the cluster CA: 'pvecm updatecerts --force' after planning new node certificates")
        else:
            title = f"the TLS certificate of {c.where} at {c.name} {when}"
            fix = f"renew the certificate of the service behind {c.name} in container {c.where}"
        not_after = c.as_dict(report.now, report.warn_before)["not_after"]
        out.append(Finding(id=f"certificate:{c.target}", category="certificates",
                           severity="critical" if expired else "high", title=title,
                           detail=f"{c.subject or '?'}, not after {not_after} (warn_before: {days:g} days)", fix=fix))
    return out


def host_findings(pve_detected: bool, core_roots: Sequence[str]) -> list[Finding]:
    if pve_detected:
        return []
    return [Finding(
        id="pve-not-detected", category="host", severity="info", title="Proxmox VE not detected",
        detail="no proxmox-ve/pve-manager package and no /etc/pve; core packages are the closure of the "
               f"strategy's core roots ({', '.join(core_roots)}) and of the packages its core_functions name, "
               "plus Essential/required/important packages",
        fix="nothing to do on a non-PVE host; set installation_policy.core_roots to this host's base packages")]
