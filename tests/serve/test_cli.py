"""`pveguard api-token create|list|revoke` and `pveguard serve`'s refusals, as a user meets them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli import run_cli
from infra.strategies import defaults_file
from pveguard.serve import tokens
from pveguard.store import Store


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PVEGUARD_STATE_DIR": str(tmp_path / "state"), "PVEGUARD_STRATEGY": defaults_file(), "COLUMNS": "200"}


def test_create_prints_the_secret_once_and_stores_its_hash(env: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    argv = ["api-token", "create", "ops", "--role", "operator", "--ttl", "30d", "--json"]
    code, out, err = run_cli(argv, capsys, env)
    assert code == 0, err
    doc = json.loads(out)
    secret = doc["secret"]
    assert secret.startswith("pvg_") and len(secret) >= 40 and doc["role"] == "operator"
    assert doc["expires_at"] is not None and doc["state"] == "active"
    db = (tmp_path / "state" / "pveguard.db").read_bytes()
    assert secret.encode() not in db and tokens.digest(secret).encode() in db
    code, out, _ = run_cli(["api-token", "list", "--json"], capsys, env)
    assert code == 0 and secret not in out
    assert [(t["name"], t["role"], t["state"]) for t in json.loads(out)["tokens"]] == [("ops", "operator", "active")]
    with Store(tmp_path / "state") as store:
        assert tokens.authenticate(store, secret) == tokens.Caller("ops", "operator")


def test_refusals_are_clear(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["api-token", "create", "a", "--role", "viewer"], capsys, env)[0] == 0
    code, _, err = run_cli(["api-token", "create", "a", "--role", "admin"], capsys, env)
    assert code == 2 and "already an active token called 'a'" in err and "api-token revoke a" in err
    code, _, err = run_cli(["api-token", "create", "b", "--role", "root"], capsys, env)
    assert code == 2 and "viewer, operator or admin" in err
    code, _, err = run_cli(["api-token", "create", "b", "--role", "viewer", "--ttl", "soon"], capsys, env)
    assert code == 2 and "--ttl" in err
    code, _, err = run_cli(["api-token", "create", "bad name!", "--role", "viewer"], capsys, env)
    assert code == 2 and "not a token name" in err
    code, _, err = run_cli(["api-token", "revoke", "nobody"], capsys, env)
    assert code == 2 and "no API token called 'nobody'" in err
    assert run_cli(["api-token", "revoke", "a"], capsys, env)[0] == 0
    code, _, err = run_cli(["api-token", "revoke", "a"], capsys, env)
    assert code == 2 and "already revoked" in err
    # a revoked name can be given to a new token
    assert run_cli(["api-token", "create", "a", "--role", "admin"], capsys, env)[0] == 0
    assert "Traceback" not in err
    code, out, _ = run_cli(["audit-log", "show", "--action", "serve", "--json"], capsys, env)
    assert [e["action"] for e in json.loads(out)] == [
        "serve.token.create", "serve.token.revoke", "serve.token.create"]


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pveguard", "serve", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_refusals(env: dict[str, str], tmp_path: Path) -> None:
    # plain HTTP off loopback, asked for explicitly
    strategy = tmp_path / "s.yaml"
    strategy.write_text(Path(defaults_file()).read_text().replace("    mode: auto", "    mode: off"))
    proc = _serve({**env, "PVEGUARD_STRATEGY": str(strategy)}, "--listen", "0.0.0.0:8450")
    assert proc.returncode == 2 and "refusing plain HTTP on 0.0.0.0:8450" in proc.stderr, proc.stderr
    proc = _serve(env, "--listen", "nonsense")
    assert proc.returncode == 2 and "not HOST:PORT" in proc.stderr
    # the port is taken
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = _serve(env, "--listen", f"127.0.0.1:{s.getsockname()[1]}")
    assert proc.returncode == 1 and "cannot listen on http://127.0.0.1" in proc.stderr, proc.stderr
    assert "--listen" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr
