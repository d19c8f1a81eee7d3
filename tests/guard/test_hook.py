"""The hook end to end without apt: protocol bytes on a real pipe, a real state store and ledger in a
temporary directory, real .deb files from dpkg-deb. (The chroot tests add real apt and dpkg.)"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pveguard.guard import approvals, hook
from pveguard.guard.decide import Policy, render_policy
from pveguard.security.ledger import Ledger
from pveguard.store import Store

STATUS = """\
Package: proxmox-ve
Status: install ok installed
Version: 8.0
Depends: pve-manager, lxc-pve

Package: pve-manager
Status: install ok installed
Version: 8.0

Package: lxc-pve
Status: install ok installed
Version: 6.0
Depends: lxcfs

Package: lxcfs
Status: install ok installed
Version: 6.0

Package: random-tool
Status: install ok installed
Version: 1.0
"""


@pytest.fixture
def env(tmp_path: Path) -> hook.HookEnv:
    state = tmp_path / "state"
    (tmp_path / "etc").mkdir()
    policy = Policy(state_dir=str(state), containers=(("pve-monitoring", ("grafana",)),))
    (tmp_path / "etc/policy.conf").write_text(render_policy(policy))
    (tmp_path / "status").write_text(STATUS)
    return hook.HookEnv(policy_file=tmp_path / "etc/policy.conf", cluster_policy_file=tmp_path / "pve/policy.conf",
                        break_glass_file=tmp_path / "etc/break-glass", break_glass_log=tmp_path / "bg.log",
                        dpkg_status=tmp_path / "status")


def message(*lines: str, config: str = "quiet=1\n") -> bytes:
    return ("VERSION 3\n" + config + "CommandLine::AsString=apt-get%20install%20x\n\n"
            + "".join(line + "\n" for line in lines)).encode()


def run(env: hook.HookEnv, data: bytes, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    out = io.StringIO()
    try:
        code = hook.main(environ={"APT_HOOK_INFO_FD": str(read), **(extra_env or {})}, out=out, paths=env)
    finally:
        os.close(read)
    return code, out.getvalue()


def entries(env: hook.HookEnv, action: str) -> list[dict]:
    state = Path(hook.load_policy(env).state_dir)
    with Store(state) as store:
        return [e.as_dict() for e in Ledger(store).entries(action=action)]


GRAFANA = "grafana - - none < 10.0 all none /nonexistent/grafana_10.0_all.deb"


def run_on_stdin(env: hook.HookEnv, data: bytes, environ: dict[str, str]) -> tuple[int, str]:
    """The hook with `data` on fd 0, as apt hands it over when InfoFD is 0 (its default)."""
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    saved = os.dup(0)
    out = io.StringIO()
    try:
        os.dup2(read, 0)
        code = hook.main(environ=environ, out=out, paths=env)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)
    return code, out.getvalue()


@pytest.mark.parametrize("environ", [{"APT_HOOK_INFO_FD": "0"}, {}, {"APT_HOOK_INFO_FD": ""}],
                         ids=["infofd-0", "unset", "empty"])
def test_message_on_stdin_is_decided_not_waved_through(env: hook.HookEnv, environ: dict[str, str]) -> None:
    """apt sets APT_HOOK_INFO_FD=0 for `InfoFD "0"`; unset means apt's default, stdin, as well."""
    code, out = run_on_stdin(env, message(GRAFANA), environ)
    assert code == hook.EXIT_REFUSED, out
    assert "refused 'grafana'" in out
    assert entries(env, "guard.decision")[0]["details"]["refused"] == ["grafana"]


@pytest.mark.parametrize("environ", [{"APT_HOOK_INFO_FD": "0"}, {}], ids=["infofd-0", "unset"])
def test_no_message_fails_closed(env: hook.HookEnv, environ: dict[str, str]) -> None:
    code, out = run_on_stdin(env, b"", environ)
    assert code == hook.EXIT_FAIL_CLOSED, out
    assert "E: pveguard: no message from apt:" in out and "had nothing to read" in out
    assert "refusing the whole transaction (fail closed)" in out


