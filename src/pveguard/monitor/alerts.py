"""The alert state machine: pure, deterministic, the clock passed in.

One alert per (rule, target). An alert is `inactive`, `pending` (the value crossed the threshold and
has to stay there for the rule's sustain time) or `firing`. A firing alert clears only when the value
falls below `threshold - hysteresis`, so a value hovering at the threshold does not ring twice.

Notifications are events returned by `step`/`evaluate`: one `firing` per episode, one `resolved` only
for an episode whose `firing` went out, a repeat `firing` after the re-notification cooldown.
Flapping (too many aborted pendings, firings and resolutions within a window) and silences hold
notifications back without changing the state; when the hold ends and the alert is still firing, the
one firing notification goes out then. The whole state is data (`AlertState.to_dict`), so a restart
that reloads it neither forgets an alert nor repeats its notification.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
StateName = Literal["inactive", "pending", "firing"]
EventKind = Literal["firing", "resolved"]

# Flapping defaults, after Pulse's "5 state changes in 300 s -> 15 min cooldown" but counted on the
# edges that would notify or nearly did (aborted pendings, firings, resolutions).
FLAP_CHANGES = 4
FLAP_WINDOW = 900.0
FLAP_COOLDOWN = 900.0


@dataclass(frozen=True)
class Rule:
    """A threshold on one metric; `metric` is a key of the observations (percent, or 1 = down)."""

    name: str
    metric: str
    threshold: float
    sustain: float = 120.0
    hysteresis: float = 5.0
    renotify: float = 4 * 3600.0
    severity: Severity = "warning"
    managed_only: bool = False
    flap_changes: int = FLAP_CHANGES
    flap_window: float = FLAP_WINDOW
    flap_cooldown: float = FLAP_COOLDOWN
    summary: str = ""  # what a firing alert means, when "metric >= threshold%" does not say it

    def breached(self, value: float | None) -> bool:
        return value is not None and value >= self.threshold

    def cleared(self, value: float | None) -> bool:
        return value is None or value < self.threshold - self.hysteresis

    def describe(self) -> str:
        if self.summary:
            return self.summary
        if self.metric == "down":
            return "managed container down"
        return f"{self.metric} >= {self.threshold:g}%"


@dataclass(frozen=True)
class AlertState:
    """Everything the machine remembers about one (rule, target)."""

    rule: str
    target: str
    name: str = ""
    state: StateName = "inactive"
    since: float = 0.0  # when `state` was entered
    started_at: float = 0.0  # when the current episode's pending began
    value: float | None = None
    notified: bool = False  # the current episode's firing notification went out
    last_notified: float = 0.0
    changes: tuple[float, ...] = ()  # edges within the flap window
    flapping_until: float = 0.0
    resolved_at: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.target)

    def flapping(self, now: float) -> bool:
        return now < self.flapping_until

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changes"] = list(self.changes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertState:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in d.items() if k in known}
        data["changes"] = tuple(data.get("changes", ()))
        return cls(**data)


@dataclass(frozen=True)
class Event:
    """A notification to send."""

    kind: EventKind
    rule: str
    target: str
    name: str
    severity: Severity
    value: float | None
    threshold: float
    ts: float
    started_at: float
    description: str
    repeat: bool = False

    @property
    def id(self) -> str:
        """Stable per notification: the same episode and kind always give the same id."""
        suffix = f"+{self.ts:.0f}" if self.repeat else ""
        return event_id(self.rule, self.target, self.started_at, self.kind) + suffix

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = self.id
        return d


def event_id(rule: str, target: str, started_at: float, kind: EventKind) -> str:
    """The id of an episode's (first) firing or resolved notification."""
    return f"{rule}:{target}:{started_at:.3f}:{kind}"


@dataclass(frozen=True)
class Silence:
    """Hold notifications for targets matching `target` (a name, an id like lxc/101, or a glob)."""

    id: int
    target: str
    until: float
    reason: str = ""
    rule: str | None = None
    created: float = 0.0

    def matches(self, rule: str, target: str, name: str, now: float) -> bool:
        if now >= self.until or (self.rule and self.rule != rule):
            return False
        return any(fnmatch.fnmatchcase(x, self.target) for x in (target, name) if x)


