"""The strategy's core functions name packages that stay on the host: the audit classifies them
core like the closure of installation_policy.core_roots (issue 11), with what they depend on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pveguard.audit import assemble, inventory
from pveguard.audit.findings import GuestView
from pveguard.strategy.models import Strategy

ROOT = Path(__file__).parent / "golden/debian-nginx/root"


def audit(strategy: Strategy) -> dict[str, Any]:
    facts = inventory.collect(ROOT, live=False)
    ext = assemble.External(GuestView(False, "test"), None, "test", None, "test")
    return assemble.build(facts, strategy, ext, now=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_core_function_package_is_core_with_its_dependencies() -> None:
    plain = audit(Strategy())
    packages = {p["name"]: p for p in plain["packages"]["items"]}
    assert not packages["nginx"]["core"] and not packages["nginx-common"]["core"]
    assert any(f["id"] == "non-core-service:nginx-common" for f in plain["findings"])

    strategy = Strategy.model_validate(
        {"core_functions": [*Strategy().model_dump()["core_functions"],
                            {"name": "web-frontend", "description": "the host's own reverse proxy",
                             "packages": ["nginx"]}]})
    doc = audit(strategy)
    packages = {p["name"]: p for p in doc["packages"]["items"]}
    assert packages["nginx"]["core"] and packages["nginx-common"]["core"], packages["nginx-common"]
    assert "nginx" in doc["host"]["core_roots"]
    assert not any(f["id"] == "non-core-service:nginx-common" for f in doc["findings"])
    assert "nginx" not in doc["packages"]["manual_non_core"]


def test_the_audit_says_which_core_function_packages_are_missing() -> None:
    strategy = Strategy.model_validate({"core_functions": [
        {"name": "web-frontend", "packages": ["nginx"]},
        {"name": "hypervisor", "packages": ["pve-container", "lxcfs"]}]})
    functions = {f["name"]: f for f in audit(strategy)["host"]["core_functions"]}
    assert functions["web-frontend"] == {"name": "web-frontend", "packages": ["nginx"], "missing": []}
    assert functions["hypervisor"]["missing"] == ["pve-container", "lxcfs"]  # a plain Debian root
