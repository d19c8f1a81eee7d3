"""systemd unit files as data: parsing, drop-in merging and the directives the audit needs.

Pure functions over text; reading files from a root lives in `inventory.py`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# Directives whose values are space-separated unit lists; an empty assignment resets the list.
LIST_DIRECTIVES = frozenset({"Requires", "Wants", "After", "Before", "BindsTo", "PartOf", "Requisite",
                             "Upholds", "Conflicts", "WantedBy", "RequiredBy", "Alias", "Also"})
# Directives that name directories below a fixed base (systemd.exec(5) "RuntimeDirectory=" table).
DIRECTORY_BASES = {"StateDirectory": "/var/lib", "ConfigurationDirectory": "/etc", "LogsDirectory": "/var/log",
                   "CacheDirectory": "/var/cache"}


@dataclass
class UnitFile:
    """One unit's merged directives: section -> key -> values (in assignment order)."""

    name: str
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def first(self, section: str, key: str) -> str | None:
        values = self.get(section, key)
        return values[-1] if values else None

    def units(self, section: str, key: str) -> list[str]:
        """A unit-list directive split into names (duplicates removed, order kept)."""
        out: list[str] = []
        for value in self.get(section, key):
            for name in value.split():
                if name not in out:
                    out.append(name)
        return out

    @property
    def has_install(self) -> bool:
        return bool(self.sections.get("Install"))


def parse(text: str, unit: UnitFile | None = None, name: str = "") -> UnitFile:
    """Parse unit file text into `unit` (a drop-in parsed into an existing unit overrides/extends it)."""
    unit = unit or UnitFile(name)
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            unit.sections.setdefault(section, {})
            continue
        if "=" not in line or not section:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        values = unit.sections.setdefault(section, {}).setdefault(key, [])
        if value == "":
            values.clear()  # systemd: an empty assignment resets every earlier value
        elif key in LIST_DIRECTIVES or key.startswith("Exec") or key in DIRECTORY_BASES or key in (
                "EnvironmentFile", "ReadWritePaths", "Environment"):
            values.append(value)
        else:
            values[:] = [value]
    return unit


def exec_argv(value: str) -> list[str]:
    """An Exec*= value as argv, without systemd's prefix characters (@, -, :, +, !)."""
    value = value.lstrip("@-:+!")
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def directories(unit: UnitFile) -> dict[str, list[str]]:
    """StateDirectory=/ConfigurationDirectory=/... resolved to absolute paths, by directive."""
    out: dict[str, list[str]] = {}
    for key, base in DIRECTORY_BASES.items():
        for value in unit.get("Service", key):
            for item in value.split():
                path = item.split(":", 1)[0]
                out.setdefault(key, []).append(path if path.startswith("/") else f"{base}/{path}")
    return out


def instance_template(name: str) -> str | None:
    """`getty@tty1.service` -> `getty@.service`; None for a unit that is not an instance."""
    stem, dot, suffix = name.rpartition(".")
    if "@" not in stem or stem.endswith("@"):
        return None
    return stem.split("@", 1)[0] + "@" + dot + suffix
