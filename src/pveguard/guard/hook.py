"""`pveguard apt-hook`: what apt runs as a DPkg::Pre-Install-Pkgs hook (protocol v3 on fd 20).

It reads the planned transaction, decides per package (rules in `decide`), prints the verdict on
stderr (apt shows it verbatim), records the decision in the ledger and exits 0 to let the whole
transaction through or non-zero to refuse all of it (apt then installs nothing).

Fail closed: when the policy, the state or apt's message cannot be read, it refuses and says how to
proceed: fix the cause, or create the break-glass file (`/etc/pveguard/break-glass`), which lets
exactly one transaction through, is deleted on use and is recorded.

Where the message comes from: apt (since 0.9.11, apt-pkg/deb/dpkgpm.cc RunScriptsWithPkgs) always
sets `APT_HOOK_INFO_FD` to the number of the fd it wrote the message to — `0` (stdin) when the
`InfoFD` option is 0, missing or not a number. So `0` means stdin, and an unset variable is read as
apt's default, stdin, too. Unlike Proxmox's pve-apt-hook, which allows everything when the variable
is unset, there is no path that lets a transaction through without a message: an unset variable with
a terminal or nothing on stdin fails closed.

The hook never runs apt or dpkg (apt holds the dpkg lock). It imports only the standard library and
pveguard's lean modules: apt pays its start-up time on every transaction (see bench/guard_hook.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pveguard.guard.aptproto import Action, HookInput, ProtocolError, parse
from pveguard.guard.decide import Candidate, Decision, Policy, PolicyFileError, decide, messages, parse_policy
from pveguard.packages.classify import Classifier, Verdict, static_verdict
from pveguard.packages.status import Package, parse_paragraph, parse_relations, parse_status
from pveguard.records import record

TYPE_CHECKING = False  # typing is not imported at run time: apt waits for the hook's start-up (mypy: true)
if TYPE_CHECKING:
    from typing import IO, Any

POLICY_FILE = Path("/etc/pveguard/installation_policy.conf")
CLUSTER_POLICY_FILE = Path("/etc/pve/installation_policy.conf")
BREAK_GLASS_FILE = Path("/etc/pveguard/break-glass")
BREAK_GLASS_LOG = Path("/var/log/pveguard-break-glass.log")
DPKG_STATUS = Path("/var/lib/dpkg/status")
CORE_CACHE_NAME = "guard-core-cache.json"
CORE_BASE_NAME = "guard-core-cache.base"  # the status text the cache was built from (incremental rebuild)
CHECK_RESULT_ENV = "PVEGUARD_CHECK_RESULT"
DEFAULT_STATE_DIR = "/var/lib/pveguard"

EXIT_ALLOW = 0
EXIT_FAIL_CLOSED = 2
EXIT_REFUSED = 3
MAX_INPUT = 256 * 1024 * 1024
_CACHE_FORMAT = 1


class HookFailure(Exception):
    """The hook cannot decide; it refuses (fail closed) with this message and hint."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@record
class HookEnv:
    """Where the hook finds things; tests and benchmarks point it elsewhere."""

    policy_file: Path = POLICY_FILE
    cluster_policy_file: Path = CLUSTER_POLICY_FILE
    break_glass_file: Path = BREAK_GLASS_FILE
    break_glass_log: Path = BREAK_GLASS_LOG
    dpkg_status: Path = DPKG_STATUS


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         out: IO[str] | None = None, paths: HookEnv | None = None) -> int:
    """Run the hook; returns the exit code. Never raises (a crash would leave apt with a traceback)."""
    environ = os.environ if environ is None else environ
    out = sys.stderr if out is None else out
    paths = paths or HookEnv()
    try:
        return _run(environ, out, paths)
    except HookFailure as exc:
        return _fail_closed(exc.message, exc.hint, environ, out, paths)
    except KeyboardInterrupt:
        return _fail_closed("interrupted", "run the apt command again", environ, out, paths)
    except Exception as exc:  # fail closed on anything unforeseen, but never with a traceback
        return _fail_closed(f"internal error: {type(exc).__name__}: {exc}",
                            "this is a bug in pveguard; report it with the message above", environ, out, paths)


