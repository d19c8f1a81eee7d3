"""In-process helpers for tests: `running(**opts)` and the pytest fixtures `pvesim` / `pvesim_factory`.

Other test packages use::

    from pvesim.testing import running            # context manager
    pytest_plugins = ["pvesim.testing"]            # in a conftest.py: fixtures `pvesim`, `pvesim_factory`

Tests are skipped (not failed) when the PVE API schema is not available.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN_DIR = Path(__file__).resolve().parent / "bin"


@dataclass
class SimHandle:
    """A running emulator: connection facts plus helpers."""

    url: str
    token: str
    username: str
    password: str
    cafile: str | None
    fingerprint: str | None
    sim: Any  # the pvesim.state.Sim, for white-box assertions (take sim.lock when mutating)
    info_file: str = ""
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """host:port, e.g. for proxmoxer.ProxmoxAPI(host, port=...)."""
        return self.url.split("://", 1)[1]

    @property
    def hostname(self) -> str:
        return self.host.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def token_name(self) -> str:
        """The token id part (`pvesim`) of `root@pam!pvesim=<secret>`."""
        return self.token.split("!", 1)[1].split("=", 1)[0]

    @property
    def token_value(self) -> str:
        return self.token.rsplit("=", 1)[1]

    def proxmoxer(self, auth: str = "token", **kw: Any) -> Any:
        """A proxmoxer.ProxmoxAPI (https backend) connected to this sim, by token or by password."""
        from proxmoxer import ProxmoxAPI

        args: dict[str, Any] = {"port": self.port, "verify_ssl": self.cafile or False, "service": "PVE"}
        if self.url.startswith("http://"):
            raise RuntimeError("proxmoxer's https backend needs the sim started with tls=True")
        if auth == "token":
            args.update(user=self.username, token_name=self.token_name, token_value=self.token_value)
        else:
            args.update(user=self.username, password=self.password)
        args.update(kw)
        return ProxmoxAPI(self.hostname, **args)

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the control API: control("POST", "/nodes/pve2", {"online": False}) -> its `data`."""
        p = path if path.startswith("/_sim") else "/_sim" + (path if path.startswith("/") else "/" + path)
        return self._request(method, p, body)["data"]

    def api(
        self, method: str, path: str, params: dict[str, Any] | None = None, token: str | None = None
    ) -> tuple[int, str, dict[str, Any] | None]:
        """Raw API call with the root token (form-encoded): returns (status, reason, JSON body or None)."""
        from urllib.parse import urlencode

        q = urlencode(params or {}, doseq=True)
        url = f"{self.url}/api2/json{path}"
        data = None
        if method in ("GET", "DELETE"):
            url += ("?" + q) if q else ""
        else:
            data = q.encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"PVEAPIToken={token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as r:
                body = r.read()
                return r.status, r.reason, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, e.reason, json.loads(body) if body else None

    def env(self) -> dict[str, str]:
        """Environment for the fake pvesh/pct scripts (PATH prefixed with pvesim/bin)."""
        return {
            **os.environ,
            "PVESIM_INFO": self.info_file,
            "PVESIM_URL": self.url,
            "PVESIM_TOKEN": self.token,
            "PVESIM_CAFILE": self.cafile or "",
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"pvesim control {method} {path} failed: {e.code} {e.read().decode()}") from None


@contextmanager
def running(
    *, tls: bool = True, host: str = "127.0.0.1", port: int = 0, state: str | None = None, **opts: Any
) -> Iterator[SimHandle]:
    """Start pvesim in a thread on a free port; yield a SimHandle; stop it afterwards.

    opts are pvesim.state.SimOptions fields: nodes, guests, seed, time_scale, password, token_secret,
    cluster_name, task_seconds ({"vzcreate": 0.2, ...}), qemu_share, running_share, auth_fail_delay,
    status_lag, latency (milliseconds added to every API request).
    """
    from pvesim.persist import load_state
    from pvesim.server import SimServer
    from pvesim.state import Sim, SimOptions

    sim = Sim(SimOptions(**opts))
    if state and Path(state).exists():
        load_state(sim, state)
    if state:
        sim.state_file = state
    server = SimServer(sim, host=host, port=port, tls=tls)
    server.start()
    tmp = tempfile.TemporaryDirectory(prefix="pvesim-")
    info = server.info()
    info_file = Path(tmp.name) / "pvesim.json"
    info_file.write_text(json.dumps(info))
    ctx = ssl.create_default_context(cafile=server.cafile) if tls else None
    handle = SimHandle(
        url=info["url"],
        token=info["token"],
        username=info["username"],
        password=info["password"],
        cafile=info["cafile"],
        fingerprint=info["fingerprint"],
        sim=sim,
        info_file=str(info_file),
        _ssl=ctx,
    )
    try:
        yield handle
    finally:
        if state:
            from pvesim.persist import save_state

            save_state(sim, state)
        server.stop()
        tmp.cleanup()


def schema_available() -> bool:
    """True when the PVE API schema can be found (else pvesim cannot start)."""
    from pvesim.schema import SchemaNotFoundError, find_schema

    try:
        find_schema()
        return True
    except SchemaNotFoundError:
        return False


def _skip_without_schema() -> None:
    import pytest

    from pvesim.schema import SchemaNotFoundError, find_schema

    try:
        find_schema()
    except SchemaNotFoundError as e:
        pytest.skip(str(e))


try:
    import pytest

    @pytest.fixture
    def pvesim() -> Iterator[SimHandle]:
        """A fresh 3-node pvesim (HTTPS, no guests, fast tasks) per test."""
        _skip_without_schema()
        with running(task_seconds=_FAST) as h:
            yield h

    @pytest.fixture
    def pvesim_factory() -> Iterator[Callable[..., SimHandle]]:
        """Call with running(**opts) options; every sim started is stopped at teardown."""
        _skip_without_schema()
        stack: list[Any] = []

        def make(**opts: Any) -> SimHandle:
            cm = running(**opts)
            stack.append(cm)
            return cm.__enter__()

        yield make
        for cm in reversed(stack):
            cm.__exit__(None, None, None)

except ImportError:  # pytest is a dev dependency; the module also works without it
    pass

_FAST = {
    "vzcreate": 0.2,
    "vzrestore": 0.2,
    "vzstart": 0.1,
    "vzstop": 0.1,
    "vzshutdown": 0.1,
    "vzreboot": 0.1,
    "vzdestroy": 0.1,
    "vzmigrate": 0.2,
    "vzdump": 0.2,
    "download": 0.1,
}
