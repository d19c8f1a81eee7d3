"""docs/json.md is the source of truth for `--json`: every documented command runs (against pvesim
and a scratch state directory, after an apply, a poll with a busy guest, a silence and an approval)
and its output must match the documented shape key for key, with the one convention for times
(ISO 8601 UTC with Z) and numbers (numbers, not strings)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.jsonshape import blocks, check

DOC = Path(__file__).resolve().parents[2] / "docs/json.md"
DOCUMENTED = blocks(DOC.read_text(), "pveguard ")


def test_the_doc_has_shapes_for_the_read_commands() -> None:
    commands = {shlex.split(info)[1] for info, _ in DOCUMENTED}
    assert {"check", "info", "plan", "status", "audit-log", "guard", "approvals", "backup", "monitor",
            "alerts"} <= commands


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    testing = pytest.importorskip("pvesim.testing")
    if not testing.schema_available():
        pytest.skip("PVE API schema not found (pvesim)")
    from pveguard.strategy.defaults import render

    tmp = tmp_path_factory.mktemp("jsondocs")
    strategy = tmp / "strategy.yaml"
    strategy.write_text(render())
    fast = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}
    with testing.running(nodes=1, guests=2, seed=3, running_share=1.0, qemu_share=0.0, task_seconds=fast) as sim:
        env = {**os.environ, "PVEGUARD_STATE_DIR": str(tmp / "state"), "PVEGUARD_STRATEGY": str(strategy),
               "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host, "PVEGUARD_PVE_TOKEN": sim.token,
               "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
               "PVEGUARD_PVE_POLL_INTERVAL": "0.1"}
        # exec in a container goes over ssh to the node's address (a TEST-NET one in pvesim): an ssh that
        # fails at once keeps the run on loopback (recover's health checks then read "could not run")
        nossh = tmp / "bin"
        nossh.mkdir()
        (nossh / "ssh").write_text("#!/bin/sh\necho 'ssh: disabled in this test' >&2\nexit 255\n")
        (nossh / "ssh").chmod(0o755)
        env["PATH"] = f"{nossh}:{env.get('PATH', '')}"

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "pveguard", *argv], env=env, capture_output=True,
                                  cwd=DOC.parents[1], text=True, timeout=180, check=False)

        for argv in (["apply", "--yes"], ["approve", "grafana", "--reason", "lab dashboards"],
                     ["backup", "host-config", "init"]):
            proc = run(*argv)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        vmid = sim.control("GET", "/guests")[0]["vmid"]
        sim.control("POST", f"/guests/{vmid}", {"cpu": 0.99})     # a pending cpu alert with a value
        for argv in (["monitor", "--once"], ["monitor", "--once"], ["alerts", "silence", "pve-*", "--reason", "x"]):
            assert run(*argv).returncode == 0
        # a plan with a create, an update and unchanged containers
        doc = yaml.safe_load(strategy.read_text())
        doc["containers"][0]["resources"]["memory"] = "5G"
        doc["containers"].append({**doc["containers"][1], "name": "pve-extra"})
        strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
        yield {info: run(*shlex.split(info)[1:]) for info, _ in DOCUMENTED}


@pytest.mark.parametrize(("info", "shape"), DOCUMENTED, ids=[i for i, _ in DOCUMENTED])
def test_documented_shape(outputs: dict[str, subprocess.CompletedProcess[str]], info: str, shape: Any) -> None:
    proc = outputs[info]
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    value = json.loads(proc.stdout)
    assert value, f"{info} printed an empty document: nothing to check the shape against"
    problems = check(value, shape)
    assert not problems, f"{info}:\n" + "\n".join(problems[:20])
