"""The guard's decision rules and its policy file, as pure functions over plain data.

Rules (issue 5, docs/guard.md):
* upgrades and reinstalls of installed packages are allowed (security updates must flow);
* a new package is allowed when it is core, when an allowed package of the same transaction depends
  on it (Depends / Pre-Depends / Recommends, any alternative, also through Provides), or when it is
  approved;
* removing or downgrading a core package is refused unless approved; doing so to a non-core one is not;
* ALLOW_CORE_ONLY=false records what would be refused and refuses nothing;
  REQUIRE_APPROVAL=false (with ALLOW_CORE_ONLY=true) refuses with no approval path.
One refused package refuses the whole transaction (apt then installs nothing).

Standard library only: this module sits on the apt hook's hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from pveguard.guard.aptproto import Action
from pveguard.packages.classify import REASON_TEXT, Verdict
from pveguard.records import field, record, replace

POLICY_FORMAT_VERSION = 1

TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:
    from typing import Literal

    ItemVerdict = Literal["allow", "refuse", "record"]


# --- policy file --------------------------------------------------------------------------------


class PolicyFileError(ValueError):
    """The policy file is not what `pveguard guard install` writes."""


@record(frozen=True)
class Policy:
    """The installation policy as the hook reads it (rendered from the strategy by `guard install`)."""

    allow_core_only: bool = True
    require_approval: bool = True
    container_first: bool = True
    core_roots: tuple[str, ...] = ("proxmox-ve",)
    extra_allowed: tuple[str, ...] = ()
    approval_ttl: int = 86_400
    state_dir: str = "/var/lib/pveguard"
    ledger_key_file: str = ""
    containers: tuple[tuple[str, tuple[str, ...]], ...] = ()


_BOOL_KEYS = {"ALLOW_CORE_ONLY": "allow_core_only", "REQUIRE_APPROVAL": "require_approval",
              "CONTAINER_FIRST": "container_first"}
_LIST_KEYS = {"CORE_ROOTS": "core_roots", "EXTRA_ALLOWED": "extra_allowed"}
_TEXT_KEYS = {"STATE_DIR": "state_dir", "LEDGER_KEY_FILE": "ledger_key_file"}
_REQUIRED = ("VERSION", "ALLOW_CORE_ONLY", "REQUIRE_APPROVAL", "CONTAINER_FIRST", "CORE_ROOTS", "STATE_DIR")
_CONTAINER_PREFIX = "CONTAINER."


def render_policy(policy: Policy) -> str:
    """The KEY=VALUE text of the policy file (one setting per line, lists comma-separated)."""

    def b(v: bool) -> str:
        return "true" if v else "false"

    lines = [
        "# pveguard installation policy, written by 'pveguard guard install' from the strategy.",
        "# Do not edit: change the strategy and run 'pveguard guard install' again. The apt hook",
        "# refuses every transaction when this file is unreadable or invalid (see docs/guard.md).",
        f"VERSION={POLICY_FORMAT_VERSION}",
        f"ALLOW_CORE_ONLY={b(policy.allow_core_only)}",
        f"REQUIRE_APPROVAL={b(policy.require_approval)}",
        f"CONTAINER_FIRST={b(policy.container_first)}",
        f"CORE_ROOTS={','.join(policy.core_roots)}",
        f"EXTRA_ALLOWED={','.join(policy.extra_allowed)}",
        f"APPROVAL_TTL={policy.approval_ttl}",
        f"STATE_DIR={policy.state_dir}",
        f"LEDGER_KEY_FILE={policy.ledger_key_file}",
    ]
    lines += [f"{_CONTAINER_PREFIX}{name}={','.join(components)}" for name, components in policy.containers]
    return "\n".join(lines) + "\n"


def parse_policy(text: str) -> Policy:
    """Parse the policy file strictly; PolicyFileError names the line and what is wrong."""
    values: dict[str, object] = {}
    containers: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PolicyFileError(f"line {number}: expected KEY=VALUE, got {raw[:60]!r}")
        if key in seen:
            raise PolicyFileError(f"line {number}: {key} is set twice")
        seen.add(key)
        if key == "VERSION":
            if value != str(POLICY_FORMAT_VERSION):
                raise PolicyFileError(f"line {number}: format VERSION {value!r} is not {POLICY_FORMAT_VERSION}")
        elif key in _BOOL_KEYS:
            if value not in ("true", "false"):
                raise PolicyFileError(f"line {number}: {key} must be true or false, not {value!r}")
            values[_BOOL_KEYS[key]] = value == "true"
        elif key in _LIST_KEYS:
            values[_LIST_KEYS[key]] = _split(value)
        elif key in _TEXT_KEYS:
            values[_TEXT_KEYS[key]] = value
        elif key == "APPROVAL_TTL":
            if not value.isdigit() or int(value) <= 0:
                raise PolicyFileError(f"line {number}: APPROVAL_TTL must be a positive number of seconds")
            values["approval_ttl"] = int(value)
        elif key.startswith(_CONTAINER_PREFIX) and len(key) > len(_CONTAINER_PREFIX):
            containers.append((key[len(_CONTAINER_PREFIX):], _split(value)))
        else:
            raise PolicyFileError(f"line {number}: unknown key {key!r}")
    missing = [k for k in _REQUIRED if k not in seen]
    if missing:
        raise PolicyFileError(f"missing {', '.join(missing)}")
    if not values.get("core_roots"):
        raise PolicyFileError("CORE_ROOTS is empty")
    if not values.get("state_dir"):
        raise PolicyFileError("STATE_DIR is empty")
    return replace(Policy(), containers=tuple(containers), **values)  # type: ignore[arg-type]


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


# --- which container fits -------------------------------------------------------------------------


def fitting_container(package: str, containers: Iterable[tuple[str, Sequence[str]]]) -> str | None:
    """The strategy container whose components match `package` best (first one on a tie), or None.

    Exact component name beats a component at the start or end of the package name
    (`prometheus-node-exporter`), which beats a component that is one '-' part of it.
    """
    best: tuple[int, str] | None = None
    tokens = package.lower().split("-")
    for name, components in containers:
        score = 0
        for comp in components:
            c = comp.strip().lower()
            if not c:
                continue
            if c == package.lower():
                s = 3
            elif package.startswith(c + "-") or package.endswith("-" + c):
                s = 2
            elif "-" not in c and " " not in c and c in tokens:
                s = 1
            else:
                s = 0
            score = max(score, s)
        if score and (best is None or score > best[0]):
            best = (score, name)
    return best[1] if best else None


# --- approvals ------------------------------------------------------------------------------------


@record(frozen=True)
class Approval:
    """An approval as the rules see it (the store keeps who, why and when)."""

    id: int
    package: str
    version: str | None
    expires_at: float
    uses_left: int
    revoked: bool = False


def match_approval(approvals: Iterable[Approval], package: str, version: str | None,
                   now: float) -> tuple[Approval | None, str]:
    """The approval that covers `package` at `version` now, else (None, why none applies)."""
    why: list[str] = []
    for a in sorted(approvals, key=lambda a: a.id):
        if a.package != package:
            continue
        if a.revoked:
            why.append(f"approval #{a.id} was revoked")
        elif a.expires_at <= now:
            why.append(f"approval #{a.id} has expired")
        elif a.uses_left <= 0:
            why.append(f"approval #{a.id} is used up")
        elif a.version is not None and a.version != version:
            why.append(f"approval #{a.id} is for version {a.version}, not {version or 'removal'}")
        else:
            return a, ""
    return None, "; ".join(why)


# --- decisions ------------------------------------------------------------------------------------


@record(frozen=True)
class Candidate:
    """One package of the transaction with what the rules need to know about it."""

    action: Action
    verdict: Verdict
    pulls: tuple[str, ...] = ()
    """Names the new version depends on (Depends / Pre-Depends / Recommends, every alternative)."""
    provides: tuple[str, ...] = ()


@record
class Item:
    package: str
    kind: str
    old_version: str | None
    new_version: str | None
    verdict: ItemVerdict
    reason: str
    detail: str = ""
    approval_id: int | None = None
    container: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"package": self.package, "action": self.kind, "old_version": self.old_version,
                "new_version": self.new_version, "verdict": self.verdict, "reason": self.reason,
                "detail": self.detail, "approval": self.approval_id, "container": self.container}


@record
class Decision:
    allowed: bool
    items: list[Item] = field(default_factory=list)
    mode: Literal["enforce", "record-only"] = "enforce"

    @property
    def refused(self) -> list[Item]:
        return [i for i in self.items if i.verdict == "refuse"]

    @property
    def used_approvals(self) -> list[int]:
        """Approvals this decision spends: only an enforced transaction that goes through spends any."""
        if not self.allowed or self.mode != "enforce":
            return []
        return sorted({i.approval_id for i in self.items if i.approval_id is not None and i.verdict == "allow"})


# pveguard's own Debian package: upgrades pass like any installed package's; a first install
# (a host moving from a git checkout with the guard on to the package) is allowed too, and what it
# pulls in with it as its dependencies.
SELF_PACKAGE = "pveguard"


def decide(candidates: Sequence[Candidate], policy: Policy, approvals: Sequence[Approval],
           now: float) -> Decision:
    """Apply the rules to one transaction (one candidate per package)."""
    items: dict[str, Item] = {}
    pending: dict[str, Candidate] = {}
    why_not: dict[str, str] = {}
    use_approvals = policy.require_approval
    for c in candidates:
        a = c.action
        item = Item(a.package, a.kind, a.old_version, a.new_version, "allow", "")
        if a.kind in ("upgrade", "reinstall"):
            item.reason = a.kind
        elif a.kind == "install":
            if c.verdict.core:
                item.reason, item.detail = "core", _verdict_text(c.verdict)
            elif a.package == SELF_PACKAGE:
                item.reason, item.detail = "pveguard", "the guard's own package (docs/packaging.md)"
            else:
                pending[a.package] = c
                continue
        elif a.kind in ("remove", "downgrade"):
            if not c.verdict.core:
                item.reason = f"non-core {a.kind}"
            else:
                version = a.new_version if a.kind == "downgrade" else None
                approval, why = (match_approval(approvals, a.package, version, now) if use_approvals
                                 else (None, ""))
                if approval is not None:
                    item.reason, item.approval_id = "approved", approval.id
                else:
                    item.verdict, item.reason, item.detail = "refuse", f"core {a.kind}", _verdict_text(c.verdict)
                    if why:
                        why_not[a.package] = why
        items[a.package] = item

    by_name = {c.action.package: c for c in candidates}
    while pending:
        progressed = _allow_dependencies(items, pending, by_name)
        if use_approvals:
            for name in list(pending):
                c = pending[name]
                approval, why = match_approval(approvals, name, c.action.new_version, now)
                if approval is not None:
                    items[name] = Item(name, "install", None, c.action.new_version, "allow", "approved",
                                       approval_id=approval.id)
                    del pending[name]
                    progressed = True
                elif why:
                    why_not[name] = why
        if not progressed:
            break
    for name, c in pending.items():
        items[name] = Item(name, "install", None, c.action.new_version, "refuse", "non-core",
                           _verdict_text(c.verdict), container=fitting_container(name, policy.containers))
    ordered = [items[c.action.package] for c in candidates]
    for item in ordered:
        if item.package in why_not and item.verdict == "refuse":
            item.detail = f"{item.detail}; {why_not[item.package]}" if item.detail else why_not[item.package]
    if not policy.allow_core_only:
        for item in ordered:
            if item.verdict == "refuse":
                item.verdict = "record"
        return Decision(True, ordered, "record-only")
    return Decision(not any(i.verdict == "refuse" for i in ordered), ordered)


def _allow_dependencies(items: dict[str, Item], pending: dict[str, Candidate],
                        by_name: Mapping[str, Candidate]) -> bool:
    """Allow pending packages that allowed packages of this transaction pull in; True if any was."""
    progressed = False
    changed = True
    while changed and pending:
        changed = False
        wanted: dict[str, str] = {}
        for name, item in items.items():
            if item.verdict != "allow" or item.kind == "remove":
                continue
            for dep in by_name[name].pulls:
                wanted.setdefault(dep, name)
        for name in list(pending):
            c = pending[name]
            parent = wanted.get(name) or next((wanted[p] for p in c.provides if p in wanted), None)
            if parent is not None:
                items[name] = Item(name, "install", None, c.action.new_version, "allow", "dependency",
                                   f"pulled in by {parent}")
                del pending[name]
                changed = progressed = True
    return progressed


def _verdict_text(v: Verdict) -> str:
    text = REASON_TEXT.get(v.reason, v.reason)
    return f"{text} ({v.detail})" if v.detail else text


# --- messages -------------------------------------------------------------------------------------

_NAME_OK = re.compile(r"^[a-z0-9][a-z0-9+.\-]*$")


def messages(decision: Decision, policy: Policy) -> list[str]:
    """What the hook prints: one line per refused (or, record-only, would-be-refused) package, then
    one summary line."""
    out: list[str] = []
    for item in decision.items:
        if item.verdict == "allow":
            continue
        out.append(_refusal_line(item, policy))
    if decision.mode == "record-only":
        if out:
            out.append("pveguard: ALLOW_CORE_ONLY=false, so nothing is refused; the above is only recorded.")
    elif not decision.allowed:
        n = len(decision.refused)
        out.append(f"pveguard: the whole transaction is refused ({n} of {len(decision.items)} package(s)); "
                   "nothing was installed, removed or changed.")
    return out


def _refusal_line(item: Item, policy: Policy) -> str:
    """One refusal and the way forward. CONTAINER_FIRST decides which way a non-core package is
    pointed: on, to its container (only there, when a strategy container hosts it: an approval to put
    it on the host is not what a container-first policy suggests); off, to an approval only."""
    pkg = item.package if _NAME_OK.match(item.package) else repr(item.package)
    verb = "would refuse" if item.verdict == "record" else "refused"
    if item.reason == "non-core":
        head = f"pveguard: {verb} '{pkg}' ({item.detail})."
        if not policy.container_first:
            if policy.require_approval:
                return f'{head} Approve it for the host: pveguard approve {pkg} --reason "..."'
            return f"{head} Approvals are disabled by the policy (REQUIRE_APPROVAL=false)."
        if item.container:
            return (f"{head} It belongs in container '{item.container}' (CONTAINER_FIRST): "
                    f"pveguard install {pkg}")
        where = f"Run it in a container: pveguard install {pkg} --container NAME"
        target = pkg
    else:
        action = "removing" if item.kind == "remove" else "downgrading"
        versions = f" {item.old_version} -> {item.new_version}" if item.kind == "downgrade" else ""
        head = f"pveguard: {verb} {action} '{pkg}'{versions} (core PVE package: {item.detail})."
        where = "Keep it"
        target = f"{pkg}={item.new_version}" if item.kind == "downgrade" else pkg
    if policy.require_approval:
        return f'{head} {where}, or approve it: pveguard approve {target} --reason "..."'
    return f"{head} {where}. Approvals are disabled by the policy (REQUIRE_APPROVAL=false)."