def _say(out: IO[str], line: str) -> None:
    try:
        out.write(line + "\n")
        out.flush()
    except (OSError, ValueError):
        pass


def _run(environ: Mapping[str, str], out: IO[str], paths: HookEnv) -> int:
    # Unset or empty: apt's default InfoFD, stdin (apt itself always sets it; see the module doc).
    fd_text = environ.get("APT_HOOK_INFO_FD") or "0"
    started = time.monotonic()
    data = _read_fd(fd_text, unset="APT_HOOK_INFO_FD" not in environ)
    policy = load_policy(paths)
    try:
        message = parse(data)
    except ProtocolError as exc:
        raise HookFailure(f"cannot read apt's hook message: {exc}",
                          "re-register the hook with 'pveguard guard install'") from None
    store = _open_store(policy)
    try:
        return _decide_and_record(message, policy, store, environ, out, paths, started)
    except (sqlite3.Error, OSError) as exc:
        raise HookFailure(f"cannot use the pveguard state in {policy.state_dir}: {exc}",
                          "check the disk and the state database (pveguard audit-log verify)") from None
    finally:
        store.close()


def _decide_and_record(message: HookInput, policy: Policy, store: Any, environ: Mapping[str, str],
                       out: IO[str], paths: HookEnv, started: float) -> int:
    candidates = build_candidates(message.package_actions(), policy, paths.dpkg_status,
                                  Path(policy.state_dir))
    from pveguard.guard import approvals as approvals_mod

    names = [c.action.package for c in candidates]
    now = time.time()
    rules = approvals_mod.for_packages(store, names)
    decision = decide(candidates, policy, rules, now)
    used = [] if message.dry_run else decision.used_approvals
    lines = messages(decision, policy)
    details = _details(message, decision, environ, used, started)
    action = "guard.check" if message.dry_run else "guard.decision"
    # Ledger first: if it cannot be written the hook fails closed and no approval use is lost.
    _ledger(store, policy).append(action, _target(names), details, actor=_actor(environ))
    if used and approvals_mod.consume(store, used, now) != used:
        raise HookFailure("an approval this transaction relies on was used up or revoked meanwhile",
                          "run the apt command again")
    for line in lines:
        _say(out, line)
    if decision.allowed:
        _say(out, _allowed_line(decision, used, message.dry_run))
    check_file = environ.get(CHECK_RESULT_ENV)
    if check_file and message.dry_run:
        Path(check_file).write_text(json.dumps({"allowed": decision.allowed, "mode": decision.mode,
                                                "items": [i.as_dict() for i in decision.items],
                                                "messages": lines}), encoding="utf-8")
    return EXIT_ALLOW if decision.allowed else EXIT_REFUSED


def _read_fd(fd_text: str, unset: bool = False) -> bytes:
    """apt's whole message from fd `fd_text`; HookFailure (fail closed) when there is none to read."""
    try:
        fd = int(fd_text)
    except ValueError:
        raise HookFailure(f"APT_HOOK_INFO_FD={fd_text[:20]!r} is not a file descriptor number",
                          "re-register the hook with 'pveguard guard install'") from None
    where = "stdin (APT_HOOK_INFO_FD is not set)" if unset else f"fd {fd} (APT_HOOK_INFO_FD={fd})"
    try:
        terminal = os.isatty(fd)
    except OSError:
        terminal = False  # a closed fd: the read below says so
    if terminal:
        # apt never hands the message over a terminal: this is a person running the hook by hand.
        raise HookFailure(f"no message from apt to read: {where} is a terminal",
                          "this command is what apt runs; to preview a decision use "
                          "'pveguard guard check -- apt-get install -y PACKAGE'")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_INPUT:
                raise HookFailure("apt's hook message is larger than 256 MiB", "this is not what apt sends")
            chunks.append(chunk)
    except OSError as exc:
        raise HookFailure(f"cannot read apt's hook message from {where}: {exc.strerror}",
                          "re-register the hook with 'pveguard guard install' (it sets InfoFD 20)") from None
    if not chunks:
        raise HookFailure(f"no message from apt: {where} had nothing to read",
                          "re-register the hook with 'pveguard guard install' (Version 3, InfoFD 20), "
                          "and check 'pveguard guard status' for apt options that override it")
    return b"".join(chunks)


