"""The apt hook's start-up stays lean: apt waits for it on every transaction (issue 17: the hook adds
< 60 ms p50 to a one-package install; docs/benchmarks.md).

A fresh `python -IS` -- what the installed launcher runs -- imports the hook like the launcher does,
runs a whole allowed transaction (policy file, dpkg status, a new state store and ledger, the core
cache written), and reports every module it ended up with. Heavy modules that were once on this path
and were taken off it must not come back; a new import on the path shows up here first. Not a timing
test: it fails on the modules themselves, whatever the machine's load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pveguard
from pveguard.guard.decide import Policy, render_policy

# Each was on the hook's path and cost start-up time (bench/guard_hook.py, python -X importtime).
OFF_THE_HOOK_PATH = {
    "dataclasses": "@dataclass: pveguard.records.record on the hook's path (dataclasses imports inspect & co.)",
    "inspect": "pulled in by dataclasses",
    "ast": "pulled in by inspect",
    "dis": "pulled in by inspect",
    "tokenize": "pulled in by inspect/linecache",
    "linecache": "pulled in by inspect",
    "typing": "typing names only under TYPE_CHECKING (from __future__ import annotations)",
    "getpass": "imported where the fallback needs it",
    "threading": "the store takes _thread.RLock (what threading.RLock is)",
    "shlex": "imported where invocation quotes a command line",
    "tarfile": "the hook reads dpkg-deb's control.tar itself (tarfile only for odd archives)",
    "hashlib": "the ledger uses _sha256 (hashlib loads OpenSSL) unless a key needs hmac",
    "subprocess": "the hook never runs a program",
    "socket": "only the journal/syslog anchors need it (PVEGUARD_LEDGER_ANCHORS=file here)",
    "logging": "not needed",
    "email": "not needed",
    "pydantic": "the strategy models are for the CLI",
    "rich": "the CLI's output",
    "typer": "the CLI",
    "yaml": "the strategy loader",
    "requests": "backends",
    "pveguard.cli": "the CLI",
    "pveguard.context": "the CLI's plumbing",
    "pveguard.strategy": "the hook reads the rendered policy file, not the strategy",
}

STATUS = """\
Package: proxmox-ve
Status: install ok installed
Version: 8.0
Depends: pve-manager

Package: pve-manager
Status: install ok installed
Version: 8.0
"""

CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pveguard.guard.hook import main  # what the launcher imports
from pveguard.guard.hook import HookEnv
from pathlib import Path
tmp = Path(sys.argv[2])
read, write = os.pipe()
os.write(write, sys.argv[3].encode())
os.close(write)
paths = HookEnv(policy_file=tmp / "policy.conf", cluster_policy_file=tmp / "none.conf",
                break_glass_file=tmp / "break-glass", break_glass_log=tmp / "bg.log", dpkg_status=tmp / "status")
code = main(environ={"APT_HOOK_INFO_FD": str(read), "SUDO_USER": "alice"}, out=sys.stderr, paths=paths)
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def run_hook_fresh(tmp_path: Path, src_parent: str) -> tuple[int, set[str], str]:
    (tmp_path / "policy.conf").write_text(render_policy(Policy(state_dir=str(tmp_path / "state"))))
    (tmp_path / "status").write_text(STATUS)
    message = ("VERSION 3\nquiet=1\nCommandLine::AsString=apt-get%20install%20pve-manager\n\n"
               "pve-manager 8.0 all none < 8.1 all none /nonexistent/pve-manager_8.1_all.deb\n")
    proc = subprocess.run([sys.executable, "-IS", "-c", CHILD, src_parent, str(tmp_path), message],
                          capture_output=True, text=True, timeout=60,
                          # the ledger's anchor: a plain file, not made append-only (tmp_path must stay removable)
                          env={"PATH": "/usr/bin:/bin", "PVEGUARD_LEDGER_ANCHORS": "file",
                               "PVEGUARD_LEDGER_ANCHOR_APPEND_ONLY": "0"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result["code"], set(result["modules"]), proc.stderr


def test_the_hooks_allow_path_imports_none_of_the_heavy_modules(tmp_path: Path) -> None:
    src_parent = str(Path(pveguard.__file__).resolve().parent.parent)
    code, modules, stderr = run_hook_fresh(tmp_path, src_parent)
    # the whole path ran: an allowed upgrade, recorded in a new ledger
    assert code == 0, stderr
    assert "pveguard: allowed 1 package(s)" in stderr
    assert "pveguard.security.ledger" in modules and "pveguard.store" in modules and "sqlite3" in modules
    back = {name: why for name, why in OFF_THE_HOOK_PATH.items()
            if name in modules or any(m.startswith(name + ".") for m in modules)}
    assert not back, ("back on the apt hook's import path (apt pays it on every transaction; see "
                      f"docs/benchmarks.md and pveguard/records.py): {back}")


@pytest.mark.parametrize("module", ["dataclasses", "typing"])
def test_the_check_sees_a_heavy_import(tmp_path: Path, module: str) -> None:
    """The same check on a copy of the package whose hook imports one of them again: it must notice."""
    copy = tmp_path / "lib"
    src = Path(pveguard.__file__).resolve().parent
    shutil.copytree(src, copy / "pveguard", ignore=shutil.ignore_patterns("__pycache__"))
    hook = copy / "pveguard/guard/hook.py"
    hook.write_text(hook.read_text().replace("import contextlib\n", f"import contextlib\nimport {module}\n", 1))
    work = tmp_path / "work"
    work.mkdir()
    _, modules, _ = run_hook_fresh(work, str(copy))
    assert module in modules
