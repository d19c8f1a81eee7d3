"""Reading what exists: one listing call, then one config read per guest that carries the managed tag."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pveguard.backends.base import Backend, Guest
from pveguard.backends.inflight import IN_FLIGHT as READ_WORKERS
from pveguard.errors import BackendError
from pveguard.provision.plan import Observed, candidate_vmids


def observe(backend: Backend, listed: Callable[[list[Guest]], None] | None = None) -> Observed:
    """The guests (one call) and the configs of the tagged containers (one call each, in parallel).
    `listed` is told the listing before the configs are read (plan starts its token-file checks there)."""
    guests = backend.list_guests()
    if listed is not None:
        listed(guests)
    wanted = set(candidate_vmids(guests))
    tagged = [g for g in guests if g.vmid in wanted]

    def read(g: Guest) -> tuple[int, dict[str, Any] | str | None]:
        try:
            return g.vmid, backend.get_config(g)
        except BackendError as exc:
            return g.vmid, exc.message

    configs: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    with backend.reading_configs(tagged) as ready:
        here = [g for g in tagged if ready(g)]  # before reading: a read answer is used once
        rest = [g for g in tagged if not ready(g)]
        results = [read(g) for g in here]
        if len(rest) <= 1:
            results += [read(g) for g in rest]
        else:
            with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
                results += list(pool.map(read, rest))
    for vmid, cfg in results:
        if isinstance(cfg, dict):
            configs[vmid] = cfg
        elif cfg is not None:
            failed[vmid] = cfg
    if failed:
        # gone between listing and reading (destroyed, migrated away) is not a failure: it is not there
        still = {g.vmid for g in backend.list_guests()}
        failed = {vmid: why for vmid, why in failed.items() if vmid in still}
    keep = [g for g in guests if g.vmid in configs or g.vmid in failed or g.vmid not in wanted]
    return Observed(keep, configs, failed)
