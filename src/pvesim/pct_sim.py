"""What the fake `pct` does inside the sim (exec/push/pull); filled in below."""

from __future__ import annotations

from typing import Any

from pvesim.state import Sim


def control(sim: Sim, method: str, rest: list[str], doc: dict[str, Any], q: dict[str, str]) -> Any:
    """Control-API entry for /_sim/pct/..."""
    raise KeyError("pct emulation not available yet")
