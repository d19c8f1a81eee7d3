"""PVE's container template file names (vztmpl) and which of several is the newest.

A name reads `<package>_<version>_<arch>.tar.<ext>` (pve-manager `PVE/APLInfo.pm` builds it from the
appliance's package, version and architecture), e.g. `debian-12-standard_12.7-1_amd64.tar.zst`.
The version is a Debian version, so `12.12-1` is newer than `12.7-1` -- a text sort says otherwise.
Both backends pick templates here.
"""

from __future__ import annotations

from collections.abc import Iterable

from debian.debian_support import Version


def version_of(name: str) -> Version | None:
    """The Debian version in a template file name or volid, or None when it has none."""
    base = name.rsplit("/", 1)[-1]
    parts = base.split("_")
    if len(parts) < 3 or not parts[1]:
        return None
    try:
        return Version(parts[1])
    except ValueError:
        return None


def newest(names: Iterable[str]) -> str | None:
    """The name with the highest Debian version (names without one rank lowest; ties by name)."""
    def key(name: str) -> tuple[bool, Version, str]:
        v = version_of(name)
        return (v is not None, v if v is not None else Version("0"), name)

    return max(names, key=key, default=None)
