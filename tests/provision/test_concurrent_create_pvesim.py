"""apply's concurrent creates against pvesim: every container created once with its own VMID, an intent
and a result per create in the ledger, one failing create among many reported without hiding the
others, a VMID taken by another client meanwhile replaced, and the run bound by the task time."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.proxmox import ProxmoxBackend, PveSettings
from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env, containers

pytest.importorskip("pvesim.testing")

NAMES = [f"cc-{i:02d}" for i in range(12)]


def creates(penv: Env) -> dict[str, list[tuple[str, str | None]]]:
    """Ledger rows of provision.create* per target: [(action, result)] in ledger order."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    with Store(penv.dir / "state") as store:
        for e in Ledger(store).entries(action="provision.create"):
            out.setdefault(e.target, []).append((e.action, e.details.get("result")))
    return out


def test_twelve_creates_run_at_once_each_once_with_its_own_vmid(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(containers(*NAMES))
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 1.0, "vzstart": 0.2}})
    t0 = time.monotonic()
    code, out, err = penv.run("apply", capsys=capsys)
    took = time.monotonic() - t0
    assert code == 0, out + err
    guests = penv.lxc()
    assert Counter(g["name"] for g in guests) == Counter(NAMES)
    assert len({g["vmid"] for g in guests}) == len(NAMES)
    assert all(g["status"] == "running" for g in guests)
    # one after another that is 12 x 1.2 s of task time; 8 at once, two rounds
    assert took < 7, f"12 creates took {took:.1f}s"
    # every create: its intent, then its ok result, under the VMID the guest has
    rows = creates(penv)
    assert sorted(rows) == sorted(f"ct/{g['vmid']}" for g in guests)
    assert all(r == [("provision.create.intent", None), ("provision.create", "ok")] for r in rows.values()), rows
    # a progress line per container, and the summary
    for name in NAMES:
        assert f"creating {name} as CT" in err and f"created {name} as CT" in err and f"started {name}" in err
    assert "12 created" in out
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_placement_spreads_creates_sent_at_once(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Chosen up front in plan's order: the nodes fill as placement says, not all on the emptiest one."""
    def big(doc: dict[str, Any]) -> None:  # 24G each: pve2 (128G) takes two, then pve1 and pve3 come in
        containers(*NAMES[:6])(doc)
        for c in doc["containers"]:
            c["resources"]["memory"] = "24G"

    penv.edit(big)
    plan = penv.json("plan", capsys=capsys)
    planned = {a["name"]: a["notes"] for a in plan["actions"]}
    assert penv.run("apply", capsys=capsys)[0] == 0
    nodes = {g["name"]: g["node"] for g in penv.lxc()}
    assert set(nodes.values()) == {"pve1", "pve2", "pve3"}, nodes
    for name, node in nodes.items():
        assert any(f"node at apply (as of now): {node} " in n for n in planned[name]), (name, node, planned[name])


def test_one_failing_create_among_many(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(containers(*NAMES[:8]))
    penv.sim.control("POST", "/task-faults", {"type": "vzcreate", "times": 1,
                                              "error": "unable to create CT - no space left on device"})
    code, out, err = penv.run("apply", "--json", capsys=capsys)
    assert code == 1, err
    result = json.loads(out)["result"]
    [(bad, msg)] = result["failed"].items()
    assert "no space left on device" in msg
    assert sorted(result["created"]) == sorted(n for n in NAMES[:8] if n != bad)
    assert "Traceback" not in err and f"failed: create {bad}" in err
    rows = creates(penv)
    results = Counter(r[-1][1] for r in rows.values())
    assert results == Counter({"ok": 7, "failed": 1}), rows
    assert all(r[0] == ("provision.create.intent", None) for r in rows.values())
    running = [g["name"] for g in penv.lxc() if g["status"] == "running"]
    assert sorted(running) == sorted(result["created"])
    # the next apply creates the one that failed and leaves the others alone
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, out + err
    assert Counter(g["name"] for g in penv.lxc()) == Counter(NAMES[:8])


def _spec(name: str) -> GuestSpec:
    return GuestSpec(name=name, role="app", cores=1, memory_mib=256, swap_mib=0, disk_gib=2,
                     net=NetSpec(bridge="vmbr0", ip="dhcp"), template="debian-12-standard",
                     description="managed-by: pveguard instance=cc0000000001", tags=["pveguard"])


def test_a_vmid_another_client_takes_meanwhile_is_replaced(penv: Env) -> None:
    """Chosen up front, then taken by someone else before our POST: PVE says "CT N already exists on
    node 'x'"; the create moves to a VMID that is free and that no other create of the run holds."""
    backend = ProxmoxBackend(PveSettings(mode="https", host=penv.sim.host, retry_wait=0.05, poll_interval=0.05),
                             api=penv.sim.proxmoxer("token"))
    specs = [_spec(f"race-{i}") for i in range(4)]
    backend.prepare_creates(specs)
    chosen = {s.name: backend._prepared[s.name][1] for s in specs}
    assert len(set(chosen.values())) == 4
    stolen = chosen["race-1"]
    status, reason, _b = penv.sim.api("POST", "/nodes/pve1/lxc", {
        "vmid": stolen, "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", "hostname": "other",
        "rootfs": "local-lvm:4"})
    assert status == 200, reason
    made: dict[str, Any] = {}
    lock = threading.Lock()
    asked: list[tuple[str, int]] = []

    def create(spec: GuestSpec) -> None:
        def before(vmid: int, node: str) -> None:
            with lock:
                asked.append((spec.name, vmid))
        g = backend.create(spec, before_request=before)
        with lock:
            made[spec.name] = g.vmid

    threads = [threading.Thread(target=create, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(made) == sorted(chosen)
    assert len(set(made.values())) == 4 and stolen not in made.values()
    assert {n: v for n, v in made.items() if n != "race-1"} == {n: v for n, v in chosen.items() if n != "race-1"}
    assert ("race-1", stolen) in asked  # first tried, refused by PVE, then another
    by_vmid = {g["vmid"]: g["name"] for g in penv.lxc()}
    assert by_vmid[stolen] == "other" and by_vmid[made["race-1"]] == "race-1"


def test_the_firewall_of_new_containers_is_written_guest_by_guest_in_parallel(
        penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """After the creates, each guest's firewall (options, then its group rule) is written with the guests in
    parallel: per guest an intent before and a result after each change; one guest refused leaves the
    others converged, its intent closed as failed, and apply exits 1 naming it."""
    penv.edit(containers(*NAMES[:6]))
    refusal = "Permission check failed (/vms/0, VM.Config.Network)"
    penv.sim.control("POST", "/faults", {"method": "POST", "path": r"/lxc/\d+/firewall/rules$", "times": 1,
                                         "status": 403, "message": refusal})
    code, out, err = penv.run("apply", "--json", capsys=capsys)
    assert code == 1, err
    result = json.loads(out)["result"]
    assert "Permission check failed" in result["failed"]["firewall"]
    assert sorted(result["created"]) == sorted(NAMES[:6])
    with Store(penv.dir / "state") as store:
        rows = [(e.target, e.action, e.details.get("result"))
                for e in Ledger(store).entries(action="provision.firewall")]
    per: dict[str, list[tuple[str, str | None]]] = {}
    for target, action, res in rows:
        if target.startswith("ct/"):
            per.setdefault(target, []).append((action, res))
    assert len(per) == 6
    pair = [("provision.firewall.intent", None), ("provision.firewall", "ok")]
    refused = [t for t, r in per.items() if r != pair * 2]
    assert len(refused) == 1, per
    assert per[refused[0]] == [*pair, ("provision.firewall.intent", None), ("provision.firewall", "failed")]
    # the next apply writes only what is missing: the refused guest's rule
    penv.reset_calls()
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert penv.calls().get("POST /nodes/{node}/lxc/{vmid}/firewall/rules") == 1
    assert "PUT /nodes/{node}/lxc/{vmid}/firewall/options" not in penv.calls()
