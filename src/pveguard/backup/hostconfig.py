"""Host-configuration backups with restic: a local, deduplicated repository of /etc and friends.

Plain parameters (repository, password file, path list, retention) so the strategy model can be
wired in by the caller. Every restic call goes through :class:`Restic`, which adds the repository,
the password file and a cache directory, parses restic's ``--json`` output and turns failures into
:class:`~pveguard.errors.OperationError` with restic's own message.

Retention: host-config snapshots are kept for a duration (default 30 days) with restic's
``forget --keep-within`` (relative to the newest snapshot, as restic defines it), optionally plus
``--keep-*`` counts. restic's ``--keep-*`` are independent rules whose results are united; they are
*not* PVE's first-mark-wins passes (:mod:`pveguard.backup.retention`), so container archives use
that module and host-config snapshots use restic's own rules.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pveguard.backup.retention import KeepPolicy
from pveguard.errors import OperationError, UsageError

__all__ = [
    "DEFAULT_TAG",
    "BackupResult",
    "DiffEntry",
    "ForgetResult",
    "HostConfigBackup",
    "Restic",
    "Snapshot",
    "forget_args",
    "restic_duration",
]

DEFAULT_TAG = "pveguard-hostconfig"

# restic's documented exit code 3: the snapshot was written but some source files were unreadable.
_EXIT_INCOMPLETE = 3


def restic_duration(span: timedelta) -> str:
    """A timedelta as restic's duration syntax (``30d``, ``1d12h``); restic has no minutes."""
    if span <= timedelta(0):
        raise UsageError(f"retention must be positive, got {span}", hint="e.g. 30 days")
    hours = int(span.total_seconds() // 3600)
    if hours * 3600 != span.total_seconds():
        raise UsageError(
            f"restic keeps snapshots by whole hours; {span} is not a whole number of hours",
            hint="use a retention in days or hours, e.g. '30d' or '36h'",
        )
    days, hours = divmod(hours, 24)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "")
    return text


def forget_args(retention: timedelta | None, keep: KeepPolicy | None = None) -> list[str]:
    """``restic forget`` options for a retention duration and/or keep-* counts."""
    args: list[str] = []
    if retention is not None:
        args += ["--keep-within", restic_duration(retention)]
    if keep is not None and not keep.keep_all:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            count = getattr(keep, name)
            if count:
                args += [f"--keep-{name}", str(count)]
    if not args:
        raise UsageError(
            "no retention given: restic would forget every snapshot",
            hint="set a retention (e.g. 30 days) or keep-* counts",
        )
    return args


@dataclass(frozen=True)
class Snapshot:
    """One restic snapshot."""

    id: str
    short_id: str
    time: datetime
    paths: tuple[str, ...]
    hostname: str
    tags: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            id=data["id"],
            short_id=data.get("short_id", data["id"][:8]),
            time=_parse_restic_time(data["time"]),
            paths=tuple(data.get("paths") or ()),
            hostname=data.get("hostname", ""),
            tags=tuple(data.get("tags") or ()),
        )


def _parse_restic_time(text: str) -> datetime:
    # restic writes RFC 3339 with nanoseconds; Python takes at most microseconds.
    head, dot, tail = text.partition(".")
    if dot:
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class BackupResult:
    """What one backup run did."""

    snapshot_id: str
    backed_up: tuple[str, ...]
    skipped_missing: tuple[str, ...]
    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int
    incomplete: bool = False  # restic could not read some files (its exit code 3)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiffEntry:
    """One changed path between two snapshots: ``+`` added, ``-`` removed, ``M`` content, ``T`` type,
    ``U`` metadata."""

    path: str
    modifier: str


@dataclass(frozen=True)
class ForgetResult:
    kept: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass
