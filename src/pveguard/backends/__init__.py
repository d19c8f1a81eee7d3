"""Choosing and opening a backend: the strategy's `target:` section, overridden by the environment.

    PVEGUARD_BACKEND        auto | proxmox | lxc
    PVEGUARD_PVE_HOST       host[:port]  (unset: the local node through pvesh)
    PVEGUARD_PVE_TOKEN      user@realm!tokenid=secret
    PVEGUARD_PVE_USER       user@realm   (with PVEGUARD_PVE_PASSWORD)
    PVEGUARD_PVE_PASSWORD
    PVEGUARD_PVE_VERIFY_SSL 0 | 1
    PVEGUARD_PVE_FINGERPRINT  SHA-256 of the API certificate (AA:BB:..., as 'pvenode cert info' shows)
    PVEGUARD_PVE_CA_FILE    CA certificate(s) the API certificate must chain to
    PVEGUARD_PVE_NODE       pin new containers to this node

`auto` means: a configured PVE host, else the local PVE node when /etc/pve exists, else plain LXC when
the lxc tools are installed. Secrets are read here and only handed to proxmoxer; no message or repr
contains them.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pveguard.errors import BackendUnavailable, ConfigError
from pveguard.strategy.models import Strategy, normalize_fingerprint

if TYPE_CHECKING:  # `check` asks `choose` only: the backend classes load with a backend
    from pveguard.backends.base import Backend

PVE_DIR = Path("/etc/pve")
BACKENDS = ("auto", "proxmox", "lxc")
_TOKEN_RE = re.compile(r"^(?P<user>[^@!=\s]+@[^@!=\s]+)!(?P<tokenid>[A-Za-z][A-Za-z0-9._-]*)=(?P<secret>\S+)$")
_LXC_TOOLS = ("lxc-create", "lxc-start", "lxc-attach")


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}",
                          hint="check the path in target.proxmox and that pveguard may read it") from None


def token_secret_of(text: str) -> str:
    """The secret in a token secret file: the bare secret, or the role token file RBAC delivers
    (`PVE_TOKEN_ID=...` / `PVE_TOKEN_SECRET=...` lines, docs/rbac.md), which serve in its container reads."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "PVE_TOKEN_SECRET":
            return value.strip().strip("'\"")
    return text.strip()


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value in ("0", "1"):
        return value == "1"
    raise ConfigError(f"{name} must be 0 or 1, not {value!r}")


