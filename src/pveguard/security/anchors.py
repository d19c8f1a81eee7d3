"""Where the ledger's head is written besides the database, so a local rewrite cannot hide.

A hash chain alone shows edits, but not a tail cut off together with the head record, a wiped
table or a deleted database: what is left is still a valid chain. So after every append the new
head (sequence and entry hash, plus an HMAC of both when the ledger is keyed) also goes to
*anchors*: places a rewrite of the SQLite file does not reach. `verify` reads every anchor it can
and compares: an anchor that has seen entry M when the ledger ends at N < M means truncation.

Anchors are pluggable (`AnchorSink`); the default set (`default_anchors`) is:

* `file`    - `<state-dir>/ledger.anchor`, one JSON line per entry, made append-only
              (`chattr +a`, so even root must clear the flag before cutting it) where the file
              system allows it; whether that worked is reported by `verify`;
* `journal` - one structured entry per append on journald's native socket, read back with
              `journalctl` (when journald runs);
* `syslog`  - one line per append on `/dev/log` when journald does not run (rsyslog hosts);
              write-only: `verify` cannot read syslog files back.

Writing an anchor is best effort and never fails an append (the apt hook must not break on a
full log); reading one that is not there is reported, not an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import time
from pathlib import Path

from pveguard.records import field, record

TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:  # socket, shutil and subprocess are imported where used: the apt hook pays every import
    import socket
    from typing import Any, Protocol
else:
    Protocol = object  # AnchorSink is only a static interface (never used with isinstance)

ANCHOR_FILE = "ledger.anchor"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_SOCKET = Path("/dev/log")
IDENTIFIER = "pveguard-ledger"
# Tests and throwaway state directories set this to 0: an append-only file cannot be removed
# without `chattr -a` first, which is the point on a host and a nuisance in a temporary directory.
APPEND_ONLY_ENV = "PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY"
# Which sinks appends write to (comma-separated, default all); the test suite keeps its thousands
# of throwaway ledgers out of the host's journal with "file". verify reads every anchor regardless.
ANCHORS_ENV = "PVEGUARD_LEDGER_ANCHORS"

# linux/fs.h: the inode-flags ioctls and the append-only flag (what chattr +a sets).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_APPEND_FL = 0x00000020


@record(frozen=True)
class Head:
    """One head as an anchor records it; `mac` is set when the ledger is keyed."""

    seq: int
    hash: str
    mac: str | None = None


@record
class Reading:
    """What one anchor says about one ledger."""

    name: str
    where: str
    readable: bool
    detail: str = ""
    heads: list[Head] = field(default_factory=list)
    verdict: str = ""  # set by verify: "agrees" or how it disagrees with the chain

    @property
    def highest(self) -> int:
        return max((h.seq for h in self.heads), default=0)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "readable": self.readable,
                "entries_seen": len(self.heads), "highest": self.highest, "detail": self.detail,
                "verdict": self.verdict}


class AnchorSink(Protocol):
    """A place the head is written after each append and read back by `verify`."""

    name: str

    def record(self, head: Head) -> None:
        """Write one head; may raise OSError (the ledger ignores it)."""

    def read(self) -> Reading:
        """Every head this anchor holds for this ledger (readable=False when it cannot tell)."""


class FileAnchor:
    """An append-only file of JSON lines next to the database (or a copy of it elsewhere)."""

    name = "file"

    def __init__(self, path: Path, *, append_only: bool | None = None) -> None:
        self.path = path
        self.append_only = (os.environ.get(APPEND_ONLY_ENV, "1") != "0") if append_only is None else append_only
        self._checked = False

    def record(self, head: Head) -> None:
        line = json.dumps({"seq": head.seq, "hash": head.hash, "mac": head.mac}, separators=(",", ":")) + "\n"
        # O_APPEND and one write() of a short line: concurrent appenders never interleave inside a
        # line. Mode 0600 whatever the umask (the fchmod covers a file made before this version).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not self._checked:
                self._checked = True
                # An append-only file refuses chmod (EPERM): only touch a mode that is wrong.
                if os.fstat(fd).st_mode & 0o177:
                    with contextlib.suppress(OSError):
                        os.fchmod(fd, 0o600)
                if self.append_only:
                    with contextlib.suppress(OSError):
                        set_append_only(fd)
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> Reading:
        where = str(self.path)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return Reading(self.name, where, False, "absent")
        except OSError as exc:
            return Reading(self.name, where, False, f"unreadable: {exc.strerror}")
        heads, bad = _parse_lines(text.splitlines())
        detail = append_only_status(self.path)
        if bad:
            detail += f"; {bad} unparseable line(s)"
        return Reading(self.name, where, True, detail, heads)


class _DatagramSink:
    """A log daemon's datagram socket. A full queue waits briefly; a daemon that stays stuck costs
    this process one timeout and then its lines (the anchor lags, which verify accepts), never an
    append that hangs: the apt hook waits on appends."""

    TIMEOUT = 0.1

    def __init__(self, ledger_id: str, socket_path: Path) -> None:
        self.ledger_id = ledger_id
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._stalled = False

    def _send(self, payload: bytes) -> None:
        if self._stalled:
            raise TimeoutError(f"{self.socket_path} stalled earlier in this process")
        if self._sock is None:
            import socket

            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(self.TIMEOUT)
        try:
            self._sock.sendto(payload, str(self.socket_path))
        except TimeoutError:
            self._stalled = True
            raise


class JournalAnchor(_DatagramSink):
    """One structured journald entry per append (native protocol), read back with journalctl."""

    name = "journal"

    def __init__(self, ledger_id: str, socket_path: Path = JOURNAL_SOCKET) -> None:
        super().__init__(ledger_id, socket_path)

    def record(self, head: Head) -> None:
        fields = {
            "MESSAGE": f"pveguard ledger {self.ledger_id}: entry {head.seq} {head.hash}",
            "SYSLOG_IDENTIFIER": IDENTIFIER, "PRIORITY": "6",
            "PVEGUARD_LEDGER": self.ledger_id, "PVEGUARD_LEDGER_SEQ": str(head.seq),
            "PVEGUARD_LEDGER_HASH": head.hash, "PVEGUARD_LEDGER_MAC": head.mac or "",
        }
        # Values are ours (paths, hex, digits): no newlines, so the simple KEY=value form is exact.
        self._send("".join(f"{k}={v}\n" for k, v in fields.items() if "\n" not in v).encode())

    def read(self) -> Reading:
        import shutil
        import subprocess

        where = "journald (journalctl)"
        journalctl = shutil.which("journalctl")
        if journalctl is None:
            return Reading(self.name, where, False, "journalctl is not installed")
        if not self.socket_path.exists():
            return Reading(self.name, where, False, "journald is not running")
        try:
            proc = subprocess.run(
                [journalctl, "--no-pager", "--quiet", "-o", "json",
                 "--output-fields=PVEGUARD_LEDGER_SEQ,PVEGUARD_LEDGER_HASH,PVEGUARD_LEDGER_MAC",
                 f"SYSLOG_IDENTIFIER={IDENTIFIER}", f"PVEGUARD_LEDGER={self.ledger_id}"],
                capture_output=True, text=True, timeout=120, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Reading(self.name, where, False, f"journalctl failed: {exc}")
        if proc.returncode != 0:
            return Reading(self.name, where, False, f"journalctl failed: {proc.stderr.strip()[:200]}")
        heads: list[Head] = []
        for line in proc.stdout.splitlines():
            try:
                obj = json.loads(line)
                heads.append(Head(int(obj["PVEGUARD_LEDGER_SEQ"]), str(obj["PVEGUARD_LEDGER_HASH"]),
                                  str(obj.get("PVEGUARD_LEDGER_MAC") or "") or None))
            except (ValueError, KeyError, TypeError):
                continue
        return Reading(self.name, where, True, "", heads)


class SyslogAnchor(_DatagramSink):
    """One RFC 3164 line per append on /dev/log; write-only for `verify`."""

    name = "syslog"

    def __init__(self, ledger_id: str, socket_path: Path = SYSLOG_SOCKET) -> None:
        super().__init__(ledger_id, socket_path)

    def record(self, head: Head) -> None:
        stamp = time.strftime("%b %e %H:%M:%S")
        text = (f"<14>{stamp} {IDENTIFIER}[{os.getpid()}]: ledger={self.ledger_id} seq={head.seq} "
                f"hash={head.hash} mac={head.mac or '-'}")
        self._send(text.encode())

    def read(self) -> Reading:
        return Reading(self.name, str(self.socket_path), False,
                       "write-only: compare the 'pveguard-ledger' lines in the syslog files by hand")


def default_anchors(state_dir: Path, db_path: Path) -> list[AnchorSink]:
    """The anchor file, plus journald when it runs, else syslog when /dev/log exists."""
    wanted = {w.strip() for w in os.environ.get(ANCHORS_ENV, "file,journal,syslog").split(",")}
    ledger_id = str(db_path.resolve())
    sinks: list[AnchorSink] = []
    if "file" in wanted:
        sinks.append(FileAnchor(state_dir / ANCHOR_FILE))
    if "journal" in wanted and JOURNAL_SOCKET.exists():
        sinks.append(JournalAnchor(ledger_id))
    elif "syslog" in wanted and SYSLOG_SOCKET.exists():
        sinks.append(SyslogAnchor(ledger_id))
    return sinks


def verify_anchors(state_dir: Path, db_path: Path, extra_files: list[Path] | None = None) -> list[AnchorSink]:
    """The anchors `verify` reads: the anchor file, the journal (always tried) and any copies."""
    ledger_id = str(db_path.resolve())
    sinks: list[AnchorSink] = [FileAnchor(state_dir / ANCHOR_FILE), JournalAnchor(ledger_id)]
    for path in extra_files or []:
        sink = FileAnchor(path)
        sink.name = f"copy {path}"
        sinks.append(sink)
    return sinks


def _parse_lines(lines: list[str]) -> tuple[list[Head], int]:
    heads: list[Head] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            heads.append(Head(int(obj["seq"]), str(obj["hash"]), obj.get("mac") or None))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return heads, bad


def set_append_only(fd: int) -> None:
    """chattr +a on an open file (raises OSError where the file system or capabilities refuse)."""
    buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0))
    flags = struct.unpack("i", buf)[0]
    if not flags & _FS_APPEND_FL:
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_APPEND_FL))


def append_only_status(path: Path) -> str:
    """'append-only' or why it is not, for `verify`'s report."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot check append-only: {exc.strerror}"
    try:
        buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0))
    except OSError as exc:
        return f"not append-only: the file system does not support it ({exc.strerror})"
    finally:
        os.close(fd)
    if struct.unpack("i", buf)[0] & _FS_APPEND_FL:
        return "append-only"
    return "not append-only: set it with 'chattr +a' (needs root and a file system with the flag)"
