"""vzdump jobs in ``/cluster/backup`` from the backup policy: desired state, plan, apply.

Only this installation's jobs are touched: those whose comment carries its marker
(``managed-by: pveguard instance=<id>``, the same marker as in its containers' descriptions). The
user's own jobs, another installation's and legacy ones (the bare marker of older versions, or an
old ``pveguard-*`` id without a marker) are left alone and reported; ``pveguard backup adopt JOBID``
takes one over, explicitly and recorded. A plan holds plain API calls, so ``--dry-run`` shows
exactly what ``apply`` would send, and re-applying an applied policy plans nothing. The calls go
through the backend's checked call path (answer shapes, retries by meaning).

Also here: reading backup archives from a storage's content listing, for the compliance report.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pveguard.backends.base import MANAGED_MARKER, marker_line
from pveguard.backup.calendar import parse
from pveguard.backup.compliance import Archive
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import BackendError, OperationError, UsageError

__all__ = [
    "JobAdoption",
    "JobChange",
    "JobPlan",
    "adopt_job",
    "apply_plan",
    "archives_from_content",
    "container_job",
    "job_adoption",
    "job_id_for",
    "owner_of",
    "plan_jobs",
    "with_job_marker",
]

# A job comment is one line (PVE keeps it in jobs.cfg), so the marker sits at its end, after any text of
# the user's: "<text> | managed-by: pveguard instance=<id>". Older versions wrote the bare marker.
_MARKER_RX = re.compile(
    r"(?:^|\s*\|\s*)" + re.escape(MANAGED_MARKER) + r"(?:\s+instance=(\S+))?\s*$")
# PVE's `pve-configid` (pve-common JSONSchema.pm) and the 50-character limit of /cluster/backup/{id}
_JOB_ID_RX = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)
LEGACY = "legacy"
UNMANAGED = "unmanaged"
# The keys pveguard decides; everything else in a job (mailto, bwlimit, ...) is the user's.
_MANAGED_KEYS = ("schedule", "vmid", "all", "storage", "mode", "compress", "prune-backups", "notes-template",
                 "enabled", "comment")  # fmt: skip


def container_job(
    schedule: str,
    storage: str,
    keep: KeepPolicy,
    vmids: Iterable[int] | None = None,
    mode: str = "snapshot",
    compress: str = "zstd",
    notes_template: str = "{{guestname}} (pveguard)",
    *,
    instance: str,
    job_id: str | None = None,
) -> dict[str, Any]:
    """The vzdump job the container-backup policy implies for this instance (``vmids`` None = all guests)."""
    parse(schedule)  # refuse what PVE would refuse, with our message
    if mode not in ("snapshot", "suspend", "stop"):
        raise UsageError(f"unknown backup mode {mode!r}", hint="use snapshot, suspend or stop")
    if compress not in ("0", "gzip", "lzo", "zstd"):
        raise UsageError(f"unknown compression {compress!r}", hint="use zstd, gzip, lzo or 0")
    if "\n" in notes_template:
        raise UsageError("the notes template must be a single line")
    job: dict[str, Any] = {
        "id": job_id or job_id_for(instance), "schedule": schedule, "storage": storage, "mode": mode,
        "compress": compress, "prune-backups": str(keep) or "keep-all=1", "notes-template": notes_template,
        "enabled": 1, "comment": marker_line(instance),
    }  # fmt: skip
    if vmids is None:
        job["all"] = 1
    else:
        ids = sorted(set(vmids))
        if not ids:
            raise UsageError("no guests to back up", hint="create the managed containers first, or back up all")
        job["vmid"] = ",".join(str(i) for i in ids)
    return job


def job_id_for(instance: str) -> str:
    """This instance's job id: two installations on one cluster must not want the same id."""
    jid = f"pveguard-{instance}"
    if _JOB_ID_RX.fullmatch(jid) and len(jid) <= 50:
        return jid
    return "pveguard-" + hashlib.sha256(instance.encode()).hexdigest()[:16]  # a '.' or a long pinned id


def owner_of(job: Mapping[str, Any]) -> str:
    """Whose job it is: an instance id, LEGACY (pveguard's marker without an instance, or an old
    ``pveguard-*`` id without any marker) or UNMANAGED (the user's)."""
    comment = str(job.get("comment", "") or "")
    m = _MARKER_RX.search(comment)
    if m:
        return m.group(1) or LEGACY
    if MANAGED_MARKER in comment:  # older versions took the bare marker anywhere in the comment
        return LEGACY
    return LEGACY if str(job.get("id", "")).startswith("pveguard-") else UNMANAGED


def with_job_marker(comment: str | None, instance: str) -> str:
    """The comment with its marker (if any) replaced by this instance's; the user's text stays in front."""
    text = _MARKER_RX.sub("", str(comment or "")).replace(MANAGED_MARKER, "").strip(" ;,|")
    return f"{text} | {marker_line(instance)}" if text else marker_line(instance)


