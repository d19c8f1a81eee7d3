"""Fixtures for the guard's chroot tests: one prepared Debian root per session, an overlay per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aptchroot
import pytest


@pytest.fixture(scope="session")
def prepared_root() -> Iterator[Path]:
    reason = aptchroot.skip_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="guard-base-"))
    try:
        yield aptchroot.prepare(base / "root")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def chroot(prepared_root: Path) -> Iterator[aptchroot.AptChroot]:
    with aptchroot.overlay(prepared_root) as ch:
        yield ch
