"""The Proxmox VE backend: the REST API through proxmoxer (https, or `pvesh` when on a node).

What PVE's API cannot do -- run a command inside a container, copy files in and out -- goes through
`pct exec|push|pull` on the guest's node: directly when we run on that node, else over SSH.

Retries go by what PVE's answer means, not by its status code (`classify`): a transport failure or
an unexplained 5xx/595 is repeated (with backoff) only when repeating the call is harmless -- reads,
and writes that set absolute values (config PUT, resize to a size); "CT is locked" is repeated after
a wait, whatever the call, because PVE refused it before doing anything; "disk is already at
specified size" means done; a digest mismatch or an unparseable UPID fails at once. A create is
never blindly re-sent: after a failure we look whether the guest appeared, and only when it did not
do we try again, with a fresh VMID.

Every answer is checked against the shape PVE's schema promises (`ANSWER_SHAPES`) where it enters,
so a broken answer (`{"data": null}` for a list) is an error naming the call, never "no guests".
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.core import AuthenticationError

from pveguard import subproc
from pveguard.backends import vztmpl
from pveguard.backends.base import (
    Backend,
    Capabilities,
    DataVolume,
    ExecResult,
    GrowTo,
    Guest,
    GuestSpec,
    GuestStats,
    Preflight,
    Snapshot,
    read_marker,
)
from pveguard.backends.inflight import IN_FLIGHT
from pveguard.backends.pvefast import MISS, FastGet, fast_get
from pveguard.backends.pveprivs import Need, describe_missing, grant_hint, lacking, needs
from pveguard.backends.pvetls import PveAdapter, TicketAuth, Trust, session_for
from pveguard.errors import BackendError, BackendUnavailable, PolicyRefused, PveguardError
from pveguard.invocation import during

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# token-file checks at once per node in has_files (lxc-attach, or a `pct exec` -- a Perl process -- where it cannot
# answer; 8 keeps a node's CPUs for PVE)
HAS_FILES_PER_NODE = 8

# Status codes worth repeating a safe call for: server errors and AnyEvent's proxy pseudo-codes.
_RETRY_STATUS = range(500, 600)

# What an answer means for the caller (`classify`).
RETRY = "retry"    # transient (transport, an unexplained 5xx, 595 node unreachable): repeat if harmless
LOCKED = "locked"  # refused before anything happened because a lock is held: repeat after a wait
DONE = "done"      # refused because what was asked for is already so
FAIL = "fail"      # repeating cannot help

# PVE's messages and what they mean, whatever status line carries them (first match wins). pvesh and
# older PVE put the same text on stderr or in the reason phrase, so the text decides, not the code.
_MEANINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    # pve-container src/PVE/API2/LXC.pm resize_vm: dies before forking the task when size == new size
    (re.compile(r"disk is already at specified size"), DONE),
    # pve-guest-common AbstractConfig.pm check_lock: "CT is locked (backup)" -- no VMID in it
    (re.compile(r"\b(?:CT|VM) is locked \("), LOCKED),
    # pve-common src/PVE/Tools.pm lock_file_full: the config flock timed out (another call holds it)
    (re.compile(r"can't lock file '[^']*' - got timeout"), LOCKED),
    # pve-common src/PVE/Tools.pm upid_decode / pve-manager PVE/API2/Tasks.pm: a UPID never parses later
    (re.compile(r"unable to parse worker upid|no such task"), FAIL),
    # pve-common src/PVE/Tools.pm assert_if_modified: a digest mismatch stays one however often repeated
    (re.compile(r"detected modified configuration"), FAIL),
    (re.compile(r"unable to shrink disk size"), FAIL),
)

# The shape of each answer pveguard reads, from the `returns` of PVE's API schema (pve-api-8.4.json;
# tests/provision/test_answer_shapes.py checks this table against it). "list" = array of objects,
# "object", "id" = integer or numeric string (Perl leaks numbers as strings), "upid" = a task id,
# "null" = a write that answers nothing.
ANSWER_SHAPES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (m, re.compile(rx), shape) for m, rx, shape in (
        ("GET", r"/cluster/resources", "list"),
        ("GET", r"/cluster/status", "list"),
        ("GET", r"/cluster/nextid", "id"),
        ("GET", r"/cluster/backup", "list"),
        ("GET", r"/cluster/backup-info/not-backed-up", "list"),
        ("GET", r"/nodes/[^/]+/storage/[^/]+/content", "list"),
        ("GET", r"/nodes/[^/]+/aplinfo", "list"),
        ("GET", r"/nodes/[^/]+/lxc/\d+/config", "object"),
        ("GET", r"/nodes/[^/]+/lxc/\d+/pending", "list"),
        ("GET", r"/nodes/[^/]+/lxc/\d+/status/current", "object"),
        ("GET", r"/nodes/[^/]+/tasks/[^/]+/status", "object"),
        ("GET", r"/access/permissions", "object"),
        ("GET", r"/version", "object"),
        ("POST", r"/nodes/[^/]+/lxc", "upid"),
        ("POST", r"/nodes/[^/]+/aplinfo", "upid"),
        ("POST", r"/nodes/[^/]+/lxc/\d+/status/\w+", "upid"),
        ("PUT", r"/nodes/[^/]+/lxc/\d+/resize", "upid"),
        ("DELETE", r"/nodes/[^/]+/lxc/\d+", "upid"),
        # firewall and VLAN isolation (security.isolation)
        ("GET", r"/cluster/firewall/options", "object"),
        ("GET", r"/cluster/firewall/(?:rules|ipset|groups)", "list"),
        ("GET", r"/cluster/firewall/(?:ipset|groups)/[^/]+", "list"),
        ("GET", r"/nodes/[^/]+/lxc/\d+/firewall/options", "object"),
        ("GET", r"/nodes/[^/]+/lxc/\d+/firewall/rules", "list"),
        ("PUT", r"/cluster/firewall/options", "null"),
        ("POST", r"/cluster/firewall/(?:ipset|groups)(?:/[^/]+)?", "null"),
        ("DELETE", r"/cluster/firewall/(?:ipset/[^/]+/[^/]+|groups/[^/]+/[^/]+)", "null"),
        ("PUT", r"/nodes/[^/]+/lxc/\d+/firewall/options", "null"),
        ("POST", r"/nodes/[^/]+/lxc/\d+/firewall/rules", "null"),
        ("PUT", r"/nodes/[^/]+/lxc/\d+/firewall/rules/[^/]+", "null"),
        # the traffic watch (monitoring.traffic): a node's firewall log, [{"n": int, "t": str}]
        ("GET", r"/nodes/[^/]+/firewall/log", "list"),
        # RBAC per container role (security.access.rbac)
        ("GET", r"/access/(?:users|roles|acl)", "list"),
        ("GET", r"/access/users/[^/]+/token", "list"),
        ("POST", r"/access/users/[^/]+/token/[^/]+", "object"),
        ("PUT", r"/access/users/[^/]+/token/[^/]+", "object"),
        ("DELETE", r"/access/users/[^/]+/token/[^/]+", "null"),
        ("POST", r"/access/(?:users|roles)", "null"),
        ("PUT", r"/access/(?:users|roles)/[^/]+", "null"),
        ("PUT", r"/access/acl", "null"),
    ))

# A UPID as PVE parses it (pve-common src/PVE/Tools.pm upid_decode): node, pid, pstart, start time,
# type, id, user. Anything else can never be polled, so it fails at once instead of at the timeout.
_UPID_RX = re.compile(r"UPID:([a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?):[0-9A-Fa-f]{8}:[0-9A-Fa-f]{8,9}:"
                      r"[0-9A-Fa-f]{8}:[^:\s/]+:[^:\s/]*:[^:\s/]+:")


# the tasks apply runs for every container, of similar length within a run (wait_task's first pause)
LEARNED_TASKS = frozenset({"vzcreate", "vzstart"})


def upid_node(upid: Any) -> str | None:
    """The node a task runs on, or None when `upid` is not a UPID PVE would accept."""
    m = _UPID_RX.fullmatch(upid) if isinstance(upid, str) else None
    return m.group(1) if m else None


def _shape_of(method: str, path: str) -> str | None:
    p = "/" + path.strip("/")
    return next((shape for m, rx, shape in ANSWER_SHAPES if m == method and rx.fullmatch(p)), None)


_NO_DATA = object()  # an answer without a "data" member


def _described(data: Any) -> str:
    """An unexpected answer, short and without Python reprs."""
    if data is _NO_DATA:
        return "no 'data'"
    if data is None:
        return "data=null"
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(data), "a number")
    if isinstance(data, str | int | float) and not isinstance(data, bool):
        text = str(data)
        return f"{kind} ({text[:40]}{'...' if len(text) > 40 else ''})"
    return kind


def check_shape(method: str, path: str, data: Any) -> str | None:
    """Why an answer does not have the shape the schema promises for this call (None when it does)."""
    shape = _shape_of(method, path)
    if data is _NO_DATA:
        return "returned no 'data'"
    expected = {"list": "a list of objects", "object": "an object", "id": "a number",
                "upid": "a task id (UPID)", "null": "null"}.get(shape or "")
    if shape is None or expected is None:
        return None
    if shape == "null":
        return None if data is None else f"returned {_described(data)}, expected {expected}"
    if shape == "list":
        if not isinstance(data, list):
            return f"returned {_described(data)}, expected {expected}"
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        return None if bad is None else f"returned {_described(data[bad])} as item {bad}, expected {expected}"
    if shape == "object":
        return None if isinstance(data, dict) else f"returned {_described(data)}, expected {expected}"
    if shape == "id":
        ok = (isinstance(data, int) and not isinstance(data, bool)) or (isinstance(data, str) and data.isdigit())
        return None if ok else f"returned {_described(data)}, expected {expected}"
    return None if upid_node(data) else f"returned {_described(data)}, expected {expected}"


@dataclass
class PveSettings:
    """How to reach PVE. Secrets are kept out of repr() so they never reach a log or a traceback."""

    mode: str = "local"  # "local" (pvesh on this node) | "https"
    host: str | None = None
    user: str | None = None
    token_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    verify_ssl: bool = True
    fingerprint: str | None = None  # SHA-256 of the API certificate (AA:BB:...), checked on every connection
    ca_file: str | None = None
    node: str | None = None
    storage: str = "local-lvm"
    template_storage: str = "local"
    ssh_user: str = "root"
    task_timeout: float = 600.0
    http_timeout: float = 30.0
    # longest pause between task status polls (they start at 0.1 s and grow 1.5x): a task ends on average
    # half of it before we see it, once per task -- a create and a start per container
    poll_interval: float = 0.5
    # creates apply sends at once: PVE runs each as its own worker task (fork_worker); pveproxy answers
    # the synchronous part with a few workers, so a handful in flight hides the task time
    create_concurrency: int = 8
    retries: int = 4
    retry_wait: float = 1.0
    local_node: str | None = None  # this machine's node name when on a node (default: short hostname)
    ssh_command: list[str] = field(default_factory=lambda: ["ssh", "-o", "BatchMode=yes"])

    def describe(self) -> str:
        """Where we connect, without secrets (for status and error messages)."""
        if self.mode == "local":
            return "local node (pvesh)"
        return f"https://{self.host} ({self.authid}, TLS: {self.trust.describe()})"

    @property
    def authid(self) -> str:
        """Who PVE sees: user@realm!tokenid for a token, user@realm for a password, root@pam via pvesh."""
        if self.mode == "local":
            return "root@pam"
        return f"{self.user}!{self.token_id}" if self.token_id else str(self.user)

    @property
    def trust(self) -> Trust:
        return Trust(self.verify_ssl, self.fingerprint, self.ca_file)


def open_api(s: PveSettings) -> Any:
    """A proxmoxer ProxmoxAPI for the settings; connection and auth failures become BackendUnavailable.

    Over https every request goes through PveAdapter (pin or CA enforced on the connection, failures
    explained), the password login included.
    """
    try:
        if s.mode == "local":
            return ProxmoxAPI(backend="local", service="PVE", timeout=max(60, int(s.task_timeout)))
        if not s.host:
            raise BackendUnavailable("no PVE host configured",
                                     hint="set PVEGUARD_PVE_HOST or target.proxmox.host")
        verify = s.trust.requests_verify()
        kwargs: dict[str, Any] = {"verify_ssl": verify, "timeout": s.http_timeout, "service": "PVE"}
        if s.token_id:
            kwargs.update(user=s.user, token_name=s.token_id, token_value=s.token_secret)
        elif s.password is not None:
            # a placeholder token keeps proxmoxer from logging in over its own, unpinned connection;
            # TicketAuth below logs in through ours and replaces it
            kwargs.update(user=s.user, token_name="-", token_value="-")
        else:
            raise BackendUnavailable(
                f"no credentials for {s.host}",
                hint="set PVEGUARD_PVE_TOKEN=user@realm!tokenid=secret (or PVEGUARD_PVE_USER and "
                     "PVEGUARD_PVE_PASSWORD), or token_id/token_secret_file in target.proxmox")
        api = ProxmoxAPI(s.host, backend="https", **kwargs)
        session = api._store["session"]  # proxmoxer has no public hook for its transport
        session.mount("https://", PveAdapter(s.host, s.trust))
        fixed_environment(session, api._store["base_url"], verify)
        if s.token_id is None and s.password is not None:
            session.auth = TicketAuth(session_for(s.host, s.trust), api._store["base_url"], str(s.user),
                                      s.password, verify=verify, timeout=s.http_timeout)
        return api
    except AuthenticationError:
        raise BackendUnavailable(f"PVE at {s.host} refused the login for {s.user}",
                                 hint="check the user name, realm and password") from None
    except requests.exceptions.RequestException as exc:  # TLS failures were explained by PveAdapter
        raise BackendUnavailable(f"cannot reach PVE at {s.host}: {type(exc).__name__}",
                                 hint="check PVEGUARD_PVE_HOST (host[:port]) and that pveproxy runs") from None


def fixed_environment(session: requests.Session, base_url: str, verify: bool | str) -> None:
    """Read the proxy environment once instead of on every call (requests scans all of os.environ per
    request: ~0.4 ms, a third of a call's CPU). Every call goes to base_url's host, so the proxies (and
    no_proxy) that apply to it are the same each time. A CA bundle from the environment only matters when
    verifying with the system CAs: then the environment stays live."""
    if verify is True and (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")):
        return
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    session.trust_env = False


def lean_reader(api: Any, s: PveSettings) -> FastGet | None:
    """The lean GET transport for an https API (pvefast), or None where proxmoxer's path must be kept."""
    token = f"PVEAPIToken={s.user}!{s.token_id}={s.token_secret}" if s.token_id else None
    return fast_get(api, token, s.http_timeout, s.trust.requests_verify())


def pve_params(values: dict[str, Any]) -> dict[str, Any]:
    """Parameters as PVE accepts them: booleans as 1/0 (proxmoxer would send 'True'), None dropped."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = int(v) if isinstance(v, bool) else v
    return out


def meaning_of(text: str) -> str | None:
    """What one of PVE's messages (an error answer, or a task's exit status) means, if it is a known one."""
    return next((meaning for rx, meaning in _MEANINGS if rx.search(text)), None)


def classify(exc: BaseException) -> str:
    """RETRY, LOCKED, DONE or FAIL for a failed call: by PVE's message first, then by status/transport."""
    if isinstance(exc, ResourceException):
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        text = " ".join([str(exc.content or ""), *(str(v) for v in errors.values())])
        known = meaning_of(text)
        if known is not None:
            return known
        return RETRY if exc.status_code in _RETRY_STATUS else FAIL
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                  | subprocess.TimeoutExpired):
        return RETRY
    return FAIL