def policy_path(paths: HookEnv) -> Path:
    """The cluster-wide copy on PVE (/etc/pve, when pmxcfs has it), else the local one."""
    if paths.cluster_policy_file.is_file():
        return paths.cluster_policy_file
    return paths.policy_file


def load_policy(paths: HookEnv) -> Policy:
    """Read and validate the policy file; HookFailure (fail closed) with the documented message."""
    path = policy_path(paths)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HookFailure(f"the installation policy {path} is missing",
                          "restore it with 'pveguard guard install'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HookFailure(f"cannot read the installation policy {path}: {exc}",
                          "fix its permissions or restore it with 'pveguard guard install'") from None
    try:
        return parse_policy(text)
    except PolicyFileError as exc:
        raise HookFailure(f"the installation policy {path} is corrupted: {exc}",
                          "restore it with 'pveguard guard install'") from None


def _open_store(policy: Policy) -> Any:
    from pveguard.errors import StateError
    from pveguard.store import Store

    try:
        return Store(Path(policy.state_dir))
    except StateError as exc:
        raise HookFailure(f"cannot open the pveguard state: {exc.message}", exc.hint or "") from None
    except OSError as exc:
        raise HookFailure(f"cannot open the pveguard state in {policy.state_dir}: {exc.strerror}",
                          "fix STATE_DIR / the directory, then run 'pveguard guard install'") from None


def _ledger(store: Any, policy: Policy) -> Any:
    from pveguard.errors import PveguardError
    from pveguard.security.ledger import Ledger

    try:
        return Ledger(store, policy.ledger_key_file or None)
    except PveguardError as exc:
        raise HookFailure(f"cannot open the ledger: {exc.message}", exc.hint or "") from None


# --- classification ---------------------------------------------------------------------------------


