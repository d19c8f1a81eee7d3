"""The daemon: one asyncio process that serves the API (uvicorn) and runs the jobs on schedules.

* A lock (`flock` on <state-dir>/serve.lock) keeps a second daemon off the same state directory.
* Each job is the same code the CLI runs: the monitor poll (it keeps the live snapshot and the
  rate counters) and the watchdog sweep in-process, the others as `pveguard <command> --json`
  child processes (their memory is returned after each run, a hung one is killed, and SIGTERM
  ends them with the daemon).
* Each job runs in its own error boundary: a failure is recorded (job state, SSE event, log) and
  the others go on. Start times are persisted in the store before a job runs, so a restart never
  runs a job again before its interval has passed.
* SIGTERM/SIGINT: stop accepting, end children, exit — within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pveguard.context import AppContext
from pveguard.errors import ConfigError, OperationError, PveguardError, UsageError
from pveguard.serve import tokens
from pveguard.serve.runtime import JobState, Runtime
from pveguard.strategy.models import Strategy

log = logging.getLogger("pveguard.serve")
LOCK_NAME = "serve.lock"
STOP_GRACE = 3.0  # seconds the children get after SIGTERM before SIGKILL (the whole stop stays < 5 s)
CHILD_TIMEOUT = 3600.0


# --- where to listen --------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8450 or [::1]:8450")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def resolve_listen(strategy: Strategy, state_dir: Path, listen: str | None) -> Listen:
    """HOST:PORT and TLS: `tls.mode` auto = plain HTTP on loopback, TLS elsewhere (the named
    certificate, or one created in <state-dir>/serve-tls); on = always TLS; off = plain HTTP, which
    is refused on anything but loopback."""
    cfg = strategy.serve
    host, port = parse_listen(listen or cfg.listen)
    mode = cfg.tls.mode
    named = cfg.tls.cert_file is not None
    if mode == "off" or (mode == "auto" and is_loopback(host) and not named):
        if not is_loopback(host):
            raise UsageError(
                f"refusing plain HTTP on {host}:{port}: API tokens and session cookies would cross the "
                "network in clear",
                hint="listen on 127.0.0.1 (behind a TLS proxy), or set serve.tls.mode to auto/on "
                "(a certificate is created when serve.tls.cert_file is empty)")
        return Listen(host, port)
    if named:
        cert, key = Path(str(cfg.tls.cert_file)), Path(str(cfg.tls.key_file or cfg.tls.cert_file))
        for what, p in (("serve.tls.cert_file", cert), ("serve.tls.key_file", key)):
            if not p.is_file():
                raise ConfigError(f"{what}: {p} does not exist",
                                  hint="fix the path, or leave both empty to let serve create a certificate")
        return Listen(host, port, cert, key)
    from pveguard.serve.tlscert import ensure_self_signed

    cert, key = ensure_self_signed(state_dir / "serve-tls", host)
    return Listen(host, port, cert, key)


def bind(listen: Listen) -> socket.socket:
    """The listening socket, bound here so that a taken or foreign address is one clear error."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--listen: cannot resolve {listen.host!r}: {exc.strerror}",
                         hint="use an IP address, e.g. --listen 127.0.0.1:8450") from None
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OperationError(f"cannot listen on {listen.url}: {exc.strerror}",
                             hint="another program holds the port, or the address is not this machine's: "
                             "pick another with --listen HOST:PORT") from None
    sock.set_inheritable(False)
    return sock


# --- one daemon per state directory -------------------------------------------------------------


@contextlib.contextmanager
def serve_lock(state_dir: Path) -> Iterator[None]:
    """Exclusive flock on <state-dir>/serve.lock, refused at once when another daemon holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OperationError(
                f"another 'pveguard serve' (pid {holder}) is running on the state directory {state_dir}",
                hint="stop it first (systemctl stop pveguard-serve), or give this one its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class JobStopped(OperationError):
    """A job cut short by the daemon's stop: not a failure, and it runs again after a restart."""


# --- jobs -------------------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    interval: float
    run: Callable[[], Any]  # blocking; runs in a worker thread
    ok_codes: tuple[int, ...] = (0,)


def load_job_states(store: Any, jobs: list[Job]) -> dict[str, JobState]:
    tokens.open_tables(store)
    rows = {r["name"]: r for r in store.conn.execute("SELECT * FROM serve_job")}
    out: dict[str, JobState] = {}
    for j in jobs:
        st = JobState(j.name, j.interval)
        r = rows.get(j.name)
        if r is not None:
            st.last_start, st.last_end = r["last_start"], r["last_end"]
            st.last_ok = None if r["last_ok"] is None else bool(r["last_ok"])
            st.last_error, st.runs, st.failures = r["last_error"], int(r["runs"]), int(r["failures"])
        out[j.name] = st
    return out


