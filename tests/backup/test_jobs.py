"""vzdump jobs from the policy: plan tables, then apply/re-apply/vzdump/status against pvesim."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pveguard.backends.base import marker_line
from pveguard.backup.calendar import parse
from pveguard.backup.compliance import evaluate
from pveguard.backup.jobs import apply_plan, archives_from_content, container_job, plan_jobs
from pveguard.backup.retention import KeepPolicy
from pveguard.errors import UsageError

from .conftest import pve_backend

ME = "a1a1a1a1a1a1"
MANAGED_COMMENT = marker_line(ME)
KEEP7 = KeepPolicy.for_duration(timedelta(days=7))


def test_container_job_shape() -> None:
    job = container_job("daily", "local", KEEP7, vmids=[102, 101, 101], instance=ME)
    assert job == {
        "id": f"pveguard-{ME}", "schedule": "daily", "storage": "local", "mode": "snapshot",
        "compress": "zstd", "prune-backups": "keep-daily=7", "notes-template": "{{guestname}} (pveguard)",
        "enabled": 1, "comment": MANAGED_COMMENT, "vmid": "101,102",
    }  # fmt: skip
    assert container_job("daily", "local", KEEP7, instance=ME)["all"] == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"schedule": "*/61"}, "61 is too large"),
        ({"mode": "fast"}, "backup mode"),
        ({"compress": "xz"}, "compression"),
        ({"vmids": []}, "no guests"),
        ({"notes_template": "a\nb"}, "single line"),
    ],
)
def test_container_job_rejects(kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {"schedule": "daily", "storage": "local", "keep": KEEP7, "vmids": [101], "instance": ME,
                            **kwargs}
    with pytest.raises(UsageError, match=needle):
        container_job(**args)


def _existing(**over: Any) -> dict[str, Any]:
    base = {"id": f"pveguard-{ME}", "type": "vzdump", "schedule": "daily", "storage": "local",
            "mode": "snapshot", "compress": "zstd", "prune-backups": "keep-daily=7",
            "notes-template": "{{guestname}} (pveguard)", "enabled": 1, "comment": MANAGED_COMMENT,
            "vmid": "101,102", "next-run": 1700000000}  # fmt: skip
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_plan_nothing_when_equal_even_if_spelled_differently() -> None:
    desired = [container_job("daily", "local", KEEP7, vmids=[101, 102], instance=ME)]
    assert plan_jobs(desired, [_existing(vmid="102, 101", enabled="1")], ME).empty
    # PVE may return prune-backups parsed into a hash
    assert plan_jobs(desired, [_existing(**{"prune-backups": {"keep-daily": 7}})], ME).empty


def test_plan_create_update_delete_and_leave_user_jobs_alone() -> None:
    desired = [container_job("mon..fri 21:00", "backup-nfs", KEEP7, instance=ME)]  # all guests now
    existing = [
        _existing(mailto="admin@example"),
        {"id": "pveguard-old", "schedule": "sat 02:00", "all": 1, "comment": MANAGED_COMMENT},
        {"id": "backup-user", "schedule": "sun 03:00", "all": 1, "comment": "mine"},
    ]
    plan = plan_jobs(desired, existing, ME)
    assert [(c.action, c.id) for c in plan.changes] == [("update", f"pveguard-{ME}"), ("delete", "pveguard-old")]
    update = plan.changes[0]
    assert update.params == {"schedule": "mon..fri 21:00", "storage": "backup-nfs", "all": 1}
    assert update.delete == ("vmid",)
    assert "mailto" not in update.params and "mailto" not in update.delete  # the user's key stays
    assert plan.unmanaged == ("backup-user",)
    assert plan_jobs(desired, [], ME).changes[0].action == "create"


def test_plan_refuses_to_take_over_a_user_job_with_our_id() -> None:
    with pytest.raises(UsageError, match="not managed by pveguard"):
        plan_jobs([container_job("daily", "local", KEEP7, instance=ME, job_id="nightly")],
                  [_existing(id="nightly", comment="mine")], ME)


def test_archives_from_content() -> None:
    entries = [
        {"content": "backup", "vmid": 101, "ctime": 1700000000, "volid": "local:backup/vzdump-lxc-101-x.tar.zst",
         "subtype": "lxc", "protected": 1, "size": 10},
        {"content": "iso", "volid": "local:iso/x.iso"},
    ]  # fmt: skip
    got = archives_from_content(entries)
    assert list(got) == ["lxc/101"] and got["lxc/101"][0].protected and got["lxc/101"][0].size == 10


def test_apply_reapply_vzdump_and_status_through_pvesim(pvesim_factory: Any) -> None:
    sim = pvesim_factory(guests=3, seed=2, qemu_share=0.0, task_seconds={"vzdump": 0})
    px = sim.proxmoxer()
    backend = pve_backend(sim)
    guests = sorted(g["vmid"] for g in px.cluster.resources.get(type="vm") if g["type"] == "lxc")
    managed = guests[:2]
    desired = [container_job("2:00", "local", KEEP7, vmids=managed, instance=ME)]
    plan = plan_jobs(desired, px.cluster.backup.get(), ME)
    assert [c.action for c in plan.changes] == ["create"]
    apply_plan(backend, plan)
    jobs = px.cluster.backup.get()
    assert len(jobs) == 1 and jobs[0]["id"] == f"pveguard-{ME}" and jobs[0]["vmid"] == ",".join(map(str, managed))
    assert plan_jobs(desired, px.cluster.backup.get(), ME).empty  # re-apply does nothing
    # the unmanaged third guest shows up in PVE's own not-backed-up report
    assert {g["vmid"] for g in px.cluster("backup-info")("not-backed-up").get()} == set(guests[2:])

    # a change of policy becomes one PUT
    desired2 = [container_job("2:30", "local", KEEP7, vmids=managed, instance=ME)]
    plan2 = plan_jobs(desired2, px.cluster.backup.get(), ME)
    assert [(c.action, c.params) for c in plan2.changes] == [("update", {"schedule": "2:30"})]
    apply_plan(backend, plan2)
    assert plan_jobs(desired2, px.cluster.backup.get(), ME).empty

    # a vzdump run yields archives; compliance reports their ages
    node = next(g["node"] for g in px.cluster.resources.get(type="vm") if g["vmid"] == managed[0])
    upid = px.nodes(node).vzdump.post(vmid=str(managed[0]), storage="local", compress="zstd", mode="snapshot",
                                      **{"prune-backups": "keep-daily=7"})  # fmt: skip
    backend.wait_task(upid, "vzdump", timeout=60)
    content = px.nodes(node).storage("local").content.get(content="backup")
    archives = archives_from_content(content)
    now = sim.sim.now()
    from datetime import UTC, datetime

    statuses = {s.guest: s for s in evaluate([f"lxc/{v}" for v in managed], archives, parse("2:30"),
                                             datetime.fromtimestamp(now, UTC))}  # fmt: skip
    first = statuses[f"lxc/{managed[0]}"]
    assert first.archives == 1 and first.age is not None and first.age < timedelta(minutes=5)
    assert first.compliant
    assert statuses[f"lxc/{managed[1]}"].problems == ["no backup at all"]
