"""`pveguard audit` through the real entry point: formats, --output, --root errors, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.strategies import defaults_file

GOLDEN_ROOT = Path(__file__).parent / "golden/pve-alternatives/root"


def run(*args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    # a state dir that does not exist keeps the guard's self-check from touching this machine's state
    argv = [sys.executable, "-m", "pveguard", "--strategy", defaults_file(),
            "--state-dir", str(state or "/nonexistent/state")]
    return subprocess.run([*argv, "audit", *args], capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "root"
    shutil.copytree(GOLDEN_ROOT, dest, symlinks=True)
    return dest


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "xml"], "unknown format 'xml'"),
    (["--root", "/nonexistent/root"], "not a directory"),
    (["--root", "/proc/self"], "not a Debian-family root"),
])
def test_bad_options_are_clear_errors(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_output(root: Path) -> None:
    proc = run("--root", str(root), "--output", "/nonexistent-dir/report.json")
    assert proc.returncode == 2 and "cannot write /nonexistent-dir/report.json" in proc.stderr


def test_read_only_and_no_state(root: Path, tmp_path: Path) -> None:
    before = _tree_digest(root)
    proc = run("--root", str(root), state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert _tree_digest(root) == before
    assert not (tmp_path / "state").exists()


def test_formats(root: Path, tmp_path: Path) -> None:
    table = run("--root", str(root))
    assert "compliance score:" in table.stdout and "docker.service" in table.stdout
    assert "not collected: running units: offline audit" in table.stdout
    as_json = json.loads(run("--root", str(root), "--json").stdout)
    as_format = json.loads(run("--root", str(root), "--format", "json").stdout)
    as_json.pop("generated_at")
    as_format.pop("generated_at")
    assert as_json == as_format
    out = tmp_path / "report.md"
    proc = run("--root", str(root), "--format", "markdown", "--output", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    assert f"score {as_json['score']['value']}/100" in proc.stderr
    md = out.read_text()
    assert md.startswith("# pveguard audit: pve-golden")
    assert f"**compliance score: {as_json['score']['value']}/100**" in md
    assert "| docker.service |" in md and "## Dependency map" in md


def test_html_escapes_what_it_shows(root: Path, tmp_path: Path) -> None:
    unit = root / "etc/systemd/system/evil.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/x '<script>alert(1)</script>'\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    (root / "etc/systemd/system/multi-user.target.wants/evil.service").symlink_to("/etc/systemd/system/evil.service")
    out = tmp_path / "report.html"
    assert run("--root", str(root), "--format", "html", "-o", str(out)).returncode == 0
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "evil.service" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.skipif(Path("/etc/pve").exists(), reason="this machine runs Proxmox VE")
def test_this_machine_without_pve() -> None:
    proc = run("--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["host"]["pve"]["detected"] is False
    assert any(f["id"] == "pve-not-detected" and f["severity"] == "info" for f in doc["findings"])
    # the classification's roots: installation_policy.core_roots, then every core function's packages
    assert doc["host"]["core_roots"][0] == "proxmox-ve" and "pve-qemu-kvm" in doc["host"]["core_roots"]
    # guests come from whichever backend is reachable here (the lxc one when the lxc tools are installed)
    assert doc["guests"]["available"] or any(u["fact"] == "guests" for u in doc["unavailable"])


def test_unprivileged_run_names_what_needs_root() -> None:
    """As nobody: the audit still works and says which facts need root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*drop, sys.executable, "-c", "import pveguard"], capture_output=True, check=False).returncode:
        pytest.skip("nobody cannot read this checkout or its virtualenv")
    proc = subprocess.run([*drop, sys.executable, "-m", "pveguard", "--strategy", defaults_file(),
                           "--state-dir", "/nonexistent/state", "audit", "--json"],
                          capture_output=True, text=True, check=False, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    if doc["sockets"]:
        assert any("/proc/PID/fd" in n for n in doc["needs_root"]), doc["needs_root"]


@pytest.mark.parametrize("fmt", ["table", "markdown", "html"])
def test_live_audit_of_this_machine_in_every_format(fmt: str) -> None:
    """Whatever this machine has (guests from a backend or not, sockets, cron), every view renders."""
    proc = run("--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert "compliance" in proc.stdout and "Traceback" not in proc.stderr
