"""pveguard run in-process, as the console script runs it: (exit code, stdout, stderr)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def run_cli(argv: list[str], capsys: Any, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run `pveguard argv` in this process with `env` added to the environment for the call only."""
    from pveguard.cli import main

    capsys.readouterr()
    env = env or {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out, err = capsys.readouterr()
    return code, out, err