def is_retryable(exc: BaseException) -> bool:
    """Worth repeating at all (transient, or refused for a lock that will go away)."""
    return classify(exc) in (RETRY, LOCKED)


def pve_message(exc: BaseException) -> str:
    """PVE's own words for a failed call: the reason phrase (or pvesh's stderr) plus parameter errors."""
    if isinstance(exc, ResourceException):
        text = str(exc.content or "").strip()
        # pvesh prints "500 <msg>" style lines on stderr; drop the status prefix we show separately.
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines and lines[0][:3].isdigit() and lines[0][3:4] == " ":
            lines[0] = lines[0][4:]
        text = "; ".join(lines) or str(exc.status_message or "")
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        # proxmoxer puts the raw body under "errors" when it is not JSON (e.g. the empty 401 body)
        shown = {k: v for k, v in errors.items() if isinstance(v, str) and v.strip() and k != "errors"}
        if shown:
            text += " (" + "; ".join(f"{k}: {v.strip()}" for k, v in sorted(shown.items())) + ")"
        return f"{text} [HTTP {exc.status_code}]"
    if isinstance(exc, requests.exceptions.Timeout | subprocess.TimeoutExpired):
        return "no answer in time (timeout)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "the server's TLS certificate is not trusted"
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = str(exc)
        for known in ("Connection refused", "No route to host", "Name or service not known",
                      "Network is unreachable", "timed out"):
            if known in reason:
                return f"connection failed ({known})"
        return "connection failed"
    return str(exc)


def _hint_for(exc: BaseException) -> str | None:
    if isinstance(exc, requests.exceptions.SSLError):
        return ("install the PVE CA certificate, or set PVEGUARD_PVE_VERIFY_SSL=0 "
                "(target.proxmox.verify_ssl: false) on a trusted network")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "check PVEGUARD_PVE_HOST (host[:port], default port 8006) and that pveproxy runs there"
    if isinstance(exc, ResourceException):
        if exc.status_code == 401:
            return "the credentials were refused; check PVEGUARD_PVE_TOKEN / PVEGUARD_PVE_USER"
        if exc.status_code == 403 and "only allowed for root@pam" in str(exc.content):
            return ("PVE allows this to root@pam itself only (a password login, not an API token): use those "
                    "credentials (PVEGUARD_PVE_USER=root@pam, PVEGUARD_PVE_PASSWORD) or make the change by hand "
                    "once with 'pct set' on the node")
        if exc.status_code == 403:
            return "the API user or token lacks a privilege; grant it on the path named above"
        if exc.status_code in (595, 596, 597, 599):
            return "the node is unreachable from the API node (offline?); check 'pvecm status'"
        if "locked" in str(exc.content):
            return "another operation (backup, migration...) holds the lock; wait for it and retry"
    return None


