"""Every table command read at 80 and 120 columns: no line wider than the terminal, no value cut
into "…", and the identifying values (names, actions, packages, targets) whole on one line.

The commands run as the admin runs them (a subprocess; rich takes the width from COLUMNS) against
an offline audit root, a ledger, and pvesim for `monitor --once`, `alerts` and `status`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from infra.strategies import defaults_file

WIDTHS = (80, 120)
GOLDEN_ROOT = Path(__file__).parents[1] / "audit/golden/pve-fake/root"
LONG_NAME = "pve-monitoring-long-guest-name"


def pveguard(env: dict[str, str], *args: str, width: int | None = None) -> subprocess.CompletedProcess[str]:
    full = {**env, "COLUMNS": str(width)} if width else env
    proc = subprocess.run([sys.executable, "-m", "pveguard", *args], env=full, capture_output=True, text=True,
                          timeout=180, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def assert_reads_well(text: str, width: int, identifiers: list[str], in_cells: list[str] | None = None) -> None:
    """The whole output fits `width`, nothing is cut, and each identifier shows whole on a line; the
    `in_cells` ones are never folded inside a table cell either (whole in a sentence is not enough)."""
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, f"{len(too_wide)} line(s) wider than {width}:\n" + "\n".join(too_wide[:3])
    assert "…" not in text, text
    missing = [v for v in identifiers if not any(v in line for line in text.splitlines())]
    assert not missing, f"not shown whole at {width} columns: {missing}\n{text}"
    # ... and not folded inside a table cell either (shown whole elsewhere, e.g. in a detail, is not enough)
    whole = set(in_cells or [])
    folded = sorted({word for line in text.splitlines() if "│" in line for cell in line.split("│")
                     for word in cell.split()[-1:]
                     if len(word) >= 4 and word not in whole and any(v.startswith(word) for v in whole)})
    assert not folded, f"identifiers folded inside a cell at {width} columns: {folded}\n{text}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    from pveguard.strategy.defaults import render

    (tmp_path / "strategy.yaml").write_text(render())  # a named strategy file must exist
    return {**os.environ, "PVEGUARD_STATE_DIR": str(tmp_path / "state"),
            "PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml")}


# --- audit ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_doc() -> dict[str, Any]:
    proc = pveguard(dict(os.environ), "--strategy", defaults_file(), "--state-dir", "/nonexistent/state",
                    "audit", "--root", str(GOLDEN_ROOT), "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.mark.parametrize("width", WIDTHS)
def test_audit_summary(audit_doc: dict[str, Any], width: int) -> None:
    proc = pveguard(dict(os.environ), "--strategy", defaults_file(), "--state-dir", "/nonexistent/state",
                    "audit", "--root", str(GOLDEN_ROOT), width=width)
    assert proc.returncode == 0, proc.stderr
    # the summary names each finding's package or unit whole (they are single words)
    words = {w for f in audit_doc["findings"] for w in f["title"].split() if "-" in w or "." in w}
    assert_reads_well(proc.stdout, width, sorted(words))
    assert "--full" in proc.stdout
    # the summary is a summary: the whole inventory waits for --full
    assert "packages pulled in" not in proc.stdout and "migration facts for" not in proc.stdout


@pytest.mark.parametrize("width", WIDTHS)
def test_audit_full(audit_doc: dict[str, Any], width: int) -> None:
    proc = pveguard(dict(os.environ), "--strategy", defaults_file(), "--state-dir", "/nonexistent/state",
                    "audit", "--root", str(GOLDEN_ROOT), "--full", width=width)
    assert proc.returncode == 0, proc.stderr
    shown = [s for s in audit_doc["services"] if s["in_use"] or not s["core"]]
    names = [s["unit"] for s in shown] + [s["package"] for s in shown if s["package"]]
    names += [d["unit"] for d in audit_doc["dependency_map"]]
    assert_reads_well(proc.stdout, width, names)
    assert "packages pulled in" in proc.stdout and "migration facts for" in proc.stdout


# --- audit-log show ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_audit_log_show(env: dict[str, str], width: int) -> None:
    # a path as long as a real one (pytest's own tmp_path alone would not fit next to the action at 80)
    with tempfile.TemporaryDirectory(prefix="pg-") as tmp:
        deep = Path(tmp) / "a-strategy-file-with-a-long-name.yaml"
        assert pveguard(env, "--strategy", str(deep), "init").returncode == 0
    assert pveguard(env, "alerts", "silence", "pve-backup-manager", "--for", "2h", "--rule", "memory",
                    "--reason", "a planned kernel update on the node, with a reboot").returncode == 0
    entries = json.loads(pveguard(env, "audit-log", "show", "--json").stdout)
    proc = pveguard(env, "audit-log", "show", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [e["action"] for e in entries] + [e["target"] for e in entries])


# --- monitor --once, alerts, status (pvesim) -------------------------------------------------------


@pytest.fixture
def sim_env(env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    testing = pytest.importorskip("pvesim.testing")
    if not testing.schema_available():
        pytest.skip("PVE API schema not found (pvesim)")
    fast = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1}
    with testing.running(nodes=1, guests=3, seed=3, running_share=1.0, qemu_share=0.0, task_seconds=fast) as sim:
        yield sim, {**env, "PVEGUARD_BACKEND": "proxmox", "PVEGUARD_PVE_HOST": sim.host,
                    "PVEGUARD_PVE_TOKEN": sim.token, "PVEGUARD_PVE_VERIFY_SSL": "0",
                    "PVEGUARD_PVE_RETRY_WAIT": "0.05", "PVEGUARD_PVE_POLL_INTERVAL": "0.1"}


def _busy_guest(sim: Any) -> int:
    """One guest with a long name above every threshold, so it alerts."""
    vmid = int(sim.control("GET", "/guests")[0]["vmid"])
    sim.control("POST", f"/guests/{vmid}", {"config": {"hostname": LONG_NAME}})
    sim.control("POST", f"/guests/{vmid}", {"cpu": 0.99})
    return vmid


@pytest.mark.parametrize("width", WIDTHS)
def test_monitor_once_and_alerts(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    sim, env = sim_env
    vmid = _busy_guest(sim)
    poll = json.loads(pveguard(env, "monitor", "--once", "--json").stdout)
    proc = pveguard(env, "monitor", "--once", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [g["id"] for g in poll["guests"]] + [g["name"] for g in poll["guests"]])
    assert LONG_NAME in proc.stdout

    # the traffic watch read the firewall log at that poll: its table keeps every container's name whole
    traffic = json.loads(pveguard(env, "monitor", "traffic", "--json").stdout)
    assert traffic["containers"]
    proc = pveguard(env, "monitor", "traffic", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [c["name"] for c in traffic["containers"]])

    assert pveguard(env, "alerts", "silence", LONG_NAME, "--for", "2h", "--reason", "the tables test").returncode == 0
    active = json.loads(pveguard(env, "alerts", "--json").stdout)["alerts"]
    assert any(a["target"] == f"lxc/{vmid}" for a in active), active
    proc = pveguard(env, "alerts", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [a["target"] for a in active] + [a["name"] for a in active]
                      + [a["rule"] for a in active] + [LONG_NAME])


@pytest.mark.parametrize("width", WIDTHS)
def test_status(sim_env: tuple[Any, dict[str, str]], tmp_path: Path, width: int) -> None:
    from pveguard.strategy.defaults import render

    _, env = sim_env
    Path(env["PVEGUARD_STRATEGY"]).write_text(render())
    applied = pveguard(env, "apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    data = json.loads(pveguard(env, "status", "--json").stdout)
    assert data["containers"]
    proc = pveguard(env, "status", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [c["name"] for c in data["containers"]])


def assert_prose_whole(text: str, sentence: str) -> None:
    """A wrapped sentence is all there, in order, once the line breaks and indents are undone (a word
    longer than the line, such as a certificate fingerprint, folds onto the next one)."""
    assert "".join(sentence.split()) in "".join(text.split()), f"{sentence!r} not whole in:\n{text}"


# --- info, doctor, plan, adopt, backup status (pvesim) -----------------------------------------------


def _long_named(name: str = LONG_NAME) -> str:
    """The default strategy with one container named as long as real ones get."""
    import yaml

    from pveguard.strategy.defaults import render

    doc = yaml.safe_load(render())
    doc["containers"][0]["name"] = name
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize("width", WIDTHS)
def test_info(env: dict[str, str], width: int) -> None:
    Path(env["PVEGUARD_STRATEGY"]).write_text(_long_named())
    data = json.loads(pveguard(env, "info", "--json").stdout)
    proc = pveguard(env, "info", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [c["name"] for c in data["strategy"]["containers"]])


@pytest.mark.parametrize("width", WIDTHS)
def test_doctor(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    import yaml

    from pveguard.strategy.defaults import render

    _, env = sim_env
    doc = yaml.safe_load(render())
    doc["network"]["bridge"] = "vmbr9"            # a failing check whose fix is a long sentence
    Path(env["PVEGUARD_STRATEGY"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    checks = json.loads(pveguard(env, "doctor", "--json").stdout)["checks"]
    failing = [c for c in checks if c["ok"] is False and c["fix"]]
    assert failing and max(len(c["fix"]) for c in failing) > 40, checks
    proc = pveguard(env, "doctor", width=width)
    assert_reads_well(proc.stdout, width, [c["name"] for c in checks])
    for c in failing:                             # the fix wraps, it is never cut
        assert_prose_whole(proc.stdout, f"fix: {c['fix']}")


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_and_adopt(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    import yaml

    from pveguard.strategy.defaults import render

    sim, env = sim_env
    doc = yaml.safe_load(render())
    Path(env["PVEGUARD_STRATEGY"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    foreign = sim.control("GET", "/guests")[0]      # the simulator's own guests: not this installation's
    applied = pveguard(env, "apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    # another VLAN rewrites every net0: a field change longer than 80 columns
    doc["network"]["container_vlan"] = 4001
    doc["containers"].append({**doc["containers"][1], "name": LONG_NAME})
    Path(env["PVEGUARD_STRATEGY"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = json.loads(pveguard(env, "plan", "--json").stdout)
    proc = pveguard(env, "plan", width=width)
    assert proc.returncode == 0, proc.stderr
    names = [a["name"] for a in plan["actions"]]
    assert_reads_well(proc.stdout, width, names)
    changes = [c for a in plan["actions"] for c in a.get("changes", []) if c["field"] == "net0"]
    assert changes, plan
    for c in changes:
        assert_prose_whole(proc.stdout, f"net0: {c['old']} -> {c['new']}")

    proc = pveguard(env, "adopt", str(foreign["vmid"]), "--yes", width=width)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_reads_well(proc.stdout, width, [f"CT {foreign['vmid']}"])


@pytest.mark.parametrize("width", WIDTHS)
def test_backup_status(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    _, env = sim_env
    Path(env["PVEGUARD_STRATEGY"]).write_text(_long_named(LONG_NAME + "-site-b-rack-4"))
    assert pveguard(env, "apply", "--yes").returncode == 0
    rows = json.loads(pveguard(env, "backup", "status", "--json").stdout)
    assert rows and any(r["problems"] for r in rows)
    proc = pveguard(env, "backup", "status", width=width)
    names = [r["guest"] for r in rows] + [r["name"] for r in rows]
    assert_reads_well(proc.stdout, width, names, names)
    for r in rows:
        for p in r["problems"]:
            assert_prose_whole(proc.stdout.replace("│", " "), p) if width > 100 else None


# --- the apt guard ---------------------------------------------------------------------------------


def _guard_decisions(env: dict[str, str]) -> None:
    """Guard decisions in the ledger, as the hook writes them (the hook itself needs apt, see tests/guard)."""
    from pveguard.context import AppContext

    ctx = AppContext.from_options(env["PVEGUARD_STRATEGY"], env["PVEGUARD_STATE_DIR"])
    pkgs = ["grafana", "prometheus-node-exporter-collectors", "libpve-guest-common-perl", "pve-manager"]
    ctx.record("guard.decision", "grafana", verdict="refuse", packages=[{"package": p} for p in pkgs],
               command_line="apt-get install -y grafana prometheus-node-exporter-collectors "
                            "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
    ctx.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_guard_status_and_approvals(env: dict[str, str], width: int) -> None:
    from pveguard.strategy.defaults import render

    Path(env["PVEGUARD_STRATEGY"]).write_text(render())
    _guard_decisions(env)
    assert pveguard(env, "approve", "prometheus-node-exporter-collectors", "--reason",
                    "the node's own metrics, reviewed by the platform team in the change window").returncode == 0
    data = json.loads(pveguard(env, "guard", "status", "--json").stdout)
    assert data["recent_decisions"]
    proc = pveguard(env, "guard", "status", width=width)
    packages = [p for d in data["recent_decisions"] for p in d["packages"]]
    assert_reads_well(proc.stdout, width, packages)

    records = json.loads(pveguard(env, "approvals", "--json").stdout)
    proc = pveguard(env, "approvals", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [r["package"] for r in records])


@pytest.mark.parametrize("width", WIDTHS)
def test_guard_check_rendering(width: int) -> None:
    # `guard check` runs apt (tests/guard runs it in a chroot); its table is this function's
    from rich.console import Console

    from pveguard.guard import cli as guard_cli

    items = [{"package": p, "action": "install", "old_version": None, "new_version": "10.4.2+dfsg-1~bpo12+1",
              "verdict": "refuse", "reason": "not core", "detail": "install it in a container: pveguard install "
              f"{p}", "approval": None, "container": None}
             for p in ("grafana", "prometheus-node-exporter-collectors", "libpve-guest-common-perl")]
    out = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    old = guard_cli.console
    guard_cli.console = out
    try:
        guard_cli.render_decision({"allowed": False, "items": items}, installed=False)
    finally:
        guard_cli.console = old
    assert_reads_well(out.export_text(), width, [i["package"] for i in items])


@pytest.mark.parametrize("width", WIDTHS)
def test_install_dry_run(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    from pveguard.strategy.defaults import render

    _, env = sim_env
    Path(env["PVEGUARD_STRATEGY"]).write_text(render())
    args = ("install", "grafana", "--dry-run")   # one short name: room for every column, none dropped
    result = json.loads(pveguard(env, *args, "--json").stdout)
    proc = pveguard(env, *args, width=width)
    containers = [i["container"] for i in result["packages"] if i["container"]]
    assert containers, result
    assert_reads_well(proc.stdout, width, [i["package"] for i in result["packages"]] + containers, containers)


# --- backup archives (a dump directory) -------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_backup_archives(env: dict[str, str], tmp_path: Path, width: int) -> None:
    from datetime import UTC, datetime, timedelta

    from pveguard.backup.archive import archive_name

    dump = tmp_path / "dump"
    dump.mkdir()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for vmid, days in ((101, range(9)), (1002345, range(5, 6))):
        for d in days:
            (dump / archive_name("lxc", vmid, midnight - timedelta(days=d), zone=UTC)).write_bytes(b"not zstd")
    env = {**env, "TZ": "UTC"}
    rows = json.loads(pveguard(env, "backup", "archives", "status", str(dump), "--schedule", "daily UTC",
                               "--keep", "keep-daily=7", "--json").stdout)
    proc = pveguard(env, "backup", "archives", "status", str(dump), "--schedule", "daily UTC", "--keep",
                    "keep-daily=7", width=width)
    assert_reads_well(proc.stdout, width, [r["guest"] for r in rows])

    checked = json.loads(pveguard(env, "backup", "archives", "verify", str(dump), "--json").stdout)["archives"]
    proc = pveguard(env, "backup", "archives", "verify", str(dump), width=width)
    assert proc.returncode == 1
    assert_reads_well(proc.stdout, width, [a["filename"] for a in checked])

    proc = pveguard(env, "backup", "next-runs", "mon..fri 21:00", "--count", "3", width=width)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    assert_reads_well(proc.stdout, width, [])


# --- every table is a FitTable, and every module printing one is read above ----------------------------

@pytest.mark.parametrize("width", WIDTHS)
def test_certs(sim_env: tuple[Any, dict[str, str]], width: int) -> None:
    _, env = sim_env
    doc = json.loads(pveguard(env, "certs", "--json").stdout)
    assert doc["certificates"]
    proc = pveguard(env, "certs", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [c["where"] for c in doc["certificates"]]
                      + [c["name"] for c in doc["certificates"]])


@pytest.mark.parametrize("width", WIDTHS)
def test_api_token_list(env: dict[str, str], width: int) -> None:
    names = ["dashboard-operations-team", "ci-runner", "grafana-readonly-viewer"]
    for name, role in zip(names, ("operator", "admin", "viewer"), strict=True):
        assert pveguard(env, "api-token", "create", name, "--role", role, "--ttl", "30d").returncode == 0
    proc = pveguard(env, "api-token", "list", width=width)
    assert proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, names, in_cells=names)


SRC = Path(__file__).parents[2] / "src/pveguard"
# module -> the tests above that run its table commands at 80 and 120 columns
READ_HERE = {
    "audit/report.py": ["test_audit_summary", "test_audit_full"],
    "monitor/cli.py": ["test_monitor_once_and_alerts"],
    "provision/cli.py": ["test_status", "test_plan_and_adopt"],
    "security/cli.py": ["test_audit_log_show"],
    "hostinfo.py": ["test_info"],
    "guard/cli.py": ["test_guard_status_and_approvals", "test_guard_check_rendering"],
    "guard/workflow.py": ["test_install_dry_run"],
    "backup/cli.py": ["test_backup_status", "test_backup_archives", "test_backup_run"],
    "security/certs_cli.py": ["test_certs"],
    "serve/cli.py": ["test_api_token_list"],
}


def test_every_table_fits_and_is_read_at_80_columns() -> None:
    """A plain rich Table cuts names into "…" when the terminal is narrow: only output.py builds one
    (inside FitTable). A module that prints a FitTable needs its commands in a test above."""
    plain, fitted = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        text = path.read_text()
        if rel != "output.py" and ("rich.table" in text or "Table(" in text.replace("FitTable(", "")):
            plain.append(rel)
        if rel != "output.py" and "FitTable(" in text:
            fitted.add(rel)
    assert not plain, f"rich Table used directly (use output.FitTable): {plain}"
    assert fitted == set(READ_HERE), (f"FitTable in modules without a width test here: {fitted - set(READ_HERE)}; "
                                      f"listed but no table any more: {set(READ_HERE) - fitted}")
    defined = set(globals())
    assert all(name in defined for names in READ_HERE.values() for name in names)


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_backup_run(sim_env: tuple[Any, dict[str, str]], tmp_path: Path, width: int) -> None:
    # slow: real restic for the host-config step
    import shutil

    import yaml

    if shutil.which("restic") is None:
        pytest.skip("restic not installed")
    _, env = sim_env
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    doc = yaml.safe_load(_long_named())
    missing = str(tmp_path / "etc-pve-priv-not-on-this-host" / "storage-credentials-of-the-cluster")
    doc["backup"]["host_config"]["paths"] = [str(tmp_path / "etc"), missing]
    Path(env["PVEGUARD_STRATEGY"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    report = json.loads(pveguard(env, "backup", "run", "--json").stdout)
    assert any(missing in s["detail"] for s in report["steps"]), report
    proc = pveguard(env, "backup", "run", width=width)
    assert_reads_well(proc.stdout, width, [s["step"] for s in report["steps"]])
    for s in report["steps"]:
        if s["step"] == "host-config":
            assert_prose_whole(proc.stdout.replace("│", " "), missing)
    snaps = json.loads(pveguard(env, "backup", "host-config", "list", "--json").stdout)
    proc = pveguard(env, "backup", "host-config", "list", width=width)
    assert snaps and proc.returncode == 0, proc.stderr
    assert_reads_well(proc.stdout, width, [s["short_id"] for s in snaps] + [str(tmp_path / "etc")])
