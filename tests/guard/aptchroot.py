"""A Debian 12 chroot with real apt and dpkg, a local repository of fake PVE packages, and pveguard.

* The Debian root comes from tests/infra/rootfs.py (debootstrap once per machine, cached tarball),
  with python3 (pveguard runs inside the chroot) and apt-listbugs (the benchmark's peer hook).
* The repository is built with dpkg-deb: a fake `proxmox-ve` meta-package with a realistic Depends
  tree (pve-manager, qemu-server, pve-container, lxc-pve, ...) and non-core packages with their
  own dependencies, served as a flat `file:` source. The chroot has no other apt source.
* pveguard is not installed into the chroot: this checkout's `src` and the test venv's
  site-packages are bind-mounted read-only under /opt/pveguard (Debian 12's python3 is 3.11, like
  the venv), so the code under test is exactly the working tree.
* A prepared root (repository, base packages, guard installed) is built once per test session;
  each test gets a throw-away overlayfs on top of it. Every mount is undone even on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.rootfs import extract, have_debootstrap, rootfs_tarball

SRC = Path(__file__).resolve().parents[2] / "src"
SITE = Path(sysconfig.get_paths()["purelib"])
ROOTFS_PACKAGES = ["python3", "apt-listbugs"]
LISTBUGS_CONF = "etc/apt/apt.conf.d/10apt-listbugs"
LISTBUGS_OFF = "etc/apt/10apt-listbugs.disabled"
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "PYTHONPATH": "/opt/pveguard/src:/opt/pveguard/site",
    "PYTHONDONTWRITEBYTECODE": "1",
    # As in tests/conftest.py: the ledger's anchor file stays removable (no chattr +a) in the
    # cached root filesystems, and no ledger head goes to a log daemon.
    "PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY": "0",
    "PVEGUARD_LEDGER_ANCHORS": "file",
}


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    depends: str = ""
    recommends: str = ""
    provides: str = ""
    priority: str = "optional"
    arch: str = "all"

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.split(':')[-1]}_{self.arch}.deb"  # no epoch, as Debian does


def _leaves(names: str, version: str = "1.0") -> list[Deb]:
    return [Deb(n, version) for n in names.split()]


# The tree follows the real PVE 8 Depends (their debian/control files), trimmed to what the rules need.
CORE = [
    Deb("proxmox-ve", "8.0", "pve-manager (>= 8.0), qemu-server, pve-container, proxmox-default-kernel, "
        "proxmox-kernel-helper", provides="proxmox-virtual-environment"),
    Deb("pve-manager", "8.0", "pve-cluster, pve-container, qemu-server, libpve-storage-perl, pve-firewall, "
        "pve-ha-manager, postfix | mail-transport-agent, pve-i18n"),
    # The upgrade brings two new dependencies that are not core by name.
    Deb("pve-manager", "8.1", "pve-cluster, pve-container, qemu-server, libpve-storage-perl, pve-firewall, "
        "pve-ha-manager, postfix | mail-transport-agent, pve-i18n, proxmox-termproxy, libjs-qrcodejs (>= 1.2)"),
    Deb("qemu-server", "8.0", "pve-qemu-kvm, pve-firewall, pve-ha-manager, socat, libpve-storage-perl"),
    Deb("pve-container", "5.0", "lxc-pve, pve-cluster, libpve-storage-perl, pve-lxc-syscalld"),
    # Debian's libtirpc3 Breaks nfs-common (<< 1:1.2.8-7): give the fake a real-looking epoch.
    Deb("nfs-common", "1:2.6.2-4"),
    Deb("lxc-pve", "6.0", "lxcfs, bridge-utils, uidmap", provides="lxc, liblxc1"),
    Deb("libpve-storage-perl", "8.0", "smartmontools, lvm2, ceph-common, nfs-common"),
    Deb("pve-cluster", "8.0", "corosync, rrdcached"),
    Deb("pve-firewall", "5.0", "ipset"),
    Deb("proxmox-default-kernel", "1.1", "proxmox-kernel-6.8"),
    Deb("proxmox-kernel-6.8", "6.8.12-1", "proxmox-kernel-6.8.12-1-pve-signed"),
    Deb("proxmox-kernel-6.8.12-1-pve-signed", "6.8.12-1"),
    Deb("postfix", "3.7.11", provides="mail-transport-agent"),
    # A core package (pveversion's optional list) that is not installed yet, with a new dependency.
    Deb("pve-zsync", "2.3", "libnet-openssh-perl"),
    *_leaves("pve-ha-manager pve-qemu-kvm lxcfs pve-i18n corosync rrdcached smartmontools lvm2 ceph-common "
             "socat bridge-utils uidmap ipset pve-lxc-syscalld proxmox-kernel-helper proxmox-termproxy "
             "libnet-openssh-perl"),
    Deb("libjs-qrcodejs", "1.2"),
]
NONCORE = [
    Deb("grafana", "10.0", "grafana-data, libc6"),
    Deb("grafana", "10.1", "grafana-data, libc6"),
    Deb("grafana-data", "1.0"),
    Deb("random-tool", "1.0"),
    Deb("random-tool", "1.1", "random-lib"),  # an upgrade of a non-core package with a new dependency
    Deb("random-lib", "1.0"),
    Deb("htop", "3.2"),
    Deb("prometheus-node-exporter", "1.5"),
]
BASE_INSTALL = ["proxmox-ve=8.0", "pve-manager=8.0", "random-tool=1.0"]


def bulk_debs(count: int, version: str) -> list[Deb]:
    """`count` small packages for the 300-package benchmark transaction."""
    return [Deb(f"bulk-{i:03d}", version) for i in range(count)]


def build_deb(deb: Deb, outdir: Path, work: Path) -> Path:
    tree = work / f"{deb.name}-{deb.version}"
    (tree / "DEBIAN").mkdir(parents=True)
    doc = tree / "usr/share/doc" / deb.name
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{deb.name} {deb.version}: a fake package for pveguard's guard tests\n")
    control = [f"Package: {deb.name}", f"Version: {deb.version}", f"Architecture: {deb.arch}",
               "Maintainer: pveguard tests <tests@invalid>", f"Priority: {deb.priority}", "Section: misc"]
    for key, value in (("Depends", deb.depends), ("Recommends", deb.recommends), ("Provides", deb.provides)):
        if value:
            control.append(f"{key}: {value}")
    control.append(f"Description: fake {deb.name}\n test package")
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    out = outdir / deb.filename
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def build_repo(repo: Path, debs: list[Deb]) -> None:
    """A flat apt repository (`deb [trusted=yes] file:/srv/repo ./`)."""
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for deb in debs:
            build_deb(deb, repo, Path(work))
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)


class MountStack:
    """Mounts made in order, undone in reverse, whatever happens."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, *args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self.points.append(target)

    def bind_ro(self, source: Path, target: Path) -> None:
        self.mount("--bind", str(source), target=target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)

    def close(self) -> None:
        errors = []
        for mp in reversed(self.points):
            r = subprocess.run(["umount", str(mp)], capture_output=True, text=True)
            if r.returncode != 0:
                r = subprocess.run(["umount", "-l", str(mp)], capture_output=True, text=True)
                if r.returncode != 0:
                    errors.append(f"{mp}: {r.stderr.strip()}")
        self.points.clear()
        if errors:
            raise RuntimeError("could not unmount: " + "; ".join(errors))


