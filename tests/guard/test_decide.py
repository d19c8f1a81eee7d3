"""The decision rules and the policy file, as tables of cases (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.guard.aptproto import Action
from pveguard.guard.decide import (
    Approval,
    Candidate,
    Policy,
    PolicyFileError,
    decide,
    fitting_container,
    match_approval,
    messages,
    parse_policy,
    render_policy,
)
from pveguard.guard.install import policy_from_strategy
from pveguard.packages.classify import Classifier, Verdict
from pveguard.strategy.models import Strategy

CORE = Verdict(True, "closure", "via pve-manager")
NONCORE = Verdict(False, "non-core")
CONTAINERS = (("pve-monitoring", ("grafana", "prometheus", "node-exporter", "custom metrics collectors")),
              ("pve-backup-manager", ("restic", "borgbackup", "rsync")),
              ("pve-dev-tools", ("ci/cd pipelines", "docker", "git")))
POLICY = Policy(containers=CONTAINERS)
NOW = 1_000_000.0


def new(name: str, verdict: Verdict = NONCORE, pulls: tuple[str, ...] = (), provides: tuple[str, ...] = (),
        version: str = "1.0") -> Candidate:
    return Candidate(Action(name, None, "<", version, f"/r/{name}.deb"), verdict, pulls, provides)


def upgrade(name: str, verdict: Verdict = NONCORE, pulls: tuple[str, ...] = ()) -> Candidate:
    return Candidate(Action(name, "1.0", "<", "2.0", f"/r/{name}.deb"), verdict, pulls)


def reinstall(name: str, verdict: Verdict = NONCORE) -> Candidate:
    return Candidate(Action(name, "1.0", "=", "1.0", f"/r/{name}.deb"), verdict)


def downgrade(name: str, verdict: Verdict = CORE) -> Candidate:
    return Candidate(Action(name, "2.0", ">", "1.0", f"/r/{name}.deb"), verdict)


def remove(name: str, verdict: Verdict = CORE) -> Candidate:
    return Candidate(Action(name, "1.0", ">", None, "**REMOVE**"), verdict)


def approval(pkg: str, version: str | None = None, *, ident: int = 1, uses: int = 1, expires: float = NOW + 60,
             revoked: bool = False) -> Approval:
    return Approval(ident, pkg, version, expires, uses, revoked)


# (name, candidates, approvals, policy, allowed, {package: (verdict, reason)})
CASES = [
    ("new non-core refused", [new("grafana")], [], POLICY, False, {"grafana": ("refuse", "non-core")}),
    ("new core allowed", [new("pve-zsync", Verdict(True, "optional"))], [], POLICY, True,
     {"pve-zsync": ("allow", "core")}),
    ("upgrade of non-core allowed", [upgrade("random-tool")], [], POLICY, True,
     {"random-tool": ("allow", "upgrade")}),
    ("reinstall allowed", [reinstall("random-tool")], [], POLICY, True, {"random-tool": ("allow", "reinstall")}),
    ("new dep of a core upgrade", [upgrade("pve-manager", CORE, ("proxmox-termproxy",)), new("proxmox-termproxy")],
     [], POLICY, True, {"proxmox-termproxy": ("allow", "dependency")}),
    ("dep through Provides", [new("pve-zsync", CORE, ("mail-transport-agent",)),
                              new("postfix", provides=("mail-transport-agent",))], [], POLICY, True,
     {"postfix": ("allow", "dependency")}),
    ("deps of deps", [new("pve-zsync", CORE, ("a",)), new("a", pulls=("b",)), new("b")], [], POLICY, True,
     {"a": ("allow", "dependency"), "b": ("allow", "dependency")}),
    ("dep of a refused package is refused", [new("grafana", pulls=("grafana-data",)), new("grafana-data")], [],
     POLICY, False, {"grafana": ("refuse", "non-core"), "grafana-data": ("refuse", "non-core")}),
    ("mixed transaction refused whole", [new("pve-zsync", CORE), new("grafana")], [], POLICY, False,
     {"pve-zsync": ("allow", "core"), "grafana": ("refuse", "non-core")}),
    ("approved new package and its deps", [new("grafana", pulls=("grafana-data",)), new("grafana-data")],
     [approval("grafana")], POLICY, True,
     {"grafana": ("allow", "approved"), "grafana-data": ("allow", "dependency")}),
    ("approval for the version", [new("grafana", version="10.0")], [approval("grafana", "10.0")], POLICY, True,
     {"grafana": ("allow", "approved")}),
    ("approval for another version", [new("grafana", version="10.1")], [approval("grafana", "10.0")], POLICY,
     False, {"grafana": ("refuse", "non-core")}),
    ("expired approval", [new("grafana")], [approval("grafana", expires=NOW - 1)], POLICY, False,
     {"grafana": ("refuse", "non-core")}),
    ("used-up approval", [new("grafana")], [approval("grafana", uses=0)], POLICY, False,
     {"grafana": ("refuse", "non-core")}),
    ("revoked approval", [new("grafana")], [approval("grafana", revoked=True)], POLICY, False,
     {"grafana": ("refuse", "non-core")}),
    ("core removal refused", [remove("lxcfs")], [], POLICY, False, {"lxcfs": ("refuse", "core remove")}),
    ("core removal approved", [remove("lxcfs")], [approval("lxcfs")], POLICY, True,
     {"lxcfs": ("allow", "approved")}),
    ("core removal, version-pinned approval does not cover it", [remove("lxcfs")], [approval("lxcfs", "1.0")],
     POLICY, False, {"lxcfs": ("refuse", "core remove")}),
    ("non-core removal allowed", [remove("random-tool", NONCORE)], [], POLICY, True,
     {"random-tool": ("allow", "non-core remove")}),
    ("core downgrade refused", [downgrade("pve-manager")], [], POLICY, False,
     {"pve-manager": ("refuse", "core downgrade")}),
    ("core downgrade approved for that version", [downgrade("pve-manager")], [approval("pve-manager", "1.0")],
     POLICY, True, {"pve-manager": ("allow", "approved")}),
    ("non-core downgrade allowed", [downgrade("random-tool", NONCORE)], [], POLICY, True,
     {"random-tool": ("allow", "non-core downgrade")}),
    ("record only", [new("grafana"), remove("lxcfs")], [], Policy(allow_core_only=False), True,
     {"grafana": ("record", "non-core"), "lxcfs": ("record", "core remove")}),
    ("no approvals when REQUIRE_APPROVAL=false", [new("grafana")], [approval("grafana")],
     Policy(require_approval=False), False, {"grafana": ("refuse", "non-core")}),
    ("removed package pulls nothing in", [remove("random-tool", NONCORE), new("grafana")], [], POLICY, False,
     {"grafana": ("refuse", "non-core")}),
    ("empty transaction", [], [], POLICY, True, {}),
]


@pytest.mark.parametrize(("name", "candidates", "approvals", "policy", "allowed", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_rules(name: str, candidates: list[Candidate], approvals: list[Approval], policy: Policy, allowed: bool,
               expected: dict[str, tuple[str, str]]) -> None:
    decision = decide(candidates, policy, approvals, NOW)
    assert decision.allowed is allowed
    got = {i.package: (i.verdict, i.reason) for i in decision.items}
    for pkg, want in expected.items():
        assert got[pkg] == want, (pkg, got)


def test_used_approvals_only_when_allowed() -> None:
    d = decide([new("grafana"), new("htop")], POLICY, [approval("grafana", ident=7)], NOW)
    assert not d.allowed and d.used_approvals == []
    d = decide([new("grafana")], POLICY, [approval("grafana", ident=7)], NOW)
    assert d.used_approvals == [7]


def test_approval_not_spent_on_a_dependency() -> None:
    d = decide([new("pve-zsync", CORE, ("grafana",)), new("grafana")], POLICY, [approval("grafana")], NOW)
    assert d.allowed and d.used_approvals == []


def test_match_approval_explains_every_miss() -> None:
    found, why = match_approval([approval("g", "1", ident=1, uses=0), approval("g", "2", ident=2)], "g", "3", NOW)
    assert found is None
    assert why == "approval #1 is used up; approval #2 is for version 2, not 3"


def test_messages_match_the_issue() -> None:
    d = decide([new("grafana")], POLICY, [], NOW)
    assert messages(d, POLICY) == [
        "pveguard: refused 'grafana' (not a core PVE package). It belongs in container 'pve-monitoring' "
        "(CONTAINER_FIRST): pveguard install grafana",
        "pveguard: the whole transaction is refused (1 of 1 package(s)); nothing was installed, removed or changed.",
    ]


def test_container_first_decides_the_hint_not_the_verdict() -> None:
    """CONTAINER_FIRST on: a package a container hosts is pointed there, not to an approval; one no
    container hosts keeps both ways. Off: an approval is the only way shown."""
    on = Policy(containers=CONTAINERS)
    off = Policy(container_first=False, containers=CONTAINERS)
    grafana_on = messages(decide([new("grafana")], on, [], NOW), on)[0]
    assert "pveguard install grafana" in grafana_on and "approve" not in grafana_on
    htop_on = messages(decide([new("htop")], on, [], NOW), on)[0]
    assert "pveguard install htop --container NAME, or approve it: pveguard approve htop" in htop_on
    for pkg in ("grafana", "htop"):
        line = messages(decide([new(pkg)], off, [], NOW), off)[0]
        assert line.endswith(f'Approve it for the host: pveguard approve {pkg} --reason "..."'), line
        assert "pveguard install" not in line
    off_no_approvals = Policy(container_first=False, require_approval=False, containers=CONTAINERS)
    line = messages(decide([new("grafana")], off_no_approvals, [], NOW), off_no_approvals)[0]
    assert line.endswith("Approvals are disabled by the policy (REQUIRE_APPROVAL=false).")
    # The verdict is the same either way, and an approval still lets a hosted package through.
    assert decide([new("grafana")], on, [approval("grafana")], NOW).allowed


def test_messages_for_core_removal_and_downgrade() -> None:
    d = decide([remove("lxcfs"), downgrade("pve-manager")], POLICY, [], NOW)
    lines = messages(d, POLICY)
    assert lines[0] == ("pveguard: refused removing 'lxcfs' (core PVE package: in the dependency closure of the "
                        "core roots (via pve-manager)). Keep it, or approve it: "
                        "pveguard approve lxcfs --reason \"...\"")
    assert "refused downgrading 'pve-manager' 2.0 -> 1.0" in lines[1]
    assert "pveguard approve pve-manager=1.0" in lines[1]


def test_messages_without_approval_path_and_record_only() -> None:
    p = Policy(require_approval=False, containers=CONTAINERS)
    line = messages(decide([new("htop")], p, [], NOW), p)[0]
    assert line == ("pveguard: refused 'htop' (not a core PVE package). Run it in a container: pveguard install "
                    "htop --container NAME. Approvals are disabled by the policy (REQUIRE_APPROVAL=false).")
    p = Policy(allow_core_only=False, containers=CONTAINERS)
    lines = messages(decide([new("grafana")], p, [], NOW), p)
    assert lines[0].startswith("pveguard: would refuse 'grafana'")
    assert "only recorded" in lines[-1]
    assert messages(decide([upgrade("x")], POLICY, [], NOW), POLICY) == []


@pytest.mark.parametrize(("package", "container"), [
    ("grafana", "pve-monitoring"),
    ("prometheus-node-exporter", "pve-monitoring"),
    ("prometheus", "pve-monitoring"),
    ("restic", "pve-backup-manager"),
    ("python3-restic", "pve-backup-manager"),
    ("docker", "pve-dev-tools"),
    ("git", "pve-dev-tools"),
    ("htop", None),
    ("gitlab", None),
    ("metrics", None),  # a word of a multi-word component is not a component
])
def test_fitting_container(package: str, container: str | None) -> None:
    assert fitting_container(package, CONTAINERS) == container


def test_policy_round_trip() -> None:
    p = Policy(False, True, False, ("proxmox-ve", "my-root"), ("zabbix-agent*",), 3600, "/var/lib/x", "/k",
               CONTAINERS)
    assert parse_policy(render_policy(p)) == p


@pytest.mark.parametrize(("text", "message"), [
    ("", "missing VERSION"),
    ("garbage\n", "line 1: expected KEY=VALUE"),
    ("VERSION=2\n", "format VERSION '2' is not 1"),
    ("VERSION=1\nALLOW_CORE_ONLY=yes\n", "line 2: ALLOW_CORE_ONLY must be true or false, not 'yes'"),
    ("VERSION=1\nVERSION=1\n", "line 2: VERSION is set twice"),
    ("VERSION=1\nFOO=1\n", "line 2: unknown key 'FOO'"),
    ("VERSION=1\nAPPROVAL_TTL=-5\n", "APPROVAL_TTL must be a positive number"),
    ("VERSION=1\nALLOW_CORE_ONLY=true\nREQUIRE_APPROVAL=true\nCONTAINER_FIRST=true\nCORE_ROOTS=\nSTATE_DIR=/x\n",
     "CORE_ROOTS is empty"),
])
def test_policy_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text)
    assert message in str(info.value)


def test_core_function_packages_are_core_roots_in_the_policy_file(tmp_path: Path) -> None:
    """A package a core function names is core for the hook even outside core_roots' closure (issue 11)."""
    strategy = Strategy.model_validate({"installation_policy": {"core_roots": ["proxmox-ve"]},
                                        "core_functions": [{"name": "ups", "packages": ["nut-client"]}]})
    policy = parse_policy(render_policy(policy_from_strategy(strategy, tmp_path, None)))
    assert policy.core_roots == ("proxmox-ve", "nut-client")
    # as the hook classifies a package apt is about to install (not in dpkg's status yet)
    verdict = Classifier({}, policy.core_roots, policy.extra_allowed).classify("nut-client")
    assert verdict.core
    result = decide([new("nut-client", verdict)], policy, [], NOW)
    assert result.allowed
    # and without the core function the same package is refused
    bare = Strategy.model_validate({"core_functions": []})
    policy = parse_policy(render_policy(policy_from_strategy(bare, tmp_path, None)))
    verdict = Classifier({}, policy.core_roots, policy.extra_allowed).classify("nut-client")
    assert not decide([new("nut-client", verdict)], policy, [], NOW).allowed


def test_pveguard_itself_is_allowed_under_the_strictest_policy() -> None:
    """The guard lets its own package through: an upgrade (with a new dependency), a first install
    (moving from a checkout to the package, with what it pulls in), a reinstall; a package that only
    looks like it is still refused."""
    strict = Policy(allow_core_only=True, require_approval=True, container_first=True)
    up = decide([upgrade("pveguard", pulls=("e2fsprogs",)), new("e2fsprogs")], strict, [], NOW)
    assert up.allowed and [(i.package, i.verdict) for i in up.items] == [("pveguard", "allow"), ("e2fsprogs", "allow")]
    first = decide([new("pveguard", pulls=("python3",)), new("python3")], strict, [], NOW)
    assert first.allowed and first.items[0].reason == "pveguard" and first.items[1].reason == "dependency"
    assert decide([reinstall("pveguard")], strict, [], NOW).allowed
    for other in ("pveguard-extras", "python3-pveguard"):
        d = decide([new(other)], strict, [], NOW)
        assert not d.allowed and d.items[0].reason == "non-core", other
