"""The sweep at unit level with an in-memory backend: health checks decide a restart of a running
container, a check that cannot run is `unknown` (no restart), the backoff holds a second restart
back, a start that fails is reported and recorded, onboot=0 is left alone, a running container
without checks costs no call beyond the listing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pveguard.backends.base import Backend, Capabilities, ExecResult, Guest, GuestSpec, GuestStats, marker_line
from pveguard.errors import BackendError
from pveguard.recover.watchdog import sweep
from pveguard.store import Store
from pveguard.strategy.models import Strategy

ME = "feedfacecafe"


class Fake(Backend):
    name = "fake"

    def __init__(self, guests: list[Guest], exec_rc: int | Exception = 0, start_error: str | None = None,
                 onboot: int = 1) -> None:
        self.guests = {g.vmid: g for g in guests}
        self.exec_rc, self.start_error, self.onboot = exec_rc, start_error, onboot
        self.calls: list[str] = []

    def capabilities(self) -> Capabilities:
        return Capabilities("fake")

    def list_guests(self) -> list[Guest]:
        self.calls.append("list")
        return list(self.guests.values())

    def get_config(self, guest: Guest) -> dict[str, Any]:
        self.calls.append(f"config {guest.vmid}")
        return {"description": marker_line(ME), "onboot": self.onboot}

    def create(self, spec: GuestSpec, progress: Callable[[str], None] | None = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        raise AssertionError("the watchdog never creates")

    def update(self, guest: Guest, changes: dict[str, Any], delete: list[str] | None = None) -> list[str]:
        raise AssertionError("the watchdog never reconfigures")

    def start(self, guest: Guest) -> None:
        self.calls.append(f"start {guest.vmid}")
        if self.start_error:
            raise BackendError(self.start_error)
        guest.status = "running"

    def stop(self, guest: Guest) -> None:
        self.calls.append(f"stop {guest.vmid}")
        guest.status = "stopped"

    def shutdown(self, guest: Guest, timeout: int = 60) -> None: ...

    def destroy(self, guest: Guest) -> None:
        raise AssertionError("the watchdog never destroys")

    def exec(self, guest: Guest, argv: list[str], *, input: str | None = None, timeout: float = 600) -> ExecResult:
        self.calls.append("exec " + " ".join(argv))
        if isinstance(self.exec_rc, Exception):
            raise self.exec_rc
        rc, self.exec_rc = self.exec_rc, 0  # unhealthy once: healthy after the restart
        return ExecResult(rc, "", "connection refused" if rc else "")

    def push(self, guest: Guest, local: str, remote: str, mode: int = 0o644) -> None: ...

    def pull(self, guest: Guest, remote: str, local: str) -> None: ...

    def stats(self) -> list[GuestStats]:
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def strategy(checks: bool = True) -> Strategy:
    c: dict[str, Any] = {"name": "web", "role": "app", "resources": {"cores": 1, "memory": "256M", "storage": "2G"}}
    if checks:
        c["health_checks"] = [{"type": "tcp", "port": 80}, {"type": "command", "command": ["systemctl", "is-active",
                                                                                           "nginx"]}]
    return Strategy.model_validate({"containers": [c]})


def guest(status: str = "running") -> Guest:
    return Guest(101, "web", "n1", "lxc", status, ["pveguard"], True)  # type: ignore[arg-type]


def run(tmp_path: Path, backend: Fake, s: Strategy, clock: Clock | None = None) -> tuple[Any, list[Any]]:
    rows: list[Any] = []
    clock = clock or Clock()
    with Store(tmp_path) as store:
        rep = sweep(backend, s, ME, store, lambda a, t="", **d: rows.append((a, t, d)), lambda e: None,
                    clock=clock, sleep=clock.sleep)
    return rep, rows


def test_running_but_unhealthy_is_restarted_and_checked_again(tmp_path: Path) -> None:
    b = Fake([guest()], exec_rc=1)
    rep, rows = run(tmp_path, b, strategy())
    [o] = rep.containers
    assert o.action == "restarted" and o.reason.startswith("unhealthy: tcp 80 failed (exit 1")
    assert [c.split()[0] for c in b.calls] == ["list", "config", "exec", "stop", "start", "exec", "exec"]
    assert "/dev/tcp/127.0.0.1/80" in b.calls[2]
    assert [r[0] for r in rows] == ["recover.restart.intent", "recover.restart"]
    assert rows[1][2]["result"] == "ok"


def test_a_check_that_cannot_run_is_unknown_not_a_restart(tmp_path: Path) -> None:
    b = Fake([guest()], exec_rc=BackendError("ssh: connection refused"))
    rep, rows = run(tmp_path, b, strategy())
    assert rep.containers[0].action == "unknown" and not rows and "start 101" not in b.calls
    assert not rep.ok


def test_running_without_checks_costs_only_the_listing(tmp_path: Path) -> None:
    b = Fake([guest()])
    rep, _rows = run(tmp_path, b, strategy(checks=False))
    assert b.calls == ["list"] and rep.containers[0].action == "none" and rep.ok


def test_backoff_holds_the_second_restart_back(tmp_path: Path) -> None:
    clock = Clock()
    b = Fake([guest("stopped")])
    assert run(tmp_path, b, strategy(False), clock)[0].containers[0].action == "restarted"
    b.guests[101].status = "stopped"
    clock.now += 5
    rep, rows = run(tmp_path, b, strategy(False), clock)
    assert rep.containers[0].action == "waiting" and not rows
    assert rep.containers[0].retry_at == 1030.0
    clock.now += 30
    assert run(tmp_path, b, strategy(False), clock)[0].containers[0].action == "restarted"


def test_a_failed_start_is_recorded(tmp_path: Path) -> None:
    b = Fake([guest("stopped")], start_error="CT 101 start failed: no space left")
    rep, rows = run(tmp_path, b, strategy(False))
    assert rep.containers[0].action == "restart-failed" and "no space left" in rep.containers[0].reason
    assert rows[-1][2]["result"] == "failed" and not rep.ok


def test_still_unhealthy_after_the_restart_is_a_failed_restart(tmp_path: Path) -> None:
    class Broken(Fake):
        def exec(self, guest: Guest, argv: list[str], *, input: str | None = None,
                 timeout: float = 600) -> ExecResult:
            self.calls.append("exec")
            return ExecResult(1, "", "refused")

    clock = Clock()
    b = Broken([guest()])
    rep, rows = run(tmp_path, b, strategy(), clock)
    assert rep.containers[0].action == "restart-failed" and "not healthy" in rep.containers[0].reason
    assert rows[-1][2]["result"] == "unhealthy"
    assert clock.now >= 1030.0  # it gave the checks their time


@pytest.mark.parametrize("onboot", [0])
def test_onboot_off_is_left_alone(tmp_path: Path, onboot: int) -> None:
    b = Fake([guest("stopped")], onboot=onboot)
    rep, rows = run(tmp_path, b, strategy(False))
    assert rep.containers[0].action == "skipped" and "onboot" in rep.containers[0].reason
    assert not rows and "start 101" not in b.calls


def test_ctrl_c_during_a_restart_closes_its_intent(tmp_path: Path) -> None:
    class Interrupted(Fake):
        def start(self, guest: Guest) -> None:
            raise KeyboardInterrupt

    rows: list[Any] = []
    clock = Clock()
    with Store(tmp_path) as store, pytest.raises(KeyboardInterrupt):
        sweep(Interrupted([guest("stopped")]), strategy(False), ME, store,
              lambda a, t="", **d: rows.append((a, t, d)), lambda e: None, clock=clock, sleep=clock.sleep)
    assert [(r[0], r[2].get("result")) for r in rows] == [("recover.restart.intent", None),
                                                          ("recover.restart", "interrupted")]


def test_health_checks_run_again_after_their_interval(tmp_path: Path) -> None:
    clock = Clock()
    b = Fake([guest()])
    s = strategy()  # both checks at the default interval, 30 s
    assert run(tmp_path, b, s, clock)[0].containers[0].action == "none"
    execs = sum(c.startswith("exec") for c in b.calls)
    assert execs == 2
    clock.now += 10
    b.calls.clear()
    assert run(tmp_path, b, s, clock)[0].containers[0].action == "none" and b.calls == ["list"]
    clock.now += 20
    b.calls.clear()
    run(tmp_path, b, s, clock)
    assert sum(c.startswith("exec") for c in b.calls) == 2


def test_a_guest_in_an_unknown_state_is_not_started(tmp_path: Path) -> None:
    b = Fake([guest("unknown")])
    rep, rows = run(tmp_path, b, strategy(False))
    assert rep.containers[0].action == "unknown" and "offline" in rep.containers[0].reason
    assert b.calls == ["list"] and not rows
