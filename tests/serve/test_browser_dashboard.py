"""The web dashboard in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright,
against a real `pveguard serve` on loopback watching a pvesim cluster.

Screenshots of every page (desktop and a 390 px phone) go to $PVEGUARD_SCREENSHOTS when set, else
to a temporary directory that the test prints ("screenshots in DIR").
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.processes import stop
from pveguard.serve import tokens
from pveguard.store import Store

from .test_daemon import free_port, start_pvesim, wait_for

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
testing = pytest.importorskip("pvesim.testing")

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling Google services, which the closed
# network answers with nothing but timeouts.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (scripts/debian-packages.txt lists it)", allow_module_level=True)
if not testing.schema_available():
    pytest.skip("PVE API schema not found (pvesim)", allow_module_level=True)


@dataclass
class Rig:
    url: str
    sim_url: str
    secrets: dict[str, str]
    guests: list[dict[str, Any]]  # vmid, id, name
    shots: Path
    log: Path
    tmp: Path
    sim_port: int = 0
    sim_proc: subprocess.Popen[bytes] | None = None

    def sim(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(self.sim_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=ssl._create_unverified_context()) as r:
            return json.loads(r.read())["data"]

    def api(self, path: str, role: str) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.secrets[role]}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(json.loads(r.read()))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("dash")
    keep = os.environ.get("PVEGUARD_SCREENSHOTS")
    shots = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="pveguard-screens-"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {shots}")
    port, sim_port = free_port(), free_port()
    sim = start_pvesim(sim_port, tmp / "sim.json")
    serve: subprocess.Popen[bytes] | None = None
    rig: Rig | None = None
    try:
        sim_url = f"https://127.0.0.1:{sim_port}/_sim"  # pvesim answers TLS like PVE
        rig = Rig(f"http://127.0.0.1:{port}", sim_url, {}, [], shots, tmp / "serve.log", tmp, sim_port, sim)
        # the cluster's guests are the service containers: pveguard watches guests tagged 'pveguard'
        for g in rig.sim("GET", "/guests"):
            conf = rig.sim("GET", f"/guests/{g['vmid']}")
            rig.sim("POST", f"/guests/{g['vmid']}", {"config": {"tags": "pveguard"}, "cpu": 0.05})
            name = conf["config"].get("hostname") or conf["config"].get("name")
            rig.guests.append({"vmid": g["vmid"], "id": f"{g['type']}/{g['vmid']}", "name": name})
        token = json.loads((tmp / "sim.json").read_text())["token"]
        from pveguard.strategy.defaults import render

        doc = yaml.safe_load(render())
        doc["containers"] = [{"name": "sv-db", "role": "db", "resources": {"cores": 1, "memory": "256M"}}]
        doc["monitoring"]["sustain"] = "1s"
        doc["serve"]["schedules"]["monitor"] = "1s"
        (tmp / "strategy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        state = tmp / "state"
        with Store(state) as store:
            for role in ("viewer", "operator"):
                rig.secrets[role] = tokens.create(store, f"web-{role}", role, None, "test")[1]
        env = {**os.environ, "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": f"127.0.0.1:{sim_port}",
               "PVEGUARD_PVE_TOKEN": token, "PVEGUARD_PVE_VERIFY_SSL": "0", "PVEGUARD_PVE_RETRY_WAIT": "0.05",
               "PVEGUARD_LEDGER_ANCHORS": "file", "PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY": "0", "COLUMNS": "200"}
        with open(rig.log, "wb") as fh:
            serve = subprocess.Popen([sys.executable, "-m", "pveguard", "--strategy", str(tmp / "strategy.yaml"),
                                      "--state-dir", str(state), "serve", "--listen", f"127.0.0.1:{port}"],
                                     env=env, stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: b"listening on" in rig.log.read_bytes() or serve.poll() is not None, what="serve")
        assert serve.poll() is None, rig.log.read_text()
        wait_for(lambda: len(rig.api("/api/v1/status", "viewer")["containers"]) == len(rig.guests),
                 what="the first poll with the tagged guests")
        yield rig
        assert "Traceback" not in rig.log.read_text(), rig.log.read_text()[-3000:]
    finally:
        if serve is not None and serve.poll() is None:
            stop(serve, timeout=10)
        stop(sim)
        if rig is not None and rig.sim_proc is not None and rig.sim_proc is not sim:
            stop(rig.sim_proc)


@pytest.fixture(scope="module")
def browser(rig: Rig) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        contexts: list[Any] = []

        def open_context(name: str, viewport: dict[str, int] = DESKTOP) -> Any:
            profile = rig.tmp / f"chromium-{name}"
            shutil.rmtree(profile, ignore_errors=True)
            ctx = pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=viewport,
                reduced_motion="reduce")
            ctx.set_default_timeout(20_000)
            contexts.append(ctx)
            return ctx

        yield open_context
        for ctx in contexts:
            ctx.close()


def shot(rig: Rig, page: Any, name: str) -> None:
    page.screenshot(path=str(rig.shots / f"{name}.png"), full_page=True)


def login(rig: Rig, page: Any, role: str, path: str = "/") -> None:
    page.goto(rig.url + path)
    assert "/login" in page.url  # no session: the page sends you to log in
    page.get_by_label("API token").fill(rig.secrets[role])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(rig.url + path)
    page.locator("#live-state.on").wait_for()  # the SSE stream is open


def test_a_wrong_token_is_refused_on_the_login_page(rig: Rig, browser: Any) -> None:
    page = browser("wrong").new_page()
    page.goto(rig.url + "/approvals")
    page.get_by_label("API token").fill("pvg_not-a-token")
    page.keyboard.press("Enter")
    page.locator("#login-error").wait_for()
    assert "unknown, revoked or expired" in page.locator("#login-error").inner_text()
    assert "/login" in page.url or page.url.endswith("/login")
    shot(rig, page, "login-refused")


def test_overview_shows_the_cluster_containers_and_a_cpu_alert_arrives_live(rig: Rig, browser: Any) -> None:
    page = browser("operator").new_page()
    login(rig, page, "operator")
    rows = page.locator("table.containers tbody tr[data-id]")
    assert rows.count() == len(rig.guests)
    for g in rig.guests:
        row = page.locator(f'tr[data-id="{g["id"]}"]')
        assert g["name"] in row.inner_text() and "running" in row.inner_text()
    shot(rig, page, "overview")

    hot = rig.guests[0]
    page.evaluate("window.__noReload = 'still here'")
    assert page.locator(f'#firing [data-alert="cpu:{hot["id"]}"]').count() == 0
    rig.sim("POST", f"/guests/{hot['vmid']}", {"cpu": 0.97})
    try:
        page.locator(f'#firing [data-alert="cpu:{hot["id"]}"]').wait_for(timeout=30_000)
        row = page.locator(f'tr[data-id="{hot["id"]}"]')
        page.locator(f'tr[data-id="{hot["id"]}"]', has_text="cpu:firing").wait_for()
        assert page.evaluate("window.__noReload") == "still here"  # the same document: no reload
        assert int(page.locator("#firing-count").inner_text()) >= 1
        assert "cpu:firing" in row.inner_text() and "97%" in row.inner_text()  # live usage, no reload
        shot(rig, page, "overview-alert")
        page.set_viewport_size(PHONE)
        shot(rig, page, "overview-phone")
        page.set_viewport_size(DESKTOP)

        page.get_by_role("link", name="Alerts", exact=True).click()
        page.locator(f'tr[data-alert="cpu:{hot["id"]}"]').wait_for()
        shot(rig, page, "alerts")
        page.goto(rig.url + f"/containers/{hot['id']}?since=1h")
        page.locator("figure.chart-box svg polyline.line").first.wait_for()
        assert page.locator("figure.chart-box").count() == 5
        shot(rig, page, "container")
        page.set_viewport_size(PHONE)
        shot(rig, page, "container-phone")
    finally:
        rig.sim("POST", f"/guests/{hot['vmid']}", {"cpu": 0.05})


def test_operator_approves_a_package_with_the_keyboard_and_the_ledger_shows_it(rig: Rig, browser: Any) -> None:
    page = browser("operator-approve").new_page()
    login(rig, page, "operator", "/approvals")
    package = f"htop-{int(time.time()) % 100000}"
    page.get_by_role("textbox", name="Package").fill(package)
    page.get_by_role("textbox", name="Reason").fill("debugging a slow service")
    page.get_by_role("textbox", name="Valid for").fill("2h")
    page.get_by_role("textbox", name="Valid for").press("Tab")  # keyboard only: focus the button, press Enter
    assert page.evaluate("document.activeElement.id") == "approve-button"
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text=f"approved {package}").wait_for()
    row = page.locator("#approvals tr[data-approval]").filter(has_text=package)
    assert "active" in row.inner_text()
    assert row.get_by_role("button", name="Revoke").count() == 1
    shot(rig, page, "approvals-operator")

    api = rig.api("/api/v1/approvals", "viewer")["approvals"]
    assert [a for a in api if a["package"] == package and a["created_by"] == "api:web-operator (operator)"]

    page.get_by_role("link", name="Ledger", exact=True).click()
    entry = page.locator("#ledger-entries tr").filter(has_text="guard.approve").filter(has_text=package)
    entry.wait_for()
    assert "api:web-operator (operator)" in entry.inner_text()
    assert "Verified:" in page.locator("#verify-state").inner_text()
    shot(rig, page, "ledger")
    page.set_viewport_size(PHONE)
    shot(rig, page, "ledger-phone")
    page.set_viewport_size(DESKTOP)

    page.goto(rig.url + "/audit")
    page.get_by_role("heading", name="Audit report").wait_for()
    assert page.locator(".banner.bad").count() == 0, page.locator(".banner.bad").inner_text()
    assert page.get_by_text("Compliance score").count() >= 1
    shot(rig, page, "audit")

    # revoking from the page
    page.goto(rig.url + "/approvals")
    page.locator("#approvals tr[data-approval]").filter(has_text=package).get_by_role("button", name="Revoke").click()
    page.get_by_role("status").filter(has_text="revoked approval").wait_for()
    assert "revoked" in page.locator("#approvals tr[data-approval]").filter(has_text=package).inner_text()


def test_a_viewer_sees_no_approve_button_and_the_api_refuses_it(rig: Rig, browser: Any) -> None:
    page = browser("viewer").new_page()
    login(rig, page, "viewer", "/approvals")
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.locator("#approve-form").count() == 0
    assert page.get_by_role("button", name="Revoke").count() == 0
    assert "needs the operator role" in page.locator("main").inner_text()
    shot(rig, page, "approvals-viewer")
    page.set_viewport_size(PHONE)
    shot(rig, page, "approvals-viewer-phone")
    # the API from the viewer's own session, with a valid CSRF token: 403 for the role
    answer = page.evaluate("""async () => {
        const s = await (await fetch('/api/v1/session')).json();
        const r = await fetch('/api/v1/approvals', {method: 'POST', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': s.csrf_token}, body: JSON.stringify({package: 'htop', reason: 'x'})});
        return {role: s.role, status: r.status, body: await r.json()};
    }""")
    assert answer["role"] == "viewer" and answer["status"] == 403, answer
    assert "needs the operator role" in answer["body"]["detail"]
    # and without the CSRF token the session is refused before the role is even looked at
    csrf = page.evaluate("""async () => (await fetch('/api/v1/approvals', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
    assert csrf == 403
    # the keyboard: the first Tab reaches the skip link, with a visible focus ring; Enter moves to the content
    page.goto(rig.url + "/")
    page.keyboard.press("Tab")
    focused = page.evaluate("""() => { const e = document.activeElement, s = getComputedStyle(e);
        return {text: e.textContent, outline: s.outlineStyle, width: s.outlineWidth}; }""")
    assert focused["text"] == "Skip to content" and focused["outline"] != "none" and focused["width"] != "0px", focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # the silence form is not there either
    page.goto(rig.url + "/alerts")
    assert page.locator("#silence").count() == 0


def test_pve_gone_the_open_page_says_stale_since_and_recovers_by_itself(rig: Rig, browser: Any) -> None:
    """Runs last: it stops pvesim (its guests come back from the same seed, untagged: the page then
    waits for the first poll after the restart, then shows the state again)."""
    page = browser("stale").new_page()
    login(rig, page, "viewer", "/")
    page.evaluate("window.__noReload = 'still here'")
    assert page.locator(".banner.stale").count() == 0
    assert rig.sim_proc is not None
    rig.sim_proc.kill()
    rig.sim_proc.wait()
    banner = page.locator("#banner .banner.stale")
    banner.wait_for(timeout=30_000)
    text = banner.inner_text()
    assert "PVE unreachable since" in text and "showing the last state" in text, text
    assert page.locator("table.containers tbody tr[data-id]").count() == len(rig.guests)  # the last state stays
    assert page.evaluate("window.__noReload") == "still here"
    shot(rig, page, "overview-stale")
    page.set_viewport_size(PHONE)
    shot(rig, page, "overview-stale-phone")
    rig.sim_proc = start_pvesim(rig.sim_port, rig.tmp / "sim.json")
    banner.wait_for(state="detached", timeout=30_000)
    assert page.evaluate("window.__noReload") == "still here"
