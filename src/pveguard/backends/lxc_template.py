"""OS templates for the plain-LXC backend: root filesystem tarballs, like PVE's vztmpl.

A template `<name>` is the file `<name>_*.tar.{zst,gz,xz}` or `<name>_*.tar` in the template cache
with the highest Debian version (`backends.vztmpl`: 12.12-1 beats 12.7-1), so PVE's own downloaded
templates (`debian-12-standard_12.7-1_amd64.tar.zst`) can be dropped in. Templates whose name starts
with `debian-12` are built on first use with debootstrap from the host's Debian mirror, once per
machine, under a file lock (parallel creates wait for one build instead of running several).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pveguard.aptsources import debian_mirror
from pveguard.backends import vztmpl
from pveguard.errors import BackendError, BackendUnavailable

SUITE = "bookworm"
# What a small service container needs: an init, networking (static and dhcp), basic tools.
PACKAGES = ("systemd-sysv", "iproute2", "ifupdown", "isc-dhcp-client", "iputils-ping", "netcat-openbsd",
            "procps", "apt", "ca-certificates")
BUILD_VERSION = "12-pveguard1"
SUFFIXES = (".tar.zst", ".tar.gz", ".tar.xz", ".tar")

Progress = Callable[[str], None]


def find(cache: Path, template: str) -> Path | None:
    """The cached tarball for `template` with the highest Debian version, or None."""
    if not cache.is_dir():
        return None
    found = {p.name: p for p in cache.iterdir()
             if p.is_file() and p.name.startswith(f"{template}_") and p.name.endswith(SUFFIXES)}
    best = vztmpl.newest(found)
    return found[best] if best is not None else None


def buildable(template: str) -> bool:
    return template.startswith("debian-12")


def ensure(cache: Path, template: str, progress: Progress | None = None) -> Path:
    """The tarball for `template`, building it with debootstrap when it is a Debian 12 one."""
    existing = find(cache, template)
    if existing is not None:
        return existing
    if not buildable(template):
        raise BackendError(
            f"template {template!r} is not in {cache}",
            hint=f"put a root filesystem tarball named {template}_<version>_amd64.tar.zst there "
                 f"(PVE's vztmpl files work), or use a debian-12 template, which pveguard builds itself")
    if shutil.which("debootstrap") is None:
        raise BackendUnavailable("debootstrap is not installed; it is needed to build the Debian 12 template",
                                 hint="apt-get install debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = find(cache, template)  # built by someone else while we waited
        if existing is not None:
            return existing
        return _build(cache, template, progress)


def _build(cache: Path, template: str, progress: Progress | None) -> Path:
    compress = shutil.which("zstd") is not None
    target = cache / f"{template}_{BUILD_VERSION}_amd64{'.tar.zst' if compress else '.tar.gz'}"
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    build.chmod(0o755)  # mkdtemp's 0700 would become the containers' root directory mode
    try:
        mirror = debian_mirror(SUITE)
        if progress:
            progress(f"building template {template} with debootstrap from {mirror} (once per host)")
        argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(build), mirror]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
            raise BackendError(f"debootstrap failed with exit code {proc.returncode} while building {template}:\n"
                               f"{tail}", hint=f"check that {mirror} is reachable, or set PVEGUARD_DEBIAN_MIRROR")
        _finish_root(build)
        tmp = target.with_name(target.name + ".part")
        argv = ["tar", "--numeric-owner", "--xattrs", "-C", str(build),
                "--zstd" if compress else "--gzip", "-cf", str(tmp), "."]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BackendError(f"packing template {template} failed: {proc.stderr.strip()}")
        os.replace(tmp, target)
        return target
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _finish_root(root: Path) -> None:
    """Make a fresh debootstrap root a template: no package cache, no machine identity."""
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # Every container must get its own machine-id at first boot (systemd fills an empty file).
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() or dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    # Containers have no kernel debug fs; the mount unit only fails and marks the system degraded.
    (root / "etc/systemd/system/sys-kernel-debug.mount").symlink_to("/dev/null")
