"""Carrying out a Plan: create, update, resume, delete -- each change a ledger entry with before/after.

One container's failure does not stop the others; the report lists what failed and why, and a
second apply picks up where this one stopped (journal + tag/marker identification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pveguard.backends.base import Backend, ExecResult, Guest
from pveguard.errors import BackendError, PveguardError
from pveguard.provision.desired import NET_KEYS, Desired, desired_fields, format_propstring, parse_propstring
from pveguard.provision.journal import Journal
from pveguard.provision.plan import Action, FieldChange, Plan

Progress = Callable[[str], None]


class Recorder(Protocol):
    """What the applier needs from the AppContext: the ledger."""

    def record(self, action: str, target: str = "", **details: Any) -> None: ...


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    restart_needed: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Everything the strategy asks for is in place (nothing failed, no conflict left)."""
        return not self.failed and not self.skipped

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "resumed": self.resumed,
                "deleted": self.deleted, "skipped": self.skipped, "restart_needed": self.restart_needed,
                "failed": self.failed, "ok": self.ok}


def update_params(changes: list[FieldChange], config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """PVE config parameters (and keys to delete) that turn `config` into the desired fields.

    net0 keeps what pveguard does not manage (name, hwaddr, type, mtu...) so a change never gives the
    container a new MAC address.
    """
    params: dict[str, Any] = {}
    delete: list[str] = []
    for c in changes:
        if not c.possible:
            continue
        if c.field == "net0":
            current = parse_propstring(str(config.get("net0", "")))
            merged = {k: v for k, v in current.items() if k not in NET_KEYS}
            merged.update(parse_propstring(c.new))
            merged.setdefault("name", "eth0")
            params["net0"] = format_propstring(merged, first=("name", "bridge"))
        elif c.field in ("features", "startup") and c.new == "":
            delete.append(c.field)
        else:
            params[c.field] = c.new
    if params and config.get("digest"):
        # PVE refuses the write if someone changed the config since we read it
        params["digest"] = config["digest"]
    return params, delete


def install_packages(backend: Backend, guest: Guest, packages: list[str], timeout: float = 1800) -> ExecResult:
    """apt-get update + install inside the guest; BackendError saying which layer failed (ssh to the
    node, the container, its network, its apt sources) and its fix (pveguard.provision.aptfailure)."""
    from pveguard.provision.aptfailure import explain

    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    update = backend.exec(guest, [*env, "apt-get", "update", "-q"], timeout=timeout)
    install = None
    if update.ok:
        install = backend.exec(guest, [*env, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                               timeout=timeout)
        if install.ok:
            return install
    failure = explain(update, install, container=guest.name, vmid=guest.vmid, node=guest.node, packages=packages)
    raise BackendError(failure.message, hint=failure.hint)


class Applier:
    """Runs a plan against a backend, journaling creates and recording every change in the ledger."""

    def __init__(self, backend: Backend, recorder: Recorder, journal: Journal,
                 progress: Progress | None = None, done: Progress | None = None) -> None:
        self.backend = backend
        self.recorder = recorder
        self.journal = journal
        self.progress = progress or (lambda _m: None)
        self.done = done or (lambda _m: None)

    def apply(self, plan: Plan) -> ApplyReport:
        report = ApplyReport()
        journaled = {j.name for j in self.journal.entries()}
        for a in plan.actions:
            if a.kind == "unchanged":
                if a.name in journaled and a.guest is not None:
                    self.journal.done(a.name)  # an interrupted create with nothing left to do
                continue
            if a.kind == "conflict":
                report.skipped.append(a.name)
                continue
            try:
                getattr(self, f"_{a.kind}")(a, report)
            except PveguardError as exc:
                report.failed[a.name] = str(exc)
                self.recorder.record(f"provision.{a.kind}.failed", _target(a), name=a.name, error=exc.message)
                self.done(f"failed: {a.kind} {a.name}")
        return report

    # --- the actions ----------------------------------------------------------------------------

    def _create(self, a: Action, report: ApplyReport) -> None:
        assert a.desired is not None
        d = a.desired
        self.journal.begin(d.spec.name)
        self.progress(f"creating {d.spec.name}")
        guest = self.backend.create(d.spec, progress=self.progress)
        self.journal.set(d.spec.name, "created", guest.vmid, guest.node)
        self.recorder.record("provision.create", f"ct/{guest.vmid}", name=d.spec.name, node=guest.node,
                             before=None, after=desired_fields(d.spec))
        self.done(f"created {d.spec.name} as CT {guest.vmid} on {guest.node}")
        self._finish(guest, d, ["start", "packages"])
        report.created.append(d.spec.name)

    def _resume(self, a: Action, report: ApplyReport) -> None:
        assert a.guest is not None and a.desired is not None
        self._finish(a.guest, a.desired, a.resume)
        report.resumed.append(a.name)

    def _finish(self, guest: Guest, d: Desired, steps: list[str]) -> None:
        """The steps after creation: start, then packages; the journal advances after each."""
        if guest.lock or "wait" in steps:
            self.backend.wait_unlocked(guest, f"waiting for the creation of {guest.name}", self.progress)
            guest.lock = None
        if "start" in steps:
            if guest.status != "running":
                self.progress(f"starting {guest.name} (CT {guest.vmid})")
                self.backend.start(guest)
                guest.status = "running"
                self.recorder.record("provision.start", f"ct/{guest.vmid}", name=guest.name,
                                     before={"status": "stopped"}, after={"status": "running"})
                self.done(f"started {guest.name}")
            self.journal.set(guest.name, "started", guest.vmid, guest.node)
        if "packages" in steps and d.packages:
            self.progress(f"installing {', '.join(d.packages)} in {guest.name}")
            install_packages(self.backend, guest, d.packages)
            self.recorder.record("provision.packages", f"ct/{guest.vmid}", name=guest.name,
                                 before=None, after={"installed": list(d.packages)})
            self.done(f"installed {', '.join(d.packages)} in {guest.name}")
        self.journal.done(guest.name)

    def _update(self, a: Action, report: ApplyReport) -> None:
        assert a.guest is not None and a.config is not None
        params, delete = update_params(a.changes, a.config)
        if params or delete:
            self.progress(f"updating {a.name} (CT {a.vmid})")
            pending = self.backend.update(a.guest, params, delete or None)
            applied = [c for c in a.changes if c.possible]
            self.recorder.record("provision.update", _target(a), name=a.name, node=a.node,
                                 before={c.field: c.old for c in applied}, after={c.field: c.new for c in applied},
                                 pending_restart=pending)
            if a.guest.status == "running":
                need = sorted(set(pending) | {c.field for c in applied if not c.live})
                if need:
                    report.restart_needed[a.name] = need
            self.done(f"updated {a.name}: " + "; ".join(c.text() for c in applied))
        if a.resume and a.desired is not None:
            self._finish(a.guest, a.desired, a.resume)
        report.updated.append(a.name)

    def _delete(self, a: Action, report: ApplyReport) -> None:
        assert a.guest is not None
        self.progress(f"deleting {a.name} (CT {a.vmid})")
        if a.guest.status == "running":
            self.backend.stop(a.guest)
        self.backend.destroy(a.guest)
        self.recorder.record("provision.delete", _target(a), name=a.name, node=a.node, before=a.config, after=None)
        self.journal.done(a.name)
        self.done(f"deleted {a.name} (CT {a.vmid})")
        report.deleted.append(a.name)


def _target(a: Action) -> str:
    return f"ct/{a.vmid}" if a.vmid is not None else f"ct/{a.name}"