class AptChroot:
    """Run commands in a prepared chroot."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**CHROOT_ENV, **(env or {})}
        cmd = ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def apt(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(["apt-get", "-y", "-q", *args], env=env)

    def pveguard(self, *args: str, env: dict[str, str] | None = None,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(["python3", "-m", "pveguard", *args], env=env, input=input)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def status_sha(self) -> str:
        return hashlib.sha256(self.path("/var/lib/dpkg/status").read_bytes()).hexdigest()

    def version(self, package: str) -> str | None:
        r = self.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", package])
        if r.returncode != 0:
            return None
        status, _, version = r.stdout.partition("\t")
        return version if status.endswith(" installed") else None


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[AptChroot]:
    """proc/sys/dev plus the read-only pveguard code inside `root`; unmounted on exit."""
    stack = MountStack()
    try:
        stack.mount("-t", "proc", "proc", target=root / "proc")
        stack.mount("-t", "sysfs", "sysfs", target=root / "sys")
        stack.mount("--bind", "/dev", target=root / "dev")
        stack.bind_ro(SRC, root / "opt/pveguard/src")
        stack.bind_ro(SITE, root / "opt/pveguard/site")
        yield AptChroot(root)
    finally:
        stack.close()


def skip_reason() -> str | None:
    if not have_debootstrap():
        return "needs root and debootstrap (scripts/debian-packages.txt installs it)"
    for tool in ("dpkg-deb", "dpkg-scanpackages", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def prepare(base: Path, extra: list[Deb] | None = None, extra_install: list[str] | None = None,
            compiled_copy: bool = False) -> Path:
    """Extract the cached Debian root into `base`, add the repository, install the base packages and
    the guard. Returns `base` (nothing stays mounted).

    compiled_copy: the hook runs from a byte-compiled copy of pveguard in /opt/pveguard/lib (as
    after a pip install) instead of the read-only source mount, which has no .pyc files; the
    benchmark uses it so that it measures what a host runs."""
    extract(rootfs_tarball(ROOTFS_PACKAGES), base)
    listbugs = base / LISTBUGS_CONF
    if listbugs.exists():  # the benchmark switches it back on in its own overlay
        listbugs.rename(base / LISTBUGS_OFF)
    build_repo(base / "srv/repo", CORE + NONCORE + (extra or []))
    (base / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/srv/repo ./\n")
    for f in (base / "etc/apt/sources.list.d").glob("*"):
        f.unlink()
    with mounted(base) as ch:
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-remove", *BASE_INSTALL,
                                                   *(extra_install or [])]):
            r = ch.run(argv)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed in the chroot:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        env = None
        if compiled_copy:
            lib = base / "opt/pveguard/lib"
            shutil.copytree(SRC / "pveguard", lib / "pveguard", ignore=shutil.ignore_patterns("__pycache__"))
            r = ch.run(["python3", "-m", "compileall", "-q", "/opt/pveguard/lib"])
            if r.returncode != 0:
                raise RuntimeError(f"compileall failed in the chroot:\n{r.stdout}\n{r.stderr}")
            env = {"PYTHONPATH": "/opt/pveguard/lib:/opt/pveguard/site"}
        r = ch.pveguard("guard", "install", env=env)
        if r.returncode != 0:
            raise RuntimeError(f"pveguard guard install failed in the chroot:\n{r.stdout}\n{r.stderr}")
    return base


@contextlib.contextmanager
def overlay(base: Path) -> Iterator[AptChroot]:
    """A throw-away writable copy of `base` (overlayfs), mounted for one test."""
    work = Path(tempfile.mkdtemp(prefix="guard-ovl-", dir=os.environ.get("PVEGUARD_TEST_TMP")))
    stack = MountStack()
    try:
        upper, wdir, merged = work / "upper", work / "work", work / "merged"
        upper.mkdir()
        wdir.mkdir()
        stack.mount("-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={wdir}",
                    target=merged)
        with mounted(merged) as ch:
            yield ch
    finally:
        try:
            stack.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
