"""apt's DPkg::Pre-Install-Pkgs hook protocol, versions 2 and 3, as plain data.

apt writes `VERSION 3`, its whole configuration as `key=value` lines (`%xx`-quoted), one empty line,
then one line per planned action (see docs/guard.md and the reference notes on the wire format):

    v3: name old-ver old-arch old-ma  dir  new-ver new-arch new-ma  target
    v2: name old-ver                  dir  new-ver                  target

`target` is a .deb path, `**CONFIGURE**`, `**REMOVE**` or `**ERROR**`. Parsing is strict: anything
else raises `ProtocolError`, which the hook turns into a fail-closed refusal, never a traceback.
Only the standard library is used here: this module sits on the hook's hot path.
"""

from __future__ import annotations

import re

from pveguard.records import field, record

TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:
    from typing import Literal

    Kind = Literal["install", "upgrade", "downgrade", "reinstall", "remove", "configure", "error"]

CONFIGURE = "**CONFIGURE**"
REMOVE = "**REMOVE**"
ERROR = "**ERROR**"
_SPECIAL = {CONFIGURE, REMOVE, ERROR}
_DIRECTIONS = {"<", ">", "="}
_QUOTED = re.compile(rb"%([0-9A-Fa-f]{2})")
# Debian policy: lower-case letters, digits, + - . ; at least two characters, starting alphanumeric.
# apt also passes names it got from elsewhere, so be a little more lenient on length.
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*$")
MAX_LINES = 1_000_000


class ProtocolError(ValueError):
    """The hook's input is not what apt's protocol version 2/3 sends."""


@record(frozen=True)
class Action:
    """One line of the action section."""

    package: str
    old_version: str | None
    direction: str
    new_version: str | None
    target: str
    old_arch: str | None = None
    new_arch: str | None = None

    @property
    def kind(self) -> Kind:
        """What the line does to the package."""
        if self.target == REMOVE:
            return "remove"
        if self.target == CONFIGURE:
            return "configure"
        if self.target == ERROR:
            return "error"
        if self.old_version is None:
            return "install"
        if self.direction == "<":
            return "upgrade"
        return "downgrade" if self.direction == ">" else "reinstall"

    @property
    def deb_path(self) -> str | None:
        """The .deb file apt will unpack, for unpack lines."""
        return None if self.target in _SPECIAL else self.target


@record
class HookInput:
    """A parsed hook message: protocol version, apt's configuration, planned actions."""

    version: int
    config: dict[str, list[str]] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)

    def get(self, key: str, default: str = "") -> str:
        """The last value apt sent for `key` (list options keep every item)."""
        values = self.config.get(key)
        return values[-1] if values else default

    @property
    def command_line(self) -> str:
        return self.get("CommandLine::AsString")

    @property
    def dry_run(self) -> bool:
        """apt runs the hooks but not dpkg (`-o Debug::pkgDPkgPM=1`, used by `guard check`)."""
        return self.get("Debug::pkgDPkgPM").lower() in ("1", "true", "yes", "on")

    @property
    def purge(self) -> bool:
        return self.get("APT::Get::Purge").lower() in ("1", "true", "yes", "on")

    def package_actions(self) -> list[Action]:
        """One action per package: unpack and remove lines; `**CONFIGURE**` lines repeat them."""
        seen: dict[str, Action] = {}
        for action in self.actions:
            if action.kind in ("configure", "error"):
                continue
            # A package apt both removes and unpacks in one run is being replaced; the unpack wins.
            if action.package not in seen or action.kind != "remove":
                seen[action.package] = action
        return list(seen.values())


def unquote(raw: bytes) -> str:
    """Undo apt's QuoteString (`%xx` for space, `%`, `=`, control and non-ASCII bytes)."""
    return _QUOTED.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", errors="replace")


def parse(data: bytes) -> HookInput:
    """Parse one hook message; raises ProtocolError on anything apt would not send."""
    lines = data.split(b"\n")
    if len(lines) > MAX_LINES:
        raise ProtocolError(f"more than {MAX_LINES} lines")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ProtocolError("no input (apt sent nothing; is the hook registered with a Version option?)")
    header = lines[0].rstrip(b"\r")
    match = re.fullmatch(rb"VERSION ([0-9]{1,3})", header)
    if not match:
        shown = header[:60].decode("utf-8", errors="replace")
        raise ProtocolError(f"expected 'VERSION 2' or 'VERSION 3' on the first line, got {shown!r} "
                            "(the hook must be registered with DPkg::Tools::Options::<path>::Version \"3\")")
    version = int(match.group(1))
    if version not in (2, 3):
        raise ProtocolError(f"protocol version {version} is not supported (2 or 3 is)")
    result = HookInput(version)
    index = 1
    while True:
        if index >= len(lines):
            raise ProtocolError("the configuration section has no terminating empty line")
        line = lines[index]
        index += 1
        if line == b"":
            break
        key, sep, value = line.partition(b"=")
        if not sep or not key:
            shown = line[:60].decode("utf-8", errors="replace")
            raise ProtocolError(f"line {index}: configuration line without 'key=value': {shown!r}")
        result.config.setdefault(unquote(key), []).append(unquote(value))
    nfields = 9 if version == 3 else 5
    for number, line in enumerate(lines[index:], start=index + 1):
        if not line.strip():
            continue
        result.actions.append(_action(line, nfields, number))
    return result


def _action(line: bytes, nfields: int, number: int) -> Action:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"line {number}: action line is not UTF-8") from None
    parts = text.split()
    if len(parts) != nfields:
        raise ProtocolError(f"line {number}: expected {nfields} fields, got {len(parts)}: {text[:80]!r}")
    if nfields == 9:
        name, old_v, old_a, _old_ma, direction, new_v, new_a, _new_ma, target = parts
    else:
        name, old_v, direction, new_v, target = parts
        old_a = new_a = "-"
    if not _PKG_NAME.match(name):
        raise ProtocolError(f"line {number}: {name[:60]!r} is not a package name")
    if direction not in _DIRECTIONS:
        raise ProtocolError(f"line {number}: unknown direction {direction[:10]!r} (expected <, > or =)")
    if target not in _SPECIAL and not target.startswith("/"):
        raise ProtocolError(f"line {number}: target {target[:60]!r} is neither a .deb path nor a **MARKER**")
    action = Action(name, None if old_v == "-" else old_v, direction, None if new_v == "-" else new_v, target,
                    None if old_a == "-" else old_a, None if new_a == "-" else new_a)
    if action.kind == "remove" and action.old_version is None:
        raise ProtocolError(f"line {number}: removal of {name!r}, which is not installed")
    if action.kind in ("install", "upgrade", "downgrade", "reinstall") and action.new_version is None:
        raise ProtocolError(f"line {number}: unpack of {name!r} without a new version")
    return action
