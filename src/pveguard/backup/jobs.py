"""vzdump jobs in ``/cluster/backup`` from the backup policy: desired state, plan, apply.

Only jobs pveguard manages are touched - id ``pveguard-*`` or ``managed-by: pveguard`` in the
comment; the user's own jobs are left alone and reported. A plan holds plain API calls, so
``--dry-run`` shows exactly what ``apply`` would send, and re-applying an applied policy plans
nothing.

Also here: reading backup archives from a storage's content listing, for the compliance report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pveguard.backup.calendar import parse
from pveguard.backup.compliance import Archive
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import OperationError, UsageError

__all__ = [
    "MANAGED_COMMENT",
    "JobChange",
    "JobPlan",
    "apply_plan",
    "archives_from_content",
    "container_job",
    "plan_jobs",
    "wait_task",
]

MANAGED_COMMENT = "managed-by: pveguard"
JOB_ID = "pveguard-containers"
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
    job_id: str = JOB_ID,
) -> dict[str, Any]:
    """The vzdump job the container-backup policy implies (``vmids`` None = all guests)."""
    parse(schedule)  # refuse what PVE would refuse, with our message
    if mode not in ("snapshot", "suspend", "stop"):
        raise UsageError(f"unknown backup mode {mode!r}", hint="use snapshot, suspend or stop")
    if compress not in ("0", "gzip", "lzo", "zstd"):
        raise UsageError(f"unknown compression {compress!r}", hint="use zstd, gzip, lzo or 0")
    if "\n" in notes_template:
        raise UsageError("the notes template must be a single line")
    job: dict[str, Any] = {
        "id": job_id, "schedule": schedule, "storage": storage, "mode": mode, "compress": compress,
        "prune-backups": str(keep) or "keep-all=1", "notes-template": notes_template, "enabled": 1,
        "comment": MANAGED_COMMENT,
    }  # fmt: skip
    if vmids is None:
        job["all"] = 1
    else:
        ids = sorted(set(vmids))
        if not ids:
            raise UsageError("no guests to back up", hint="create the managed containers first, or back up all")
        job["vmid"] = ",".join(str(i) for i in ids)
    return job


def is_managed(job: Mapping[str, Any]) -> bool:
    return str(job.get("id", "")).startswith("pveguard-") or MANAGED_COMMENT in str(job.get("comment", ""))


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
            return f"delete vzdump job {self.id} (managed by pveguard, no longer in the policy)"
        return f"update vzdump job {self.id}: " + "; ".join(self.changes)


@dataclass(frozen=True)
class JobPlan:
    changes: tuple[JobChange, ...]
    unmanaged: tuple[str, ...]  # ids of the user's own jobs (never touched)

    @property
    def empty(self) -> bool:
        return not self.changes


def plan_jobs(desired: Sequence[Mapping[str, Any]], existing: Sequence[Mapping[str, Any]]) -> JobPlan:
    """Calls that turn ``existing`` (GET /cluster/backup) into ``desired``."""
    by_id = {str(j.get("id")): j for j in existing}
    changes: list[JobChange] = []
    wanted_ids = {str(d["id"]) for d in desired}
    for want in desired:
        jid = str(want["id"])
        have = by_id.get(jid)
        params = {k: v for k, v in want.items() if k != "id"}
        if have is None:
            changes.append(JobChange("create", jid, dict(want)))
            continue
        if not is_managed(have):
            raise UsageError(
                f"a vzdump job with id {jid!r} exists but is not managed by pveguard",
                hint="rename or remove it, or add 'managed-by: pveguard' to its comment to hand it over",
            )
        update: dict[str, Any] = {}
        notes: list[str] = []
        for key, value in params.items():
            if _norm(key, have.get(key)) != _norm(key, value):
                update[key] = value
                notes.append(f"{key}: {have.get(key)!r} -> {value!r}")
        delete = tuple(k for k in _MANAGED_KEYS if k not in params and k in have and k != "comment")
        notes += [f"{k}: {have.get(k)!r} -> (removed)" for k in delete]
        if update or delete:
            changes.append(JobChange("update", jid, update, delete, tuple(notes)))
    for jid, have in sorted(by_id.items()):
        if jid not in wanted_ids and is_managed(have):
            changes.append(JobChange("delete", jid))
    unmanaged = tuple(sorted(jid for jid, have in by_id.items() if not is_managed(have)))
    return JobPlan(tuple(changes), unmanaged)


def apply_plan(api: Any, plan: JobPlan) -> list[str]:
    """Send the plan through a proxmoxer-style client (``api.cluster.backup...``); returns what was done."""
    done: list[str] = []
    for change in plan.changes:
        try:
            if change.action == "create":
                api.cluster.backup.post(**change.params)
            elif change.action == "update":
                params = dict(change.params)
                if change.delete:
                    params["delete"] = ",".join(change.delete)
                api.cluster.backup(change.id).put(**params)
            elif change.action == "delete":
                api.cluster.backup(change.id).delete()
        except Exception as exc:  # proxmoxer raises its own ResourceException; keep its message
            raise OperationError(
                f"{change.describe()} failed: {exc}",
                hint="earlier changes of this plan were applied; run apply again after fixing the cause",
            ) from None
        done.append(change.describe())
    return done


def wait_task(api: Any, node: str, upid: str, timeout: float = 3600, poll: float = 0.5) -> dict[str, Any]:
    """Wait for a PVE task; raise OperationError with its exit status when it failed."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = api.nodes(node).tasks(upid).status.get()
        if status.get("status") == "stopped":
            if status.get("exitstatus") != "OK":
                raise OperationError(f"task {upid} failed: {status.get('exitstatus')}")
            return status
        if time.monotonic() > deadline:
            raise OperationError(f"task {upid} still running after {timeout:.0f} s")
        time.sleep(poll)


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
