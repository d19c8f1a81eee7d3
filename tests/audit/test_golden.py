"""Golden tests: the classification of recorded roots (dpkg status, file lists, unit trees) must
match the reviewed expectations in tests/audit/golden/<case>/expected.json.

Cases: `debian-nginx` (a plain Debian 12 minbase + nginx/ssh/cron/python3, recorded from a debootstrap
root: no PVE), `pve-fake` (the same root after installing the fake proxmox-ve tree, the Grafana-like
.deb, a hand-made unit and cron job), `pve-alternatives` (hand-written: alternatives resolved through
Provides, kernels, the optional list, Essential, extra_allowed, a masked unit, an alias, a template
instance, a drop-in that overrides ExecStart, Docker). Regenerate with PVEGUARD_UPDATE_GOLDEN=1 and
review the diff before committing it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pveguard.audit import assemble, inventory
from pveguard.audit.findings import GuestView
from pveguard.strategy.load import load
from pveguard.strategy.models import Strategy

from .golden_record import summary

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "root").is_dir())
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def audit_case(case: str) -> dict:
    base = GOLDEN / case
    strategy = load(base / "strategy.yaml")[0] if (base / "strategy.yaml").exists() else Strategy()
    facts = inventory.collect(base / "root", live=False)
    ext = assemble.External(GuestView(False, "golden test"), None, "golden test", None, "golden test")
    return assemble.build(facts, strategy, ext, now=NOW)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    got = summary(audit_case(case))
    expected_file = GOLDEN / case / "expected.json"
    if os.environ.get("PVEGUARD_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(expected_file.read_text())
    for section in ("packages", "services"):
        diff = {k: (expected[section].get(k), got[section].get(k))
                for k in set(expected[section]) | set(got[section])
                if expected[section].get(k) != got[section].get(k)}
        assert not diff, f"{case} {section} differ (expected, got): {diff}"
    assert got == expected


def test_cases_exist() -> None:
    assert {"debian-nginx", "pve-fake", "pve-alternatives"} <= set(CASES)


def systemctl_states(root: Path) -> dict[str, str]:
    """`systemctl --root=ROOT list-unit-files`: systemd's own reading of the unit files and links."""
    import subprocess

    proc = subprocess.run(["systemctl", f"--root={root}", "list-unit-files", "--no-legend", "--no-pager"],
                          capture_output=True, text=True, check=True)
    return dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)


@pytest.mark.parametrize("case", CASES)
def test_enablement_matches_systemctl(case: str) -> None:
    """Our enablement of every listed unit agrees with systemctl's on enabled, masked and static."""
    import shutil

    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed")
    theirs = systemctl_states(GOLDEN / case / "root")
    ours = {s["unit"]: s["enablement"] for s in audit_case(case)["services"]}
    compared = [u for u in ours if u in theirs]
    assert len(compared) >= len(ours) - 3, set(ours) - set(theirs)  # instances are not unit files
    mismatches = {u: (ours[u], theirs[u]) for u in compared
                  if (ours[u] == "enabled") != (theirs[u] in ("enabled", "enabled-runtime"))
                  or (ours[u] == "masked") != (theirs[u] == "masked")
                  or (ours[u] == "static") != (theirs[u] == "static")}
    assert not mismatches
