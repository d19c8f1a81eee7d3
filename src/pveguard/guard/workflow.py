"""`pveguard install PKG...`: "is this a core PVE function? yes -> host; no -> container".

Each package is classified as the apt hook would classify it. Core packages are reported as fit for
the host (and installed there only with `--on-host`, through apt, so the hook sees them too).
Non-core packages go into the strategy container whose components match (or `--container`), through
the backend's exec; the container is created first when the strategy has it but it does not exist.
Every decision is recorded in the ledger.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pveguard.context import AppContext
from pveguard.errors import EXIT_FAILED, EXIT_REFUSED, PveguardError, UsageError
from pveguard.guard.decide import fitting_container
from pveguard.guard.hook import DPKG_STATUS
from pveguard.packages.classify import REASON_TEXT, Classifier
from pveguard.packages.status import read_status

Target = Literal["host", "container", "none"]
Progress = Callable[[str], None]


@dataclass
class PackagePlan:
    package: str
    core: bool
    reason: str
    target: Target
    container: str | None = None
    status: Literal["planned", "installed", "fit-for-host", "failed", "no-container"] = "planned"
    version: str | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class WorkflowResult:
    items: list[PackagePlan] = field(default_factory=list)
    dry_run: bool = False

    @property
    def refused(self) -> list[PackagePlan]:
        """Packages no strategy container hosts (and not core): nothing installs them."""
        return [i for i in self.items if i.target == "none"]

    @property
    def ok(self) -> bool:
        return not self.refused and all(i.status != "failed" for i in self.items)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return 0
        return EXIT_REFUSED if self.refused else EXIT_FAILED

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "ok": self.ok, "refused": [i.package for i in self.refused],
                "packages": [i.as_dict() for i in self.items]}


def evaluate(app: AppContext, packages: list[str], container: str | None = None) -> list[PackagePlan]:
    """Classify each package (as the hook does) and choose where it goes; no changes."""
    strategy = app.strategy_or_default()
    policy = strategy.installation_policy
    names = {c.name for c in strategy.containers}
    if container is not None and container not in names:
        raise UsageError(f"the strategy has no container named {container!r}",
                         hint="known: " + ", ".join(sorted(names)))
    try:
        status = read_status(DPKG_STATUS)
    except OSError:
        status = {}  # not a Debian host (e.g. a workstation driving a remote PVE): static rules only
    classifier = Classifier(status, strategy.core_roots(), tuple(policy.extra_allowed))
    pairs = [(c.name, tuple(c.components)) for c in strategy.containers]
    out: list[PackagePlan] = []
    for spec in packages:
        name = spec.split("=", 1)[0].strip()
        verdict = classifier.classify(name)
        reason = REASON_TEXT.get(verdict.reason, verdict.reason)
        if verdict.core and container is None:
            out.append(PackagePlan(spec, True, reason, "host"))
            continue
        where = container or fitting_container(name, pairs)
        if where is None:
            out.append(PackagePlan(spec, verdict.core, reason, "none", status="no-container", message=(
                f"no strategy container lists a component matching {name!r}: choose one with --container NAME "
                f"(known: {', '.join(sorted(names))}) or add it to a container's components")))
            continue
        out.append(PackagePlan(spec, verdict.core, reason, "container", where))
    return out


def run(app: AppContext, packages: list[str], *, container: str | None = None, dry_run: bool = False,
        on_host: bool = False, progress: Progress | None = None, backend: Any = None) -> WorkflowResult:
    """Evaluate, then (unless dry_run) install each package where it belongs."""
    say = progress or (lambda _m: None)
    if not packages:
        raise UsageError("no packages given", hint="e.g. pveguard install grafana")
    result = WorkflowResult(evaluate(app, packages, container), dry_run)
    for item in result.items:
        app.record("guard.workflow.decision", item.package, core=item.core, reason=item.reason,
                   goes_to=item.target, container=item.container, dry_run=dry_run, on_host=on_host)
    if dry_run or result.refused:
        # One package without a place refuses the whole run, as the hook refuses a whole transaction.
        for item in result.items:
            if item.target == "host":
                item.message = f"would install on the host{'' if on_host else ' (with --on-host)'}"
            elif item.target == "container":
                item.message = f"would install in container {item.container} (created first if missing)"
            if result.refused and not dry_run and item.target != "none":
                item.message = f"not installed: {', '.join(i.package for i in result.refused)} has no container"
        return result
    host_items = [i for i in result.items if i.target == "host"]
    if host_items:
        if on_host:
            _install_on_host(app, host_items, say)
        else:
            for i in host_items:
                i.status = "fit-for-host"
                i.message = "core PVE package: fit for the host; run again with --on-host to install it here"
    by_container: dict[str, list[PackagePlan]] = {}
    for i in result.items:
        if i.target == "container" and i.container:
            by_container.setdefault(i.container, []).append(i)
    for name, items in by_container.items():
        _install_in_container(app, name, items, say, backend)
    return result


def _install_on_host(app: AppContext, items: list[PackagePlan], say: Progress) -> None:
    specs = [i.package for i in items]
    say(f"installing on the host: {' '.join(specs)} (the apt guard checks the transaction)")
    proc = subprocess.run(["apt-get", "install", "-y", *specs], check=False, capture_output=True, text=True)
    for i in items:
        if proc.returncode == 0:
            i.status, i.message = "installed", "installed on the host"
        else:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
            i.status, i.message = "failed", f"apt-get exited {proc.returncode}: {tail}"
    app.record("guard.workflow.host", ",".join(specs), packages=specs, returncode=proc.returncode)


def _install_in_container(app: AppContext, name: str, items: list[PackagePlan], say: Progress,
                          backend: Any) -> None:
    from pveguard.provision.ensure import ensure_container, install_packages  # type: ignore[import-untyped,unused-ignore]

    specs = [i.package for i in items]
    try:
        say(f"making sure container {name} exists and runs")
        be, guest = ensure_container(app, name, backend=backend)
        say(f"installing in {name} (CT {guest.vmid}): {' '.join(specs)}")
        install_packages(be, guest, specs)
        for i in items:
            pkg = i.package.split("=", 1)[0]
            r = be.exec(guest, ["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg])
            state, _, version = r.stdout.partition("\t")
            if r.ok and state.strip().endswith("installed"):
                i.status, i.version, i.message = "installed", version.strip(), f"installed in {name}"
            else:
                i.status, i.message = "failed", f"apt reported success but dpkg in {name} does not list {pkg}"
    except PveguardError as exc:
        for i in items:
            i.status, i.message = "failed", exc.message + (f" ({exc.hint})" if exc.hint else "")
        app.record("guard.workflow.container", name, packages=specs, ok=False, error=exc.message)
        return
    app.record("guard.workflow.container", name, packages=specs, ok=all(i.status == "installed" for i in items),
               vmid=guest.vmid, versions={i.package: i.version for i in items})


def render(result: WorkflowResult) -> None:
    """A table for people."""
    from pveguard.output import Col, FitTable, console

    table = FitTable(Col("package", 0, wrap=False), Col("classification", 3, min_width=12),
                     Col("where", 1, min_width=10, words=True), Col("status", 0, min_width=10),
                     Col("detail", 2, min_width=16),
                     title="install plan (dry run)" if result.dry_run else "install")
    for i in result.items:
        where = {"host": "host", "none": "no container"}.get(i.target, f"container {i.container}")
        table.add_row(i.package, ("core: " if i.core else "") + i.reason, where,
                      i.status + (f" {i.version}" if i.version else ""), i.message)
    console.print(table)
