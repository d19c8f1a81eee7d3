"""The audit's guard findings come from the real guard: installed under a temporary root with its
own state directory, then tampered with; `pveguard audit` (a subprocess) reports what the guard's
self-check finds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from infra.strategies import defaults_file
from pveguard.context import AppContext
from pveguard.guard import install


def audit(state: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pveguard", "--strategy", defaults_file(), "--state-dir",
                           str(state), "audit", "--json"], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_guard_findings_in_the_audit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/pve").mkdir(parents=True)
    paths = install.GuardPaths(root)
    ctx = AppContext.from_options(defaults_file(), str(tmp_path / "state"))
    install.install(ctx, paths=paths)
    ctx.close()

    before = {f["id"]: f for f in audit(tmp_path / "state")["findings"] if f["category"] == "guard"}
    # Its files are intact; this machine's own apt does not run the hook (it lives under tmp_path),
    # which the guard reports as "disabled" when apt-config can tell.
    assert set(before) <= {"guard:disabled"}

    paths.policy.write_text(paths.policy.read_text().replace("ALLOW_CORE_ONLY=true", "ALLOW_CORE_ONLY=false"))
    after = {f["id"]: f for f in audit(tmp_path / "state")["findings"] if f["category"] == "guard"}
    assert after["guard:changed"]["severity"] == "critical"
    assert after["guard:changed"]["detail"] == str(paths.policy)
    assert "pveguard guard install" in after["guard:changed"]["fix"]
    ctx = AppContext.from_options(defaults_file(), str(tmp_path / "state"))
    assert [e.details["state"] for e in ctx.ledger.entries(action="guard.tamper")
            if e.target == str(paths.policy)] == ["changed"]
    ctx.close()