def test_terminal_instead_of_a_message_fails_closed_without_waiting(env: hook.HookEnv) -> None:
    leader, follower = os.openpty()
    out = io.StringIO()
    try:
        code = hook.main(environ={"APT_HOOK_INFO_FD": str(follower)}, out=out, paths=env)
    finally:
        os.close(leader)
        os.close(follower)
    assert code == hook.EXIT_FAIL_CLOSED
    assert "is a terminal" in out.getvalue() and "pveguard guard check --" in out.getvalue()


def test_refusal_is_recorded_with_user_and_command(env: hook.HookEnv) -> None:
    code, out = run(env, message(GRAFANA), {"SUDO_USER": "alice"})
    assert code == hook.EXIT_REFUSED
    assert "pveguard: refused 'grafana' (not a core PVE package). It belongs in container 'pve-monitoring' " \
           "(CONTAINER_FIRST): pveguard install grafana" in out
    [entry] = entries(env, "guard.decision")
    assert entry["actor"].startswith("alice (uid ")
    d = entry["details"]
    assert d["verdict"] == "refused" and d["user"] == "alice" and d["refused"] == ["grafana"]
    assert d["apt_command_line"] == "apt-get install x"
    assert d["command_line"]  # our parent's cmdline (pytest here; apt under apt)


def test_upgrade_and_non_core_removal_pass(env: hook.HookEnv) -> None:
    code, out = run(env, message("random-tool 1.0 all none < 1.1 all none /x/random-tool_1.1_all.deb",
                                 "random-tool 1.0 all none < 1.1 all none **CONFIGURE**"))
    assert code == 0 and "pveguard: allowed 1 package(s) (1 upgrade)" in out
    code, out = run(env, message("random-tool 1.0 all none > - - none **REMOVE**"))
    assert code == 0


def test_core_removal_refused_by_closure(env: hook.HookEnv) -> None:
    code, out = run(env, message("lxcfs 6.0 all none > - - none **REMOVE**"))
    assert code == hook.EXIT_REFUSED
    assert "refused removing 'lxcfs' (core PVE package: in the dependency closure of the core roots (via lxc-pve))" \
        in out


def test_approval_is_consumed_once(env: hook.HookEnv) -> None:
    state = Path(hook.load_policy(env).state_dir)
    with Store(state) as store:
        approvals.add(store, "grafana", None, "why", 3600, 1, "root")
    assert run(env, message(GRAFANA))[0] == 0
    assert run(env, message(GRAFANA))[0] == hook.EXIT_REFUSED
    with Store(state) as store:
        [rec] = approvals.listing(store, include_all=True)
    assert rec.uses_left == 0
    assert entries(env, "guard.decision")[0]["details"]["approvals_used"] == [1]


def test_dry_run_writes_the_check_file_and_spends_nothing(env: hook.HookEnv, tmp_path: Path) -> None:
    state = Path(hook.load_policy(env).state_dir)
    with Store(state) as store:
        approvals.add(store, "grafana", None, "why", 3600, 1, "root")
    result = tmp_path / "check.json"
    code, _ = run(env, message(GRAFANA, config="Debug::pkgDPkgPM=1\n"), {hook.CHECK_RESULT_ENV: str(result)})
    assert code == 0
    assert json.loads(result.read_text())["items"][0]["reason"] == "approved"
    with Store(state) as store:
        assert approvals.listing(store)[0].uses_left == 1
    assert entries(env, "guard.check") and not entries(env, "guard.decision")


@pytest.mark.parametrize(("policy_text", "expected"), [
    (None, "the installation policy {p} is missing"),
    ("ALLOW_CORE_ONLY=perhaps\n", "the installation policy {p} is corrupted: line 1: ALLOW_CORE_ONLY must be"),
    (b"\xff\xfe", "cannot read the installation policy {p}"),
])
def test_policy_problems_fail_closed(env: hook.HookEnv, policy_text: str | bytes | None, expected: str) -> None:
    p = env.policy_file
    if policy_text is None:
        p.unlink()
    elif isinstance(policy_text, bytes):
        p.write_bytes(policy_text)
    else:
        p.write_text(policy_text)
    code, out = run(env, message(GRAFANA))
    assert code == hook.EXIT_FAIL_CLOSED
    assert "E: pveguard: " + expected.format(p=p) in out
    assert f"'touch {env.break_glass_file}'" in out


