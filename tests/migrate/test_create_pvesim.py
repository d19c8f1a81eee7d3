"""`migrate run`'s create step through provisioning, against pvesim (the proxmox backend).

The plan document is built by `migrate plan`'s own code from the audit's fake PVE root (nginx with a
sparse 3 GiB blob in its data directory, so the disk it needs is known exactly); the service's memory
is given as `migrate run` reads it live. A too-small strategy container grows (disk through PVE's
resize, memory through the config), a target the strategy does not name is created with the defaults
of the audit's suggestion, and the following `pveguard plan` is empty: the store's floor and extra
keep apply from shrinking or pruning what the migration needed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pveguard.errors import UsageError
from pveguard.provision import floors
from pveguard.store import Store

from ..provision.conftest import Env, small
from ..provision.test_apply_pvesim import ledger_entries

pytest.importorskip("pvesim.testing")

GOLDEN = Path(__file__).parents[1] / "audit/golden/pve-fake/root"
GIB = 1024 ** 3
MIB = 1024 ** 2


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(GOLDEN, root, symlinks=True)
    (root / "etc/nginx").mkdir(parents=True, exist_ok=True)
    (root / "etc/nginx/nginx.conf").write_text("events {}\n")
    (root / "var/lib/nginx").mkdir(parents=True, exist_ok=True)
    with open(root / "var/lib/nginx/blob", "wb") as f:
        f.truncate(3 * GIB)
    return root


@pytest.fixture
def app(penv: Env) -> Iterator[Any]:
    """An AppContext over the pvesim env (the process environment is the CLI's, restored after)."""
    from pveguard.context import AppContext

    penv.edit(lambda d: d.update(containers=[{**small("pve-api-gateway"), "role": "gateway",
                                              "components": ["nginx"]}]))
    old = dict(os.environ)
    os.environ.update(penv.env)
    try:
        yield lambda: AppContext.from_options(None, None)
    finally:
        os.environ.clear()
        os.environ.update(old)


def doc_for(app_ctx: Any, root: Path, to: str | None = None, memory: int | None = 400 * MIB) -> dict[str, Any]:
    from pveguard.audit import inventory
    from pveguard.migrate import plan

    return plan.build(inventory.collect(root), app_ctx.strategy, "nginx", to, memory_bytes=memory)


def say(_text: str) -> None:
    pass


def test_a_small_strategy_container_grows_and_plan_stays_empty(penv: Env, app: Any, root: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.migrate import run

    assert penv.run("apply", capsys=capsys)[0] == 0
    [g] = penv.lxc()
    assert penv.config(g["vmid"])["memory"] == 256 and "size=2G" in penv.config(g["vmid"])["rootfs"]
    a = app()
    doc = doc_for(a, root)
    r = doc["resources"]
    # 1 GiB base + 3 GiB blob + packages, 80 % full at most -> 6G; 128 MiB + 1.5 x 400 MiB -> 768M
    assert (r["must_grow"], r["grow_to"], r["memory_grow_to"]) == (True, "6G", "768M")
    _backend, guest, detail = run.provide_target(a, doc, say)
    assert guest.vmid == g["vmid"] and guest.status == "running" and detail["created"] is False
    assert detail["grown"] == {"before": {"disk_gib": 2, "memory_mib": 256},
                               "after": {"disk_gib": 6, "memory_mib": 768}}
    cfg = penv.config(g["vmid"])
    assert cfg["memory"] == 768 and "size=6G" in cfg["rootfs"]
    a.close()
    [grow] = ledger_entries(penv, "migrate.create.grow")
    assert grow.target == "pve-api-gateway" and grow.details["after"] == {"disk_gib": 6, "memory_mib": 768}
    [_intent, upd] = ledger_entries(penv, "provision.update")
    assert upd.details["result"] == "ok" and upd.details["after"] == {"memory": "768", "rootfs": "6G"}
    # the strategy still says 256M/2G: plan neither shrinks memory back nor reports drift, and says why
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0
    out = penv.run("plan", capsys=capsys)[1]
    assert "grown by migrate nginx.service: rootfs 2G -> 6G, memory 256 -> 768 MiB" in out
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert penv.config(g["vmid"])["memory"] == 768
    # a second run (resumed create) finds it large enough: nothing grows again
    a = app()
    _b, again, detail = run.provide_target(a, doc_for(a, root), say)
    assert again.vmid == g["vmid"] and detail["grown"] == {}
    a.close()
    assert len(ledger_entries(penv, "migrate.create.grow")) == 1
    # the strategy raised above the floor wins: plan grows to the strategy's size, not back
    penv.edit(lambda d: d["containers"][0]["resources"].update(memory="1G"))
    plan = penv.json("plan", capsys=capsys)
    assert [(c["field"], c["old"], c["new"]) for c in plan["actions"][0]["changes"]] == [("memory", "768", "1024")]
    # the migration's rollback releases its floor: the strategy's sizes count again (the disk never shrinks)
    penv.edit(lambda d: d["containers"][0]["resources"].update(memory="256M"))
    with Store(penv.dir / "state") as store:
        assert floors.release(store, "migrate nginx.service") == {"floors": ["pve-api-gateway"], "extras": []}
    [action] = penv.json("plan", capsys=capsys)["actions"]
    assert [(c["field"], c["old"], c["new"], c["possible"]) for c in action["changes"]] == [
        ("memory", "768", "256", True), ("rootfs", "6G", "2G", False)]


def test_a_missing_target_outside_the_strategy_is_created_with_the_suggestions_defaults(
        penv: Env, app: Any, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.migrate import run

    a = app()
    doc = doc_for(a, root, to="web-1", memory=None)
    assert doc["target"]["in_strategy"] is False and doc["target"]["suggestion"] == "pve-api-gateway"
    assert doc["resources"]["grow_to"] == "6G"          # the suggestion's 2G does not hold 3 GiB of data
    _backend, guest, detail = run.provide_target(a, doc, say)
    a.close()
    assert detail["created"] is True and detail["defaults_of"] == "pve-api-gateway"
    [g] = penv.lxc()
    cfg = penv.config(g["vmid"])
    assert g["name"] == "web-1" and guest.vmid == g["vmid"] and g["status"] == "running"
    assert cfg["hostname"] == "web-1" and "size=6G" in cfg["rootfs"] and cfg["memory"] == 256
    assert set(cfg["tags"].split(";")) == {"pveguard", "gateway"}
    [made] = ledger_entries(penv, "migrate.create.container")
    assert made.details["base"] == "pve-api-gateway" and made.details["after"]["name"] == "web-1"
    creates = [e for e in ledger_entries(penv, "provision.create") if e.action == "provision.create"]
    assert [e.details["result"] for e in creates] == ["ok"]
    # plan: web-1 is neither a drift nor a prune candidate; pve-api-gateway (never applied) is a create
    plan = penv.json("plan", "--prune", capsys=capsys)
    by_name = {x["name"]: x for x in plan["actions"]}
    assert by_name["web-1"]["action"] == "unchanged" and by_name["pve-api-gateway"]["action"] == "create"
    assert any("created by migrate nginx.service with the defaults of pve-api-gateway" in n
               for n in by_name["web-1"]["notes"])
    # released (the migration rolled back): web-1 is a managed guest the strategy does not want
    with Store(penv.dir / "state") as store:
        assert floors.release(store, "migrate nginx.service") == {"floors": ["web-1"], "extras": ["web-1"]}
    plan = penv.json("plan", "--prune", capsys=capsys)
    assert {x["name"]: x["action"] for x in plan["actions"]}["web-1"] == "delete"


def test_a_foreign_container_that_is_too_small_is_refused_clearly(penv: Env, app: Any, root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pveguard.migrate import run

    # a container someone made by hand (not pveguard's), 2G
    status, reason, _body = penv.sim.api("POST", "/nodes/pve1/lxc", {
        "vmid": 150, "hostname": "handmade", "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        "rootfs": "local-lvm:2", "memory": 512})
    assert status == 200, reason
    deadline = time.monotonic() + 10
    while "lock" in penv.config(150) and time.monotonic() < deadline:   # the create task
        time.sleep(0.05)
    a = app()
    with pytest.raises(UsageError, match=r"handmade is too small for nginx.service \(disk 2G, needs 6G\)"):
        run.provide_target(a, doc_for(a, root, to="handmade", memory=None), say)
    a.close()
    assert "size=2G" in penv.config(150)["rootfs"]
    with Store(penv.dir / "state") as store:
        assert floors.load(store).floors == {} and floors.load(store).extras == []


def test_the_created_targets_endpoint_runs_through_pct_exec(penv: Env, app: Any, root: Path, tmp_path: Path) -> None:
    """The endpoint migrate uses for a proxmox container (`pct exec VMID --keep-env 0 -- ...`, over ssh to
    the container's node): run through pvesim's pct, which reads the options as pct does."""
    from pveguard.migrate import endpoints, run

    from ..provision.test_exec_pvesim import fake_ssh

    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    os.environ.update(PATH=f"{bindir}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"],
                      SSL_CERT_DIR="/must/not/reach/the/container")
    a = app()
    backend, guest, _detail = run.provide_target(a, doc_for(a, root, memory=None), say)
    a.close()
    ct = endpoints.for_guest(backend, guest)
    assert isinstance(ct, endpoints.Pct) and ct.prefix[0] == "ssh"
    assert ct.run(["echo", "a b", "--keep-env", "-c"]).out == "a b --keep-env -c\n"
    assert ct.run(["hostname"]).out == "pve-api-gateway\n"
    entry = next(e for e in penv.sim.control("GET", "/pct/log") if "a b" in e["argv"])
    # the command as given (after env PATH=...), in the container of its node, with lxc's cleared env
    assert entry["argv"] == ["env", f"PATH={endpoints.PATH}", "echo", "a b", "--keep-env", "-c"]
    assert entry["vmid"] == guest.vmid and entry["node"] == guest.node
    assert entry["env"] == {"container": "lxc", "PATH": endpoints.PATH}
