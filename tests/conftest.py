import os
import sys
from pathlib import Path

# tests/infra is shared test machinery (debootstrap roots, chroots); make `infra` importable.
sys.path.insert(0, str(Path(__file__).parent))

# Ledgers made by tests write their head only to the anchor file, and not append-only, so the
# host's journal stays clean and pytest can remove its temporary directories. The ledger tests
# that exercise the journal and `chattr +a` turn them back on themselves.
os.environ.setdefault("PVEGUARD_LEDGER_ANCHORS", "file")
os.environ.setdefault("PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY", "0")


# The PVE release pvesim emulates for this run (`--pve-version 9.1`, or PVESIM_PVE_VERSION): every
# pvesim started by a test (fixtures, running(), `python -m pvesim` subprocesses) inherits it. CI runs
# the suite with the default (8.4), then the proxmox-backend tests again with 9.1 (./bootstrap test).
def pytest_addoption(parser):  # type: ignore[no-untyped-def]
    parser.addoption("--pve-version", choices=("8.4", "9.1"), default=None,
                     help="PVE release pvesim emulates (default: $PVESIM_PVE_VERSION, else 8.4)")


def pytest_configure(config):  # type: ignore[no-untyped-def]
    version = config.getoption("--pve-version")
    if version:
        os.environ["PVESIM_PVE_VERSION"] = version


def pytest_report_header(config):  # type: ignore[no-untyped-def]
    return f"pvesim emulates PVE {os.environ.get('PVESIM_PVE_VERSION') or '8.4'}"
