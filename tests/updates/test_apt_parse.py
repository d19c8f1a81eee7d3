"""Parsing `apt-get -s upgrade` and telling security archives apart (the lines are apt's own, from
Debian 12 and Ubuntu 22.04 hosts and from the real-LXC test's local repository)."""

from __future__ import annotations

from pveguard.updates.apt import is_security, parse_simulation, upgrade_argv
from pveguard.updates.run import apt_error

SIM = """Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following packages will be upgraded:
  libc6 tzdata
Inst libc6 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian:12.6/stable, Debian-Security:12/stable-security [amd64])
Inst tzdata [2024a-0+deb12u1] (2025a-0+deb12u1 Debian:12.9/stable-updates [all])
Inst pgu-app [1.0] (2.0 pgu-test:stable-security [all])
Inst newdep (1.0 Debian:12.6/stable [amd64])
Conf libc6 (2.36-9+deb12u7 Debian:12.6/stable, Debian-Security:12/stable-security [amd64])
"""


def test_parse_simulation_reads_versions_origins_and_leaves_new_installs_out() -> None:
    got = parse_simulation(SIM)
    assert [(p.name, p.installed, p.candidate, p.security) for p in got] == [
        ("libc6", "2.36-9+deb12u4", "2.36-9+deb12u7", True),
        ("tzdata", "2024a-0+deb12u1", "2025a-0+deb12u1", False),
        ("pgu-app", "1.0", "2.0", True)]
    assert got[0].origins == ("Debian:12.6/stable", "Debian-Security:12/stable-security")
    assert got[2].arch == "all"


def test_is_security() -> None:
    assert is_security("Debian-Security:12/stable-security")
    assert is_security("Ubuntu:22.04/jammy-security")
    assert is_security("local:bookworm-security")
    assert not is_security("Debian:12.9/stable-updates")
    assert not is_security("Debian:12.6/stable")
    assert not is_security("securityonion:1/stable")  # a name that merely starts with the word
    assert parse_simulation("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n") == []


def test_upgrade_argv_is_noninteractive_and_names_only_the_selected() -> None:
    whole = upgrade_argv(None)
    assert whole[:2] == ["env", "DEBIAN_FRONTEND=noninteractive"] and whole[-1] == "upgrade"
    assert "Dpkg::Options::=--force-confold" in whole and "-y" in whole
    some = upgrade_argv(parse_simulation(SIM)[::-1])
    assert some[-4:] == ["--only-upgrade", "libc6", "pgu-app", "tzdata"]


def test_apt_error_names_the_failing_maintainer_script() -> None:
    out = ("Setting up pgu-app (2.0) ...\n")
    err = ("pgu-app 2.0: postinst fails on purpose\n"
           "dpkg: error processing package pgu-app (--configure):\n"
           " installed pgu-app package post-installation script subprocess returned error exit status 1\n"
           "Errors were encountered while processing:\n pgu-app\n"
           "E: Sub-process /usr/bin/dpkg returned an error code (1)\n")
    assert apt_error(out + err) == ("dpkg: error processing package pgu-app (--configure): installed pgu-app package "
                                    "post-installation script subprocess returned error exit status 1")
    assert apt_error("W: x\nE: Unable to locate package nope\nE: later\n") == "E: Unable to locate package nope"
    assert apt_error("just this\n") == "just this"