def step(rule: Rule, st: AlertState, value: float | None, now: float,
         silenced: bool = False) -> tuple[AlertState, list[Event]]:
    """Advance one alert by one observation (None = no value: guest gone or not running)."""
    changes = tuple(t for t in st.changes if t > now - rule.flap_window)
    state, since, started = st.state, st.since, st.started_at
    resolved_at = st.resolved_at
    edges: list[float] = []
    was_firing = state == "firing"

    if state == "inactive" and rule.breached(value):
        state, since, started = "pending", now, now
    if state == "pending":
        if not rule.breached(value):
            state, since = "inactive", now
            edges.append(now)  # an aborted pending: the series is bouncing around the threshold
        elif now - started >= rule.sustain:
            state, since, resolved_at = "firing", now, None
            edges.append(now)
    elif state == "firing" and rule.cleared(value):
        state, since, resolved_at = "inactive", now, now
        edges.append(now)

    changes += tuple(edges)
    flapping_until = st.flapping_until
    if len(changes) >= rule.flap_changes and edges:
        flapping_until = max(flapping_until, now + rule.flap_cooldown)
    held = silenced or now < flapping_until

    events: list[Event] = []
    notified, last_notified = st.notified, st.last_notified

    def event(kind: EventKind, repeat: bool = False) -> Event:
        return Event(kind, rule.name, st.target, st.name, rule.severity, value, rule.threshold, now,
                     started, rule.describe(), repeat)

    if state == "firing" and not held:
        if not notified:
            events.append(event("firing"))
            notified, last_notified = True, now
        elif rule.renotify > 0 and now - last_notified >= rule.renotify:
            events.append(event("firing", repeat=True))
            last_notified = now
    if was_firing and state != "firing":
        if notified:
            events.append(event("resolved"))
        notified = False

    new = replace(st, state=state, since=since, started_at=started, value=value, notified=notified,
                  last_notified=last_notified, changes=changes, flapping_until=flapping_until,
                  resolved_at=resolved_at)
    return new, events


@dataclass
class Evaluation:
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def evaluate(rules: Iterable[Rule], states: Mapping[tuple[str, str], AlertState],
             observations: Mapping[str, Mapping[str, float]], now: float,
             names: Mapping[str, str] | None = None, managed: Iterable[str] = (),
             silences: Iterable[Silence] = ()) -> Evaluation:
    """Step every alert once. `observations` maps guest id -> metric -> value; a guest missing from it
    (deleted, not reported) counts as no value, which resolves its alerts."""
    names = names or {}
    managed_set = set(managed)
    active_silences = [s for s in silences if s.until > now]
    out = Evaluation()
    empty: Mapping[str, float] = {}
    for rule in rules:
        known_here = dict.fromkeys(k[1] for k in states if k[0] == rule.name)  # ordered, as the states
        metric, breached, threshold = rule.metric, rule.breached, rule.threshold
        plain = type(rule).breached is Rule.breached  # then breached(v) is: v is not None and v >= threshold
        # the targets with something to remember or to say, in the order of the observations: the common
        # case (no state, not breached) is skipped without a call per target
        targets = [t for t, obs in observations.items()
                   if (t in known_here or ((v := obs.get(metric)) is not None and v >= threshold if plain
                                           else breached(obs.get(metric))))
                   and (not rule.managed_only or t in managed_set)]
        targets += [t for t in known_here if t not in observations]
        for target in dict.fromkeys(targets):
            value = observations.get(target, empty).get(metric)
            known = states.get((rule.name, target))
            if known is None and not breached(value):
                continue
            name = names.get(target, "")
            st = known or AlertState(rule.name, target, name)
            if name and st.name != name:
                st = replace(st, name=name)
            silenced = any(s.matches(rule.name, target, name, now) for s in active_silences)
            new, events = step(rule, st, value, now, silenced)
            out.events += events
            if new.state != "inactive" or new.notified or new.changes or new.flapping(now):
                out.states[new.key] = new
    return out


def rules_from_strategy(monitoring: Any) -> list[Rule]:
    """The strategy's thresholds as rules: cpu, memory, disk (percent) and managed container down."""
    sustain = monitoring.sustain.total_seconds()
    renotify = monitoring.renotify.total_seconds()
    hyst = float(monitoring.hysteresis)
    t = monitoring.thresholds
    return [
        Rule("cpu", "cpu", float(t.cpu), sustain, hyst, renotify, "warning"),
        Rule("memory", "memory", float(t.memory), sustain, hyst, renotify, "warning"),
        Rule("disk", "disk", float(t.disk), sustain, hyst, renotify, "critical"),
        Rule("down", "down", 1.0, sustain, 0.0, renotify, "critical", managed_only=True),
    ]
