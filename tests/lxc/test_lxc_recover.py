"""The watchdog on real LXC (slow): kill -9 of a container's init, and a service failing its health
check inside the container, are both repaired by `pveguard recover --once` through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any

import pytest
import yaml

from .conftest import pveguard as run_pveguard

pytestmark = pytest.mark.slow


pveguard = partial(run_pveguard, timeout=900)


def init_pid(lxcpath: str, name: str) -> int:
    out = subprocess.run(["lxc-info", "-P", lxcpath, "-n", name, "-p", "-H"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def test_kill_9_of_init_and_a_failing_check_are_repaired(lxc_env: Any) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("r")
    strategy = lxc_env.root / "strategy.yaml"
    # /run is a tmpfs inside the container: a restart clears the "broken" flag, as a restart clears a hung service
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 30},
        "containers": [{"name": "pgt-rc", "role": "test", "resources": {"cores": 1, "memory": "256M",
                                                                         "swap": "256M", "storage": "1G"},
                        "network": {"ip": "10.250.30.21/24"},
                        "health_checks": [{"type": "command", "command": ["sh", "-c", "test ! -e /run/broken"],
                                           "interval": "1s"}]}],
        "emergency": {"container_failure": {"max_restarts": 3, "window": "1h", "backoff": "0s"}},
    }
    env = lxc_env.cli_env(doc)
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    [g] = b.list_guests()
    assert g.status == "running"
    code, out, err = pveguard(env, "recover", "--once", "--json")
    assert code == 0, out + err
    assert json.loads(out)["containers"][0]["action"] == "none"

    # kill -9 of the container's init: the container is gone (stopped)
    pid = init_pid(b.config.lxcpath, str(g.vmid))
    assert pid > 0
    os.kill(pid, 9)
    for _ in range(100):
        if b.list_guests()[0].status == "stopped":
            break
        time.sleep(0.1)
    assert b.list_guests()[0].status == "stopped"
    code, out, err = pveguard(env, "recover", "--once", "--json")
    assert code == 0, out + err
    [o] = json.loads(out)["containers"]
    assert (o["action"], o["reason"]) == ("restarted", "not running (stopped)")
    assert [c["ok"] for c in o["checks"]] == [True]
    assert b.list_guests()[0].status == "running" and init_pid(b.config.lxcpath, str(g.vmid)) not in (0, pid)

    # a service that fails its check while the container runs: restarted, healthy again
    [g] = b.list_guests()
    assert b.exec(g, ["touch", "/run/broken"]).ok
    time.sleep(1.1)  # the check's interval
    code, out, err = pveguard(env, "recover", "--once", "--json")
    assert code == 0, out + err
    [o] = json.loads(out)["containers"]
    assert o["action"] == "restarted" and o["reason"].startswith("unhealthy: command sh -c test ! -e /run/broken")
    [g] = b.list_guests()
    assert g.status == "running" and not b.exec(g, ["test", "-e", "/run/broken"]).ok
    code, out, err = pveguard(env, "audit-log", "show", "--action", "recover.restart", "--json")
    assert code == 0, err
    assert [e["details"]["result"] for e in json.loads(out) if e["action"] == "recover.restart"] == ["ok", "ok"]

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--prune", "--yes")
    assert code == 0, out + err


def test_the_loop_wakes_on_a_stop_event(lxc_env: Any) -> None:
    """`pveguard recover` as a loop with a 60 s interval repairs a kill -9 within seconds: lxc-monitor's
    STOPPED wakes it (the sweep itself still reads one listing). SIGTERM ends it and its lxc-monitor."""
    import signal

    b = lxc_env.backend
    br = lxc_env.bridge("w")
    strategy = lxc_env.root / "strategy.yaml"
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 31},
        "containers": [{"name": "pgt-rw", "role": "test", "resources": {"cores": 1, "memory": "256M",
                                                                         "swap": "256M", "storage": "1G"},
                        "network": {"ip": "10.250.31.21/24"},
                        "health_checks": [{"type": "command", "command": ["systemctl", "is-active", "--quiet",
                                                                          "systemd-journald"], "interval": "60s"}]}],
        "emergency": {"container_failure": {"interval": "60s", "backoff": "0s"}},
    }
    env = lxc_env.cli_env(doc)
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    [g] = b.list_guests()
    proc = subprocess.Popen([sys.executable, "-m", "pveguard", "recover"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the first sweep is done; the next timed one is a minute away
        pid = init_pid(b.config.lxcpath, str(g.vmid))
        assert pid > 0
        t0 = time.monotonic()
        os.kill(pid, 9)
        while time.monotonic() - t0 < 30:
            new = init_pid(b.config.lxcpath, str(g.vmid))
            if new not in (0, pid) and b.exec(g, ["systemctl", "is-active", "--quiet", "systemd-journald"]).ok:
                break
            time.sleep(0.2)
        took = time.monotonic() - t0
        assert took < 20, f"not running and healthy {took:.1f} s after the crash"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "at once when a container stops" in err and "restarted - not running (stopped)" in out
    monitors = subprocess.run(["pgrep", "-f", f"lxc-monitor.*{b.config.lxcpath}"], capture_output=True,
                              text=True, check=False).stdout.split()
    assert monitors == [], "lxc-monitor or lxc-monitord left running"

    # an lxc-monitord someone else's lxc-monitor started keeps running when the loop ends
    def monitord() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"lxc-monitord {b.config.lxcpath}"], capture_output=True, text=True,
                              check=False).stdout.split()

    admin = subprocess.Popen(["lxc-monitor", "-P", b.config.lxcpath, "-n", ".*"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if monitord():
                break
            time.sleep(0.1)
        assert monitord()
        proc = subprocess.Popen([sys.executable, "-m", "pveguard", "recover"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "at once when a container stops" in err, err
        assert monitord() and admin.poll() is None
    finally:
        admin.terminate()
        admin.wait()
        subprocess.run(["lxc-monitor", "-P", b.config.lxcpath, "--quit"], capture_output=True, check=False)

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--prune", "--yes")
    assert code == 0, out + err
