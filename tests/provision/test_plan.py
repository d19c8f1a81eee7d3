"""The planner and the field normalization, tested with tables of cases (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from pveguard.backends.base import Guest, Marker, marker_line, read_marker, with_marker
from pveguard.provision.desired import (
    actual_fields,
    desired_fields,
    desired_state,
    parse_propstring,
    size_gib,
)
from pveguard.provision.plan import JournalEntry, Observed, Plan, candidate_vmids, diff_fields
from pveguard.provision.plan import plan as plan_for
from pveguard.strategy.models import Strategy

INSTANCE = "a1b2c3d4e5f6"
STRATEGY = Strategy()
DESIRED = desired_state(STRATEGY, INSTANCE)


def plan(desired: Any, observed: Observed, **kw: Any) -> Plan:
    """The planner as this installation (INSTANCE) runs it."""
    return plan_for(desired, observed, instance=INSTANCE, **kw)
NAMES = [d.spec.name for d in DESIRED]


def pve_config(name: str, vmid: int, **override: Any) -> dict[str, Any]:
    """A config as PVE returns it for a container created from the default strategy's `name`."""
    d = next(x for x in DESIRED if x.spec.name == name).spec
    cfg: dict[str, Any] = {
        "arch": "amd64", "ostype": "debian", "hostname": d.name, "cores": d.cores, "memory": d.memory_mib,
        "swap": d.swap_mib, "rootfs": f"local-lvm:vm-{vmid}-disk-0,size={d.disk_gib}G",
        "net0": f"name=eth0,bridge={d.net.bridge},firewall=1,hwaddr=BC:24:11:00:00:{vmid % 100:02X},"
                f"ip=dhcp,tag={d.net.vlan},type=veth",
        "unprivileged": 1, "features": "nesting=1", "startup": f"order={d.startup_order}",
        "tags": ";".join(d.tags), "description": d.description + "\n", "digest": "0" * 40,
    }
    if d.onboot:
        cfg["onboot"] = 1
    cfg.update(override)
    return {k: v for k, v in cfg.items() if v is not None}


def guest(name: str, vmid: int, *, tags: list[str] | None = None, node: str = "pve1",
          lock: str | None = None, type_: str = "lxc") -> Guest:
    return Guest(vmid=vmid, name=name, node=node, type=type_, status="running",  # type: ignore[arg-type]
                 tags=["monitoring", "pveguard"] if tags is None else tags, lock=lock)


def converged() -> Observed:
    guests = [guest(n, 100 + i) for i, n in enumerate(NAMES)]
    return Observed(guests, {100 + i: pve_config(n, 100 + i) for i, n in enumerate(NAMES)})


def test_default_strategy_on_empty_cluster_plans_four_creates() -> None:
    p = plan(DESIRED, Observed([], {}))
    assert [a.kind for a in p.actions] == ["create"] * 4
    assert [a.name for a in p.actions] == NAMES
    assert p.has_changes


def test_converged_cluster_plans_nothing() -> None:
    p = plan(DESIRED, converged())
    assert [a.kind for a in p.actions] == ["unchanged"] * 4
    assert not p.has_changes


