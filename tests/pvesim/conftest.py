"""pvesim's own fixtures come from pvesim.testing (the same ones other test packages import).

No __init__.py in this directory on purpose: tests/conftest.py puts tests/ on sys.path, and a
regular package named `pvesim` there would shadow the real src/pvesim.
"""

from pvesim.testing import pvesim, pvesim_factory  # noqa: F401
