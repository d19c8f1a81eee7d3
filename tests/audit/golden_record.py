"""Record a root filesystem's audit inputs as a small golden fixture, and summarise an audit.

`record(root, dest)` copies what the classifier reads: dpkg status, apt extended_states, the dpkg
file lists (only their /etc, /lib/systemd, /usr/lib/systemd, /var lines), unit files and
enablement links. `summary(doc)` is the compact form compared against `expected.json`.

Re-record (needs root, debootstrap): python -m tests.audit.golden_record  (see docs/audit.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

KEEP_PREFIXES = ("/etc/", "/lib/systemd/system/", "/usr/lib/systemd/system/", "/var/", "/srv/", "/opt/")
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system")


def record(root: Path, dest: Path) -> None:
    """Copy the classifier's inputs from `root` into `dest` (replacing it)."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in ("var/lib/dpkg/status", "var/lib/apt/extended_states", "etc/passwd", "etc/hostname"):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    info = dest / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    for lst in sorted((root / "var/lib/dpkg/info").glob("*.list")):
        lines = [line for line in lst.read_text().splitlines() if line.startswith(KEEP_PREFIXES)]
        if lines:
            (info / lst.name).write_text("\n".join(lines) + "\n")
    for rel in UNIT_DIRS:
        src_dir = root / rel
        for dirpath, dirnames, filenames in os.walk(src_dir):
            d = Path(dirpath)
            out = dest / rel / d.relative_to(src_dir)
            out.mkdir(parents=True, exist_ok=True)
            for name in filenames + [n for n in dirnames if (d / n).is_symlink()]:
                src = d / name
                if src.is_symlink():
                    os.symlink(os.readlink(src), out / name)
                elif name.endswith((".service", ".timer", ".socket", ".target", ".conf")):
                    shutil.copyfile(src, out / name)
    for rel in ("etc/cron.d", "etc/cron.daily"):
        if (root / rel).is_dir():
            shutil.copytree(root / rel, dest / rel, symlinks=True)
    if (root / "etc/crontab").is_file():
        shutil.copyfile(root / "etc/crontab", dest / "etc/crontab")


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The classification part of an audit document in a diff-friendly form."""
    return {
        "pve_detected": doc["host"]["pve"]["detected"],
        "packages": {p["name"]: f"{'core' if p['core'] else 'non-core'}:{p['reason']}"
                     for p in doc["packages"]["items"]},
        "services": {
            s["unit"]: " ".join([
                "core" if s["core"] else "non-core", s["reason"], s["enablement"],
                f"-> {s['suggestion']['container']} {s['suggestion']['confidence']:.2f}" if s["suggestion"] else "",
            ]).strip()
            for s in doc["services"]
        },
        "findings": sorted(f"{f['severity']} {f['id']}" for f in doc["findings"]),
        "score": doc["score"]["value"],
    }


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import subprocess
    import sys
    import tempfile

    sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parents[1] / "infra")]
    from audit import fakehost
    from infra.rootfs import extract, mounted_chroot, rootfs_tarball

    golden = Path(__file__).parent / "golden"
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = extract(rootfs_tarball(fakehost.INCLUDE), Path(tmp) / "rootfs")
        record(root, golden / "debian-nginx" / "root")
        debs = root / "tmp/debs"
        debs.mkdir(parents=True)
        for deb in fakehost.packages():
            fakehost.build_deb(deb, debs)
        with mounted_chroot(root):
            subprocess.run(["chroot", str(root), "sh", "-c", "dpkg -i /tmp/debs/*.deb"], check=True,
                           capture_output=True)
        fakehost.install_local_extras(root)
        record(root, golden / "pve-fake" / "root")
    print(f"recorded into {golden}; now run the golden tests with PVEGUARD_UPDATE_GOLDEN=1 and review the diff")
