"""The alert state machine: table-driven scenarios and hypothesis properties."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pveguard.monitor.alerts import AlertState, Event, Rule, Silence, evaluate, rules_from_strategy, step
from pveguard.strategy.models import Strategy

CPU = Rule("cpu", "cpu", 80.0, sustain=60, hysteresis=5, renotify=3600, severity="warning")


def run(rule: Rule, values: list[float | None], interval: float = 30.0, start: float = 1000.0,
        silenced_at: set[int] | None = None) -> tuple[list[str], list[tuple[int, str]], AlertState]:
    """Feed values one poll apart; return the state after each and the (poll index, event) list."""
    st_ = AlertState(rule.name, "lxc/101", "web")
    states, events = [], []
    for i, v in enumerate(values):
        st_, evs = step(rule, st_, v, start + i * interval, silenced=i in (silenced_at or set()))
        states.append(st_.state)
        events += [(i, e.kind + ("+" if e.repeat else "")) for e in evs]
    return states, events, st_


@pytest.mark.parametrize(
    ("values", "states", "events"),
    [
        # sustain 60 s at a 30 s poll: pending at 0 s, still pending at 30 s, firing at 60 s
        ([95, 95, 95], ["pending", "pending", "firing"], [(2, "firing")]),
        # a spike shorter than the sustain never fires
        ([95, 95, 50, 95], ["pending", "pending", "inactive", "pending"], []),
        # hysteresis: 78 keeps it firing, 74.9 clears it
        ([95, 95, 95, 78, 76, 74.9], ["pending", "pending", "firing", "firing", "firing", "inactive"],
         [(2, "firing"), (5, "resolved")]),
        # exactly at the clear line is not below it
        ([95, 95, 95, 75], ["pending", "pending", "firing", "firing"], [(2, "firing")]),
        # a guest that disappears (None) resolves its alert
        ([95, 95, 95, None], ["pending", "pending", "firing", "inactive"], [(2, "firing"), (3, "resolved")]),
        # threshold is inclusive
        ([80, 80, 80], ["pending", "pending", "firing"], [(2, "firing")]),
        ([79.99, 79.99], ["inactive", "inactive"], []),
    ],
)
def test_scenarios(values: list[float | None], states: list[str], events: list[tuple[int, str]]) -> None:
    got_states, got_events, _ = run(CPU, values)
    assert got_states == states
    assert got_events == events


def test_zero_sustain_fires_at_once() -> None:
    rule = Rule("cpu", "cpu", 80, sustain=0)
    assert run(rule, [90])[1] == [(0, "firing")]


def test_renotify_after_cooldown_only() -> None:
    rule = Rule("cpu", "cpu", 80, sustain=0, renotify=90)
    _, events, _ = run(rule, [90] * 8)  # polls at 0,30,...,210 s
    assert events == [(0, "firing"), (3, "firing+"), (6, "firing+")]
    never = Rule("cpu", "cpu", 80, sustain=0, renotify=0)
    assert run(never, [90] * 8)[1] == [(0, "firing")]


def test_silence_holds_then_releases_the_single_notification() -> None:
    _, events, _ = run(CPU, [95] * 6, silenced_at={0, 1, 2, 3})
    assert events == [(4, "firing")]
    # resolved inside the silence and never announced: nothing at all
    _, events, _ = run(CPU, [95, 95, 95, 50, 50], silenced_at={0, 1, 2, 3, 4})
    assert events == []


def test_flapping_fire_resolve_cycles_are_suppressed() -> None:
    rule = Rule("cpu", "cpu", 80, sustain=0, hysteresis=5, flap_changes=4, flap_window=900, flap_cooldown=900)
    values = [95, 50] * 6
    _, events, last = run(rule, values)
    # fire, resolve, fire, resolve -> the 4th edge marks it flapping; later cycles stay quiet
    assert events == [(0, "firing"), (1, "resolved"), (2, "firing"), (3, "resolved")]
    assert last.flapping(1000 + 11 * 30)


def test_bouncing_series_suppresses_its_eventual_firing_until_it_calms_down() -> None:
    rule = Rule("cpu", "cpu", 80, sustain=60, flap_changes=4, flap_window=900, flap_cooldown=600)
    values: list[float | None] = [95, 50] * 4 + [95] * 30
    _, events, _ = run(rule, values)
    # bounces at polls 1,3,5,7 make it flapping at t=7*30; it fires at poll 10 but stays quiet
    # until the cooldown (600 s after the last edge) has passed
    # edges at polls 1,3,5,7 (aborted pendings) make it flapping; it fires at poll 10 (a 5th edge,
    # cooldown now until 10*30+600 s = poll 30) and the one notification goes out at poll 30
    assert events == [(30, "firing")]


def test_restart_roundtrip_preserves_everything() -> None:
    _, _, state = run(CPU, [95, 95, 95])
    again = AlertState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    nxt, events = step(CPU, again, 95, 1000 + 3 * 30)
    assert events == [] and nxt.state == "firing"


def test_evaluate_only_managed_for_down_and_resolves_vanished_targets() -> None:
    rules = rules_from_strategy(Strategy().monitoring)
    down = next(r for r in rules if r.name == "down")
    assert down.managed_only and down.sustain == 120
    obs = {"lxc/101": {"down": 1.0, "cpu": 10.0}, "lxc/102": {"cpu": 10.0}}
    ev = evaluate([down], {}, obs, 0.0, managed=["lxc/101"])
    assert list(ev.states) == [("down", "lxc/101")]
    ev = evaluate([down], ev.states, obs, 120.0, managed=["lxc/101"])
    assert [e.kind for e in ev.events] == ["firing"]
    ev = evaluate([down], ev.states, {}, 150.0, managed=[])  # the guest was deleted
    assert [e.kind for e in ev.events] == ["resolved"] and ev.states[("down", "lxc/101")].state == "inactive"


def test_evaluate_silence_by_name_glob_and_rule() -> None:
    rule = Rule("cpu", "cpu", 80, sustain=0)
    obs = {"lxc/101": {"cpu": 99.0}}
    names = {"lxc/101": "pve-monitoring"}
    sil = [Silence(1, "pve-*", until=100.0, reason="maintenance")]
    assert evaluate([rule], {}, obs, 0.0, names, silences=sil).events == []
    other_rule = [Silence(1, "pve-*", until=100.0, reason="x", rule="memory")]
    assert len(evaluate([rule], {}, obs, 0.0, names, silences=other_rule).events) == 1
    expired = [Silence(1, "lxc/101", until=0.0, reason="x")]
    assert len(evaluate([rule], {}, obs, 0.0, names, silences=expired).events) == 1


def test_rules_from_strategy_defaults() -> None:
    rules = {r.name: r for r in rules_from_strategy(Strategy().monitoring)}
    assert (rules["cpu"].threshold, rules["memory"].threshold, rules["disk"].threshold) == (80, 85, 90)
    assert rules["cpu"].hysteresis == 5 and rules["cpu"].renotify == 4 * 3600
    assert rules["disk"].severity == "critical"


# --- properties ---------------------------------------------------------------------------------

values_st = st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
                     min_size=1, max_size=60)
rule_st = st.builds(
    Rule, name=st.just("cpu"), metric=st.just("cpu"), threshold=st.floats(min_value=10, max_value=95),
    sustain=st.sampled_from([0.0, 30.0, 60.0, 120.0]), hysteresis=st.sampled_from([0.0, 2.0, 5.0, 10.0]),
    renotify=st.sampled_from([0.0, 90.0, 3600.0]), flap_changes=st.integers(2, 6),
    flap_window=st.sampled_from([300.0, 900.0]), flap_cooldown=st.sampled_from([0.0, 300.0, 900.0]))
silence_st = st.sets(st.integers(0, 59), max_size=20)


def _events(rule: Rule, values: list[float | None], silenced: set[int],
            restart_at: int | None = None) -> list[tuple[int, Event]]:
    s = AlertState(rule.name, "lxc/1")
    out: list[tuple[int, Event]] = []
    for i, v in enumerate(values):
        if i == restart_at:  # the process dies and reloads its state from the store
            s = AlertState.from_dict(json.loads(json.dumps(s.to_dict())))
        s, evs = step(rule, s, v, 1000.0 + 30 * i, silenced=i in silenced)
        out += [(i, e) for e in evs]
    return out


@settings(max_examples=300, deadline=None)
@given(rule_st, values_st, silence_st)
def test_notifications_alternate_firing_then_resolved(rule: Rule, values: list[float | None],
                                                      silenced: set[int]) -> None:
    kinds = [e.kind for _, e in _events(rule, values, silenced) if not e.repeat]
    for a, b in itertools.pairwise(kinds):
        assert a != b, kinds
    if kinds:
        assert kinds[0] == "firing"


@settings(max_examples=300, deadline=None)
@given(rule_st, values_st, silence_st)
def test_firing_needs_a_sustained_breach_and_resolution_needs_the_clear_line(
        rule: Rule, values: list[float | None], silenced: set[int]) -> None:
    for i, e in _events(rule, values, silenced):
        if e.kind == "firing":
            # since the last clearing value, some breaching run lasted at least `sustain`
            start = i
            while start > 0 and not rule.cleared(values[start - 1]):
                start -= 1
            runs, run = [], 0
            for v in values[start:i + 1]:
                run = run + 1 if rule.breached(v) else 0
                runs.append(run)
            assert not rule.cleared(values[i])
            assert max(runs) >= 1 and (max(runs) - 1) * 30 >= rule.sustain
        else:
            assert rule.cleared(values[i]), (i, values[i])
        # a silence holds firings; a resolution of an announced alert still goes out (no stale alert)
        assert e.kind == "resolved" or i not in silenced


@settings(max_examples=300, deadline=None)
@given(rule_st, values_st, silence_st, st.integers(0, 59))
def test_restart_anywhere_changes_nothing(rule: Rule, values: list[float | None], silenced: set[int],
                                          restart_at: int) -> None:
    assert _events(rule, values, silenced) == _events(rule, values, silenced, restart_at)


@settings(max_examples=200, deadline=None)
@given(rule_st, values_st)
def test_deterministic_and_bounded(rule: Rule, values: list[float | None]) -> None:
    a, b = _events(rule, values, set()), _events(rule, values, set())
    assert a == b
    episodes = sum(1 for i, v in enumerate(values) if rule.breached(v) and (i == 0 or not rule.breached(values[i - 1])))
    firsts = [e for _, e in a if e.kind == "firing" and not e.repeat]
    assert len(firsts) <= episodes
