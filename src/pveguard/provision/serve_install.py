"""The serve part of plan/apply (serve.container): `pveguard serve` installed and running in that container.

The plan reads the container's manifest (/etc/pveguard/serve.manifest: the wheel's version and the
sha256 of every file apply rendered) and compares it with what apply would push now: install,
upgrade (another version, or a rendered file that differs) or nothing. Apply does it after the
containers exist and run and after RBAC delivered the role's token (/etc/pveguard/pve-token): the
daemon inside uses that least-privilege token, read in the container; no secret passes through here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pveguard import __version__
from pveguard.backends.base import Backend, Guest
from pveguard.backends.proxmox import ProxmoxBackend
from pveguard.errors import OperationError, PveguardError
from pveguard.provision.plan import Plan
from pveguard.recover.state import own_container
from pveguard.security import rbac
from pveguard.security.isolation import FwChange, FwPlan
from pveguard.serve.deploy import MANIFEST, install_into, install_plan, wheel_version
from pveguard.strategy.models import Strategy

WHEEL_ENV = "PVEGUARD_SERVE_WHEEL"
LXC_NOTE = ("serve.container applies to the proxmox backend (serve inside it talks to the PVE API); on a "
            "plain-LXC host run serve on the host: 'pveguard serve --print-unit' (docs/serve.md)")
NO_RBAC_NOTE = ("serve.container is not installed: it runs with its role's least-privilege token, which "
                "security.access.rbac creates and delivers; that is switched off")
NO_HOST_NOTE = ("serve.container is not installed: target.proxmox.host is empty (pveguard talks to the local "
                "node), so there is no API address to give the daemon in the container; set it")
SELF_NOTE = ("this pveguard runs in {name} (PVEGUARD_SELF_CONTAINER): its own installation there is "
             "converged by the admin's 'pveguard apply', never by itself")
ONLY_NOTE = "serve.container is converged by a whole apply or with --only {name}"


def find_wheel() -> Path | None:
    """The pveguard wheel apply installs: $PVEGUARD_SERVE_WHEEL, else dist/ of this source tree."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        return Path(env)
    dist = Path(__file__).resolve().parents[3] / "dist" / f"pveguard-{__version__}-py3-none-any.whl"
    return dist if dist.is_file() else None


def load_doc(path: Path) -> dict[str, Any]:
    """The strategy file as plain data (libyaml: PyYAML's pure-Python loader took 0.5 s for 1,000 containers)."""
    import yaml

    from pveguard.strategy.load import FastLoader

    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=FastLoader) if path.exists() else None
    return doc if isinstance(doc, dict) else {}


def _guest(p: Plan, name: str) -> Guest | None:
    return next((a.guest for a in p.actions if a.name == name and a.guest is not None), None)


def read_manifest(backend: Backend, g: Guest) -> dict[str, Any] | None:
    import json

    r = backend.exec(g, ["cat", MANIFEST], timeout=60)
    if not r.ok:
        return None
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _render(strategy: Strategy, doc: dict[str, Any], backend: ProxmoxBackend, wheel: Path) -> Any:
    """The installation, reaching PVE where this pveguard does (PVEGUARD_PVE_HOST or target.proxmox)."""
    s = backend.settings
    name = strategy.serve.container or ""
    role = strategy.container(name).role
    ca = None
    if s.ca_file:
        try:
            ca = Path(s.ca_file).read_bytes()
        except OSError as exc:
            raise OperationError(f"cannot read target.proxmox.ca_file {s.ca_file} for serve in {name}: "
                                 f"{exc.strerror}", hint="fix the path; its content goes into the container") from None
    return install_plan(strategy, doc, wheel, s.host or "", rbac.userid_of(role), rbac.TOKEN_NAME,
                        s.fingerprint, s.verify_ssl, ca)


