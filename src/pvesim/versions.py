"""What differs between the PVE releases pvesim emulates, as data (the schema file is chosen in schema.py).

Sources: the pve-manager and pve-container debian/changelog and git history (github:proxmox/pve-manager,
github:proxmox/pve-container). The 9.1 schema in ../shared/pve-api/ matches pve-manager 9.1.9 (it has the
backup-job return schema of 9.1.8 and the fresh VNC password of 9.1.9, not the node `architecture` of
9.1.10) and pve-container 6.1.3 (mp[n] `keepattrs` of 6.1.2, no `idmap` of 6.1.6).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """Facts of one emulated PVE release."""

    version: str  # pve-manager package version (GET /version `version`)
    release: str  # x.y (GET /version `release`)
    repoid: str  # pve-manager git revision of that version's "bump version" commit
    pct_version: tuple[int, ...]  # pve-container shipped with it (the fake pct behaves as this)
    kernel: str  # default kernel of the release
    kernel_build: str

    @property
    def major(self) -> int:
        return int(self.release.split(".", 1)[0])

    @property
    def pveversion(self) -> str:
        return f"pve-manager/{self.version}/{self.repoid}"


RELEASES: dict[str, Release] = {
    "8.4": Release("8.4.1", "8.4", "2a5fa54a8503f96d", (5, 3, 5), "6.8.12-9-pve", "(2025-03-16T19:18Z)"),
    "9.1": Release("9.1.9", "9.1", "ee7bad0a3d1546c9", (6, 1, 3), "6.17.2-1-pve", "(2025-11-12T11:43Z)"),
}
