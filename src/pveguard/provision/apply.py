"""Carrying out a Plan: create, update, resume, delete -- each change recorded before and after.

Every mutating step writes `provision.<step>.intent` to the ledger before its request (a create's
with the VMID it will use) and `provision.<step>` with its result (ok, failed, interrupted) after,
so an apply killed half-way leaves an intent without a result. One container's failure does not
stop the others; the report lists what failed and why, and a second apply picks up where this one
stopped (journal + tag/marker identification).

Creates run concurrently when the backend allows it (`Backend.create_concurrency`, PVE: 8 at once,
PVEGUARD_PVE_CREATE_CONCURRENCY): each container's create -> start -> packages runs in a worker thread,
node and VMID are chosen for all of them first (`Backend.prepare_creates`), and the ledger, journal
and progress lines are written under one lock, each intent still before its request. Updates, resumes
and deletes follow one after another. Ctrl-C stops the creates at their next poll; the report names
those it cut short (their intents get an "interrupted" result) and those never begun.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from pveguard.backends.base import Backend, ExecResult, GrowTo, Guest, GuestSpec
from pveguard.errors import BackendError, PveguardError
from pveguard.provision.desired import NET_KEYS, Desired, desired_fields, format_propstring, parse_propstring
from pveguard.provision.final_backup import data_volumes, left_out_of_backups
from pveguard.provision.journal import Journal
from pveguard.provision.plan import Action, FieldChange, Plan

Progress = Callable[[str], None]
# Takes the final backup of a guest about to be deleted; returns where it went, or None when the
# backup policy does not cover that guest.
FinalBackup = Callable[[Guest], "str | None"]
# Re-reads the firewall after the container changes and converges it, recording each change through
# the given callback (step, target, name, result or None for the intent, details); returns what changed.
FirewallStep = Callable[[Callable[..., None]], list[str]]


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
    final_backups: dict[str, str] = field(default_factory=dict)
    # set when Ctrl-C stopped the run: "<action> <name>" in progress (", "-joined when creates ran at once),
    # and the actions never begun
    interrupted: str | None = None
    not_started: list[str] = field(default_factory=list)
    firewall: list[str] = field(default_factory=list)  # firewall changes made (security.isolation)
    rbac: list[str] = field(default_factory=list)  # users, roles, tokens, ACLs changed (security.access.rbac)
    serve: list[str] = field(default_factory=list)  # what installing serve in serve.container did

    @property
    def ok(self) -> bool:
        """Everything the strategy asks for is in place (nothing failed, no conflict left)."""
        return not self.failed and not self.skipped and self.interrupted is None

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "resumed": self.resumed,
                "deleted": self.deleted, "skipped": self.skipped, "restart_needed": self.restart_needed,
                "failed": self.failed, "final_backups": self.final_backups, "interrupted": self.interrupted,
                "not_started": self.not_started, "firewall": self.firewall, "rbac": self.rbac,
                "serve": self.serve, "ok": self.ok}


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C during apply, carrying what the run did and left (the CLI reports it, exit 130)."""

    def __init__(self, report: ApplyReport) -> None:
        super().__init__()
        self.report = report


