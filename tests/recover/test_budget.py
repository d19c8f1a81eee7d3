"""The restart budget as a table of cases, and its promises as properties (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pveguard.recover.budget import Budget, RestartState, clear, decide

B = Budget(max_restarts=3, window=3600.0, backoff=30.0, quarantine=False)
Q = replace(B, quarantine=True)


@pytest.mark.parametrize(("name", "budget", "state", "now", "failing", "kind", "retry_at", "alert"), [
    ("healthy stays healthy", B, RestartState(), 100.0, False, "healthy", None, False),
    ("first failure restarts at once", B, RestartState(), 100.0, True, "restart", None, False),
    ("second waits the backoff", B, RestartState((100.0,)), 110.0, True, "wait", 130.0, False),
    ("second after the backoff", B, RestartState((100.0,)), 130.0, True, "restart", None, False),
    ("third waits twice the backoff", B, RestartState((100.0, 130.0)), 180.0, True, "wait", 190.0, False),
    ("third after 2x backoff", B, RestartState((100.0, 130.0)), 190.0, True, "restart", None, False),
    ("spent: alert once", B, RestartState((100.0, 130.0, 190.0)), 400.0, True, "exhausted", 3700.0, True),
    ("spent, alerted: no second alert", B, RestartState((100.0, 130.0, 190.0), exhausted_at=400.0), 500.0, True,
     "exhausted", 3700.0, False),
    ("oldest left the window: restart again", B, RestartState((100.0, 130.0, 190.0), exhausted_at=400.0), 3700.0,
     True, "restart", None, False),
    ("spent with quarantine", Q, RestartState((100.0, 130.0, 190.0)), 400.0, True, "quarantine", None, True),
    ("quarantined stays so, failing", Q, RestartState((1.0,), quarantined_at=2.0), 9e9, True, "quarantined", None,
     False),
    ("quarantined stays so, healthy", Q, RestartState((1.0,), quarantined_at=2.0), 9e9, False, "quarantined", None,
     False),
    ("no budget at all", replace(B, max_restarts=0), RestartState(), 1.0, True, "exhausted", None, True),
    ("zero backoff restarts at once", replace(B, backoff=0.0), RestartState((100.0,)), 100.0, True, "restart", None,
     False),
])
def test_decide(name: str, budget: Budget, state: RestartState, now: float, failing: bool, kind: str,
                retry_at: float | None, alert: bool) -> None:
    d = decide(state, budget, now, failing)
    assert (d.kind, d.retry_at, d.alert) == (kind, retry_at, alert), name


def test_restart_counts_itself_and_healthy_forgets_old_restarts() -> None:
    d = decide(RestartState((1.0,)), B, 4000.0, True)
    assert d.kind == "restart" and d.state.restarts == (4000.0,)  # 1.0 left the window
    h = decide(RestartState((1.0, 3900.0)), B, 4000.0, False)
    assert h.state.restarts == (3900.0,)


def test_quarantine_keeps_the_reason_and_clear_resets() -> None:
    d = decide(RestartState((1.0, 2.0, 3.0)), Q, 10.0, True, reason="not running (stopped)")
    assert d.state.quarantined_at == 10.0 and d.state.quarantine_reason == "not running (stopped)"
    assert clear(d.state) == RestartState()


steps = st.lists(st.tuples(st.floats(0, 4000, allow_nan=False), st.booleans(), st.booleans()), max_size=60)
budgets = st.builds(Budget, st.integers(0, 5), st.floats(1, 7200, allow_nan=False), st.floats(0, 600, allow_nan=False),
                    st.booleans())


@settings(max_examples=300, deadline=None)
@given(budgets, steps)
def test_promises_hold_for_any_history(budget: Budget, history: list[tuple[float, bool, bool]]) -> None:
    """Never more than max_restarts restarts in any window; each restart after the exponential backoff;
    nothing after a quarantine until it is cleared; one alert per exhaustion."""
    state, now = RestartState(), 0.0
    restarts: list[float] = []
    quarantined = False
    alerts_since_restart = 0
    for gap, failing, admin_clears in history:
        now += gap
        if admin_clears and quarantined:
            state, quarantined = clear(state), False
            restarts = []  # the admin's fresh budget
            alerts_since_restart = 0
        d = decide(state, budget, now, failing)
        if quarantined:
            assert d.kind == "quarantined" and d.state == state
        if d.kind == "restart":
            recent = [t for t in restarts if now - t < budget.window]
            assert len(recent) < budget.max_restarts
            if recent:
                assert now >= max(recent) + budget.backoff * 2 ** (len(recent) - 1)
            restarts.append(now)
            alerts_since_restart = 0
        if d.alert:
            alerts_since_restart += 1
            assert alerts_since_restart == 1, "a second alert for the same exhaustion"
        if d.kind == "quarantine":
            assert budget.quarantine
            quarantined = True
        assert not failing or d.kind != "healthy"
        state = d.state