def _int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 0


def _tags(raw: Any) -> list[str]:
    return sorted({t for t in str(raw or "").replace(",", ";").replace(" ", ";").split(";") if t})


def is_root_pam(s: PveSettings) -> bool:
    """True when PVE sees the user root@pam itself: pvesh on the node, or a root@pam password login.

    A token of root@pam is `root@pam!id` to PVE and does not count (pve-access-control
    AccessControl.pm verify_token); some changes are allowed to root@pam alone.
    """
    return s.mode == "local" or (not s.token_id and s.user == "root@pam")


def _who(s: PveSettings) -> str:
    if s.mode == "local":
        return "root@pam (pvesh)"
    return f"token {s.user}!{s.token_id}" if s.token_id else f"user {s.user}"


def root_only_features(wanted: dict[str, bool], current: str | None = None, unprivileged: bool = True) -> list[str]:
    """The feature flags that only root@pam itself may change, among those creating (current None) or
    updating to `wanted` changes: all but `nesting` -- on a privileged container, all of them.

    pve-container src/PVE/LXC.pm check_ct_modify_config_perm compares each flag's old and new value,
    an absent flag counting as ''.
    """
    def parse(text: str) -> dict[str, str]:
        out = {}
        for kv in filter(None, text.split(",")):
            k, _, v = kv.partition("=")
            out[k.strip()] = "1" if v.strip().lower() in ("1", "on", "yes", "true") else "0"
        return out

    old = parse(current or "")
    new = {k: "1" for k, v in wanted.items() if v}
    changed = sorted(k for k in set(old) | set(new) if old.get(k, "") != new.get(k, ""))
    return changed if not unprivileged else [k for k in changed if k != "nesting"]


def root_only_note(settings: PveSettings, keys: list[str], features: dict[str, bool], vmid: int | None,
                   unprivileged: bool = True) -> str | None:
    """What to tell the user when `keys` need root@pam and the credentials are not root@pam (else None)."""
    if not keys or is_root_pam(settings):
        return None
    value = ",".join(f"{k}=1" for k, v in sorted(features.items()) if v) or "''"
    rule = ("change feature flags other than nesting" if unprivileged
            else "set feature flags on a privileged container")
    return (f"features {', '.join(keys)}: PVE lets only root@pam itself {rule}, "
            f"so {_who(settings)} will be refused (403); run this apply as root@pam with its password "
            f"(PVEGUARD_PVE_USER=root@pam, PVEGUARD_PVE_PASSWORD), or set it by hand once on the node: "
            f"pct set {vmid if vmid is not None else '<vmid>'} --features {value}")


def feature_credential_warnings(strategy: Any, env: Any) -> list[tuple[str, str]]:
    """(field, message) for each container whose feature flags the configured PVE credentials cannot set.

    For `check`, without connecting: only when the target resolves to PVE and its settings can be read.
    """
    from pveguard.backends import choose, proxmox_settings
    from pveguard.errors import PveguardError

    try:
        if choose(strategy, env) != "proxmox":
            return []
        settings = proxmox_settings(strategy, env)
    except PveguardError:
        return []  # reported by the commands that connect
    out = []
    for i, c in enumerate(strategy.containers):
        features, unpriv = dict(c.features), c.unprivileged
        note = root_only_note(settings, root_only_features(features, None, unpriv), features, c.vmid, unpriv)
        if note:
            out.append((f"containers[{i}].features", note))
    return out


class PveCallError(BackendError):
    """A failed API call: PVE's message, plus what the retry logic needs to know about it."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 retryable: bool = False, meaning: str = FAIL) -> None:
        super().__init__(message, hint)
        self.status = status
        self.retryable = retryable  # transient: the call may or may not have happened
        self.meaning = meaning


class PveTaskError(BackendError):
    """A PVE task that ended with an error; `meaning` is what its exit status means (`classify`)."""

    def __init__(self, message: str, hint: str | None = None, *, exitstatus: str = "") -> None:
        super().__init__(message, hint)
        self.exitstatus = exitstatus
        self.meaning = meaning_of(exitstatus) or FAIL


@dataclass
class NodeInfo:
    name: str
    online: bool
    maxmem: int
    mem: int
    # HA node maintenance (`ha-manager crm-command node-maintenance enable`): /cluster/resources shows the
    # node row with hastate "maintenance"; the HA stack moves guests away, so nothing new belongs there
    maintenance: bool = False


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


@dataclass
class Placement:
    """Where a new guest goes and why the other nodes were passed over."""

    node: str | None
    free: int = 0  # bytes free on the chosen node before this guest
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why not
    short: bool = False  # no node had the memory free: the most free one was taken (LXC memory overcommits)

    def why(self) -> str:
        if self.node is None:
            return "no node can take it: " + "; ".join(f"{n} {w}" for n, w in sorted(self.skipped.items()))
        text = f"{self.node} (most free memory: {_gib(self.free)})"
        if self.short:
            text += " - no node has the memory free, so the one with most free memory (containers overcommit)"
        return text


def place_on(nodes: list[NodeInfo], placed: dict[str, int], need: int = 0) -> Placement:
    """The node with the most free memory after what this run already placed, passing over the offline
    ones, those in maintenance and (while another has room) those without `need` bytes free."""
    skipped: dict[str, str] = {}
    fit: list[tuple[int, str]] = []
    short: list[tuple[int, str]] = []
    for n in nodes:
        if not n.online:
            skipped[n.name] = "offline"
            continue
        if n.maintenance:
            skipped[n.name] = "in maintenance"
            continue
        free = n.maxmem - n.mem - placed.get(n.name, 0)
        (fit if free >= need else short).append((free, n.name))
    # ties go to the alphabetically first node, so placement is repeatable
    pick = min(fit or short, key=lambda x: (-x[0], x[1]), default=None)
    if fit:
        for free, name in short:
            skipped[name] = f"short of memory ({_gib(max(free, 0))} free, needs {_gib(need)})"
    if pick is None:
        return Placement(None, skipped=skipped)
    return Placement(pick[1], pick[0], skipped, short=not fit and need > 0)


def run_on_node(argv: list[str], what: str, *, timeout: float, input: bytes | None = None, stdin: int | None = None,
                started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> subprocess.CompletedProcess[bytes]:
    """pct (or sh/ssh running it) through subproc.run: what pct starts under sh/ssh goes too on a timeout;
    a missing tool and a timeout as the backend's errors."""
    try:
        return subproc.run(argv, input=input, timeout=timeout, stdin=stdin, started=started)
    except FileNotFoundError:
        raise BackendUnavailable(f"{what}: {argv[0]} is not installed",
                                 hint="exec/push/pull need pct on the node, or ssh to reach it") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what}: no result within {timeout:.0f}s") from None