@pytest.mark.parametrize(("override", "expected"), [
    ({"memory": 2048}, ["memory: 2048 -> 4096"]),
    ({"swap": 1024}, ["swap: 1024 -> 512"]),
    ({"cores": 4}, ["cores: 4 -> 2"]),
    ({"cores": None}, ["cores: unlimited -> 2"]),
    ({"cpulimit": "1.5"}, ["cpulimit: 1.5 -> 0"]),
    ({"cpulimit": 0}, []),
    ({"cpuunits": 100}, []),
    ({"cpuunits": 1024}, ["cpuunits: 1024 -> 100"]),
    ({"rootfs": "local-lvm:vm-100-disk-0,size=10G"}, ["rootfs: 10G -> 20G"]),
    ({"rootfs": "local-lvm:vm-100-disk-0,size=20480M"}, []),
    ({"net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,tag=100,type=veth"},
     ["net0: bridge=vmbr0,firewall=0,ip=dhcp,tag=100 -> bridge=vmbr0,firewall=1,ip=dhcp,tag=100"]),
    ({"net0": "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp,tag=200,type=veth,mtu=1400"},
     ["net0: bridge=vmbr0,firewall=1,ip=dhcp,tag=200 -> bridge=vmbr0,firewall=1,ip=dhcp,tag=100"]),
    ({"net0": "bridge=vmbr0,firewall=1,ip=dhcp,tag=100,name=eth0"}, []),
    ({"unprivileged": None}, ["unprivileged: 0 -> 1"]),
    ({"features": None}, ["features: (unset) -> nesting=1"]),
    ({"features": "nesting=1,keyctl=0"}, []),
    ({"features": "keyctl=1,nesting=1"}, ["features: keyctl=1,nesting=1 -> nesting=1"]),
    ({"onboot": None}, ["onboot: 0 -> 1"]),
    ({"onboot": "1"}, []),
    ({"startup": "order=9"}, ["startup: order=9 -> order=2"]),
    ({"startup": "2"}, []),
    ({"tags": "PVEGuard;Monitoring"}, []),
    ({"tags": "monitoring;pveguard;extra"}, ["tags: extra;monitoring;pveguard -> monitoring;pveguard"]),
    ({"hostname": "old"}, ["hostname: old -> pve-monitoring"]),
])
def test_field_differences_on_one_container(override: dict[str, Any], expected: list[str]) -> None:
    obs = converged()
    obs.configs[100].update(override)
    for k in [k for k, v in override.items() if v is None]:
        del obs.configs[100][k]
    p = plan(DESIRED, obs)
    assert [a.kind for a in p.actions[1:]] == ["unchanged"] * 3
    first = p.actions[0]
    assert [c.text() for c in first.changes] == expected
    assert first.kind == ("update" if expected and first.changes[0].possible else "unchanged")


@pytest.mark.parametrize(("field", "old", "new", "live", "possible"), [
    ("memory", "2048", "4096", True, True),
    ("cores", "1", "2", True, True),
    ("features", "", "nesting=1", False, True),
    ("unprivileged", "0", "1", False, False),
    ("rootfs", "10G", "20G", True, True),
    ("rootfs", "30G", "20G", True, False),
])
def test_change_flags(field: str, old: str, new: str, live: bool, possible: bool) -> None:
    [c] = diff_fields({field: new}, {field: old})
    assert (c.live, c.possible) == (live, possible)


def test_impossible_change_is_reported_not_planned() -> None:
    obs = converged()
    obs.configs[100]["rootfs"] = "local-lvm:vm-100-disk-0,size=64G"
    a = plan(DESIRED, obs).actions[0]
    assert a.kind == "unchanged" and a.changes[0].field == "rootfs"
    assert "disks only grow" in a.notes[0]


@pytest.mark.parametrize(("case", "guests", "configs", "prune", "kinds"), [
    # an unmanaged guest with a strategy name: conflict, never a second guest with that name
    ("unmanaged same name", [guest("pve-monitoring", 300, tags=[])], {}, False,
     ["conflict", "create", "create", "create"]),
    # the tag alone is not enough: the description must carry the marker
    ("tag without marker", [guest("pve-monitoring", 300)],
     {300: {"description": "my own"}}, False, ["conflict", "create", "create", "create"]),
    # a VM (qemu) never counts as a managed container
    ("qemu with tag", [guest("pve-monitoring", 300, type_="qemu")],
     {300: {"description": "managed-by: pveguard"}}, False, ["conflict", "create", "create", "create"]),
    ("two managed with one name", [guest("pve-monitoring", 300), guest("pve-monitoring", 301)],
     {300: pve_config("pve-monitoring", 300), 301: pve_config("pve-monitoring", 301)}, False,
     ["conflict", "create", "create", "create"]),
    ("unrelated guests are ignored", [guest("db", 300, tags=[]), guest("web", 301, tags=["prod"])], {}, False,
     ["create"] * 4),
])
def test_identification(case: str, guests: list[Guest], configs: dict[int, Any], prune: bool,
                        kinds: list[str]) -> None:
    p = plan(DESIRED, Observed(guests, configs), prune=prune)
    assert [a.kind for a in p.actions] == kinds, case
    creates = [a.name for a in p.actions if a.kind == "create"]
    assert ("pve-monitoring" in creates) == (kinds[0] == "create"), case


