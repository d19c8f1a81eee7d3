"""systemd timers for backup jobs: PVE calendar events as ``OnCalendar=``, plus the units.

PVE's grammar is close to systemd's but not the same (minute-only ``*/15``, wrap-around weekday
ranges, ``*/N`` in any field, repetitions past a field's end; PVE's calendar-events.adoc). Rather than rewriting
text, :func:`to_oncalendar` writes every field of the *parsed* event as an explicit list of
values and ranges, which systemd reads without ambiguity and which also sidesteps systemd's bugs
with repetitions at month ends (systemd#22665, #40260).

``Persistent=`` mirrors PVE's ``repeat-missed``: off by default (a run missed while the machine was
down is skipped, as pvescheduler does), on to run it once at boot.

A unit runs without the admin's shell: no PATH entry of a virtualenv, none of the ``PVEGUARD_*``
variables. :func:`find_command` names the pveguard to run by an absolute path, and
:func:`unit_settings` carries what the run needs: the strategy's secret files as
``LoadCredential=`` (systemd checks them before each run; the ledger key is read from the
credential, ``%d``), and the non-secret variables of the install-time environment as
``Environment=``. A secret that exists only in that environment (``PVEGUARD_PVE_TOKEN``) is refused:
a unit never holds a secret inline.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pveguard.backup.calendar import CalendarError, CalendarEvent, Field
from pveguard.context import LEDGER_KEY_ENV
from pveguard.errors import ConfigError, OperationError, UsageError
from pveguard.strategy.models import Strategy

__all__ = ["Credential", "TimerUnits", "UnitSettings", "find_command", "install_units", "render_units",
           "to_oncalendar", "unit_settings"]

# Install-time variables a unit takes over as they are (none holds a secret).
PLAIN_ENV = ("PVEGUARD_BACKEND", "PVEGUARD_PVE_HOST", "PVEGUARD_PVE_NODE", "PVEGUARD_PVE_VERIFY_SSL",
             "PVEGUARD_DEBIAN_MIRROR")
# Variables that hold a secret, and the strategy key that names a file for it instead.
SECRET_ENV = {"PVEGUARD_PVE_TOKEN": "target.proxmox.token_id + token_secret_file",
              "PVEGUARD_PVE_PASSWORD": "target.proxmox.user + password_file"}

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# systemd accepts years 1970..2199; PVE's parser caps written years below 2200 as well.
_YEARS = (1970, 2199)


def _runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _field(field: Field, low: int, high: int, width: int, what: str, source: str) -> str:
    if not field:
        return "*"
    values = [v for v in range(low, high + 1) if any(spec.contains(v) for spec in field)]
    if not values:
        raise CalendarError(
            f"calendar event {source!r} never runs: no valid {what} ({low}..{high}) matches",
            hint="check the date part, e.g. months are 1..12 and days 1..31",
        )
    if values == list(range(low, high + 1)):
        return "*"
    parts = []
    for a, b in _runs(values):
        if a == b:
            parts.append(f"{a:0{width}d}")
        elif b == a + 1:
            parts.append(f"{a:0{width}d},{b:0{width}d}")
        else:
            parts.append(f"{a:0{width}d}..{b:0{width}d}")
    return ",".join(parts)


def to_oncalendar(event: CalendarEvent) -> str:
    """A systemd ``OnCalendar=`` value with exactly the event's run times."""
    parts: list[str] = []
    if event.weekdays:
        days = sorted(event.weekdays)
        names = []
        for a, b in _runs(days):
            names.append(_DAY_NAMES[a] if a == b else f"{_DAY_NAMES[a]}..{_DAY_NAMES[b]}")
        parts.append(",".join(names))
    src = event.source
    years = _field(event.years, *_YEARS, 4, "year", src)
    months = _field(event.months, 1, 12, 2, "month", src)
    days_of_month = _field(event.days, 1, 31, 2, "day", src)
    hours = _field(event.hours, 0, 23, 2, "hour", src)
    minutes = _field(event.minutes, 0, 59, 2, "minute", src)
    seconds = _field(event.seconds, 0, 59, 2, "second", src)
    parts.append(f"{years}-{months}-{days_of_month}")
    parts.append(f"{hours}:{minutes}:{seconds}")
    if event.utc:
        parts.append("UTC")
    return " ".join(parts)


@dataclass(frozen=True)
class Credential:
    """A secret file a unit loads with ``LoadCredential=<name>:<path>``."""

    name: str
    path: str
    env: str | None = None  # a variable pointing pveguard at the loaded copy (%d/<name>)


@dataclass(frozen=True)
class UnitSettings:
    """What a service unit carries besides its command."""

    credentials: tuple[Credential, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)


def find_command(explicit: str | None = None) -> list[str]:
    """The pveguard to run from a unit, by absolute path: `explicit`, the one on PATH (bootstrap
    links /usr/local/bin/pveguard), else this interpreter with `-m pveguard`."""
    if explicit:
        if not os.path.isabs(explicit) or not os.access(explicit, os.X_OK):
            raise UsageError(f"--pveguard {explicit} is not an executable given by its absolute path",
                             hint="e.g. --pveguard /usr/local/bin/pveguard")
        return [explicit]
    found = shutil.which("pveguard")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "pveguard"]


