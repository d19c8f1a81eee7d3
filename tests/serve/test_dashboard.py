"""The dashboard's pages and forms without a browser: login redirects, CSRF and roles on the forms,
what the forms write to the ledger, pending package requests from the guard's refusals, the
container page's charts from the series store. (The real-browser tests: test_browser_dashboard.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pveguard.monitor.series import SeriesStore, TargetInfo
from pveguard.serve import tokens
from pveguard.serve.app import create_app
from pveguard.serve.runtime import Runtime

from .conftest import make_runtime


@dataclass
class Web:
    rt: Runtime
    secrets: dict[str, str]

    def client(self, role: str | None) -> TestClient:
        c = TestClient(create_app(self.rt), follow_redirects=False)
        if role:
            r = c.post("/login", data={"token": self.secrets[role], "next": "/"})
            assert r.status_code == 303, r.text
        return c


def csrf(c: TestClient, page: str = "/approvals") -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', c.get(page).text)
    assert m, "no CSRF field on the page"
    return m.group(1)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    rt = make_runtime(tmp_path / "state")
    rt.extra["backup_status"] = (time.time() + 3600, [])  # no child 'backup status' in these tests
    secrets = {role: tokens.create(rt.ctx.store, role, role, None, "test")[1] for role in tokens.ROLES}
    yield Web(rt, secrets)
    rt.ctx.close()


def ledger_actions(rt: Runtime) -> list[tuple[str, str, str]]:
    return [(r["action"], r["target"], r["actor"])
            for r in rt.ctx.store.conn.execute("SELECT action, target, actor FROM ledger ORDER BY seq")]


@pytest.mark.parametrize("page", ["/", "/alerts", "/approvals", "/audit", "/ledger", "/containers/lxc/101"])
def test_pages_without_a_session_go_to_the_login_page(web: Web, page: str) -> None:
    r = web.client(None).get(page)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert web.client(None).get(r.headers["location"]).status_code == 200


def test_api_without_a_session_stays_401_json(web: Web) -> None:
    r = web.client(None).get("/api/v1/status")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")


def test_a_wrong_token_shows_the_login_page_again_with_the_reason(web: Web) -> None:
    r = web.client(None).post("/login", data={"token": "pvg_nope", "next": "/ledger"})
    assert r.status_code == 401 and "text/html" in r.headers["content-type"]
    assert "unknown, revoked or expired" in r.text and 'value="/ledger"' in r.text


def test_operator_approves_by_form_and_the_ledger_names_the_api_caller(web: Web) -> None:
    c = web.client("operator")
    r = c.post("/ui/approvals", data={"csrf_token": csrf(c), "package": "htop", "reason": "debugging", "ttl": "1h"})
    assert r.status_code == 303 and "notice=approved+htop" in r.headers["location"]
    assert ("guard.approve", "htop", "api:operator (operator)") in ledger_actions(web.rt)
    page = c.get("/approvals").text
    assert "htop" in page and "Revoke #1" in page
    r = c.post("/ui/approvals/1/revoke", data={"csrf_token": csrf(c)})
    assert r.status_code == 303 and "notice=revoked" in r.headers["location"]
    assert ("guard.revoke", "htop", "api:operator (operator)") in ledger_actions(web.rt)
    again = c.post("/ui/approvals/1/revoke", data={"csrf_token": csrf(c)})  # already revoked: said, not a 500
    assert again.status_code == 303 and "error=" in again.headers["location"]


def test_bad_form_input_comes_back_as_a_message(web: Web) -> None:
    c = web.client("operator")
    r = c.post("/ui/approvals", data={"csrf_token": csrf(c), "package": "htop", "reason": "x", "ttl": "soon"})
    assert r.status_code == 303 and "error=ttl" in r.headers["location"]
    r = c.post("/ui/approvals", data={"csrf_token": csrf(c), "package": "Not A Package!", "reason": "x"})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    r = c.post("/ui/silences", data={"csrf_token": csrf(c), "target": "pve-*", "reason": "r", "rule": "nope"})
    assert "unknown+rule" in r.headers["location"]
    assert [a for a in ledger_actions(web.rt) if a[0] != "serve.login"] == []


def test_forms_without_the_csrf_token_are_refused(web: Web) -> None:
    c = web.client("operator")
    r = c.post("/ui/approvals", data={"package": "htop", "reason": "debugging"})
    assert r.status_code == 403 and "CSRF check failed" in r.text
    r = c.post("/ui/approvals", data={"csrf_token": "forged", "package": "htop", "reason": "debugging"})
    assert r.status_code == 403
    assert [a for a in ledger_actions(web.rt) if a[0] == "guard.approve"] == []


def test_a_viewer_gets_no_forms_and_403_on_posting_them(web: Web) -> None:
    c = web.client("viewer")
    page = c.get("/approvals").text
    assert 'id="approve-form"' not in page and "needs the operator role" in page
    assert 'id="silence"' not in c.get("/alerts").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").text)
    assert token  # the logout form
    r = c.post("/ui/approvals", data={"csrf_token": token.group(1), "package": "htop", "reason": "x"})
    assert r.status_code == 403 and "needs the operator role" in r.text
    assert [a for a in ledger_actions(web.rt) if a[0] == "guard.approve"] == []


def test_silence_by_form_and_end_it(web: Web) -> None:
    c = web.client("operator")
    r = c.post("/ui/silences", data={"csrf_token": csrf(c, "/alerts"), "target": "pve-*", "reason": "kernel update",
                                     "duration": "30m", "rule": "cpu"})
    assert r.status_code == 303 and "notice=silenced" in r.headers["location"]
    page = c.get("/alerts").text
    assert "kernel update" in page and "End silence #1" in page
    assert c.post("/ui/silences/1/end", data={"csrf_token": csrf(c, "/alerts")}).status_code == 303
    assert "No silence in force" in c.get("/alerts").text
    assert [a[0] for a in ledger_actions(web.rt) if a[0].startswith("alerts.")] == ["alerts.silence",
                                                                                    "alerts.unsilence"]


def test_logout_ends_the_session(web: Web) -> None:
    c = web.client("viewer")
    r = c.post("/ui/logout", data={"csrf_token": csrf(c, "/")})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/").status_code == 303


def test_pending_requests_are_the_guards_refusals_without_an_approval(web: Web) -> None:
    web.rt.ctx.ledger.append("guard.decision", "htop,cowsay", {
        "verdict": "refused", "refused": ["htop", "cowsay"], "apt_command_line": "apt-get install htop cowsay",
        "packages": [{"package": "htop", "reason": "not core"}, {"package": "cowsay", "reason": "not core"}]})
    web.rt.ctx.ledger.append("guard.decision", "curl", {"verdict": "allowed", "refused": [], "packages": []})
    c = web.client("operator")
    page = c.get("/approvals").text
    assert 'data-package="htop"' in page and 'data-package="cowsay"' in page and 'data-package="curl"' not in page
    assert ">2</span>" in c.get("/").text.split("Package requests")[1][:200]
    c.post("/ui/approvals", data={"csrf_token": csrf(c), "package": "htop", "reason": "ok"})
    page = c.get("/approvals").text
    assert 'data-package="htop"' not in page and 'data-package="cowsay"' in page


def test_container_page_charts_the_series_store(web: Web) -> None:
    now = time.time()
    series = SeriesStore(web.rt.ctx.store)
    target = TargetInfo("lxc/101", 101, "pve-monitoring", "pve1", "lxc", True, now)
    for i in range(10):
        series.record(now - 600 + i * 60, {"lxc/101": {"cpu": 10.0 + i, "memory": 50.0}}, [target])
    c = web.client("viewer")
    r = c.get("/containers/lxc/101?since=1h")
    assert r.status_code == 200
    assert r.text.count("<svg class=\"chart\"") == 5
    cpu = re.search(r'aria-label="CPU: latest (\d+)%, (\d+) points"', r.text)
    assert cpu and cpu.groups() == ("19", "10")
    assert 'aria-label="Network in: no data yet"' in r.text
    assert c.get("/containers/lxc/999").status_code == 404
    assert c.get("/containers/lxc/101?since=forever").status_code == 422


def test_stale_state_is_on_every_page(web: Web) -> None:
    web.rt.set_snapshot({"containers": [], "guests": {"total": 0, "by_status": {}}, "alerts_firing": []}, time.time())
    web.rt.mark_stale("connection refused", time.time() - 120)
    page = web.client("viewer").get("/ledger").text
    assert "PVE unreachable since" in page and "connection refused" in page


def test_pages_are_not_cached_framed_or_open_to_foreign_scripts(web: Web) -> None:
    for r in (web.client(None).get("/login"), web.client("viewer").get("/")):
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "<script>" not in r.text  # no inline script: the CSP would block it
