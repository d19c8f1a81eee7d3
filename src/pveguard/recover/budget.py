"""The restart budget: pure decisions, the clock passed in, the state as data.

A container that fails (not running, or running and unhealthy) is restarted at once the first time;
each further restart within `window` waits `backoff`, doubling (backoff, 2x, 4x ...) after the
previous one, and at most `max_restarts` restarts fall within any `window`. When the budget is spent
`on_exhausted` decides: `alert` says so once and waits until the oldest restart leaves the window;
`quarantine` says so once and stops trying until an admin clears it (`pveguard recover clear NAME`).
The state (`RestartState`) is plain data kept in the store, so a `--once` run from a timer continues
where the previous one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

DecisionKind = Literal["healthy", "restart", "wait", "exhausted", "quarantine", "quarantined"]


@dataclass(frozen=True)
class Budget:
    max_restarts: int
    window: float  # seconds
    backoff: float  # seconds before the 2nd restart in the window; doubles after each further one
    quarantine: bool  # on_exhausted == "quarantine"

    def delay(self, restarts_in_window: int) -> float:
        """Seconds to wait after the last restart before the next, given how many are in the window."""
        if restarts_in_window <= 0:
            return 0.0
        return float(self.backoff * 2 ** (restarts_in_window - 1))


@dataclass(frozen=True)
class RestartState:
    """What the watchdog remembers about one container."""

    restarts: tuple[float, ...] = ()  # when each restart within the (last) window began
    quarantined_at: float | None = None
    quarantine_reason: str | None = None
    exhausted_at: float | None = None  # the alert for the current exhaustion went out then

    def in_window(self, budget: Budget, now: float) -> tuple[float, ...]:
        return tuple(t for t in self.restarts if now - t < budget.window)


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    state: RestartState  # the state after this decision (persist it)
    retry_at: float | None = None  # for `wait` / `exhausted`: the earliest next restart
    alert: bool = False  # send an alert now (once per exhaustion or quarantine)


def decide(state: RestartState, budget: Budget, now: float, failing: bool, reason: str = "") -> Decision:
    """What to do with one container now. `failing`: not running or unhealthy. A `restart` decision
    already counts the restart in the returned state (it is recorded before it is attempted)."""
    if state.quarantined_at is not None:
        return Decision("quarantined", state)
    recent = state.in_window(budget, now)
    if not failing:
        # forget restarts that left the window; an exhaustion ends when a restart is possible again
        done = state.exhausted_at if len(recent) >= budget.max_restarts else None
        return Decision("healthy", replace(state, restarts=recent, exhausted_at=done))
    if len(recent) >= budget.max_restarts:
        retry_at = min(recent) + budget.window if recent else None
        if budget.quarantine:
            q = replace(state, restarts=recent, quarantined_at=now, quarantine_reason=reason or "restart budget spent",
                        exhausted_at=now)
            return Decision("quarantine", q, alert=True)
        first = state.exhausted_at is None
        return Decision("exhausted", replace(state, restarts=recent, exhausted_at=state.exhausted_at or now),
                        retry_at=retry_at, alert=first)
    if recent:
        ready = max(recent) + budget.delay(len(recent))
        if now < ready:
            return Decision("wait", replace(state, restarts=recent), retry_at=ready)
    return Decision("restart", replace(state, restarts=(*recent, now), exhausted_at=None))


def clear(state: RestartState) -> RestartState:
    """An admin's `recover clear`: out of quarantine with a fresh budget."""
    return RestartState()
