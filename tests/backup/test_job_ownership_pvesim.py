"""Two pveguard installations on one pvesim cluster: neither changes nor deletes the other's vzdump jobs;
legacy jobs are nobody's until `pveguard backup adopt`; `backup apply` goes through the backend's checked
call path (answer shapes, retries by meaning)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store
from tests.provision.conftest import FAST, Env, make_env, small

pytest.importorskip("pvesim.testing")

B_ID = "b0b0b0b0b0b0"
MARKER = "managed-by: pveguard"


def _setup(env: Env, *names: str, schedule: str = "daily") -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["containers"] = [small(n) for n in names]
        doc.setdefault("backup", {}).setdefault("containers", {})["schedule"] = schedule
    env.edit(edit)


@pytest.fixture
def two(pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Env, Env]:
    """Installation A (instance id generated into its state) and B (pinned), each with its containers."""
    sim = pvesim_factory(nodes=2, guests=0, task_seconds={**FAST, "vzdump": 0})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_env(sim, tmp_path / "a"), make_env(sim, tmp_path / "b")
    _setup(a, "a-one", "a-two")
    _setup(b, "b-one")
    b.edit(lambda d: d["target"].update(instance=B_ID))
    for env in (a, b):
        code, out, err = env.run("apply", capsys=capsys)
        assert code == 0, out + err
    return a, b


def jobs(env: Env) -> dict[str, dict[str, Any]]:
    status, reason, body = env.sim.api("GET", "/cluster/backup")
    assert status == 200, reason
    return {j["id"]: j for j in body["data"]}


def vmids(env: Env, *names: str) -> list[int]:
    return sorted(g["vmid"] for g in env.lxc() if g["name"] in names)


def a_id(env: Env) -> str:
    from pveguard.provision.instance import state_instance

    with Store(env.dir / "state") as store:
        found = state_instance(store)
    assert found
    return found


def entries(env: Env, action: str) -> list[Any]:
    with Store(env.dir / "state") as store:
        return list(Ledger(store).entries(action=action))


def backup_plan(env: Env, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = env.run("backup", "apply", "--dry-run", "--json", capsys=capsys)
    assert code == 0, err
    return dict(json.loads(out))


def test_two_instances_never_touch_each_others_jobs(two: tuple[Env, Env],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    for env in (a, b):
        code, out, err = env.run("backup", "apply", capsys=capsys)
        assert code == 0, out + err
    ida = a_id(a)
    have = jobs(a)
    ja, jb = have[f"pveguard-{ida}"], have[f"pveguard-{B_ID}"]
    assert len(have) == 2
    assert ja["comment"] == f"{MARKER} instance={ida}" and jb["comment"] == f"{MARKER} instance={B_ID}"
    # each job backs up its own installation's containers only (both carry the pveguard tag)
    assert sorted(int(v) for v in ja["vmid"].split(",")) == vmids(a, "a-one", "a-two")
    assert [int(v) for v in jb["vmid"].split(",")] == vmids(a, "b-one")

    # A sees B's job as another instance's, and B sees A's
    assert backup_plan(a, capsys)["foreign_jobs"] == {f"pveguard-{B_ID}": B_ID}
    assert backup_plan(b, capsys)["foreign_jobs"] == {f"pveguard-{ida}": ida}
    code, out, err = a.run("backup", "apply", capsys=capsys)
    assert code == 0 and "nothing to do" in out and f"owned by another pveguard instance {B_ID}" in err

    # A changes its policy: only A's job changes; B's stays as it was, and B does not undo A's change
    _setup(a, "a-one", "a-two", schedule="03:30")
    assert a.run("backup", "apply", capsys=capsys)[0] == 0
    after = jobs(a)
    assert after[f"pveguard-{ida}"]["schedule"] == "03:30" and after[f"pveguard-{B_ID}"] == jb
    assert b.run("backup", "apply", capsys=capsys)[0] == 0
    assert jobs(a) == after


def test_legacy_job_is_nobodys_until_adopted(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    # a job of an older pveguard (bare marker), and one with the old id but no marker at all
    for jid, comment in (("pveguard-containers", MARKER), ("pveguard-old", "")):
        status, reason, _ = a.sim.api("POST", "/cluster/backup", {
            "id": jid, "schedule": "sat 02:00", "all": 1, "storage": "local", "comment": comment})
        assert status == 200, reason
    legacy = jobs(a)["pveguard-containers"]
    for env in (a, b):
        plan = backup_plan(env, capsys)
        assert plan["legacy_jobs"] == ["pveguard-containers", "pveguard-old"]
        assert all(c["id"] not in plan["legacy_jobs"] for c in plan["changes"])
        code, _, err = env.run("backup", "apply", capsys=capsys)
        assert code == 0 and "pveguard backup adopt JOBID" in err
    assert jobs(a)["pveguard-containers"] == legacy  # neither installation changed or deleted it

    # adopting needs a confirmation; without a terminal it refuses and changes nothing
    code, _, err = a.run("backup", "adopt", "pveguard-containers", capsys=capsys)
    assert code == 2 and "needs confirmation" in err and jobs(a)["pveguard-containers"] == legacy
    code, _, err = a.run("backup", "adopt", "nosuchjob", "--yes", capsys=capsys)
    assert code == 2 and "no vzdump job 'nosuchjob'" in err

    ida = a_id(a)
    code, out, err = a.run("backup", "adopt", "pveguard-containers", "--yes", capsys=capsys)
    assert code == 0, err
    assert f"'pveguard backup apply' deletes pveguard-containers: this installation's policy job is pveguard-{ida}" \
        in err
    assert jobs(a)["pveguard-containers"]["comment"] == f"{MARKER} instance={ida}"
    [intent] = entries(a, "backup.adopt.intent")
    [result] = [e for e in entries(a, "backup.adopt") if e.action == "backup.adopt"]
    assert intent.target == result.target == "/cluster/backup/pveguard-containers"
    assert intent.details["previous"] == "legacy" and result.details["result"] == "ok"
    assert intent.seq < result.seq
    code, out, _ = a.run("backup", "adopt", "pveguard-containers", "--yes", capsys=capsys)
    assert code == 0 and "already this installation's" in out

    # now it is A's: A's apply deletes it (not A's policy job); B sees it as A's and leaves it
    assert backup_plan(b, capsys)["foreign_jobs"]["pveguard-containers"] == ida
    code, out, err = a.run("backup", "apply", capsys=capsys)
    assert code == 0 and "delete vzdump job pveguard-containers" in out, out + err
    assert "pveguard-containers" not in jobs(a) and "pveguard-old" in jobs(a)
    changes = [e.details for e in entries(a, "backup.job") if e.action == "backup.job"]
    assert {"kind": "delete", "result": "ok"}.items() <= changes[-1].items()


def test_a_job_with_our_id_is_not_taken_over_without_adopt(two: tuple[Env, Env],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    ida = a_id(a)
    status, reason, _ = a.sim.api("POST", "/cluster/backup", {
        "id": f"pveguard-{ida}", "schedule": "sun 05:00", "all": 1, "storage": "local", "comment": "nightly"})
    assert status == 200, reason
    code, _, err = a.run("backup", "apply", capsys=capsys)
    # an old `pveguard-*` id without any marker counts as an older pveguard's: nobody's until adopted
    assert code == 2 and "belongs to no installation" in err
    assert f"pveguard backup adopt pveguard-{ida}" in err and "add 'managed-by" not in err
    assert jobs(a)[f"pveguard-{ida}"]["schedule"] == "sun 05:00"
    # adopting keeps the user's words in the comment, with A's marker after them
    assert a.run("backup", "adopt", f"pveguard-{ida}", "--yes", capsys=capsys)[0] == 0
    assert jobs(a)[f"pveguard-{ida}"]["comment"] == f"nightly | {MARKER} instance={ida}"
    code, out, err = a.run("backup", "apply", capsys=capsys)
    assert code == 0, out + err
    job = jobs(a)[f"pveguard-{ida}"]
    assert job["schedule"] == "daily" and job["comment"] == f"nightly | {MARKER} instance={ida}"


# --- the checked call path ------------------------------------------------------------------------


def test_apply_retries_a_transient_failure_of_an_update(two: tuple[Env, Env],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    assert a.run("backup", "apply", capsys=capsys)[0] == 0
    _setup(a, "a-one", "a-two", schedule="04:00")
    a.sim.control("POST", "/faults", {"method": "PUT", "path": "^/cluster/backup/", "status": 503,
                                      "message": "proxy loop", "times": 1})
    code, out, err = a.run("backup", "apply", capsys=capsys)
    assert code == 0, out + err
    assert jobs(a)[f"pveguard-{a_id(a)}"]["schedule"] == "04:00"
    assert a.calls()["PUT /cluster/backup/{id}"] == 2


def test_apply_finds_a_create_whose_answer_was_lost(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    # PVE created the job, the answer was lost on the way: a repeat would be refused ("already exists")
    a.sim.control("POST", "/faults", {"method": "POST", "path": "^/cluster/backup$", "status": 502,
                                      "message": "bad gateway", "times": 1, "after": True})
    code, out, err = a.run("backup", "apply", capsys=capsys)
    assert code == 0, out + err
    assert f"pveguard-{a_id(a)}" in jobs(a)
    [result] = [e for e in entries(a, "backup.job") if e.action == "backup.job"]
    assert result.details["result"] == "ok"


def test_apply_fails_clearly_on_a_create_that_did_not_happen(two: tuple[Env, Env],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    a, _b = two
    a.sim.control("POST", "/faults", {"method": "POST", "path": "^/cluster/backup$", "status": 500,
                                      "message": "cfs-lock 'file-jobs_cfg' error: got lock request timeout",
                                      "times": 1})
    code, _, err = a.run("backup", "apply", capsys=capsys)
    assert code == 1 and "create vzdump job" in err and "got lock request timeout" in err
    assert "run 'pveguard backup apply' again" in err
    assert "internal error" not in err and jobs(a) == {}
    [result] = [e for e in entries(a, "backup.job") if e.action == "backup.job"]
    assert result.details["result"] == "failed"


@pytest.mark.parametrize(("fault", "needle"), [
    ({"method": "GET", "path": "^/cluster/backup$", "data": None}, "GET /cluster/backup returned data=null"),
    ({"method": "GET", "path": "^/cluster/backup$", "data": [1]},
     "GET /cluster/backup returned a number (1) as item 0, expected a list of objects"),
])
def test_malformed_answers_are_named(two: tuple[Env, Env], capsys: pytest.CaptureFixture[str],
                                     fault: dict[str, Any], needle: str) -> None:
    a, _b = two
    assert a.run("backup", "apply", capsys=capsys)[0] == 0
    _setup(a, "a-one", "a-two", schedule="05:00")
    a.sim.control("POST", "/faults", fault)
    code, _, err = a.run("backup", "apply", capsys=capsys)
    assert code == 1 and needle in err and "internal error" not in err, err


def test_adopting_another_installations_job_warns_and_the_other_then_refuses(
        two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    assert a.run("backup", "apply", capsys=capsys)[0] == 0
    ida = a_id(a)
    code, _, err = b.run("backup", "adopt", f"pveguard-{ida}", "--yes", capsys=capsys)
    assert code == 0 and f"belongs to another pveguard instance {ida}" in err
    assert jobs(a)[f"pveguard-{ida}"]["comment"] == f"{MARKER} instance={B_ID}"
    [intent] = entries(b, "backup.adopt.intent")
    assert intent.details["previous"] == f"instance {ida}"
    # A no longer changes it, and says how to take it back
    before = jobs(a)
    code, _, err = a.run("backup", "apply", capsys=capsys)
    assert code == 2 and f"belongs to another pveguard instance {B_ID}" in err
    assert f"pveguard backup adopt pveguard-{ida}" in err and jobs(a) == before


def test_backup_status_and_the_audit_judge_only_this_installations_guests(
        two: tuple[Env, Env], capsys: pytest.CaptureFixture[str]) -> None:
    """Both installations' containers carry the `pveguard` tag; each one's status and audit count its own."""
    a, b = two
    for env, mine in ((a, ["a-one", "a-two"]), (b, ["b-one"])):
        code, out, err = env.run("backup", "status", "--json", capsys=capsys)
        assert code == 1, out + err  # no job, no backup yet: not compliant
        assert sorted(r["name"] for r in json.loads(out)) == mine
        code, out, err = env.run("audit", "--json", capsys=capsys)
        assert code == 0, err
        doc = json.loads(out)
        assert sorted(r["name"] for r in doc["backup"]["items"]) == mine
        assert sorted(f["id"].split(":", 1)[1] for f in doc["findings"] if f["category"] == "backup") == mine
    # `guests: all` means every container, whoever made it
    a.edit(lambda d: d["backup"]["containers"].update(guests="all"))
    code, out, err = a.run("backup", "status", "--json", capsys=capsys)
    assert sorted(r["name"] for r in json.loads(out)) == ["a-one", "a-two", "b-one"], out + err
