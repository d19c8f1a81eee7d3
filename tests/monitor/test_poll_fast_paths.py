"""The poll's fast paths give what the plain code gives.

parse_resources fills Samples without the dataclass constructor, derive computes rates inline,
render formats integers without a float, the engine picks the series targets before building
TargetInfos, and evaluate skips the targets with nothing to say without a call each: each is
checked here against the plain code it replaces, on ordinary and odd input (numeric strings,
nulls, booleans, huge and negative numbers, counters that went back)."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import pytest

from pveguard.backends.base import MANAGED_TAG
from pveguard.monitor.alerts import AlertState, Evaluation, Rule, Silence, evaluate, step
from pveguard.monitor.collector import (
    _USAGE_FIELDS,
    Sample,
    Sweep,
    _float,
    _int,
    _tags,
    counter_rate,
    derive,
    parse_resources,
)
from pveguard.monitor.engine import series_targets
from pveguard.monitor.exporter import ExportView, _go, _num, render, render_reference
from pveguard.monitor.series import TargetInfo, select_targets

ODD = [0, 1, -1, 7, 999_999, 1_000_000, 1_000_001, 1_230_000, 10**15, 2**53 - 1, 2**53, 2**53 + 1, 10**16,
       10**17 + 3, -10**7, -2**53, -2**60, "123", "12.5", "", None, True, False, 1.5, 0.25, 1e20, "x"]


def plain_sample(r: dict[str, Any], names: set[str]) -> Sample | None:
    """What parse_resources built before its fast path (the dataclass constructor, field by field)."""
    rtype = str(r.get("type", ""))
    if rtype not in ("lxc", "qemu", "node", "storage"):
        return None
    tags = _tags(r.get("tags"))
    name = str(r.get("name") or r.get("storage") or r.get("node") or "")
    vmid = _int(r["vmid"]) if r.get("vmid") is not None else None
    return Sample(
        id=str(r.get("id") or (f"{rtype}/{vmid}" if vmid is not None else f"{rtype}/{name}")),
        type=rtype, node=str(r.get("node", "")), status=str(r.get("status", "unknown")), name=name, vmid=vmid,
        cpu=_float(r.get("cpu")), maxcpu=_float(r.get("maxcpu")), mem=_int(r.get("mem")),
        maxmem=_int(r.get("maxmem")), disk=_int(r.get("disk")), maxdisk=_int(r.get("maxdisk")),
        netin=_int(r.get("netin")), netout=_int(r.get("netout")), diskread=_int(r.get("diskread")),
        diskwrite=_int(r.get("diskwrite")), uptime=_int(r.get("uptime")), template=bool(_int(r.get("template"))),
        tags=tags, managed=rtype in ("lxc", "qemu") and (MANAGED_TAG in tags or name in names),
        shared=bool(_int(r.get("shared"))) if rtype == "storage" else None,
        plugintype=str(r.get("plugintype", "")),
        content=",".join(sorted(str(r.get("content", "")).split(","))) if r.get("content") else "",
        fields=frozenset(k for k in _USAGE_FIELDS if k in r))


def resources(rnd: random.Random, n: int, odd: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = rnd.choice(["lxc", "lxc", "qemu", "node", "storage", "sdn", "pool"])
        r: dict[str, Any] = {"id": f"{kind}/{100 + i}", "type": kind, "node": f"pve{i % 3}",
                             "status": rnd.choice(["running", "stopped", "online", "offline", "available"])}
        if kind in ("lxc", "qemu"):
            r.update(vmid=100 + i, name=f"g{i}", template=rnd.choice([0, 0, 1]),
                     tags=rnd.choice(["", MANAGED_TAG, "a;b", None]))
        if kind == "storage":
            r.update(storage=f"s{i}", shared=rnd.choice([0, 1, "1"]), plugintype="dir",
                     content=rnd.choice(["iso,backup", "", "vztmpl"]))
        for f in _USAGE_FIELDS:
            if rnd.random() < 0.9:
                r[f] = rnd.choice(ODD) if odd and rnd.random() < 0.3 else rnd.randrange(0, 10**12)
        if rnd.random() < 0.3:
            r["cpu"] = rnd.random()
        if odd and rnd.random() < 0.05:
            r.pop("id")
        if odd and rnd.random() < 0.05:  # not strings where PVE sends strings
            r.update(name=rnd.choice([12345, None, 0]), node=rnd.choice([7, None]), status=rnd.choice([None, 1]))
        out.append(r)
    return out


@pytest.mark.parametrize("odd", [False, True])
def test_parse_resources_fast_path_equals_the_constructor(odd: bool) -> None:
    rows = resources(random.Random(7 + odd), 3000, odd)
    names = {"g5", "g17", "g300"}
    fast = parse_resources(rows, names)
    plain = [s for s in (plain_sample(r, names) for r in rows) if s is not None]
    assert len(fast) == len(plain) > 1000
    for a, b in zip(fast, plain, strict=True):
        assert a == b and hash(a) == hash(b)
        for f in fields(Sample):  # same values and the same types (1 vs 1.0 vs True would compare equal)
            assert type(getattr(a, f.name)) is type(getattr(b, f.name)), (f.name, a, b)
    assert asdict(fast[0]).keys() == {f.name for f in fields(Sample)}


@pytest.mark.parametrize("lazy", [False, True])
def test_derive_inline_rates_equal_counter_rate(lazy: bool) -> None:
    rnd = random.Random(3)
    first = parse_resources(resources(rnd, 2000, False))
    later = []
    for s in first:
        change: dict[str, Any] = {c: getattr(s, c) + rnd.randrange(0, 10**6) for c in ("netin", "netout",
                                                                                       "diskread", "diskwrite")}
        change["uptime"] = s.uptime + 30
        roll = rnd.random()
        if roll < 0.1:  # restarted: uptime went back
            change["uptime"] = rnd.randrange(1, 20)
        elif roll < 0.2:  # one counter went back
            change["netout"] = rnd.randrange(0, 1000)
        elif roll < 0.25:
            change["status"] = "stopped"
        later.append(Sample(**{**asdict(s), **change}))
    for dt in (30.0, 0.0, -5.0):
        got = derive(Sweep(100.0, first), Sweep(100.0 + dt, later), lazy_rates=lazy)
        before = {s.id: s for s in first}
        if lazy and dt > 0:
            assert sum(1 for d in got.values() if "_deltas" in d.__dict__) > 50  # some are lazy
        for s in later:
            d = got[s.id]
            assert d.values is d.values  # read once, the same dict after
            usage = dict(d.usage)
            values = dict(d.values)
            assert usage == {k: v for k, v in values.items() if k in ("cpu", "memory", "disk")} or usage == values
            p = before[s.id]
            for series, c in (("net_in", "netin"), ("net_out", "netout"), ("disk_read", "diskread"),
                              ("disk_write", "diskwrite")):
                want = None
                if s.is_guest and s.up and p.up:
                    r = counter_rate(getattr(p, c), 100.0, getattr(s, c), 100.0 + dt, p.uptime, s.uptime)
                    want = round(r, 3) if r is not None else None
                assert values.pop(series, None) == want, (s.id, series, dt)
            expect: dict[str, float] = {}
            if s.type != "storage" and s.up:
                expect["cpu"] = round(s.cpu * 100, 3)
                if s.maxmem > 0:
                    expect["memory"] = round(s.mem * 100 / s.maxmem, 3)
            if s.maxdisk > 0 and (s.up or s.type == "storage") and s.disk > 0:
                expect["disk"] = round(s.disk * 100 / s.maxdisk, 3)
            assert values == expect


@pytest.mark.parametrize("n", [v for v in ODD if isinstance(v, int) and not isinstance(v, bool)]
                         + [random.Random(1).randrange(-10**18, 10**18) for _ in range(200)])
def test_go_int_is_go_of_the_float(n: int) -> None:
    assert _num(n) == _go(float(n))


def test_render_with_odd_values_is_the_reference() -> None:
    samples = parse_resources(resources(random.Random(11), 1500, True))
    view = ExportView(Sweep(5.0, samples), polls=2)
    assert render(view) == render_reference(view)
    assert render(view) == render(view)  # the remembered size texts give the same bytes again


@pytest.mark.parametrize("change", ["maxmem", "maxdisk", "maxcpu", "status", "name", "node", "tags", "template",
                                    "shared", "content", "plugintype", "fields", "id", "added", "removed", "none"])
def test_static_lines_are_reused_only_while_what_they_show_stays(change: str) -> None:
    """Sizes, pve_up, the shared flag and the info lines are formatted once and reused by the next
    render while nothing they show changed; a change of any of them (or of which guests there are)
    renders them anew. Every render equals the reference, the varying values always being new."""
    from pveguard.monitor import exporter

    rnd = random.Random(5)
    first = parse_resources(resources(rnd, 800, False))
    view = ExportView(Sweep(5.0, first), polls=1)
    assert render(view) == render_reference(view)
    static = exporter._LAST_STATIC
    later = [replace(s, mem=s.mem + 1, netin=s.netin + 7, cpu=s.cpu / 2, uptime=s.uptime + 10) for s in first]
    i = next(k for k, s in enumerate(later) if s.type == ("storage" if change in ("shared", "content", "plugintype")
                                                            else "lxc") and s.status == "running" and s.fields)
    s = later[i]
    edits: dict[str, Any] = {"maxmem": {"maxmem": s.maxmem + 1}, "maxdisk": {"maxdisk": s.maxdisk * 2 + 1},
                             "maxcpu": {"maxcpu": s.maxcpu + 1}, "status": {"status": "stopped"},
                             "name": {"name": s.name + "x"}, "node": {"node": "elsewhere"},
                             "tags": {"tags": (*s.tags, "new")}, "template": {"template": not s.template},
                             "shared": {"shared": not s.shared}, "content": {"content": "images"},
                             "plugintype": {"plugintype": "zfspool"}, "fields": {"fields": s.fields - {"maxmem"}},
                             "id": {"id": s.id + "0"}}
    if change == "added":
        later.append(replace(s, id="lxc/99999", vmid=99999, name="new"))
    elif change == "removed":
        del later[i]
    elif change != "none":
        later[i] = replace(s, **edits[change])
    view = ExportView(Sweep(15.0, later), polls=2)
    assert render(view) == render_reference(view)
    assert (exporter._LAST_STATIC is static) == (change == "none")


@pytest.mark.parametrize("limit", [0, 1, 5, 40, 5000])
def test_series_targets_picks_what_select_targets_picks(limit: int) -> None:
    samples = parse_resources(resources(random.Random(limit), 1200, False), {"g1", "g9", "g77", "g500"})
    chosen = series_targets(samples, limit)
    infos = [TargetInfo(s.id, s.vmid, s.name, s.node, s.type, s.managed, 0.0)
             for s in samples if s.is_guest and not s.template]
    assert {s.id for s in chosen} == select_targets(infos, limit)
    assert len(chosen) == min(limit, len(infos))


def plain_evaluate(rules: list[Rule], states: dict[tuple[str, str], AlertState],
                   observations: dict[str, dict[str, float]], now: float, names: dict[str, str],
                   managed: set[str], silences: list[Silence]) -> Evaluation:
    """evaluate() as it was before its target pre-selection: every target stepped through in turn."""
    out = Evaluation()
    for rule in rules:
        targets = [t for t in observations if not rule.managed_only or t in managed]
        targets += [k[1] for k in states if k[0] == rule.name and k[1] not in observations]
        for target in dict.fromkeys(targets):
            value = observations.get(target, {}).get(rule.metric)
            known = states.get((rule.name, target))
            if known is None and not rule.breached(value):
                continue
            name = names.get(target, "")
            st = known or AlertState(rule.name, target, name)
            if name and st.name != name:
                st = replace(st, name=name)
            silenced = any(s.matches(rule.name, target, name, now) for s in silences if s.until > now)
            new, events = step(rule, st, value, now, silenced)
            out.events += events
            if new.state != "inactive" or new.notified or new.changes or new.flapping(now):
                out.states[new.key] = new
    return out


@dataclass(frozen=True)
class Below(Rule):
    """A rule whose breached() is its own (evaluate must call it, not assume value >= threshold)."""

    def breached(self, value: float | None) -> bool:
        return value is not None and value < self.threshold


def test_evaluate_steps_the_same_alerts_in_the_same_order() -> None:
    rnd = random.Random(5)
    rules = [Rule("cpu", "cpu", 80.0, sustain=0.0), Rule("memory", "memory", 85.0, sustain=60.0),
             Rule("down", "down", 1.0, sustain=0.0, hysteresis=0.0, managed_only=True),
             Below("low", "cpu", 5.0, sustain=0.0, hysteresis=0.0)]
    targets = [f"lxc/{i}" for i in range(400)]
    managed = set(rnd.sample(targets, 40))
    names = {t: f"n{t}" for t in targets}
    silences = [Silence(1, "nlxc/1*", 10**9, "x")]
    states: dict[tuple[str, str], AlertState] = {}
    plain_states: dict[tuple[str, str], AlertState] = {}
    for step_no in range(12):
        now = 1000.0 + 30 * step_no
        obs: dict[str, dict[str, float]] = {}
        for t in targets:
            if rnd.random() < 0.05:
                continue  # gone this poll
            v = {"cpu": rnd.choice([1.0, 50.0, 79.9, 80.0, 95.0]), "memory": rnd.choice([10.0, 84.0, 90.0])}
            if t in managed:
                v["down"] = rnd.choice([0.0, 0.0, 1.0])
            obs[t] = v
        got = evaluate(rules, states, obs, now, names, managed, silences)
        want = plain_evaluate(rules, plain_states, obs, now, names, managed, silences)
        assert list(got.states.items()) == list(want.states.items())
        assert got.events == want.events
        states, plain_states = got.states, want.states
    assert states and any(k[0] == "low" for k in states) and any(k[0] == "down" for k in states)


def test_the_poll_and_the_render_run_with_the_cyclic_gc_paused(tmp_path: Any) -> None:
    import gc

    from pveguard.gcpause import gc_paused
    from pveguard.monitor.engine import Monitor
    from pveguard.store import Store

    seen: list[bool] = []

    class Source:
        name = "test"

        def sweep(self) -> Sweep:
            seen.append(gc.isenabled())
            return Sweep(10.0, parse_resources(resources(random.Random(1), 50, False)))

    assert gc.isenabled()
    mon = Monitor(Store(tmp_path), Source(), [Rule("cpu", "cpu", 80.0)], clock=lambda: 10.0)
    res = mon.poll()
    assert seen == [False] and gc.isenabled() and res.sweep is not None
    render(ExportView(res.sweep))
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ZeroDivisionError), gc_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()


@pytest.mark.parametrize("body", [
    b'{"data":[{"id":"lxc/100","mem":123,"cpu":0.0123456789,"maxcpu":2,"name":"a\\u00e9\\ud83d\\ude00","x":null}]}',
    b'{"data":{"a":1,"a":2}}', b'{"data":[1e400,-0.0,1.5e-7,12345678901234567890]}',
    b'{"data":123456789012345678901234567890}', b'{"data":NaN}', b'{"data":[Infinity,-Infinity]}',
    b'{"data":"\xff"}', b'{"data":', b"", b"  {\"data\": true}  ", b'{"data":"\\ud800"}',
])
def test_lean_get_parses_json_as_json_does(body: bytes) -> None:
    """The lean GET's parser (orjson, json for what it refuses) gives json.loads' values and types, and
    fails where it fails."""
    import json

    from pveguard.backends.pvefast import _loads

    try:
        want = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            _loads(body)
        return
    got = _loads(body)
    if body == b'{"data":123456789012345678901234567890}':
        # the one difference: an integer past 64 bits comes as the nearest float (PVE's Perl emits none:
        # its integers are 64-bit IV/UV, larger numbers are NVs, written with an exponent)
        want = {"data": float(want["data"])}
    assert repr(got) == repr(want)  # repr: types too (1 vs 1.0), and NaN equals itself


def test_rates_from_the_saved_counters_are_the_in_memory_ones(tmp_path: Any) -> None:
    """save_counters keeps only the running guests' counters; the next process's first rates (from the
    saved ones) are what the same process would have computed from the whole previous sweep."""
    from pveguard.monitor.engine import load_counters, save_counters
    from pveguard.monitor.series import open_monitor_store
    from pveguard.store import Store

    rnd = random.Random(9)
    first = parse_resources(resources(rnd, 2000, False))
    later = []
    for s in first:
        roll = rnd.random()
        status = {True: "running", False: "stopped"}[roll < 0.7] if s.is_guest else s.status
        up = s.uptime + 30 if roll < 0.6 else rnd.randrange(0, 20)
        later.append(replace(s, status=status, uptime=up, netin=s.netin + rnd.randrange(-10, 10**6)))
    store = open_monitor_store(Store(tmp_path))
    with store.transaction() as conn:
        save_counters(conn, Sweep(100.0, first))
    saved = load_counters(store, 110.0)
    assert saved is not None
    assert {s.id for s in saved.samples} == {s.id for s in first if s.is_guest and s.status == "running"}
    cur = Sweep(130.0, later)
    want = {k: dict(d.values) for k, d in derive(Sweep(100.0, first), cur).items()}
    assert {k: dict(d.values) for k, d in derive(saved, cur).items()} == want
    assert sum(1 for v in want.values() if "net_in" in v) > 100



def test_a_poll_with_lazy_rates_gives_what_eager_rates_give(tmp_path: Any) -> None:
    """The engine rounds the byte rates only for what reads them; the derived values every consumer
    sees, the alerts, the series and the exposition are those of the plain derive()."""
    from pveguard.monitor.engine import Monitor
    from pveguard.store import Store

    rnd = random.Random(4)
    first = parse_resources(resources(rnd, 1500, False))
    second = [replace(s, netin=s.netin + rnd.randrange(0, 10**6), cpu=rnd.random(), mem=s.maxmem * rnd.random() // 1
                      if s.maxmem else s.mem, uptime=s.uptime + 10) for s in first]
    sweeps = iter([Sweep(100.0, first), Sweep(110.0, second)])

    class Source:
        name = "test"

        def sweep(self) -> Sweep:
            return next(sweeps)

    rules = [Rule("cpu", "cpu", 50.0, sustain=0.0), Rule("memory", "memory", 60.0, sustain=0.0)]
    mon = Monitor(Store(tmp_path), Source(), rules, clock=lambda: 110.0, max_targets=50)
    mon.poll()
    res = mon.poll()
    plain = derive(Sweep(100.0, first), Sweep(110.0, second))
    assert {k: dict(d.values) for k, d in res.derived.items()} == {k: dict(d.values) for k, d in plain.items()}
    assert sum(1 for v in plain.values() if "net_in" in v.values) > 100
    assert any(st.state == "firing" for st in res.states.values())
    kept = [s.id for s in series_targets(second, 50) if "net_in" in plain[s.id].values]
    assert kept and all(mon.series.latest(t, "net_in", 1) == [plain[t].values["net_in"]] for t in kept)


def test_counters_past_64_bits_are_saved_too(tmp_path: Any) -> None:
    """orjson writes the counters; one it cannot write (past 64 bits) makes json write them all."""
    from pveguard.monitor.engine import load_counters, save_counters
    from pveguard.monitor.series import open_monitor_store
    from pveguard.store import Store

    big = Sample(id="lxc/1", type="lxc", node="n", status="running", netin=2**70, uptime=5)
    plain = Sample(id="qemu/2", type="qemu", node="n", status="running", netout=7, uptime=9)
    store = open_monitor_store(Store(tmp_path))
    for samples in ([big, plain], [plain]):
        with store.transaction() as conn:
            save_counters(conn, Sweep(100.0, samples))
        saved = load_counters(store, 101.0)
        assert saved is not None
        assert [(s.id, s.netin, s.netout, s.uptime) for s in saved.samples] == [
            (s.id, s.netin, s.netout, s.uptime) for s in samples]


@pytest.mark.parametrize("values", [
    [0, 1, 7, 999_999, 1_000_000, 1_000_001, 1_230_000, 10**15, 2**53 - 1, 123456789012],  # the int path
    [0, 5, 2**53],  # one past 2**53: every value through _num
    [0, -1, 10],  # a negative: through _num
    [0.0, -0.0, 1e-7, 0.25, 999_999.999_999, 0.342_17, 12.0, -3.5],  # the float path
    [0.5, 1e6], [0.5, 1e300, -1e300], [0.5, math.nan], [0.5, math.inf],  # floats through _num
    [1, 2.5], [True, 3],  # a mix, a bool: through _num
])
def test_a_family_formatted_at_once_is_num_of_each_value(values: list[Any]) -> None:
    from pveguard.monitor.exporter import _lines

    prefixes = [f"m{{id=\"{i}\"}} " for i in range(len(values))]
    assert list(_lines(prefixes, values)) == [p + _go(float(v)) for p, v in zip(prefixes, values, strict=True)]


def breach_sweep(rnd: random.Random, n: int, ts: float, prev: list[Sample] | None) -> Sweep:
    """Guests near and past the thresholds of near_rules() (values that round onto a threshold too),
    managed and unmanaged, running, stopped and unknown, templates, restarts; a few gone or new."""
    out: list[Sample] = []
    before = {s.id: s for s in prev or []}
    near = [0.0, 0.3, 0.79994, 0.799949, 0.79995, 0.799996, 0.8, 0.81, 0.9, 0.7499, 0.7499996, 0.75, 1.0]
    for i in range(n):
        sid = f"{'lxc' if i % 4 else 'qemu'}/{100 + i}"
        if rnd.random() < 0.03:
            continue  # gone this poll
        p = before.get(sid)
        maxmem = 0 if i % 11 == 0 else 2**30
        maxdisk = rnd.choice([10**10, 10**10, 0])
        up = p.uptime + 10 if p is not None and rnd.random() < 0.9 else rnd.randrange(1, 5)
        out.append(Sample(
            id=sid, type=sid.split("/")[0], node=f"pve{i % 3}", name=f"g{i}", vmid=100 + i,
            status=rnd.choice(["running"] * 6 + ["stopped", "unknown"]),
            cpu=rnd.choice(near) if rnd.random() < 0.06 else rnd.random() * 0.7,
            maxcpu=2.0, maxmem=maxmem, mem=p.mem if p is not None and rnd.random() < 0.6 else int(
                maxmem * (rnd.choice(near) if rnd.random() < 0.06 else 0.5)),
            maxdisk=maxdisk, disk=int(maxdisk * (rnd.choice(near) if rnd.random() < 0.06 else 0.4)),
            netin=(p.netin if p else 0) + rnd.randrange(0, 10**6), netout=(p.netout if p else 0) + 5,
            diskread=(p.diskread if p else 0) + 7, diskwrite=(p.diskwrite if p else 0) + 9, uptime=up,
            template=i % 97 == 0, managed=i % 5 == 0, tags=(MANAGED_TAG,) if i % 5 == 0 else ()))
    out.append(Sample(id="node/pve0", type="node", node="pve0", status="online", cpu=0.99, maxmem=10, mem=10))
    return Sweep(ts, out)


def near_rules() -> list[Rule]:
    return [Rule("cpu", "cpu", 80.0, sustain=0.0), Rule("memory", "memory", 75.0, sustain=10.0),
            Rule("disk", "disk", 80.0, sustain=0.0, severity="critical"),
            Rule("mcpu", "cpu", 90.0, sustain=0.0, managed_only=True),
            Rule("down", "down", 1.0, sustain=10.0, hysteresis=0.0, severity="critical", managed_only=True)]


@pytest.mark.parametrize("rules", [near_rules(), [*near_rules(), Rule("net", "net_in", 50_000.0, sustain=0.0)],
                                   [*near_rules(), Below("low", "cpu", 5.0, sustain=0.0, hysteresis=0.0)]],
                         ids=["percentages", "a-rate-rule", "own-breached"])
def test_a_poll_observing_only_the_candidates_alerts_as_observing_all(tmp_path: Any, rules: list[Rule]) -> None:
    """The engine rounds the percentages only for the rules' candidates (alert_candidates): over polls
    where managed and unmanaged guests breach, pend, fire and clear, the alert states and notifications
    are those of evaluate() on every guest's eager values, and every derived value read after the poll
    is the eager one. A rule on a byte rate or with its own breached() makes every guest observed."""
    from pveguard.monitor.engine import Monitor, alert_candidates, load_states, observations
    from pveguard.store import Store

    rnd = random.Random(11)
    now = [1000.0]
    prev: Sweep | None = None
    sweeps: list[Sweep] = []

    class Source:
        name = "test"

        def sweep(self) -> Sweep:
            nonlocal prev
            s = breach_sweep(rnd, 1200, now[0], prev.samples if prev else None)
            sweeps.append(s)
            return s

    mon = Monitor(Store(tmp_path), Source(), rules, clock=lambda: now[0], max_targets=40)
    own = {r.name for r in rules}
    fired: set[tuple[str, bool]] = set()
    rounded_onto = 0
    for _ in range(8):
        states = {k: s for k, s in load_states(mon.store).items() if k[0] in own}
        res = mon.poll()
        sweep = sweeps[-1]
        eager = derive(prev, sweep)
        obs = {k: dict(v) for k, v in observations(sweep, eager).items()}
        want = evaluate(rules, states, obs, now[0], {s.id: s.name for s in sweep.samples},
                        [s.id for s in sweep.samples if s.managed])
        assert list(res.states.items()) == list(want.states.items())
        assert res.events == want.events
        picked = alert_candidates(sweep.samples, rules, {k[1] for k in states})
        if rules == near_rules():
            assert picked is not None and len(picked) < len(obs)  # fewer guests observed
            lazy = [d for d in res.derived.values() if "_s" in d.__dict__]
            assert prev is None or (len(lazy) > 200 and sum(1 for d in lazy if "_usage" not in d.__dict__) > 100)
        else:
            assert picked is None
        # repr: NaN equals itself, and the types too
        assert repr({k: d.values for k, d in res.derived.items()}) == repr({k: d.values for k, d in eager.items()})
        pct = ("cpu", "memory", "disk")  # usage: the percentages, with the rates where computed at once
        assert ({k: {m: v for m, v in d.usage.items() if m in pct} for k, d in res.derived.items()}
                == {k: {m: v for m, v in d.usage.items() if m in pct} for k, d in eager.items()})
        managed = {s.id for s in sweep.samples if s.managed}
        fired |= {(e.rule, e.target in managed) for e in res.events if e.kind == "firing"}
        # below the threshold, rounded onto it: still a candidate (the margin alert_candidates leaves)
        onto = [s.id for s in sweep.samples if s.is_guest and not s.template and s.status == "running"
                and s.cpu * 100 < 80.0 <= round(s.cpu * 100, 3)]
        assert all(("cpu", t) in res.states for t in onto)
        rounded_onto += len(onto)
        prev = sweep
        now[0] += 10.0
    # both kinds of guest breached, on every rule
    assert {("cpu", True), ("cpu", False), ("memory", True), ("memory", False), ("disk", False),
            ("mcpu", True), ("down", True)} <= fired
    assert rounded_onto > 5
