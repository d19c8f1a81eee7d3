"""The planner: desired containers against what exists -> a Plan. Pure: no I/O, tested with tables.

A guest is *ours* when it carries the `pveguard` tag and this installation's managed marker
(`managed-by: pveguard instance=<id>`) in its description; it is matched to a strategy container by
name. Everything else is never touched: a guest of another pveguard instance, one with the legacy
marker (no instance, from older versions) and an unmanaged guest are reported -- as a conflict when
it has a strategy container's name (nothing is created twice), else as `foreign` (another instance's
or legacy) -- and only `pveguard adopt` makes one ours. Deletes happen only with prune, only for ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pveguard.backends.base import Guest, Marker, read_marker
from pveguard.provision.desired import (
    FIELDS,
    IMMUTABLE_FIELDS,
    LIVE_FIELDS,
    Desired,
    actual_fields,
    desired_fields,
    mp_change_possible,
)
from pveguard.provision.final_backup import data_volumes, left_out_of_backups
from pveguard.security.isolation import FwPlan

ActionKind = Literal["create", "update", "resume", "unchanged", "delete", "conflict", "foreign"]
KINDS: tuple[ActionKind, ...] = ("create", "update", "resume", "unchanged", "delete", "conflict", "foreign")
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
    # for a guest that is not ours: the pveguard instance whose marker it carries (None: legacy/none)
    owner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind, "name": self.name, "vmid": self.vmid, "node": self.node,
                               "changes": [c.as_dict() for c in self.changes], "notes": list(self.notes)}
        if self.kind == "foreign" or self.owner is not None:
            out["owner"] = self.owner
        if self.resume:
            out["resume"] = list(self.resume)
        if self.kind == "create" and self.desired is not None:
            out["fields"] = desired_fields(self.desired.spec)
            out["packages"] = list(self.desired.packages)
        return out


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    # journal rows with nothing left to finish (apply clears them)
    stale_journal: list[str] = field(default_factory=list)
    # firewall and VLAN isolation (security.isolation): filled by the CLI, which reads the firewall
    firewall: FwPlan = field(default_factory=FwPlan)
    # PVE users, tokens, roles and ACLs per container role (security.access.rbac): filled by the CLI
    rbac: FwPlan = field(default_factory=FwPlan)
    # pveguard serve installed in serve.container (provision/serve_install.py): filled by the CLI
    serve: FwPlan = field(default_factory=FwPlan)

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]

    @property
    def has_changes(self) -> bool:
        return any(a.kind in CHANGING for a in self.actions) or bool(self.firewall.changes) or bool(self.rbac.changes) \
            or bool(self.serve.changes)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(KINDS, 0)
        for a in self.actions:
            out[a.kind] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"changes": self.has_changes, "counts": self.counts(),
                "actions": [a.as_dict() for a in self.actions], "firewall": self.firewall.as_dict(),
                "rbac": self.rbac.as_dict(), "serve": self.serve.as_dict()}

    def only(self, names: set[str]) -> Plan:
        """The actions for these containers only (`--only`)."""
        return Plan([a for a in self.actions if a.name in names], self.stale_journal, self.firewall,
                    self.rbac, self.serve)


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
    vmid: int | None  # None: the create stopped before it had a VMID (nothing was sent)
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
        elif f == "mp0":
            possible = mp_change_possible(old, new)
        out.append(FieldChange(f, old, new, live=f in LIVE_FIELDS, possible=possible))
    return out


def _why_not(field: str) -> str:
    if field in IMMUTABLE_FIELDS:
        return "a new container is needed"
    if field == "mp0":
        return ("the backup volume only grows; moving or removing it is done by hand "
                "(pct set <vmid> --delete mp0 keeps its data as unused0)")
    return "disks only grow"


def _gib(text: str) -> float:
    try:
        return float(text.rstrip("G"))
    except ValueError:
        return 0.0


def _marker(observed: Observed, g: Guest) -> Marker | None:
    cfg = observed.configs.get(g.vmid)
    return read_marker(cfg.get("description")) if g.type == "lxc" and cfg is not None else None


def managed_guests(observed: Observed, instance: str) -> list[Guest]:
    """This instance's guests: the tag, and (in the config read) the marker with this instance id."""
    return [g for g in observed.guests if _marker(observed, g) == Marker(instance)]


def _steps(step: str, d: Desired, g: Guest) -> list[str]:
    """What is left after a journal step, without what is visibly done (a running guest was started)."""
    return [s for s in _RESUME_STEPS.get(step, []) if (s != "packages" or d.packages)
            and not (s == "start" and g.status == "running")]


def resolve_journal(journal: list[JournalEntry], observed: Observed, desired: list[Desired],
                    instance: str) -> tuple[dict[str, list[str]], list[str]]:
    """Journal rows against what exists: (steps left per container, names of rows with nothing left).

    A row is stale when its create never got a VMID (nothing was sent), its guest is gone or is not
    this instance's container of that name, the strategy no longer wants it, or nothing is left to do.
    A row whose guest cannot be read now is kept, neither resumed nor cleared.
    """
    wanted = {d.spec.name: d for d in desired}
    by_vmid = {g.vmid: g for g in observed.guests}
    steps: dict[str, list[str]] = {}
    stale: list[str] = []
    for j in journal:
        g = by_vmid.get(j.vmid) if j.vmid is not None else None
        if g is not None and g.vmid in observed.unreadable:
            continue
        if g is None or g.name != j.name or j.name not in wanted or _marker(observed, g) != Marker(instance):
            stale.append(j.name)
            continue
        left = _steps(j.step, wanted[j.name], g)
        if left:
            steps[j.name] = left
        else:
            stale.append(j.name)
    return steps, stale


