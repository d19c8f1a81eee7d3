"""The planner: desired containers against what exists -> a Plan. Pure: no I/O, tested with tables.

A guest is *managed* when it carries the `pveguard` tag and the managed marker in its description;
it is matched to a strategy container by name. Guests that are not managed are never touched: one
that has a strategy container's name is a conflict (reported, not created twice). Deletes happen only
with prune, and only for managed guests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pveguard.backends.base import Guest
from pveguard.provision.desired import (
    FIELDS,
    IMMUTABLE_FIELDS,
    LIVE_FIELDS,
    Desired,
    actual_fields,
    desired_fields,
    is_managed_description,
)

ActionKind = Literal["create", "update", "resume", "unchanged", "delete", "conflict"]
CHANGING: frozenset[str] = frozenset({"create", "update", "resume", "delete"})


@dataclass(frozen=True)
class FieldChange:
    """One field that differs: `field: old -> new`; `live` when PVE applies it to a running guest."""

    field: str
    old: str
    new: str
    live: bool
    possible: bool = True

    def text(self) -> str:
        return f"{self.field}: {self.old or '(unset)'} -> {self.new or '(unset)'}"

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new, "live": self.live,
                "possible": self.possible}


@dataclass
class Action:
    kind: ActionKind
    name: str
    vmid: int | None = None
    node: str | None = None
    changes: list[FieldChange] = field(default_factory=list)
    desired: Desired | None = None
    guest: Guest | None = None
    config: dict[str, Any] | None = None
    resume: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind, "name": self.name, "vmid": self.vmid, "node": self.node,
                               "changes": [c.as_dict() for c in self.changes], "notes": list(self.notes)}
        if self.resume:
            out["resume"] = list(self.resume)
        if self.kind == "create" and self.desired is not None:
            out["fields"] = desired_fields(self.desired.spec)
            out["packages"] = list(self.desired.packages)
        return out


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]

    @property
    def has_changes(self) -> bool:
        return any(a.kind in CHANGING for a in self.actions)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("create", "update", "resume", "unchanged", "delete", "conflict"), 0)
        for a in self.actions:
            out[a.kind] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"changes": self.has_changes, "counts": self.counts(),
                "actions": [a.as_dict() for a in self.actions]}


@dataclass(frozen=True)
class Observed:
    """What exists: every guest from the listing, and the configs read for candidate managed guests."""

    guests: list[Guest]
    configs: dict[int, dict[str, Any]]
    # tagged guests whose config could not be read (node offline...): vmid -> why
    unreadable: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JournalEntry:
    """A create that an earlier apply began and did not finish (see provision.journal)."""

    name: str
    vmid: int | None  # None: the create was sent but its answer (the VMID) never recorded
    node: str | None
    step: str  # "creating" | "created" | "started"


# The steps left after each journal step, in order.
_RESUME_STEPS = {"creating": ["start", "packages"], "created": ["start", "packages"], "started": ["packages"]}


def diff_fields(desired: dict[str, str], actual: dict[str, str]) -> list[FieldChange]:
    """Field changes from actual to desired, in FIELDS order."""
    out = []
    for f in FIELDS:
        new, old = desired.get(f, ""), actual.get(f, "")
        if new == old:
            continue
        possible = f not in IMMUTABLE_FIELDS
        if f == "rootfs":
            possible = _gib(new) >= _gib(old)
        out.append(FieldChange(f, old, new, live=f in LIVE_FIELDS, possible=possible))
    return out


def _gib(text: str) -> float:
    try:
        return float(text.rstrip("G"))
    except ValueError:
        return 0.0


def managed_guests(observed: Observed) -> list[Guest]:
    """Guests that carry the tag and whose config (read) carries the marker."""
    out = []
    for g in observed.guests:
        cfg = observed.configs.get(g.vmid)
        if g.type == "lxc" and cfg is not None and is_managed_description(cfg.get("description")):
            out.append(g)
    return out


def plan(desired: list[Desired], observed: Observed, *, prune: bool = False,
         journal: list[JournalEntry] | None = None) -> Plan:
    """Compare desired with observed and say what apply would do, one Action per container."""
    managed = managed_guests(observed)
    managed_ids = {g.vmid for g in managed}
    by_name: dict[str, list[Guest]] = {}
    for g in managed:
        by_name.setdefault(g.name, []).append(g)
    unmanaged_by_name: dict[str, list[Guest]] = {}
    unreadable_by_name: dict[str, list[Guest]] = {}
    for g in observed.guests:
        if g.vmid in observed.unreadable:
            unreadable_by_name.setdefault(g.name, []).append(g)
        elif g.vmid not in managed_ids:
            unmanaged_by_name.setdefault(g.name, []).append(g)
    pending = {j.name: j for j in journal or []}

    actions: list[Action] = []
    wanted = {d.spec.name for d in desired}
    for d in desired:
        name = d.spec.name
        found = sorted(by_name.get(name, []), key=lambda g: g.vmid)
        unknown = unreadable_by_name.get(name, [])
        if unknown:
            # it may well be ours: neither create a second one nor guess at changes
            g = unknown[0]
            actions.append(Action("conflict", name, vmid=g.vmid, node=g.node, desired=d, guest=g, notes=[
                f"CT {g.vmid} on {g.node} cannot be read ({observed.unreadable[g.vmid]}); left as is until "
                f"it can"]))
            continue
        if len(found) > 1:
            ids = ", ".join(str(g.vmid) for g in found)
            actions.append(Action("conflict", name, desired=d, notes=[
                f"several managed guests are named {name} ({ids}); remove the extra ones, then apply again"]))
            continue
        if not found:
            others = unmanaged_by_name.get(name, [])
            if others:
                g = others[0]
                actions.append(Action("conflict", name, vmid=g.vmid, node=g.node, desired=d, guest=g, notes=[
                    f"guest {g.vmid} on {g.node} is already named {name} but is not managed by pveguard; "
                    f"rename it, or adopt it by adding the tag 'pveguard' and the line "
                    f"'managed-by: pveguard' to its description"]))
                continue
            notes = ([f"pinned to node {d.spec.node}"] if d.spec.node
                     else ["node: chosen at apply (on PVE: most free memory)"])
            if d.spec.vmid is not None:
                clash = next((g for g in observed.guests if g.vmid == d.spec.vmid), None)
                if clash is not None:
                    actions.append(Action("conflict", name, vmid=clash.vmid, node=clash.node, desired=d, notes=[
                        f"the strategy asks for VMID {d.spec.vmid} but guest {clash.vmid} ({clash.name}) "
                        f"already uses it; change or remove 'vmid' in the strategy"]))
                    continue
            actions.append(Action("create", name, vmid=d.spec.vmid, node=d.spec.node, desired=d,
                                  resume=["start", "packages"] if d.packages else ["start"], notes=notes))
            continue
        g = found[0]
        cfg = observed.configs[g.vmid]
        j = pending.get(name)
        if cfg.get("lock") == "create":
            # still being created (a run that died or timed out): the config is not complete yet
            steps = _RESUME_STEPS["creating"] if j is None or j.vmid in (None, g.vmid) else []
            actions.append(Action("resume", name, vmid=g.vmid, node=g.node, desired=d, guest=g, config=cfg,
                                  resume=["wait", *(s for s in steps if s != "packages" or d.packages)],
                                  notes=["creation still in progress (lock: create); apply waits for it"]))
            continue
        changes = diff_fields(desired_fields(d.spec), actual_fields(cfg))
        notes = [f"{c.field} cannot change from {c.old} to {c.new} in place "
                 f"({'a new container is needed' if c.field in IMMUTABLE_FIELDS else 'disks only grow'}); "
                 f"left as is" for c in changes if not c.possible]
        if g.lock:
            notes.append(f"guest is locked ({g.lock}); changes fail until the lock is released")
        resume = []
        if j is not None and j.vmid in (None, g.vmid):
            resume = [s for s in _RESUME_STEPS.get(j.step, []) if s != "packages" or d.packages]
        possible = [c for c in changes if c.possible]
        kind: ActionKind = "update" if possible else ("resume" if resume else "unchanged")
        actions.append(Action(kind, name, vmid=g.vmid, node=g.node, changes=changes, desired=d, guest=g,
                              config=cfg, resume=resume, notes=notes))
    for g in sorted(observed.guests, key=lambda g: g.vmid):
        if g.vmid in observed.unreadable and g.name not in wanted:
            actions.append(Action("unchanged", g.name, vmid=g.vmid, node=g.node, guest=g, notes=[
                f"cannot be read ({observed.unreadable[g.vmid]}); not pruned"]))
    for g in sorted(managed, key=lambda g: g.vmid):
        if g.name in wanted:
            continue
        if prune:
            actions.append(Action("delete", g.name, vmid=g.vmid, node=g.node, guest=g,
                                  config=observed.configs.get(g.vmid)))
        else:
            actions.append(Action("unchanged", g.name, vmid=g.vmid, node=g.node, guest=g, notes=[
                "managed guest no longer in the strategy; 'apply --prune' deletes it"]))
    return plan_sorted(actions)


def plan_sorted(actions: list[Action]) -> Plan:
    """Creates and updates in strategy order, deletes last (free resources only after the rest worked)."""
    order = {"conflict": 0, "create": 1, "update": 1, "resume": 1, "unchanged": 1, "delete": 2}
    return Plan(sorted(actions, key=lambda a: order[a.kind]))


def candidate_vmids(guests: list[Guest]) -> list[int]:
    """Guests whose config the planner must read: LXC guests carrying the managed tag (one read each)."""
    from pveguard.backends.base import MANAGED_TAG

    return [g.vmid for g in guests if g.type == "lxc" and MANAGED_TAG in g.tags]