def test_prune_deletes_only_managed_guests_that_left_the_strategy() -> None:
    obs = converged()
    gone = guest("old-service", 150)
    cfg = pve_config("pve-monitoring", 150, hostname="old-service")
    foreign = guest("foreign", 151, tags=["pveguard"])
    obs = Observed([*obs.guests, gone, foreign], {**obs.configs, 150: cfg, 151: {"description": "hand-made"}})
    without = plan(DESIRED, obs)
    assert [a.kind for a in without.actions] == ["unchanged"] * 5
    assert not without.has_changes and "prune" in without.actions[4].notes[0]
    with_prune = plan(DESIRED, obs, prune=True)
    assert [(a.kind, a.vmid) for a in with_prune.actions if a.kind == "delete"] == [("delete", 150)]
    assert with_prune.actions[-1].kind == "delete"


@pytest.mark.parametrize(("step", "status", "packages", "resume", "kind"), [
    ("creating", "stopped", [], ["start"], "resume"),
    ("created", "stopped", ["curl"], ["start", "packages"], "resume"),
    ("started", "running", ["curl"], ["packages"], "resume"),
    ("started", "running", [], [], "unchanged"),
    # already running: starting is visibly done, only what cannot be seen (packages) is left
    ("creating", "running", [], [], "unchanged"),
    ("created", "running", ["curl"], ["packages"], "resume"),
])
def test_journal_resumes_an_interrupted_create(step: str, status: str, packages: list[str], resume: list[str],
                                               kind: str) -> None:
    desired = desired_state(STRATEGY, INSTANCE)
    desired[0].packages = packages
    obs = converged()
    obs.guests[0].status = status  # type: ignore[assignment]
    p = plan(desired, obs, journal=[JournalEntry("pve-monitoring", 100, "pve1", step)])
    assert (p.actions[0].kind, p.actions[0].resume) == (kind, resume)
    assert p.stale_journal == ([] if resume else ["pve-monitoring"])


@pytest.mark.parametrize(("case", "entry", "strategy_has_it"), [
    # the create failed before it had a VMID: nothing was sent, nothing to finish ("CT ?" forever before)
    ("no vmid", JournalEntry("pve-monitoring", None, None, "creating"), True),
    ("no vmid, left the strategy", JournalEntry("gone", None, None, "creating"), False),
    ("guest gone", JournalEntry("pve-monitoring", 999, "pve1", "created"), True),
    ("guest left the strategy (pruned or not)", JournalEntry("old", 150, "pve1", "created"), False),
])
def test_journal_rows_with_nothing_to_finish_are_stale(case: str, entry: JournalEntry,
                                                       strategy_has_it: bool) -> None:
    obs = converged()
    old = guest("old", 150)
    obs = Observed([*obs.guests, old], {**obs.configs, 150: pve_config("pve-monitoring", 150, hostname="old")})
    p = plan(DESIRED, obs, journal=[entry])
    assert p.stale_journal == [entry.name], case
    assert not p.of("resume") and not any(a.resume for a in p.actions), case


def test_journal_row_of_an_unreadable_guest_is_kept() -> None:
    obs = converged()
    obs = Observed(obs.guests, {k: v for k, v in obs.configs.items() if k != 100}, {100: "No route to host [595]"})
    obs.guests[0].status = "stopped"
    p = plan(DESIRED, obs, journal=[JournalEntry("pve-monitoring", 100, "pve1", "created")])
    assert p.stale_journal == [] and p.actions[0].kind == "conflict"


def test_journal_for_another_vmid_is_ignored() -> None:
    p = plan(DESIRED, converged(), journal=[JournalEntry("pve-monitoring", 999, "pve1", "created")])
    assert p.actions[0].kind == "unchanged" and p.stale_journal == ["pve-monitoring"]


def test_pinned_vmid_taken_is_a_conflict() -> None:
    s = Strategy.model_validate({"containers": [{"name": "a", "role": "x", "vmid": 300,
                                                 "resources": {"cores": 1, "memory": "256M"}}]})
    p = plan(desired_state(s, INSTANCE), Observed([guest("db", 300, tags=[])], {}))
    assert p.actions[0].kind == "conflict" and "VMID 300" in p.actions[0].notes[0]


