"""The daemon as a real process: one per state directory, SIGTERM within 5 s, no job twice across a
restart, PVE stopped -> the last state stays, marked stale since when, and it recovers by itself;
plus the scheduler's error boundary (a failing job is reported, the others go on)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.processes import stop
from pveguard.serve import tokens
from pveguard.serve.daemon import Job, Scheduler
from pveguard.store import Store

from .conftest import make_runtime

testing = pytest.importorskip("pvesim.testing")
needs_sim = pytest.mark.skipif(not testing.schema_available(), reason="PVE API schema not found (pvesim)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str
    secret: str
    log: Path

    def get(self, path: str, auth: bool = True) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path)
        if auth:
            req.add_header("Authorization", f"Bearer {self.secret}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/api/v1/status")
        assert code == 200, body
        return dict(body)


def write_strategy(path: Path, **schedules: str) -> None:
    from pveguard.strategy.defaults import render

    doc = yaml.safe_load(render())
    doc["containers"] = [{"name": "sv-db", "role": "db", "resources": {"cores": 1, "memory": "256M"}}]
    doc["serve"]["schedules"].update(schedules)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class Rig:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.strategy = tmp / "strategy.yaml"
        self.state = tmp / "state"
        self.procs: list[subprocess.Popen[bytes]] = []
        with Store(self.state) as store:
            self.secret = tokens.create(store, "t", "viewer", None, "test")[1]

    def start(self, port: int | None = None, wait: bool = True) -> Daemon:
        port = port or free_port()
        log = self.tmp / f"serve-{len(self.procs)}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pveguard", "--strategy", str(self.strategy),
                                     "--state-dir", str(self.state), "serve", "--listen", f"127.0.0.1:{port}"],
                                    env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        d = Daemon(proc, f"http://127.0.0.1:{port}", self.secret, log)
        if wait:
            deadline = time.monotonic() + 30
            while b"listening on" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        return d

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                stop(p, timeout=10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    env = {**os.environ, "PVEGUARD_BACKEND": "lxc", "COLUMNS": "200"}
    write_strategy(tmp_path / "strategy.yaml", monitor="1s")
    r = Rig(tmp_path, env)
    yield r
    r.close()


def wait_for(pred: Any, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_second_daemon_on_the_same_state_dir_is_refused(rig: Rig) -> None:
    first = rig.start()
    second = rig.start(wait=False)
    assert second.proc.wait(timeout=30) == 1
    text = second.log.read_text()
    assert f"another 'pveguard serve' (pid {first.proc.pid}) is running" in text, text
    assert "Traceback" not in text
    assert first.proc.poll() is None and first.get("/healthz", auth=False)[0] == 200


def test_sigterm_stops_it_within_5_seconds(rig: Rig) -> None:
    d = rig.start()
    wait_for(lambda: d.status()["jobs"]["audit"]["running"] or d.status()["jobs"]["audit"]["runs"], what="audit")
    # an open SSE stream and a running child job must not hold the stop up
    sse = urllib.request.urlopen(urllib.request.Request(d.url + "/api/v1/events",
                                                        headers={"Authorization": f"Bearer {d.secret}"}), timeout=10)
    assert sse.status == 200
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(timeout=10)
    took = time.monotonic() - started
    sse.close()
    assert code == 0, d.log.read_text()
    assert took < 5.0, f"stopped after {took:.1f}s"
    assert "Traceback" not in d.log.read_text()


def test_a_restart_does_not_run_a_job_again(rig: Rig) -> None:
    d = rig.start()
    first = wait_for(lambda: (j := d.status()["jobs"]["audit"]) and j["last_end"] and j, what="the audit job")
    assert first["runs"] == 1 and first["last_ok"] is True, first
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    d2 = rig.start()
    # the monitor (1 s) keeps running; the audit (1 d) does not run again after the restart
    wait_for(lambda: d2.status()["jobs"]["monitor"]["runs"] >= 3, what="three monitor polls")
    again = d2.status()["jobs"]["audit"]
    assert again["runs"] == 1 and again["last_start"] == first["last_start"], again


def start_pvesim(port: int, info: Path) -> subprocess.Popen[bytes]:
    info.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "pvesim", "--port", str(port), "--nodes", "1", "--guests", "3",
                             "--seed", "3", "--info-file", str(info), "--state", str(info.with_suffix(".state")),
                             "--task-seconds", "vzcreate=0.2", "--task-seconds", "vzstart=0.1",
                             "--task-seconds", "download=0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: info.exists() and info.read_text().strip(), what="pvesim")
    return proc


@needs_sim
def test_pve_stopped_serves_the_last_state_stale_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    sim = start_pvesim(port, tmp_path / "sim.json")
    token = json.loads((tmp_path / "sim.json").read_text())["token"]
    env = {**os.environ, "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": f"127.0.0.1:{port}",
           "PVEGUARD_PVE_TOKEN": token, "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
           "COLUMNS": "200"}
    write_strategy(tmp_path / "strategy.yaml", monitor="1s")
    rig = Rig(tmp_path, env)
    try:
        created = subprocess.run([sys.executable, "-m", "pveguard", "--strategy", str(rig.strategy), "--state-dir",
                                  str(rig.state), "apply", "--yes"], env=env, capture_output=True, text=True,
                                 timeout=120, check=False)
        assert created.returncode == 0, created.stderr
        d = rig.start()
        fresh = wait_for(lambda: (s := d.status())["snapshot_at"] and s["guests"]["total"] and s, what="a poll")
        assert fresh["stale"] is False and fresh["stale_since"] is None and fresh["guests"]["total"] == 4
        (db,) = fresh["containers"]  # the service container, with live usage
        assert db["name"] == "sv-db" and db["status"] == "running" and {"cpu", "memory"} <= set(db["usage"])
        sim.terminate()  # PVE gone (pvesim keeps its guests in --state for its restart)
        sim.wait(timeout=30)
        stale = wait_for(lambda: (s := d.status())["stale_since"] and s, what="stale_since")
        assert stale["stale"] is True and stale["pve_error"]
        assert stale["guests"] == fresh["guests"]  # the last state is still served
        assert stale["jobs"]["monitor"]["last_ok"] is False
        assert d.get("/healthz", auth=False)[1]["stale"] is True
        time.sleep(2)
        assert d.proc.poll() is None and d.status()["stale_since"] == stale["stale_since"]  # the first failure
        sim = start_pvesim(port, tmp_path / "sim.json")
        back = wait_for(lambda: (s := d.status())["stale_since"] is None and s, what="recovery")
        assert back["stale"] is False and back["jobs"]["monitor"]["last_ok"] is True
        assert back["guests"]["total"] == 4
        assert "Traceback" not in d.log.read_text()
    finally:
        rig.close()
        stop(sim)


def test_a_failing_job_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path / "state")
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("disk on fire")

    def fine() -> None:
        ran.append("fine")

    async def main() -> None:
        rt.events.bind(asyncio.get_running_loop())
        sched = Scheduler(rt, [Job("broken", 0.2, broken), Job("fine", 0.2, fine)], tick=0.05)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(1.0)
        sched.stopping = True
        await task

    asyncio.run(main())
    assert ran.count("broken") >= 2 and ran.count("fine") >= 2
    status = rt.status()["jobs"]
    assert status["broken"]["last_ok"] is False and status["broken"]["last_error"] == "RuntimeError: disk on fire"
    assert status["broken"]["failures"] == status["broken"]["runs"]
    assert status["fine"]["last_ok"] is True and status["fine"]["failures"] == 0
    rt.ctx.close()


def test_event_stream_and_metrics(rig: Rig) -> None:
    d = rig.start()
    req = urllib.request.Request(d.url + "/api/v1/events", headers={"Authorization": f"Bearer {d.secret}"})
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(req, timeout=15) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = ""
        while len(events) < 2:
            line = stream.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "status":
                events.append(json.loads(line[6:]))
    assert all(e["type"] == "status" and e["data"]["at"] for e in events)
    assert events[1]["id"] > events[0]["id"]
    code, _ = d.get("/api/v1/events", auth=False)
    assert code == 401
    req = urllib.request.Request(d.url + "/metrics", headers={"Authorization": f"Bearer {d.secret}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    assert "pveguard_polls_total " in text and "pveguard_poll_duration_seconds" in text, text[:500]
