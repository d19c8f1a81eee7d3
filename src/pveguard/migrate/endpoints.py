"""Where a migrated service runs: the source (`local`, `lxc:NAME`, `ssh:HOST`) and the target container.

One small interface: an endpoint turns an argv into the argv that runs it there; everything else
(read and write files, tar streams between two endpoints, the address clients use) is built on that,
once. `local` runs the argv as it is, `lxc:NAME` through lxc-attach, `ssh:HOST` through the ssh
binary (BatchMode: a key must already let root in), a container of the proxmox backend through
`pct exec` (over ssh to its node when that is not this machine).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pveguard import subproc
from pveguard.errors import OperationError, UsageError

SSH_OPTIONS_ENV = "PVEGUARD_MIGRATE_SSH_OPTIONS"   # e.g. "-i /root/.ssh/migrate -o UserKnownHostsFile=..."
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace").strip()


class Endpoint:
    """A machine (or container) we run commands on."""

    label = "local"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` there, from this machine."""
        return ["env", f"PATH={PATH}", "LANG=C.UTF-8", *argv]

    def tool(self) -> str:
        return "env"

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 600) -> Result:
        cmd = self.wrap(argv)
        if shutil.which(cmd[0]) is None:
            raise OperationError(f"{self.label}: {cmd[0]} is not installed on this machine",
                                 hint=f"install it to reach {self.label}")
        try:
            p = subproc.run(cmd, input=input, timeout=timeout)  # what sh/ssh started goes too on a timeout
        except subprocess.TimeoutExpired:
            raise OperationError(f"{self.label}: '{shlex.join(argv)}' did not finish within {timeout:.0f}s") from None
        return Result(p.returncode, p.stdout, p.stderr)

    def sh(self, script: str, *, input: bytes | None = None, timeout: float = 600) -> Result:
        return self.run(["sh", "-c", script], input=input, timeout=timeout)

    def check(self, argv: Sequence[str], what: str, *, input: bytes | None = None, timeout: float = 600) -> Result:
        r = self.run(argv, input=input, timeout=timeout)
        if not r.ok:
            raise OperationError(f"{self.label}: {what} failed (exit {r.returncode}): {r.err[-600:]}",
                                 hint=f"the command was: {shlex.join(argv)}")
        return r

    def popen(self, argv: Sequence[str], *, stdin: Any = None, stdout: Any = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.wrap(argv), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)

    def read_file(self, path: str) -> bytes | None:
        r = self.run(["cat", "--", path])
        return r.stdout if r.ok else None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.check(["sh", "-c", 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1.pgtmp" && chmod "$2" "$1.pgtmp" '
                    '&& mv "$1.pgtmp" "$1"', "sh", path, f"{mode:o}"], f"writing {path}", input=data)

    def address(self) -> str:
        """The IPv4 address clients reach this endpoint's services on."""
        return "127.0.0.1"


class Local(Endpoint):
    label = "local"

    def address(self) -> str:
        # not loopback: the forward cannot send 127.0.0.1 to another machine (clients use this one)
        return container_ipv4(self)


@dataclass
class Lxc(Endpoint):
    """A container of plain LXC (the tests' "host" is one; the lxc backend's containers too)."""

    name: str
    lxcpath: str = "/var/lib/lxc"

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"lxc:{self.name}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["lxc-attach", "-P", self.lxcpath, "-n", self.name, "--clear-env", "--set-var", f"PATH={PATH}",
                "--set-var", "LANG=C.UTF-8", "--set-var", "HOME=/root", "--", *argv]

    def address(self) -> str:
        p = subprocess.run(["lxc-info", "-P", self.lxcpath, "-n", self.name, "-iH"], capture_output=True,
                           text=True, check=False)
        addrs = [a for a in p.stdout.split() if "." in a and not a.startswith("127.")]
        if not addrs:
            raise OperationError(f"lxc:{self.name} has no IPv4 address (lxc-info -iH)",
                                 hint="start the container and check its network")
        return addrs[0]


@dataclass
class Ssh(Endpoint):
    """A remote host through the ssh binary (no password prompts: BatchMode)."""

    host: str
    options: tuple[str, ...] = ()   # more ssh options: -p PORT, -i KEY, -o UserKnownHostsFile=...

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"ssh:{self.host}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *self.options, self.host,
                shlex.join(["env", f"PATH={PATH}", "LANG=C.UTF-8", *argv])]

    def address(self) -> str:
        return self.host.rsplit("@", 1)[-1]


@dataclass
class Pct(Endpoint):
    """A container of the proxmox backend: `pct exec` on its node."""

    vmid: int
    prefix: tuple[str, ...]   # what runs pct there: () locally, the ssh argv for another node
    ip: str = ""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"ct/{self.vmid}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        inner = ["pct", "exec", str(self.vmid), "--keep-env", "0", "--", "env", f"PATH={PATH}", *argv]
        return [*self.prefix, shlex.join(inner)] if self.prefix else inner

    def address(self) -> str:
        if self.ip:
            return self.ip
        return container_ipv4(self)


def container_ipv4(ep: Endpoint) -> str:
    r = ep.run(["hostname", "-I"])
    addrs = [a for a in r.out.split() if "." in a and not a.startswith("127.")]
    if not addrs:
        raise OperationError(f"{ep.label} has no IPv4 address", hint="check the container's network")
    return addrs[0]


