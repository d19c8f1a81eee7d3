"""Record before acting, at unit level: an intent (with the VMID) before every request, a result after,
also when the request raises or Ctrl-C arrives in between; and the marker the LXC backend writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends.base import Backend, Capabilities, ExecResult, Guest, GuestSpec, GuestStats, Marker, read_marker
from pveguard.errors import BackendError
from pveguard.provision.apply import Applier, ApplyInterrupted
from pveguard.provision.desired import desired_state
from pveguard.provision.journal import Journal
from pveguard.provision.plan import JournalEntry, Observed, plan
from pveguard.store import Store
from pveguard.strategy.models import Strategy

INSTANCE = "feedfacecafe"


class Ledger:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, action: str, target: str = "", **details: Any) -> None:
        self.rows.append((action, target, details))


class FakeBackend(Backend):
    """Creates in memory; `fail` raises the given exception after the intent hook, before the guest exists."""

    name = "fake"

    def __init__(self, fail: BaseException | None = None, fail_start: BaseException | None = None) -> None:
        self.fail, self.fail_start = fail, fail_start
        self.vmid = 200

    def capabilities(self) -> Capabilities:
        return Capabilities("fake")

    def list_guests(self) -> list[Guest]:
        return []

    def get_config(self, guest: Guest) -> dict[str, Any]:
        return {}

    def create(self, spec: GuestSpec, progress: Callable[[str], None] | None = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        self.vmid += 1
        assert before_request is not None
        before_request(self.vmid, "n1")
        if self.fail is not None:
            raise self.fail
        return Guest(self.vmid, spec.name, "n1", "lxc", "stopped", list(spec.tags), True)

    def update(self, guest: Guest, changes: dict[str, Any], delete: list[str] | None = None) -> list[str]:
        return []

    def start(self, guest: Guest) -> None:
        if self.fail_start is not None:
            raise self.fail_start

    def stop(self, guest: Guest) -> None: ...

    def shutdown(self, guest: Guest, timeout: int = 60) -> None: ...

    def destroy(self, guest: Guest) -> None: ...

    def exec(self, guest: Guest, argv: list[str], *, input: str | None = None, timeout: float = 600) -> ExecResult:
        return ExecResult(0, "", "")

    def push(self, guest: Guest, local: str, remote: str, mode: int = 0o644) -> None: ...

    def pull(self, guest: Guest, remote: str, local: str) -> None: ...

    def stats(self) -> list[GuestStats]:
        return []


def run(tmp_path: Path, backend: FakeBackend) -> tuple[Ledger, list[JournalEntry], Any]:
    desired = desired_state(Strategy(), INSTANCE)[:2]
    p = plan(desired, Observed([], {}), instance=INSTANCE)
    ledger = Ledger()
    with Store(tmp_path) as store:
        journal = Journal(store)
        try:
            outcome: Any = Applier(backend, ledger, journal).apply(p)
        except ApplyInterrupted as exc:
            outcome = exc
        return ledger, journal.entries(), outcome


def test_create_intent_carries_the_vmid_before_the_request(tmp_path: Path) -> None:
    ledger, journal, report = run(tmp_path, FakeBackend())
    assert report.ok and journal == []
    first = ledger.rows[:2]
    assert [(a, t) for a, t, _d in first] == [("provision.create.intent", "ct/201"), ("provision.create", "ct/201")]
    assert first[1][2]["result"] == "ok" and first[0][2]["after"]["hostname"] == "pve-monitoring"


def test_a_failing_create_gets_a_failed_result_and_the_journal_keeps_the_vmid(tmp_path: Path) -> None:
    ledger, journal, report = run(tmp_path, FakeBackend(fail=BackendError("POST failed [HTTP 500]")))
    assert report.failed and not report.ok
    pairs = [(a, t, d.get("result")) for a, t, d in ledger.rows]
    assert pairs[:2] == [("provision.create.intent", "ct/201", None), ("provision.create", "ct/201", "failed")]
    assert [(j.name, j.vmid, j.step) for j in journal] == [("pve-backup-manager", 202, "creating"),
                                                          ("pve-monitoring", 201, "creating")]


def test_ctrl_c_between_intent_and_result(tmp_path: Path) -> None:
    ledger, journal, exc = run(tmp_path, FakeBackend(fail=KeyboardInterrupt()))
    assert isinstance(exc, ApplyInterrupted)
    assert exc.report.interrupted == "create pve-monitoring"
    assert exc.report.not_started == ["create pve-backup-manager"]
    assert [(a, d.get("result")) for a, _t, d in ledger.rows] == [("provision.create.intent", None),
                                                                 ("provision.create", "interrupted")]
    assert [(j.name, j.vmid) for j in journal] == [("pve-monitoring", 201)]


def test_ctrl_c_during_start_after_the_create(tmp_path: Path) -> None:
    ledger, journal, exc = run(tmp_path, FakeBackend(fail_start=KeyboardInterrupt()))
    assert isinstance(exc, ApplyInterrupted) and exc.report.interrupted == "create pve-monitoring"
    assert [(a, d.get("result")) for a, _t, d in ledger.rows] == [
        ("provision.create.intent", None), ("provision.create", "ok"), ("provision.start.intent", None),
        ("provision.start", "interrupted")]
    assert [(j.name, j.step) for j in journal] == [("pve-monitoring", "created")]


@pytest.mark.parametrize("description", [
    f"front door\nmanaged-by: pveguard instance={INSTANCE}",
    f"managed-by: pveguard instance={INSTANCE}",
])
def test_lxc_backend_writes_the_instance_marker_once(description: str) -> None:
    from pveguard.backends.base import NetSpec
    from pveguard.backends.lxc import pve_config

    spec = GuestSpec(name="web", role="gateway", cores=1, memory_mib=256, swap_mib=512, disk_gib=4,
                     net=NetSpec(bridge="vmbr0"), description=description)
    conf = pve_config(spec, 105, unprivileged=True, hwaddr="BC:24:11:AA:BB:CC")
    assert read_marker(conf["description"]) == Marker(INSTANCE)
    assert conf["description"].count("managed-by: pveguard") == 1
    assert "pveguard" in conf["tags"].split(";")


class RetryingBackend(FakeBackend):
    """Like PVE's create when the answer is lost (same VMID again) and when the VMID is taken (next one)."""

    def create(self, spec: GuestSpec, progress: Callable[[str], None] | None = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        assert before_request is not None
        for vmid in (301, 301, 302):
            before_request(vmid, "n1")
        return Guest(302, spec.name, "n1", "lxc", "stopped", list(spec.tags), True)


def test_create_retries_record_one_intent_per_vmid(tmp_path: Path) -> None:
    ledger, journal, report = run(tmp_path, RetryingBackend())
    assert report.ok and journal == []
    rows = [(a, t, d.get("result")) for a, t, d in ledger.rows if t in ("ct/301", "ct/302")][:4]
    assert rows == [("provision.create.intent", "ct/301", None), ("provision.create", "ct/301", "retried"),
                    ("provision.create.intent", "ct/302", None), ("provision.create", "ct/302", "ok")]


def test_final_backup_on_lxc_is_an_archive_marked_protected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pveguard.backends.lxc import LxcBackend
    from pveguard.backup import lxcdump
    from pveguard.provision.final_backup import take_final_backup
    from pveguard.strategy.models import ContainerBackups

    calls: list[tuple[Any, ...]] = []

    def dump(name: str, vmid: int, dump_dir: Path, lxcpath: Path, mode: str, notes: str) -> Any:
        calls.append((name, vmid, dump_dir, lxcpath, mode, notes))
        archive = dump_dir / f"vzdump-lxc-{vmid}-2026_12_06-13_00_00.tar.zst"
        archive.write_bytes(b"x")
        return lxcdump.DumpResult(archive, dump_dir / "x.log", None, 1, 0.1, mode)

    monkeypatch.setattr(lxcdump, "dump_container", dump)
    backend = LxcBackend.__new__(LxcBackend)
    backend.lxcpath = tmp_path / "lxc"
    g = Guest(107, "old-app", "host", "lxc", "running", ["pveguard"], True)
    where = take_final_backup(backend, g, ContainerBackups(mode="stop"), tmp_path)
    [(name, vmid, dump_dir, lxcpath, mode, notes)] = calls
    assert (name, vmid, dump_dir, lxcpath, mode) == ("107", 107, tmp_path, tmp_path / "lxc", "stop")
    assert notes == "final backup before pveguard deleted old-app (CT 107)"
    assert (tmp_path / "vzdump-lxc-107-2026_12_06-13_00_00.tar.zst.protected").exists() and "protected" in where
