"""The watchdog on real LXC (slow): kill -9 of a container's init, and a service failing its health
check inside the container, are both repaired by `pveguard recover --once` through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow


def pveguard(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "pveguard", *argv], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    return proc.returncode, proc.stdout, proc.stderr


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
        "target": {"backend": "lxc", "lxc": {"lxcpath": b.config.lxcpath, "disk_dir": b.config.disk_dir,
                                             "template_cache": b.config.template_cache}},
    }
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PVEGUARD_BACKEND": "lxc",
           "PVEGUARD_STRATEGY": str(strategy), "PVEGUARD_STATE_DIR": str(lxc_env.root / "state")}
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
