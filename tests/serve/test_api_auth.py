"""The API's access control: 401 without (valid) credentials, 403 below the needed role, CSRF for
web sessions, token expiry and revocation, the API caller as the ledger's actor."""

from __future__ import annotations

import time

from pveguard.serve import tokens

from .conftest import Api

APPROVAL = {"package": "htop", "reason": "debugging", "ttl": "2h"}


def test_healthz_needs_no_token(api: Api) -> None:
    r = api.client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True


def test_401_without_or_with_a_bad_token(api: Api) -> None:
    for path in ("/api/v1/status", "/api/v1/alerts", "/api/v1/approvals", "/api/v1/ledger", "/metrics"):
        r = api.client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get("/api/v1/status", headers={"Authorization": "Bearer pvg_nope"}).status_code == 401
    assert api.client.get("/api/v1/status", headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert api.client.post("/api/v1/approvals", json=APPROVAL).status_code == 401


def test_roles_are_ordered(api: Api) -> None:
    for role in ("viewer", "operator", "admin"):
        assert api.client.get("/api/v1/status", headers=api.h(role)).status_code == 200
    r = api.client.post("/api/v1/approvals", json=APPROVAL, headers=api.h("viewer"))
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert api.client.post("/api/v1/approvals", json=APPROVAL, headers=api.h("operator")).status_code == 201
    assert api.client.post("/api/v1/approvals", json=APPROVAL, headers=api.h("admin")).status_code == 201
    sil = {"target": "pve-*", "reason": "maintenance", "duration": "1h"}
    assert api.client.post("/api/v1/alerts/silences", json=sil, headers=api.h("viewer")).status_code == 403
    assert api.client.post("/api/v1/alerts/silences", json=sil, headers=api.h("operator")).status_code == 201


def test_expired_token_is_refused(api: Api) -> None:
    _tok, secret = tokens.create(api.rt.ctx.store, "old", "admin", 3600, "test", now=time.time() - 7200)
    r = api.client.get("/api/v1/status", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    _tok, fresh = tokens.create(api.rt.ctx.store, "new", "viewer", 3600, "test")
    assert api.client.get("/api/v1/status", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_revoked_token_and_its_sessions_are_refused(api: Api) -> None:
    r = api.client.post("/login", json={"token": api.secrets["operator"]})
    assert r.status_code == 200
    assert api.client.get("/api/v1/session").json()["name"] == "operator"
    tokens.revoke(api.rt.ctx.store, "operator", "test")
    assert api.client.get("/api/v1/status", headers=api.h("operator")).status_code == 401
    assert api.client.get("/api/v1/session").status_code == 401  # the cookie's session ended with it


def test_login_cookie_and_csrf(api: Api) -> None:
    assert api.client.post("/login", json={"token": "pvg_wrong"}).status_code == 401
    r = api.client.post("/login", json={"token": api.secrets["operator"]})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "pveguard_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "SameSite=Strict", "SameSite=strict")
    csrf = r.json()["csrf_token"]
    # a session POST without the CSRF token, or with a wrong one, is refused
    r = api.client.post("/api/v1/approvals", json=APPROVAL)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert api.client.post("/api/v1/approvals", json=APPROVAL, headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    # a form post carries it as a field
    r = api.client.post("/logout", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    r = api.client.post("/api/v1/approvals", json=APPROVAL, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert api.client.post("/logout", data={"csrf_token": csrf}).status_code == 200
    assert api.client.get("/api/v1/session").status_code == 401


def test_form_login_redirects_to_a_local_page_only(api: Api) -> None:
    r = api.client.post("/login", data={"token": api.secrets["viewer"], "next": "/alerts"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/alerts"
    r = api.client.post("/login", data={"token": api.secrets["viewer"], "next": "//evil.example/"},
                        follow_redirects=False)
    assert r.status_code == 200  # no open redirect


def test_mutations_are_in_the_ledger_with_the_api_caller(api: Api) -> None:
    r = api.client.post("/api/v1/approvals", json=APPROVAL, headers=api.h("operator"))
    approval_id = r.json()["id"]
    assert r.json()["created_by"] == "api:operator (operator)"
    assert api.client.delete(f"/api/v1/approvals/{approval_id}", headers=api.h("viewer")).status_code == 403
    assert api.client.delete(f"/api/v1/approvals/{approval_id}", headers=api.h("admin")).status_code == 200
    assert api.client.delete(f"/api/v1/approvals/{approval_id}", headers=api.h("admin")).status_code == 409
    page = api.client.get("/api/v1/ledger", params={"action": "guard"}, headers=api.h("viewer")).json()
    got = [(e["action"], e["actor"], e["details"]["via"]) for e in page["entries"]]
    assert got == [("guard.revoke", "api:admin (admin)", "api (bearer)"),
                   ("guard.approve", "api:operator (operator)", "api (bearer)")]
    only = api.client.get("/api/v1/ledger", params={"actor": "api:admin"}, headers=api.h("viewer")).json()
    assert [e["action"] for e in only["entries"]] == ["guard.revoke"]


def test_ledger_paging(api: Api) -> None:
    for i in range(5):
        api.rt.ctx.ledger.append("test.entry", f"t{i}", {})
    first = api.client.get("/api/v1/ledger", params={"limit": 2, "action": "test"}, headers=api.h("viewer")).json()
    assert [e["target"] for e in first["entries"]] == ["t4", "t3"] and first["next_before"] is not None
    second = api.client.get("/api/v1/ledger", params={"limit": 2, "action": "test", "before": first["next_before"]},
                            headers=api.h("viewer")).json()
    assert [e["target"] for e in second["entries"]] == ["t2", "t1"]


def test_history_of_a_recorded_guest(api: Api) -> None:
    import time as _t

    from pveguard.monitor.series import SeriesStore, TargetInfo

    now = _t.time()
    series = SeriesStore(api.rt.ctx.store)
    for i in range(3):
        series.record(now - 60 + i * 15, {"lxc/101": {"cpu": 10.0 * (i + 1)}},
                      [TargetInfo("lxc/101", 101, "pve-monitoring", "pve1", "lxc", True, now)])
    r = api.client.get("/api/v1/history/pve-monitoring", params={"metric": "cpu", "since": "1h"},
                       headers=api.h("viewer"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["guest"] == "lxc/101" and doc["unit"] == "%"
    assert [p["value"] for p in doc["points"]] == [10.0, 20.0, 30.0]
    assert api.client.get("/api/v1/history/lxc/101", headers=api.h("viewer")).json()["name"] == "pve-monitoring"
    assert api.client.get("/api/v1/history/nope", headers=api.h("viewer")).status_code == 404
    assert api.client.get("/api/v1/history/lxc/101", params={"metric": "x"}, headers=api.h("viewer")).status_code == 422
    assert api.client.get("/api/v1/history/lxc/101").status_code == 401
