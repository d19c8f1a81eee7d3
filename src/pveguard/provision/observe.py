"""Reading what exists: one listing call, then one config read per guest that carries the managed tag."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pveguard.backends.base import Backend, Guest
from pveguard.errors import BackendError
from pveguard.provision.plan import Observed, candidate_vmids

# Config reads are independent and latency-bound; a few in flight hide the round trips without
# loading the API node much.
READ_WORKERS = 8


def observe(backend: Backend) -> Observed:
    """The guests (one call) and the configs of the tagged containers (one call each, in parallel)."""
    guests = backend.list_guests()
    wanted = set(candidate_vmids(guests))
    tagged = [g for g in guests if g.vmid in wanted]

    def read(g: Guest) -> tuple[int, dict[str, Any] | None]:
        try:
            return g.vmid, backend.get_config(g)
        except BackendError:
            # gone between listing and reading (destroyed, migrated): it is simply not there
            if not any(x.vmid == g.vmid for x in backend.list_guests()):
                return g.vmid, None
            raise

    configs: dict[int, dict[str, Any]] = {}
    if len(tagged) <= 1:
        results = [read(g) for g in tagged]
    else:
        with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
            results = list(pool.map(read, tagged))
    for vmid, cfg in results:
        if cfg is not None:
            configs[vmid] = cfg
    return Observed([g for g in guests if g.vmid in configs or g.vmid not in wanted], configs)
