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