def _not_ours_note(g: Guest, m: Marker | None) -> str:
    if m is not None and m.instance:
        return f"owned by another pveguard instance {m.instance}; left alone"
    if m is not None:
        return ("carries the pveguard marker of an older version (no instance id); not this installation's "
                f"until 'pveguard adopt {g.vmid}'")
    return "not managed by pveguard"


def plan(desired: list[Desired], observed: Observed, *, instance: str, prune: bool = False,
         journal: list[JournalEntry] | None = None) -> Plan:
    """Compare desired with observed and say what apply would do, one Action per container."""
    managed = managed_guests(observed, instance)
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
    resume_left, stale = resolve_journal(journal or [], observed, desired, instance)
    journaled = {j.name for j in journal or []}

    actions: list[Action] = []
    wanted = {d.spec.name for d in desired}
    shown: set[int] = set()  # guests an action already speaks of
    for d in desired:
        name = d.spec.name
        found = sorted(by_name.get(name, []), key=lambda g: g.vmid)
        unknown = unreadable_by_name.get(name, [])
        if unknown:
            # it may well be ours: neither create a second one nor guess at changes
            g = unknown[0]
            shown.add(g.vmid)
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
                shown.add(g.vmid)
                m = _marker(observed, g)
                actions.append(Action("conflict", name, vmid=g.vmid, node=g.node, desired=d, guest=g,
                                      owner=m.instance if m else None, notes=[
                    f"guest {g.vmid} on {g.node} is already named {name} but is {_not_ours_note(g, m)}; "
                    f"rename this container in the strategy, or take the guest over with "
                    f"'pveguard adopt {g.vmid}'"]))
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
                                  resume=["start", "packages"] if d.packages else ["start"],
                                  notes=[*notes, *d.notes]))
            continue
        g = found[0]
        cfg = observed.configs[g.vmid]
        if cfg.get("lock") == "create":
            # still being created (a run that died or timed out): the config is not complete yet
            steps = resume_left.get(name, []) if name in journaled else \
                [s for s in _RESUME_STEPS["creating"] if s != "packages" or d.packages]
            actions.append(Action("resume", name, vmid=g.vmid, node=g.node, desired=d, guest=g, config=cfg,
                                  resume=["wait", *steps],
                                  notes=["creation still in progress (lock: create); apply waits for it"]))
            continue
        changes = diff_fields(desired_fields(d.spec), actual_fields(cfg))
        notes = [f"{c.field} cannot change from {c.old or '(none)'} to {c.new or '(none)'} in place "
                 f"({_why_not(c.field)}); left as is" for c in changes if not c.possible]
        notes += d.notes
        if g.lock:
            notes.append(f"guest is locked ({g.lock}); changes fail until the lock is released")
        resume = resume_left.get(name, [])
        possible = [c for c in changes if c.possible]
        kind: ActionKind = "update" if possible else ("resume" if resume else "unchanged")
        actions.append(Action(kind, name, vmid=g.vmid, node=g.node, changes=changes, desired=d, guest=g,
                              config=cfg, resume=resume, notes=notes))
    for g in sorted(observed.guests, key=lambda g: g.vmid):
        if g.vmid in observed.unreadable and g.name not in wanted:
            actions.append(Action("unchanged", g.name, vmid=g.vmid, node=g.node, guest=g, notes=[
                f"cannot be read ({observed.unreadable[g.vmid]}); not pruned"]))
        elif g.vmid not in managed_ids and g.vmid not in shown:
            m = _marker(observed, g)
            if m is not None:  # another instance's or legacy: shown, never deleted
                owner = f"owned by another pveguard instance {m.instance}" if m.instance else \
                    "legacy pveguard marker without an instance id"
                actions.append(Action("foreign", g.name, vmid=g.vmid, node=g.node, guest=g, owner=m.instance,
                                      notes=[f"{owner}; never pruned from here ('pveguard adopt {g.vmid}' "
                                             f"takes it over)"]))
    for g in sorted(managed, key=lambda g: g.vmid):
        if g.name in wanted:
            continue
        if prune:
            gone_cfg = observed.configs.get(g.vmid)
            vols = data_volumes(gone_cfg)
            left_out = left_out_of_backups(vols)
            notes = [f"data volumes destroyed with it: {', '.join(vols)}; a final backup is taken first"
                     + (f" (vzdump leaves out {', '.join(left_out)}: no backup=1)" if left_out else "")
                     + "; apply asks for its name to be typed"] if vols else []
            actions.append(Action("delete", g.name, vmid=g.vmid, node=g.node, guest=g, config=gone_cfg,
                                  notes=notes))
        else:
            actions.append(Action("unchanged", g.name, vmid=g.vmid, node=g.node, guest=g, notes=[
                "managed guest no longer in the strategy; 'apply --prune' deletes it"]))
    out = plan_sorted(actions)
    out.stale_journal = stale
    return out


def plan_sorted(actions: list[Action]) -> Plan:
    """Creates and updates in strategy order, deletes last (free resources only after the rest worked)."""
    order = {"conflict": 0, "create": 1, "update": 1, "resume": 1, "unchanged": 1, "foreign": 1, "delete": 2}
    return Plan(sorted(actions, key=lambda a: order[a.kind]))


def candidate_vmids(guests: list[Guest]) -> list[int]:
    """Guests whose config the planner must read: LXC guests carrying the managed tag (one read each)."""
    from pveguard.backends.base import MANAGED_TAG

    return [g.vmid for g in guests if g.type == "lxc" and MANAGED_TAG in g.tags]
