"""The parts of `migrate run` that need no container: the journal, the probes, the forward rules."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pveguard.migrate import probe
from pveguard.migrate.journal import Journal
from pveguard.migrate.run import forward_rules, table_name
from pveguard.store import Store


def test_journal_steps_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = Journal(store)
    run = j.begin("nginx.service", "lxc:host", "pve-api-gateway", {"plan": {"x": 1}})
    j.step(run, "create", "running")
    j.step(run, "create", "done", {"vmid": 101})
    j.step(run, "install", "running")
    store.close()
    again = Journal(Store(tmp_path)).get("nginx.service")
    assert again is not None
    assert again.done("create") and not again.done("install")
    assert again.steps["install"].state == "running" and again.steps["create"].detail == {"vmid": 101}
    assert again.data == {"plan": {"x": 1}}


class _Page(http.server.BaseHTTPRequestHandler):
    body = b"hello\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_probe_and_banner_probe(http_port: int) -> None:
    a = probe.probe("127.0.0.1", http_port)
    assert a["kind"] == "http" and a["status"] == 200 and a["ok"]
    b = probe.probe("127.0.0.1", http_port, "http")
    assert probe.same(a, b)
    _Page.body = b"changed\n"
    try:
        assert not probe.same(a, probe.probe("127.0.0.1", http_port, "http"))
    finally:
        _Page.body = b"hello\n"
    lat = probe.latency("127.0.0.1", http_port, "http", count=5)
    assert lat["failed"] == 0 and lat["median_ms"] is not None
    # a server that speaks first: its banner
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def greet() -> None:
        for _ in range(2):
            c, _ = srv.accept()
            c.sendall(b"SSH-2.0-test\r\n")
            c.close()
    threading.Thread(target=greet, daemon=True).start()
    port = srv.getsockname()[1]
    first = probe.probe("127.0.0.1", port)
    assert first["kind"] == "tcp" and first["ok"]
    assert probe.same(first, probe.probe("127.0.0.1", port, "tcp"))
    srv.close()
    closed = probe.probe("127.0.0.1", port, "tcp")
    assert not closed["ok"] and not probe.same(first, closed)


def test_forward_rules_are_valid_nft(tmp_path: Path) -> None:
    script = forward_rules("nginx.service", "10.9.0.5", [{"proto": "tcp", "port": 80, "address": "0.0.0.0"},
                                                        {"proto": "tcp", "port": 443, "address": "::"},
                                                        {"proto": "udp", "port": 53, "address": "0.0.0.0"}])
    assert table_name("nginx.service") == "pveguard_mig_nginx"
    assert "ip daddr != 127.0.0.0/8 tcp dport { 80, 443 } counter dnat to 10.9.0.5" in script
    assert "udp dport { 53 }" in script
    # the source's own clients, loopback included, in output; no guard unless route_localnet was turned on
    assert "chain output" in script and "fib daddr type local tcp dport { 80, 443 } counter dnat to 10.9.0.5" in script
    assert "localnet_guard" not in script
    script = forward_rules("nginx.service", "10.9.0.5", [{"proto": "tcp", "port": 80, "address": "0.0.0.0"},
                                                        {"proto": "tcp", "port": 443, "address": "::"},
                                                        {"proto": "udp", "port": 53, "address": "0.0.0.0"}], "eth0")
    assert 'iifname "eth0" ip daddr 127.0.0.0/8 counter drop' in script
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("nft/unshare not installed")
    # load it for real in a throwaway network namespace (nothing of this machine's ruleset is touched)
    p = subprocess.run(["unshare", "--net", "sh", "-c", "nft -f - && nft list table ip pveguard_mig_nginx"],
                       input=script, capture_output=True, text=True, check=False)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip("no permission for a network namespace")
    assert p.returncode == 0, p.stderr
    assert "dnat to 10.9.0.5" in p.stdout and 'iifname "eth0" ip daddr 127.0.0.0/8' in p.stdout


def test_extra_rules_join_the_desired_rules(tmp_path: Path) -> None:
    from pveguard.security import extra_inbound
    from pveguard.security.isolation import Rule, desired_firewall
    from pveguard.security.isolation_lxc import lxc_rules
    from pveguard.strategy.models import Strategy

    store = Store(tmp_path)
    rule = Rule("tcp", "80,443", "10.0.3.7", why="migrate nginx.service from lxc:101")
    assert extra_inbound.set_rules(store, "migrate:nginx.service", "pve-api-gateway", [rule]) == ([], [rule])
    extra = extra_inbound.by_container(store)
    assert extra == {"pve-api-gateway": [rule]}
    strategy = Strategy()
    got = lxc_rules(strategy, "pve-api-gateway", extra)
    assert got is not None and got[-1].as_dict() == {"proto": "tcp", "dport": "80,443", "source": "10.0.3.7"}
    assert lxc_rules(strategy, "pve-monitoring", extra) == lxc_rules(strategy, "pve-monitoring")
    assert desired_firewall(strategy, extra).guest_rules == {"pve-api-gateway": [rule]}
    assert [e.text() for e in extra_inbound.drop(store, "migrate:nginx.service")] == [
        "pve-api-gateway: tcp/80,443 from 10.0.3.7 (migrate:nginx.service)"]
    assert extra_inbound.by_container(store) == {}


def test_cli_errors_are_clear(tmp_path: Path, capsys: Any) -> None:
    from infra.cli import run_cli
    from infra.strategies import defaults_file

    env = {"PVEGUARD_STRATEGY": defaults_file(), "PVEGUARD_STATE_DIR": str(tmp_path / "state")}
    code, out, err = run_cli(["migrate", "status"], capsys, env)
    assert code == 0 and "no migrations" in out
    code, out, _ = run_cli(["migrate", "status", "--json"], capsys, env)
    assert code == 0 and json.loads(out) == {"migrations": []}
    code, _, err = run_cli(["migrate", "status", "nginx"], capsys, env)
    assert code == 2 and "no migration of nginx.service" in err and "migrate run nginx" in err
    code, _, err = run_cli(["migrate", "rollback", "nginx", "--yes"], capsys, env)
    assert code == 2 and "no migration of nginx.service" in err
    code, _, err = run_cli(["migrate", "run", "nginx", "--source", "lxc:nope", "--yes"], capsys, env)
    assert code == 2 and "no LXC container nope" in err
    code, _, err = run_cli(["migrate", "run", "nginx", "--source", "ftp:x", "--yes"], capsys, env)
    assert code == 2 and "not local, lxc:NAME or ssh:HOST" in err
    assert "Traceback" not in err
