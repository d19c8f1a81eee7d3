"""The provisioning journal in the state store, and how the applier uses it."""

from __future__ import annotations

from pathlib import Path

from pveguard.provision.journal import Journal
from pveguard.provision.plan import JournalEntry
from pveguard.store import Store


def test_journal_steps_keep_known_vmid_and_node(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        j = Journal(store)
        j.begin("a")
        assert j.entries() == [JournalEntry("a", None, None, "creating")]
        j.set("a", "created", 101, "pve2")
        j.set("a", "started")
        assert j.entries() == [JournalEntry("a", 101, "pve2", "started")]
        j.begin("a")  # a fresh create of the same name forgets the old guest
        assert j.entries() == [JournalEntry("a", None, None, "creating")]
        j.done("a")
        assert j.entries() == []


def test_journal_survives_reopening(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        Journal(store).set("b", "created", 7, "pve1")
    with Store(tmp_path) as store:
        assert Journal(store).entries() == [JournalEntry("b", 7, "pve1", "created")]


def test_apply_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    import pytest

    from pveguard.errors import OperationError
    from pveguard.provision.runlock import apply_lock

    with apply_lock(tmp_path), pytest.raises(OperationError, match=r"another pveguard apply is running"), \
            apply_lock(tmp_path):
        pass
    with apply_lock(tmp_path):  # released on exit
        pass


def test_a_refused_run_names_the_command_that_holds_the_lock(tmp_path: Path) -> None:
    """An update (or the watchdog) holds provision.lock too: the refusal says which command and pid, not 'apply'."""
    import os
    import subprocess
    import sys

    import pytest

    from pveguard.errors import OperationError
    from pveguard.provision.runlock import apply_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from pveguard import invocation\n"
         "from pveguard.provision.runlock import apply_lock\n"
         "invocation.argv = ['update', 'pve-monitoring', '--security-only']\n"
         "with apply_lock(Path(sys.argv[1]), 'update'):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)\n", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OperationError) as got, apply_lock(tmp_path):
            pass
        msg = got.value.message
        assert msg == (f"another pveguard update is running ('pveguard update pve-monitoring --security-only', "
                       f"pid {holder.pid}) and holds {tmp_path / 'provision.lock'}: this apply cannot run beside it")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # an older pveguard wrote its pid only
    (tmp_path / "provision.lock").write_text("4242\n")
    import fcntl

    fd = os.open(tmp_path / "provision.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OperationError, match=r"another pveguard watchdog sweep is running \(pid 4242;"), \
                apply_lock(tmp_path, "watchdog sweep"):
            pass
    finally:
        os.close(fd)