def test_locked_guest_is_noted() -> None:
    obs = converged()
    obs.guests[0].lock = "backup"
    assert "locked (backup)" in plan(DESIRED, obs).actions[0].notes[0]


def test_desired_fields_of_default_monitoring() -> None:
    f = desired_fields(DESIRED[0].spec)
    assert f == {
        "hostname": "pve-monitoring", "cores": "2", "memory": "4096", "swap": "512", "cpulimit": "0",
        "cpuunits": "100", "hard_limits": "1", "rootfs": "20G", "mp0": "",
        "net0": "bridge=vmbr0,firewall=1,ip=dhcp,tag=100",
        "unprivileged": "1", "features": "nesting=1", "onboot": "1", "startup": "order=2",
        "tags": "monitoring;pveguard", "description": f["description"],
    }
    assert read_marker(f["description"]) == Marker(INSTANCE)
    assert f["description"].splitlines()[-1] == f"managed-by: pveguard instance={INSTANCE}"


def test_pinned_node_from_target() -> None:
    s = Strategy.model_validate({"target": {"proxmox": {"node": "pve3"}}})
    assert {d.spec.node for d in desired_state(s, INSTANCE)} == {"pve3"}


@pytest.mark.parametrize(("text", "gib"), [("20G", 20), ("8192M", 8), ("1T", 1024), ("1073741824", 1),
                                           ("0.5G", 0.5)])
def test_size_gib(text: str, gib: float) -> None:
    assert size_gib(text) == gib


@pytest.mark.parametrize(("text", "default", "parsed"), [
    ("local-lvm:vm-1-disk-0,size=8G", "volume", {"volume": "local-lvm:vm-1-disk-0", "size": "8G"}),
    ("nesting=1", None, {"nesting": "1"}),
    ("", None, {}),
    ("2,up=30", "order", {"order": "2", "up": "30"}),
])
def test_parse_propstring(text: str, default: str | None, parsed: dict[str, str]) -> None:
    assert parse_propstring(text, default) == parsed


@pytest.mark.parametrize(("desc", "marker"), [
    ("managed-by: pveguard", Marker(None)), ("x\nmanaged-by: pveguard\n", Marker(None)),
    ("not managed-by: pveguard", None), ("", None), (None, None), ("managed-by: pveguardx", None),
    ("x\n managed-by: pveguard instance=abc \n", Marker("abc")),
    ("managed-by: pveguard instance=", Marker(None)),
])
def test_marker(desc: str | None, marker: Marker | None) -> None:
    assert read_marker(desc) == marker


@pytest.mark.parametrize(("before", "after"), [
    ("", marker_line("me")),
    ("purpose", f"purpose\n{marker_line('me')}"),
    ("purpose\nmanaged-by: pveguard\n", f"purpose\n{marker_line('me')}"),
    (f"purpose\n{marker_line('other')}\nnotes", f"purpose\nnotes\n{marker_line('me')}"),
])
def test_with_marker_replaces_any_marker(before: str, after: str) -> None:
    assert with_marker(before, "me") == after and read_marker(after) == Marker("me")


def test_candidates_are_tagged_lxc_only() -> None:
    gs = [guest("a", 1), guest("b", 2, tags=[]), guest("c", 3, type_="qemu")]
    assert candidate_vmids(gs) == [1]


def test_actual_fields_defaults_of_a_bare_config() -> None:
    f = actual_fields({"memory": 512, "rootfs": "local:100/vm-100-disk-0.raw"})
    assert (f["rootfs"], f["onboot"], f["unprivileged"], f["net0"], f["swap"]) == ("4G", "0", "0", "", "512")


@pytest.mark.parametrize(("override", "params", "delete"), [
    ({"memory": 2048}, {"memory": "4096"}, []),
    ({"net0": "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,tag=7,type=veth,mtu=1400"},
     {"net0": "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,mtu=1400,tag=100,type=veth"}, []),
    ({"net0": "name=eth0,bridge=vmbr0,firewall=1,gw=10.0.0.1,ip=10.0.0.5/24,tag=100"},
     {"net0": "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp,tag=100"}, []),
    ({"features": "nesting=1,keyctl=1"}, {"features": "nesting=1"}, []),
    ({"rootfs": "local-lvm:vm-100-disk-0,size=8G"}, {"rootfs": "20G"}, []),
    ({"unprivileged": 0}, {}, []),
])
def test_update_params(override: dict[str, Any], params: dict[str, Any], delete: list[str]) -> None:
    from pveguard.provision.apply import update_params

    obs = converged()
    obs.configs[100].update(override)
    a = plan(DESIRED, obs).actions[0]
    got, got_delete = update_params(a.changes, obs.configs[100])
    expected = {**params, "digest": "0" * 40} if params else {}
    assert (got, got_delete) == (expected, delete)


