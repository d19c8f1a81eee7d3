"""Container backups on plain LXC, the vzdump way: one consistent archive per container, and a
test restore into a throwaway container.

What vzdump does for LXC (PVE's ``PVE/VZDump.pm`` and ``PVE/VZDump/LXC.pm``) and what is kept
here: the archive is a tar of the root file
system with numeric owners, xattrs and ACLs, compressed with zstd, written as ``<name>.dat`` and
renamed when complete; its name carries the local start time; a ``.log`` and (optionally) a
``.notes`` file sit next to it; the container's configuration travels inside the archive
(``./etc/vzdump/lxc.conf``, where PVE puts ``pct.conf``); ``/tmp/?*``, ``/var/tmp/?*`` and
``/var/run/?*pid`` are left out as vzdump's default ``exclude-path`` does.

Modes: ``suspend`` freezes the container (``lxc-freeze``) while tar reads it, so no process writes
meanwhile; ``stop`` stops it cleanly and starts it again afterwards; ``snapshot`` needs a storage
snapshot, which a directory-backed root does not have, so it falls back to ``suspend`` - as vzdump
does when a volume cannot be snapshotted - and says so in the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from pveguard.backends.lxc import mp_dir, parse_mp, wait_image_released
from pveguard.backup.archive import archive_name, parse_archive_name
from pveguard.backup.calendar import local_zone
from pveguard.errors import OperationError, UsageError

__all__ = ["DumpResult", "RestoreTestResult", "dump_container", "restore_config", "restore_test"]

_EXCLUDES = ("./tmp/?*", "./var/tmp/?*", "./var/run/?*pid")
# Config keys that must not follow an archive into a throwaway container: its identity, its
# network (the test container gets none, so it can never clash with the original) and anything
# that reaches into the host (bind mounts, hooks).
_DROP_KEYS = re.compile(
    r"^lxc\.(uts\.name|rootfs\.path|net\.|mount\.entry|mount\.fstab|hook\.|console\.logfile|log\.|start\.)"
)


def _lxc(tool: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        raise OperationError(f"{tool} is not installed", hint="apt install lxc")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        raise OperationError(f"{tool} {' '.join(args)} failed: {detail}")
    return proc


def container_state(name: str, lxcpath: Path) -> str:
    """RUNNING, STOPPED, FROZEN, ... as lxc-info reports it."""
    proc = _lxc("lxc-info", "-P", str(lxcpath), "-n", name, "-s", "-H", check=False)
    if proc.returncode != 0:
        raise UsageError(f"no LXC container {name!r} in {lxcpath}", hint="check the name with lxc-ls -f")
    return proc.stdout.strip()


def _rootfs(config: str, name: str) -> tuple[str, Path]:
    """(kind, path) of the root file system: ``dir`` or ``loop`` (a raw image, as pveguard's LXC
    backend makes them)."""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.rootfs.path":
            value = value.strip()
            kind = "dir"
            for prefix in ("dir:", "loop:"):
                if value.startswith(prefix):
                    kind, value = prefix[:-1], value[len(prefix) :]
            if ":" in value or not value.startswith("/"):
                raise OperationError(
                    f"container {name}: only directory or loop-image root file systems can be archived, not {value!r}"
                )
            return kind, Path(value)
    raise OperationError(f"container {name}: no lxc.rootfs.path in its configuration")


@contextlib.contextmanager
def _readable_root(name: str, lxcpath: Path, kind: str, path: Path, running: bool) -> Iterator[Path]:
    """A host path showing the container's root file system for the duration.

    A directory root is read in place. A loop image of a running (frozen) container is read
    through its init's ``/proc/<pid>/root``; of a stopped one through a read-only loop mount.
    """
    if kind == "dir":
        yield path
        return
    if running:
        pid = _lxc("lxc-info", "-P", str(lxcpath), "-n", name, "-p", "-H").stdout.strip()
        if not pid.isdigit():
            raise OperationError(f"container {name} is running but lxc-info shows no init pid")
        yield Path(f"/proc/{pid}/root")
        return
    wait_image_released(path, f"container {name}")
    mnt = Path(tempfile.mkdtemp(prefix=f".pveguard-mnt-{name}-", dir=str(lxcpath)))
    try:
        proc = subprocess.run(["mount", "-o", "loop,ro", str(path), str(mnt)], capture_output=True, text=True,
                              check=False)  # fmt: skip
        if proc.returncode != 0:
            raise OperationError(f"cannot mount the root image {path} of {name}: {proc.stderr.strip()}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


@dataclass
class DumpResult:
    """The files one backup wrote."""

    archive: Path
    log: Path
    notes: Path | None
    size: int
    seconds: float
    mode: str
    log_lines: list[str] = field(default_factory=list)


def dump_container(
    name: str,
    vmid: int,
    dump_dir: Path,
    lxcpath: Path = Path("/var/lib/lxc"),
    mode: str = "suspend",
    notes: str | None = None,
    start: datetime | None = None,
    zone: tzinfo | None = None,
    zstd_threads: int = 1,
    timeout: float = 6 * 3600,
) -> DumpResult:
    """Archive one container into ``dump_dir`` as ``vzdump-lxc-<vmid>-<local time>.tar.zst``."""
    if mode not in ("suspend", "stop", "snapshot"):
        raise UsageError(f"unknown backup mode {mode!r}", hint="use snapshot, suspend or stop")
    lxcpath = Path(lxcpath)
    dump_dir = Path(dump_dir)
    zone = zone or local_zone()
    begin = start or datetime.now(UTC)
    final = dump_dir / archive_name("lxc", vmid, begin, "zstd", zone=zone)
    info = parse_archive_name(final.name)
    assert info is not None and info.log_filename is not None
    log_path = dump_dir / info.log_filename
    dat = final.with_name(final.name + ".dat")
    state = container_state(name, lxcpath)
    config_file = lxcpath / name / "config"
    try:
        config = config_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the configuration of container {name}: {exc.strerror}") from None
    kind, rootfs = _rootfs(config, name)
    dump_dir.mkdir(parents=True, exist_ok=True)
    log: list[str] = []

    def say(text: str) -> None:
        log.append(f"{datetime.now(zone):%Y-%m-%d %H:%M:%S} INFO: {text}")

    say(f"Starting Backup of VM {vmid} (lxc), container {name}")
    say(f"status = {state.lower()}")
    effective = mode
    if mode == "snapshot":
        say("snapshot mode needs a storage snapshot; a directory root has none, falling back to suspend mode")
        effective = "suspend"
    say(f"backup mode: {effective}")
    staging_dir = Path(tempfile.mkdtemp(prefix=".pveguard-stage-", dir=dump_dir))
    (staging_dir / "lxc.conf").write_text(config, encoding="utf-8")
    meta = lxcpath / name / "pveguard.json"  # pveguard's LXC backend keeps the PVE-form config here
    if meta.is_file():
        shutil.copyfile(meta, staging_dir / "pveguard.json")
    t0 = time.monotonic()
    frozen = stopped = False
    try:
        if state == "RUNNING" and effective == "suspend":
            _lxc("lxc-freeze", "-P", str(lxcpath), "-n", name)
            frozen = True
            say("container frozen")
        elif state == "RUNNING" and effective == "stop":
            _lxc("lxc-stop", "-P", str(lxcpath), "-n", name, "-t", "60", timeout=120)
            stopped = True
            say("container stopped")
        say(f"creating vzdump archive '{final}'")
        running = state in ("RUNNING", "FROZEN") and not stopped
        with _readable_root(name, lxcpath, kind, rootfs, running) as source:
            _write_archive(source, staging_dir, dat, zstd_threads, timeout,
                           volume=_backup_volume(meta, kind, rootfs))
    except BaseException:
        dat.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if frozen:
            _lxc("lxc-unfreeze", "-P", str(lxcpath), "-n", name)
            say("container resumed")
        if stopped:
            _lxc("lxc-start", "-P", str(lxcpath), "-n", name, "-d")
            say("container started again")
    with dat.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(dat, final)
    seconds = time.monotonic() - t0
    size = final.stat().st_size
    say(f"archive file size: {size} bytes")
    say(f"Finished Backup of VM {vmid} ({seconds:.1f}s)")
    log_path.write_text("\n".join(log) + "\n", encoding="utf-8")
    notes_path = None
    if notes:
        notes_path = dump_dir / info.notes_filename
        notes_path.write_text(notes.rstrip("\n") + "\n", encoding="utf-8")
    return DumpResult(final, log_path, notes_path, size, seconds, effective, log)


def _backup_volume(meta: Path, kind: str, rootfs: Path) -> tuple[Path, str] | None:
    """(host directory, path inside) of the LXC backend's data volume when it is in backups (mp0 with
    backup=1, as vzdump decides): a bind mount, so --one-file-system alone would leave it out."""
    try:
        mp0 = json.loads(meta.read_text())["config"].get("mp0") if kind == "loop" and meta.is_file() else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    if not mp0:
        return None
    mp = parse_mp(str(mp0))
    directory = mp_dir(rootfs)
    if mp.get("backup") not in ("1", "on") or not mp.get("mp") or not directory.is_dir():
        return None
    return directory, "./" + mp["mp"].strip("/")


def _write_archive(rootfs: Path, staging: Path, dest: Path, threads: int, timeout: float,
                   volume: tuple[Path, str] | None = None) -> None:
    tar_exe = shutil.which("tar")
    zstd_exe = shutil.which("zstd")
    if tar_exe is None or zstd_exe is None:
        raise OperationError("tar and zstd are needed to write archives", hint="apt install tar zstd")
    tar_argv = [tar_exe, "-c", "-f", "-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                "--sparse", "--one-file-system"]  # fmt: skip
    tar_argv += [f"--exclude={pattern}" for pattern in _EXCLUDES]
    # The configuration goes in under ./etc/vzdump/ (where PVE puts pct.conf).
    extras = sorted(p.name for p in staging.iterdir() if p.is_file())
    # Top-level mount points of a running container (/proc, /sys, /dev, /run, ...) go in as empty
    # directories, as vzdump leaves them: their contents are not the container's data, and a
    # pseudo file system's root changes while tar reads it.
    members, mountpoints = _top_level(rootfs)
    holes = staging / "mountpoints"
    for name, mode, uid, gid in mountpoints:
        (holes / name).mkdir(parents=True, exist_ok=True)
        os.chmod(holes / name, mode)
        # Keep the owner too: in an unprivileged container it is the mapped root (100000...), and a
        # host-root /proc or /dev would show up as nobody's after a restore.
        os.chown(holes / name, uid, gid)
    tar_argv += ["-C", str(rootfs), *members]
    if mountpoints:
        tar_argv += ["-C", str(holes), "--no-recursion", *(f"./{m[0]}" for m in mountpoints), "--recursion"]
    if volume is not None:
        # its members are `mp0/...` (the root's are `./...`): renamed to where the container sees them
        tar_argv += ["-C", str(volume[0].parent), volume[0].name]
        tar_argv.append(rf"--transform=s,^{re.escape(volume[0].name)},{volume[1]},S")
    tar_argv += ["-C", str(staging)]
    tar_argv += [rf"--transform=s,^{re.escape(n)}$,./etc/vzdump/{n}," for n in extras]
    tar_argv += extras
    with dest.open("wb") as out:
        tar = subprocess.Popen(tar_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        zstd = subprocess.Popen([zstd_exe, "-q", f"--threads={threads}", "-c"], stdin=tar.stdout, stdout=out,
                                stderr=subprocess.PIPE)  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        try:
            _, zerr = zstd.communicate(timeout=timeout)
            _, terr = tar.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            tar.kill()
            zstd.kill()
            raise OperationError(f"writing {dest.name} took longer than {timeout:.0f} s") from None
    # GNU tar exits 1 when a file changed while being read; in suspend/stop mode nothing runs,
    # so treat any non-zero exit as a failed backup.
    if tar.returncode != 0:
        raise OperationError(f"tar failed while archiving {rootfs}: {terr.decode(errors='replace').strip()[-500:]}")
    if zstd.returncode != 0:
        raise OperationError(f"zstd failed: {zerr.decode(errors='replace').strip()[-500:]}")


def _top_level(root: Path) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """Members to archive under ``root`` ("." itself, non-recursively, then each entry) and the
    top-level directories that are other file systems (name, mode, uid, gid)."""
    root_dev = os.stat(root).st_dev
    members = ["--no-recursion", ".", "--recursion"]
    mountpoints: list[tuple[str, int, int, int]] = []
    for name in sorted(os.listdir(root)):
        st = os.lstat(root / name)
        if stat.S_ISDIR(st.st_mode) and st.st_dev != root_dev:
            mountpoints.append((name, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        else:
            members.append(f"./{name}")
    return members, mountpoints


@dataclass
class RestoreTestResult:
    """A test restore: the archive, the throwaway container, what the health check said."""

    archive: str
    container: str
    ok: bool
    output: str
    problems: list[str]
    seconds: float


def restore_test(
    archive: Path,
    lxcpath: Path,
    health_check: Sequence[str] = ("sh", "-c", "test -d /etc && test -x /bin/sh"),
    expect_output: str | None = None,
    start_timeout: float = 60,
) -> RestoreTestResult:
    """Restore ``archive`` into a new container under ``lxcpath``, start it, run ``health_check``
    inside it (and compare its output with ``expect_output``), then destroy the container.

    The container has no network and none of the original's bind mounts or hooks. It is removed
    whatever happens, so nothing is left behind.
    """
    archive = Path(archive)
    info = parse_archive_name(archive.name)
    if info is None or info.type != "lxc" or not info.extension.startswith("tar"):
        raise UsageError(f"{archive.name} is not an LXC vzdump archive", hint="expected vzdump-lxc-<id>-....tar.zst")
    lxcpath = Path(lxcpath)
    name = f"pveguard-restoretest-{info.vmid or 0}-{secrets.token_hex(3)}"
    home = lxcpath / name
    rootfs = home / "rootfs"
    problems: list[str] = []
    output = ""
    t0 = time.monotonic()
    try:
        rootfs.mkdir(parents=True)
        _extract(archive, rootfs, info.compression)
        original = (rootfs / "etc" / "vzdump" / "lxc.conf").read_text(encoding="utf-8") if (
            rootfs / "etc" / "vzdump" / "lxc.conf").exists() else ""  # fmt: skip
        root_owner = os.stat(rootfs)
        config = restore_config(original, name, rootfs, (root_owner.st_uid, root_owner.st_gid))
        if any(ln.startswith("lxc.idmap") for ln in config):
            _check_reachable(lxcpath)
        (home / "config").write_text("\n".join(config) + "\n", encoding="utf-8")
        start_log = home / "start.log"
        started = _lxc("lxc-start", "-P", str(lxcpath), "-n", name, "-d", "-o", str(start_log), "-l", "ERROR",
                       timeout=start_timeout, check=False)  # fmt: skip
        if started.returncode != 0:
            raise OperationError(f"the restored container does not start: {_last_errors(start_log, started)}")
        _lxc("lxc-wait", "-P", str(lxcpath), "-n", name, "-s", "RUNNING", "-t", str(int(start_timeout)),
             timeout=start_timeout + 10)  # fmt: skip
        deadline = time.monotonic() + start_timeout
        while True:
            proc = _lxc("lxc-attach", "-P", str(lxcpath), "-n", name, "--", *health_check, check=False, timeout=60)
            output = proc.stdout
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if proc.returncode != 0:
            problems.append(
                f"health check {' '.join(health_check)!r} failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
            )
        elif expect_output is not None and output.strip() != expect_output.strip():
            problems.append(f"health check output {output.strip()[:200]!r} differs from the expected one")
    except (OperationError, OSError, subprocess.TimeoutExpired) as exc:
        problems.append(str(exc))
    finally:
        _lxc("lxc-stop", "-P", str(lxcpath), "-n", name, "-k", check=False, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    return RestoreTestResult(archive.name, name, not problems, output, problems, time.monotonic() - t0)


def restore_config(original: str, name: str, rootfs: Path, root_owner: tuple[int, int]) -> list[str]:
    """The lxc config lines of a throwaway restore container from the archived ``original`` one.

    Identity, network, bind mounts and hooks are dropped (see ``_DROP_KEYS``). The id map stays:
    an unprivileged container's files belong to its mapped ids (100000... on PVE), and started
    without that map its root could not even enter its own file system. An archive whose config
    carries no map (an ``lxc.include`` of a file elsewhere, a hand-made config) but whose root
    directory belongs to a non-root uid came from an unprivileged container: it gets the 65536-id
    map that starts at that owner, as PVE gives every unprivileged container.
    """
    kept = [ln.strip() for ln in original.splitlines() if ln.strip() and not _DROP_KEYS.match(ln.strip())]
    if not any(ln.startswith("lxc.include") for ln in kept):
        kept.insert(0, "lxc.include = /usr/share/lxc/config/common.conf")
    uid, gid = root_owner
    if not any(_key(ln) == "lxc.idmap" for ln in kept) and (uid, gid) != (0, 0):
        kept += ["lxc.include = /usr/share/lxc/config/userns.conf",
                 f"lxc.idmap = u 0 {uid} 65536", f"lxc.idmap = g 0 {gid} 65536"]  # fmt: skip
    return [f"lxc.uts.name = {name}", f"lxc.rootfs.path = dir:{rootfs}", "lxc.net.0.type = empty", *kept]


def _key(line: str) -> str:
    return line.partition("=")[0].strip()


def _check_reachable(lxcpath: Path) -> None:
    """An id-mapped container's root is an unprivileged user on the host: it must be able to walk
    down to its root file system."""
    closed = [p for p in (lxcpath, *lxcpath.parents) if not p.stat().st_mode & 0o001]
    if closed:
        raise OperationError(
            f"the archive is of an unprivileged container, whose restore cannot reach {lxcpath}: "
            f"{closed[0]} is not searchable by other users",
            hint=f"chmod o+x {closed[0]}, or restore-test into a directory other users can enter",
        )


def _last_errors(log: Path, proc: subprocess.CompletedProcess[str]) -> str:
    """The last ERROR lines lxc-start logged (its stderr only says to look at the log)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
    except OSError:
        lines = []
    fallback = proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}"
    detail = lines[-3:] or fallback.splitlines()[-1:]
    return " | ".join(d.strip() for d in detail)[-600:]


def _extract(archive: Path, rootfs: Path, compression: str | None) -> None:
    tar_argv = ["tar", "-x", "-f", "-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                "--sparse", "-C", str(rootfs)]  # fmt: skip
    dec = {"zst": ["zstd", "-d", "-c", "-q"], "gz": ["gzip", "-d", "-c"], "lzo": ["lzop", "-d", "-c"],
           "bz2": ["bzip2", "-d", "-c"]}  # fmt: skip
    with archive.open("rb") as src:
        if compression:
            first = subprocess.Popen(dec[compression], stdin=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            tar = subprocess.Popen(tar_argv, stdin=first.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert first.stdout is not None
            first.stdout.close()
            _, terr = tar.communicate()
            _, derr = first.communicate()
            if first.returncode != 0:
                raise OperationError(
                    f"{archive.name} does not decompress: {derr.decode(errors='replace').strip()[-300:]}"
                )
        else:
            tar = subprocess.Popen(tar_argv, stdin=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, terr = tar.communicate()
    if tar.returncode != 0:
        raise OperationError(f"{archive.name} does not extract: {terr.decode(errors='replace').strip()[-300:]}")
