"""Read dpkg's status database quickly.

The apt hook runs inside every apt transaction, so this is a small purpose-built reader of the
few fields the classification needs (python-debian's general deb822 parser is several times slower
on a 2,000-package status file); relationship fields are parsed on demand.
"""

from __future__ import annotations

import re
from pathlib import Path

from pveguard.records import field, record

DPKG_STATUS = Path("/var/lib/dpkg/status")
APT_EXTENDED_STATES = Path("/var/lib/apt/extended_states")

_KEEP = {"package", "status", "version", "depends", "pre-depends", "provides", "essential", "priority",
         "architecture", "section", "maintainer", "source", "conffiles", "recommends"}
_VERSION_RE = re.compile(r"\s*\(.*?\)")
_ARCH_RE = re.compile(r"\s*\[.*?\]|\s*<.*?>")


@record
class Package:
    name: str
    version: str = ""
    status: str = ""
    architecture: str = ""
    essential: bool = False
    priority: str = ""
    section: str = ""
    maintainer: str = ""
    depends_raw: str = ""
    pre_depends_raw: str = ""
    provides_raw: str = ""
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def installed(self) -> bool:
        """Unpacked or configured (what dpkg would count as present on disk)."""
        parts = self.status.split()
        return len(parts) == 3 and parts[2] in ("installed", "half-configured", "unpacked", "triggers-awaited",
                                                 "triggers-pending", "half-installed")

    def depends(self) -> list[list[str]]:
        """Depends and Pre-Depends as a list of alternatives, names only."""
        return parse_relations(self.pre_depends_raw) + parse_relations(self.depends_raw)

    def provides(self) -> list[str]:
        return [alt[0] for alt in parse_relations(self.provides_raw) if alt]


def parse_relations(text: str) -> list[list[str]]:
    """`a (>= 1) | b:any, c [amd64]` -> [['a', 'b'], ['c']]."""
    out: list[list[str]] = []
    if not text:
        return out
    for group in text.split(","):
        alts = []
        for alt in group.split("|"):
            name = _ARCH_RE.sub("", _VERSION_RE.sub("", alt)).strip()
            if name:
                alts.append(name.split(":", 1)[0])
        if alts:
            out.append(alts)
    return out


def parse_status(text: str) -> dict[str, Package]:
    """All paragraphs of a dpkg status file, keyed by package name (last one wins, like dpkg)."""
    packages: dict[str, Package] = {}
    for para in text.split("\n\n"):
        pkg = parse_paragraph(para)
        if pkg is not None:
            packages[pkg.name] = pkg
    return packages


def parse_paragraph(para: str) -> Package | None:
    """One paragraph of a status file (split at blank lines, as parse_status does), or None when it
    names no package. Each paragraph is read on its own, so a caller may parse only some of them."""
    if not para.strip():
        return None
    fields: dict[str, str] = {}
    key = ""
    for line in para.split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            if key in _KEEP:
                fields[key] += "\n" + line.strip()
            continue
        k, _, v = line.partition(":")
        key = k.strip().lower()
        if key in _KEEP:
            fields[key] = v.strip()
    name = fields.get("package")
    if not name:
        return None
    return Package(
        name=name,
        version=fields.get("version", ""),
        status=fields.get("status", ""),
        architecture=fields.get("architecture", ""),
        essential=fields.get("essential", "").lower() == "yes",
        priority=fields.get("priority", ""),
        section=fields.get("section", ""),
        maintainer=fields.get("maintainer", ""),
        depends_raw=fields.get("depends", ""),
        pre_depends_raw=fields.get("pre-depends", ""),
        provides_raw=fields.get("provides", ""),
        fields=fields,
    )


def read_status(path: Path = DPKG_STATUS) -> dict[str, Package]:
    """Parse the dpkg status file at `path` (raises OSError when unreadable)."""
    return parse_status(path.read_text(encoding="utf-8", errors="replace"))


def read_auto_installed(path: Path = APT_EXTENDED_STATES) -> set[str]:
    """Packages apt marked as automatically installed (the rest were asked for by someone)."""
    auto: set[str] = set()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return auto
    for para in text.split("\n\n"):
        name = None
        flag = False
        for line in para.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Auto-Installed:"):
                flag = line.split(":", 1)[1].strip() == "1"
        if name and flag:
            auto.add(name)
    return auto
