"""A suggestion never removes what the host's own role needs: on a Debian host without PVE that
runs the lxc backend, `lxc` (the backend's own tool), `dbus` and `systemd-timesyncd` (what systemd
recommends) are host role, not non-core services to purge.

The fixture is the recorded plain Debian 12 root (golden/debian-nginx) with lxc, dbus and
systemd-timesyncd installed into it as dpkg would: status paragraphs with Debian 12's relations,
file lists, unit files and the enablement symlinks their postinst scripts make.
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pveguard.audit import assemble, inventory, suggest
from pveguard.audit.findings import GuestView
from pveguard.packages.status import parse_status
from pveguard.strategy.models import Strategy

BASE = Path(__file__).parent / "golden/debian-nginx/root"

# name -> (status fields, {unit file: WantedBy target or None for a static unit})
PACKAGES: dict[str, tuple[str, dict[str, str | None]]] = {
    "dbus": ("Priority: standard\nVersion: 1.14.10-1~deb12u1\n"
             "Provides: dbus-system-bus (= 1.14.10-1~deb12u1), default-dbus-system-bus\n"
             "Depends: dbus-bin (= 1.14.10-1~deb12u1), dbus-daemon (= 1.14.10-1~deb12u1), "
             "dbus-system-bus-common (>= 1.14.10-1~deb12u1), libc6 (>= 2.34)",
             {"dbus.service": None}),
    "dbus-bin": ("Priority: optional\nVersion: 1.14.10-1~deb12u1\nDepends: libc6 (>= 2.34)", {}),
    "dbus-daemon": ("Priority: optional\nVersion: 1.14.10-1~deb12u1\nDepends: libc6 (>= 2.34)", {}),
    "dbus-system-bus-common": ("Priority: optional\nVersion: 1.14.10-1~deb12u1\nDepends: adduser",
                               {"dbus.socket": "sockets.target"}),
    "systemd-timesyncd": ("Priority: standard\nVersion: 252.39-1~deb12u2\n"
                          "Depends: libc6 (>= 2.34), libsystemd-shared (= 252.39-1~deb12u2), systemd",
                          {"systemd-timesyncd.service": "sysinit.target"}),
    "lxc": ("Priority: optional\nVersion: 1:5.0.2-1+deb12u2\n"
            "Depends: iproute2, liblxc1 (>= 1:3.0.2), libc6 (>= 2.36), nftables | iptables\n"
            "Recommends: apparmor, debootstrap, lxc-templates, lxcfs, uidmap, wget",
            {"lxc.service": "multi-user.target", "lxc-net.service": "multi-user.target",
             "lxc-monitord.service": "multi-user.target"}),
    "liblxc1": ("Priority: optional\nVersion: 1:5.0.2-1+deb12u2\nDepends: libc6 (>= 2.36)", {}),
    "lxcfs": ("Priority: optional\nVersion: 5.0.3-1\nDepends: libc6 (>= 2.34), libfuse3-3",
              {"lxcfs.service": "multi-user.target"}),
}
ROLE = ("lxc", "lxcfs", "dbus", "dbus-system-bus-common", "systemd-timesyncd")


def _install(root: Path) -> None:
    status = root / "var/lib/dpkg/status"
    paragraphs = []
    for name, (fields, units) in PACKAGES.items():
        paragraphs.append(f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\n{fields}\n"
                          f"Description: {name} (host role test)\n")
        files = []
        for unit, wanted_by in units.items():
            path = f"/usr/lib/systemd/system/{unit}"
            install = f"\n[Install]\nWantedBy={wanted_by}\n" if wanted_by else ""
            (root / path.lstrip("/")).write_text(f"[Unit]\nDescription={unit}\n[Service]\nExecStart=/usr/bin/{name}\n"
                                                 + install)
            files.append(path)
            if wanted_by:
                wants = root / "etc/systemd/system" / f"{wanted_by}.wants"
                wants.mkdir(parents=True, exist_ok=True)
                (wants / unit).symlink_to(path)
        (root / f"var/lib/dpkg/info/{name}.list").write_text("\n".join(["/.", *files]) + "\n")
    status.write_text(status.read_text().rstrip("\n") + "\n\n" + "\n".join(paragraphs))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("hostrole") / "root"
    shutil.copytree(BASE, dest, symlinks=True)
    _install(dest)
    return dest


def audit(root: Path, backend: str = "auto") -> dict[str, Any]:
    strategy = Strategy.model_validate({"target": {"backend": backend}})
    facts = inventory.collect(root, live=False)
    ext = assemble.External(GuestView(False, "test"), None, "test", None, "test")
    return assemble.build(facts, strategy, ext, now=datetime(2026, 1, 1, tzinfo=UTC))


def removal_advice(doc: dict[str, Any]) -> str:
    """Every place the report tells the admin to take something off the host."""
    return "\n".join(f["fix"] + "\n" + f["detail"] for f in doc["findings"]) + "\n" + \
        " ".join(doc["packages"]["manual_non_core"])


def test_lxc_backend_host_keeps_lxc_dbus_and_timesyncd(root: Path) -> None:
    doc = audit(root)
    assert not doc["host"]["pve"]["detected"]
    advice = removal_advice(doc)
    for name in ("purge lxc", "lxc.service", "lxcfs", "dbus", "systemd-timesyncd"):
        assert name not in advice, f"{name!r} is advised for removal:\n{advice}"
    units = {s["unit"]: s for s in doc["services"]}
    assert units["lxc.service"]["core"] and "needed by the lxc backend" in units["lxc.service"]["detail"]
    assert units["systemd-timesyncd.service"]["core"]
    assert "recommended by systemd" in units["systemd-timesyncd.service"]["detail"]
    assert units["dbus.service"]["core"] and "recommended by systemd" in units["dbus.service"]["detail"]
    assert units["dbus.socket"]["core"]
    # the mechanism is about the role, not a list of harmless names: nginx is still to be moved
    assert any(f["id"] == "non-core-service:nginx-common" for f in doc["findings"])
    packages = {p["name"]: p for p in doc["packages"]["items"]}
    assert all(packages[n]["core"] for n in ROLE)
    assert packages["liblxc1"]["detail"] == "host role, needed by lxc"
    assert doc["host"]["backend"] == "lxc"


def test_a_host_that_does_not_run_the_lxc_backend_may_drop_lxc(root: Path) -> None:
    """With the proxmox backend (this host only talks to a PVE API), lxc is not this host's role;
    what systemd recommends still is."""
    doc = audit(root, backend="proxmox")
    assert doc["host"]["backend"] == "proxmox"
    assert any(f["id"] == "non-core-service:lxc" and "apt-get purge lxc" in f["fix"] for f in doc["findings"])
    units = {s["unit"]: s for s in doc["services"]}
    assert units["systemd-timesyncd.service"]["core"] and units["dbus.service"]["core"]


STATUS = textwrap.dedent("""\
    Package: systemd
    Status: install ok installed
    Priority: important
    Recommends: default-dbus-system-bus | dbus-system-bus, systemd-timesyncd | time-daemon

    Package: dbus
    Status: install ok installed
    Priority: standard
    Provides: dbus-system-bus, default-dbus-system-bus
    Depends: libdbus-1-3

    Package: libdbus-1-3
    Status: install ok installed
    Priority: optional

    Package: chrony
    Status: install ok installed
    Priority: optional
    Provides: time-daemon

    Package: systemd-timesyncd
    Status: deinstall ok config-files
    Priority: standard

    Package: grafana
    Status: install ok installed
    Priority: optional
    Recommends: dbus
    """)


def test_host_role_follows_depends_recommends_and_alternatives() -> None:
    packages = parse_status(STATUS)
    role = suggest.host_role(packages, None)
    assert role["systemd"] == "Debian base system (Priority: important)"
    assert role["dbus"] == "recommended by systemd"            # through Provides: default-dbus-system-bus
    assert role["libdbus-1-3"] == "needed by dbus"
    assert role["chrony"] == "recommended by systemd"          # time-daemon: the installed alternative
    assert "systemd-timesyncd" not in role and "grafana" not in role   # removed; a leaf the role never asks for


@pytest.mark.parametrize(("configured", "pve", "installed", "expected"), [
    ("auto", True, ["lxc"], "proxmox"),
    ("auto", False, ["lxc"], "lxc"),
    ("auto", False, [], None),
    ("proxmox", False, ["lxc"], "proxmox"),
    ("lxc", True, [], "lxc"),
])
def test_role_backend_follows_the_auto_rule(configured: str, pve: bool, installed: list[str],
                                            expected: str | None) -> None:
    assert suggest.role_backend(configured, pve, installed) == expected
