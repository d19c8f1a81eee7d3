"""Where `serve` runs: the systemd unit, and what apply pushes into the strategy's `serve.container`.

`render_unit` is the unit for any host (a plain-LXC host, or inside the container). `install_plan`
is everything apply does inside `serve.container` (the strategy's guidance: pve-api-gateway, not
the hypervisor): the files it pushes (the unit, the strategy, an environment file naming the PVE
API and the token file, the pveguard wheel) and the commands it runs, in order. `install_into`
carries it out through the backend's push/exec (pct push / pct exec, or lxc-attach).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pveguard.errors import ConfigError, OperationError
from pveguard.strategy.models import Strategy

UNIT_NAME = "pveguard-serve.service"
PREFIX = "/opt/pveguard"  # the venv inside the container
STATE_DIR = "/var/lib/pveguard"
STRATEGY = "/etc/pveguard/strategy.yaml"
ENV_FILE = "/etc/pveguard/serve.env"
TOKEN_FILE = "/etc/pveguard/pve-token"


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

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.container,
                "files": {p: {"bytes": len(c), "mode": oct(m)} for p, (c, m) in sorted(self.files.items())},
                "commands": [" ".join(shlex.quote(a) for a in c) for c in self.commands]}


def install_plan(strategy: Strategy, strategy_doc: dict[str, Any], wheel: Path, pve_host: str, token: str,
                 fingerprint: str | None = None) -> InstallPlan:
    """What apply pushes into `serve.container` and runs there. The daemon inside reaches PVE over
    its API (`pve_host`) with `token` (`user@realm!id=secret`, the role's least-privilege token):
    the pushed strategy is the admin's with `target.proxmox` pointed there and the secret in a
    0600 file of its own; it listens on serve.listen (TLS off loopback)."""
    import re

    import yaml

    name = strategy.serve.container
    if not name:
        raise ConfigError("serve.container is not set: nothing to install")
    try:
        strategy.container(name)
    except KeyError:
        raise ConfigError(f"serve.container: {name!r} is not one of the strategy's containers",
                          hint="name one of containers[].name, e.g. pve-api-gateway") from None
    m = re.match(r"^(?P<user>[^!\s]+@[^!\s]+)!(?P<id>[A-Za-z0-9_.-]+)=(?P<secret>\S+)$", token.strip())
    if not m:  # never echo the value: it holds the secret
        raise ConfigError("the serve token is not of the form user@realm!tokenid=secret")
    if not wheel.is_file():
        raise OperationError(f"no pveguard wheel at {wheel}", hint="build it with 'python -m build --wheel'")
    doc = dict(strategy_doc)
    target = dict(doc.get("target") or {})
    proxmox = dict(target.get("proxmox") or {})
    proxmox.update(host=pve_host, user=m["user"], token_id=m["id"], token_secret_file=TOKEN_FILE,
                   password_file=None, fingerprint=fingerprint or proxmox.get("fingerprint"))
    target.update(backend="proxmox", proxmox=proxmox)
    doc["target"] = target
    remote_wheel = f"/root/{wheel.name}"
    plan = InstallPlan(name)
    plan.files[STRATEGY] = (yaml.safe_dump(doc, sort_keys=False).encode(), 0o600)
    plan.files[TOKEN_FILE] = (f"{m['secret']}\n".encode(), 0o600)
    plan.files[ENV_FILE] = (b"PVEGUARD_BACKEND=proxmox\n", 0o600)
    plan.files[f"/etc/systemd/system/{UNIT_NAME}"] = (
        render_unit(f"{PREFIX}/bin/pveguard", STRATEGY, STATE_DIR, env_file=ENV_FILE).encode(), 0o644)
    plan.files[remote_wheel] = (wheel.read_bytes(), 0o644)
    plan.commands = [
        ["apt-get", "install", "-y", "--no-install-recommends", "python3-venv"],
        ["python3", "-m", "venv", PREFIX],
        [f"{PREFIX}/bin/pip", "install", "--upgrade", remote_wheel],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", UNIT_NAME],
        ["systemctl", "restart", UNIT_NAME],
    ]
    return plan


def install_into(backend: Any, guest: Any, plan: InstallPlan, record: Callable[..., None],
                 staging: Path) -> None:
    """Push the files and run the commands in the container; each step is recorded in the ledger."""
    staging.mkdir(parents=True, exist_ok=True)
    for i, (path, (content, mode)) in enumerate(sorted(plan.files.items())):
        local = staging / f"f{i}"
        local.write_bytes(content)
        local.chmod(0o600)
        backend.exec(guest, ["mkdir", "-p", str(Path(path).parent)])
        backend.push(guest, str(local), path, mode)
        local.unlink()
    for argv in plan.commands:
        result = backend.exec(guest, argv)
        code = getattr(result, "returncode", getattr(result, "exitcode", 0))
        if code:
            raise OperationError(f"installing serve in {plan.container}: '{' '.join(argv)}' failed (exit {code})",
                                 hint="see the container's journal; 'pveguard apply' tries again")
    record("serve.install", plan.container, files=sorted(plan.files), unit=UNIT_NAME)