def unit_settings(strategy: Strategy, env: Mapping[str, str]) -> UnitSettings:
    """The credentials and environment a pveguard unit needs, from the strategy and the environment."""
    for var, instead in SECRET_ENV.items():
        if env.get(var):
            raise ConfigError(f"{var} is set, but a systemd unit cannot carry a secret from your shell",
                              hint=f"put it in a root-only file and name it in the strategy ({instead}), "
                                   f"then unset {var} and install the timers again")
    wanted: list[tuple[str, str | None, str | None]] = [
        ("ledger-key", env.get(LEDGER_KEY_ENV) or strategy.security.ledger_hmac_key_file, LEDGER_KEY_ENV),
        ("pve-token-secret", strategy.target.proxmox.token_secret_file, None),
        ("pve-password", strategy.target.proxmox.password_file, None),
        ("restic-password", strategy.backup.host_config.password_file, None),
    ]
    creds = []
    for name, path, points_at in wanted:
        if not path:
            continue
        if any(ch.isspace() for ch in path):
            raise ConfigError(f"the secret file path {path!r} ({name}) holds white space, which a systemd "
                              f"LoadCredential= cannot take", hint="move the file to a path without spaces")
        if not os.path.isabs(path) or not os.path.isfile(path):
            raise ConfigError(f"the secret file {path} ({name}) does not exist, so every timer run would fail",
                              hint="create it, or correct its path in the strategy")
        creds.append(Credential(name, path, points_at))
    environment = {var: env[var] for var in PLAIN_ENV if env.get(var)}
    return UnitSettings(tuple(creds), environment)


def _specifier_safe(value: str) -> str:
    """A value as systemd reads it literally: `%` starts a specifier, so it is doubled."""
    return value.replace("%", "%%")


def _service_lines(settings: UnitSettings) -> list[str]:
    lines = [f"LoadCredential={c.name}:{_specifier_safe(c.path)}" for c in settings.credentials]
    for key, value in sorted(settings.environment.items()):
        quoted = _specifier_safe(value).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'Environment="{key}={quoted}"')
    lines += [f"Environment={c.env}=%d/{c.name}" for c in settings.credentials if c.env]
    return lines


@dataclass(frozen=True)
class TimerUnits:
    """A ``.timer`` and its ``.service``: file name -> content."""

    name: str
    files: dict[str, str]


def render_units(
    name: str,
    event: CalendarEvent | Sequence[CalendarEvent],
    command: Sequence[str],
    description: str,
    persistent: bool = False,
    settings: UnitSettings | None = None,
    written_by: str = "backup install-timers",
) -> TimerUnits:
    """Units named ``<name>.timer`` / ``<name>.service`` running ``command`` on ``event`` (or on
    each of several events: one ``OnCalendar=`` line per event, duplicates once)."""
    events = [event] if isinstance(event, CalendarEvent) else list(event)
    if not events:
        raise CalendarError(f"timer {name} needs at least one calendar event")
    lines: list[str] = []
    for ev in events:
        line = f"OnCalendar={to_oncalendar(ev)}"
        if line not in lines:
            lines.append(line)
    sources = ", ".join(dict.fromkeys(ev.source for ev in events))
    if not name.replace("-", "").replace("_", "").isalnum():
        raise CalendarError(f"unit name {name!r} may only hold letters, digits, '-' and '_'")
    if not command or not os.path.isabs(command[0]):
        raise CalendarError(f"the command of {name} must start with an absolute path, got {list(command)!r}")
    exec_start = " ".join(shlex.quote(a) for a in command)
    extra = "".join(f"{line}\n" for line in _service_lines(settings or UnitSettings()))
    timer = (
        f"# Written by pveguard ({written_by}); changes are overwritten.\n"
        f"[Unit]\nDescription={description} (schedule: {sources})\n\n"
        "[Timer]\n" + "".join(f"{line}\n" for line in lines) + f"Persistent={'true' if persistent else 'false'}\n"
        f"Unit={name}.service\n\n[Install]\nWantedBy=timers.target\n"
    )
    service = (
        f"# Written by pveguard ({written_by}); changes are overwritten.\n"
        f"[Unit]\nDescription={description}\n\n"
        f"[Service]\nType=oneshot\nExecStart={exec_start}\n{extra}Nice=10\nIOSchedulingClass=idle\n"
    )
    return TimerUnits(name, {f"{name}.timer": timer, f"{name}.service": service})


def install_units(units: Sequence[TimerUnits], unit_dir: Path) -> list[Path]:
    """Write the unit files (atomically, only when changed); returns the files written.

    Enabling them (``systemctl daemon-reload; systemctl enable --now <name>.timer``) is left to
    the caller, which knows whether systemd runs here.
    """
    unit_dir = Path(unit_dir)
    written: list[Path] = []
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for unit in units:
            for filename, text in unit.files.items():
                path = unit_dir / filename
                if path.exists() and path.read_text(encoding="utf-8") == text:
                    continue
                tmp = path.with_name(f".{filename}.tmp")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)
                written.append(path)
    except OSError as exc:
        raise OperationError(
            f"cannot write systemd units to {unit_dir}: {exc.strerror or exc}",
            hint="run as root, or pass --unit-dir",
        ) from None
    return written
