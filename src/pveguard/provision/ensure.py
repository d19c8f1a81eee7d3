"""For other parts (e.g. `pveguard install PKG`): make one strategy container exist and run, then use it."""

from __future__ import annotations

from pveguard.backends import connect
from pveguard.backends.base import Backend, ExecResult, Guest
from pveguard.context import AppContext
from pveguard.errors import ConfigError, OperationError
from pveguard.provision import floors
from pveguard.provision.apply import Applier, Progress, install_packages
from pveguard.provision.desired import check_limits, desired_state
from pveguard.provision.instance import identity
from pveguard.provision.journal import Journal
from pveguard.provision.observe import observe
from pveguard.provision.plan import Plan, managed_guests, plan
from pveguard.provision.runlock import apply_lock

__all__ = ["ensure_container", "install_packages", "run_in_container"]


def ensure_container(app: AppContext, name: str, *, backend: Backend | None = None,
                     progress: Progress | None = None) -> tuple[Backend, Guest]:
    """Create/converge the strategy container `name` if needed and make sure it runs.

    Returns the backend (opened from the strategy unless given) and the running guest. Every change is
    journaled and recorded in the ledger like `pveguard apply` does for that one container.
    """
    strategy = app.strategy
    instance = identity(strategy, app.store, app.record).id
    desired = [d for d in desired_state(strategy, instance, floors.load(app.store)) if d.spec.name == name]
    if not desired:
        raise ConfigError(f"the strategy has no container named {name!r}",
                          hint="known: " + ", ".join(c.name for c in strategy.containers))
    backend = backend or connect(strategy)
    check_limits(strategy, backend, app.strategy_path)
    journal = Journal(app.store)
    with apply_lock(app.state_dir, "container-first install"):
        action = next(a for a in plan(desired, observe(backend), instance=instance,
                                      journal=journal.entries()).actions if a.name == name)
        if action.kind == "conflict":
            raise OperationError(f"cannot provide container {name}: " + "; ".join(action.notes))
        if action.kind != "unchanged":
            report = Applier(backend, app, journal, progress=progress).apply(Plan([action]))
            if not report.ok:
                raise OperationError(f"cannot provide container {name}: {report.failed[name]}")
    # this instance's container of that name (another installation may have one with the same name)
    guest = next((g for g in managed_guests(observe(backend), instance) if g.name == name), None)
    if guest is None:
        raise OperationError(f"container {name} was created but is not listed by the backend",
                             hint="run 'pveguard status' and 'pveguard apply' to converge")
    if guest.status != "running":
        change = {"name": name, "before": {"status": guest.status}, "after": {"status": "running"}}
        app.record("provision.start.intent", f"ct/{guest.vmid}", **change)
        try:
            backend.start(guest)
        except (OperationError, KeyboardInterrupt) as exc:
            app.record("provision.start", f"ct/{guest.vmid}", result="failed" if isinstance(exc, OperationError)
                       else "interrupted", **change)
            raise
        app.record("provision.start", f"ct/{guest.vmid}", result="ok", **change)
        guest.status = "running"
    return backend, guest


def run_in_container(backend: Backend, guest: Guest, argv: list[str], *, input: str | None = None,
                     timeout: float = 1800) -> ExecResult:
    """Run argv inside the guest (through the backend's exec) and return its result."""
    return backend.exec(guest, argv, input=input, timeout=timeout)
