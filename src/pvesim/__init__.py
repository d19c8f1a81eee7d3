"""pvesim: a schema-driven Proxmox VE 8.4 / 9.1 API emulator for tests and benchmarks (not shipped in the wheel).

Quick use::

    from pvesim import running
    with running(guests=20) as sim:
        ...  # sim.url, sim.token, sim.username, sim.password, sim.cafile, sim.fingerprint, sim.control(...)
"""

from __future__ import annotations

from pvesim.testing import SimHandle, running

__all__ = ["SimHandle", "running"]