def parse_source(text: str, lxcpath: str) -> Endpoint:
    """`local`, `lxc:NAME` or `ssh:[USER@]HOST[:PORT]` (more ssh options in PVEGUARD_MIGRATE_SSH_OPTIONS)."""
    kind, _, rest = text.partition(":")
    if text == "local":
        return Local()
    if kind == "lxc" and rest:
        if not (Path(lxcpath) / rest / "config").is_file():
            raise UsageError(f"--source {text}: no LXC container {rest} in {lxcpath}",
                             hint="name a container that 'lxc-ls -P LXCPATH' lists (the strategy's target.lxc.lxcpath)")
        return Lxc(rest, lxcpath)
    if kind == "ssh" and rest:
        if shutil.which("ssh") is None:
            raise UsageError("--source ssh: needs the ssh client on this machine",
                             hint="apt-get install openssh-client")
        host, _, port = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
        extra = shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
        return Ssh(host, (*(("-p", port) if port else ()), *extra))
    raise UsageError(f"--source {text}: not local, lxc:NAME or ssh:HOST", hint="e.g. --source lxc:web1")


def for_guest(backend: Any, guest: Any) -> Endpoint:
    """The endpoint of a backend's guest."""
    from pveguard.backends.lxc import LxcBackend
    from pveguard.backends.proxmox import ProxmoxBackend

    if isinstance(backend, LxcBackend):
        return Lxc(str(guest.vmid), str(backend.lxcpath))
    if isinstance(backend, ProxmoxBackend):
        argv = backend._pct_argv(guest, ["true"])
        return Pct(guest.vmid, tuple(argv[:-1]) if argv[0] != "pct" else ())
    raise OperationError(f"cannot reach guests of the {backend.name} backend", hint="use the lxc or proxmox backend")


def _pump(src: IO[bytes] | None, errors: list[bytes]) -> None:
    if src is not None:
        errors.append(src.read())


# POSIX ACLs and every extended attribute (user.*, security.capability, ...) travel with the files;
# the same on both ends, or GNU tar drops what the other side wrote into the archive.
TAR_META = ["--acls", "--xattrs", "--xattrs-include=*"]
_TAR_CHECKED: dict[str, bool] = {}


def require_tar_meta(ep: Endpoint) -> None:
    """Refuse clearly when the endpoint's tar cannot keep ACLs and extended attributes (busybox tar,
    a GNU tar built without them): the copy would silently lose them."""
    key = f"{type(ep).__name__}:{ep.label}"
    if key not in _TAR_CHECKED:
        r = ep.run(["tar", "--help"])
        _TAR_CHECKED[key] = r.ok and all(opt in r.out for opt in ("--acls", "--xattrs", "--xattrs-include"))
    if not _TAR_CHECKED[key]:
        raise OperationError(f"{ep.label}: tar cannot keep POSIX ACLs and extended attributes (its --help lists "
                             "no --acls/--xattrs/--xattrs-include), so a copy would lose them",
                             hint="install GNU tar there (apt-get install tar) and run this again")


def tar_copy(src: Endpoint, dst: Endpoint, paths: Sequence[str], timeout: float = 3600) -> int:
    """Stream `paths` (absolute) from `src` to `dst` with tar: owners by name (users exist on both),
    modes, times, symlinks, POSIX ACLs and extended attributes kept. Returns the bytes streamed.
    Missing paths are skipped."""
    rel = [p.lstrip("/") for p in paths if p.startswith("/")]
    existing = src.run(["sh", "-c", 'cd / && for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; '
                                    'then printf "%s\\n" "$p"; fi; done', "sh", *rel])
    rel = [line for line in existing.out.splitlines() if line]
    if not rel:
        return 0
    require_tar_meta(src)
    require_tar_meta(dst)
    reader = src.popen(["tar", *TAR_META, "-C", "/", "-cpf", "-", "--", *rel], stdout=subprocess.PIPE)
    writer = dst.popen(["tar", *TAR_META, "-C", "/", "--same-owner", "-xpf", "-"],
                       stdin=subprocess.PIPE)
    assert reader.stdout is not None and writer.stdin is not None
    errs: list[bytes] = []
    threads = [threading.Thread(target=_pump, args=(p.stderr, errs), daemon=True) for p in (reader, writer)]
    for t in threads:
        t.start()
    total = 0
    try:
        while chunk := reader.stdout.read(1 << 16):
            writer.stdin.write(chunk)
            total += len(chunk)
    except BrokenPipeError:
        pass
    finally:
        writer.stdin.close()
    rc_r = reader.wait(timeout)
    rc_w = writer.wait(timeout)
    for t in threads:
        t.join(5)
    if rc_r not in (0, 1) or rc_w != 0:   # GNU tar: 1 = a file changed while read (live first sync)
        text = b" ".join(errs).decode(errors="replace").strip()[-800:]
        raise OperationError(f"copying {', '.join(paths)} from {src.label} to {dst.label} failed "
                             f"(tar {rc_r}/{rc_w}): {text}", hint="check the free space and that tar exists on both")
    return total


def listing(ep: Endpoint, paths: Sequence[str]) -> set[str]:
    """Every file and directory below `paths` on the endpoint."""
    r = ep.run(["sh", "-c", 'for p in "$@"; do [ -e "$p" ] && find "$p" -print0; done; true', "sh", *paths])
    return {p for p in r.stdout.decode(errors="surrogateescape").split("\0") if p}


def delete_extras(src: Endpoint, dst: Endpoint, paths: Sequence[str]) -> list[str]:
    """Remove below `paths` on `dst` what `src` does not have (the final sync mirrors deletions)."""
    extra = sorted(listing(dst, paths) - listing(src, paths), key=lambda p: -p.count("/"))
    if extra:
        dst.check(["rm", "-rf", "--", *extra], "removing files the source no longer has")
    return extra
