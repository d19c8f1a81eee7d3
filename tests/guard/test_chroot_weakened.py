"""apt configuration that weakens the guard, judged by real apt in the Debian 12 chroot: what apt
does with it, and what `guard status` and the audit report (issue 12, "the hook's allow path")."""

from __future__ import annotations

import json

import pytest
from aptchroot import AptChroot
from test_chroot_apt import refused_cleanly

pytestmark = [pytest.mark.slow, pytest.mark.root]

HOOK = "/usr/local/lib/pveguard/apt-hook"


def findings(ch: AptChroot) -> list[dict]:
    st = ch.pveguard("guard", "status", "--json")
    assert st.returncode == 1, st.stdout + st.stderr
    return list(json.loads(st.stdout)["findings"])


def audit_guard(ch: AptChroot) -> dict[str, dict]:
    r = ch.pveguard("audit", "--json")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return {f["id"]: f for f in json.loads(r.stdout)["findings"] if f["category"] == "guard"}


def test_infofd_0_still_decides_and_is_reported(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/99local").write_text(f'DPkg::Tools::Options::{HOOK}::InfoFD "0";\n')
    before = chroot.status_sha()
    r = chroot.apt("install", "grafana")  # apt sets APT_HOOK_INFO_FD=0 and writes the message to stdin
    refused_cleanly(chroot, before, r)
    assert "refused 'grafana'" in r.stdout + r.stderr
    [f] = findings(chroot)
    assert f["kind"] == "weakened"
    assert "InfoFD=0 instead of 3 and 20 (set in /etc/apt/apt.conf.d/99local)" in f["message"]
    assert audit_guard(chroot)["guard:weakened"]["severity"] == "critical"


def test_hook_behind_or_true_lets_apt_through_and_is_reported(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/99wrap").write_text(
        f'#clear DPkg::Pre-Install-Pkgs;\nDPkg::Pre-Install-Pkgs {{"{HOOK} || true";}};\n')
    r = chroot.apt("install", "htop")
    assert r.returncode == 0, r.stdout + r.stderr  # what the guard reports is real: apt ignores its verdict
    assert chroot.version("htop") == "3.2"
    [f] = findings(chroot)
    assert f["kind"] == "weakened" and "/etc/apt/apt.conf.d/99wrap" in f["message"]


def test_cleared_list_names_the_file(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/99sneaky").write_text("#clear DPkg::Pre-Install-Pkgs;\n")
    [f] = findings(chroot)
    assert f["kind"] == "disabled" and "(set in /etc/apt/apt.conf.d/99sneaky)" in f["message"]
    assert "guard:disabled" in audit_guard(chroot)


def test_unreadable_apt_configuration_is_unverified(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/99broken").write_text('Foo "bar"\nBaz "x";\n')
    [f] = findings(chroot)
    assert f["kind"] == "unverified" and "apt cannot read its own configuration" in f["message"]
    assert "99broken" in f["message"]
    assert chroot.apt("install", "htop").returncode == 100  # apt refuses to run too: nothing gets past