def test_unreadable_state_and_bad_input_fail_closed(env: hook.HookEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory should be")
    env.policy_file.write_text(render_policy(Policy(state_dir=str(blocker / "state"))))
    code, out = run(env, message(GRAFANA))
    assert code == hook.EXIT_FAIL_CLOSED and "cannot open the pveguard state" in out
    env.policy_file.write_text(render_policy(Policy(state_dir=str(tmp_path / "state"))))
    code, out = run(env, b"/var/cache/apt/archives/x_1_all.deb\n")  # registered as protocol v1
    assert code == hook.EXIT_FAIL_CLOSED and "cannot read apt's hook message: expected 'VERSION 2'" in out
    env.dpkg_status.unlink()
    code, out = run(env, message(GRAFANA))
    assert code == hook.EXIT_FAIL_CLOSED and "cannot read the dpkg status" in out


def test_break_glass_is_consumed_and_recorded(env: hook.HookEnv) -> None:
    env.policy_file.write_text("garbage\n")
    env.break_glass_file.write_text("INC-7\n")
    code, out = run(env, message(GRAFANA))
    assert code == 0 and "BREAK-GLASS" in out
    assert not env.break_glass_file.exists()
    # The policy (with the state dir) is unreadable, so the entry went to the fallback state dir or log.
    assert env.break_glass_log.exists() or "the ledger" in out
    code, _ = run(env, message(GRAFANA))
    assert code == hook.EXIT_FAIL_CLOSED


def test_break_glass_goes_to_the_ledger_when_the_state_is_fine(env: hook.HookEnv, tmp_path: Path) -> None:
    (tmp_path / "status").unlink()  # a failure that is not the policy's
    env.break_glass_file.write_text("")
    assert run(env, message(GRAFANA))[0] == 0
    [entry] = entries(env, "guard.break_glass")
    assert "cannot read the dpkg status" in entry["details"]["failure"]


def test_core_cache_is_keyed_by_the_status_file(env: hook.HookEnv) -> None:
    policy = hook.load_policy(env)
    state = Path(policy.state_dir)
    state.mkdir(parents=True)
    first = hook.core_index(env.dpkg_status, state, policy)
    assert first["lxcfs"] == (True, "closure", "via lxc-pve") and first["random-tool"][0] is False
    cache = json.loads((state / hook.CORE_CACHE_NAME).read_text())
    assert cache["packages"]["lxcfs"] == [True, "closure", "via lxc-pve"]
    # A tampered cache with the right key would be believed, which shows the key is what is checked...
    cache["packages"]["random-tool"] = [True, "extra", "planted"]
    (state / hook.CORE_CACHE_NAME).write_text(json.dumps(cache))
    assert hook.core_index(env.dpkg_status, state, policy)["random-tool"][0] is True
    # ...and any change of the status file (dpkg rewrites it) invalidates it.
    env.dpkg_status.write_text(STATUS + "\nPackage: htop\nStatus: install ok installed\nVersion: 3\n")
    again = hook.core_index(env.dpkg_status, state, policy)
    assert again["random-tool"][0] is False and "htop" in again


def test_a_stale_core_cache_is_not_parsed_and_a_current_one_is(env: hook.HookEnv,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    policy = hook.load_policy(env)
    state = Path(policy.state_dir)
    state.mkdir(parents=True)
    first = hook.core_index(env.dpkg_status, state, policy)
    parsed: list[int] = []
    loads = json.loads
    # (the incremental rebuild's own state, CORE_BASE_NAME, starts with '{"format"': not counted here)
    monkeypatch.setattr(hook.json, "loads",
                        lambda text: (text.startswith('{"key"') and parsed.append(len(text))) or loads(text))
    assert hook.core_index(env.dpkg_status, state, policy) == first and len(parsed) == 1
    # dpkg ran: the key in the cache's first bytes differs, so it is rebuilt without being parsed
    env.dpkg_status.write_text(STATUS + "\nPackage: htop\nStatus: install ok installed\nVersion: 3\n")
    again = hook.core_index(env.dpkg_status, state, policy)
    assert "htop" in again and len(parsed) == 1
    assert hook.core_index(env.dpkg_status, state, policy) == again and len(parsed) == 2


needs_dpkg_deb = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _deb(tmp_path: Path, control: str) -> Path:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(control)
    out = tmp_path / "x.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


@needs_dpkg_deb
@pytest.mark.parametrize("compression", ["xz", "gzip", "none"])
def test_read_deb_control(tmp_path: Path, compression: str) -> None:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: foo\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@invalid>\nEssential: yes\n"
        "Depends: a (>= 1) | b, c\nRecommends: d,\n e\nProvides: virt\nDescription: x\n y\n")
    out = tmp_path / "foo.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    pkg = hook.read_deb_control(str(out))
    assert pkg is not None and pkg.name == "foo" and pkg.essential
    assert pkg.depends() == [["a", "b"], ["c"]] and pkg.provides() == ["virt"]
    assert pkg.fields["recommends"] == "d, e"


def _tar(members: list[tuple[str, bytes | None]], fmt: int) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@needs_dpkg_deb
def test_the_hooks_own_tar_reader_reads_what_tarfile_reads(tmp_path: Path) -> None:
    """hook._plain_tar_control (no tarfile import on apt's path) gives tarfile's answer for what
    dpkg-deb writes, and hands everything else to tarfile (_NOT_PLAIN), never a different answer."""
    import gzip
    import lzma
    import tarfile

    control = b"Package: foo\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@invalid>\nDescription: x\n"
    long_dir = "d" * 120
    cases: list[tuple[str, bytes]] = []
    for compression, name in (("xz", "control.tar.xz"), ("gzip", "control.tar.gz"), ("none", "control.tar")):
        tree = tmp_path / compression
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN/control").write_bytes(control)
        (tree / "DEBIAN/postinst").write_text("#!/bin/sh\n" + "x" * 700 + "\n")
        (tree / "DEBIAN/postinst").chmod(0o755)
        out = tmp_path / f"{compression}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(out)],
                       check=True, capture_output=True)
        ar = subprocess.run(["ar", "p", str(out), name], check=True, capture_output=True).stdout
        cases.append((name, ar))
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for members in ([("./", None), ("./md5sums", b"abc\n"), ("./control", control)],
                        [("control", control)], [("./control", None)], [("./other", b"x")],
                        [(f"{long_dir}/x", b"1"), ("./control", control)]):
            raw = _tar(members, fmt)
            cases += [("control.tar", raw), ("control.tar.gz", gzip.compress(raw)),
                      ("control.tar.xz", lzma.compress(raw)), ("control.tar", raw[:700]),
                      ("control.tar.gz", gzip.compress(raw) + gzip.compress(raw)),
                      ("control.tar.zst", raw), ("control.tar.xz", b"junk")]
    plain = 0
    for name, data in cases:
        got = hook._plain_tar_control(name, data)
        if got is not hook._NOT_PLAIN:
            plain += 1
            assert got == hook._tarfile_control(data), (name, data[:40])
    assert plain >= 30  # what dpkg-deb writes is read here, not handed on
    assert all(hook._plain_tar_control(n, d) == control.decode() for n, d in cases[:3])


