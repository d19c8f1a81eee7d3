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