def update_params(changes: list[FieldChange], config: dict[str, Any],
                  spec: GuestSpec | None = None) -> tuple[dict[str, Any], list[str]]:
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
        elif c.field == "mp0":
            # a new volume (the backend allocates it on its storage) or an existing one grown to a size
            params["mp0"] = (spec.backup_volume if not c.old and spec is not None
                             else GrowTo(parse_propstring(c.new)["size"]))
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
                 progress: Progress | None = None, done: Progress | None = None,
                 final_backup: FinalBackup | None = None, firewall: FirewallStep | None = None,
                 rbac: FirewallStep | None = None, serve: FirewallStep | None = None) -> None:
        self.backend = backend
        self.recorder = recorder
        self.journal = journal
        self.progress = progress or (lambda _m: None)
        self.done = done or (lambda _m: None)
        self.final_backup = final_backup
        self.firewall = firewall
        self.rbac = rbac
        self.serve = serve
        # concurrent creates write the ledger, the journal and the terminal one at a time
        self._lock = threading.RLock()
        self.recorder = _Serialized(recorder, self._lock)
        self.journal = _Serialized(journal, self._lock)  # type: ignore[assignment]
        self.progress = _locked(self.progress, self._lock)
        self.done = _locked(self.done, self._lock)
        self._local = threading.local()

    @property
    def _open(self) -> list[tuple[str, str, str]]:
        """This thread's intents without a result yet: (step, target, name) -- one create per thread."""
        opened: list[tuple[str, str, str]] | None = getattr(self._local, "open", None)
        if opened is None:
            opened = self._local.open = []
        return opened

    def apply(self, plan: Plan) -> ApplyReport:
        report = ApplyReport()
        for name in plan.stale_journal:
            self.journal.done(name)  # nothing is left to finish for it (see plan.resolve_journal)
        todo = [a for a in plan.actions if a.kind in ("create", "update", "resume", "delete")]
        report.skipped = [a.name for a in plan.actions if a.kind == "conflict"]
        creates = [a for a in todo if a.kind == "create"]
        width = min(max(1, self.backend.create_concurrency), len(creates))
        if width > 1:
            todo = [a for a in todo if a.kind != "create"]
            self._create_concurrently(creates, width, report, todo)
        for i, a in enumerate(todo):
            try:
                getattr(self, f"_{a.kind}")(a, report)
            except PveguardError as exc:
                report.failed[a.name] = str(exc)
                self._close_all("failed", error=exc.message)
                self.done(f"failed: {a.kind} {a.name}")
            except KeyboardInterrupt:
                report.interrupted = f"{a.kind} {a.name}"
                report.not_started = [f"{b.kind} {b.name}" for b in todo[i + 1:]]
                self._close_all("interrupted")
                raise ApplyInterrupted(report) from None
        for what, step, changes in (("firewall", self.firewall, plan.firewall.changes),
                                    ("rbac", self.rbac, plan.rbac.changes),
                                    ("serve", self.serve, plan.serve.changes)):
            if step is None or not (changes or report.created or report.updated):
                continue
            # after the containers: a container created now gets its firewall, token and serve in the same run
            try:
                self.progress(f"converging the {what}")
                texts = step(self._fw_record)
                setattr(report, what, texts)
                for text in texts:
                    self.done(f"{what}: {text}")
            except PveguardError as exc:
                report.failed[what] = str(exc)
                self._close_all("failed", error=exc.message)
                self.done(f"failed: {what}")
            except KeyboardInterrupt:
                report.interrupted = what
                self._close_all("interrupted")
                raise ApplyInterrupted(report) from None
        return report

    def _create_concurrently(self, creates: list[Action], width: int, report: ApplyReport,
                             after: list[Action]) -> None:
        """Up to `width` creates at once, each with its start and packages; one failure stops none of the
        others. Ctrl-C: the running ones stop at their next poll (backend.interrupt) and are reported as
        interrupted, the queued ones as not started, with `after` (the actions that follow)."""
        state: dict[str, str] = {}  # name -> "running" | "done" | "interrupted"

        def one(a: Action) -> None:
            if stopping.is_set():
                return
            with self._lock:
                state[a.name] = "running"
            try:
                self._create(a, report)
                state[a.name] = "done"
            except PveguardError as exc:
                with self._lock:
                    report.failed[a.name] = str(exc)
                self._close_all("failed", error=exc.message)
                self.done(f"failed: create {a.name}")
                state[a.name] = "done"
            except KeyboardInterrupt:
                self._close_all("interrupted")
                state[a.name] = "interrupted"
            except BaseException as exc:  # a bug: its intents get a result, then it surfaces in the main thread
                self._close_all("failed", error=f"{type(exc).__name__}: {exc}")
                state[a.name] = "done"
                raise

        stopping = threading.Event()
        try:
            self.backend.prepare_creates([a.desired.spec for a in creates if a.desired is not None])
        except PveguardError as exc:  # each create settles its node and VMID itself then, one at a time
            self.progress(f"choosing nodes and VMIDs up front failed ({exc.message}); each create chooses its own")
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="apply-create")
        futures: list[Future[None]] = [pool.submit(one, a) for a in creates]
        try:
            pending: set[Future[None]] = set(futures)
            while pending:  # short waits, so Ctrl-C reaches this (the main) thread at once
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # a bug in a worker surfaces here, as it would without threads
        except KeyboardInterrupt:
            stopping.set()
            self.backend.interrupt()
            for f in futures:
                f.cancel()
            _drain(futures)
            with self._lock:
                cut = [a for a in creates if state.get(a.name) in ("interrupted", "running")]
                report.interrupted = ", ".join(f"create {a.name}" for a in cut) or "create"
                report.not_started = [f"create {a.name}" for a in creates if a.name not in state] + \
                    [f"{b.kind} {b.name}" for b in after]
            raise ApplyInterrupted(report) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        report.created.sort(key=[a.name for a in creates].index)

    def _fw_record(self, step: str, target: str, name: str, result: str | None, **details: Any) -> None:
        if result is None:
            self._intent(step, target, name, **details)
        else:
            self._result(step, target, name, **details)

    # --- intent before, result after ---------------------------------------------------------------

    def _intent(self, step: str, target: str, name: str, **details: Any) -> None:
        self.recorder.record(f"provision.{step}.intent", target, name=name, **details)
        self._open.append((step, target, name))

    def _result(self, step: str, target: str, name: str, **details: Any) -> None:
        """The ok result of the newest open intent of `step` (the ledger pairs them by step and target)."""
        self.recorder.record(f"provision.{step}", target, name=name, result="ok", **details)
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == step and self._open[i][2] == name:
                del self._open[i]
                break

    def _close_all(self, result: str, **details: Any) -> None:
        """Every intent left open by a failure or Ctrl-C gets its result (a kill -9 leaves it open)."""
        while self._open:
            step, target, name = self._open.pop()
            self.recorder.record(f"provision.{step}", target, name=name, result=result, **details)

    # --- the actions ----------------------------------------------------------------------------

    def _create(self, a: Action, report: ApplyReport) -> None:
        assert a.desired is not None
        d = a.desired
        name = d.spec.name
        after = desired_fields(d.spec)

        def before_request(vmid: int, node: str) -> None:
            # journal and ledger know the VMID before PVE does: a kill from here on leaves a trace
            target = f"ct/{vmid}"
            if ("create", target, name) in self._open:
                return  # the same request sent again (its first answer was lost): already recorded
            for o in [o for o in self._open if o[0] == "create" and o[2] == name]:
                # the backend gave up that VMID (taken by another guest) and tries another one
                self._open.remove(o)
                self.recorder.record("provision.create", o[1], name=name, result="retried", retried_as=target)
            self.journal.begin(name, vmid, node)
            self._intent("create", target, name, node=node, before=None, after=after)

        self.progress(f"creating {name}")
        guest = self.backend.create(d.spec, progress=self.progress, before_request=before_request)
        self.journal.set(name, "created", guest.vmid, guest.node)
        self._result("create", f"ct/{guest.vmid}", name, node=guest.node, before=None, after=after)
        self.done(f"created {name} as CT {guest.vmid} on {guest.node}")
        self._finish(guest, d, ["start", "packages"])
        with self._lock:
            report.created.append(name)

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
                change = {"before": {"status": guest.status}, "after": {"status": "running"}}
                self._intent("start", f"ct/{guest.vmid}", guest.name, **change)
                self.backend.start(guest)
                self._result("start", f"ct/{guest.vmid}", guest.name, **change)
                guest.status = "running"
                self.done(f"started {guest.name}")
            self.journal.set(guest.name, "started", guest.vmid, guest.node)
        if "packages" in steps and d.packages:
            self.progress(f"installing {', '.join(d.packages)} in {guest.name}")
            change = {"before": None, "after": {"installed": list(d.packages)}}
            self._intent("packages", f"ct/{guest.vmid}", guest.name, **change)
            install_packages(self.backend, guest, d.packages)
            self._result("packages", f"ct/{guest.vmid}", guest.name, **change)
            self.done(f"installed {', '.join(d.packages)} in {guest.name}")
        self.journal.done(guest.name)

    def _update(self, a: Action, report: ApplyReport) -> None:
        assert a.guest is not None and a.config is not None
        params, delete = update_params(a.changes, a.config, a.desired.spec if a.desired else None)
        if params or delete:
            self.progress(f"updating {a.name} (CT {a.vmid})")
            applied = [c for c in a.changes if c.possible]
            change = {"node": a.node, "before": {c.field: c.old for c in applied},
                      "after": {c.field: c.new for c in applied}}
            self._intent("update", _target(a), a.name, **change)
            pending = self.backend.update(a.guest, params, delete or None)
            self._result("update", _target(a), a.name, pending_restart=pending, **change)
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
        volumes = data_volumes(a.config)
        self._intent("delete", _target(a), a.name, node=a.node, before=a.config, after=None,
                     data_volumes=sorted(volumes))
        if volumes and self.final_backup is not None:
            self.progress(f"final backup of {a.name} (CT {a.vmid}) before deleting it")
            self._intent("final-backup", _target(a), a.name, node=a.node,
                         left_out=left_out_of_backups(volumes))
            where = self.final_backup(a.guest)  # a failure stops here: nothing is deleted without it
            if where is not None:
                report.final_backups[a.name] = where
                self._result("final-backup", _target(a), a.name, archive=where)
                self.done(f"final backup of {a.name}: {where}")
            else:
                self._result("final-backup", _target(a), a.name, archive=None,
                             note="the backup policy does not cover this guest")
        self.progress(f"deleting {a.name} (CT {a.vmid})")
        if a.guest.status == "running":
            self.backend.stop(a.guest)
        self.backend.destroy(a.guest)
        self._result("delete", _target(a), a.name, node=a.node, before=a.config, after=None,
                     data_volumes=sorted(volumes))
        self.journal.done(a.name)
        self.done(f"deleted {a.name} (CT {a.vmid})")
        report.deleted.append(a.name)


class _Serialized:
    """Calls the wrapped object's methods under a lock (the ledger and the journal from worker threads)."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self._inner, self._lock = inner, lock

    def __getattr__(self, attr: str) -> Any:
        fn = getattr(self._inner, attr)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return fn(*args, **kwargs)
        return call


def _locked(fn: Progress, lock: threading.RLock) -> Progress:
    def say(msg: str) -> None:
        with lock:
            fn(msg)
    return say


def _drain(futures: list[Future[None]]) -> None:
    """Wait for the workers to stop after Ctrl-C (they do at their next poll); a second Ctrl-C stops waiting."""
    with contextlib.suppress(KeyboardInterrupt):
        wait(futures)


def _target(a: Action) -> str:
    return f"ct/{a.vmid}" if a.vmid is not None else f"ct/{a.name}"
