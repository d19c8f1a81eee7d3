"""PVE's named parameter formats (pve-common JSONSchema.pm and friends), with PVE's error texts.

Each checker raises FormatError with the text PVE dies with; the validator prefixes
``invalid format - ``. Formats not listed here are accepted unchecked (documented in README).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any


class FormatError(ValueError):
    """A value does not match its named format; str() is PVE's message (newline-terminated)."""


def split_list(value: str) -> list[str]:
    """PVE::Tools::split_list: items separated by whitespace, comma, semicolon or NUL."""
    return [x for x in re.split(r"[\s,;\0]+", value) if x]


_CONFIGID = re.compile(r"[a-z][a-z0-9_-]+", re.I)
_ID = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]", re.I)
_VMID = re.compile(r"[1-9][0-9]{2,8}")
_NODE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?")
_DNS_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"
_DNS = re.compile(rf"({_DNS_LABEL}\.)*{_DNS_LABEL}")
_TAG = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.I)
_MAC = re.compile(r"[a-fA-F0-9]{2}(:[a-fA-F0-9]{2}){5}")
_USERID = re.compile(r"[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+")
_REALM = re.compile(r"[A-Za-z][A-Za-z0-9.\-_]+")
_POOL = re.compile(r"[A-Za-z0-9_\-]+")
_ROLE = re.compile(r"[A-Za-z0-9.\-_]+")
_TOKENID = re.compile(r"[A-Za-z][A-Za-z0-9.\-_]+")
_DISKSIZE = re.compile(r"(\d+(\.\d+)?)([KMGT])?")
_VOLID = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", re.I)
_CONTENT = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import", "none"}
_STARTUP = re.compile(r"((order=)?\d+)?(,?(up|down)=\d+)*")


def _full(rx: re.Pattern[str], v: str) -> bool:
    return rx.fullmatch(v) is not None


def _configid(v: str) -> None:
    if not _full(_CONFIGID, v):
        raise FormatError(f"invalid configuration ID '{v}'\n")


def _storage_id(v: str) -> None:
    if not _full(_ID, v):
        raise FormatError(f"storage ID '{v}' contains illegal characters\n")


def _vmid(v: str) -> None:
    if not _full(_VMID, v):
        raise FormatError("value does not look like a valid VM ID\n")


def _node(v: str) -> None:
    if not _full(_NODE, v):
        raise FormatError("value does not look like a valid node name\n")


def _dns(v: str) -> None:
    if not _full(_DNS, v):
        raise FormatError("value does not look like a valid DNS name\n")


def _ip(kind: str) -> Callable[[str], None]:
    def check(v: str) -> None:
        try:
            a = ipaddress.ip_address(v)
        except ValueError:
            a = None
        ok = a is not None and (kind == "IP" or (kind == "IPv4") == (a.version == 4))
        if not ok:
            raise FormatError(f"value does not look like a valid {kind} address\n")

    return check


def _cidr(v: str) -> None:
    try:
        ipaddress.ip_network(v, strict=False)
        if "/" not in v:
            raise ValueError
    except ValueError:
        raise FormatError("value does not look like a valid CIDR network\n") from None


def _ip_or_cidr(v: str) -> None:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise FormatError("value does not look like a valid IP address or CIDR network\n") from None


def _ip_cidr_alias(v: str) -> None:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        if not re.fullmatch(r"(?:(?:dc|guest)/)?[A-Za-z][A-Za-z0-9\-_]+", v):
            raise FormatError("value does not look like a valid IP address, CIDR network or alias\n") from None


def _mac(v: str) -> None:
    if not _full(_MAC, v) or int(v[:2], 16) & 1:
        raise FormatError("value does not look like a valid unicast MAC address\n")


def _tag_list(v: str) -> None:
    for t in split_list(v):
        if not _full(_TAG, t):
            raise FormatError(f"invalid tag '{t}'\n")


def _userid(v: str) -> None:
    if len(v) > 64 or not _full(_USERID, v):
        raise FormatError(f"value '{v}' does not look like a valid user name\n")


def _realm(v: str) -> None:
    if not _full(_REALM, v):
        raise FormatError(f"realm '{v}' contains illegal characters\n")


def _poolid(v: str) -> None:
    if not _full(_POOL, v):
        raise FormatError(f"pool ID '{v}' contains illegal characters\n")


def _roleid(v: str) -> None:
    if not _full(_ROLE, v):
        raise FormatError(f"role ID '{v}' contains illegal characters\n")


def _groupid(v: str) -> None:
    if not _full(_ROLE, v):
        raise FormatError(f"group name '{v}' contains illegal characters\n")


