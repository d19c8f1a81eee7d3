"""pvesim's own fixtures come from pvesim.testing (the same ones other test packages import)."""

from pvesim.testing import pvesim, pvesim_factory  # noqa: F401
