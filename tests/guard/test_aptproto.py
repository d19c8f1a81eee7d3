"""The v2/v3 protocol parser: captured apt messages as golden input, tables of bad input, and
hypothesis: no input makes the parser (or the whole hook) crash."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pveguard.guard import hook
from pveguard.guard.aptproto import ProtocolError, parse, unquote

# The exact shape apt 2.6 sends (apt's apt-pkg/deb/dpkgpm.cc, SendPkgsInfo), trimmed configuration section.
CAPTURED_V3 = b"""VERSION 3
APT::Architecture=amd64
APT::Build-Essential::=build-essential
DPkg::Pre-Install-Pkgs::=/usr/sbin/dpkg-preconfigure%20--apt%20||%20true
DPkg::Tools::Options::/usr/local/bin/hook-v3::Version=3
Binary=apt-get
CommandLine::AsString=apt-get%20install%20-y%20pve-fake-core=1.0%20random-tool=1.0
quiet=1

pve-fake-core - - none < 1.0 all none /srv/repo/./pve-fake-core_1.0_all.deb
random-tool - - none < 1.0 amd64 foreign /srv/repo/./random-tool_1.0_amd64.deb
pve-fake-core - - none < 1.0 all none **CONFIGURE**
random-tool - - none < 1.0 amd64 foreign **CONFIGURE**
"""

V3_LINES = {
    "upgrade": b"random-tool 1.0 amd64 foreign < 1.1 amd64 foreign /srv/repo/./random-tool_1.1_amd64.deb",
    "downgrade": b"pve-fake-core 2.0 all none > 1.0 all none /srv/repo/./pve-fake-core_1.0_all.deb",
    "reinstall": b"random-tool 1.1 amd64 foreign = 1.1 amd64 foreign /srv/repo/./random-tool_1.1_amd64.deb",
    "remove": b"pve-fake-core 1.0 all none > - - none **REMOVE**",
    "install": b"libpopt0 - - none < 1.19+dfsg-1 amd64 same /var/cache/apt/archives/libpopt0_1.19+dfsg-1_amd64.deb",
}
V2_LINES = {
    "upgrade": b"random-tool 1.0 < 1.1 /srv/repo/./random-tool_1.1_amd64.deb",
    "downgrade": b"pve-fake-core 2.0 > 1.0 /srv/repo/./pve-fake-core_1.0_all.deb",
    "reinstall": b"random-tool 1.1 = 1.1 /srv/repo/./random-tool_1.1_amd64.deb",
    "remove": b"pve-fake-core 1.0 > - **REMOVE**",
}


def test_captured_v3_message() -> None:
    msg = parse(CAPTURED_V3)
    assert msg.version == 3
    assert msg.command_line == "apt-get install -y pve-fake-core=1.0 random-tool=1.0"
    assert msg.config["APT::Build-Essential::"] == ["build-essential"]
    assert msg.get("DPkg::Pre-Install-Pkgs::") == "/usr/sbin/dpkg-preconfigure --apt || true"
    assert len(msg.actions) == 4
    acts = msg.package_actions()
    assert [(a.package, a.kind, a.new_version, a.new_arch) for a in acts] == [
        ("pve-fake-core", "install", "1.0", "all"), ("random-tool", "install", "1.0", "amd64")]
    assert acts[0].deb_path == "/srv/repo/./pve-fake-core_1.0_all.deb"
    assert not msg.dry_run and not msg.purge


@pytest.mark.parametrize(("kind", "line"), sorted(V3_LINES.items()))
def test_v3_kinds(kind: str, line: bytes) -> None:
    [action] = parse(b"VERSION 3\nquiet=1\n\n" + line + b"\n").actions
    assert action.kind == kind


@pytest.mark.parametrize(("kind", "line"), sorted(V2_LINES.items()))
def test_v2_kinds(kind: str, line: bytes) -> None:
    [action] = parse(b"VERSION 2\n\n" + line + b"\n").actions
    assert action.kind == kind


def test_purge_and_debug_flags() -> None:
    msg = parse(b"VERSION 3\nAPT::Get::Purge=1\nDebug::pkgDPkgPM=1\n\n" + V3_LINES["remove"] + b"\n")
    assert msg.purge and msg.dry_run


def test_replaced_package_keeps_the_unpack() -> None:
    msg = parse(b"VERSION 3\n\n" + V3_LINES["remove"] + b"\n"
                + b"pve-fake-core - - none < 1.0 all none /srv/x.deb\n")
    assert [a.kind for a in msg.package_actions()] == ["install"]


def test_unquote() -> None:
    assert unquote(b"a%20b%25c%3Dd") == "a b%c=d"
    assert unquote(b"%C3%A4") == "ä"
    assert unquote(b"%zz") == "%zz"


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no input"),
    (b"/srv/repo/./x_1.0_all.deb\n", "expected 'VERSION 2' or 'VERSION 3'"),  # a v1 registration
    (b"VERSION 1\n\n", "version 1 is not supported"),
    (b"VERSION 4\n\n", "version 4 is not supported"),
    (b"VERSION 3\nquiet=1\n", "no terminating empty line"),
    (b"VERSION 3\nnoequals\n\n", "without 'key=value'"),
    (b"VERSION 3\n\nx 1 < 2 /a.deb\n", "expected 9 fields, got 5"),
    (b"VERSION 2\n\n" + V3_LINES["upgrade"] + b"\n", "expected 5 fields, got 9"),
    (b"VERSION 3\n\nFOO - - none < 1 all none /a.deb\n", "is not a package name"),
    (b"VERSION 3\n\nfoo - - none ? 1 all none /a.deb\n", "unknown direction"),
    (b"VERSION 3\n\nfoo - - none < 1 all none relative.deb\n", "neither a .deb path"),
    (b"VERSION 3\n\nfoo - - none > - - none **REMOVE**\n", "which is not installed"),
    (b"VERSION 3\n\nfoo - - none < - - none /a.deb\n", "without a new version"),
    (b"VERSION 3\n\nfoo - - none < 1 all none /\xff.deb\n", "not UTF-8"),
])
def test_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=None) as info:
        parse(data)
    assert message in str(info.value)


_token = st.one_of(st.sampled_from(["-", "<", ">", "=", "none", "all", "amd64", "**REMOVE**", "**CONFIGURE**",
                                    "**ERROR**", "/a.deb", "1.0", "pkg", "VERSION", "3"]),
                   st.text(min_size=0, max_size=8))
_line = st.lists(_token, min_size=0, max_size=11).map(" ".join)
_message = st.tuples(st.sampled_from(["VERSION 3", "VERSION 2", "VERSION 1", "", "VERSION x"]),
                     st.lists(st.text(max_size=30), max_size=5), st.booleans(), st.lists(_line, max_size=8))


def _render(parts: tuple[str, list[str], bool, list[str]]) -> bytes:
    header, config, blank, actions = parts
    text = "\n".join([header, *config, *([""] if blank else []), *actions]) + "\n"
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), _message.map(_render)))
def test_parser_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        msg = parse(data)
    except ProtocolError:
        return
    for action in msg.package_actions():
        assert action.kind in ("install", "upgrade", "downgrade", "reinstall", "remove")


def _policy_tree(tmp: Path) -> hook.HookEnv:
    state = tmp / "state"
    (tmp / "etc").mkdir(exist_ok=True)
    (tmp / "etc/policy.conf").write_text(
        f"VERSION=1\nALLOW_CORE_ONLY=true\nREQUIRE_APPROVAL=true\nCONTAINER_FIRST=true\nCORE_ROOTS=proxmox-ve\n"
        f"STATE_DIR={state}\n")
    (tmp / "status").write_text("Package: proxmox-ve\nStatus: install ok installed\nVersion: 8.0\n"
                                "Depends: pve-manager\n\nPackage: pve-manager\nStatus: install ok installed\n"
                                "Version: 8.0\n")
    return hook.HookEnv(policy_file=tmp / "etc/policy.conf", cluster_policy_file=tmp / "nope/policy.conf",
                        break_glass_file=tmp / "etc/break-glass", break_glass_log=tmp / "bg.log",
                        dpkg_status=tmp / "status")


def run_hook(paths: hook.HookEnv, data: bytes) -> tuple[int, str]:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    out = io.StringIO()
    try:
        code = hook.main(environ={"APT_HOOK_INFO_FD": str(read)}, out=out, paths=paths)
    finally:
        os.close(read)
    return code, out.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), _message.map(_render)))
def test_whole_hook_never_crashes(tmp_path: Path, data: bytes) -> None:
    """Any input ends in a verdict (0 allow, 2 fail closed, 3 refused) and messages, never a traceback."""
    paths = _policy_tree(tmp_path)
    code, out = run_hook(paths, data)
    assert code in (0, 2, 3)
    assert "Traceback" not in out
    if code == 2:
        assert "E: pveguard:" in out and "internal error" not in out
