"""Register the apt guard, remove it, report its state and notice when someone tampered with it.

`guard install` writes four things and remembers their SHA-256 in the state store:
* `/etc/apt/apt.conf.d/05pveguard`: the hook as one executable path, protocol version 3 on fd 20;
* `/usr/local/lib/pveguard/apt-hook`: the launcher apt runs (= `pveguard apt-hook` without the
  command line's start-up cost);
* `/etc/pveguard/installation_policy.conf`: the policy as KEY=VALUE, from the strategy;
* `/etc/pve/installation_policy.conf`: the same, cluster-wide, when `/etc/pve` exists (PVE).
`guard_findings()` compares them with what was installed; a changed or removed file is reported
(by `guard status` and the audit) and recorded in the ledger once, when first seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pveguard
from pveguard.context import LEDGER_KEY_ENV, AppContext
from pveguard.errors import OperationError
from pveguard.guard import approvals as approvals_mod
from pveguard.guard import hook
from pveguard.guard.decide import Policy, PolicyFileError, parse_policy, render_policy
from pveguard.strategy.models import Strategy

APT_CONF = Path("/etc/apt/apt.conf.d/05pveguard")
LAUNCHER = Path("/usr/local/lib/pveguard/apt-hook")

Role = Literal["apt-conf", "launcher", "policy", "cluster-policy"]


@dataclass(frozen=True)
class GuardPaths:
    """The guard's files under a root directory (`/` on a host; a temporary tree in unit tests)."""

    root: Path = Path("/")

    def _p(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def apt_conf(self) -> Path:
        return self._p(APT_CONF)

    @property
    def launcher(self) -> Path:
        return self._p(LAUNCHER)

    @property
    def policy(self) -> Path:
        return self._p(hook.POLICY_FILE)

    @property
    def cluster_policy(self) -> Path:
        return self._p(hook.CLUSTER_POLICY_FILE)

    @property
    def break_glass(self) -> Path:
        return self._p(hook.BREAK_GLASS_FILE)

    def hook_env(self) -> hook.HookEnv:
        return hook.HookEnv(policy_file=self.policy, cluster_policy_file=self.cluster_policy,
                            break_glass_file=self.break_glass)


@dataclass(frozen=True)
class PlannedFile:
    path: Path
    role: Role
    content: str
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class GuardFinding:
    """One problem with the installed guard, for `guard status` and the host audit."""

    kind: Literal["not-installed", "changed", "removed", "unreadable", "disabled", "weakened", "unverified"]
    path: str
    message: str
    hint: str
    severity: Literal["warning", "critical"] = "critical"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message, "hint": self.hint,
                "severity": self.severity}


# --- rendering ------------------------------------------------------------------------------------


def policy_from_strategy(strategy: Strategy, state_dir: Path, ledger_key_file: str | None) -> Policy:
    ip = strategy.installation_policy
    return Policy(
        allow_core_only=ip.allow_core_only, require_approval=ip.require_approval,
        container_first=ip.container_first, core_roots=strategy.core_roots(),
        extra_allowed=tuple(ip.extra_allowed), approval_ttl=max(1, int(ip.approval_ttl.total_seconds())),
        state_dir=str(state_dir.resolve()), ledger_key_file=ledger_key_file or "",
        containers=tuple((c.name, tuple(c.components)) for c in strategy.containers),
    )


def render_apt_conf(launcher: Path = LAUNCHER) -> str:
    p = str(launcher)
    return (
        "// pveguard apt guard, written by 'pveguard guard install'; remove it with 'pveguard guard uninstall'.\n"
        "// One executable path (apt looks the protocol options up by the command's first word),\n"
        "// protocol version 3 on fd 20 so the terminal stays on stdin. Do not edit: tamper detection.\n"
        f'DPkg::Pre-Install-Pkgs {{"{p}";}};\n'
        f'DPkg::Tools::Options::{p} "";\n'
        f'DPkg::Tools::Options::{p}::Version "3";\n'
        f'DPkg::Tools::Options::{p}::InfoFD "20";\n'
    )


