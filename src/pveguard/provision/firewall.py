"""The firewall part of plan/apply: which containers it covers, per backend (see security.isolation).

On PVE the plan reads the firewall back for this installation's existing containers; apply re-reads it
after the containers are created and converges (so a container created in the same run gets its
firewall too). On the lxc backend the same rules become nftables tables on the host
(security.isolation_lxc, backends.lxc_isolation), planned and converged the same way.
"""

from __future__ import annotations

from typing import Any

from pveguard.backends.base import Backend
from pveguard.backends.lxc import LxcBackend
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.provision.plan import Plan
from pveguard.security import extra_inbound
from pveguard.security.isolation import (
    Ct,
    FwPlan,
    desired_firewall,
    enforced,
    firewall_paths,
    observe_firewall,
    plan_firewall,
    talking_from,
)
from pveguard.store import Store
from pveguard.strategy.models import Strategy

OTHER_NOTE = "this backend has no firewall pveguard can keep; nothing firewall-related is changed"
OFF_NOTE = ("firewall desired state is off (network.isolation.firewall_rules or security.network.firewall_rules "
            "is false); the firewall is left as it is")


def managed_cts(p: Plan) -> list[Ct]:
    """This installation's existing containers the strategy wants (a create gets its firewall at apply)."""
    return [Ct(a.name, a.vmid, a.node) for a in p.actions
            if a.kind in ("update", "unchanged", "resume") and a.desired is not None and a.guest is not None
            and a.vmid is not None and a.node is not None]


def firewall_plan(strategy: Strategy, backend: Backend, p: Plan, store: Store | None = None,
                  instance: str = "", *, whole: bool = True) -> FwPlan:
    """The firewall changes (PVE, lxc) or why there are none (switched off). The store's extra rules
    (security.extra_inbound: a migrated service's ports) are part of the desired state. With `instance`
    (PVE), this installation's security groups that no strategy role uses any more are removed (by a whole
    plan: `whole` is False for `--only`)."""
    if not isinstance(backend, ProxmoxBackend | LxcBackend):
        return FwPlan(notes=[OTHER_NOTE])
    if not enforced(strategy):
        return FwPlan(notes=[OFF_NOTE])
    extras = extra_inbound.listing(store)
    extra = extra_inbound.by_container(store)
    if isinstance(backend, LxcBackend):
        from pveguard.security.isolation_lxc import plan_lxc

        fp = plan_lxc(strategy, backend, managed_cts(p), extra)
    else:
        want = desired_firewall(strategy, extra, instance)
        cts = managed_cts(p)
        with backend.reading(firewall_paths(cts)) as ready:
            seen = observe_firewall(backend.call, cts, want.groups, ready, instance if whole else "")
        s = backend.settings
        fp = plan_firewall(want, seen, managed_cts(p), source=talking_from(s.host), local=s.mode == "local",
                           going=[a.vmid for a in p.actions if a.kind == "delete" and a.vmid is not None])
    pending = [a.name for a in p.actions if a.kind == "create"]
    if pending:
        fp.notes.append(f"created containers get their firewall in the same apply: {', '.join(pending)}")
    for e in extras:
        fp.notes.append(f"kept beyond the strategy: {e.text()}")
    return fp


def call_of(backend: Backend) -> Any:
    return backend.call if isinstance(backend, ProxmoxBackend) else None