def _norm(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "vmid":
        return tuple(sorted(int(v) for v in str(value).replace(" ", "").split(",") if v))
    if key == "prune-backups":
        if isinstance(value, Mapping):
            names = {"keep-last": "last", "keep-hourly": "hourly", "keep-daily": "daily", "keep-weekly": "weekly",
                     "keep-monthly": "monthly", "keep-yearly": "yearly"}  # fmt: skip
            keep_all = bool(int(value.get("keep-all", 0) or 0))
            return KeepPolicy(keep_all=keep_all, **{names[k]: int(v) for k, v in value.items() if k in names})
        return KeepPolicy.parse(str(value))
    if key in ("enabled", "all"):
        return int(value)
    return str(value)


@dataclass(frozen=True)
class JobChange:
    """One API call: create (POST), update (PUT with ``delete``) or remove (DELETE) a job."""

    action: str
    id: str
    params: dict[str, Any] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()  # human-readable "key: old -> new"

    def describe(self) -> str:
        if self.action == "create":
            return f"create vzdump job {self.id}: " + ", ".join(f"{k}={v}" for k, v in self.params.items())
        if self.action == "delete":
            return f"delete vzdump job {self.id} (this installation's, no longer in the policy)"
        return f"update vzdump job {self.id}: " + "; ".join(self.changes)


@dataclass(frozen=True)
class JobPlan:
    changes: tuple[JobChange, ...]
    unmanaged: tuple[str, ...]  # ids of the user's own jobs (never touched)
    foreign: dict[str, str] = field(default_factory=dict)  # job id -> the other instance that owns it
    legacy: tuple[str, ...] = ()  # jobs of an older pveguard (no instance): ours only once adopted

    @property
    def empty(self) -> bool:
        return not self.changes


def _conflict(jid: str, owner: str) -> UsageError:
    if owner == LEGACY:
        return UsageError(f"the vzdump job {jid!r} was made by an older pveguard and belongs to no installation",
                          hint=f"take it over with 'pveguard backup adopt {jid}' if it is this installation's")
    if owner == UNMANAGED:
        return UsageError(f"a vzdump job with id {jid!r} exists but is not managed by pveguard",
                          hint=f"rename or remove it in PVE, or take it over with 'pveguard backup adopt {jid}'")
    return UsageError(f"the vzdump job {jid!r} belongs to another pveguard instance {owner}",
                      hint=f"that installation adopted it; take it back with 'pveguard backup adopt {jid}' "
                           "(then that installation no longer manages it)")


def plan_jobs(desired: Sequence[Mapping[str, Any]], existing: Sequence[Mapping[str, Any]], instance: str) -> JobPlan:
    """Calls that turn this instance's jobs in ``existing`` (GET /cluster/backup) into ``desired``."""
    by_id = {str(j.get("id")): j for j in existing}
    owners = {jid: owner_of(j) for jid, j in by_id.items()}
    changes: list[JobChange] = []
    wanted_ids = {str(d["id"]) for d in desired}
    for want in desired:
        jid = str(want["id"])
        have = by_id.get(jid)
        # the comment carries the marker: ownership is checked below, and the user's text in it stays
        params = {k: v for k, v in want.items() if k not in ("id", "comment")}
        if have is None:
            changes.append(JobChange("create", jid, dict(want)))
            continue
        if owners[jid] != instance:
            raise _conflict(jid, owners[jid])
        update: dict[str, Any] = {}
        notes: list[str] = []
        for key, value in params.items():
            if _norm(key, have.get(key)) != _norm(key, value):
                update[key] = value
                notes.append(f"{key}: {have.get(key)!r} -> {value!r}")
        if "notes-template" in update and "storage" in params:
            # PVE's schema: 'notes-template' requires 'storage' in the same call (a PUT without it is refused)
            update.setdefault("storage", params["storage"])
        delete = tuple(k for k in _MANAGED_KEYS if k not in params and k in have and k != "comment")
        notes += [f"{k}: {have.get(k)!r} -> (removed)" for k in delete]
        if update or delete:
            changes.append(JobChange("update", jid, update, delete, tuple(notes)))
    for jid in sorted(by_id):
        if jid not in wanted_ids and owners[jid] == instance:
            changes.append(JobChange("delete", jid))
    return JobPlan(
        tuple(changes),
        unmanaged=tuple(sorted(jid for jid, o in owners.items() if o == UNMANAGED)),
        foreign={jid: o for jid, o in sorted(owners.items()) if o not in (UNMANAGED, LEGACY, instance)},
        legacy=tuple(sorted(jid for jid, o in owners.items() if o == LEGACY)),
    )


class _Backend(Protocol):
    """What applying needs of the proxmox backend: its checked call path (answer shapes, retries)."""

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, *, safe: bool | None = None,
             what: str | None = None) -> Any: ...


