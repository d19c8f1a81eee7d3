"""`pveguard backup run [--due]`: everything the backup policy asks for, in one pass for a timer.

Steps, each independent (one failing does not stop the others, and the run reports all):
host-configuration backup (restic) and its retention; on plain LXC, a vzdump-style archive per
container and the PVE-rule prune; verification (archives, restic check); offsite copies.
With ``due`` a step runs only when its calendar event says so; the last run is read from the
backups themselves (newest restic snapshot, newest archive per guest, the catalogue, the offsite
marker), so no extra state can go stale. Unlike pvescheduler, a run missed while the host was down
is caught up once (as PVE's ``repeat-missed``), because without a separate "last run" record
a skipped run would stay missed.

On Proxmox VE the container archives are made by PVE's own vzdump jobs (``backup apply``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pveguard.backup.archive import classify, plan_prune
from pveguard.backup.calendar import check_due, local_zone, parse
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import PveguardError

__all__ = ["RunReport", "StepResult", "is_due", "run_backups"]

# When verification and offsite copies last ran (their results also go to the ledger).
VERIFY_MARKER = "backup-verify.json"
OFFSITE_MARKER = "backup-offsite.json"


@dataclass
class StepResult:
    step: str
    status: str  # done, skipped, failed
    detail: str


@dataclass
class RunReport:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def add(self, step: str, status: str, detail: str) -> None:
        self.steps.append(StepResult(step, status, detail))


def is_due(schedule: str, last_run: datetime | None, now: datetime) -> bool:
    """Due when never run, or the first scheduled run after the last run has come."""
    if last_run is None:
        return True
    return check_due(parse(schedule), last_run, now, repeat_missed=True).state == "due"


def _step(report: RunReport, name: str, fn: Callable[[], str | None]) -> None:
    try:
        detail = fn()
    except PveguardError as exc:
        report.add(name, "failed", exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
        return
    except OSError as exc:
        report.add(name, "failed", f"{exc.strerror or exc}: {getattr(exc, 'filename', '')}")
        return
    report.add(name, "skipped" if detail is None else "done", detail or "not due")


def _notes(template: str, guest: Any) -> str:
    return (template.replace("{{guestname}}", guest.name).replace("{{vmid}}", str(guest.vmid))
            .replace("{{node}}", guest.node))  # fmt: skip


def run_backups(
    strategy: Any,
    host_config: Any,
    backend: Any | None,
    dump_dir: Path,
    due: bool,
    markers: Path,
    now: datetime | None = None,
    record: Callable[..., None] | None = None,
) -> RunReport:
    """Run the policy's backup steps. ``host_config`` is a HostConfigBackup; ``backend`` the
    connected backend (None = no container step); ``markers`` the directory (the state directory)
    where the last verification and offsite times are kept."""
    now = now or datetime.now(UTC)
    zone = local_zone()
    b = strategy.backup
    report = RunReport()
    rec = record or (lambda *a, **k: None)

    def hc() -> str | None:
        if not host_config.is_initialised():
            host_config.init()
        snaps = host_config.snapshots()
        if due and not is_due(b.host_config.schedule, snaps[-1].time if snaps else None, now):
            return None
        result = host_config.backup(b.host_config.paths)
        forgotten = host_config.forget(b.host_config.retention)
        rec("backup.host-config.run", host_config.restic.repository, snapshot=result.snapshot_id,
            skipped_missing=list(result.skipped_missing), forgotten=len(forgotten.removed))  # fmt: skip
        skipped = f"; not present: {', '.join(result.skipped_missing)}" if result.skipped_missing else ""
        return f"snapshot {result.snapshot_id}, {len(forgotten.removed)} forgotten{skipped}"

    _step(report, "host-config", hc)

    from pveguard.backends.lxc import LxcBackend

    if isinstance(backend, LxcBackend):
        from pveguard.backup.lxcdump import dump_container

        c = b.containers
        keep = _keep(c)
        from pveguard.backup.coverage import own_guests, policy_guest
        from pveguard.provision.instance import known_instance

        guests = [g for g in backend.list_guests() if policy_guest(g, c)]
        if c.guests != "all":  # this installation's (its marker), as `backup status` judges them
            guests = own_guests(backend, guests, known_instance(strategy, markers))
        for guest in guests:

            def one(guest: Any = guest) -> str | None:
                dump_dir.mkdir(parents=True, exist_ok=True)
                names = os.listdir(dump_dir)
                mine = classify(names).archives.get(("lxc", guest.vmid), [])
                last = max((a.timestamp(zone) or 0 for a in mine), default=None)
                last_dt = datetime.fromtimestamp(last, UTC) if last is not None else None
                if due and not is_due(c.schedule, last_dt, now):
                    return None
                result = dump_container(str(guest.vmid), guest.vmid, dump_dir, backend.lxcpath, mode=c.mode,
                                        notes=_notes(c.notes_template, guest))  # fmt: skip
                plan = plan_prune(os.listdir(dump_dir), keep, zone, guest=("lxc", guest.vmid))
                removed = []
                for name in plan.delete:
                    if not (dump_dir / f"{name}.protected").exists():
                        (dump_dir / name).unlink(missing_ok=True)
                        removed.append(name)
                rec("backup.archives.dump", str(result.archive), mode=result.mode, size=result.size, pruned=removed)
                return f"{result.archive.name} ({result.size} bytes, {result.mode}); pruned {len(removed)} file(s)"

            _step(report, f"container {guest.vmid} ({guest.name})", one)
    elif backend is not None:
        report.add("containers", "skipped", f"the {backend.name} backend's own vzdump jobs back up containers")

    v = b.verification

    def verify() -> str | None:
        last = _read_time(markers / VERIFY_MARKER)
        if due and not is_due(v.schedule, last, now):
            return None
        restore_dir = markers / "restore-test" if v.restore_test and isinstance(backend, LxcBackend) else None
        summary = verify_all(host_config, dump_dir, v.restic_read_data_subset or None, restore_dir, rec)
        # Only a passed verification counts: a failed one stays due, so the next run tries again and
        # the audit keeps reporting it.
        _write_time(markers / VERIFY_MARKER, now)
        return summary

    if v.enabled:
        _step(report, "verification", verify)

    o = b.offsite

    def offsite() -> str | None:
        marker = markers / OFFSITE_MARKER
        last = _read_time(marker)
        if due and not is_due(o.schedule, last, now):
            return None
        done = []
        if o.type == "restic":
            from pveguard.backup.hostconfig import Restic

            target_pw = Path(str(host_config.restic.password_file) + ".offsite")
            copied = host_config.copy_to(Restic(o.target, target_pw, cache_dir=host_config.restic.cache_dir))
            done.append(f"restic copy: {len(copied)} snapshot(s)")
        elif o.type in ("directory", "sftp") and dump_dir.is_dir():
            from pveguard.backup.offsite import SftpTarget, sync_to_directory, sync_to_sftp

            listing = classify(os.listdir(dump_dir))
            files = [dump_dir / a.filename for items in listing.archives.values() for a in items]
            files += [dump_dir / n for n in listing.companions if not n.endswith(".protected")]
            if o.type == "directory":
                result = sync_to_directory(files, Path(o.target))
            else:
                url = o.target if o.target.startswith("sftp://") else f"sftp://{o.target}"
                result = sync_to_sftp(files, SftpTarget.parse(url))
            done.append(f"{len(result.uploaded)} file(s) copied, {len(result.skipped)} already there")
        else:
            raise _Failed(f"offsite type {o.type!r} is not supported by 'backup run' yet")
        _write_time(marker, now)
        rec("backup.offsite", str(o.target), result="; ".join(done))
        return "; ".join(done)

    if o.type != "none":
        _step(report, "offsite", offsite)
    return report


class _Failed(PveguardError):
    """A step that ran and found a problem."""


def verify_all(
    host_config: Any,
    dump_dir: Path,
    read_data_subset: str | None,
    restore_test_dir: Path | None,
    record: Callable[..., None] | None = None,
) -> str:
    """Verify every archive in ``dump_dir`` (catalogue), ``restic check`` the host-config
    repository, and - with ``restore_test_dir`` - test-restore the newest archive of each guest
    into a throwaway container there. Raises with the names of what failed."""
    from pveguard.backup.verify import verify_directory

    rec = record or (lambda *a, **k: None)
    parts: list[str] = []
    problems: list[str] = []
    if dump_dir.is_dir():
        results = verify_directory(dump_dir)
        bad = [r.filename for r in results if not r.ok]
        rec("backup.archives.verify", str(dump_dir), checked=len(results), bad=bad)
        if bad:
            problems.append(f"archives failed verification: {', '.join(bad)}")
        parts.append(f"{len(results) - len(bad)} of {len(results)} archive(s) ok")
        if restore_test_dir is not None:
            from pveguard.backup.lxcdump import restore_test

            zone = local_zone()
            for (kind, _vmid), items in sorted(classify(os.listdir(dump_dir)).archives.items()):
                newest = max(items, key=lambda a: a.timestamp(zone) or 0)
                if kind != "lxc" or newest.filename in bad:
                    continue
                result = restore_test(dump_dir / newest.filename, restore_test_dir)
                rec("backup.archives.restore-test", newest.filename, ok=result.ok, problems=result.problems)
                if result.ok:
                    parts.append(f"restore test of {newest.filename} ok")
                else:
                    problems.append(f"restore test of {newest.filename} failed: {'; '.join(result.problems)}")
    if host_config.is_initialised():
        host_config.check(read_data_subset)
        parts.append(f"restic check ok (read {read_data_subset or 'no data'})")
    if problems:
        raise _Failed("; ".join(problems))
    return "; ".join(parts) or "nothing to verify"


def _keep(containers: Any) -> KeepPolicy:
    if containers.keep is not None:
        k = containers.keep
        return KeepPolicy(last=k.last or 0, hourly=k.hourly or 0, daily=k.daily or 0, weekly=k.weekly or 0,
                          monthly=k.monthly or 0, yearly=k.yearly or 0)  # fmt: skip
    return KeepPolicy.for_duration(containers.retention)


def _read_time(path: Path) -> datetime | None:
    try:
        return datetime.fromisoformat(json.loads(path.read_text())["last"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_time(path: Path, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"last": when.isoformat()}) + "\n")
    os.replace(tmp, path)
