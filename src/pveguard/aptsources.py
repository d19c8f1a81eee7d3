"""Which Debian mirror this host uses, so root filesystems are built from the same source.

pveguard never hard-codes a mirror: it reads the host's apt sources (deb822 `.sources` files and
one-line `sources.list`), or `$PVEGUARD_DEBIAN_MIRROR` when set.
"""

from __future__ import annotations

import os
from pathlib import Path

from pveguard.errors import ConfigError

MIRROR_ENV = "PVEGUARD_DEBIAN_MIRROR"


def _candidates(root: Path) -> list[tuple[str, str]]:
    """(uri, suites) pairs from the apt sources under `root`."""
    found: list[tuple[str, str]] = []
    sources_d = root / "etc/apt/sources.list.d"
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in fields.get("types", "").split() and "uris" in fields:
                for uri in fields["uris"].split():
                    found.append((uri, fields.get("suites", "")))
    lists = [root / "etc/apt/sources.list", *sorted(sources_d.glob("*.list"))] if sources_d.is_dir() \
        else [root / "etc/apt/sources.list"]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                if len(rest) >= 2:
                    found.append((rest[0], rest[1]))
    return found


def debian_mirror(suite: str = "bookworm", root: Path = Path("/")) -> str:
    """The host's Debian mirror for `suite` (the archive, not the security one)."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return env
    for uri, suites in _candidates(root):
        if suite in suites.split() and "security" not in uri:
            return uri.rstrip("/")
    raise ConfigError(
        f"no Debian '{suite}' mirror found in the apt sources of {root}",
        hint=f"set {MIRROR_ENV} to a Debian mirror URL reachable from this host",
    )