def _landed(backend: _Backend, change: JobChange) -> bool:
    """Whether a create or delete whose answer was lost did happen (the job is there with our comment /
    is gone): PVE refuses the repeat ("already exists" / "does not exist"), so look instead of repeating."""
    jobs = backend.call("GET", "/cluster/backup", what=f"checking whether '{change.describe()}' happened")
    there = [j for j in jobs if str(j.get("id")) == change.id]
    if change.action == "delete":
        return not there
    return any(j.get("comment") == change.params.get("comment") for j in there)


def apply_plan(backend: _Backend, plan: JobPlan, record: Callable[..., None] | None = None) -> list[str]:
    """Send the plan through the backend's checked call path; returns what was done.

    Each change is recorded before (intent) and after (result). An update sends the same values again
    when repeated, so a transient failure is retried; a create or delete is not repeated blindly: a
    create whose answer was lost is looked for before it counts as failed.
    """
    done: list[str] = []
    for change in plan.changes:
        what = change.describe()
        target = f"/cluster/backup/{change.id}"
        if record:
            record("backup.job.intent", target, change=what, kind=change.action)
        try:
            if change.action == "create":
                try:
                    backend.call("POST", "/cluster/backup", dict(change.params), safe=False, what=what)
                except BackendError:
                    if not _landed(backend, change):
                        raise
            elif change.action == "update":
                params = dict(change.params)
                if change.delete:
                    params["delete"] = ",".join(change.delete)
                backend.call("PUT", target, params, safe=True, what=what)
            elif change.action == "delete":
                try:
                    backend.call("DELETE", target, safe=False, what=what)
                except BackendError:
                    if not _landed(backend, change):
                        raise
        except BackendError as exc:
            if record:
                record("backup.job", target, change=what, kind=change.action, result="failed", error=exc.message)
            raise OperationError(
                exc.message,
                hint=(exc.hint + "; " if exc.hint else "")
                + (f"applied before it: {len(done)} change(s); " if done else "")
                + "run 'pveguard backup apply' again after fixing the cause",
            ) from None
        except KeyboardInterrupt:
            if record:
                record("backup.job", target, change=what, kind=change.action, result="interrupted")
            raise
        if record:
            record("backup.job", target, change=what, kind=change.action, result="ok")
        done.append(what)
    return done


@dataclass(frozen=True)
class JobAdoption:
    id: str
    previous: str  # "unmanaged", "legacy" or "instance <id>" (as for containers)
    before: str  # the comment now
    after: str  # the comment with this instance's marker

    @property
    def needed(self) -> bool:
        return self.before != self.after


def job_adoption(jobs: Sequence[Mapping[str, Any]], jid: str, instance: str) -> JobAdoption:
    """What adopting the job changes: its comment's marker, nothing else."""
    found = [j for j in jobs if str(j.get("id")) == jid]
    if not found:
        known = ", ".join(sorted(str(j.get("id")) for j in jobs)) or "none"
        raise UsageError(f"no vzdump job {jid!r} in /cluster/backup (jobs: {known})",
                         hint="give the job id as 'pveguard backup apply' or Datacenter > Backup show it")
    job = found[0]
    owner = owner_of(job)
    before = str(job.get("comment", "") or "")
    previous = owner if owner in (UNMANAGED, LEGACY) else f"instance {owner}"
    after = before if owner == instance else with_job_marker(before, instance)
    if len(after) > 512:  # the comment's maxLength in PVE's schema
        raise UsageError(f"the comment of job {jid!r} is too long to add pveguard's marker to it",
                         hint="shorten the job's comment in PVE, then adopt it again")
    return JobAdoption(jid, previous, before, after)


def adopt_job(backend: _Backend, a: JobAdoption, record: Callable[..., None], instance: str) -> None:
    """Write this instance's marker into the job's comment (intent first, result after)."""
    target = f"/cluster/backup/{a.id}"
    details = {"previous": a.previous, "instance": instance, "before": a.before, "after": a.after}
    record("backup.adopt.intent", target, **details)
    try:
        backend.call("PUT", target, {"comment": a.after}, safe=True, what=f"adopting vzdump job {a.id}")
    except BackendError as exc:
        record("backup.adopt", target, result="failed", error=exc.message, **details)
        raise
    except KeyboardInterrupt:
        record("backup.adopt", target, result="interrupted", **details)
        raise
    record("backup.adopt", target, result="ok", **details)


def archives_from_content(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Archive]]:
    """Backups per guest (``lxc/101``) from GET /nodes/{node}/storage/{storage}/content."""
    out: dict[str, list[Archive]] = {}
    for e in entries:
        if e.get("content") != "backup" or e.get("vmid") is None:
            continue
        kind = str(e.get("subtype") or ("qemu" if "vzdump-qemu-" in str(e.get("volid", "")) else "lxc"))
        when = datetime.fromtimestamp(int(e.get("ctime", 0)), UTC)
        out.setdefault(f"{kind}/{int(e['vmid'])}", []).append(
            Archive(when, protected=bool(int(e.get("protected", 0) or 0)), size=e.get("size"))
        )
    return out
