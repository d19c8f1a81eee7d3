"""Moving a guarded host from a checkout to the Debian package, with real apt in the guard's chroot.

The prepared root runs the guard from the checkout (read-only mounts under /opt/pveguard). The
first install of the `pveguard` package goes through that guard (the guard's own package), a
look-alike does not, and `guard install` from the package then points the hook at the packaged tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aptchroot import AptChroot, Deb, build_deb

from infra.rootfs import CACHE

pytestmark = [pytest.mark.slow, pytest.mark.root]

BUILD = Path(__file__).resolve().parents[2] / "scripts/build-deb"
VERSION = "0.0.1+selfinstall"


@pytest.fixture(scope="module")
def package() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="pveguard-selfdeb-"))
    try:
        r = subprocess.run(["/usr/bin/python3", str(BUILD), "--version", VERSION, "--out", str(out),
                            "--cache", str(CACHE / "deb")], capture_output=True, text=True, timeout=1800,
                           env={**os.environ, "PVEGUARD_DEB_COMPRESSION": "zstd"})
        assert r.returncode == 0, r.stdout + r.stderr
        yield Path(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_the_guard_lets_its_own_package_in_and_then_runs_from_it(chroot: AptChroot, package: Path) -> None:
    # a look-alike is a non-core package like any other
    with tempfile.TemporaryDirectory() as work:
        fake = build_deb(Deb("pveguard-tools", "1.0"), chroot.path("/tmp"), Path(work))
    r = chroot.apt("install", f"/tmp/{fake.name}")
    assert r.returncode == 100 and "pveguard-tools" in r.stdout + r.stderr, r.stdout + r.stderr

    shutil.copy(package, chroot.path("/tmp"))
    r = chroot.apt("install", f"/tmp/{package.name}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("pveguard") == VERSION
    shown = json.loads(chroot.pveguard("audit-log", "show", "--action", "guard", "--json").stdout)
    decision = [e for e in shown if e["action"] == "guard.decision"][-1]
    item = next(p for p in decision["details"]["packages"] if p["package"] == "pveguard")
    assert (item["verdict"], item["reason"], item["action"]) == ("allow", "pveguard", "install"), item

    # the packaged command takes the hook over; the guard still refuses what it refused
    env = {"PYTHONPATH": ""}
    r = chroot.run(["/usr/bin/pveguard", "guard", "install"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    hook = chroot.path("/usr/local/lib/pveguard/apt-hook").read_text()
    assert hook.startswith("#!/usr/bin/python3 -IS\n") and "'/usr/lib/pveguard/lib'" in hook
    assert "/opt/pveguard" not in hook
    status = json.loads(chroot.run(["/usr/bin/pveguard", "guard", "status", "--json"], env=env).stdout)
    assert status["installed"] and status["intact"], status
    r = chroot.apt("install", f"/tmp/{fake.name}")
    assert r.returncode == 100 and "pveguard-tools" in r.stdout + r.stderr, r.stdout + r.stderr
