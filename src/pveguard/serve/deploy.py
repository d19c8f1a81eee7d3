"""Where `serve` runs: the systemd unit, and what apply pushes into the strategy's `serve.container`.

`render_unit` is the unit for any host (a plain-LXC host, or inside the container). `install_plan`
is everything apply does inside `serve.container` (the strategy's guidance: pve-api-gateway, not
the hypervisor): the files it pushes (the unit, the strategy, an environment file naming the PVE
API and the token file, the pveguard wheel) and the commands it runs, in order. `install_into`
carries it out through the backend's push/exec (pct push / pct exec, or lxc-attach).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pveguard.errors import ConfigError, OperationError
from pveguard.recover.state import SELF_ENV  # the container serve runs in: never acted on
from pveguard.strategy.models import Strategy

UNIT_NAME = "pveguard-serve.service"
PREFIX = "/opt/pveguard"  # the venv inside the container
STATE_DIR = "/var/lib/pveguard"
STRATEGY = "/etc/pveguard/strategy.yaml"
ENV_FILE = "/etc/pveguard/serve.env"
TOKEN_FILE = "/etc/pveguard/pve-token"
CA_FILE = "/etc/pveguard/pve-ca.pem"  # target.proxmox.ca_file's content, when the admin's strategy has one


def render_unit(pveguard: str, strategy: str, state_dir: str, listen: str | None = None,
                env_file: str | None = None) -> str:
    """The systemd service that runs `pveguard serve` (absolute paths; SIGTERM ends it within 5 s)."""
    for what, p in (("pveguard", pveguard), ("strategy", strategy), ("state_dir", state_dir)):
        if not p.startswith("/"):
            raise ConfigError(f"{what} must be an absolute path for the unit, got {p!r}")
    argv = [pveguard, "--strategy", strategy, "--state-dir", state_dir, "serve"]
    if listen:
        argv += ["--listen", listen]
    env = f"EnvironmentFile=-{env_file}\n" if env_file else ""
    return (
        "# Written by pveguard (serve); changes are overwritten.\n"
        "[Unit]\n"
        "Description=pveguard serve: jobs, REST API and dashboard\n"
        "Documentation=https://github.com/pveguard/pveguard/blob/main/docs/serve.md\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(shlex.quote(a) for a in argv)}\n"
        f"{env}"
        "Environment=PVEGUARD_ACTOR=pveguard-serve\n"
        "Restart=on-failure\nRestartSec=5s\n"
        "KillSignal=SIGTERM\nTimeoutStopSec=10s\n"
        "NoNewPrivileges=yes\nPrivateTmp=yes\nProtectHome=read-only\n"
        "ProtectKernelModules=yes\nProtectKernelTunables=yes\n"
        f"StateDirectory={Path(state_dir).name if state_dir.startswith('/var/lib/') else ''}\n"
        "UMask=0027\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    ).replace("StateDirectory=\n", "")


@dataclass
class InstallPlan:
    container: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path in the container -> (content, mode)
    commands: list[list[str]] = field(default_factory=list)
    version: str = ""  # the wheel's version
    wheel: str = ""  # where the wheel goes in the container

    def manifest(self) -> dict[str, Any]:
        """What an installation is compared by: the wheel's version and the rendered files' sha256."""
        return {"version": self.version,
                "files": {p: hashlib.sha256(c).hexdigest() for p, (c, _m) in sorted(self.files.items())
                          if p != self.wheel}}

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.container,
                "files": {p: {"bytes": len(c), "mode": oct(m)} for p, (c, m) in sorted(self.files.items())},
                "commands": [" ".join(shlex.quote(a) for a in c) for c in self.commands]}


MANIFEST = "/etc/pveguard/serve.manifest"  # what apply installed: the wheel's version, each file's sha256


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (PEP 427: name-version-...whl)."""
    parts = wheel.name.split("-")
    if len(parts) < 3 or not wheel.name.endswith(".whl"):
        raise ConfigError(f"{wheel} is not a wheel file name (pveguard-VERSION-py3-none-any.whl)")
    return parts[1]


