import sys
from pathlib import Path

# tests/infra is shared test machinery (debootstrap roots, chroots); make `infra` importable.
sys.path.insert(0, str(Path(__file__).parent))