def save_job_state(store: Any, st: JobState) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO serve_job(name, last_start, last_end, last_ok, last_error, runs, failures) "
            "VALUES(?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET last_start=excluded.last_start, "
            "last_end=excluded.last_end, last_ok=excluded.last_ok, last_error=excluded.last_error, "
            "runs=excluded.runs, failures=excluded.failures",
            (st.name, st.last_start, st.last_end, None if st.last_ok is None else int(st.last_ok), st.last_error,
             st.runs, st.failures))


def is_due(st: JobState, now: float) -> bool:
    return not st.running and (st.last_start is None or now >= st.last_start + st.interval
                               or st.last_start > now + 60)  # a clock set back must not stall a job


class Scheduler:
    """Starts each due job in a worker thread; one run of a job at a time; failures stay in the job."""

    def __init__(self, rt: Runtime, jobs: list[Job], tick: float = 0.5) -> None:
        self.rt, self.jobs, self.tick = rt, {j.name: j for j in jobs}, tick
        rt.jobs.update(load_job_states(rt.ctx.store, jobs))
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            now = time.time()
            for name, job in self.jobs.items():
                st = self.rt.jobs[name]
                if is_due(st, now):
                    previous = st.last_start
                    st.running, st.last_start = True, now
                    save_job_state(self.rt.ctx.store, st)  # before it runs: a restart does not repeat it
                    task = asyncio.create_task(self._one(job, st, previous))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(self.tick)

    async def _one(self, job: Job, st: JobState, previous: float | None) -> None:
        self.rt.job_update(st)
        stopped = False
        try:
            await asyncio.to_thread(job.run)
            st.last_ok, st.last_error = True, None
        except JobStopped:
            # cut short by the stop: it did not run, so it is due again after a restart
            stopped, st.last_start = True, previous
        except PveguardError as exc:
            st.last_ok, st.last_error = False, exc.message
            st.failures += 1
        except Exception as exc:  # the error boundary: report it, the other jobs go on
            st.last_ok, st.last_error = False, f"{type(exc).__name__}: {exc}"
            st.failures += 1
            log.exception("job %s failed", job.name)
        finally:
            st.running = False
            if not stopped:
                st.last_end = time.time()
                st.runs += 1
            with contextlib.suppress(Exception):
                save_job_state(self.rt.ctx.store, st)
            self.rt.job_update(st)
            if st.last_ok is False and not stopped:
                log.warning("job %s failed: %s", job.name, st.last_error)


# --- the process ------------------------------------------------------------------------------


def run(app_ctx: AppContext, listen_opt: str | None) -> None:
    """`pveguard serve`: lock, listen, run until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    strategy = app_ctx.strategy_or_default()
    with serve_lock(app_ctx.state_dir):
        listen = resolve_listen(strategy, app_ctx.state_dir, listen_opt)
        rt = Runtime(app_ctx, secure_cookies=listen.tls)
        tokens.open_tables(app_ctx.store)
        from pveguard.serve.jobs import build_jobs

        jobs = build_jobs(rt)
        try:  # uvloop when installed (faster I/O); the stdlib loop otherwise
            import uvloop

            runner: Callable[[Any], None] = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(_main(rt, listen, jobs))


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling: the daemon's handlers stop the jobs too."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


async def _main(rt: Runtime, listen: Listen, jobs: list[Job]) -> None:
    import uvicorn

    from pveguard.serve import jobs as jobs_mod
    from pveguard.serve.app import create_app

    _Server = _server_class()

    loop = asyncio.get_running_loop()
    rt.events.bind(loop)
    app = create_app(rt)
    config = uvicorn.Config(app, host=listen.host, port=listen.port, log_level="warning", access_log=False,
                            ssl_certfile=str(listen.cert_file) if listen.cert_file else None,
                            ssl_keyfile=str(listen.key_file) if listen.key_file else None,
                            lifespan="off", timeout_graceful_shutdown=1)
    server = _Server(config)
    sched = Scheduler(rt, jobs)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = bind(listen)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if serving.done():
        raise OperationError(f"cannot serve on {listen.url}", hint="see the log lines above")
    sched_task = asyncio.create_task(sched.run())
    log.info("pveguard serve on %s (state %s, %d jobs)", listen.url, rt.ctx.state_dir, len(jobs))
    print(f"pveguard serve: listening on {listen.url}", file=sys.stderr, flush=True)
    if not any(t.state() == "active" for t in tokens.listing(rt.ctx.store)):
        log.warning("there is no active API token: only /healthz answers; create one with "
                    "'pveguard api-token create NAME --role admin'")
    await asyncio.wait({serving, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping")
    sched.stopping = True
    sched_task.cancel()
    rt.events.close()
    await asyncio.sleep(0.05)  # let the event streams end before the server closes their connections
    server.should_exit = True
    await asyncio.to_thread(jobs_mod.stop_children, STOP_GRACE)
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(serving, 1.0)
    still = [t for t in sched.tasks if not t.done()]
    if still:
        # an in-process job (a monitor poll waiting on PVE) cannot be interrupted: leave now rather
        # than after its timeout; its store writes are transactions, so nothing half-written stays
        log.info("exiting with %d job(s) still running in-process", len(still))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