class Restic:
    """The restic command line bound to one repository."""

    repository: str
    password_file: Path
    cache_dir: Path | None = None
    binary: str = "restic"
    timeout: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def _base(self) -> list[str]:
        exe = shutil.which(self.binary)
        if exe is None:
            raise OperationError(
                f"restic is not installed (looked for {self.binary!r})",
                hint="install it: apt install restic",
            )
        args = [exe, "--repo", self.repository, "--password-file", str(self.password_file)]
        if self.cache_dir is not None:
            args += ["--cache-dir", str(self.cache_dir)]
        return args

    def run(
        self, *args: str, ok_codes: Sequence[int] = (0,), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``restic ARGS``; raise OperationError with restic's message on failure."""
        full_env = {**os.environ, **self.extra_env, **(env or {})}
        # A password in the environment would win over --password-file; never let it.
        full_env.pop("RESTIC_PASSWORD", None)
        full_env.pop("RESTIC_PASSWORD_COMMAND", None)
        cmd = [*self._base(), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OperationError(
                f"restic {args[0]} did not finish within {self.timeout:.0f} s",
                hint="check the repository with 'restic check' and for stale locks with 'restic unlock'",
            ) from None
        if proc.returncode not in ok_codes:
            message = _restic_error(proc.stderr) or f"exit code {proc.returncode}"
            raise OperationError(f"restic {args[0]} failed for {self.repository}: {message}", hint=_hint(message))
        return proc

    def json_lines(self, *args: str, ok_codes: Sequence[int] = (0,)) -> tuple[list[dict[str, Any]], str, int]:
        """Run with ``--json``; return the JSON objects of stdout, stderr and the exit code."""
        proc = self.run("--json", *args, ok_codes=ok_codes)
        objects: list[dict[str, Any]] = []
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith(("{", "[")):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, list):
                    objects.extend(v for v in value if isinstance(v, dict))
                elif isinstance(value, dict):
                    objects.append(value)
        return objects, proc.stderr, proc.returncode


def _restic_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Fatal:"):
            return ln.removeprefix("Fatal:").strip()
    return lines[-1] if lines else ""


def _hint(message: str) -> str | None:
    lowered = message.lower()
    if "wrong password" in lowered or "no key found" in lowered:
        return "the password file does not open this repository; use the file it was created with"
    if "repository does not exist" in lowered or "unable to open config file" in lowered:
        return "initialise the repository first (HostConfigBackup.init / 'pveguard backup host-config init')"
    if "locked" in lowered:
        return "another restic run holds a lock; wait for it, or remove a stale lock with 'restic unlock'"
    return None


class HostConfigBackup:
    """Back up, prune, list, compare and restore host configuration in one restic repository."""

    def __init__(self, restic: Restic, tag: str = DEFAULT_TAG, hostname: str | None = None,
                 ledger_anchor: Path | None = None) -> None:
        self.restic = restic
        self.tag = tag
        self.hostname = hostname or os.uname().nodename
        # The audit ledger's anchor file (every head it reached): each snapshot carries it, so a
        # restore point can show that the ledger was cut short after it was taken
        # ('pveguard audit-log verify --anchor RESTORED-FILE').
        self.ledger_anchor = ledger_anchor.absolute() if ledger_anchor is not None else None

    # -- repository ----------------------------------------------------------------------------

    def is_initialised(self) -> bool:
        """True when the repository exists and opens with the password file."""
        repo = Path(self.restic.repository)
        if ":" not in self.restic.repository and not (repo / "config").exists():
            return False
        try:
            self.restic.run("cat", "config")
        except OperationError:
            return False
        return True

    def init(self) -> bool:
        """Create the password file (random, mode 0600) and the repository if missing.

        Returns True when a repository was created. An existing repository is left alone.
        """
        pw = self.restic.password_file
        if not pw.exists():
            pw.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        if self.is_initialised():
            return False
        repo = Path(self.restic.repository)
        if ":" not in self.restic.repository and repo.exists() and any(repo.iterdir()):
            raise UsageError(
                f"{repo} exists, is not empty and is not a restic repository this password opens",
                hint="choose an empty directory or the password file the repository was created with",
            )
        # Repository format 2 compresses (zstd); config files compress very well.
        self.restic.run("init", "--repository-version", "2")
        return True

    # -- backup --------------------------------------------------------------------------------

    def backup(self, paths: Iterable[str], time: datetime | None = None) -> BackupResult:
        """Back up the existing ones of ``paths``; missing paths are skipped and reported."""
        wanted = [str(p) for p in paths]
        relative = [p for p in wanted if not os.path.isabs(p)]
        if relative:
            raise UsageError(f"host-config paths must be absolute: {', '.join(relative)}")
        present = [p for p in wanted if os.path.lexists(p)]
        missing = [p for p in wanted if not os.path.lexists(p)]
        if not present:
            raise UsageError(
                f"none of the host-config paths exists: {', '.join(wanted) or '(empty list)'}",
                hint="check the backup.host_config.paths list in the strategy",
            )
        anchor = self.ledger_anchor
        if anchor is not None and anchor.exists() and not any(anchor.is_relative_to(p) for p in present):
            present.append(str(anchor))
        args = ["backup", "--tag", self.tag, "--host", self.hostname]
        if time is not None:
            args += ["--time", time.astimezone().strftime("%Y-%m-%d %H:%M:%S")]
        objects, stderr, code = self.restic.json_lines(*args, "--", *present, ok_codes=(0, _EXIT_INCOMPLETE))
        summary = next((o for o in objects if o.get("message_type") == "summary"), None)
        if summary is None or not summary.get("snapshot_id"):
            raise OperationError(f"restic backup wrote no snapshot: {_restic_error(stderr) or 'no summary'}")
        warnings = tuple(
            str(o.get("error", {}).get("message") if isinstance(o.get("error"), dict) else o.get("error"))
            + (f" ({o['item']})" if o.get("item") else "")
            for o in objects
            if o.get("message_type") == "error"
        )
        return BackupResult(
            snapshot_id=str(summary["snapshot_id"]),
            backed_up=tuple(present),
            skipped_missing=tuple(missing),
            files_new=int(summary.get("files_new", 0)),
            files_changed=int(summary.get("files_changed", 0)),
            files_unmodified=int(summary.get("files_unmodified", 0)),
            data_added=int(summary.get("data_added", 0)),
            incomplete=code == _EXIT_INCOMPLETE,
            warnings=warnings,
        )

    # -- listing, diff ---------------------------------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        """This host's host-config snapshots, oldest first."""
        objects, _, _ = self.restic.json_lines("snapshots", "--tag", self.tag, "--host", self.hostname)
        return sorted((Snapshot.from_json(o) for o in objects if "id" in o), key=lambda s: s.time)

    def diff(self, first: str, second: str) -> list[DiffEntry]:
        """What changed from snapshot ``first`` to ``second`` (ids or unique prefixes)."""
        objects, _, _ = self.restic.json_lines("diff", first, second)
        return [
            DiffEntry(path=str(o["path"]), modifier=str(o.get("modifier", "?")))
            for o in objects
            if o.get("message_type") == "change" and "path" in o
        ]

    # -- retention -------------------------------------------------------------------------------

    def forget(self, retention: timedelta | None, keep: KeepPolicy | None = None, prune: bool = True) -> ForgetResult:
        """Forget snapshots outside the policy (and prune unreferenced data)."""
        args = ["forget", "--tag", self.tag, "--host", self.hostname, "--group-by", "host,tags"]
        args += forget_args(retention, keep)
        if prune:
            args.append("--prune")
        objects, _, _ = self.restic.json_lines(*args)
        kept: list[str] = []
        removed: list[str] = []
        for group in objects:
            kept += [s["id"] for s in group.get("keep") or []]
            removed += [s["id"] for s in group.get("remove") or []]
        return ForgetResult(kept=tuple(kept), removed=tuple(removed))

    # -- restore ---------------------------------------------------------------------------------

    def restore(self, snapshot: str, target: Path, include: Sequence[str] = (), force: bool = False) -> Path:
        """Restore the whole snapshot, or only ``include`` paths, under directory ``target``.

        Files land at ``target/<original absolute path>``. A non-empty ``target`` is refused
        unless ``force`` (restic would overwrite what is there).
        """
        target = Path(target)
        if target.exists() and not target.is_dir():
            raise UsageError(f"{target} exists and is not a directory", hint="choose an empty or new directory")
        if target.resolve() == Path("/"):
            raise UsageError("refusing to restore over /", hint="restore into a directory and copy back")
        if target.exists() and any(target.iterdir()) and not force:
            raise UsageError(
                f"{target} is not empty; restoring there could overwrite files",
                hint="choose an empty or new directory",
            )
        target.mkdir(parents=True, exist_ok=True)
        args = ["restore", snapshot, "--target", str(target)]
        for path in include:
            args += ["--include", path]
        self.restic.run(*args)
        if include and not any((target / p.lstrip("/")).exists() for p in include):
            raise OperationError(
                f"snapshot {snapshot} holds none of {', '.join(include)}",
                hint="list what changed with diff, or restore the whole snapshot",
            )
        return target

    # -- verification, offsite -------------------------------------------------------------------

    def check(self, read_data_subset: str | None = None) -> str:
        """``restic check`` (optionally reading a subset of the data, e.g. ``5%``); returns its report."""
        args = ["check"]
        if read_data_subset:
            args += ["--read-data-subset", read_data_subset]
        proc = self.restic.run(*args)
        return proc.stdout

    def copy_to(self, other: Restic) -> list[str]:
        """Copy this host's host-config snapshots into ``other`` (initialised there if needed).

        restic copy skips snapshots the destination already holds, so re-running is cheap.
        """
        dest = HostConfigBackup(other, tag=self.tag, hostname=self.hostname)
        if not dest.is_initialised():
            pw = other.password_file
            if not pw.exists():
                raise UsageError(f"offsite password file {pw} does not exist", hint="create it before the first copy")
            # Same chunker parameters as the source keep deduplication working across the copy.
            other.run(
                "init", "--repository-version", "2", "--copy-chunker-params",
                "--from-repo", self.restic.repository, "--from-password-file", str(self.restic.password_file),
            )  # fmt: skip
        before = {s.id for s in dest.snapshots()}
        other.run(
            "copy", "--from-repo", self.restic.repository, "--from-password-file", str(self.restic.password_file),
            "--tag", self.tag, "--host", self.hostname,
        )  # fmt: skip
        return [s.id for s in dest.snapshots() if s.id not in before]
