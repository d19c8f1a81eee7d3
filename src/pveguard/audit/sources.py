"""What the audit asks other parts of pveguard: the guard's own check, the backend's guests and the
backup module's per-guest compliance. Each answer may be unavailable; the reason is carried into
the report.

All three are called directly: `pveguard.guard.install.guard_findings`, `pveguard.backends.connect`
and `pveguard.backup.coverage.collect` (the same function `pveguard backup status` uses).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from pveguard.audit.assemble import External
from pveguard.audit.findings import GuestView
from pveguard.backup.coverage import Coverage, collect
from pveguard.context import AppContext
from pveguard.errors import PveguardError
from pveguard.strategy.models import Strategy


def guests(strategy: Strategy, root: Path) -> tuple[GuestView, Any]:
    """The backend's guests plus each strategy container's config; (view, backend or None)."""
    if root != Path("/"):
        return GuestView(False, f"offline audit of {root}: guests are only listed for /"), None
    from pveguard.backends import connect

    backend = None
    try:
        backend = connect(strategy)
        listed = backend.list_guests()
    except PveguardError as exc:
        _close(backend)
        return GuestView(False, exc.message), None
    except Exception as exc:  # the audit reports a failing backend and goes on with the host facts
        _close(backend)
        return GuestView(False, f"backend not reachable: {type(exc).__name__}: {exc}"), None
    view = GuestView(True, "", getattr(backend, "name", type(backend).__name__))
    wanted = {c.name for c in strategy.containers}
    view.listed = list(listed)
    for g in listed:
        view.guests.append({"vmid": g.vmid, "name": g.name, "node": g.node, "type": g.type, "status": g.status,
                            "managed": g.managed, "tags": list(g.tags)})
        if g.name in wanted:
            try:
                view.configs[g.name] = dict(backend.get_config(g))
            except Exception as exc:  # one unreadable config must not hide the others
                text = exc.message if isinstance(exc, PveguardError) else f"{type(exc).__name__}: {exc}"
                view.reason += f"config of {g.name} unavailable: {text}; "
    return view, backend


def _close(backend: Any) -> None:
    if backend is not None:
        # closing a broken connection may fail too; there is nothing left to report then
        with contextlib.suppress(Exception):
            backend.close()


def guard(ctx: AppContext, root: Path) -> tuple[list[Any] | None, str]:
    """The guard's self-check for the live host (its file states live in this host's state database)."""
    from pveguard.guard.install import guard_findings

    if root != Path("/"):
        return None, f"offline audit of {root}: the guard's self-check reads this host's state database"
    if not (ctx.state_dir / "pveguard.db").exists():
        # The guard records what it installed in the state database; without one it was never installed.
        # Asking its self-check would create the database, and the audit writes nothing.
        return [{"id": "guard:not-installed", "severity": "high", "title": "the apt install guard is not installed",
                 "detail": f"no pveguard state database in {ctx.state_dir}",
                 "fix": "run 'pveguard guard install'"}], ""
    try:
        return list(guard_findings(ctx)), ""
    except PveguardError as exc:
        return None, f"the guard's self-check failed: {exc.message}"
    except (OSError, sqlite3.Error) as exc:
        return None, f"the guard's self-check could not read its files: {exc}" + (
            " (run the audit as root)" if os.geteuid() != 0 else "")


def backup_coverage(ctx: AppContext, strategy: Strategy, view: GuestView, backend: Any,
                    now: datetime | None = None) -> tuple[Coverage | None, str]:
    """The backup policy's verdict per guest (as `backup status`), or None and why not."""
    if not view.available or backend is None:
        return None, "needs the guest list, which is unavailable"
    try:
        from pveguard.provision.instance import known_instance

        by_name = {g.name: g.vmid for g in view.listed}
        configs = {by_name[n]: c for n, c in view.configs.items() if n in by_name}
        return collect(strategy, backend, ctx.state_dir, now=now, guests=view.listed,
                       instance=known_instance(strategy, ctx.state_dir), configs=configs), ""
    except PveguardError as exc:
        return None, f"backup compliance check failed: {exc.message}"
    except Exception as exc:  # reported as unavailable, like any other fact the audit could not read
        return None, f"backup compliance check failed: {type(exc).__name__}: {exc}"


def external(ctx: AppContext, strategy: Strategy, root: Path, now: datetime | None = None) -> External:
    """Everything the audit needs from the backend, the guard and the backup module (``now``: judge
    the backups as of then; default the current time)."""
    view, backend = guests(strategy, root)
    try:
        guard_result, guard_reason = guard(ctx, root)
        coverage, backup_reason = backup_coverage(ctx, strategy, view, backend, now)
        cert_report, certs_reason = certificates(strategy, view, backend)
    finally:
        _close(backend)
    from pveguard.updates.state import findings as update_findings

    return External(view, guard_result, guard_reason, coverage, backup_reason, backend=_backend_name(strategy, root),
                    certs=cert_report, certs_reason=certs_reason,
                    updates=update_findings(Path(ctx.state_dir), {c.name for c in strategy.containers}))


def certificates(strategy: Strategy, view: GuestView, backend: Any) -> tuple[Any, str]:
    """Node and endpoint certificates (as `pveguard certs`), or None and why not."""
    from pveguard.security.certs import collect

    if not view.available or backend is None:
        return None, "needs the backend, which is unavailable"
    try:
        return collect(strategy, backend), ""
    except PveguardError as exc:
        return None, f"reading the certificates failed: {exc.message}"
    except Exception as exc:  # reported as unavailable, like any other fact the audit could not read
        return None, f"reading the certificates failed: {type(exc).__name__}: {exc}"


def _backend_name(strategy: Strategy, root: Path) -> str | None:
    """The backend pveguard uses on this live host (environment included); None offline or when none
    fits, and the audit then judges from the audited root's packages."""
    if root != Path("/"):
        return None
    from pveguard.backends import choose

    try:
        return choose(strategy)
    except PveguardError:
        return None
