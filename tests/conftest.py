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
    parser.addoption("--pvesim-only", action="store_true", default=False,
                     help="run only the tests that talk to pvesim (its fixtures, or a module that starts one)")


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    if not config.getoption("--pvesim-only"):
        return
    texts: dict[str, bool] = {}

    def starts_pvesim(path: str) -> bool:
        if path not in texts:
            texts[path] = "pvesim" in Path(path).read_text(encoding="utf-8", errors="replace")
        return texts[path]

    keep, drop = [], []
    for item in items:
        uses = {"pvesim", "pvesim_factory"} & set(getattr(item, "fixturenames", ()))
        (keep if uses or starts_pvesim(str(item.fspath)) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_configure(config):  # type: ignore[no-untyped-def]
    version = config.getoption("--pve-version")
    if version:
        os.environ["PVESIM_PVE_VERSION"] = version


def pytest_report_header(config):  # type: ignore[no-untyped-def]
    return f"pvesim emulates PVE {os.environ.get('PVESIM_PVE_VERSION') or '8.4'}"
