"""Plan and apply for the API: the same code as `pveguard plan` / `pveguard apply`, with a digest.

The digest is the SHA-256 of the plan's JSON (`pveguard plan --json`, keys sorted). `POST
/api/v1/apply` recomputes the plan under the apply lock and refuses (409) when its digest is not
the one the caller saw: an admin applies exactly what they reviewed, never what changed since.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pveguard.context import AppContext
from pveguard.errors import PolicyRefused


def digest_of(plan_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan_dict, sort_keys=True, separators=(",", ":"), default=str)
                          .encode()).hexdigest()


@dataclass
class ActorContext(AppContext):
    """An AppContext whose ledger entries carry the API caller as actor."""

    actor: str = ""

    def record(self, action: str, target: str = "", **details: Any) -> None:
        self.ledger.append(action, target, {**details, "via": "api"}, actor=self.actor or None)


class PlanChanged(PolicyRefused):
    """The plan is not the one the caller saw."""


def context_for(base: AppContext, actor: str = "") -> ActorContext:
    return ActorContext(base.strategy_path, base.state_dir, base.verbose, base.strategy_explicit, actor=actor)


def plan_now(base: AppContext, prune: bool = False, actor: str = "") -> dict[str, Any]:
    """`pveguard plan --json` with its digest: {"digest", "plan"} (blocking: call in a thread).
    Planning records only the installation's identity, the first time (with `actor`)."""
    from pveguard.backends import connect
    from pveguard.provision.cli import compute_plan, with_feature_notes

    ctx = context_for(base, actor)
    try:
        backend = connect(ctx.strategy)
        try:
            p = with_feature_notes(compute_plan(ctx, backend, prune), backend)
        finally:
            backend.close()
        d = p.as_dict()
        return {"digest": digest_of(d), "prune": prune, "plan": d}
    finally:
        ctx.close()


def apply_if_unchanged(base: AppContext, digest: str, prune: bool, actor: str) -> dict[str, Any]:
    """Apply the plan when its digest is still `digest` (PlanChanged otherwise); deletes only with
    prune, and never of a container with data volumes (that needs the CLI's --i-mean-it)."""
    from pveguard.backends import connect
    from pveguard.provision.apply import Applier
    from pveguard.provision.cli import compute_plan, firewall_step, rbac_step, serve_step, with_feature_notes
    from pveguard.provision.final_backup import data_volumes
    from pveguard.provision.journal import Journal
    from pveguard.provision.runlock import apply_lock

    ctx = context_for(base, actor)
    try:
        backend = connect(ctx.strategy)
        try:
            with apply_lock(ctx.state_dir, "apply (serve API)"):
                p = with_feature_notes(compute_plan(ctx, backend, prune), backend)
                now = digest_of(p.as_dict())
                if now != digest:
                    raise PlanChanged(f"the plan changed since you saw it (digest now {now[:12]}..., "
                                      f"yours {digest[:12]}...)",
                                      hint="GET /api/v1/plan again, review it, and apply with its digest")
                with_data = [a.name for a in p.of("delete") if data_volumes(a.config)]
                if with_data:
                    raise PolicyRefused(f"the plan deletes {', '.join(with_data)} with data volumes",
                                        hint="deleting data volumes needs 'pveguard apply --prune --yes "
                                        "--i-mean-it NAME' on the command line")
                report = Applier(backend, ctx, Journal(ctx.store), firewall=firewall_step(ctx, backend, None),
                                 rbac=rbac_step(ctx, backend, None),
                                 serve=serve_step(ctx, backend, None)).apply(p)
        finally:
            backend.close()
        return {"digest": digest, "plan": p.as_dict(), "result": report.as_dict(), "ok": report.ok}
    finally:
        ctx.close()
