"""The Debian package, end to end with real apt and dpkg in a Debian 12 chroot.

scripts/build-deb builds two versions of this checkout; in a throw-away chroot (the cached
debootstrap root of tests/infra/rootfs.py, no apt source at all) the test installs the first with
`apt-get install ./x.deb`, runs it, turns the guard on, upgrades to the second through the guard,
then removes and purges it and compares the file system with the one before the install.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.rootfs import CACHE, extract, have_debootstrap, mounted_chroot, rootfs_tarball

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts/build-deb"
# The guard tests' root (same package set: the cached tarball is shared); its apt-listbugs hook is
# switched off as they do.
ROOTFS_PACKAGES = ["python3", "apt-listbugs"]
V1, V2 = "0.0.1+pkgtest1", "0.0.1+pkgtest2"
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    # /dev is the host's: keep the ledger's head out of the host's syslog (the file anchor stays,
    # append-only where the file system allows it, which purge has to undo).
    "PVEGUARD_LEDGER_ANCHORS": "file",
}
# What apt and dpkg themselves keep about a package that was installed and purged.
BOOKKEEPING = ("var/lib/dpkg/", "var/lib/apt/", "var/cache/apt/", "var/cache/debconf/", "var/log/", "tmp/")


def _skip_reason() -> str | None:
    if not have_debootstrap():
        return "needs root and debootstrap (scripts/debian-packages.txt installs it)"
    for tool in ("dpkg-deb", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "needs Debian's /usr/bin/python3 to build the package"
    minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                           capture_output=True, text=True).stdout.strip()
    if minor != "True":
        return "the package is built for the system python3; the chroot is Debian 12 (python 3.11)"
    return None


@pytest.fixture(scope="session")
def debs() -> Iterator[dict[str, Path]]:
    """Both versions, built once per session. The compiled dependency tree is cached next to the
    debootstrap roots (build-deb --cache, keyed by the requirements and the interpreter), so only the
    first build on a machine runs pip. zstd (which Debian 12's dpkg reads) instead of the default xz:
    0.9 s instead of 35-50 s per build on a loaded 2-CPU machine."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = Path(tempfile.mkdtemp(prefix="pveguard-debs-"))
    try:
        built = {}
        for version in (V1, V2):
            start = time.monotonic()
            r = subprocess.run(["/usr/bin/python3", str(BUILD), "--version", version, "--out", str(out),
                                "--cache", str(CACHE / "deb"), "--timings"], capture_output=True, text=True,
                               timeout=1800, env={**os.environ, "PVEGUARD_DEB_COMPRESSION": "zstd"})
            assert r.returncode == 0, f"build-deb failed:\n{r.stdout}\n{r.stderr}"
            built[version] = Path(r.stdout.strip().splitlines()[-1])
            sys.stderr.write(f"\n{r.stderr}build-deb {version}: {time.monotonic() - start:.1f}s, "
                             f"{built[version].stat().st_size / 1e6:.1f} MB\n")
        yield built
    finally:
        shutil.rmtree(out, ignore_errors=True)


def fake_deb(out: Path, name: str) -> Path:
    tree = out / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "README").write_text("a fake non-core package\n")
    (tree / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: tests <t@invalid>\nDescription: fake\n test\n")
    deb = out / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in ENV.items()), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *argv: str) -> str:
        r = self.run(*argv)
        assert r.returncode == 0, f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def files(self) -> set[str]:
        out = set()
        for base, dirs, names in os.walk(self.root):
            rel = os.path.relpath(base, self.root)
            if rel.split(os.sep)[0] in ("proc", "sys", "dev"):
                dirs[:] = []
                continue
            out.update(os.path.normpath(os.path.join(rel, n)) for n in dirs + names)
        return out


