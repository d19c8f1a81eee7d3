"""The guard against real apt and dpkg in a Debian 12 chroot (issue 5's "done when" list).

Each test runs in its own overlay over a prepared root that has the fake PVE tree installed
(proxmox-ve 8.0, pve-manager 8.0, ...), the non-core random-tool 1.0, and the guard registered by
`pveguard guard install` inside the chroot.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from aptchroot import AptChroot

pytestmark = [pytest.mark.slow, pytest.mark.root]


def refused_cleanly(ch: AptChroot, before: str, r: subprocess.CompletedProcess[str]) -> None:
    """apt exit 100, dpkg status byte-identical, dpkg --audit clean."""
    assert r.returncode == 100, r.stdout + r.stderr
    assert ch.status_sha() == before
    audit = ch.run(["dpkg", "--audit"])
    assert audit.returncode == 0 and audit.stdout.strip() == "", audit.stdout
    assert not any(ch.path("/var/lib/dpkg/updates").iterdir())


def ledger(ch: AptChroot, action: str) -> list[dict]:
    r = ch.pveguard("audit-log", "show", "--action", action, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_guard_is_registered_v3_on_fd20(chroot: AptChroot) -> None:
    dump = chroot.run(["apt-config", "dump"]).stdout
    assert 'DPkg::Pre-Install-Pkgs:: "/usr/local/lib/pveguard/apt-hook";' in dump
    assert 'DPkg::Tools::Options::/usr/local/lib/pveguard/apt-hook::Version "3";' in dump
    assert 'DPkg::Tools::Options::/usr/local/lib/pveguard/apt-hook::InfoFD "20";' in dump
    status = chroot.pveguard("guard", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    data = json.loads(status.stdout)
    assert data["installed"] and data["intact"] and data["policy"]["allow_core_only"] is True


def test_non_core_install_is_refused_and_nothing_changes(chroot: AptChroot) -> None:
    before = chroot.status_sha()
    r = chroot.apt("install", "grafana")
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "pveguard: refused 'grafana' (not a core PVE package). It belongs in container 'pve-monitoring' " \
           "(CONTAINER_FIRST): pveguard install grafana" in out
    assert "E: Sub-process /usr/local/lib/pveguard/apt-hook returned an error code (3)" in out
    assert chroot.version("grafana") is None
    entry = ledger(chroot, "guard.decision")[-1]
    assert entry["details"]["verdict"] == "refused"
    assert set(entry["details"]["refused"]) == {"grafana", "grafana-data"}
    assert "apt-get -y -q install grafana" in entry["details"]["command_line"]
    assert entry["details"]["user"]


def test_core_install_and_upgrade_with_new_dependencies_pass(chroot: AptChroot) -> None:
    r = chroot.apt("install", "pve-zsync")  # new core package with a new non-core-by-name dependency
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("pve-zsync") == "2.3" and chroot.version("libnet-openssh-perl") == "1.0"
    r = chroot.apt("install", "pve-manager")  # 8.0 -> 8.1, pulls proxmox-termproxy and libjs-qrcodejs
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("pve-manager") == "8.1"
    assert chroot.version("proxmox-termproxy") == "1.0" and chroot.version("libjs-qrcodejs") == "1.2"
    items = {i["package"]: i for i in ledger(chroot, "guard.decision")[-1]["details"]["packages"]}
    assert items["pve-manager"]["reason"] == "upgrade"
    assert items["proxmox-termproxy"]["reason"] == "dependency"


def test_upgrading_installed_non_core_package_passes(chroot: AptChroot) -> None:
    r = chroot.apt("install", "random-tool")  # 1.0 -> 1.1 with the new dependency random-lib
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("random-tool") == "1.1" and chroot.version("random-lib") == "1.0"


def test_removing_core_is_refused_removing_non_core_passes(chroot: AptChroot) -> None:
    before = chroot.status_sha()
    r = chroot.apt("remove", "lxcfs")
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "pveguard: refused removing 'lxcfs' (core PVE package:" in out
    assert "pveguard: refused removing 'proxmox-ve'" in out
    assert chroot.version("lxcfs") == "1.0"
    r = chroot.apt("remove", "random-tool")
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("random-tool") is None


def test_mixed_transaction_is_refused_as_a_whole(chroot: AptChroot) -> None:
    before = chroot.status_sha()
    r = chroot.apt("install", "pve-zsync", "grafana", "htop")
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "refused 'grafana'" in out and "refused 'grafana-data'" in out
    assert "refused 'htop' (not a core PVE package). Run it in a container: pveguard install htop --container NAME" \
        in out
    assert "refused 'pve-zsync'" not in out and "refused 'libnet-openssh-perl'" not in out
    assert "the whole transaction is refused (3 of 5 package(s))" in out
    assert chroot.version("pve-zsync") is None


def test_approval_is_used_once_and_only_for_its_version(chroot: AptChroot) -> None:
    r = chroot.pveguard("approve", "grafana=10.0", "--reason", "dashboard for the lab", "--uses", "1")
    assert r.returncode == 0, r.stderr
    r = chroot.apt("install", "grafana=10.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "used approval(s) #1" in r.stderr + r.stdout
    assert chroot.version("grafana") == "10.0"
    listing = json.loads(chroot.pveguard("approvals", "--all", "--json").stdout)
    assert listing[0]["uses_left"] == 0 and listing[0]["state"] == "used-up"
    assert chroot.apt("remove", "grafana").returncode == 0
    before = chroot.status_sha()
    r = chroot.apt("install", "grafana=10.1")
    refused_cleanly(chroot, before, r)
    assert "approval #1 is used up" in r.stdout + r.stderr
    # An approval for one version does not cover another one.
    assert chroot.pveguard("approve", "grafana=10.0", "--reason", "x", "--uses", "3").returncode == 0
    r = chroot.apt("install", "grafana=10.1")
    refused_cleanly(chroot, before, r)
    assert "approval #2 is for version 10.0, not 10.1" in r.stdout + r.stderr
    assert [e["details"]["approval"]["id"] for e in ledger(chroot, "guard.approve")] == [1, 2]


def test_expired_approval_is_refused(chroot: AptChroot) -> None:
    assert chroot.pveguard("approve", "htop", "--reason", "debugging", "--ttl", "1s").returncode == 0
    time.sleep(1.5)
    before = chroot.status_sha()
    r = chroot.apt("install", "htop")
    refused_cleanly(chroot, before, r)
    assert "approval #1 has expired" in r.stdout + r.stderr


def test_revoked_approval_does_not_apply(chroot: AptChroot) -> None:
    assert chroot.pveguard("approve", "htop", "--reason", "debugging").returncode == 0
    assert chroot.pveguard("revoke", "1").returncode == 0
    before = chroot.status_sha()
    refused_cleanly(chroot, before, chroot.apt("install", "htop"))
    assert chroot.pveguard("revoke", "1").returncode == 2  # already revoked: a clear usage error


def test_core_removal_with_approval_passes(chroot: AptChroot) -> None:
    assert chroot.pveguard("approve", "pve-zsync", "--reason", "x").returncode == 0  # not installed: unused
    r = chroot.apt("install", "pve-zsync")
    assert r.returncode == 0
    assert json.loads(chroot.pveguard("approvals", "--json").stdout)[0]["uses_left"] == 1  # core: not consumed
    r = chroot.apt("remove", "pve-zsync")
    assert r.returncode == 0, r.stdout + r.stderr
    assert chroot.version("pve-zsync") is None


def test_corrupted_policy_refuses_and_break_glass_works_once(chroot: AptChroot) -> None:
    chroot.path("/etc/pveguard/installation_policy.conf").write_text("ALLOW_CORE_ONLY=maybe\n")
    before = chroot.status_sha()
    r = chroot.apt("install", "random-tool")
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "E: pveguard: the installation policy /etc/pveguard/installation_policy.conf is corrupted: line 1: " \
           "ALLOW_CORE_ONLY must be true or false, not 'maybe'" in out
    assert "restore it with 'pveguard guard install'" in out and "touch /etc/pveguard/break-glass" in out
    chroot.path("/etc/pveguard/break-glass").write_text("INC-42 policy broken during maintenance\n")
    r = chroot.apt("install", "random-tool")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BREAK-GLASS" in r.stdout + r.stderr
    assert not chroot.path("/etc/pveguard/break-glass").exists()
    entries = ledger(chroot, "guard.break_glass")
    assert len(entries) == 1 and entries[0]["details"]["reason"] == "INC-42 policy broken during maintenance"
    before = chroot.status_sha()
    refused_cleanly(chroot, before, chroot.apt("remove", "random-tool"))  # consumed: closed again
    # Tamper detection notices the changed policy, records it once.
    st = chroot.pveguard("guard", "status", "--json")
    assert st.returncode == 1
    assert [f["kind"] for f in json.loads(st.stdout)["findings"]] == ["changed"]
    chroot.pveguard("guard", "status")
    assert len(ledger(chroot, "guard.tamper")) == 1
    assert chroot.pveguard("guard", "install").returncode == 0
    assert chroot.pveguard("guard", "status").returncode == 0


def test_removed_hook_is_tamper_and_apt_runs_unguarded(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/05pveguard").unlink()
    st = chroot.pveguard("guard", "status", "--json")
    assert st.returncode == 1
    kinds = {(f["kind"], f["path"]) for f in json.loads(st.stdout)["findings"]}
    assert ("removed", "/etc/apt/apt.conf.d/05pveguard") in kinds
    tamper = ledger(chroot, "guard.tamper")
    assert tamper and tamper[0]["target"] == "/etc/apt/apt.conf.d/05pveguard"


def test_cleared_hook_list_is_detected_through_apt_config(chroot: AptChroot) -> None:
    chroot.path("/etc/apt/apt.conf.d/99sneaky").write_text("#clear DPkg::Pre-Install-Pkgs;\n")
    st = chroot.pveguard("guard", "status", "--json")
    assert st.returncode == 1
    assert [f["kind"] for f in json.loads(st.stdout)["findings"]] == ["disabled"]


def test_guard_check_shows_the_decision_and_installs_nothing(chroot: AptChroot) -> None:
    before = chroot.status_sha()
    r = chroot.pveguard("guard", "check", "--json", "--", "apt-get", "install", "-y", "grafana")
    assert r.returncode == 3, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["allowed"] is False
    assert {i["package"]: i["verdict"] for i in data["items"]} == {"grafana": "refuse", "grafana-data": "refuse"}
    r = chroot.pveguard("guard", "check", "--", "apt-get", "install", "-y", "pve-zsync")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the guard would ALLOW this transaction" in r.stdout
    assert chroot.status_sha() == before
    assert chroot.version("pve-zsync") is None
    assert len(ledger(chroot, "guard.check")) == 2


def test_check_does_not_consume_approvals(chroot: AptChroot) -> None:
    assert chroot.pveguard("approve", "htop", "--reason", "x").returncode == 0
    r = chroot.pveguard("guard", "check", "--", "apt-get", "install", "-y", "htop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(chroot.pveguard("approvals", "--json").stdout)[0]["uses_left"] == 1


def test_uninstall_lets_apt_through(chroot: AptChroot) -> None:
    assert chroot.pveguard("guard", "uninstall").returncode == 0
    assert not chroot.path("/etc/apt/apt.conf.d/05pveguard").exists()
    r = chroot.apt("install", "grafana")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(chroot.pveguard("guard", "status", "--json").stdout)
    assert st["installed"] is False and st["findings"][0]["kind"] == "not-installed"


STRATEGY_TEMPLATE = """\
version: 1
installation_policy:
  allow_core_only: {allow}
  require_approval: {approval}