def serve_plan(strategy: Strategy, doc: dict[str, Any], backend: Backend, p: Plan,
               only: set[str] | None = None) -> FwPlan:
    name = strategy.serve.container
    if not name:
        return FwPlan()
    if only is not None and name not in only:
        return FwPlan(notes=[ONLY_NOTE.format(name=name)])
    if own_container() == name:  # serve in that container: it never acts on its own container
        return FwPlan(notes=[SELF_NOTE.format(name=name)])
    if not isinstance(backend, ProxmoxBackend):
        return FwPlan(notes=[LXC_NOTE])
    if not rbac.enforced(strategy):
        return FwPlan(notes=[NO_RBAC_NOTE])
    if not backend.settings.host or backend.settings.mode == "local":
        return FwPlan(notes=[NO_HOST_NOTE])
    wheel = find_wheel()
    want = wheel_version(wheel) if wheel is not None and wheel.is_file() else None
    g = _guest(p, name)
    target = f"ct/{g.vmid}" if g is not None else f"ct/{name}"
    shown = f"pveguard {want or __version__}" + ("" if want else " (no wheel yet: build it, see docs/serve.md)")
    if g is None:
        return FwPlan(changes=[FwChange(target, name, "serve", "", f"{shown}, after {name} is created",
                                        op="install")])
    if g.status != "running":
        return FwPlan(changes=[FwChange(target, name, "serve", f"(unknown: {name} is {g.status})", shown,
                                        op="install")])
    try:
        have = read_manifest(backend, g)
    except PveguardError as exc:
        return FwPlan(changes=[FwChange(target, name, "serve", f"(unknown: cannot read it: {exc.message})", shown,
                                        op="install")])
    if have is None:
        return FwPlan(changes=[FwChange(target, name, "serve", "(not installed)", shown, op="install")])
    old = f"pveguard {have.get('version')}"
    if want is None or wheel is None:
        return FwPlan(notes=[f"{name} runs {old}; no wheel to compare with (set {WHEEL_ENV} or build dist/)"])
    rendered = _render(strategy, doc, backend, wheel).manifest()
    differ = sorted(os.path.basename(f) for f, h in rendered["files"].items()
                    if (have.get("files") or {}).get(f) != h)
    if have.get("version") == want and not differ:
        return FwPlan()
    return FwPlan(changes=[FwChange(target, name, "serve", old, shown + (f" (changed: {', '.join(differ)})"
                                                                       if differ else ""), op="upgrade")])


def converge_serve(strategy: Strategy, doc: dict[str, Any], backend: Backend, p: Plan,
                   record: Callable[..., None]) -> list[str]:
    """Apply's serve step, on a plan read after the containers and RBAC converged."""
    if not p.serve.changes:
        return []
    name = strategy.serve.container or ""
    g = _guest(p, name)
    if g is None or g.status != "running":
        state = "does not exist" if g is None else f"is {g.status}"
        raise OperationError(f"cannot install serve in {name}: the container {state}",
                             hint="start it (pveguard status shows it; pct start), then run 'pveguard apply' again")
    wheel = find_wheel()
    if wheel is None:
        raise OperationError(f"no pveguard wheel to install in {name}",
                             hint=f"build one ('python -m build --wheel' puts it in dist/) or set {WHEEL_ENV}")
    try:
        has = backend.exec(g, ["test", "-s", rbac.SECRET_PATH], timeout=60)
    except PveguardError as exc:
        raise OperationError(f"cannot reach {name} to install serve: {exc.message}",
                             hint="check 'pct exec' on its node, then run 'pveguard apply' again") from None
    if not has.ok:
        raise OperationError(f"{name} holds no role token at {rbac.SECRET_PATH}: serve there runs with it",
                             hint="'pveguard plan' shows why RBAC did not deliver it; 'pveguard tokens rotate' "
                                  "delivers a new one")
    assert isinstance(backend, ProxmoxBackend)  # serve_plan has no change on another backend
    plan = _render(strategy, doc, backend, wheel)
    return install_into(backend, g, plan, record)