def install_plan(strategy: Strategy, strategy_doc: dict[str, Any], wheel: Path, pve_host: str, userid: str,
                 token_name: str, fingerprint: str | None = None, verify_ssl: bool | None = None,
                 ca_pem: bytes | None = None) -> InstallPlan:
    """What apply pushes into `serve.container` and runs there. The daemon inside reaches PVE over
    its API (`pve_host`) as `userid!token_name`, the role's least-privilege token whose secret RBAC
    already delivered at TOKEN_FILE in that container (0600): the secret is read there, never
    carried by pveguard. The pushed strategy is the admin's with `target.proxmox` pointed there;
    it listens on serve.listen (TLS off loopback)."""
    import yaml

    name = strategy.serve.container
    if not name:
        raise ConfigError("serve.container is not set: nothing to install")
    try:
        strategy.container(name)
    except KeyError:
        raise ConfigError(f"serve.container: {name!r} is not one of the strategy's containers",
                          hint="name one of containers[].name, e.g. pve-api-gateway") from None
    if not wheel.is_file():
        raise OperationError(f"no pveguard wheel at {wheel}",
                             hint="build it with 'python -m build --wheel' (dist/), or set PVEGUARD_SERVE_WHEEL")
    doc = dict(strategy_doc)
    target = dict(doc.get("target") or {})
    proxmox = dict(target.get("proxmox") or {})
    proxmox.update(host=pve_host, user=userid, token_id=token_name, token_secret_file=TOKEN_FILE,
                   password_file=None, fingerprint=fingerprint or proxmox.get("fingerprint"))
    if verify_ssl is not None:
        proxmox["verify_ssl"] = verify_ssl
    # the admin's CA file is a path on the admin's machine: its content goes along (ca_pem) or nothing
    proxmox["ca_file"] = CA_FILE if ca_pem else None
    target.update(backend="proxmox", proxmox=proxmox)
    doc["target"] = target
    remote_wheel = f"/root/{wheel.name}"
    plan = InstallPlan(name, version=wheel_version(wheel))
    plan.files[STRATEGY] = (yaml.safe_dump(doc, sort_keys=False).encode(), 0o600)
    if ca_pem:
        plan.files[CA_FILE] = (ca_pem, 0o644)
    plan.files[ENV_FILE] = (f"PVEGUARD_BACKEND=proxmox\n{SELF_ENV}={name}\n".encode(), 0o600)
    plan.files[f"/etc/systemd/system/{UNIT_NAME}"] = (
        render_unit(f"{PREFIX}/bin/pveguard", STRATEGY, STATE_DIR, env_file=ENV_FILE).encode(), 0o644)
    plan.files[remote_wheel] = (wheel.read_bytes(), 0o644)
    plan.wheel = remote_wheel
    plan.commands = [
        ["python3", "-m", "venv", PREFIX],
        [f"{PREFIX}/bin/pip", "install", "--quiet", "--upgrade", remote_wheel],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", UNIT_NAME],
        ["systemctl", "restart", UNIT_NAME],
    ]
    return plan


def install_into(backend: Any, guest: Any, plan: InstallPlan, record: Callable[..., None]) -> list[str]:
    """Carry out `plan` in the running container: python3/venv (apt if missing), the files with their
    modes, the commands, then the manifest the next plan compares with. Every step goes to the ledger
    through `record(step, target, name, result-or-None, **details)` (an intent before, the result
    after), with paths, modes and sha256 -- never a file's content. Returns what was done."""
    import json
    import tempfile

    from pveguard.provision.apply import install_packages

    target, name = f"ct/{guest.vmid}", plan.container
    done: list[str] = []

    def step(what: str, fn: Callable[[], object], **details: Any) -> None:
        record(f"serve.{what}", target, name, None, **details)
        fn()
        record(f"serve.{what}", target, name, "ok", **details)

    probe = backend.exec(guest, ["python3", "-c", "import venv, ensurepip"], timeout=120)
    if not probe.ok:
        pkgs = ["python3", "python3-venv"]
        step("packages", lambda: install_packages(backend, guest, pkgs), after={"installed": pkgs})
        done.append(f"installed {' '.join(pkgs)} in {name}")
    with tempfile.TemporaryDirectory(prefix="pveguard-serve-") as d:
        files = dict(plan.files)
        files[MANIFEST] = (json.dumps(plan.manifest(), sort_keys=True).encode() + b"\n", 0o644)
        order = [p for p in sorted(files) if p != MANIFEST]
        for i, path in enumerate([*order, MANIFEST]):
            content, mode = files[path]
            local = os.path.join(d, f"f{i}")
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)

            def push(path: str = path, local: str = local, mode: int = mode) -> None:
                _run(backend, guest, name, ["mkdir", "-p", "-m", "0755", str(Path(path).parent)])
                backend.push(guest, local, path, mode=mode)

            if path == MANIFEST:  # last: only a complete installation is recorded as done
                for argv in plan.commands:
                    def run(argv: list[str] = argv) -> None:
                        _run(backend, guest, name, argv)
                    step("run", run, command=shlex.join(argv))
                done.append(f"ran {len(plan.commands)} command(s) in {name} (venv, pip, systemctl)")
            step("push", push, path=path, mode=oct(mode), bytes=len(content),
                 sha256=hashlib.sha256(content).hexdigest())
            os.unlink(local)
        done.append(f"pushed {len(order)} file(s) into {name}")
    return done


def _run(backend: Any, guest: Any, name: str, argv: list[str]) -> None:
    from pveguard.errors import BackendError

    r = backend.exec(guest, argv, timeout=1800)
    if not r.ok:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise BackendError(f"installing serve in {name}: '{shlex.join(argv)}' failed (exit {r.returncode})"
                           + (": " + " / ".join(tail) if tail else ""),
                           hint="fix it inside the container (pct enter), then run 'pveguard apply' again")