"""


def _reinstall_with(ch: AptChroot, allow: str, approval: str) -> None:
    ch.path("/etc/pveguard").mkdir(exist_ok=True)
    ch.path("/etc/pveguard/strategy.yaml").write_text(STRATEGY_TEMPLATE.format(allow=allow, approval=approval))
    r = ch.pveguard("guard", "install")
    assert r.returncode == 0, r.stdout + r.stderr


def test_record_only_policy_refuses_nothing(chroot: AptChroot) -> None:
    _reinstall_with(chroot, "false", "true")
    r = chroot.apt("install", "grafana")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would refuse 'grafana'" in r.stdout + r.stderr
    assert ledger(chroot, "guard.decision")[-1]["details"]["verdict"] == "recorded"


def test_no_approval_path_when_approvals_are_off(chroot: AptChroot) -> None:
    _reinstall_with(chroot, "true", "false")
    assert chroot.pveguard("approve", "htop", "--reason", "x").returncode == 0  # warns, and is ignored
    before = chroot.status_sha()
    r = chroot.apt("install", "htop")  # no container hosts it: the only way shown would be an approval
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "Approvals are disabled by the policy (REQUIRE_APPROVAL=false)" in out
    assert "pveguard approve" not in out


def test_container_first_off_points_to_an_approval_only(chroot: AptChroot) -> None:
    chroot.path("/etc/pveguard").mkdir(exist_ok=True)
    chroot.path("/etc/pveguard/strategy.yaml").write_text(
        STRATEGY_TEMPLATE.format(allow="true", approval="true") + "  container_first: false\n")
    assert chroot.pveguard("guard", "install").returncode == 0
    assert "CONTAINER_FIRST=false" in chroot.path("/etc/pveguard/installation_policy.conf").read_text()
    before = chroot.status_sha()
    r = chroot.apt("install", "grafana")
    refused_cleanly(chroot, before, r)
    out = r.stdout + r.stderr
    assert "refused 'grafana' (not a core PVE package). Approve it for the host: pveguard approve grafana" in out
    assert "pveguard install" not in out


def test_policy_goes_to_etc_pve_when_present(chroot: AptChroot) -> None:
    chroot.path("/etc/pve").mkdir()
    assert chroot.pveguard("guard", "install").returncode == 0
    text = chroot.path("/etc/pve/installation_policy.conf").read_text()
    assert "ALLOW_CORE_ONLY=true" in text and "CONTAINER.pve-monitoring=grafana," in text
    # The hook reads the cluster-wide copy first.
    chroot.path("/etc/pve/installation_policy.conf").write_text("garbage\n")
    before = chroot.status_sha()
    r = chroot.apt("install", "htop")
    refused_cleanly(chroot, before, r)
    assert "/etc/pve/installation_policy.conf is corrupted" in r.stdout + r.stderr


def test_core_cache_follows_dpkg_status(chroot: AptChroot) -> None:
    cache = chroot.path("/var/lib/pveguard/guard-core-cache.json")
    assert chroot.apt("install", "pve-zsync").returncode == 0
    assert chroot.apt("remove", "random-tool").returncode == 0
    data = json.loads(cache.read_text())
    assert data["packages"]["pve-zsync"][0] is True  # the cache was rebuilt after the status changed
    assert "random-tool" in data["packages"]  # built before the removal's dpkg run


def test_launcher_without_pveguard_fails_closed_and_break_glass_opens_it(chroot: AptChroot) -> None:
    from pveguard.guard.install import render_launcher

    # As if pveguard's files were gone: the launcher cannot import it.
    chroot.path("/usr/local/lib/pveguard/apt-hook").write_text(render_launcher("/usr/bin/python3", "/nonexistent"))
    before = chroot.status_sha()
    r = chroot.apt("install", "random-tool")
    refused_cleanly(chroot, before, r)
    assert "E: pveguard: cannot load the apt guard (ModuleNotFoundError" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    chroot.path("/etc/pveguard/break-glass").write_text("")
    r = chroot.apt("install", "random-tool")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not chroot.path("/etc/pveguard/break-glass").exists()
    assert "ModuleNotFoundError" in chroot.path("/var/log/pveguard-break-glass.log").read_text()
