"""Property tests (hypothesis) for the parsers and the prune algorithm."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvesim.calendar import next_run, parse_calendar_event
from pvesim.prune import RULES, prune_marks
from pvesim.testing import schema_available

UTC = dt.UTC

times = st.lists(st.integers(min_value=1_500_000_000, max_value=1_700_000_000), min_size=0, max_size=60, unique=True)
keeps = st.dictionaries(st.sampled_from(RULES), st.integers(min_value=0, max_value=6))


@given(times, st.lists(st.booleans(), min_size=60, max_size=60), keeps)
def test_prune_invariants(ts: list[int], prot: list[bool], keep: dict[str, int]) -> None:
    backups = [(str(t), t, prot[i]) for i, t in enumerate(ts)]
    marks = prune_marks(backups, keep, UTC)
    assert set(marks) == {b[0] for b in backups}
    for bid, _t, p in backups:
        assert (marks[bid] == "protected") == p
    kept = [b for b in backups if marks[b[0]] == "keep"]
    if any(v > 0 for v in keep.values()):
        assert len(kept) <= sum(keep.values())
    else:
        assert len(kept) == sum(1 for b in backups if not b[2])
    unprotected = sorted((b for b in backups if not b[2]), key=lambda b: -b[1])
    if keep.get("keep-last") and unprotected:
        assert marks[unprotected[0][0]] == "keep"  # the newest unprotected backup always survives keep-last


@given(
    st.sampled_from(["mon", "tue", "sat", "mon..fri", "sat,sun"]),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(1_600_000_000, 1_800_000_000),
)
def test_calendar_next_run_matches_spec(days: str, hour: int, minute: int, after: int) -> None:
    ev = parse_calendar_event(f"{days} {hour:02d}:{minute:02d}")
    nr = next_run(ev, after, UTC)
    assert nr is not None and after < nr <= after + 8 * 86400
    t = dt.datetime.fromtimestamp(nr, UTC)
    assert (t.hour, t.minute, t.second) == (hour, minute, 0)
    allowed = {"mon": {0}, "tue": {1}, "sat": {5}, "mon..fri": {0, 1, 2, 3, 4}, "sat,sun": {5, 6}}[days]
    assert t.weekday() in allowed


@pytest.mark.skipif(not schema_available(), reason="PVE API schema not found")
@settings(max_examples=200)
@given(
    tag=st.integers(1, 4094), rate=st.integers(0, 10**6), fw=st.booleans(), mac=st.tuples(*[st.integers(0, 255)] * 3)
)
def test_net_property_string_roundtrip(tag: int, rate: int, fw: bool, mac: tuple[int, int, int]) -> None:
    from pvesim.handlers.lxc import _fmt

    hw = "BC:24:11:" + ":".join(f"{x:02X}" for x in mac)
    text = f"type=veth,tag={tag},hwaddr={hw},rate={rate},firewall={int(fw)},bridge=vmbr0,name=eth0"
    fmt = _fmt("net[n]")
    parsed = fmt.parse(text)
    printed = fmt.print(parsed)
    assert printed.startswith("name=eth0,bridge=vmbr0,")  # required key first, then sorted
    assert fmt.parse(printed) == parsed
