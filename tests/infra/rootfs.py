"""Debian 12 root filesystems for tests, built once with debootstrap and cached as tarballs.

Several test areas need a real Debian root (the apt guard's chroot, the audit's systemd host, the
LXC backend's containers). Building one takes minutes, so each distinct package set is built once
per machine into `$PVEGUARD_TEST_CACHE` (default /var/cache/pveguard-tests) under a file lock, and
every test extracts its own throwaway copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pveguard.aptsources import debian_mirror

CACHE = Path(os.environ.get("PVEGUARD_TEST_CACHE", "/var/cache/pveguard-tests"))
SUITE = "bookworm"


def have_debootstrap() -> bool:
    return os.geteuid() == 0 and shutil.which("debootstrap") is not None


def rootfs_tarball(include: list[str] | tuple[str, ...] = (), variant: str = "minbase") -> Path:
    """Path of a cached tarball of a Debian 12 root with `include` packages (built on first use)."""
    key = hashlib.sha256(f"{SUITE}|{variant}|{','.join(sorted(include))}".encode()).hexdigest()[:12]
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"{SUITE}-{variant}-{key}.tar"
    with open(CACHE / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        build = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
        build.chmod(0o755)  # mkdtemp's 0700 would become the root directory's mode
        try:
            argv = ["debootstrap", f"--variant={variant}"]
            if include:
                argv.append("--include=" + ",".join(include))
            argv += [SUITE, str(build), debian_mirror(SUITE)]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                )
            # Drop downloaded .debs: they are not part of a root and double the size.
            for deb in (build / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            tmp = target.with_suffix(".tmp")
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(build), "-cf", str(tmp), "."],
                           check=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return target


def extract(tarball: Path, dest: Path) -> Path:
    """Unpack a cached root into `dest` (which must be empty or absent)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(dest), "-xf", str(tarball)], check=True)
    # Tarballs cached before the fix above carry a 0700 root; services running as their own user
    # could not even reach their files.
    dest.chmod(0o755)
    return dest


@contextmanager
def mounted_chroot(root: Path) -> Iterator[Path]:
    """Bind /proc, /sys and /dev into a chroot for the duration; always unmounted after."""
    mounts: list[Path] = []
    try:
        for src, fstype in (("proc", "proc"), ("sys", "sysfs")):
            mp = root / src
            mp.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", fstype, fstype, str(mp)], check=True)
            mounts.append(mp)
        dev = root / "dev"
        dev.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", "/dev", str(dev)], check=True)
        mounts.append(dev)
        yield root
    finally:
        for mp in reversed(mounts):
            subprocess.run(["umount", "-l", str(mp)], check=False)


__all__ = ["CACHE", "extract", "have_debootstrap", "mounted_chroot", "rootfs_tarball"]
