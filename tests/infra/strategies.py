"""Strategy files for tests that want the built-in defaults.

A strategy named with --strategy / PVEGUARD_STRATEGY must exist (a missing one is an error, not
the defaults), and the default path /etc/pveguard/strategy.yaml belongs to this machine. Tests
that mean "the defaults" point at this file, written once per test run from what `init` writes.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def defaults_file() -> str:
    """The path of a file holding the default strategy; removed when the test run ends."""
    from pveguard.strategy.defaults import render

    directory = Path(tempfile.mkdtemp(prefix="pveguard-test-strategy-"))
    atexit.register(shutil.rmtree, directory, True)
    directory.chmod(0o755)  # tests also run pveguard as an unprivileged user
    path = directory / "strategy.yaml"
    path.write_text(render(), encoding="utf-8")
    path.chmod(0o644)
    return str(path)