def test_update_params_deletes_unset_optional_keys() -> None:
    from pveguard.provision.apply import update_params
    from pveguard.provision.plan import FieldChange

    got = update_params([FieldChange("features", "nesting=1", "", False), FieldChange("startup", "order=1", "", True)],
                        {})
    assert got == ({}, ["features", "startup"])


def test_guest_still_being_created_is_resumed_not_diffed() -> None:
    obs = converged()
    del obs.configs[100]["rootfs"]
    obs.configs[100]["lock"] = "create"
    desired = desired_state(STRATEGY, INSTANCE)
    desired[0].packages = ["curl"]
    a = plan(desired, obs).actions[0]
    assert (a.kind, a.changes, a.resume) == ("resume", [], ["wait", "start", "packages"])


def test_unreadable_tagged_guest_blocks_its_name_only() -> None:
    obs = converged()
    obs = Observed([*obs.guests, guest("old", 150)], {k: v for k, v in obs.configs.items() if k != 101},
                   {101: "node unreachable [HTTP 595]", 150: "node unreachable [HTTP 595]"})
    p = plan(DESIRED, obs, prune=True)
    kinds = {a.name: a.kind for a in p.actions}
    assert kinds == {"pve-monitoring": "unchanged", "pve-backup-manager": "conflict", "pve-dev-tools": "unchanged",
                     "pve-api-gateway": "unchanged", "old": "unchanged"}
    assert "cannot be read (node unreachable [HTTP 595])" in p.actions[0].notes[0]
    assert not p.of("create") and not p.of("delete")


def _owned(name: str, vmid: int, marker: str) -> tuple[Guest, dict[str, Any]]:
    cfg = pve_config("pve-monitoring", vmid, hostname=name)
    cfg["description"] = f"made elsewhere\n{marker}\n"
    return guest(name, vmid), cfg


@pytest.mark.parametrize(("case", "marker", "owner"), [
    ("another instance", marker_line("0ther1nstance"), "0ther1nstance"),
    ("legacy marker, no instance", "managed-by: pveguard", None),
])
def test_prune_never_deletes_guests_of_another_instance(case: str, marker: str, owner: str | None) -> None:
    obs = converged()
    g, cfg = _owned("their-service", 160, marker)
    p = plan(DESIRED, Observed([*obs.guests, g], {**obs.configs, 160: cfg}), prune=True)
    assert not p.of("delete") and not p.has_changes, case
    [a] = p.of("foreign")
    assert (a.name, a.vmid, a.owner) == ("their-service", 160, owner)
    assert a.as_dict()["owner"] == owner and p.counts()["foreign"] == 1
    text = "owned by another pveguard instance 0ther1nstance" if owner else "legacy pveguard marker"
    assert text in a.notes[0] and "pveguard adopt 160" in a.notes[0]


@pytest.mark.parametrize(("marker", "says"), [
    (marker_line("0ther1nstance"), "owned by another pveguard instance 0ther1nstance"),
    ("managed-by: pveguard", "older version (no instance id)"),
])
def test_guest_of_another_instance_with_a_strategy_name_is_a_conflict(marker: str, says: str) -> None:
    g, cfg = _owned("pve-monitoring", 170, marker)
    p = plan(DESIRED, Observed([g], {170: cfg}), prune=True)
    a = p.actions[0]
    assert (a.kind, a.vmid) == ("conflict", 170) and says in a.notes[0] and "pveguard adopt 170" in a.notes[0]
    assert [x.kind for x in p.actions[1:]] == ["create"] * 3 and not p.of("delete")