def _tokenid(v: str) -> None:
    if "!" not in v:
        raise FormatError(f"invalid API token ID '{v}'\n")
    user, tok = v.rsplit("!", 1)
    _userid(user)
    if not _full(_TOKENID, tok):
        raise FormatError(f"invalid API token ID '{v}'\n")


def _disk_size(v: str) -> None:
    if not _full(_DISKSIZE, v):
        raise FormatError(f"unable to parse size '{v}'\n")


def _volume_id(v: str) -> None:
    if not _full(_VOLID, v):
        raise FormatError(f"unable to parse volume ID '{v}'\n")


def _content(v: str) -> None:
    if v not in _CONTENT:
        raise FormatError(f"invalid content type '{v}'\n")


def _startup(v: str) -> None:
    if not _full(_STARTUP, v):
        raise FormatError("invalid startup order\n")


def _ipv4_config(v: str) -> None:
    if v in ("dhcp", "manual"):
        return
    try:
        ipaddress.IPv4Interface(v)
        if "/" not in v:
            raise ValueError
    except ValueError:
        raise FormatError(f"invalid IPv4 address '{v}'\n") from None


def _ipv6_config(v: str) -> None:
    if v in ("dhcp", "auto", "manual"):
        return
    try:
        ipaddress.IPv6Interface(v)
        if "/" not in v:
            raise ValueError
    except ValueError:
        raise FormatError(f"invalid IPv6 address '{v}'\n") from None


def _calendar(v: str) -> None:
    from pvesim.calendar import CalendarError, parse_calendar_event

    try:
        parse_calendar_event(v)
    except CalendarError as e:
        raise FormatError(f"unable to parse calendar event - {e}\n") from None


def _email_or_user(v: str) -> None:
    if not (re.fullmatch(r"[^\s@]+@[^\s@]+", v)):
        raise FormatError(f"value '{v}' does not look like a valid email address or user name\n")


def _list_of(check: Callable[[str], None]) -> Callable[[str], None]:
    def run(v: str) -> None:
        for item in split_list(v):
            check(item)

    return run


def _vmid_list(v: str) -> None:
    for item in split_list(v):
        if not _full(_VMID, item):
            raise FormatError(f"value '{item}' does not look like a valid VM ID\n")


FORMATS: dict[str, Callable[[str], None]] = {
    "pve-configid": _configid,
    "pve-configid-list": _list_of(_configid),
    "pve-storage-id": _storage_id,
    "pve-storage-id-list": _list_of(_storage_id),
    "pve-vmid": _vmid,
    "pve-vmid-list": _vmid_list,
    "pve-node": _node,
    "pve-node-list": _list_of(_node),
    "dns-name": _dns,
    "dns-name-list": _list_of(_dns),
    "ip": _ip("IP"),
    "ipv4": _ip("IPv4"),
    "ipv6": _ip("IPv6"),
    "address": _ip("IP"),
    "CIDR": _cidr,
    "IPorCIDR": _ip_or_cidr,
    "IPorCIDRorAlias": _ip_cidr_alias,
    "mac-addr": _mac,
    "pve-tag-list": _tag_list,
    "pve-userid": _userid,
    "pve-userid-list": _list_of(_userid),
    "pve-realm": _realm,
    "pve-poolid": _poolid,
    "pve-roleid": _roleid,
    "pve-roleid-list": _list_of(_roleid),
    "pve-groupid": _groupid,
    "pve-groupid-list": _list_of(_groupid),
    "pve-tokenid-list": _list_of(_tokenid),
    "disk-size": _disk_size,
    "pve-volume-id": _volume_id,
    "pve-storage-content": _content,
    "pve-storage-content-list": _list_of(_content),
    "pve-startup-order": _startup,
    "pve-ipv4-config": _ipv4_config,
    "pve-ipv6-config": _ipv6_config,
    "pve-calendar-event": _calendar,
    "email-or-username": _email_or_user,
    "email-or-username-list": _list_of(_email_or_user),
}

# Named formats that are property strings (definitions live in pve-storage/pve-manager, not in the schema).
PROPSTRING_FORMATS: dict[str, dict[str, Any]] = {
    "prune-backups": {
        "keep-all": {"type": "boolean", "optional": 1},
        "keep-last": {"type": "integer", "minimum": 1, "optional": 1},
        "keep-hourly": {"type": "integer", "minimum": 1, "optional": 1},
        "keep-daily": {"type": "integer", "minimum": 1, "optional": 1},
        "keep-weekly": {"type": "integer", "minimum": 1, "optional": 1},
        "keep-monthly": {"type": "integer", "minimum": 1, "optional": 1},
        "keep-yearly": {"type": "integer", "minimum": 1, "optional": 1},
    },
}