def proxmox_settings(strategy: Strategy, env: Mapping[str, str]) -> Any:
    """PveSettings from target.proxmox and the PVEGUARD_PVE_* variables (the variables win)."""
    from pveguard.backends.proxmox import PveSettings

    t = strategy.target.proxmox
    fingerprint = t.fingerprint
    if env.get("PVEGUARD_PVE_FINGERPRINT"):
        try:
            fingerprint = normalize_fingerprint(env["PVEGUARD_PVE_FINGERPRINT"])
        except ValueError as exc:
            raise ConfigError(f"PVEGUARD_PVE_FINGERPRINT: {exc}",
                              hint="copy it from 'pvenode cert info' on the node (the SHA-256 line)") from None
    ca_file = env.get("PVEGUARD_PVE_CA_FILE") or t.ca_file
    if ca_file and not os.access(ca_file, os.R_OK):
        where = "PVEGUARD_PVE_CA_FILE" if env.get("PVEGUARD_PVE_CA_FILE") else "target.proxmox.ca_file"
        raise ConfigError(f"{where}: cannot read the CA file {ca_file}",
                          hint="copy /etc/pve/pve-root-ca.pem from a node there, or pin the certificate "
                               "with PVEGUARD_PVE_FINGERPRINT instead")
    s = PveSettings(
        host=env.get("PVEGUARD_PVE_HOST") or t.host, user=t.user, token_id=t.token_id,
        verify_ssl=_flag(env, "PVEGUARD_PVE_VERIFY_SSL", t.verify_ssl), fingerprint=fingerprint, ca_file=ca_file,
        node=env.get("PVEGUARD_PVE_NODE") or t.node, storage=t.storage, template_storage=t.template_storage,
        ssh_user=t.ssh_user, task_timeout=t.task_timeout.total_seconds(),
    )
    s.mode = "https" if s.host else "local"
    # tuning for slow or flaky clusters (and fast tests); not secrets, not in the strategy
    for var, attr in (("PVEGUARD_PVE_RETRY_WAIT", "retry_wait"), ("PVEGUARD_PVE_POLL_INTERVAL", "poll_interval"),
                      ("PVEGUARD_PVE_HTTP_TIMEOUT", "http_timeout")):
        if env.get(var):
            try:
                setattr(s, attr, float(env[var]))
            except ValueError:
                raise ConfigError(f"{var} must be a number of seconds, not {env[var]!r}") from None
    if env.get("PVEGUARD_PVE_CREATE_CONCURRENCY"):
        raw = env["PVEGUARD_PVE_CREATE_CONCURRENCY"]
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 64:
            raise ConfigError(f"PVEGUARD_PVE_CREATE_CONCURRENCY must be a whole number from 1 to 64, not {raw!r}",
                              hint="how many creates apply sends to PVE at once (default 8; 1: one after another)")
        s.create_concurrency = int(raw)
    token = env.get("PVEGUARD_PVE_TOKEN")
    if token:
        m = _TOKEN_RE.match(token.strip())
        if not m:  # never echo the value: it holds the secret
            raise ConfigError("PVEGUARD_PVE_TOKEN is not of the form user@realm!tokenid=secret",
                              hint="e.g. pveguard@pve!apply=<uuid> as shown once by 'pveum user token add'")
        s.user, s.token_id, s.token_secret = m["user"], m["tokenid"], m["secret"]
    elif env.get("PVEGUARD_PVE_USER") or env.get("PVEGUARD_PVE_PASSWORD"):
        s.user, s.token_id = env.get("PVEGUARD_PVE_USER") or t.user, None
        s.password = env.get("PVEGUARD_PVE_PASSWORD")
        if not s.user or s.password is None:
            raise ConfigError("PVEGUARD_PVE_USER and PVEGUARD_PVE_PASSWORD go together",
                              hint="set both, or use PVEGUARD_PVE_TOKEN instead")
    elif t.token_id:
        if not t.user or not t.token_secret_file:
            raise ConfigError("target.proxmox.token_id needs 'user' and 'token_secret_file'")
        s.token_secret = token_secret_of(_read_secret(t.token_secret_file, "token secret"))
    elif t.password_file:
        if not t.user:
            raise ConfigError("target.proxmox.password_file needs 'user'")
        s.password = _read_secret(t.password_file, "password")
    if s.user and s.token_id and "!" in s.user:  # user@realm!id written into the user field
        s.user = s.user.split("!", 1)[0]
    return s


def _lxc_missing() -> list[str]:
    return [t for t in _LXC_TOOLS if shutil.which(t) is None]


def _open_lxc(strategy: Strategy, env: Mapping[str, str]) -> Backend:
    missing = _lxc_missing()
    if missing:
        raise BackendUnavailable(f"the LXC backend needs the lxc tools; missing: {', '.join(missing)}",
                                 hint="install them with 'apt-get install lxc' (Debian/Ubuntu)")
    try:
        lxc = importlib.import_module("pveguard.backends.lxc")
    except ImportError as exc:
        raise BackendUnavailable(f"the LXC backend is not available in this pveguard build ({exc})",
                                 hint="use a PVE target (PVEGUARD_PVE_HOST) or install a complete pveguard") from None
    if hasattr(lxc, "connect"):
        backend: Backend = lxc.connect(strategy, env)
    else:
        backend = lxc.LxcBackend(strategy.target.lxc)
    return backend