def test_read_deb_control_of_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"!<arch>\n" + b"control.tar.xz  0           0     0     100644  99999999  `\n" + b"x" * 50)
    assert hook.read_deb_control(str(junk)) is None
    assert hook.read_deb_control(str(tmp_path / "missing.deb")) is None


@needs_dpkg_deb
def test_new_essential_package_is_core_from_its_control(env: hook.HookEnv, tmp_path: Path) -> None:
    deb = _deb(tmp_path, "Package: base-thing\nVersion: 1\nArchitecture: all\nMaintainer: t <t@invalid>\n"
                         "Essential: yes\nDescription: x\n")
    code, out = run(env, message(f"base-thing - - none < 1 all none {deb}"))
    assert code == 0, out
    assert entries(env, "guard.decision")[0]["details"]["packages"][0]["detail"] == "Essential: yes"


def test_apt_command_line_skips_the_shell(tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text("import sys; sys.path[:0] = %r\nfrom pveguard.guard.hook import apt_command_line\n"
                      "print(apt_command_line())\n" % [str(Path(hook.__file__).parents[2])])
    # sh -c 'python3 show.py; true' keeps the shell alive as the parent of python.
    r = subprocess.run(["sh", "-c", f"{shutil.which('python3') or 'python3'} {script}; true", "marker-arg"],
                       capture_output=True, text=True, check=True)
    assert "marker-arg" not in r.stdout  # the shell was skipped...
    assert "pytest" in r.stdout or "python" in r.stdout  # ...in favour of the process that ran it
