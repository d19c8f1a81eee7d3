"""Core or non-core: the one classification the apt guard and the host audit share.

Rules, in priority order (docs/guard.md "The rules", docs/audit.md "Classification"):
1. the installed Depends/Pre-Depends closure of the core roots (default `proxmox-ve`), alternatives
   and Provides resolved against what dpkg says is installed, Recommends ignored;
2. the `pveversion -v` always-list, PVE/Proxmox kernels and the boot chain;
3. `Essential: yes` and `Priority: required` packages;
4. the strategy's extra allowed packages;
5. core-optional: the `pveversion -v` optional list (allowed, and its removal is guarded);
6. everything else is non-core.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping

from pveguard.packages.status import Package
from pveguard.records import record

PVEVERSION_ALWAYS = frozenset("""
proxmox-ve pve-manager ceph-fuse corosync glusterfs-client libjs-extjs libknet1 libproxmox-acme-perl
libproxmox-backup-qemu0 libproxmox-rs-perl libpve-access-control libpve-cluster-api-perl libpve-cluster-perl
libpve-common-perl libpve-guest-common-perl libpve-http-server-perl libpve-notify-perl libpve-rs-perl
libpve-storage-perl libqb0 libspice-server1 lvm2 lxc-pve lxcfs novnc-pve proxmox-backup-client
proxmox-backup-restore-image proxmox-mail-forward proxmox-mini-journalreader proxmox-widget-toolkit pve-cluster
pve-container pve-docs pve-edk2-firmware pve-firewall pve-firmware pve-ha-manager pve-i18n pve-qemu-kvm
pve-xtermjs qemu-server smartmontools spiceterm swtpm vncterm
""".split())

PVEVERSION_OPTIONAL = frozenset("""
amd64-microcode ceph criu dnsmasq frr-pythontools gfs2-utils ifupdown ifupdown2 intel-microcode
ksm-control-daemon ksmtuned libpve-apiclient-perl libpve-network-perl openvswitch-switch
proxmox-backup-file-restore proxmox-firewall proxmox-kernel-helper proxmox-offline-mirror-helper
pve-esxi-import-tools pve-zsync zfsutils-linux
""".split())

KERNEL_PATTERNS = ("proxmox-kernel-*", "pve-kernel-*", "proxmox-default-kernel", "pve-headers-*",
                   "proxmox-headers-*")
BOOT_CHAIN = frozenset({"grub-pc", "grub-efi-amd64", "grub-efi-amd64-signed", "grub-common", "grub2-common",
                        "shim-signed", "systemd-boot", "efibootmgr", "proxmox-kernel-helper"})



def name_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """`lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)`, with the plain forms --
    an exact name, a prefix followed by one `*` -- checked without fnmatch's regexes: the apt hook
    classifies every installed package this way after each dpkg run, and apt waits for it."""
    exact: set[str] = set()
    prefixes: list[str] = []
    other: list[str] = []
    for p in patterns:
        body = p[:-1] if p.endswith("*") else p
        if any(c in body for c in "*?["):
            other.append(p)
        elif p.endswith("*"):
            prefixes.append(body)
        else:
            exact.add(p)
    starts = tuple(prefixes)

    def match(name: str) -> bool:
        return name in exact or name.startswith(starts) or any(fnmatch.fnmatchcase(name, p) for p in other)

    return match


_is_kernel = name_matcher(KERNEL_PATTERNS)

# Units that must never be stopped or moved, whatever owns them.
NEVER_STOP_UNITS = ("pve-cluster", "corosync", "pvedaemon", "pveproxy", "pvestatd", "pvescheduler", "pve-ha-lrm",
                    "pve-ha-crm", "watchdog-mux", "pve-firewall", "qmeventd", "lxcfs", "pve-lxc-syscalld",
                    "rrdcached", "spiceproxy", "ssh", "sshd", "chrony", "pve-guests", "pve-container@*")

TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:
    from typing import Literal

    Reason = Literal["closure", "pveversion", "kernel", "boot", "essential", "required", "extra", "optional",
                     "non-core"]


@record(frozen=True)
class Verdict:
    core: bool
    reason: Reason
    detail: str = ""

    @property
    def optional(self) -> bool:
        return self.reason == "optional"


REASON_TEXT: dict[str, str] = {
    "closure": "in the dependency closure of the core roots",
    "pveversion": "listed by 'pveversion -v'",
    "kernel": "a Proxmox kernel package",
    "boot": "part of the boot chain",
    "essential": "Essential: yes",
    "required": "Priority: required",
    "extra": "allowed by the strategy (installation_policy.extra_allowed)",
    "optional": "optional PVE component ('pveversion -v' optional list)",
    "non-core": "not a core PVE package",
}


def providers(packages: Mapping[str, Package]) -> dict[str, list[str]]:
    """Virtual name -> installed packages that provide it."""
    out: dict[str, list[str]] = {}
    for pkg in packages.values():
        if pkg.installed:
            for virtual in pkg.provides():
                out.setdefault(virtual, []).append(pkg.name)
    return out


def closure(roots: Iterable[str], packages: Mapping[str, Package],
            lookups: set[str] | None = None) -> dict[str, str]:
    """Installed packages reachable from `roots` by Depends/Pre-Depends -> the package that pulled each in.

    An alternative group is satisfied by the first alternative that is installed (directly or through
    Provides); only that one joins the closure, as only it is what the root actually uses here.
    `lookups`: gets every name the walk looked up (each member's every alternative), for the apt hook's
    core index, which must redo the walk when one of them changes.
    """
    provided = providers(packages)
    via: dict[str, str] = {}
    stack: list[tuple[str, str]] = []
    for root in roots:
        for name in _resolve(root, packages, provided):
            stack.append((name, root))
    while stack:
        name, parent = stack.pop()
        if name in via:
            continue
        via[name] = parent
        pkg = packages.get(name)
        if pkg is None:
            continue
        for group in pkg.depends():
            if lookups is not None:
                lookups.update(group)
            for alt in group:
                resolved = _resolve(alt, packages, provided)
                if resolved:
                    stack.extend((r, name) for r in resolved if r not in via)
                    break
    return via


def _resolve(name: str, packages: Mapping[str, Package], provided: Mapping[str, list[str]]) -> list[str]:
    pkg = packages.get(name)
    if pkg is not None and pkg.installed:
        return [name]
    return list(provided.get(name, []))


@record
class Classifier:
    """Classifies package names against one dpkg status snapshot."""

    packages: Mapping[str, Package]
    core_roots: tuple[str, ...] = ("proxmox-ve",)
    extra_allowed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.lookups = set(self.core_roots)  # the roots and every name the closure walk looked up
        self.closure = closure(self.core_roots, self.packages, self.lookups)

    def classify(self, name: str, pkg: Package | None = None) -> Verdict:
        """The verdict for `name`; `pkg` supplies fields for a package not yet installed."""
        pkg = pkg or self.packages.get(name)
        if name in self.closure:
            parent = self.closure[name]
            return Verdict(True, "closure", "a core root" if parent == name else f"via {parent}")
        return static_verdict(name, pkg, self.core_roots, self.extra_allowed)

    def core_set(self) -> set[str]:
        """Names of installed packages that are core (any reason)."""
        return {n for n, p in self.packages.items() if p.installed and self.classify(n, p).core}


def static_verdict(name: str, pkg: Package | None, core_roots: Iterable[str] = ("proxmox-ve",),
                   extra_allowed: Iterable[str] = ()) -> Verdict:
    """Every rule except the installed closure: for packages not installed yet (e.g. a .deb in an
    apt transaction, whose control fields `pkg` carries) and as the tail of `Classifier.classify`.

    A core root is core even before it is installed (installing `proxmox-ve` on a fresh Debian).
    """
    if name in core_roots:
        return Verdict(True, "closure", "a core root")
    if name in PVEVERSION_ALWAYS:
        return Verdict(True, "pveversion")
    if _is_kernel(name):
        return Verdict(True, "kernel")
    if name in BOOT_CHAIN:
        return Verdict(True, "boot")
    if pkg is not None and pkg.essential:
        return Verdict(True, "essential")
    if pkg is not None and pkg.priority == "required":
        return Verdict(True, "required")
    if any(fnmatch.fnmatchcase(name, p) for p in extra_allowed):
        return Verdict(True, "extra")
    if name in PVEVERSION_OPTIONAL:
        return Verdict(True, "optional")
    return Verdict(False, "non-core")


def is_never_stop_unit(unit: str) -> bool:
    base = unit.removesuffix(".service")
    return any(fnmatch.fnmatchcase(base, p) for p in NEVER_STOP_UNITS)
