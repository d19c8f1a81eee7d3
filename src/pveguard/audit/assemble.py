"""Turn host facts plus what the guard, the backend and the backup module said into the report
document (the JSON shape documented in docs/audit.md). Pure: no I/O here."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pveguard.audit import depmap, findings, score, services, suggest
from pveguard.audit.facts import HostFacts
from pveguard.audit.findings import Finding, GuestView, ServiceRow
from pveguard.audit.pkggraph import DependencyGraph
from pveguard.output import iso_utc
from pveguard.packages.classify import Classifier
from pveguard.strategy.models import Strategy

if TYPE_CHECKING:
    from pveguard.backup.coverage import Coverage
    from pveguard.security.certs import Report as CertReport

SCHEMA = "pveguard.audit/1"


@dataclass
class External:
    """Facts from other parts of pveguard; each says when it was unavailable and why."""

    guests: GuestView = field(default_factory=lambda: GuestView(False, "not queried"))
    guard: list[Any] | None = None
    guard_reason: str = "not queried"
    backup: Coverage | None = None  # pveguard.backup.coverage.collect's verdicts, None = unavailable
    backup_reason: str = "not queried"
    backend: str | None = None  # the backend pveguard would use on this host (None: judge from the facts)
    certs: CertReport | None = None  # pveguard.security.certs.collect, None = unavailable
    certs_reason: str = "not queried"
    updates: list[Finding] = field(default_factory=list)  # pveguard.updates.state.findings (last checks)


def build(facts: HostFacts, strategy: Strategy, external: External, now: datetime | None = None) -> dict[str, Any]:
    """The whole audit as one JSON-able document."""
    policy = strategy.installation_policy
    graph = DependencyGraph(facts.packages)
    backend = external.backend or suggest.role_backend(strategy.target.backend, facts.pve_detected, graph.installed)
    classifier = services.HostClassifier(Classifier(facts.packages, strategy.core_roots(),
                                                    tuple(policy.extra_allowed)), graph,
                                         host_role=suggest.host_role(facts.packages, backend, graph))
    # What core packages need stays on the host anyway (libc6 is not "pulled in" by a service).
    core_closure = classifier.core_set()
    containers = [(c.name, c.components) for c in strategy.containers]
    idx = depmap.reverse_index(facts.units)
    manual_set = manually_installed(facts, graph)
    manual = sorted(manual_set)

    service_docs: list[dict[str, Any]] = []
    dep_docs: list[dict[str, Any]] = []
    rows: list[ServiceRow] = []
    service_packages: set[str] = set()
    for name in sorted(facts.units):
        unit = facts.units[name]
        if not services.listed(unit):
            continue
        used = services.in_use(unit)
        verdict = services.classify_unit(unit, classifier)
        doc: dict[str, Any] = {
            "unit": name, "kind": unit.kind, "path": unit.path, "package": unit.package,
            "enablement": unit.enablement, "active": unit.active, "sub": unit.sub, "in_use": used,
            "core": verdict.core, "reason": verdict.reason, "detail": verdict.detail,
            "suggestion": None, "migration": None,
        }
        if not verdict.core:
            if unit.package and used:
                service_packages.add(unit.package)
            sug = suggest.suggest(suggest.service_names(unit, facts), containers)
            mig = suggest.migration_facts(unit, facts)
            doc["suggestion"] = {
                "container": sug.container, "component": sug.component, "confidence": sug.confidence,
                "evidence": sug.evidence,
                "alternatives": [{"container": m.container, "component": m.component, "confidence": m.confidence}
                                 for m in sug.alternatives],
            }
            doc["migration"] = asdict(mig)
            dep_docs.append(asdict(depmap.dependencies(unit, facts, idx, core_closure, manual, graph)))
            if used:
                rows.append(ServiceRow(name, unit.package, unit.running, unit.enabled, sug.container,
                                       sug.confidence, mig.ports))
        service_docs.append(doc)

    package_docs: list[dict[str, Any]] = []
    for name in sorted(facts.packages):
        pkg = facts.packages[name]
        if not pkg.installed:
            continue
        v = classifier.classify(name, pkg)
        package_docs.append({"name": name, "version": pkg.version, "core": v.core, "reason": v.reason,
                             "detail": v.text,
                             "manual": name in manual_set})
    manual_non_core = [p["name"] for p in package_docs if not p["core"] and p["manual"]]

    cron_docs = []
    for job in facts.cron:
        core = classifier.classify(job.package).core if job.package else False
        target = None
        if not core:
            sug = suggest.suggest({"command": _command_words(job.command)}, containers)
            target = sug.container
        cron_docs.append({"source": job.source, "schedule": job.schedule, "user": job.user, "command": job.command,
                          "package": job.package, "core": core, "suggestion": target})

    all_findings: list[Finding] = []
    all_findings += findings.guard_findings(external.guard)
    all_findings += findings.container_findings(strategy, external.guests)
    all_findings += findings.service_findings(rows)
    all_findings += findings.cron_findings(cron_docs)
    all_findings += findings.docker_findings(facts.container_runtimes, facts.pve_detected)
    # A package that exists to pull in a service's package (nginx -> nginx-common) leaves with that service.
    with_services = service_packages | (set(manual_non_core) & graph.dependents(service_packages))
    all_findings += findings.package_findings(manual_non_core, with_services)
    all_findings += findings.backup_findings(external.backup)
    all_findings += findings.certificate_findings(external.certs)
    all_findings += external.updates
    all_findings += findings.host_findings(facts.pve_detected, policy.core_roots)
    order = {s: i for i, s in enumerate(findings.SEVERITIES)}
    all_findings.sort(key=lambda f: (order[f.severity], f.category, f.id))
    result = score.compute(all_findings)

    unavailable = [asdict(u) for u in facts.unavailable]
    for fact, available, reason in (("guests", external.guests.available, external.guests.reason),
                                    ("guard", external.guard is not None, external.guard_reason),
                                    ("backup coverage", external.backup is not None,
                                     external.backup_reason),
                                    ("certificates", external.certs is not None, external.certs_reason)):
        if not available:
            unavailable.append({"fact": fact, "reason": reason})

    return {
        "schema": SCHEMA,
        "generated_at": iso_utc((now or datetime.now(UTC)).replace(microsecond=0)),
        "host": {
            "hostname": facts.hostname, "root": str(facts.root), "live": facts.live,
            "pve": {"detected": facts.pve_detected,
                    "evidence": facts.pve_evidence or "no proxmox-ve/pve-manager package, no /etc/pve"},
            "systemd_running": facts.systemd_running,
            "backend": backend,
            "core_roots": list(strategy.core_roots()),
            # per core function of the strategy: which of the packages that implement it are not here
            "core_functions": [{"name": f.name, "packages": list(f.packages),
                                "missing": [p for p in f.packages if p not in graph.installed]}
                               for f in strategy.core_functions],
        },
        "score": {"value": result.value, "formula": result.formula, "explanation": result.explanation,
                  "counts": result.counts, "penalty": result.penalty},
        "findings": [f.as_dict() for f in all_findings],
        "services": service_docs,
        "dependency_map": dep_docs,
        "packages": {
            "installed": len(package_docs),
            "core": sum(1 for p in package_docs if p["core"]),
            "non_core": sum(1 for p in package_docs if not p["core"]),
            "manual_non_core": manual_non_core,
            "items": package_docs,
        },
        "sockets": [{"proto": s.proto, "address": s.address, "port": s.port, "pid": s.pid, "process": s.process,
                     "unit": s.unit} for s in facts.sockets],
        "cron": cron_docs,
        "container_runtimes": facts.container_runtimes,
        "guests": {"available": external.guests.available, "reason": external.guests.reason,
                   "backend": external.guests.backend, "items": external.guests.guests},
        "backup": _backup_doc(external),
        "unavailable": unavailable,
        "needs_root": facts.needs_root,
    }


def _backup_doc(external: External) -> dict[str, Any]:
    cov = external.backup
    if cov is None:
        return {"available": False, "reason": external.backup_reason, "backend": "", "source": "", "items": []}
    return {"available": True, "reason": "", "backend": cov.backend, "source": cov.source, "items": cov.rows()}


def manually_installed(facts: HostFacts, graph: DependencyGraph) -> set[str]:
    """Installed packages someone asked for: apt's marks when it has them; without extended_states
    (a debootstrap root, dpkg -i only) the leaf packages, which nothing installed depends on."""
    installed = {n for n, p in facts.packages.items() if p.installed}
    if not facts.is_unavailable("manual/automatic marks"):
        return installed - facts.auto_installed
    needed = {dep for deps in graph.edges.values() for dep in deps}
    return installed - needed


def _command_words(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = command.split()
    return [a.rsplit("/", 1)[-1] for a in argv[:8] if a and a[0] not in "-|&;><(" and "=" not in a]