@pytest.fixture
def chroot() -> Iterator[Chroot]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="pveguard-debroot-", dir=os.environ.get("PVEGUARD_TEST_TMP")))
    root = work / "root"
    try:
        extract(rootfs_tarball(ROOTFS_PACKAGES), root)
        listbugs = root / "etc/apt/apt.conf.d/10apt-listbugs"
        if listbugs.exists():
            listbugs.unlink()
        (root / "etc/apt/sources.list").write_text("")  # no source: every package comes from ./file.deb
        for f in (root / "etc/apt/sources.list.d").glob("*"):
            f.unlink()
        with mounted_chroot(root):
            yield Chroot(root)
    finally:
        # a failed test may leave the ledger's append-only anchor behind
        subprocess.run(["chattr", "-R", "-a", str(root / "var/lib/pveguard")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_install_guard_upgrade_through_the_guard_and_purge(debs: dict[str, Path], chroot: Chroot) -> None:
    for deb in debs.values():
        shutil.copy(deb, chroot.path("/tmp"))
    first, second = (f"/tmp/{debs[v].name}" for v in (V1, V2))
    fake = fake_deb(chroot.path("/tmp"), "random-tool")
    before = chroot.files()

    # install from the file, dependencies from the (empty) sources: only the system python3
    chroot.ok("apt-get", "install", "-y", "-q", first)
    assert chroot.ok("dpkg-query", "-W", "-f", "${Status} ${Version}", "pveguard") == f"install ok installed {V1}"
    assert chroot.ok("pveguard", "--version").strip() == f"pveguard {V1}"
    shebang = chroot.path("/usr/bin/pveguard").read_text().splitlines()[0]
    assert shebang == "#!/usr/bin/python3 -I"
    units = chroot.path("/usr/lib/systemd/system")
    assert "/usr/bin/pveguard --strategy /etc/pveguard/strategy.yaml --state-dir /var/lib/pveguard serve" in \
        (units / "pveguard-serve.service").read_text()
    assert "update --scheduled" in (units / "pveguard-update.service").read_text()
    assert "OnCalendar=" in (units / "pveguard-update.timer").read_text()
    for f in ("/usr/lib/systemd/system/pveguard-backup.timer", "/usr/lib/systemd/system/pveguard-backup.service",
              "/usr/share/man/man1/pveguard.1.gz", "/usr/share/bash-completion/completions/pveguard",
              "/usr/share/pveguard/apt/05pveguard"):
        assert chroot.path(f).is_file(), f
    man = gzip.decompress(chroot.path("/usr/share/man/man1/pveguard.1.gz").read_bytes()).decode()
    assert man.startswith(".TH PVEGUARD 1") and f"pveguard {V1}" in man
    assert '.SS "pveguard guard install"' in man and '.SS "pveguard backup install\\-timers"' in man
    assert "backup run --due" in chroot.path("/usr/lib/systemd/system/pveguard-backup.service").read_text()
    assert not list(chroot.path("/etc/systemd/system").rglob("pveguard*")), "units must not be enabled"
    assert not chroot.path("/etc/apt/apt.conf.d/05pveguard").exists(), "the guard is off until guard install"
    assert chroot.ok("dpkg-query", "-W", "-f", "${Conffiles}", "pveguard").split()[0] == "/etc/pveguard/strategy.yaml"
    assert "instance: null" in chroot.path("/etc/pveguard/strategy.yaml").read_text()
    assert chroot.path("/var/lib/pveguard").stat().st_mode & 0o777 == 0o700
    # the completion script answers through the installed command
    r = subprocess.run(["chroot", str(chroot.root), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin",
                        "COMP_WORDS=pveguard gua", "COMP_CWORD=1", "_PVEGUARD_COMPLETE=complete_bash",
                        "/usr/bin/pveguard"], capture_output=True, text=True, timeout=120)
    assert "guard" in r.stdout.split(), r.stdout + r.stderr

    # init pins the identity in the shipped default; check accepts it
    chroot.ok("pveguard", "init")
    strategy = chroot.path("/etc/pveguard/strategy.yaml").read_text()
    assert "instance: null" not in strategy
    assert "ok" in chroot.ok("pveguard", "check")

    # the guard on: a non-core package is refused on the host
    chroot.ok("pveguard", "guard", "install")
    hook = chroot.path("/usr/local/lib/pveguard/apt-hook").read_text()
    assert hook.startswith("#!/usr/bin/python3 -IS\n") and "/usr/lib/pveguard/lib" in hook
    r = chroot.run("apt-get", "install", "-y", "-q", f"/tmp/{fake.name}")
    assert r.returncode != 0 and "random-tool" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not chroot.path("/usr/share/doc/random-tool").exists()

    # pveguard upgrades itself through its own guard
    chroot.ok("apt-get", "install", "-y", "-q", second)
    assert chroot.ok("pveguard", "--version").strip() == f"pveguard {V2}"
    decisions = json.loads(chroot.ok("pveguard", "audit-log", "show", "--action", "guard", "--json"))
    upgrade = [e for e in decisions if e["action"] == "guard.decision"
               and any(p.get("package") == "pveguard" for p in e["details"].get("packages", []))]
    assert upgrade, decisions
    item = next(p for p in upgrade[-1]["details"]["packages"] if p["package"] == "pveguard")
    assert item["verdict"] == "allow" and item["old_version"] == V1 and item["new_version"] == V2, item
    status = json.loads(chroot.ok("pveguard", "guard", "status", "--json"))
    assert status["installed"] and not [f for f in status["findings"] if f["kind"] != "unverified"], status
    assert chroot.path("/etc/pveguard/strategy.yaml").read_text() == strategy, "the admin's conffile is kept"

    # remove takes the guard out of apt (its hook cannot run without pveguard): apt keeps working
    chroot.ok("apt-get", "remove", "-y", "-q", "pveguard")
    assert not chroot.path("/etc/apt/apt.conf.d/05pveguard").exists()
    assert not chroot.path("/usr/local/lib/pveguard/apt-hook").exists(), "guard uninstall ran, not the fallback"
    assert not chroot.path("/usr/lib/pveguard").exists()
    assert chroot.path("/etc/pveguard/strategy.yaml").exists(), "remove keeps the configuration"
    chroot.ok("apt-get", "install", "-y", "-q", f"/tmp/{fake.name}")
    chroot.ok("apt-get", "purge", "-y", "-q", "pveguard")

    r = chroot.run("dpkg", "-L", "pveguard")
    assert r.returncode != 0 and not r.stdout.strip(), r.stdout
    for gone in ("/etc/pveguard", "/usr/lib/pveguard", "/var/lib/pveguard", "/usr/local/lib/pveguard",
                 "/etc/apt/apt.conf.d/05pveguard", "/usr/bin/pveguard", "/usr/share/pveguard"):
        assert not chroot.path(gone).exists(), gone
    left = {p for p in chroot.files() - before
            if not p.startswith(BOOKKEEPING) and "random-tool" not in p}
    assert not left, f"left behind after purge: {sorted(left)}"
