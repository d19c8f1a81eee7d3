"""The update tests use the provisioning tests' pvesim environment (a cluster, a strategy, the CLI)."""

from __future__ import annotations

from contextlib import suppress

from tests.provision.conftest import Env, make_env  # noqa: F401 - re-exported for the tests here

with suppress(ImportError):  # pvesim not importable: those tests skip
    from pvesim.testing import pvesim, pvesim_factory  # noqa: F401 - fixtures
