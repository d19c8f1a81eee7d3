"""Two pveguard installations on one pvesim cluster: neither prunes the other's containers; adopt;
the typed name and the final backup before deleting a container with data volumes."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import FAST, Env, containers, make_env

pytest.importorskip("pvesim.testing")

B_ID = "b0b0b0b0b0b0"


def flat(out: str) -> str:
    """The plan's text with its line wrapping undone (notes wrap at the terminal's width)."""
    return " ".join(out.split())


@pytest.fixture
def two(pvesim_factory: Any, tmp_path: Path) -> tuple[Env, Env]:
    """Installation A (instance id generated into its state) and B (pinned in its strategy), one cluster."""
    sim = pvesim_factory(nodes=2, task_seconds=FAST)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_env(sim, tmp_path / "a"), make_env(sim, tmp_path / "b")
    a.edit(containers("a-one", "a-two"))
    b.edit(containers("b-one"))
    b.edit(lambda d: d["target"].update(instance=B_ID))
    return a, b


def names(env: Env) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in env.lxc()}


def entries(env: Env, action: str) -> list[Any]:
    with Store(env.dir / "state") as store:
        return list(Ledger(store).entries(action=action))


def a_id(env: Env) -> str:
    from pveguard.provision.instance import state_instance

    with Store(env.dir / "state") as store:
        found = state_instance(store)
    assert found
    return found


def test_two_instances_never_prune_each_other(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    assert a.run("apply", capsys=capsys)[0] == 0
    assert b.run("apply", capsys=capsys)[0] == 0
    assert sorted(names(a)) == ["a-one", "a-two", "b-one"]
    assert f"managed-by: pveguard instance={B_ID}" in a.config(names(a)["b-one"]["vmid"])["description"]
    ida = a_id(a)
    assert ida != B_ID and f"instance={ida}" in a.config(names(a)["a-one"]["vmid"])["description"]

    # A sees B's container as another instance's, never as a delete
    plan = a.json("plan", "--prune", capsys=capsys)
    assert plan["counts"]["delete"] == 0 and plan["counts"]["foreign"] == 1
    [f] = [x for x in plan["actions"] if x["action"] == "foreign"]
    assert (f["name"], f["owner"]) == ("b-one", B_ID)
    code, out, _ = a.run("plan", "--prune", capsys=capsys)
    assert code == 0 and f"owned by another pveguard instance {B_ID}" in flat(out) and "Nothing to do" in out

    # A prunes what left its own strategy, and only that
    a.edit(containers("a-one"))
    code, out, err = a.run("apply", "--prune", "--yes", capsys=capsys)
    assert code == 0, out + err
    assert sorted(names(a)) == ["a-one", "b-one"]

    # B with an empty strategy and --prune: deletes its own, leaves A's
    b.edit(containers())
    code, out, err = b.run("apply", "--prune", "--yes", capsys=capsys)
    assert code == 0, out + err
    assert sorted(names(a)) == ["a-one"]
    plan = b.json("plan", "--prune", capsys=capsys)
    assert [(x["action"], x["name"], x["owner"]) for x in plan["actions"]] == [("foreign", "a-one", ida)]

    # a strategy container with the name of another instance's guest: a conflict, not a second guest
    b.edit(containers("a-one"))
    code, out, err = b.run("apply", capsys=capsys)
    assert code == 1 and f"owned by another pveguard instance {ida}" in flat(out) and "pveguard adopt" in flat(out)
    assert sorted(names(a)) == ["a-one"]


def test_adopt_is_explicit_and_recorded(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    assert a.run("apply", capsys=capsys)[0] == 0
    vmid = names(a)["a-one"]["vmid"]
    before = a.config(vmid)
    b.edit(containers("a-one"))
    code, _out, err = b.run("adopt", "a-one", capsys=capsys)  # not a terminal, no --yes: nothing happens
    assert code == 2 and "--yes" in err and a.config(vmid) == before
    code, out, err = b.run("adopt", "a-one", "--yes", capsys=capsys)
    assert code == 0, out + err
    assert f"instance {a_id(a)}; that installation will no longer manage it" in err
    cfg = a.config(vmid)
    assert cfg["description"].splitlines()[-1] == f"managed-by: pveguard instance={B_ID}"
    assert cfg["description"].count("managed-by") == 1 and "pveguard" in cfg["tags"]
    intent, result = entries(b, "provision.adopt")
    assert (intent.action, result.action, result.details["result"]) == \
        ("provision.adopt.intent", "provision.adopt", "ok")
    assert result.target == f"ct/{vmid}" and result.details["previous"] == f"instance {a_id(a)}"
    assert f"instance={a_id(a)}" in result.details["before"]["description"]
    assert f"instance={B_ID}" in result.details["after"]["description"]
    # B now converges it; A sees it as B's (its strategy still names it: a conflict, no second guest)
    assert b.run("apply", capsys=capsys)[0] == 0
    code, out, _ = a.run("plan", "--prune", capsys=capsys)
    assert code == 1 and f"owned by another pveguard instance {B_ID}" in flat(out)
    assert b.run("adopt", str(vmid), "--yes", capsys=capsys)[0] == 0  # already ours: nothing to do
    assert len(entries(b, "provision.adopt")) == 2
    code, _out, err = b.run("adopt", "no-such-guest", "--yes", capsys=capsys)
    assert code == 2 and "no guest 'no-such-guest'" in err


def test_legacy_marker_is_not_ours_until_adopted(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    [vmid] = a.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "node": "pve1"})
    status, reason, _ = a.sim.api("PUT", f"/nodes/pve1/lxc/{vmid}/config", {
        "hostname": "old-made", "tags": "pveguard", "description": "from pveguard 0.x\nmanaged-by: pveguard"})
    assert status == 200, reason
    plan = a.json("plan", "--prune", capsys=capsys)
    [f] = [x for x in plan["actions"] if x["name"] == "old-made"]
    assert (f["action"], f["owner"]) == ("foreign", None)
    code, out, err = a.run("apply", "--prune", "--yes", capsys=capsys)
    assert code == 0, out + err
    assert "old-made" in names(a)
    assert a.run("adopt", "old-made", "--yes", capsys=capsys)[0] == 0
    plan = a.json("plan", "--prune", capsys=capsys)
    [d] = [x for x in plan["actions"] if x["name"] == "old-made"]
    assert d["action"] == "delete"  # now ours, and not in the strategy


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _with_data_volume(a: Env, capsys: pytest.CaptureFixture[str]) -> int:
    assert a.run("apply", capsys=capsys)[0] == 0
    g = names(a)["a-two"]
    status, reason, _ = a.sim.api("PUT", f"/nodes/{g['node']}/lxc/{g['vmid']}/config",
                                  {"mp0": "local-lvm:1,mp=/srv/data,backup=1"})
    assert status == 200, reason
    a.edit(containers("a-one"))
    return int(g["vmid"])


def backups(env: Env, vmid: int) -> list[dict[str, Any]]:
    out = []
    for node in ("pve1", "pve2"):
        status, _r, body = env.sim.api("GET", f"/nodes/{node}/storage/local/content", {"content": "backup"})
        assert status == 200
        out += [v for v in body["data"] if v.get("vmid") == vmid]
    return out


def test_delete_with_data_volumes_needs_the_typed_name_and_takes_a_final_backup(
        two: tuple[Env, Env], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _b = two
    vmid = _with_data_volume(a, capsys)
    code, out, _ = a.run("plan", "--prune", capsys=capsys)
    assert "data volumes destroyed with it: mp0" in out
    # a script: --yes alone is not enough
    code, _out, err = a.run("apply", "--prune", "--yes", capsys=capsys)
    assert code == 2 and "--i-mean-it a-two" in err and "a-two" in names(a)
    # a terminal: the wrong name stops everything
    monkeypatch.setattr(sys, "stdin", _Tty("y\na-one\n"))
    code, _out, err = a.run("apply", "--prune", capsys=capsys)
    assert code == 2 and "'a-one' is not a-two" in err and "a-two" in names(a)
    assert backups(a, vmid) == []
    # the right name: final backup (protected), then the delete
    monkeypatch.setattr(sys, "stdin", _Tty("y\na-two\n"))
    code, out, err = a.run("apply", "--prune", capsys=capsys)
    assert code == 0, out + err
    assert "a-two" not in names(a) and "final backup" in out
    [bk] = backups(a, vmid)
    assert bk["protected"] and "final backup before pveguard deleted a-two" in bk.get("notes", "")
    actions = [e.action for e in entries(a, "provision")
               if e.target == f"ct/{vmid}" and ("delete" in e.action or "final-backup" in e.action)]
    assert actions == ["provision.delete.intent", "provision.final-backup.intent", "provision.final-backup",
                       "provision.delete"]


def test_i_mean_it_in_scripts_and_a_failed_final_backup_keeps_the_container(
        two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    vmid = _with_data_volume(a, capsys)
    a.sim.control("POST", "/faults", {"method": "POST", "path": r"^/nodes/[^/]+/vzdump$", "status": 500,
                                      "message": "storage 'local' is full", "times": 1})
    code, _out, err = a.run("apply", "--prune", "--yes", "--i-mean-it", "a-two", capsys=capsys)
    assert code == 1 and "storage 'local' is full" in err and "a-two" in names(a)
    results = [e.details["result"] for e in entries(a, "provision") if e.action in
               ("provision.final-backup", "provision.delete") and e.target == f"ct/{vmid}"]
    assert results == ["failed", "failed"]
    code, out, err = a.run("apply", "--prune", "--yes", "--i-mean-it", "a-two", capsys=capsys)
    assert code == 0, out + err
    assert "a-two" not in names(a) and len(backups(a, vmid)) == 1


def test_ensure_container_uses_this_instances_guest_of_that_name(
        two: tuple[Env, Env], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pveguard.context import AppContext
    from pveguard.provision.ensure import ensure_container

    a, b = two
    # another installation's container named like ours, with a lower VMID (listed first)
    [vmid] = a.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "node": "pve1", "status": "running"})
    status, reason, _ = a.sim.api("PUT", f"/nodes/pve1/lxc/{vmid}/config", {"hostname": "a-one"})
    assert status == 200, reason
    assert b.run("adopt", str(vmid), "--yes", capsys=capsys)[0] == 0
    code, out, _ = a.run("apply", capsys=capsys)
    assert code == 1 and f"owned by another pveguard instance {B_ID}" in flat(out)  # no second a-one
    a.sim.api("PUT", f"/nodes/pve1/lxc/{vmid}/config", {"hostname": "b-tmp"})
    assert a.run("apply", capsys=capsys)[0] == 0
    a.sim.api("PUT", f"/nodes/pve1/lxc/{vmid}/config", {"hostname": "a-one"})  # a namesake appears later
    for k, v in a.env.items():
        monkeypatch.setenv(k, v)
    app = AppContext.from_options(None, None)
    try:
        backend, guest = ensure_container(app, "a-one")
        backend.close()
    finally:
        app.close()
    assert guest.vmid != vmid and guest.name == "a-one"