class FileChecks:
    """Node sessions of has_files running in the background, one thread each (IN_FLIGHT nodes at once).

    Each session is its own process group, so cancel() ends it with what it started (xargs, sh, pct; over
    ssh the local end), and nothing reads the caller's stdin. A timeout is counted from the session's start
    and says what has_files said before ("no result within Ns")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._cancelled = False
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[dict[int, bool | str]]] = []

    def start(self, node_run: Callable[[str, list[Guest]], dict[int, bool | str]],
              by_node: dict[str, list[Guest]]) -> None:
        if not by_node:
            return
        self._pool = ThreadPoolExecutor(max_workers=min(IN_FLIGHT, len(by_node)),
                                        thread_name_prefix="pveguard-has-files")
        self._futures = [self._pool.submit(node_run, n, gs) for n, gs in by_node.items()]

    def run(self, argv: list[str], what: str, *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        with self._lock:
            if self._cancelled:
                raise BackendError(f"{what}: cancelled")
        mine: list[subprocess.Popen[bytes]] = []

        def track(p: subprocess.Popen[bytes]) -> None:  # cancel() sees it, or it sees cancel()
            with self._lock:
                mine.append(p)
                self._procs.add(p)
                if self._cancelled:
                    raise BackendError(f"{what}: cancelled")
        try:
            return run_on_node(argv, what, timeout=timeout, stdin=subprocess.DEVNULL, started=track)
        finally:
            with self._lock:
                self._procs.difference_update(mine)

    def result(self) -> dict[int, bool | str]:
        out: dict[int, bool | str] = {}
        try:
            for f in self._futures:
                out.update(f.result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        return out

    def cancel(self) -> None:
        """End the sessions still running (plan failed or was interrupted before it needed the answers)."""
        with self._lock:
            self._cancelled = True
            procs = list(self._procs)
        for p in procs:
            subproc.kill_group(p)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def choose_node(nodes: list[NodeInfo], placed: dict[str, int], need: int = 0) -> str | None:
    """The fit node with the most free memory (see place_on); None if no node is online and out of maintenance."""
    return place_on(nodes, placed, need).node


class ProxmoxBackend(Backend):
    """Proxmox VE through proxmoxer. `api` may be injected (tests); else opened from settings."""

    name = "proxmox"

    def __init__(self, settings: PveSettings, api: Any = None) -> None:
        self.settings = settings
        self.api = api if api is not None else open_api(settings)
        # GETs (most of a plan's calls) skip requests' and proxmoxer's per-call work on the same pinned pool
        self._fast = None if api is not None or settings.mode != "https" else lean_reader(self.api, settings)
        self._placed: dict[str, int] = {}
        self._templates: dict[tuple[str, str], str] = {}
        self._node_ips: dict[str, str] | None = None
        self._local_name: str | None = None
        self._status_lock = threading.Lock()  # parallel readers ask for the node addresses once
        # concurrent creates (apply): node and VMID chosen under one lock, never the same twice in a run
        self._alloc_lock = threading.Lock()
        self._template_lock = threading.Lock()
        self._reserved: set[int] = set()  # VMIDs this run chose (PVE's nextid knows them only once created)
        self._prepared: dict[str, tuple[str, int]] = {}  # spec name -> (node, vmid) from prepare_creates
        self._interrupt = threading.Event()  # Ctrl-C in apply: waits stop at their next poll
        self._task_seconds: dict[str, float] = {}  # task type -> the shortest seen (wait_task's first pause)
        # what the strategy will ask for (set by backends.connect): privileges and preflights check these
        self.specs: list[GuestSpec] = []
        self.firewall = False  # the strategy enforces firewall isolation (pveprivs.FIREWALL_CALLS needed)
        # the strategy enforces RBAC: the ACL paths its grants name (pveprivs.RBAC_CALLS needed); None: off
        self.rbac_paths: list[str] | None = None
        self.may_migrate = False  # exhaustion may migrate (pveprivs.MIGRATE_CALLS needed)
        self.backup_storage: str | None = None
        self._read: dict[str, Any] = {}  # path -> answer read up front (`reading`), each used once

    def __repr__(self) -> str:
        return f"ProxmoxBackend({self.settings.describe()})"

    # --- calling the API ----------------------------------------------------------------------

    def _raw(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        if method == "GET" and self._fast is not None:
            return self._fast.get(path, pve_params(params or {}))
        res = self.api(path.strip("/"))
        fn = {"GET": res.get, "POST": res.post, "PUT": res.put, "DELETE": res.delete}[method]
        return fn(**pve_params(params or {}))

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, *, safe: bool | None = None,
             what: str | None = None) -> Any:
        """One API call; `safe` (default: GET only) allows retries on transient failures (`classify`).

        A "locked" refusal is retried whatever the call (PVE refused before doing anything).
        Failures, and answers without the shape the schema promises, become BackendError naming the call
        with PVE's own message.
        """
        if self._read and method == "GET" and not params:
            got = self._read.pop(path, MISS)
            if got is not MISS:
                return got
        if safe is None:
            safe = method == "GET"

        def worth_repeating(exc: BaseException) -> bool:
            meaning = classify(exc)
            return meaning == LOCKED or (safe and meaning == RETRY)

        # attempts as tenacity's stop_after_attempt(retries) + wait_exponential(retry_wait, max=10) made them
        # (retry_wait, 2x, 4x... between attempts), without its bookkeeping on every call (~40 us each)
        attempts, attempt = max(1, self.settings.retries), 1
        while True:
            try:
                with during(what or f"{method} {path}"):  # what a Ctrl-C interrupted
                    data = self._raw(method, path, params)
                break
            except (ResourceException, requests.exceptions.RequestException, subprocess.TimeoutExpired) as exc:
                if attempt >= attempts or not worth_repeating(exc):
                    raise self._error(exc, what or f"{method} {path}") from None
                time.sleep(max(0.0, min(self.settings.retry_wait * 2 ** (attempt - 1), 10)))
                attempt += 1
                log.info("retrying %s %s (attempt %d)", method, path, attempt)
            except KeyError:  # proxmoxer reads json["data"]: a JSON answer without it
                data = _NO_DATA
                break
        wrong = check_shape(method, path, data)
        if wrong is not None:
            raise PveCallError(f"{what + ': ' if what else ''}{method} {path} {wrong}",
                               hint="the API answered with something PVE does not send; check that the target is "
                                    "a PVE node (pveproxy) and look at its journal (journalctl -u pveproxy)",
                               status=200)
        return data

    def _error(self, exc: BaseException, what: str) -> PveCallError:
        where = f" at {self.settings.host}" if isinstance(exc, requests.exceptions.RequestException) else ""
        meaning = classify(exc)
        return PveCallError(f"{what} failed{where}: {pve_message(exc)}", hint=_hint_for(exc),
                            status=getattr(exc, "status_code", None), retryable=meaning == RETRY, meaning=meaning)

    def wait_task(self, upid: str, what: str, progress: Progress | None = None,
                  timeout: float | None = None) -> None:
        """Wait for a PVE task (a Ctrl-C meanwhile is reported as interrupting the wait for `what`)."""
        with during(f"waiting for {what}"):
            self._wait_task(upid, what, progress, timeout)

    def _wait_task(self, upid: str, what: str, progress: Progress | None = None,
                   timeout: float | None = None) -> None:
        """Wait for a PVE task; raise BackendError with the task's own error on failure or timeout.

        Polls like proxmoxer's Tasks.blocking_status, but starts fast and slows down (most tasks take
        a second), reports progress, survives a transient 5xx/595 while polling, and does not sleep
        once more after the task stopped. Once a create or start (LEARNED_TASKS) was seen to end, the
        first poll of the next one waits 0.8x the shortest seen (at most 5 s): fifty creates then cost
        fifty task times, not fifty times the pause between two polls on top. Tasks whose length
        depends on the guest (vzdump, migrate, resize) are not learned.
        """
        timeout = self.settings.task_timeout if timeout is None else timeout
        node = upid_node(upid)
        if node is None:
            raise BackendError(f"{what}: PVE returned {_described(upid)} where a task id (UPID) was expected",
                               hint="such a task can never be polled; look at the node's task list in PVE")
        start = time.monotonic()
        interval = min(0.1, self.settings.poll_interval)
        last_report = start
        path = f"/nodes/{node}/tasks/{upid}/status"
        ttype = upid.split(":")[5]
        expected = self._task_seconds.get(ttype) if ttype in LEARNED_TASKS else None
        if expected:
            self._sleep(min(0.8 * expected, 5.0, timeout))
        while True:
            try:
                status = self._raw("GET", path)
            except (ResourceException, requests.exceptions.RequestException) as exc:
                if classify(exc) != RETRY:  # e.g. "unable to parse worker upid": polling on cannot help
                    raise self._error(exc, f"{what}: reading the task status") from None
                status = {"status": "unknown"}
            wrong = check_shape("GET", path, status)
            if wrong is not None:
                raise PveCallError(f"{what}: reading the task status: GET {path} {wrong}", status=200)
            if status.get("status") == "stopped":
                break
            elapsed = time.monotonic() - start
            if elapsed >= timeout:
                raise BackendError(
                    f"{what}: task {upid} did not finish within {timeout:.0f}s",
                    hint="it may still be running on the node; look at the task log in PVE, then run the "
                         "command again (it picks up where this one stopped)")
            if progress and time.monotonic() - last_report >= 5:
                progress(f"{what}: running on {node} ({elapsed:.0f}s)")
                last_report = time.monotonic()
            self._sleep(min(interval, max(0.0, timeout - elapsed)))
            interval = min(interval * 1.5, self.settings.poll_interval)
        took = time.monotonic() - start
        self._task_seconds[ttype] = min(took, self._task_seconds.get(ttype, took))
        exitstatus = str(status.get("exitstatus", ""))
        if exitstatus != "OK" and not exitstatus.startswith("WARNINGS"):
            raise PveTaskError(f"{what} failed on node {node}: {exitstatus or 'unknown task error'}",
                               hint=f"see the task log: pvesh get /nodes/{node}/tasks/{upid}/log",
                               exitstatus=exitstatus)

    def _sleep(self, seconds: float) -> None:
        """time.sleep that ends early with KeyboardInterrupt once interrupt() was called (any thread)."""
        if self._interrupt.wait(seconds):
            raise KeyboardInterrupt

    def interrupt(self) -> None:
        self._interrupt.set()

    # --- cluster state ------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        rows = self.resources("node", what="reading the cluster nodes")
        return [NodeInfo(str(r["node"]), r.get("status") == "online", _int(r.get("maxmem")), _int(r.get("mem")),
                         maintenance=r.get("hastate") == "maintenance")
                for r in rows]

    def resources(self, type: str | None = None, what: str | None = None) -> list[dict[str, Any]]:
        """GET /cluster/resources[?type=]: every row an object with the key its type needs (vmid, node)."""
        params = {"type": type} if type else None
        rows: list[dict[str, Any]] = self.call("GET", "/cluster/resources", params, what=what)
        for r in rows:  # 10,000 rows a poll: the type read once
            kind = r.get("type")
            need = "vmid" if kind == "lxc" or kind == "qemu" else "node" if kind == "node" else None
            if need and r.get(need) is None:
                raise PveCallError(f"{what + ': ' if what else ''}GET /cluster/resources returned a "
                                   f"{kind} without '{need}'", status=200)
        return rows

    def capabilities(self) -> Capabilities:
        notes = [f"api: {self.settings.describe()}",
                 "exec/push/pull: pct on the guest's node" + ("" if self.settings.mode == "local" else " (ssh)")]
        try:
            nodes = self.nodes()
            notes.append("nodes: " + ", ".join(f"{n.name} ({'online' if n.online else 'offline'})" for n in nodes))
        except BackendError as exc:
            notes.append(f"nodes: unknown ({exc.message})")
        return Capabilities(name="proxmox", vlan_mode="tag (PVE bridge VLAN)", notes=notes)

    def list_guests(self) -> list[Guest]:
        """Every guest from one GET /cluster/resources?type=vm."""
        rows = self.resources("vm", what="listing the cluster's guests")
        out = []
        for r in rows:
            if r.get("template"):
                continue
            status = r.get("status")
            out.append(Guest(
                vmid=_int(r["vmid"]), name=str(r.get("name", "")), node=str(r.get("node", "")),
                type="qemu" if r.get("type") == "qemu" else "lxc",
                status=status if status in ("running", "stopped") else "unknown",
                tags=_tags(r.get("tags")), maxmem=_int(r.get("maxmem")), maxdisk=_int(r.get("maxdisk")),
                cpus=float(r.get("maxcpu") or 0), lock=r.get("lock") or None))
        return out

    def stats(self) -> list[GuestStats]:
        rows = self.resources("vm", what="reading guest usage")
        out = []
        for r in rows:
            status = r.get("status")
            out.append(GuestStats(
                vmid=_int(r["vmid"]), name=str(r.get("name", "")), node=str(r.get("node", "")),
                status=status if status in ("running", "stopped") else "unknown",
                cpu=float(r.get("cpu") or 0), cpus=float(r.get("maxcpu") or 0), mem=_int(r.get("mem")),
                maxmem=_int(r.get("maxmem")), disk=_int(r.get("disk")), maxdisk=_int(r.get("maxdisk")),
                netin=_int(r.get("netin")), netout=_int(r.get("netout")), diskread=_int(r.get("diskread")),
                diskwrite=_int(r.get("diskwrite")), uptime=_int(r.get("uptime"))))
        return out

    def _ct(self, guest: Guest) -> str:
        return f"/nodes/{guest.node}/lxc/{guest.vmid}"

    @contextmanager
    def reading(self, paths: list[str]) -> Iterator[Callable[[str], bool]]:
        """Inside: a plain GET of one of these paths answers from a read made up front, all of them together
        in one thread on the pool's pinned connections (FastGet.get_many), once each. What that read could
        not settle -- an error, an unusual answer, a dropped connection, an answer without the shape the
        schema promises -- is not kept: that GET goes out again when asked, through `call`'s own path
        (errors, hints, retries). Outside, nothing read here is used: later calls read afresh."""
        if self._fast is None or len(paths) < 2:
            yield lambda _p: False
            return
        with during(f"reading {len(paths)} API paths"):
            got = self._fast.get_many(paths, IN_FLIGHT)
        self._read = {p: d for p, d in zip(paths, got, strict=True)
                      if d is not MISS and check_shape("GET", p, d) is None}
        try:
            yield lambda p: p in self._read
        finally:
            self._read = {}

    @contextmanager
    def reading_configs(self, guests: list[Guest]) -> Iterator[Callable[[Guest], bool]]:
        with self.reading([f"{self._ct(g)}/config" for g in guests]) as ready:
            yield lambda g: ready(f"{self._ct(g)}/config")

    def get_config(self, guest: Guest) -> dict[str, Any]:
        cfg = self.call("GET", f"{self._ct(guest)}/config", what=f"reading the config of CT {guest.vmid}")
        return dict(cfg or {})

    # --- creating -----------------------------------------------------------------------------

    def place(self, spec: GuestSpec, nodes: list[NodeInfo] | None = None) -> str:
        """The node for a new guest: the pinned one (checked), else the one with most free memory."""
        nodes = self.nodes() if nodes is None else nodes
        pinned = spec.node or self.settings.node
        if pinned:
            n = next((x for x in nodes if x.name == pinned), None)
            if n is None:
                raise BackendError(f"node {pinned!r} (pinned for {spec.name}) is not in the cluster",
                                   hint="known nodes: " + ", ".join(x.name for x in nodes))
            if not n.online:
                raise BackendError(f"node {pinned} (pinned for {spec.name}) is offline",
                                   hint="bring it back, or pin the container to another node")
            if n.maintenance:
                raise BackendError(f"node {pinned} (pinned for {spec.name}) is in maintenance",
                                   hint="wait for 'ha-manager crm-command node-maintenance disable "
                                        f"{pinned}', or pin the container to another node")
            return n.name
        where = place_on(nodes, self._placed, spec.memory_mib << 20)
        if where.node is None:
            raise BackendError(f"no node to place {spec.name}: {where.why()}",
                               hint="bring a node back online or out of maintenance")
        return where.node

    def placements(self, specs: list[GuestSpec]) -> dict[str, Placement]:
        """Where each unpinned spec would go now, in order, as apply's place() will choose (one listing)."""
        nodes = self.nodes()
        placed = dict(self._placed)
        out: dict[str, Placement] = {}
        for spec in specs:
            where = place_on(nodes, placed, spec.memory_mib << 20)
            out[spec.name] = where
            if where.node is not None:
                placed[where.node] = placed.get(where.node, 0) + (spec.memory_mib << 20)
        return out

    def ensure_template(self, node: str, template: str, progress: Progress | None = None) -> str:
        """The volid of `template` on the node's template storage, downloading it via aplinfo if missing."""
        if ":" in template:
            return template
        key = (node, template)
        if key in self._templates:
            return self._templates[key]
        with self._template_lock:  # concurrent creates on a node list (and download) a template once
            if key not in self._templates:
                self._templates[key] = self._find_template(node, template, progress)
        return self._templates[key]

    def _find_template(self, node: str, template: str, progress: Progress | None) -> str:
        storage = self.settings.template_storage
        content = self.call("GET", f"/nodes/{node}/storage/{storage}/content", {"content": "vztmpl"},
                            what=f"listing templates on {node}:{storage}")
        # the newest by Debian version (12.12-1 beats 12.7-1), not by text
        best = vztmpl.newest(str(c["volid"]) for c in content
                             if str(c.get("volid", "")).split("vztmpl/", 1)[-1].startswith(template))
        if best is None:
            avail = self.call("GET", f"/nodes/{node}/aplinfo", what=f"listing downloadable templates on {node}")
            name = vztmpl.newest(str(a["template"]) for a in avail if str(a.get("template", "")).startswith(template))
            if name is None:
                raise BackendError(f"template {template!r} is neither on {node}:{storage} nor downloadable",
                                   hint="run 'pveam update' on the node, or set 'template:' to an existing "
                                        "volid like local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
            if progress:
                progress(f"downloading template {name} to {node}:{storage}")
            upid = self.call("POST", f"/nodes/{node}/aplinfo", {"storage": storage, "template": name},
                             what=f"downloading template {name}")
            self.wait_task(str(upid), f"downloading template {name}", progress)
            best = f"{storage}:vztmpl/{name}"
        return best

    def feature_note(self, features: dict[str, bool], current: str | None, vmid: int | None,
                     unprivileged: bool = True) -> str | None:
        """A plan note when this create/update changes root@pam-only feature flags with other credentials."""
        keys = root_only_features(features, current, unprivileged)
        return root_only_note(self.settings, keys, features, vmid, unprivileged)

    def create_params(self, spec: GuestSpec, vmid: int, ostemplate: str) -> dict[str, Any]:
        """The POST /nodes/{node}/lxc parameters for a spec."""
        net = {"name": "eth0", "bridge": spec.net.bridge, "firewall": 1 if spec.net.firewall else 0,
               "ip": spec.net.ip}
        if spec.net.vlan is not None:
            net["tag"] = spec.net.vlan
        if spec.net.gateway:
            net["gw"] = spec.net.gateway
        if spec.net.hwaddr:
            net["hwaddr"] = spec.net.hwaddr
        startup = ",".join(f"{k}={v}" for k, v in (("order", spec.startup_order), ("up", spec.startup_up),
                                                    ("down", spec.startup_down)) if v is not None)
        features = ",".join(f"{k}=1" for k, v in sorted(spec.features.items()) if v)
        return pve_params({
            "vmid": vmid, "ostemplate": ostemplate, "hostname": spec.name, "cores": spec.cores,
            "memory": spec.memory_mib, "swap": spec.swap_mib, "cpuunits": spec.cpuunits,
            "cpulimit": spec.cpulimit or None,
            "rootfs": f"{spec.storage or self.settings.storage}:{spec.disk_gib}",
            "mp0": self._new_mp(spec.backup_volume) if spec.backup_volume else None,
            "net0": ",".join(f"{k}={v}" for k, v in net.items()),
            "unprivileged": spec.unprivileged, "features": features or None, "onboot": spec.onboot,
            "startup": startup or None, "tags": ";".join(spec.tags), "description": spec.description,
        })

    def _new_mp(self, vol: DataVolume) -> str:
        """A mount point PVE allocates (`STORAGE:GiB`, pve-container's mp[n] format), included in backups."""
        return f"{vol.storage or self.settings.storage}:{vol.size_gib},mp={vol.mountpoint},backup=1"

    def _nextid(self) -> int:
        """A free VMID no other create of this run holds (reserved for the run).

        PVE's /cluster/nextid reserves nothing (pve-manager PVE/API2/Cluster.pm: the lowest id not in
        the vmlist), so concurrent creates asking it would all get the same id. An id this run already
        chose is skipped and the next one checked with `nextid?vmid=N` (400 "VM N already exists").
        """
        with self._alloc_lock:
            vmid = _int(self.call("GET", "/cluster/nextid", what="asking PVE for a free VMID"))
            while vmid in self._reserved:
                vmid += 1
                if vmid in self._reserved:
                    continue
                try:
                    self.call("GET", "/cluster/nextid", {"vmid": vmid}, what=f"checking that VMID {vmid} is free")
                except PveCallError as exc:
                    if exc.status != 400:
                        raise
                    self._reserved.add(vmid)  # taken by a guest PVE knows: skip it too
            self._reserved.add(vmid)
            return vmid

    @property
    def create_concurrency(self) -> int:  # type: ignore[override]
        return self.settings.create_concurrency

    def prepare_creates(self, specs: list[GuestSpec]) -> None:
        """Choose node and VMID for every create of a run up front, from one node listing, one nextid and
        one guest listing, so creates sent at once never pick the same VMID nor all the same node.

        Placement is place()'s (most free memory after what this run placed, in order, as plan shows).
        What cannot be settled here (a pinned node that is offline...) is left to create(), which says why.
        """
        if not specs:
            return
        nodes = self.nodes()
        with self._alloc_lock:
            used = set(self._reserved) | {s.vmid for s in specs if s.vmid}
            need_ids = [s for s in specs if not s.vmid and s.name not in self._prepared]
            next_free = 0
            if need_ids:
                next_free = _int(self.call("GET", "/cluster/nextid", what="asking PVE for a free VMID"))
                used |= {_int(r["vmid"]) for r in self.resources("vm", what="listing the cluster's VMIDs")}
            for spec in specs:
                if spec.name in self._prepared:
                    continue
                try:
                    node = self.place(spec, nodes)
                except BackendError:
                    continue  # create() places it again and raises the clear error for this container
                vmid = spec.vmid
                if not vmid:
                    while next_free in used:
                        next_free += 1
                    vmid = next_free
                    used.add(vmid)
                    self._reserved.add(vmid)
                self._placed[node] = self._placed.get(node, 0) + (spec.memory_mib << 20)
                self._prepared[spec.name] = (node, vmid)

    def find_created(self, node: str, vmid: int, name: str, description: str = "") -> str:
        """After a failed create: 'ours' when the guest exists as we asked (name and managed marker, the
        instance included), 'taken' by another, or 'absent'."""
        for g in self.list_guests():
            if g.vmid != vmid:
                continue
            try:
                cfg = self.get_config(g)
            except BackendError:
                return "taken"
            desc = str(cfg.get("description", ""))
            mine = read_marker(description)
            return "ours" if cfg.get("hostname") == name and mine and read_marker(desc) == mine else "taken"
        return "absent"

    def wait_unlocked(self, guest: Guest, what: str, progress: Progress | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        """Poll the config until PVE's lock (e.g. `create` of a create that outlived us) is gone."""
        timeout = self.settings.task_timeout if timeout is None else timeout
        start = time.monotonic()
        while True:
            cfg = self.get_config(guest)
            if not cfg.get("lock"):
                return cfg
            if time.monotonic() - start > timeout:
                raise BackendError(f"{what}: CT {guest.vmid} is still locked ({cfg['lock']}) after {timeout:.0f}s",
                                   hint="another operation holds it; wait for it, then run the command again")
            if progress:
                progress(f"{what}: CT {guest.vmid} is locked ({cfg['lock']}), waiting")
            self._sleep(self.settings.poll_interval)

    def create(self, spec: GuestSpec, progress: Progress | None = None,
               before_request: Callable[[int, str], None] | None = None) -> Guest:
        """Create (not start) a container; never twice, even when PVE fails half-way.

        Safe to call from several threads at once (apply's concurrent creates): node and VMID come from
        prepare_creates() or are chosen under a lock; a VMID another client took meanwhile ("CT N already
        exists on node 'x'", or "unable to create CT N - ..." when both passed PVE's first check) is
        replaced by the next free one.
        """
        prepared = self._prepared.pop(spec.name, None)
        if prepared is not None:
            node, vmid = prepared
        else:
            with self._alloc_lock:
                node = self.place(spec)
                self._placed[node] = self._placed.get(node, 0) + (spec.memory_mib << 20)
            vmid = 0
        try:
            return self._create(spec, node, vmid, progress, before_request)
        except BaseException:
            with self._alloc_lock:  # nothing was placed there after all
                self._placed[node] = self._placed.get(node, 0) - (spec.memory_mib << 20)
            raise

    def _create(self, spec: GuestSpec, node: str, vmid: int, progress: Progress | None,
                before_request: Callable[[int, str], None] | None) -> Guest:
        ostemplate = self.ensure_template(node, spec.template, progress)
        what = f"creating {spec.name}"
        last: BackendError | None = None
        # The VMID doubles as an idempotency key: after an ambiguous failure (timeout, lost answer) we
        # send the same VMID again, so a create that did happen makes the retry fail with "already
        # exists" instead of making a second guest. Only a VMID taken by someone else is replaced.
        vmid = vmid or spec.vmid or self._nextid()
        for attempt in range(1, self.settings.retries + 1):
            if self._interrupt.is_set():
                raise KeyboardInterrupt
            if progress:
                progress(f"{what} as CT {vmid} on {node}")
            params = self.create_params(spec, vmid, ostemplate)
            if before_request:
                before_request(vmid, node)
            try:
                upid = self.call("POST", f"/nodes/{node}/lxc", params, safe=False, what=what)
            except BackendError as exc:
                last = exc
                found = self.find_created(node, vmid, spec.name, spec.description)
                if found == "ours":  # the POST went through although the answer was lost
                    guest = Guest(vmid=vmid, name=spec.name, node=node, type="lxc", status="stopped",
                                  tags=list(spec.tags), managed=True)
                    self.wait_unlocked(guest, what, progress)
                    break
                if found == "absent" and not (isinstance(exc, PveCallError) and exc.retryable):
                    raise
                if found == "taken":
                    if spec.vmid:
                        raise BackendError(f"{what}: VMID {vmid} is taken by another guest",
                                           hint="change or remove 'vmid' for this container in the strategy") from None
                    vmid = self._nextid()
                if progress:
                    progress(f"{what}: {exc.message}; retrying (attempt {attempt + 1})")
                self._sleep(self.settings.retry_wait * attempt)
                continue
            self.wait_task(str(upid), what, progress)
            break
        else:
            assert last is not None
            raise last
        return Guest(vmid=vmid, name=spec.name, node=node, type="lxc", status="stopped", tags=list(spec.tags),
                     managed=True, maxmem=spec.memory_mib << 20, maxdisk=spec.disk_gib << 30,
                     cpus=float(spec.cores))

    # --- changing -----------------------------------------------------------------------------

    def update(self, guest: Guest, changes: dict[str, Any], delete: list[str] | None = None) -> list[str]:
        """PUT the changes (absolute values, so safe to repeat); grow `rootfs` through resize.

        Returns the keys PVE left pending (they take effect at the next restart).
        """
        changes = dict(changes)
        size = changes.pop("rootfs", None)
        mp_size = None
        if isinstance(changes.get("mp0"), DataVolume):
            changes["mp0"] = self._new_mp(changes["mp0"])  # a new volume: allocated by the config PUT
        elif isinstance(changes.get("mp0"), GrowTo):
            mp_size = changes.pop("mp0").size  # an existing one grows through resize, as rootfs
        params = dict(changes)
        if delete:
            params["delete"] = ",".join(delete)
        if set(params) == {"digest"}:  # only the disk grows: a digest alone is "no options specified" to PVE
            params = {}
        if params:
            try:
                self.call("PUT", f"{self._ct(guest)}/config", params, safe=True,
                          what=f"updating CT {guest.vmid} ({guest.name})")
            except BackendError as exc:
                # A retried PUT whose first attempt did land fails the digest check; that is success.
                if "detected modified configuration" not in exc.message or not self._has(guest, params, delete):
                    raise
        if size:
            self._resize(guest, "rootfs", str(size))
        if mp_size:
            self._resize(guest, "mp0", str(mp_size))
        if guest.status != "running" or not params:
            return []
        try:
            pending = self.call("GET", f"{self._ct(guest)}/pending", what=f"reading pending changes of {guest.vmid}")
        except BackendError:
            return []
        return sorted(str(p["key"]) for p in pending if "pending" in p or p.get("delete"))

    def _resize(self, guest: Guest, disk: str, size: str) -> None:
        """Grow a disk to an absolute size; "already at specified size" is success, not failure.

        PVE refuses a resize to the size a disk has (pve-container src/PVE/API2/LXC.pm resize_vm, before
        the task and again inside it). When our first request landed but its answer was lost, the retry
        meets exactly that refusal -- the disk did grow.
        """
        what = f"growing the {disk} disk of CT {guest.vmid} to {size}"
        try:
            upid = self.call("PUT", f"{self._ct(guest)}/resize", {"disk": disk, "size": size}, safe=True, what=what)
            self.wait_task(upid, what)  # resize_vm answers "the task ID" (stable-4 to master)
        except (PveCallError, PveTaskError) as exc:
            if exc.meaning != DONE:
                raise
            log.info("%s: PVE says the disk already has that size", what)

    def _has(self, guest: Guest, params: dict[str, Any], delete: list[str] | None) -> bool:
        """True when the guest's config already holds these values (property strings compared as sets)."""
        cfg = self.get_config(guest)
        for k, v in params.items():
            if k in ("digest", "delete"):
                continue
            have, want = str(cfg.get(k, "")), str(v)
            if "=" in want:
                if set(have.split(",")) != set(want.split(",")):
                    return False
            elif have != want:
                return False
        return not any(k in cfg for k in delete or [])

    def _power(self, guest: Guest, action: str, params: dict[str, Any] | None = None,
               done_when: str | None = None, progress: Progress | None = None) -> None:
        what = f"{action} of CT {guest.vmid} ({guest.name})"
        try:
            upid = self.call("POST", f"{self._ct(guest)}/status/{action}", params, safe=False, what=what)
        except BackendError as exc:
            # start/stop are idempotent in effect: if the guest is already where we want it, fine
            if done_when and self._status(guest) == done_when:
                return
            if isinstance(exc, PveCallError) and exc.retryable:
                upid = self.call("POST", f"{self._ct(guest)}/status/{action}", params, safe=False, what=what)
            else:
                raise
        self.wait_task(str(upid), what, progress)

    def _status(self, guest: Guest) -> str | None:
        try:
            cur = self.call("GET", f"{self._ct(guest)}/status/current", what=f"reading the state of {guest.vmid}")
        except BackendError:
            return None
        return str(cur.get("status"))

    def start(self, guest: Guest) -> None:
        self._power(guest, "start", done_when="running")

    def stop(self, guest: Guest) -> None:
        self._power(guest, "stop", done_when="stopped")

    def shutdown(self, guest: Guest, timeout: int = 60) -> None:
        self._power(guest, "shutdown", {"timeout": timeout, "forceStop": True}, done_when="stopped")

    def migrate(self, guest: Guest, target: str, restart: bool = True) -> None:
        """POST .../migrate with restart=1 (pve-container API2/LXC.pm migrate_vm: a running CT needs
        --restart or --online, and LXC has no live migration); waits for the vzmigrate task."""
        what = f"migrating CT {guest.vmid} ({guest.name}) from {guest.node} to {target}"
        params: dict[str, Any] = {"target": target}
        if restart:
            params["restart"] = 1
        upid = self.call("POST", f"{self._ct(guest)}/migrate", params, safe=False, what=what)
        self.wait_task(str(upid), what)

    # --- snapshots (pve-container API2/LXC/Snapshot.pm: each a task under the guest's lock) ---

    def snapshots(self, guest: Guest) -> list[Snapshot]:
        rows = self.call("GET", f"{self._ct(guest)}/snapshot", what=f"listing the snapshots of CT {guest.vmid}")
        out = [Snapshot(str(r["name"]), int(r.get("snaptime") or 0), str(r.get("description") or ""),
                        str(r["parent"]) if r.get("parent") else None)
               for r in rows or [] if r.get("name") != "current"]
        return sorted(out, key=lambda s: (s.snaptime, s.name))

    def snapshot(self, guest: Guest, name: str, description: str = "") -> None:
        what = f"snapshot {name} of CT {guest.vmid} ({guest.name})"
        params: dict[str, Any] = {"snapname": name}
        if description:
            params["description"] = description
        upid = self.call("POST", f"{self._ct(guest)}/snapshot", params, safe=False, what=what)
        self.wait_task(str(upid), what)

    def rollback(self, guest: Guest, name: str, *, start: bool) -> None:
        what = f"rollback of CT {guest.vmid} ({guest.name}) to snapshot {name}"
        upid = self.call("POST", f"{self._ct(guest)}/snapshot/{name}/rollback", {"start": start}, safe=False,
                         what=what)
        self.wait_task(str(upid), what)

    def delete_snapshot(self, guest: Guest, name: str) -> None:
        what = f"deleting snapshot {name} of CT {guest.vmid} ({guest.name})"
        upid = self.call("DELETE", f"{self._ct(guest)}/snapshot/{name}", safe=False, what=what)
        self.wait_task(str(upid), what)

    def destroy(self, guest: Guest) -> None:
        what = f"destroying CT {guest.vmid} ({guest.name})"
        try:
            upid = self.call("DELETE", self._ct(guest), {"purge": True, "destroy-unreferenced-disks": True},
                             safe=False, what=what)
        except BackendError:
            if not any(g.vmid == guest.vmid for g in self.list_guests()):
                return
            raise
        self.wait_task(str(upid), what)

    # --- inside the guest (pct on the node) ---------------------------------------------------

    def _cluster_status(self) -> None:
        """Node addresses and which node we run on, from one GET /cluster/status."""
        with self._status_lock:
            if self._node_ips is not None:
                return
            try:
                rows = self.call("GET", "/cluster/status", what="reading node addresses")
            except BackendError:
                rows = []
            local = [str(r["name"]) for r in rows if r.get("type") == "node" and r.get("local")]
            if local and self._local_name is None:
                self._local_name = local[0]
            self._node_ips = {str(r["name"]): str(r["ip"]) for r in rows
                              if r.get("type") == "node" and r.get("ip")}

    def _local_node(self) -> str | None:
        """The node we run on (pct works directly there); None over https."""
        if self.settings.mode != "local":
            return None
        if self.settings.local_node:
            return self.settings.local_node
        self._cluster_status()
        return self._local_name or socket.gethostname().split(".")[0]

    def _node_address(self, node: str) -> str:
        self._cluster_status()
        assert self._node_ips is not None
        return self._node_ips.get(node, node)

    def _pct_argv(self, guest: Guest, args: list[str]) -> list[str]:
        argv = ["pct", *args]
        if guest.node == self._local_node():
            return argv
        target = f"{self.settings.ssh_user}@{self._node_address(guest.node)}"
        return [*self.settings.ssh_command, target, shlex.join(argv)]

    def _run(self, argv: list[str], what: str, *, input: bytes | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        return run_on_node(argv, what, input=input, timeout=timeout)

    def exec(self, guest: Guest, argv: list[str], *, input: str | None = None, timeout: float = 600) -> ExecResult:
        """Run argv in the guest with a clean environment, on PVE 8 and 9 alike.

        `pct exec` passes the caller's whole environment into the guest unless told `--keep-env 0`
        (pve-container src/PVE/CLI/pct.pm: option since 5.0.9, default 1 with a FIXME to make 0 the
        default in PVE 9), so we always say it. A pct older than that refuses the option before running
        anything.
        """
        what = f"running {argv[0]} in CT {guest.vmid}"
        cmd = self._pct_argv(guest, ["exec", str(guest.vmid), "--keep-env", "0", "--", *argv])
        p = self._run(cmd, what, input=input.encode() if input else None, timeout=timeout)
        stderr = p.stderr.decode(errors="replace")
        if p.returncode == 255 and "Unknown option: keep-env" in stderr:
            raise BackendError(f"{what}: pct on node {guest.node} does not know --keep-env "
                               "(pve-container older than 5.0.9)",
                               hint="update the node (apt full-upgrade); without the option pct would pass "
                                    "this machine's environment into the container")
        return ExecResult(p.returncode, p.stdout.decode(errors="replace"), stderr)

    def has_files(self, guests: list[Guest], path: str, timeout: float = 600,
                  expect: dict[int, str] | None = None) -> dict[int, bool | str]:
        """`test -s PATH` in many containers: one process per node (sh locally, else one ssh), nodes in parallel.

        vmid -> True (there, not empty) / False (absent or empty) / why it cannot be told. With `expect`, a
        container named there is asked `grep -q -s -F -x -e LINE PATH` (check_argv) instead: True only when the
        file holds that exact line; absent, unreadable (grep's 2 without a word, -s) or without it is False.
        LINE is written into the command line, so it must be nothing secret (the RBAC token id is not). One ssh per
        container costs a connection each (10 ms of CPU here, a handshake over a WAN); inside a node's one
        session the checks run HAS_FILES_PER_NODE at a time (`xargs -P`, findutils is Essential on Debian).

        Each check is what `pct exec VMID --keep-env 0 -- test -s PATH` runs after its own checks (pve-container
        src/PVE/CLI/pct.pm exec, 5.0.9 to 6.1.10): `lxc-attach -n VMID --clear-env -- test -s PATH`, called
        directly -- a C program (~6 ms here) instead of a Perl start (~0.3 s a call; 100 containers a node took
        ~4 s 8 at a time, ~30 s one after another). pct's own checks (the config on this node, the container
        running) are where a check cannot be answered, and there lxc-attach itself fails: it has no init pid
        to attach to, says so on stderr and exits 1. So an answer counts only when lxc-attach exits 0 (there)
        or 1 (2 for grep) with nothing on stderr (the check says no); anything else -- and a node without
        lxc-attach -- asks `pct exec` for that container, whose answer and reason are the ones before
        (docs/rbac.md). Neither takes a lock (pct only reads the config). Each result is one short `echo`
        (the error's last line, or pct's "Unknown option: keep-env", cut to 1000 characters), a single write
        below PIPE_BUF, so lines from concurrent checks never mix.
        """
        return self.start_has_files(guests, path, timeout, expect).result()

    @staticmethod
    def check_argv(path: str, line: str | None = None) -> list[str]:
        """What has_files runs in a container: `test -s PATH`, or with `line` whether PATH holds that exact line
        (-F fixed string, -x the whole line, -q no output, -s no word about an absent or unreadable file)."""
        return ["test", "-s", path] if line is None else ["grep", "-q", "-s", "-F", "-x", "-e", line, path]

    @staticmethod
    def check_answer(rc: str | int, err: str, line: bool) -> bool | None:
        """check_argv's answer from its exit status (`line`: it was the grep), or None when the check did not run
        (pct/ssh/lxc-attach failed): 0 yes, 1 no, and grep -s's 2 without a word (an absent or unreadable file) no."""
        rc = str(rc)
        if rc in ("0", "1") or (rc == "2" and line and not err.strip()):
            return rc == "0"
        return None

    def start_has_files(self, guests: list[Guest], path: str, timeout: float = 600,
                        expect: dict[int, str] | None = None) -> FileChecks:
        """has_files started in the background (plan starts it from the guest listing, so the checks run while
        the API is read): `result()` waits for the same answers has_files gives, `cancel()` ends what still runs."""
        by_node: dict[str, list[Guest]] = {}
        for g in guests:
            by_node.setdefault(g.node, []).append(g)
        expect = expect or {}
        # lxc-attach as pct exec --keep-env 0 calls it; its answer is kept when it is the check's own (see has_files)
        fast = ('if command -v lxc-attach >/dev/null 2>&1; then '
                'err=$(lxc-attach -n "$v" --clear-env -- "$@" 2>&1 >/dev/null); rc=$?; '
                'if [ "$rc" = 0 ] || { [ "$rc" -le "$no" ] && [ -z "$err" ]; }; then '
                'echo "pveguard-rc $v $rc"; exit 0; fi; fi; ')
        # pct's Getopt says "Unknown option: keep-env" and then dies "unable to parse option": keep the former
        one = fast + ('err=$(pct exec "$v" --keep-env 0 -- "$@" 2>&1 >/dev/null); rc=$?; '
                      'msg=$(printf %s "$err" | grep -m 1 "Unknown option: keep-env" || printf %s "$err" | tail -n 1); '
                      'echo "pveguard-rc $v $rc $(printf %s "$msg" | cut -c 1-1000)"')
        checks = FileChecks()

        def node_run(node: str, gs: list[Guest]) -> dict[int, bool | str]:
            ids = " ".join(str(g.vmid) for g in gs)
            # each container's command (the expected lines are per container: a `case` on the VMID, shell-quoted)
            # ($no: the highest exit that is the check's "no" -- grep -s says 2 for an absent file, test never)
            cases = "".join(f"{g.vmid}) no=2; set -- {shlex.join(self.check_argv(path, expect[g.vmid]))};; "
                            for g in gs if g.vmid in expect)
            pick = f'v=$1; case "$v" in {cases}*) no=1; set -- {shlex.join(self.check_argv(path))};; esac; '
            script = (f"printf '%s\\n' {ids} | xargs -n 1 -P {HAS_FILES_PER_NODE} "
                      f"sh -c {shlex.quote(pick + one)} pveguard-check")
            try:
                argv = ["sh", "-c", script] if node == self._local_node() else \
                    [*self.settings.ssh_command, f"{self.settings.ssh_user}@{self._node_address(node)}", script]
                p = checks.run(argv, f"checking {path} in {len(gs)} containers on {node}", timeout=timeout)
            except PveguardError as exc:
                return {g.vmid: f"pct exec does not reach it: {exc.message}" for g in gs}
            got: dict[int, bool | str] = {}
            for line in p.stdout.decode(errors="replace").splitlines():
                parts = line.split(" ", 3)
                if len(parts) < 3 or parts[0] != "pveguard-rc" or not parts[1].isdigit():
                    continue
                rc, err = parts[2], (parts[3] if len(parts) > 3 else "").strip()
                if (answer := self.check_answer(rc, err, int(parts[1]) in expect)) is not None:
                    got[int(parts[1])] = answer
                elif "Unknown option: keep-env" in err:
                    got[int(parts[1])] = (f"pct on node {node} does not know --keep-env (pve-container older "
                                          "than 5.0.9): update the node")
                else:
                    got[int(parts[1])] = f"pct exec does not reach it: {err or 'exit ' + rc}"
            failed = (p.stderr.decode(errors="replace").strip().splitlines() or [f"exit {p.returncode}"])[-1]
            return {g.vmid: got.get(g.vmid, f"pct exec does not reach it: {failed}") for g in gs}

        checks.start(node_run, by_node)
        return checks

    def push(self, guest: Guest, local: str, remote: str, mode: int = 0o644) -> None:
        what = f"copying {local} to CT {guest.vmid}:{remote}"
        args = ["push", str(guest.vmid)]
        perms = ["--perms", f"{mode:o}"]
        if guest.node == self._local_node():
            p = self._run(["pct", *args, local, remote, *perms], what)
        else:
            script = (f"t=$(mktemp) && cat > \"$t\" && pct {shlex.join(args)} \"$t\" {shlex.quote(remote)} "
                      f"{shlex.join(perms)}; r=$?; rm -f \"$t\"; exit $r")
            target = f"{self.settings.ssh_user}@{self._node_address(guest.node)}"
            with open(local, "rb") as fh:
                p = self._run([*self.settings.ssh_command, target, script], what, input=fh.read())
        if p.returncode != 0:
            raise BackendError(f"{what} failed: {p.stderr.decode(errors='replace').strip()}")

    def pull(self, guest: Guest, remote: str, local: str) -> None:
        what = f"copying CT {guest.vmid}:{remote} to {local}"
        if guest.node == self._local_node():
            p = self._run(["pct", "pull", str(guest.vmid), remote, local], what)
        else:
            script = (f"t=$(mktemp) && pct pull {guest.vmid} {shlex.quote(remote)} \"$t\" && cat \"$t\"; "
                      f"r=$?; rm -f \"$t\"; exit $r")
            target = f"{self.settings.ssh_user}@{self._node_address(guest.node)}"
            p = self._run([*self.settings.ssh_command, target, script], what)
            if p.returncode == 0:
                with open(local, "wb") as fh:
                    fh.write(p.stdout)
        if p.returncode != 0:
            raise BackendError(f"{what} failed: {p.stderr.decode(errors='replace').strip()}")

    # --- preflight: version, quorum, privileges (doctor, plan, info) ----------------------------

    def version(self) -> dict[str, Any]:
        """GET /version: {'version': '8.4.1', 'release': '8.4', 'repoid': ...}."""
        return dict(self.call("GET", "/version", what="reading the PVE version") or {})

    def quorum(self) -> bool | None:
        """Whether the cluster is quorate (GET /cluster/status); None when a single node has no cluster
        entry or the credentials may not read it."""
        try:
            rows = self.call("GET", "/cluster/status", what="reading the cluster status")
        except PveCallError as exc:
            if exc.status == 403:
                return None
            raise
        cluster = next((r for r in rows or [] if r.get("type") == "cluster"), None)
        return None if cluster is None else bool(int(cluster.get("quorate", 0)))

    def needed_privileges(self) -> list[Need]:
        """Every privilege plan/apply of `specs` need, per ACL path."""
        return needs(self.specs, self.settings.storage, self.settings.template_storage, self.firewall,
                     self.rbac_paths, self.may_migrate)

    def missing_privileges(self) -> dict[str, list[Need]]:
        """The privileges plan/apply of `specs` need and the credentials lack, per ACL path, read with
        GET /access/permissions?path= (PVE's own evaluation, propagation and token separation included)."""
        if self.settings.authid == "root@pam":
            return {}  # PVE lets root@pam do anything (and pvesh would cost a process per path)
        needed = self.needed_privileges()

        def read(path: str) -> tuple[str, dict[str, Any]]:
            got = self.call("GET", "/access/permissions", {"path": path},
                            what=f"reading the privileges of {self.settings.authid} on {path}")
            return path, dict((got or {}).get(path) or {})

        paths = sorted({n.path for n in needed})
        with ThreadPoolExecutor(max_workers=8) as pool:
            have = dict(pool.map(read, paths))
        return lacking(needed, have)

    def require_privileges(self) -> None:
        """Refuse (PolicyRefused) before planning when a privilege is missing: PVE would not fail, it
        would hide guests, and the plan would create containers that exist."""
        missing = self.missing_privileges()
        if missing:
            authid = self.settings.authid
            raise PolicyRefused(describe_missing(authid, missing),
                                hint=grant_hint(authid, missing, self.needed_privileges()))

    def preflight(self) -> list[Preflight]:
        """TLS, connection, version, privileges, nodes/quorum, storages, templates, bridges, VMIDs."""
        from pveguard.backends.pvepreflight import run

        return run(self)