def render_launcher(python: str | None = None, package_parent: str | None = None,
                    policy_file: Path | None = None) -> str:
    """The launcher script: the interpreter running pveguard now, isolated (-I: no PYTHONPATH, no
    user site, no current directory on the path), with pveguard's own location on sys.path.

    policy_file: read this policy instead of the installed one (the preview launcher `guard check`
    writes into a temporary directory when the guard is not installed; never an environment
    variable, which anyone starting apt could set)."""
    python = python or sys.executable
    parent = package_parent or str(Path(pveguard.__file__).resolve().parent.parent)
    # The installed launcher's text stays as it was (guard status compares its SHA-256).
    imports, call = "    from pveguard.guard.hook import main\n", "main()"
    if policy_file is not None:
        imports = "    from pathlib import Path\n    from pveguard.guard.hook import HookEnv, main\n"
        call = (f"main(paths=HookEnv(policy_file=Path({str(policy_file)!r}), "
                f"cluster_policy_file=Path({str(policy_file)!r})))")
    return (
        f"#!{python} -IS\n"
        "# pveguard apt hook launcher, written by 'pveguard guard install'. apt runs it as a\n"
        "# DPkg::Pre-Install-Pkgs hook; it is 'pveguard apt-hook' without the command line's start-up\n"
        "# cost. Do not edit: 'pveguard guard status' reports changes.\n"
        "import sys\n"
        f"sys.path.insert(0, {parent!r})\n"
        "try:\n"
        f"{imports}"
        "except Exception as exc:  # pveguard itself is gone or broken: fail closed, with the way out\n"
        "    import json, os, time\n"
        f"    glass = {str(hook.BREAK_GLASS_FILE)!r}\n"
        "    if os.path.isfile(glass) and not os.path.islink(glass):\n"
        "        os.unlink(glass)\n"
        f"        with open({str(hook.BREAK_GLASS_LOG)!r}, 'a') as log:\n"
        "            log.write(json.dumps({'ts': time.time(), 'failure': repr(exc)}) + '\\n')\n"
        "        sys.stderr.write('W: pveguard: cannot load the apt guard; BREAK-GLASS consumed, allowing once\\n')\n"
        "        sys.exit(0)\n"
        "    sys.stderr.write(f'E: pveguard: cannot load the apt guard ({type(exc).__name__}: {exc}); refusing '\n"
        "                     '(fail closed). Reinstall pveguard and run pveguard guard install, or touch '\n"
        "                     f'{glass} to let one apt run through.\\n')\n"
        "    sys.exit(2)\n"
        f"sys.exit({call})\n"
    )


def plan(ctx: AppContext, paths: GuardPaths | None = None) -> list[PlannedFile]:
    """The files `guard install` writes, from the strategy (defaults when there is no strategy file)."""
    paths = paths or GuardPaths()
    strategy = ctx.strategy_or_default()
    key_file = os.environ.get(LEDGER_KEY_ENV) or strategy.security.ledger_hmac_key_file
    policy_text = render_policy(policy_from_strategy(strategy, ctx.state_dir, key_file))
    files = [
        PlannedFile(paths.launcher, "launcher", render_launcher(), 0o755),
        PlannedFile(paths.policy, "policy", policy_text, 0o644),
        PlannedFile(paths.apt_conf, "apt-conf", render_apt_conf(LAUNCHER), 0o644),
    ]
    if paths.cluster_policy.parent.is_dir():
        files.insert(2, PlannedFile(paths.cluster_policy, "cluster-policy", policy_text, 0o640))
    return files


