"""The default strategy as the commented YAML file that `pveguard init` writes.

The text is generated from the models, so it can never disagree with them; comments come from the
field descriptions plus the section notes below.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from pveguard.strategy import enforcement
from pveguard.strategy.models import Strategy

SECTION_NOTES = {
    "core_functions": (
        "Functions that stay on the hypervisor host. Everything else runs in a container.\n"
        "Their packages are core roots too: the guard allows them and the audit counts them as core."
    ),
    "installation_policy": (
        "The apt guard's policy (ALLOW_CORE_ONLY / REQUIRE_APPROVAL / CONTAINER_FIRST).\n"
        "Core = the dependency closure of core_roots and of the core functions' packages, Essential/required\n"
        "packages and extra_allowed."
    ),
    "containers": (
        "Service containers: resource-limited, unprivileged, on the container VLAN with the firewall on.\n"
        "Sizes are binary: 4G = 4096 MiB, as in pct. Durations: 30s, 15m, 1h, 7d."
    ),
    "network": "Container bridge and VLAN, management network, isolation.",
    "resources": "Hard limits through cgroups; host capacity (detected when empty) and overcommit bounds.",
    "monitoring": "Metrics, poll interval, alert thresholds in percent, notification targets.",
    "security": "Network isolation and access control (RBAC, audit logging, certificates).",
    "backup": (
        "Containers daily, kept 7 days; host configuration hourly, kept 30 days.\n"
        "Schedules are 'hourly', 'daily' or a PVE calendar event such as 'mon..fri 02:30'."
    ),
    "emergency": "Recovery from container failure and resource exhaustion.",
    "serve": (
        "The daemon ('pveguard serve'): REST API and dashboard address, TLS, job intervals, and the\n"
        "container apply installs it in. Plain HTTP only on loopback; elsewhere TLS (created when not named)."
    ),
    "target": (
        "Where containers live: auto (local PVE when /etc/pve exists, else LXC), proxmox or lxc.\n"
        "Overridden by PVEGUARD_BACKEND, PVEGUARD_PVE_HOST, PVEGUARD_PVE_TOKEN, PVEGUARD_PVE_USER,\n"
        "PVEGUARD_PVE_PASSWORD, PVEGUARD_PVE_VERIFY_SSL, PVEGUARD_PVE_FINGERPRINT,\n"
        "PVEGUARD_PVE_CA_FILE, PVEGUARD_PVE_NODE."
    ),
}

HEADER = """\
# pveguard strategy: the container-first plan for this Proxmox VE host.
# Validate with 'pveguard check'. Reference: the README's configuration section.
# Keys marked "not enforced yet" are accepted and kept, but no code acts on them until the named
# issue is done; 'pveguard check' warns when you change one.
"""


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    # Quote anything YAML might read as another type or that has special characters.
    plain_ok = text and text[0].isalnum() and not any(ch in text for ch in ":#{}[],&*!|>'\"%@`") \
        and text.lower() not in ("yes", "no", "on", "off", "true", "false", "null", "~")
    try:
        float(text)
        plain_ok = False
    except ValueError:
        pass
    return text if plain_ok else json.dumps(text)


def _descriptions(model: type[BaseModel] | None) -> dict[str, str]:
    if model is None:
        return {}
    return {name: f.description for name, f in model.model_fields.items() if f.description}


def _field_model(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    from pveguard.strategy.load import _unwrap_model

    if model is None or name not in model.model_fields:
        return None
    found = _unwrap_model(model.model_fields[name].annotation)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _comment(model: type[BaseModel] | None, key: str, loc: tuple[str | int, ...]) -> str:
    """The field's description, plus a mark on the topmost key that is accepted but not enforced yet."""
    parts = []
    note = _descriptions(model).get(key)
    if note:
        parts.append(note)
    issue = enforcement.issue_for((*loc, key))
    if issue is not None and enforcement.issue_for(loc) is None:
        parts.append(f"not enforced yet (issue #{issue})")
    return f"  # {'; '.join(parts)}" if parts else ""


def _emit(value: Any, model: type[BaseModel] | None, indent: int, out: list[str],
          loc: tuple[str | int, ...] = ()) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            comment = _comment(model, key, loc)
            sub = _field_model(model, key)
            if (isinstance(item, dict) and item) or (isinstance(item, list) and item and isinstance(item[0], dict)):
                out.append(f"{pad}{key}:{comment}")
                _emit(item, sub, indent + 1, out, (*loc, key))
            elif isinstance(item, list):
                out.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in item)}]{comment}")
            elif isinstance(item, dict):
                out.append(f"{pad}{key}: {{}}{comment}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}{comment}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            sub_out: list[str] = []
            _emit(item, model, indent + 1, sub_out, (*loc, i))
            first = sub_out[0].lstrip()
            out.append(f"{pad}- {first}")
            out.extend(sub_out[1:])


def render(strategy: Strategy | None = None) -> str:
    """The strategy (default: the defaults) as commented YAML that loads back to the same model."""
    strategy = strategy or Strategy()
    data = strategy.model_dump(mode="json")
    out = [HEADER.rstrip("\n")]
    for section, value in data.items():
        out.append("")
        for line in SECTION_NOTES.get(section, "").splitlines():
            out.append(f"# {line}")
        _emit({section: value}, Strategy, 0, out)
    return "\n".join(out) + "\n"