def _open_proxmox(strategy: Strategy, env: Mapping[str, str], settings: Any = None) -> Any:
    from pveguard.backends.proxmox import ProxmoxBackend

    s = settings or proxmox_settings(strategy, env)
    if s.mode == "local":
        if shutil.which("pvesh") is None:
            raise BackendUnavailable("the local PVE backend needs pvesh, which is not on PATH",
                                     hint="run pveguard on a PVE node, or set PVEGUARD_PVE_HOST and "
                                          "PVEGUARD_PVE_TOKEN to use the API over https")
        if os.geteuid() != 0:
            raise BackendUnavailable("the local PVE backend (pvesh) must run as root",
                                     hint="use sudo, or the API over https with PVEGUARD_PVE_HOST/PVEGUARD_PVE_TOKEN")
    from pveguard.provision.desired import desired_state

    backend = ProxmoxBackend(s)
    # what the strategy will ask of PVE: the privilege check and the preflights look at these (the
    # instance only changes the description marker, which neither reads)
    backend.specs = [d.spec for d in desired_state(strategy, strategy.target.instance or "")]
    backend.backup_storage = strategy.backup.containers.storage
    from pveguard.security.isolation import enforced

    backend.firewall = enforced(strategy)
    from pveguard.security import rbac

    backend.rbac_paths = rbac.acl_paths(strategy) if rbac.enforced(strategy) else None
    backend.may_migrate = "migrate" in strategy.emergency.resource_exhaustion.actions
    return backend


def choose(strategy: Strategy, env: Mapping[str, str] | None = None, pve_dir: Path = PVE_DIR) -> str:
    """The backend name `connect` would open: 'proxmox' or 'lxc' (BackendUnavailable if none fits)."""
    env = os.environ if env is None else env
    wanted = env.get("PVEGUARD_BACKEND") or strategy.target.backend
    if wanted not in BACKENDS:
        raise ConfigError(f"PVEGUARD_BACKEND={wanted!r} is not one of {', '.join(BACKENDS)}")
    if wanted != "auto":
        return wanted
    if env.get("PVEGUARD_PVE_HOST") or strategy.target.proxmox.host or pve_dir.is_dir():
        return "proxmox"
    missing = _lxc_missing()
    if not missing:
        return "lxc"
    raise BackendUnavailable(
        f"no backend found: {pve_dir} does not exist (not a PVE node), no PVE host is configured, "
        f"and the lxc tools are missing ({', '.join(missing)})",
        hint="set PVEGUARD_PVE_HOST and PVEGUARD_PVE_TOKEN for a remote PVE, or install lxc for the LXC "
             "backend, or set target.backend in the strategy")


def connect(strategy: Strategy, env: Mapping[str, str] | None = None, pve_dir: Path = PVE_DIR) -> Backend:
    """Open the backend the strategy and the environment ask for."""
    env = os.environ if env is None else env
    name = choose(strategy, env, pve_dir)
    backend: Backend = _open_proxmox(strategy, env) if name == "proxmox" else _open_lxc(strategy, env)
    return backend


def facts(strategy: Strategy, env: Mapping[str, str] | None = None, pve_dir: Path = PVE_DIR,
          timeout: float = 5.0) -> dict[str, Any]:
    """What `info` shows about the backend: asked for, resolved to, and for PVE its version, nodes and
    quorum. Never raises for a backend that cannot be reached: `error` (and `hint`) say why. Fast: short
    timeouts, no retries, at most three reads."""
    from pveguard.errors import PveguardError

    env = os.environ if env is None else env
    wanted = env.get("PVEGUARD_BACKEND") or strategy.target.backend
    out: dict[str, Any] = {"wanted": wanted, "resolved": None, "error": None, "hint": None}
    try:
        out["resolved"] = name = choose(strategy, env, pve_dir)
        if name == "lxc":
            return out
        pve: dict[str, Any] = {"api": None, "reachable": False, "version": None, "supported": None,
                               "support": None, "nodes": [], "quorate": None}
        out["proxmox"] = pve
        settings = proxmox_settings(strategy, env)
        pve["api"] = settings.describe()
        settings.http_timeout, settings.retries = min(settings.http_timeout, timeout), 1
        backend = _open_proxmox(strategy, env, settings)
        try:
            pve["version"] = str(backend.version().get("version") or "") or None
            pve["reachable"] = True
            from pveguard.backends.pvepreflight import version_support

            verdict, what, fix = version_support(pve["version"] or "")
            # supported: true (8.4+, 9.x), null (may work, untested: 8.0-8.3, 10+), false (7.x and older)
            pve["supported"], pve["support"] = verdict, what + (f"; {fix}" if fix else "")
            pve["nodes"] = [{"name": n.name, "online": n.online} for n in backend.nodes()]
            pve["quorate"] = backend.quorum()
        finally:
            backend.close()
    except PveguardError as exc:
        out["error"], out["hint"] = exc.message, exc.hint
    return out
