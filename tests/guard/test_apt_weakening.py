"""`weakening_findings` on `apt-config dump` text as Debian 12's apt prints it (the chroot tests in
test_chroot_weakened.py check the same against real apt)."""

from __future__ import annotations

from pveguard.guard.install import weakening_findings

HOOK = "/usr/local/lib/pveguard/apt-hook"
OWN = "/etc/apt/apt.conf.d/05pveguard"


def dump(*, hooks: tuple[str, ...] = (HOOK,), version: str | None = "3", infofd: str | None = "20") -> str:
    lines = ['APT::Architecture "amd64";', 'DPkg::Pre-Install-Pkgs "";']
    lines += [f'DPkg::Pre-Install-Pkgs:: "{h}";' for h in hooks]
    lines.append(f'DPkg::Tools::Options::{HOOK} "";')
    if version is not None:
        lines.append(f'DPkg::Tools::Options::{HOOK}::Version "{version}";')
    if infofd is not None:
        lines.append(f'DPkg::Tools::Options::{HOOK}::InfoFD "{infofd}";')
    return "\n".join(lines) + "\n"


FILES = {OWN: f'DPkg::Pre-Install-Pkgs {{"{HOOK}";}};\n',
         "/etc/apt/apt.conf.d/70debconf": 'DPkg::Pre-Install-Pkgs {"/usr/sbin/dpkg-preconfigure --apt || true";};\n'}


def test_registered_as_installed_is_clean() -> None:
    assert weakening_findings(dump(hooks=(HOOK, "/usr/sbin/dpkg-preconfigure --apt || true")), FILES, OWN) == []


def test_infofd_override_is_weakened_and_names_the_file() -> None:
    files = {**FILES, "/etc/apt/apt.conf.d/99local": f'DPkg::Tools::Options::{HOOK}::InfoFD "0";\n'}
    [f] = weakening_findings(dump(infofd="0"), files, OWN)
    assert f.kind == "weakened" and f.severity == "critical"
    assert "InfoFD=0 instead of 3 and 20 (set in /etc/apt/apt.conf.d/99local)" in f.message
    assert "70debconf" not in f.message + f.hint


def test_version_1_says_the_hook_fails_closed() -> None:
    [f] = weakening_findings(dump(version="1"), FILES, OWN)
    assert f.kind == "weakened" and "only file names" in f.message


def test_cleared_options_read_as_apt_defaults() -> None:
    [f] = weakening_findings(dump(version=None, infofd=None), FILES, OWN)
    assert "Version=(unset: 1) InfoFD=(unset: 0, stdin)" in f.message


def test_cleared_list_is_disabled_and_names_the_file() -> None:
    files = {**FILES, "/etc/apt/apt.conf.d/99sneaky": "#clear   DPkg::Pre-Install-Pkgs ;\n"}
    [f] = weakening_findings(dump(hooks=("/usr/sbin/dpkg-preconfigure --apt || true",)), files, OWN)
    assert f.kind == "disabled" and "/etc/apt/apt.conf.d/99sneaky" in f.message


def test_wrapped_entry_that_ignores_the_verdict_is_weakened() -> None:
    entry = f"{HOOK} || true"
    [f] = weakening_findings(dump(hooks=(entry,)), FILES, OWN)
    assert f.kind == "weakened" and repr(entry) in f.message
