"""Offsite copies of backup archives: to another directory or to an SFTP server.

Both targets are incremental (a file already there with the same size is skipped) and atomic per
file (upload as ``.<name>.part``, then rename), so an interrupted run leaves no half file under
an archive's name and the next run finishes the job. Nothing is ever deleted at the target.
The SFTP side uses OpenSSH's ``sftp`` in batch mode, with host-key checking on: the target's
host key must be in the given ``known_hosts`` file (or the user's).

The restic repository goes offsite with ``restic copy``
(:meth:`pveguard.backup.hostconfig.HostConfigBackup.copy_to`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pveguard.errors import OperationError, UsageError

__all__ = ["SftpTarget", "SyncResult", "sync_to_directory", "sync_to_sftp"]


@dataclass(frozen=True)
class SyncResult:
    """Names uploaded and names skipped because the target already had them."""

    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class SftpTarget:
    """Where archives go: ``sftp://[user@]host[:port]/absolute/path``."""

    host: str
    path: str
    user: str | None = None
    port: int = 22
    identity_file: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: int = 15

    @classmethod
    def parse(cls, url: str, identity_file: Path | None = None, known_hosts: Path | None = None) -> SftpTarget:
        """Read an ``sftp://`` URL; a clear error for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "sftp" or not parts.hostname or not parts.path or parts.path == "/":
            raise UsageError(
                f"cannot use {url!r} as an SFTP target",
                hint="write sftp://user@host[:port]/absolute/path, e.g. sftp://backup@nas.example:22/srv/pve",
            )
        try:
            port = parts.port or 22
        except ValueError:
            raise UsageError(f"bad port in {url!r}") from None
        return cls(
            host=parts.hostname, path=unquote(parts.path), user=unquote(parts.username) if parts.username else None,
            port=port, identity_file=identity_file, known_hosts=known_hosts,
        )  # fmt: skip

    def sftp_command(self) -> list[str]:
        exe = shutil.which("sftp")
        if exe is None:
            raise OperationError("the sftp client is not installed", hint="apt install openssh-client")
        args = [exe, "-b", "-", "-P", str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}"]  # fmt: skip
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity_file is not None:
            args += ["-o", "IdentitiesOnly=yes", "-i", str(self.identity_file)]
        args.append(f"{self.user}@{self.host}" if self.user else self.host)
        return args

    def __str__(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"sftp://{who}{self.host}:{self.port}{self.path}"


def _quote(path: str) -> str:
    # sftp's batch parser takes double-quoted arguments with backslash escapes.
    if '"' in path or "\n" in path:
        raise UsageError(f"cannot transfer a file whose name contains quotes or newlines: {path!r}")
    return '"' + path.replace("\\", "\\\\") + '"'


def _run_sftp(target: SftpTarget, batch: list[str], timeout: float) -> str:
    try:
        proc = subprocess.run(
            target.sftp_command(), input="\n".join(batch) + "\n", capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise OperationError(f"sftp to {target} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        # ssh ends with "Connection closed"; the line that says why comes before it.
        telling = [
            ln for ln in lines if re.search(r"denied|verification failed|refused|not found|No such|timed out", ln)
        ]
        detail = (telling or lines or [f"exit code {proc.returncode}"])[-1]
        hint = None
        if "Host key verification failed" in proc.stderr or "No ED25519 host key is known" in proc.stderr:
            hint = "add the server's host key to the known_hosts file (ssh-keyscan, then check its fingerprint)"
        elif "Permission denied" in proc.stderr:
            hint = "the server refused the key: install the public key in the target user's authorized_keys"
        elif "Connection refused" in proc.stderr or "timed out" in proc.stderr:
            hint = "check host, port and that the SFTP server is running"
        raise OperationError(f"sftp to {target} failed: {detail}", hint=hint)
    return proc.stdout


_LS_LINE = re.compile(r"^-\S+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+\S+\s+\S+\s+(.+)$")


def remote_sizes(target: SftpTarget, timeout: float = 120) -> dict[str, int]:
    """Regular files in the target directory and their sizes (creates the directory if missing)."""
    # sftp's mkdir is not recursive: create each missing ancestor ("-" = ignore "exists").
    parts = [p for p in target.path.split("/") if p]
    mkdirs = [f"-mkdir {_quote('/' + '/'.join(parts[: i + 1]))}" for i in range(len(parts))]
    out = _run_sftp(target, [*mkdirs, f"ls -ln {_quote(target.path)}"], timeout)
    sizes: dict[str, int] = {}
    for line in out.splitlines():
        m = _LS_LINE.match(line.strip())
        if m:
            sizes[os.path.basename(m.group(2))] = int(m.group(1))
    return sizes


def sync_to_sftp(files: Sequence[Path], target: SftpTarget, timeout: float = 3600) -> SyncResult:
    """Upload ``files`` the target lacks (or holds with another size) into ``target.path``."""
    there = remote_sizes(target)
    batch: list[str] = []
    uploaded: list[str] = []
    skipped: list[str] = []
    for f in files:
        f = Path(f)
        size = _local_size(f)
        if there.get(f.name) == size:
            skipped.append(f.name)
            continue
        part = f"{target.path.rstrip('/')}/.{f.name}.part"
        final = f"{target.path.rstrip('/')}/{f.name}"
        batch += [f"put -p {_quote(str(f))} {_quote(part)}", f"rename {_quote(part)} {_quote(final)}"]
        uploaded.append(f.name)
    if batch:
        _run_sftp(target, batch, timeout)
        after = remote_sizes(target)
        by_name = {Path(f).name: Path(f) for f in files}
        wrong = [n for n in uploaded if after.get(n) != _local_size(by_name[n])]
        if wrong:
            raise OperationError(f"upload to {target} incomplete for: {', '.join(wrong)}", hint="run the sync again")
    return SyncResult(uploaded=tuple(uploaded), skipped=tuple(skipped))


def _local_size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError as exc:
        raise OperationError(f"cannot read {f}: {exc.strerror}") from None


def sync_to_directory(files: Sequence[Path], dest: Path) -> SyncResult:
    """Copy ``files`` into directory ``dest`` (e.g. a mounted NAS share), skipping same-size ones."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OperationError(f"cannot create offsite directory {dest}: {exc.strerror}") from None
    uploaded: list[str] = []
    skipped: list[str] = []
    for f in files:
        f = Path(f)
        target = dest / f.name
        size = _local_size(f)
        if target.exists() and target.stat().st_size == size:
            skipped.append(f.name)
            continue
        part = dest / f".{f.name}.part"
        try:
            shutil.copy2(f, part)
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise OperationError(f"copying {f.name} to {dest} failed: {exc.strerror}") from None
        uploaded.append(f.name)
    return SyncResult(uploaded=tuple(uploaded), skipped=tuple(skipped))


def describe(target: SftpTarget | Path) -> str:
    """Human-readable target (for logs and the ledger)."""
    return str(target) if isinstance(target, SftpTarget) else shlex.quote(str(target))
