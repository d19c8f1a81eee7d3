"""Verify vzdump archives by reading them: decompression test, tar listing, size and SHA-256.

PVE stores no checksum for file-based vzdump archives and has no verify step (nothing in PVE's
``PVE/VZDump.pm`` or ``PVE/VZDump/LXC.pm`` checks an archive after writing it), so
this is pveguard's own check, not PBS-grade chunk verification. One read of the file feeds three
checks at once: the bytes are hashed (SHA-256) and streamed into the decompressor (``zstd -d``,
``gzip -d``, ``lzop -d``, ``bzip2 -d``; zstd and gzip verify their own checksums), whose output is
listed by ``tar -t``. A catalogue (JSON, one per dump directory) remembers size and SHA-256 of
each archive from its first verification, so later changes are found even in a file that still
decompresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pveguard.backup.archive import parse_archive_name
from pveguard.errors import OperationError

__all__ = ["CATALOGUE_NAME", "Catalogue", "VerifyResult", "verify_archive", "verify_directory"]

CATALOGUE_NAME = ".pveguard-catalogue.json"

_DECOMPRESSORS = {
    "zst": ["zstd", "-d", "-c", "-q"],
    "gz": ["gzip", "-d", "-c"],
    "lzo": ["lzop", "-d", "-c"],
    "bz2": ["bzip2", "-d", "-c"],
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerifyResult:
    """The outcome for one archive; ``problems`` is empty when it is good."""

    filename: str
    ok: bool
    size: int
    sha256: str
    entries: int
    problems: tuple[str, ...]
    checked_at: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return data


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        package = {"zstd": "zstd", "lzop": "lzop", "gzip": "gzip", "bzip2": "bzip2", "tar": "tar"}[name]
        raise OperationError(f"{name} is not installed, so archives cannot be checked", hint=f"apt install {package}")
    return exe


def _feed(src: IO[bytes], dst: IO[bytes] | None, digest: Any, counter: list[int], errors: list[str]) -> None:
    try:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            counter[0] += len(chunk)
            if dst is not None:
                try:
                    dst.write(chunk)
                except BrokenPipeError:
                    dst = None  # the reader gave up; keep hashing, its exit status tells why
    except OSError as exc:
        errors.append(f"read error: {exc.strerror or exc}")
    finally:
        if dst is not None:
            with contextlib.suppress(BrokenPipeError):
                dst.close()


def verify_archive(path: Path, expected: dict[str, Any] | None = None) -> VerifyResult:
    """Check one archive. ``expected`` (catalogue entry with ``size``/``sha256``) adds a comparison."""
    path = Path(path)
    info = parse_archive_name(path.name)
    problems: list[str] = []
    if info is None:
        raise OperationError(f"{path.name} is not a vzdump archive name", hint="expected vzdump-<type>-<id>-...")
    is_tar = info.extension.startswith(("tar", "tgz"))
    digest = hashlib.sha256()
    counter = [0]
    read_errors: list[str] = []
    entries = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise OperationError(f"cannot read {path}: {exc.strerror}") from None
    with fh, tempfile.TemporaryFile() as dec_err, tempfile.TemporaryFile() as tar_err:
        procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        stdin_target: IO[bytes] | None = None
        listing: IO[bytes] | None = None
        if info.compression:
            argv = _DECOMPRESSORS[info.compression]
            dec = subprocess.Popen(
                [_tool(argv[0]), *argv[1:]], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if is_tar else subprocess.DEVNULL, stderr=dec_err,
            )  # fmt: skip
            procs.append((argv[0], dec, dec_err))
            stdin_target = dec.stdin
            upstream = dec.stdout
        else:
            upstream = None
        if is_tar:
            tar = subprocess.Popen(
                [_tool("tar"), "-t", "-f", "-"],
                stdin=upstream if upstream is not None else subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=tar_err,
            )  # fmt: skip
            if upstream is not None:
                upstream.close()  # tar owns it now; lets the decompressor see SIGPIPE if tar quits
            else:
                stdin_target = tar.stdin
            procs.append(("tar", tar, tar_err))
            listing = tar.stdout
        writer = threading.Thread(target=_feed, args=(fh, stdin_target, digest, counter, read_errors), daemon=True)
        writer.start()
        if listing is not None:
            for _ in listing:
                entries += 1
            listing.close()
        writer.join()
        stderr_text: dict[str, str] = {}
        for name, proc, err in procs:
            proc.wait()
            err.seek(0)
            stderr_text[name] = err.read().decode("utf-8", "replace").strip()
    problems.extend(read_errors)
    for name, proc, _ in procs:
        if proc.returncode != 0:
            detail = stderr_text[name].splitlines()[-1] if stderr_text[name] else f"exit code {proc.returncode}"
            what = "tar listing" if name == "tar" else f"{name} decompression test"
            problems.append(f"{what} failed: {detail}")
    if is_tar and entries == 0 and not problems:
        problems.append("the archive holds no files")
    sha = digest.hexdigest()
    if expected is not None:
        if expected.get("size") is not None and int(expected["size"]) != counter[0]:
            problems.append(f"size changed since it was catalogued: {expected['size']} -> {counter[0]} bytes")
        if expected.get("sha256") and expected["sha256"] != sha:
            problems.append("SHA-256 differs from the catalogue: the file changed after it was first verified")
    return VerifyResult(
        filename=path.name, ok=not problems, size=counter[0], sha256=sha, entries=entries,
        problems=tuple(problems), checked_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )  # fmt: skip


class Catalogue:
    """Size and SHA-256 per archive of one dump directory, kept in a JSON file next to them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OperationError(
                    f"the archive catalogue {self.path} is unreadable: {exc}",
                    hint="move it aside; the next verification writes a new one (older checksums are lost)",
                ) from None
            self.entries = dict(data.get("archives", {}))

    def record(self, result: VerifyResult) -> None:
        """Remember a good archive's size and hash the first time; keep the last check always."""
        entry = self.entries.setdefault(result.filename, {})
        if result.ok and "sha256" not in entry:
            entry.update(size=result.size, sha256=result.sha256, first_verified=result.checked_at)
        entry.update(last_checked=result.checked_at, last_ok=result.ok, last_problems=list(result.problems))

    def forget_missing(self, present: Iterable[str]) -> list[str]:
        """Drop entries of archives that no longer exist (pruned); returns their names."""
        keep = set(present)
        gone = [name for name in self.entries if name not in keep]
        for name in gone:
            del self.entries[name]
        return gone

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "archives": self.entries}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def verify_directory(dump_dir: Path, names: Iterable[str] | None = None) -> list[VerifyResult]:
    """Verify every archive (or ``names``) in ``dump_dir`` against and into its catalogue."""
    dump_dir = Path(dump_dir)
    listing = sorted(os.listdir(dump_dir))
    archives = [n for n in listing if parse_archive_name(n) is not None]
    chosen = archives if names is None else [n for n in archives if n in set(names)]
    catalogue = Catalogue(dump_dir / CATALOGUE_NAME)
    results = []
    for name in chosen:
        result = verify_archive(dump_dir / name, catalogue.entries.get(name))
        catalogue.record(result)
        results.append(result)
    catalogue.forget_missing(archives)
    catalogue.save()
    return results