def core_index(status_path: Path, state_dir: Path, policy: Policy) -> dict[str, tuple[bool, str, str]]:
    """Installed package -> (core, reason, detail), cached in the state dir keyed by the dpkg status
    file's identity (inode, size, mtime) and the core roots / extras, so most runs skip parsing it.

    After a dpkg run (the key differs) the index is brought up to date from the one before when it
    can be (`incremental_core_index`, from the status text it was built from), else rebuilt."""
    try:
        st = status_path.stat()
    except OSError as exc:
        raise HookFailure(f"cannot read the dpkg status {status_path}: {exc.strerror}",
                          "check the file; the guard cannot classify packages without it") from None
    key = [_CACHE_FORMAT, st.st_ino, st.st_size, st.st_mtime_ns, list(policy.core_roots), list(policy.extra_allowed)]
    cache = state_dir / CORE_CACHE_NAME
    try:
        text = cache.read_text(encoding="utf-8")
        # After every dpkg run the key differs: the cache as this function writes it says so in its
        # first bytes, without parsing the whole file (apt waits). Any other text is parsed and judged.
        compact = '{"key":' + json.dumps(key, separators=(",", ":")) + ","
        if text.startswith(compact) or not text.startswith('{"key":['):
            cached = json.loads(text)
            if cached.get("key") == key:
                return {name: (bool(v[0]), str(v[1]), str(v[2])) for name, v in cached["packages"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        pass  # no cache or a damaged one: rebuild it
    try:
        raw = status_path.read_bytes()
    except OSError as exc:
        raise HookFailure(f"cannot read the dpkg status {status_path}: {exc.strerror}",
                          "check the file; the guard cannot classify packages without it") from None
    roots, extras = tuple(policy.core_roots), tuple(policy.extra_allowed)
    base_file = state_dir / CORE_BASE_NAME
    base = read_core_base(base_file)
    built = incremental_core_index(raw, base, roots, extras)
    if built is None:
        built = full_core_index(raw, roots, extras)
    index = built.index
    try:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "packages": index}, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, cache)
        if built is base:
            return index  # the same bytes as before (dpkg rewrote the file unchanged): the base stands
        tmp = base_file.with_name(f".{base_file.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(built.header())
            f.write(raw)
        os.replace(tmp, base_file)
    except OSError:
        pass  # a cache we cannot write only costs time
    return index


_BASE_FORMAT = 2
_INCREMENTAL_LIMIT = 64  # changed paragraphs beyond which a full rebuild is as quick
_SEP = b"\n\n"  # what parse_status splits paragraphs at (decoding UTF-8 never makes or eats a newline)


class CoreBase:
    """A core index with what it was built from, so the next one can reuse its verdicts: the
    package name of each paragraph of the status file (None for none) and where each paragraph
    break is (the offsets `raw.split(b"\\n\\n")` cuts at), the names the closure walk looked up (the
    roots and every alternative of every member's Depends/Pre-Depends) and the closure's members.
    Stored as one JSON line followed by the status file's bytes (CORE_BASE_NAME)."""

    def __init__(self, roots: tuple[str, ...], extras: tuple[str, ...], names: list[str | None],
                 seps: list[int], lookups: set[str], members: list[str],
                 index: dict[str, tuple[bool, str, str]], raw: bytes = b"") -> None:
        self.roots, self.extras, self.names, self.seps = roots, extras, names, seps
        self.lookups, self.members, self.index, self.raw = lookups, members, index, raw

    def header(self) -> bytes:
        head = {"format": _BASE_FORMAT, "roots": list(self.roots), "extras": list(self.extras),
                "names": self.names, "seps": self.seps, "lookups": sorted(self.lookups), "members": self.members,
                "index": self.index}
        return json.dumps(head, separators=(",", ":")).encode("ascii") + b"\n"


def read_core_base(path: Path) -> CoreBase | None:
    """The stored CoreBase, or None when there is none or it cannot be trusted to be whole."""
    try:
        data = path.read_bytes()
        end = data.index(b"\n")
        meta = json.loads(data[:end])
        if meta["format"] != _BASE_FORMAT:
            return None
        index = {str(n): (bool(v[0]), str(v[1]), str(v[2])) for n, v in meta["index"].items()}
        names = [None if n is None else str(n) for n in meta["names"]]
        seps = [int(n) for n in meta["seps"]]
        raw = data[end + 1:]
        if len(names) != len(seps) + 1 or any(raw[i:i + 2] != _SEP for i in seps[-1:]):
            return None
        return CoreBase(tuple(meta["roots"]), tuple(meta["extras"]), names, seps, {str(n) for n in meta["lookups"]},
                        [str(n) for n in meta["members"]], index, raw)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _cuts(pieces: list[bytes], start: int) -> list[int]:
    """The offsets a split at _SEP cut at, from its pieces (the first piece starting at `start`)."""
    out: list[int] = []
    pos = start
    for piece in pieces[:-1]:
        pos += len(piece)
        out.append(pos)
        pos += 2
    return out


def full_core_index(raw: bytes, roots: tuple[str, ...], extras: tuple[str, ...]) -> CoreBase:
    """Classify every installed package of the status file `raw` (what parse_status reads)."""
    parsed = [parse_paragraph(p) for p in raw.decode("utf-8", "replace").split("\n\n")]
    packages: dict[str, Package] = {}
    for pkg in parsed:
        if pkg is not None:
            packages[pkg.name] = pkg
    classifier = Classifier(packages, roots, extras)
    index: dict[str, tuple[bool, str, str]] = {}
    for name, pkg in packages.items():
        if pkg.installed:
            v = classifier.classify(name, pkg)
            index[name] = (v.core, v.reason, v.detail)
    return CoreBase(roots, extras, [None if p is None else p.name for p in parsed], _cuts(raw.split(_SEP), 0),
                    classifier.lookups, list(classifier.closure), index)


def _matched_length(limit: int, same: Callable[[int, int], bool]) -> int:
    """The largest n <= limit with same(0, n), where same(lo, hi) compares the window [lo, hi) of a match
    that holds up to lo: windows doubling from 4 KiB (memcmp, not byte by byte), then a bisection."""
    lo, hi, step = 0, 0, 4096
    while lo < limit:
        hi = min(limit, lo + step)
        if not same(lo, hi):
            break
        lo, step = hi, step * 2
    else:
        return limit
    while hi - lo > 1:  # [0, lo) matches and [lo, hi) does not
        mid = (lo + hi) // 2
        if same(lo, mid):
            lo = mid
        else:
            hi = mid
    return lo


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix."""
    return _matched_length(min(len(a), len(b)), lambda lo, hi: a[lo:hi] == b[lo:hi])


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most `limit`."""
    la, lb = len(a), len(b)
    return _matched_length(limit, lambda lo, hi: a[la - hi:la - lo] == b[lb - hi:lb - lo])


def incremental_core_index(raw: bytes, base: CoreBase | None, roots: tuple[str, ...],
                           extras: tuple[str, ...]) -> CoreBase | None:
    """What full_core_index(raw) gives, from `base` (the index of an earlier status file) by parsing
    only the paragraphs that differ; None when that cannot be sure of the same result.

    The paragraphs before the first differing byte and those after the last one are the same
    paragraphs (a paragraph break is the first b"\\n\\n" a left-to-right scan meets: one in the common
    tail not preceded by a newline is a break in both files). Between them, paragraphs are matched by
    their bytes. The closure walk depends only on what it looks up (whether each looked-up name is
    installed or provided, and by which packages in which order) and on its members' relationships.
    When no changed, added or removed paragraph names a looked-up name or a member, or provides a
    looked-up name, and the unchanged paragraphs keep their order, the walk is the same: the
    closure's verdicts stand, every untouched package keeps its verdict, and the touched ones get the
    rules that do not depend on the closure (static_verdict), as in Classifier.classify.
    """
    if base is None or base.roots != roots or base.extras != extras:
        return None
    old, seps, count = base.raw, base.seps, len(base.names)
    if old == raw:
        return base
    prefix = _common_prefix(old, raw)
    suffix = _common_suffix(old, raw, min(len(old), len(raw)) - prefix)
    # k: the breaks wholly inside the common prefix, and the k paragraphs before them, are the same
    lo, hi = 0, len(seps)
    while lo < hi:
        mid = (lo + hi) // 2
        if seps[mid] + 2 <= prefix:
            lo = mid + 1
        else:
            hi = mid
    k = lo
    start = seps[k - 1] + 2 if k else 0
    # j: the first break inside the common suffix with no newline just before it (no break can
    # overlap it from the left), so it and everything after it are the same in both files
    j = k
    while j < len(seps) and (seps[j] < len(old) - suffix + 1 or old[seps[j] - 1] == 10):
        j += 1
    delta = len(raw) - len(old)
    end_old, end_new = (seps[j], seps[j] + delta) if j < len(seps) else (len(old), len(raw))
    old_mid = old[start:end_old].split(_SEP)
    paras = raw[start:end_new].split(_SEP)
    tail = count - k - len(old_mid)
    if tail < 0 or tail != len(seps) - j:
        return None
    position = {p: i for i, p in enumerate(old_mid) if p.strip()}
    mid_names: list[str | None] = [None] * len(paras)
    changed: list[int] = []
    matched: set[int] = set()
    last = -1
    for i, p in enumerate(paras):
        at = position.get(p)
        if at is None:
            if p.strip():
                changed.append(i)
            continue
        if at <= last:
            return None  # reordered or repeated paragraphs: let the full rebuild decide
        last = at
        matched.add(at)
        mid_names[i] = base.names[k + at]
    removed = [p for i, p in enumerate(old_mid) if i not in matched and p.strip()]
    if len(changed) + len(removed) > _INCREMENTAL_LIMIT:
        return None
    touched: set[str] = set()
    provided: set[str] = set()
    fresh: dict[int, Package] = {}
    for i in changed:
        pkg = parse_paragraph(paras[i].decode("utf-8", "replace"))
        if pkg is not None:
            mid_names[i] = pkg.name
            fresh[k + i] = pkg
            touched.add(pkg.name)
            provided.update(pkg.provides())
    for p in removed:
        gone = parse_paragraph(p.decode("utf-8", "replace"))
        if gone is not None:
            touched.add(gone.name)
            provided.update(gone.provides())
    if not touched.isdisjoint(base.lookups) or not touched.isdisjoint(base.members) \
            or not provided.isdisjoint(base.lookups):
        return None
    names = base.names[:k] + mid_names + base.names[count - tail:]
    new_seps = seps[:k] + _cuts(paras, start) + [s + delta for s in seps[j:]]
    winner: dict[str, int] = {}  # last paragraph of each touched name: it is the one dpkg (and we) keep
    for i, name in enumerate(names):
        if name is not None and name in touched:
            winner[name] = i
    verdicts: dict[str, tuple[bool, str, str]] = {}
    for name, i in winner.items():
        pkg = fresh.get(i)
        if pkg is None:
            begin = new_seps[i - 1] + 2 if i else 0
            finish = new_seps[i] if i < len(new_seps) else len(raw)
            pkg = parse_paragraph(raw[begin:finish].decode("utf-8", "replace"))
        if pkg is not None and pkg.installed:
            v = static_verdict(name, pkg, roots, extras)
            verdicts[name] = (v.core, v.reason, v.detail)
    index: dict[str, tuple[bool, str, str]] = {}
    seen: set[str] = set()
    for name in names:
        if name is None or name in seen:
            continue
        seen.add(name)
        verdict = verdicts.get(name) if name in touched else base.index.get(name)
        if verdict is not None:
            index[name] = verdict
    return CoreBase(roots, extras, names, new_seps, base.lookups, base.members, index)


def build_candidates(actions: list[Action], policy: Policy, status_path: Path,
                     state_dir: Path) -> list[Candidate]:
    """Attach a classification, and what each new version pulls in, to every package action."""
    index = core_index(status_path, state_dir, policy)
    new_names = [a.package for a in actions if a.kind == "install"]
    controls: dict[str, Package] = {}
    if new_names:
        # Only a transaction with new packages needs the new versions' relationships.
        for a in actions:
            path = a.deb_path
            if path is not None:
                pkg = read_deb_control(path)
                if pkg is not None:
                    controls[a.package] = pkg
    out: list[Candidate] = []
    for a in actions:
        known = index.get(a.package)
        if known is not None and a.kind != "install":
            verdict = Verdict(known[0], known[1], known[2])  # type: ignore[arg-type]
        else:
            verdict = static_verdict(a.package, controls.get(a.package), policy.core_roots, policy.extra_allowed)
        pkg = controls.get(a.package)
        pulls: tuple[str, ...] = ()
        provides: tuple[str, ...] = ()
        if pkg is not None:
            rel = parse_relations(pkg.fields.get("recommends", ""))
            pulls = tuple(name for group in pkg.depends() + rel for name in group)
            provides = tuple(pkg.provides())
        out.append(Candidate(a, verdict, pulls, provides))
    return out


def read_deb_control(path: str) -> Package | None:
    """The control paragraph of a .deb (ar archive with control.tar.{gz,xz,bz2,}), or None when the
    file cannot be read (then only the package name classifies it)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"!<arch>\n":
                return None
            while True:
                header = f.read(60)
                if len(header) < 60:
                    return None
                name = header[:16].decode("ascii", "replace").strip().rstrip("/")
                size = int(header[48:58].decode("ascii").strip())
                if name.startswith("control.tar"):
                    data = f.read(size)
                    text = _plain_tar_control(name, data)
                    if text is _NOT_PLAIN:
                        text = _tarfile_control(data)
                    if text is None:
                        return None
                    pkgs = parse_status(text.strip() + "\n")
                    if len(pkgs) != 1:
                        return None
                    pkg = next(iter(pkgs.values()))
                    recommends = _field(text, "Recommends")
                    if recommends:
                        pkg.fields["recommends"] = recommends
                    return pkg
                f.seek(size + (size & 1), 1)
    except (OSError, ValueError, EOFError, LookupError):
        return None


_NOT_PLAIN = "\0not plain"


def _tarfile_control(data: bytes) -> str | None:
    """The `control` member of a control.tar, read by tarfile (any compression and tar dialect it knows)."""
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                if member.name in ("./control", "control"):
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        return None
                    return extracted.read().decode("utf-8", "replace")
        return None
    except (tarfile.TarError, EOFError, OSError, ValueError, LookupError):
        return None


def _plain_tar_control(name: str, data: bytes) -> str | None:
    """What _tarfile_control gives, for what dpkg-deb writes (control.tar.xz/.gz/plain, ustar or
    old-style headers of regular files and directories), without importing tarfile (~10 ms of the
    hook's start-up: apt waits for it). Anything else -- another compression, a pax or GNU
    long-name header, a bad checksum, a number in base-256 -- is _NOT_PLAIN: tarfile decides."""
    try:
        if name == "control.tar.xz":
            import lzma

            data = lzma.decompress(data, format=lzma.FORMAT_XZ)
        elif name == "control.tar.gz":
            import zlib

            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = inflate.decompress(data) + inflate.flush()
            if inflate.unused_data:  # a second gzip member: tarfile reads those too
                return _NOT_PLAIN
        elif name != "control.tar":
            return _NOT_PLAIN
    except Exception:  # a damaged stream: tarfile reports it the way it always did
        return _NOT_PLAIN
    offset = 0
    while offset + 512 <= len(data):
        header = data[offset:offset + 512]
        if header == bytes(512):
            return None  # end of archive, no control member
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"5") or header[124] & 0x80:
            return _NOT_PLAIN
        try:
            checksum = int(header[148:156].replace(b"\0", b" ").strip() or b"0", 8)
            size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
        except ValueError:
            return _NOT_PLAIN
        if checksum != 256 + sum(header[:148]) + sum(header[156:]):
            return _NOT_PLAIN
        member = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            member = header[345:500].split(b"\0", 1)[0] + b"/" + member
        if member in (b"./control", b"control"):
            if kind == b"5" or offset + 512 + size > len(data):
                return _NOT_PLAIN
            return data[offset + 512:offset + 512 + size].decode("utf-8", "replace")
        offset += 512 + (size + 511) // 512 * 512
    return _NOT_PLAIN  # no end marker: let tarfile judge the truncation


def _field(control: str, key: str) -> str:
    """One (possibly folded) field of a control paragraph; status.parse_status keeps only a few."""
    value: list[str] = []
    inside = False
    for line in control.splitlines():
        if inside and line[:1] in (" ", "\t"):
            value.append(line.strip())
            continue
        inside = False
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == key.lower():
            value.append(v.strip())
            inside = True
    return " ".join(value)


# --- reporting ----------------------------------------------------------------------------------


def invoking_user(environ: Mapping[str, str]) -> str:
    """The person behind the apt run: SUDO_USER, else the login name, else the process owner."""
    user = environ.get("SUDO_USER")
    if user:
        return user
    try:
        return os.getlogin()
    except OSError:
        pass
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _actor(environ: Mapping[str, str]) -> str:
    return f"{invoking_user(environ)} (uid {os.getuid()})"


_SHELLS = {"sh", "dash", "bash"}


def apt_command_line(pid: int | None = None) -> str:
    """apt's own command line from /proc/<ppid>/cmdline (past the `sh -c` apt runs hooks through)."""
    pid = os.getppid() if pid is None else pid
    first = ""
    for _ in range(4):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            break
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        text = " ".join(argv)
        first = first or text
        if argv and os.path.basename(argv[0]) not in _SHELLS:
            return text
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
    return first


def _details(message: HookInput, decision: Decision, environ: Mapping[str, str], used: list[int],
             started: float) -> dict[str, Any]:
    verdict = "recorded" if decision.mode == "record-only" else ("allowed" if decision.allowed else "refused")
    return {
        "verdict": verdict,
        "mode": decision.mode,
        "dry_run": message.dry_run,
        "packages": [i.as_dict() for i in decision.items],
        "refused": [i.package for i in decision.refused],
        "approvals_used": used,
        "command_line": apt_command_line(),
        "apt_command_line": message.command_line,
        "user": invoking_user(environ),
        "protocol": message.version,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _target(names: list[str]) -> str:
    text = ",".join(names)
    return text if len(text) <= 200 else text[:197] + "..."


def _allowed_line(decision: Decision, used: list[int], dry_run: bool) -> str:
    counts: dict[str, int] = {}
    for item in decision.items:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    extra = f"; used approval(s) {', '.join('#' + str(i) for i in used)}" if used else ""
    check = " (check only, nothing recorded as used)" if dry_run else ""
    return f"pveguard: allowed {len(decision.items)} package(s) ({parts}){extra}{check}"


# --- fail closed --------------------------------------------------------------------------------


def _fail_closed(message: str, hint: str, environ: Mapping[str, str], out: IO[str], paths: HookEnv) -> int:
    glass = paths.break_glass_file
    if glass.is_file() and not glass.is_symlink():
        try:
            reason = glass.read_text(encoding="utf-8", errors="replace").strip()[:500]
            glass.unlink()
        except OSError as exc:
            _say(out, f"E: pveguard: {message}")
            _say(out, f"E: pveguard: the break-glass file {glass} exists but cannot be consumed "
                      f"({exc.strerror}); refusing.")
            return EXIT_FAIL_CLOSED
        where = _record_break_glass(message, reason, environ, paths)
        _say(out, f"W: pveguard: {message}")
        _say(out, f"W: pveguard: BREAK-GLASS: {glass} was present and is now consumed; this one transaction is "
                  f"allowed unchecked. Recorded in {where}. Fix the cause: {hint}")
        return EXIT_ALLOW
    _say(out, f"E: pveguard: {message}")
    _say(out, f"E: pveguard: refusing the whole transaction (fail closed). To proceed: {hint}; or, in an "
              f"emergency, 'touch {glass}' to let exactly one apt run through (it is consumed and audited).")
    return EXIT_FAIL_CLOSED


def _state_dir_guess(paths: HookEnv, environ: Mapping[str, str]) -> Path:
    try:
        return Path(load_policy(paths).state_dir)
    except HookFailure:
        return Path(environ.get("PVEGUARD_STATE_DIR") or DEFAULT_STATE_DIR)


def _record_break_glass(message: str, reason: str, environ: Mapping[str, str], paths: HookEnv) -> str:
    details = {"failure": message, "reason": reason, "user": invoking_user(environ),
               "command_line": apt_command_line(), "file": str(paths.break_glass_file)}
    try:
        from pveguard.security.ledger import Ledger
        from pveguard.store import Store

        key_file: str | None = None
        with contextlib.suppress(HookFailure):
            key_file = load_policy(paths).ledger_key_file or None
        with Store(_state_dir_guess(paths, environ)) as store:
            Ledger(store, key_file).append("guard.break_glass", "apt transaction", details,
                                           actor=_actor(environ))
        return "the ledger (pveguard audit-log)"
    except Exception:  # the state itself may be what is broken: keep a plain-text trail instead
        try:
            with open(paths.break_glass_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"ts": time.time(), **details}) + "\n")
            return str(paths.break_glass_log)
        except OSError:
            return "nowhere (the ledger and the fallback log are both unwritable)"


if __name__ == "__main__":  # pragma: no cover - the launcher calls main()
    sys.exit(main())
