"""pvesim fixtures for the migrate tests that use the proxmox backend (tests/provision's penv)."""

from __future__ import annotations

from contextlib import suppress

from tests.provision.conftest import penv  # noqa: F401 - fixture

with suppress(ImportError):  # pvesim not importable: those tests skip
    from pvesim.testing import pvesim, pvesim_factory  # noqa: F401 - fixtures
