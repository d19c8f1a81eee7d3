"""Resource exhaustion on real LXC (slow; issue 14's "done when"): a memory hog past the threshold in a
container leads -- through the monitor's sustained alert and one `recover --once` -- to a live memory
increase (the cgroup limit really raised, a receipt in the ledger), an `rca` report that names the hog
and the OOM-killer lines of an earlier kill, and `scale --revert` puts the strategy's size back."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import pytest
import yaml

from .conftest import pveguard as run_pveguard

pytestmark = pytest.mark.slow
MIB = 1 << 20


pveguard = partial(run_pveguard, timeout=900)


def used_mib(b: Any, vmid: int) -> float:
    s = next(x for x in b.stats() if x.vmid == vmid)
    return s.mem / MIB


def test_a_memory_hog_is_scaled_live_reported_and_reverted(lxc_env: Any) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("x")
    strategy = lxc_env.root / "strategy.yaml"
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 31},
        "containers": [{"name": "pgx-hog", "role": "test", "resources": {"cores": 1, "memory": "256M",
                                                                          "swap": "64M", "storage": "1G"},
                        "network": {"ip": "10.250.31.21/24"}}],
        "monitoring": {"sustain": "1s", "poll_interval": "5s", "thresholds": {"memory": 85}},
        "emergency": {"resource_exhaustion": {"scale_step": 0.25, "scale_max": 2.0}},
    }
    env = lxc_env.cli_env(doc)
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    [g] = b.list_guests()
    assert g.status == "running"
    limit_key = "memory.max" if b.facts.layout.version == 2 else "memory.limit_in_bytes"
    assert b.cgroup_value(g, limit_key) == str(256 * MIB)
    # the hog: a copy of `tail` named memhog, which keeps all of its input in memory until EOF
    assert b.exec(g, ["cp", "/usr/bin/tail", "/usr/local/bin/memhog"]).ok
    # first an allocation past the limit: the OOM killer kills it (the rca report must show that)
    r = b.exec(g, ["sh", "-c", "head -c 600m /dev/zero | memhog > /dev/null"], timeout=120)
    assert r.returncode != 0
    # then one that stays: ~92 % of the limit with what the container already uses
    base = used_mib(b, g.vmid)
    fill = int(256 * 0.92 - base)
    assert fill > 100, f"the container already uses {base:.0f} MiB of 256"
    # (every stream redirected: lxc-attach returns once nothing holds its pipes)
    r = b.exec(g, ["sh", "-c", f"{{ head -c {fill}m /dev/zero; exec sleep 900; }} </dev/null 2>/dev/null | "
                               "memhog > /dev/null 2>&1 & echo $! > /run/memhog.pid"], timeout=30)
    assert r.ok, r.stderr
    for _ in range(100):
        if used_mib(b, g.vmid) >= 256 * 0.86:
            break
        time.sleep(0.2)
    assert used_mib(b, g.vmid) >= 256 * 0.86, used_mib(b, g.vmid)

    # the monitor sees it twice, `sustain` apart: the memory alert fires
    for i in range(2):
        code, out, err = pveguard(env, "monitor", "--once", "--json")
        assert code == 0, out + err
        if i == 0:
            time.sleep(1.2)
    alerts = json.loads(out)["alerts"]
    assert [a["state"] for a in alerts if a["rule"] == "memory"] == ["firing"], alerts

    started = time.monotonic()
    code, out, err = pveguard(env, "recover", "--once", "--json")
    seconds = time.monotonic() - started
    assert code == 0, out + err
    [h] = json.loads(out)["exhaustion"]
    assert (h["name"], h["rule"], h["action"]) == ("pgx-hog", "memory", "scaled"), h
    assert (h["scale"]["before"]["memory_mib"], h["scale"]["after"]["memory_mib"], h["scale"]["live"]) == \
        (256, 320, True)
    assert h["top"][0]["comm"] == "memhog", h["top"]
    assert b.cgroup_value(g, limit_key) == str(320 * MIB)  # the kernel's limit, raised while it runs
    assert b.list_guests()[0].status == "running"
    code, out, err = pveguard(env, "audit-log", "show", "--action", "recover.scale", "--json")
    assert code == 0, err
    receipts = [e for e in json.loads(out) if e["action"] == "recover.scale"]
    assert [(e["details"]["result"], e["details"]["after"]["memory_mib"]) for e in receipts] == [("ok", 320)]
    print(f"\nrecover --once (identify, scale, rca) took {seconds:.1f}s")

    # a window of a minute: the kill above, not one of an earlier run with the same VMID
    code, out, err = pveguard(env, "rca", "pgx-hog", "--since", "1m", "--format", "json")
    assert code == 0, err
    r = json.loads(out)
    assert r["top"]["processes"][0]["comm"] == "memhog"
    assert r["metrics"]["memory"]["max"] >= 85
    host = r["oom"]["host"]
    assert host["oom_kill"] is not None and host["oom_kill"] >= 1, host
    assert any("memhog" in line for line in host["lines"]), host  # the earlier kill, named
    assert "recover.scale" in [e["action"] for e in r["ledger"]]
    code, md, err = pveguard(env, "rca", "pgx-hog", "--since", "1m")
    assert code == 0 and "largest process: memhog" in md and "the OOM killer acted" in md, md

    # revert: the hog goes first (a limit below what is in use is refused by the kernel), then 256 MiB again
    assert b.exec(g, ["sh", "-c", "kill $(cat /run/memhog.pid)"]).ok
    code, out, err = pveguard(env, "scale", "pgx-hog", "--revert", "--json")
    assert code == 0, out + err
    rev = json.loads(out)
    assert (rev["before"]["memory_mib"], rev["after"]["memory_mib"], rev["live"]) == (320, 256, True)
    assert b.cgroup_value(g, limit_key) == str(256 * MIB)

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--prune", "--yes")
    assert code == 0, out + err