# --- install / uninstall --------------------------------------------------------------------------


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.pveguard-tmp")
    tmp.write_text(content, encoding="utf-8")
    with contextlib.suppress(OSError):  # /etc/pve (pmxcfs) has fixed modes
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(ctx: AppContext, *, dry_run: bool = False, paths: GuardPaths | None = None) -> list[dict[str, Any]]:
    """Write (or refresh) the guard's files; returns what changed per file. Launcher and policy are
    written before the apt snippet, so apt never runs a hook whose files are not there yet."""
    paths = paths or GuardPaths()
    files = plan(ctx, paths)
    report = []
    for f in files:
        before = _sha(f.path)
        state = "unchanged" if before == f.sha256 else ("updated" if before else "created")
        report.append({"path": str(f.path), "role": f.role, "state": state, "before_sha256": before,
                       "after_sha256": f.sha256})
    if dry_run:
        return report
    try:
        for f in files:
            _write(f.path, f.content, f.mode)
    except OSError as exc:
        raise OperationError(f"cannot write {exc.filename}: {exc.strerror}",
                             hint="run 'pveguard guard install' as root") from None
    store = approvals_mod.open_tables(ctx.store)
    now = time.time()
    with store.transaction() as conn:
        conn.execute("DELETE FROM guard_file")
        for f in files:
            conn.execute("INSERT INTO guard_file(path, role, sha256, installed_at, reported) VALUES(?, ?, ?, ?, NULL)",
                         (str(f.path), f.role, f.sha256, now))
    # Drop the core cache: new roots or extras must take effect at once (the key covers them too).
    (ctx.state_dir / hook.CORE_CACHE_NAME).unlink(missing_ok=True)
    (ctx.state_dir / hook.CORE_BASE_NAME).unlink(missing_ok=True)
    ctx.record("guard.install", str(paths.apt_conf), files=report)
    return report


def uninstall(ctx: AppContext, *, dry_run: bool = False, paths: GuardPaths | None = None) -> list[dict[str, Any]]:
    """Remove the guard's files (apt snippet first, so apt never runs a half-removed hook)."""
    paths = paths or GuardPaths()
    candidates = [(paths.apt_conf, "apt-conf"), (paths.launcher, "launcher"), (paths.policy, "policy"),
                  (paths.cluster_policy, "cluster-policy")]
    report = [{"path": str(p), "role": role, "state": "removed" if p.exists() else "absent",
               "before_sha256": _sha(p)} for p, role in candidates]
    if dry_run:
        return report
    try:
        for p, _role in candidates:
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise OperationError(f"cannot remove {exc.filename}: {exc.strerror}",
                             hint="run 'pveguard guard uninstall' as root") from None
    store = approvals_mod.open_tables(ctx.store)
    with store.transaction() as conn:
        conn.execute("DELETE FROM guard_file")
    ctx.record("guard.uninstall", str(paths.apt_conf), files=report)
    return report


# --- status and tamper detection --------------------------------------------------------------------


@dataclass
class FileState:
    path: str
    role: str
    expected_sha256: str
    actual_sha256: str | None
    state: Literal["intact", "changed", "removed", "unreadable"]