def test_delete_of_a_container_with_data_volumes_says_so() -> None:
    obs = converged()
    cfg = pve_config("pve-monitoring", 150, hostname="old", mp0="local-lvm:vm-150-disk-1,mp=/srv/data,size=8G",
                     mp1="local-lvm:vm-150-disk-2,mp=/srv/b,backup=1,size=1G")
    p = plan(DESIRED, Observed([*obs.guests, guest("old", 150)], {**obs.configs, 150: cfg}), prune=True)
    [d] = p.of("delete")
    assert "data volumes destroyed with it: mp0, mp1" in d.notes[0]
    assert "vzdump leaves out mp0: no backup=1" in d.notes[0]


def test_only_keeps_the_named_containers() -> None:
    obs = converged()
    obs.configs[100]["memory"] = 1024
    obs.configs[101]["memory"] = 1024
    p = plan(DESIRED, obs).only({"pve-backup-manager"})
    assert [(a.kind, a.name) for a in p.actions] == [("update", "pve-backup-manager")]


def test_soft_limits_are_a_live_change_of_a_container_made_with_hard_ones() -> None:
    soft = desired_state(Strategy.model_validate({"resources": {"hard_limits": False}}), INSTANCE)
    p = plan(soft, converged())
    assert {a.kind for a in p.actions} == {"update"}
    [change] = p.actions[0].changes
    assert (change.field, change.old, change.new, change.live) == ("hard_limits", "1", "0", True)
    # the lxc backend stores hard_limits: 0 in the config it reports; then nothing is left to change
    obs = converged()
    for cfg in obs.configs.values():
        cfg["hard_limits"] = 0
    assert {a.kind for a in plan(soft, obs).actions} == {"unchanged"}


BACKUP_VOLUME = Strategy.model_validate({"containers": [
    {**Strategy().model_dump(mode="json")["containers"][1], "backup_volume": {"size": "100G"}}]})


def test_backup_volume_is_created_as_mp0_in_backups() -> None:
    [d] = desired_state(BACKUP_VOLUME, INSTANCE)
    assert d.spec.backup_volume is not None and d.spec.backup_volume.size_gib == 100
    p = plan([d], Observed([], {}))
    assert p.actions[0].as_dict()["fields"]["mp0"] == "mp=/srv/backup,size=100G,backup=1"


@pytest.mark.parametrize(("mp0", "kind", "possible", "note"), [
    (None, "update", True, None),  # added to an existing container (PVE hot-plugs a new mount point)
    ("local-lvm:vm-101-disk-1,mp=/srv/backup,backup=1,size=64G", "update", True, None),  # grows
    ("local-lvm:vm-101-disk-1,mp=/srv/backup,backup=1,size=100G", "unchanged", None, None),
    ("local-lvm:vm-101-disk-1,mp=/srv/backup,backup=1,size=200G", "unchanged", False, "only grows"),
    ("local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,size=100G", "unchanged", False, "moving or removing"),
])
def test_backup_volume_changes(mp0: str | None, kind: str, possible: bool | None, note: str | None) -> None:
    desired = desired_state(BACKUP_VOLUME, INSTANCE)
    cfg = {**pve_config("pve-backup-manager", 101), **({"mp0": mp0} if mp0 else {})}
    [a] = plan(desired, Observed([guest("pve-backup-manager", 101, tags=["backup", "pveguard"])], {101: cfg})).actions
    assert a.kind == kind
    if possible is not None:
        [c] = a.changes
        assert c.field == "mp0" and c.possible is possible and c.live
    if note:
        assert note in a.notes[0], a.notes
    if kind == "update":
        from pveguard.backends.base import GrowTo
        from pveguard.provision.apply import update_params

        params, _ = update_params(a.changes, cfg, desired[0].spec)
        assert params["mp0"] == (desired[0].spec.backup_volume if mp0 is None else GrowTo("100G"))


@pytest.mark.parametrize("mountpoint", ["srv/backup", "/srv/my backup", "/srv/../etc", "/", "/srv/x\nlxc.hook=1"])
def test_backup_volume_mountpoint_must_be_a_plain_absolute_path(mountpoint: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="absolute path"):
        Strategy.model_validate({"containers": [{"name": "a", "role": "r", "resources": {"cores": 1, "memory": "1G"},
                                                 "backup_volume": {"mountpoint": mountpoint}}]})
