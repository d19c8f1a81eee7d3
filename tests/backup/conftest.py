"""pvesim fixtures for the backup tests (jobs against the emulated PVE API)."""

from typing import Any

from pvesim.testing import pvesim, pvesim_factory  # noqa: F401


def pve_backend(sim: Any) -> Any:
    """pveguard's proxmox backend on a pvesim (fast polls and retries), as 'backup apply' uses it."""
    from pveguard.backends.proxmox import ProxmoxBackend, PveSettings

    s = PveSettings(mode="https", host=sim.host, retry_wait=0.05, poll_interval=0.05)
    return ProxmoxBackend(s, api=sim.proxmoxer("token"))