@dataclass
class GuardState:
    installed: bool
    files: list[FileState] = field(default_factory=list)
    findings: list[GuardFinding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.installed and not self.findings


def _file_states(ctx: AppContext) -> list[FileState]:
    store = approvals_mod.open_tables(ctx.store)
    out = []
    for row in store.conn.execute("SELECT path, role, sha256 FROM guard_file WHERE role != 'check' ORDER BY path"):
        p = Path(row["path"])
        actual: str | None
        try:
            actual = hashlib.sha256(p.read_bytes()).hexdigest()
            state: Literal["intact", "changed", "removed", "unreadable"] = \
                "intact" if actual == row["sha256"] else "changed"
        except FileNotFoundError:
            actual, state = None, "removed"
        except OSError:
            actual, state = None, "unreadable"
        out.append(FileState(str(p), row["role"], row["sha256"], actual, state))
    return out


def guard_findings(ctx: AppContext, paths: GuardPaths | None = None) -> list[GuardFinding]:
    """What is wrong with the installed guard (empty when intact). Changed, removed or unreadable
    files, and an apt configuration that no longer runs the hook, are recorded in the ledger the first
    time they are seen (`guard.tamper`); `not-installed` is reported but is not tampering."""
    paths = paths or GuardPaths()
    states = _file_states(ctx)
    if not states:
        return [GuardFinding("not-installed", str(paths.apt_conf), "the apt install guard is not installed",
                             "run 'pveguard guard install'", "warning")]
    findings: list[GuardFinding] = []
    store = ctx.store
    for s in states:
        if s.state == "intact":
            continue
        what = {"changed": "was changed since 'pveguard guard install' wrote it",
                "removed": "was removed", "unreadable": "cannot be read"}[s.state]
        finding = GuardFinding(s.state, s.path, f"the guard's {s.role} file {s.path} {what}",
                               "check the ledger for who did it ('pveguard audit-log show --action guard'), "
                               "then restore the files with 'pveguard guard install'")
        findings.append(finding)
        marker = f"{s.state}:{s.actual_sha256}"
        row = store.conn.execute("SELECT reported FROM guard_file WHERE path = ?", (s.path,)).fetchone()
        if row is not None and row["reported"] != marker:
            with store.transaction() as conn:
                conn.execute("UPDATE guard_file SET reported = ? WHERE path = ?", (marker, s.path))
            ctx.record("guard.tamper", s.path, role=s.role, state=s.state, expected_sha256=s.expected_sha256,
                       actual_sha256=s.actual_sha256)
    if paths.root == Path("/") and not any(f.role == "apt-conf" and f.state != "intact" for f in states):
        for finding in apt_config_findings(paths):
            findings.append(finding)
            if finding.kind != "unverified":
                _record_once(ctx, "apt-config", finding.message)
    return findings


def _record_once(ctx: AppContext, key: str, message: str) -> None:
    store = approvals_mod.open_tables(ctx.store)
    marker = hashlib.sha256(message.encode()).hexdigest()
    path = f"<{key}>"
    row = store.conn.execute("SELECT reported FROM guard_file WHERE path = ?", (path,)).fetchone()
    if row is not None and row["reported"] == marker:
        return
    with store.transaction() as conn:
        conn.execute("INSERT INTO guard_file(path, role, sha256, installed_at, reported) VALUES(?, 'check', '', ?, ?) "
                     "ON CONFLICT(path) DO UPDATE SET reported = excluded.reported", (path, time.time(), marker))
    ctx.record("guard.tamper", key, state="disabled", message=message)


_REREGISTER = "then run 'pveguard guard install' (it rewrites only its own file)"


def apt_config_findings(paths: GuardPaths | None = None) -> list[GuardFinding]:
    """How apt's effective configuration (`apt-config dump`, apt's own parser, so every snippet, its
    order and `#clear` count) runs the guard: not at all (`disabled`), in a way that changes what it
    receives or lets a refusal pass (`weakened`), or cannot be told (`unverified`)."""
    paths = paths or GuardPaths()
    if shutil.which("apt-config") is None:
        return [GuardFinding("unverified", str(paths.apt_conf), "cannot ask apt whether it runs the guard: "
                             "apt-config is not installed", "install apt (the guard only works through apt)",
                             "warning")]
    try:
        proc = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [GuardFinding("unverified", str(paths.apt_conf), f"cannot ask apt whether it runs the guard: {exc}",
                             "run 'apt-config dump' by hand and look for the hook", "warning")]
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return [GuardFinding("unverified", str(paths.apt_conf),
                             f"apt cannot read its own configuration ({last[0]}), so whether it runs the guard "
                             "is unknown", "fix the file apt names; apt itself refuses to run until then",
                             "warning")]
    return weakening_findings(proc.stdout, _apt_conf_files(paths), str(paths.apt_conf))


def weakening_findings(dump: str, conf_files: dict[str, str], own_file: str = str(APT_CONF)) -> list[GuardFinding]:
    """Findings from the text of `apt-config dump`; `conf_files` (path -> text) name the culprits."""
    hooks: list[str] = []
    options: dict[str, str] = {}
    prefix = f"dpkg::tools::options::{LAUNCHER}::".lower()
    for line in dump.splitlines():
        key, _, value = line.partition(" ")
        value = _dump_value(value)
        low = key.lower()
        if low == "dpkg::pre-install-pkgs::":
            hooks.append(value)
        elif low.startswith(prefix):
            options[low[len(prefix):]] = value
    launcher = str(LAUNCHER)
    suspects = _suspects(conf_files, own_file)
    named = f" (set in {', '.join(suspects)})" if suspects else ""
    hint = (f"remove or fix the overriding lines{named or ' in /etc/apt/apt.conf.d/ or /etc/apt/apt.conf'}, "
            + _REREGISTER)
    out: list[GuardFinding] = []
    wrapped = [h for h in hooks if h != launcher and launcher in h]
    if launcher not in hooks:
        if wrapped:
            out.append(GuardFinding(
                "weakened", own_file, f"apt runs the guard only through {wrapped[0]!r}{named}: that command, not "
                "the guard, decides apt's exit status (and apt looks the protocol options up by its first word)",
                hint))
        else:
            out.append(GuardFinding(
                "disabled", own_file, "apt does not run the guard: DPkg::Pre-Install-Pkgs in 'apt-config dump' does "
                f"not list {launcher}{named} (e.g. a later file did '#clear DPkg::Pre-Install-Pkgs;')", hint))
        return out
    version, infofd = options.get("version"), options.get("infofd")
    if version != "3" or infofd != "20":
        effect = ("apt then sends only file names, so the hook fails closed on every install"
                  if version in (None, "", "1") or not (version or "").isdigit() else
                  "the guard still decides, but not as 'guard install' registered it")
        out.append(GuardFinding(
            "weakened", own_file, f"apt runs the guard with Version={version or '(unset: 1)'} "
            f"InfoFD={infofd or '(unset: 0, stdin)'} instead of 3 and 20{named}: {effect}", hint))
    return out


def _dump_value(text: str) -> str:
    """A value as `apt-config dump` prints it: `"text";` with `\\` and `\"` escaped."""
    text = text.strip()
    if text.endswith(";"):
        text = text[:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return text.replace('\\"', '"').replace("\\\\", "\\")


def _apt_conf_files(paths: GuardPaths) -> dict[str, str]:
    """apt's configuration files as apt reads them (the main file, then the parts directory)."""
    etc = paths.root / "etc/apt"
    files = [etc / "apt.conf"]
    with contextlib.suppress(OSError):
        files += sorted(p for p in (etc / "apt.conf.d").iterdir() if p.is_file())
    out: dict[str, str] = {}
    for f in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            out["/" + str(f.relative_to(paths.root))] = f.read_text(encoding="utf-8")
    return out


_CLEARS_DPKG = re.compile(r"#clear\s+dpkg(::(pre-install-pkgs|tools(::options)?))?\s*;", re.IGNORECASE)


def _suspects(conf_files: dict[str, str], own_file: str) -> list[str]:
    """Files other than the guard's own that name the hook (its list entry or its options) or clear
    the DPkg tree it lives in."""
    launcher = str(LAUNCHER)
    return [path for path, text in conf_files.items()
            if path != own_file and (launcher in text or _CLEARS_DPKG.search(text))]


def status(ctx: AppContext, paths: GuardPaths | None = None, recent: int = 10) -> dict[str, Any]:
    """Everything `guard status` shows, as one JSON-able mapping."""
    paths = paths or GuardPaths()
    findings = guard_findings(ctx, paths)
    states = _file_states(ctx)
    installed = bool(states)
    policy: dict[str, Any] | None = None
    policy_error = None
    policy_file = hook.policy_path(paths.hook_env())
    try:
        p = parse_policy(policy_file.read_text(encoding="utf-8"))
        policy = {"file": str(policy_file), "allow_core_only": p.allow_core_only,
                  "require_approval": p.require_approval, "container_first": p.container_first,
                  "core_roots": list(p.core_roots), "extra_allowed": list(p.extra_allowed),
                  "approval_ttl_seconds": p.approval_ttl, "state_dir": p.state_dir}
    except (OSError, UnicodeDecodeError, PolicyFileError) as exc:
        policy_error = f"{policy_file}: {exc}"
    decisions = []
    for e in ctx.ledger.entries(action="guard", limit=200)[::-1]:
        if e.action not in ("guard.decision", "guard.break_glass", "guard.check"):
            continue
        d = e.details
        decisions.append({"seq": e.seq, "ts": e.ts, "action": e.action, "actor": e.actor,
                          "verdict": d.get("verdict", "break-glass" if e.action == "guard.break_glass" else "")
                          + (" (check only)" if e.action == "guard.check" else ""),
                          "packages": [p.get("package") for p in d.get("packages", [])],
                          "refused": d.get("refused", []), "command_line": d.get("command_line", "")})
        if len(decisions) >= recent:
            break
    return {
        "installed": installed,
        "intact": installed and not findings,
        "files": [s.__dict__ for s in states if not s.path.startswith("<")],
        "findings": [f.as_dict() for f in findings],
        "policy": policy,
        "policy_error": policy_error,
        "break_glass_armed": paths.break_glass.exists(),
        "active_approvals": len(approvals_mod.listing(ctx.store)),
        "recent_decisions": decisions,
    }
