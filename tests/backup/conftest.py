"""pvesim fixtures for the backup tests (jobs against the emulated PVE API)."""

from pvesim.testing import pvesim, pvesim_factory  # noqa: F401
