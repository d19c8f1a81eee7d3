"""Where the strategy file is: --strategy, $PVEGUARD_STRATEGY, /etc/pveguard/strategy.yaml.

Kept apart from `pveguard.strategy.load` (which builds the pydantic models) so that resolving the
path costs nothing: shell completion and commands that never read the strategy stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PATH = Path("/etc/pveguard/strategy.yaml")
ENV_VAR = "PVEGUARD_STRATEGY"


def resolve_path(cli_value: str | os.PathLike[str] | None) -> Path:
    """--strategy, then $PVEGUARD_STRATEGY, then /etc/pveguard/strategy.yaml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH
