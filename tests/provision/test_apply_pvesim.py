"""plan/apply/status against pvesim (3 nodes): the issue's done-when, fault by fault."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pveguard.errors import BackendError
from pveguard.security.ledger import Ledger
from pveguard.store import Store

from .conftest import Env

pytest.importorskip("pvesim.testing")

EXPECTED = {  # name: (cores, memory MiB, rootfs GiB, onboot, role)
    "pve-monitoring": (2, 4096, 20, 1, "monitoring"),
    "pve-backup-manager": (1, 2048, 16, 1, "backup"),
    "pve-dev-tools": (2, 4096, 50, 0, "devtools"),
    "pve-api-gateway": (1, 2048, 10, 1, "gateway"),
}


def managed(penv: Env) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in penv.lxc() if "pveguard" in str(g.get("tags", ""))}


def instance(penv: Env) -> str:
    """The instance id the first plan/apply generated and kept in the state."""
    from pveguard.provision.instance import state_instance

    with Store(penv.dir / "state") as store:
        found = state_instance(store)
    assert found
    return found


def ledger_entries(penv: Env, action: str) -> list[Any]:
    with Store(penv.dir / "state") as store:
        return list(Ledger(store).entries(action=action))


def test_default_strategy_plan_apply_converge(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    plan = penv.json("plan", capsys=capsys)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("create", n) for n in EXPECTED]

    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    guests = managed(penv)
    assert sorted(guests) == sorted(EXPECTED)
    for name, (cores, mem, disk, onboot, role) in EXPECTED.items():
        g = guests[name]
        cfg = penv.config(g["vmid"])
        assert g["status"] == "running"
        assert (cfg["hostname"], cfg["cores"], cfg["memory"], cfg["swap"]) == (name, cores, mem, 512)
        assert f"size={disk}G" in cfg["rootfs"]
        net = dict(kv.split("=", 1) for kv in cfg["net0"].split(","))
        assert (net["bridge"], net["tag"], net["firewall"], net["ip"]) == ("vmbr0", "100", "1", "dhcp")
        assert net["hwaddr"]  # PVE made one up; pveguard must keep it
        assert cfg["unprivileged"] == 1 and cfg["features"] == "nesting=1"
        assert cfg.get("onboot", 0) == onboot
        assert cfg["tags"] == ";".join(sorted([role, "pveguard"]))
        assert cfg["description"].rstrip("\n").endswith(f"managed-by: pveguard instance={instance(penv)}")
    creates = [e for e in ledger_entries(penv, "provision.create") if e.action == "provision.create"]
    assert len(creates) == 4 and all(e.details["before"] is None and e.details["after"]["memory"] for e in creates)
    assert all(e.details["result"] == "ok" for e in creates)

    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 0 and "Nothing to do" in out

    # one container's memory changes: exactly that update, applied live, then nothing left
    def more_memory(doc: dict[str, Any]) -> None:
        doc["containers"][1]["resources"]["memory"] = "3G"

    penv.edit(more_memory)
    code, out, _ = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 2 and "memory: 2048 -> 3072" in out
    plan = penv.json("plan", capsys=capsys)
    changes = [(a["name"], c["field"], c["old"], c["new"]) for a in plan["actions"] for c in a["changes"]]
    assert changes == [("pve-backup-manager", "memory", "2048", "3072")]
    assert plan["counts"] == {"create": 0, "update": 1, "resume": 0, "unchanged": 3, "delete": 0, "conflict": 0,
                              "foreign": 0}
    vmid = managed(penv)["pve-backup-manager"]["vmid"]
    hwaddr = penv.config(vmid)["net0"]
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    assert penv.config(vmid)["memory"] == 3072 and penv.config(vmid)["net0"] == hwaddr
    [intent, upd] = ledger_entries(penv, "provision.update")
    assert (intent.action, upd.action, upd.details["result"]) == ("provision.update.intent", "provision.update", "ok")
    assert (upd.details["before"], upd.details["after"]) == ({"memory": "2048"}, {"memory": "3072"})
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0
    assert len(penv.lxc()) == 4


def test_plan_reads_one_listing_plus_one_config_per_managed_guest(penv: Env,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/guests", {"count": 30, "type": "lxc"})  # guests pveguard does not manage
    assert penv.run("apply", capsys=capsys)[0] == 0
    penv.reset_calls()
    assert penv.run("plan", capsys=capsys)[0] == 0
    # plus one privilege read per ACL path the strategy needs (/, /nodes, /vms, 2 storages, the bridge's VLAN)
    # and the firewall: one read per cluster collection, the IP set and each role's group, two per guest;
    # RBAC (security.access.rbac): /access, /access/groups, /access/realm/pve and the grants' /storage
    # privileges, one read of users, roles and ACLs, the tokens of each role user, and the nodes' addresses
    # for `pct exec` over ssh (is the token file in each container?)
    assert penv.calls() == {"GET /cluster/resources": 1, "GET /nodes/{node}/lxc/{vmid}/config": 4,
                            "GET /access/permissions": 10, "GET /access/users": 1, "GET /access/roles": 1,
                            "GET /access/acl": 1, "GET /access/users/{userid}/token": 4, "GET /cluster/status": 1,
                            "GET /cluster/firewall/options": 1, "GET /cluster/firewall/rules": 1,
                            "GET /cluster/firewall/ipset": 1, "GET /cluster/firewall/ipset/{name}": 1,
                            "GET /cluster/firewall/groups": 1, "GET /cluster/firewall/groups/{group}": 4,
                            "GET /nodes/{node}/lxc/{vmid}/firewall/options": 4,
                            "GET /nodes/{node}/lxc/{vmid}/firewall/rules": 4}


def test_status_shows_managed_containers_and_backend(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("apply", capsys=capsys)[0] == 0
    st = penv.json("status", capsys=capsys)
    assert [c["name"] for c in st["containers"]] == sorted(EXPECTED)
    mon = next(c for c in st["containers"] if c["name"] == "pve-monitoring")
    assert mon["state"] == "running" and mon["configured"]["memory_mib"] == 4096 and mon["used"]["memory_bytes"] >= 0
    assert st["backend"]["name"] == "proxmox" and st["backend"]["vlan_mode"] and st["missing"] == []
    code, out, _ = penv.run("status", capsys=capsys)
    assert code == 0 and "pve-monitoring" in out and "vlan mode" in out


def test_500_on_create_once_is_retried_without_duplicate(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/faults", {"method": "POST", "path": r"^/nodes/[^/]+/lxc$", "status": 500,
                                         "message": "got timeout while waiting for lock", "times": 1})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    assert "got timeout while waiting for lock" in err  # what PVE said is shown with the retry
    assert sorted(managed(penv)) == sorted(EXPECTED) and len(penv.lxc()) == 4
    assert penv.calls()["POST /nodes/{node}/lxc"] == 5


def test_permanent_create_error_is_not_retried(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/faults", {"method": "POST", "path": r"^/nodes/[^/]+/lxc$", "status": 400,
                                         "message": "Parameter verification failed.",
                                         "errors": {"rootfs": "storage 'nope' does not exist"}})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1
    assert "rootfs: storage 'nope' does not exist" in err and "[HTTP 400]" in err
    assert penv.calls()["POST /nodes/{node}/lxc"] == 4  # one per container, none repeated
    assert penv.lxc() == []


def test_lost_create_answer_never_duplicates(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # PVE takes longer than our HTTP timeout to answer the create: the create happens, the answer is lost
    penv.env["PVEGUARD_PVE_HTTP_TIMEOUT"] = "0.5"
    penv.sim.control("POST", "/faults", {"method": "POST", "path": r"^/nodes/[^/]+/lxc$", "delay_ms": 1500,
                                         "times": 1})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    assert sorted(g["name"] for g in penv.lxc()) == sorted(EXPECTED)  # each exactly once
    # the timed-out create was sent again with the same VMID, which PVE had not used yet
    assert penv.calls()["POST /nodes/{node}/lxc"] == 5


def test_locked_container_gives_pves_message(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("apply", capsys=capsys)[0] == 0
    vmid = managed(penv)["pve-monitoring"]["vmid"]
    penv.sim.control("POST", f"/locks/{vmid}", {"lock": "backup"})
    penv.edit(lambda d: d["containers"][0]["resources"].update(cores=4))
    penv.reset_calls()
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1
    assert "locked (backup)" in out  # the plan says so up front
    assert "CT is locked (backup) [HTTP 500]" in err and "hint:" not in out
    # a config PUT sets absolute values: safe to retry, and it was
    assert penv.calls()["PUT /nodes/{node}/lxc/{vmid}/config"] == 4
    penv.sim.control("DELETE", f"/locks/{vmid}")
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert penv.config(vmid)["cores"] == 4
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_node_offline_595(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d["containers"][0].update(node="pve1"))  # the others go to pve2 (most free memory)
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert {g["name"]: g["node"] for g in managed(penv).values()}["pve-monitoring"] == "pve1"
    penv.sim.control("POST", "/nodes/pve2", {"online": False})
    penv.edit(lambda d: [c["resources"].update(cores=3) for c in d["containers"]])
    penv.reset_calls()
    code, out, err = penv.run("plan", capsys=capsys)
    assert code == 1 and "Traceback" not in out + err
    assert "~ update pve-monitoring" in out and "cores: 2 -> 3" in out
    assert out.count("! conflict") == 3 and "[HTTP 595]" in out and "cannot be provided" in err
    # reads are safe to repeat: each config read on the offline node was retried (the read up front, all
    # guests together, then the one-call path's 4 attempts: its message, hint and retry meaning)
    assert penv.calls()["GET /nodes/{node}/lxc/{vmid}/config"] == 1 + 3 * (1 + 4)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "not provided" in err  # pve1's container was updated, the rest is reported
    mon = managed(penv)["pve-monitoring"]
    assert penv.config(mon["vmid"])["cores"] == 3
    assert len(penv.lxc()) == 4  # nothing re-created for the guests it could not read
    penv.sim.control("POST", "/nodes/pve2", {"online": True})
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_new_containers_avoid_an_offline_node_and_pinning_to_it_fails(penv: Env,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/nodes/pve2", {"online": False})
    penv.env["PVEGUARD_PVE_NODE"] = "pve2"
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "node pve2 (pinned for pve-monitoring) is offline" in err
    assert penv.lxc() == []
    del penv.env["PVEGUARD_PVE_NODE"]
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert {g["node"] for g in managed(penv).values()} <= {"pve1", "pve3"}


def test_failing_task_is_reported_and_not_duplicated(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/task-faults", {"type": "vzcreate", "error": "unable to create CT - no space left",
                                              "times": 1})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1
    assert "unable to create CT - no space left" in err and "failed on node" in err
    assert len(penv.lxc()) == 3  # PVE removed the failed one; the other three exist
    assert penv.calls()["POST /nodes/{node}/lxc"] == 4
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert sorted(managed(penv)) == sorted(EXPECTED) and len(penv.lxc()) == 4


def test_slow_task_past_the_timeout_then_converges(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.setdefault("target", {}).setdefault("proxmox", {}).update(task_timeout="1s"))
    penv.edit(lambda d: d.update(containers=d["containers"][:1]))
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 30}})
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "did not finish within 1s" in err
    [g] = penv.lxc()
    assert penv.config(g["vmid"]).get("lock") == "create"
    plan = penv.json("plan", capsys=capsys)
    assert [a["action"] for a in plan["actions"]] == ["resume"]
    penv.sim.control("POST", "/tasks/finish")
    penv.sim.control("POST", "/tasks", {"seconds": {"vzcreate": 0.2}})
    assert penv.run("apply", capsys=capsys)[0] == 0
    [g] = penv.lxc()
    assert g["status"] == "running" and not penv.config(g["vmid"]).get("lock")
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_prune_deletes_only_managed_after_confirmation(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.sim.control("POST", "/guests", {"count": 2, "type": "lxc"})
    assert penv.run("apply", capsys=capsys)[0] == 0
    before = len(penv.lxc())
    penv.edit(lambda d: d.update(containers=d["containers"][:3]))
    code, out, _ = penv.run("plan", "--prune", capsys=capsys)
    assert "- delete pve-api-gateway" in out
    code, _out, err = penv.run("apply", "--prune", capsys=capsys)  # stdin is not a terminal: refuse
    assert code == 2 and "--yes" in err and len(penv.lxc()) == before
    assert penv.run("apply", "--prune", "--yes", capsys=capsys)[0] == 0
    assert sorted(managed(penv)) == sorted(list(EXPECTED)[:3]) and len(penv.lxc()) == before - 1
    [intent, d] = ledger_entries(penv, "provision.delete")
    assert (intent.action, d.action, d.details["result"]) == ("provision.delete.intent", "provision.delete", "ok")
    assert d.details["before"]["hostname"] == "pve-api-gateway" and d.details["after"] is None


def test_unmanaged_namesake_is_a_conflict_and_untouched(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [vmid] = penv.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "node": "pve1"})
    g = next(x for x in penv.lxc() if x["vmid"] == vmid)
    status, reason, _ = penv.sim.api("PUT", f"/nodes/{g['node']}/lxc/{vmid}/config", {"hostname": "pve-monitoring"})
    assert status == 200, reason
    before = penv.config(vmid)
    code, out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "! conflict pve-monitoring" in out and "pve-monitoring: not provided" in err
    assert penv.config(vmid) == before
    assert sorted(managed(penv)) == sorted(set(EXPECTED) - {"pve-monitoring"})


@pytest.mark.parametrize(("case", "env", "expected"), [
    ("bad token", {"PVEGUARD_PVE_TOKEN": "root@pam!pvesim=00000000-0000-0000-0000-000000000000"},
     ["Authentication failed! [HTTP 401]", "hint: the credentials were refused"]),
    ("bad password", {"PVEGUARD_PVE_TOKEN": "", "PVEGUARD_PVE_USER": "root@pam",
                      "PVEGUARD_PVE_PASSWORD": "not-the-password"}, ["refused the login for root@pam"]),
    ("untrusted certificate", {"PVEGUARD_PVE_VERIFY_SSL": "1"},
     ["is not trusted", "its SHA-256 fingerprint is", "PVEGUARD_PVE_FINGERPRINT", "PVEGUARD_PVE_VERIFY_SSL=0"]),
    ("nothing listening", {"PVEGUARD_PVE_HOST": "127.0.0.1:9"},
     ["failed at 127.0.0.1:9: connection failed (Connection refused)", "check PVEGUARD_PVE_HOST"]),
])
def test_connection_problems_are_clear(penv: Env, capsys: pytest.CaptureFixture[str], case: str,
                                       env: dict[str, str], expected: list[str]) -> None:
    penv.env.update(env)
    code, _out, err = penv.run("plan", capsys=capsys)
    assert code == 1, case
    for text in expected:
        assert text in err, (case, err)
    assert "Traceback" not in err and "not-the-password" not in err


def test_missing_template_is_downloaded_through_aplinfo(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.update(containers=[{**d["containers"][0], "template": "rockylinux-9-default"}]))
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    assert "downloading template rockylinux-9-default_20240912_amd64.tar.xz" in err
    [g] = penv.lxc()
    _status, _r, body = penv.sim.api("GET", f"/nodes/{g['node']}/storage/local/content", {"content": "vztmpl"})
    assert "local:vztmpl/rockylinux-9-default_20240912_amd64.tar.xz" in {c["volid"] for c in body["data"]}
    assert penv.calls()["POST /nodes/{node}/aplinfo"] == 1


def test_unknown_template_is_a_clear_error(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.update(containers=[{**d["containers"][0], "template": "nosuch-os-1"}]))
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 1 and "template 'nosuch-os-1' is neither on" in err and "pveam update" in err
    assert penv.lxc() == []


def test_lost_update_answer_is_not_a_failure(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert penv.run("apply", capsys=capsys)[0] == 0
    penv.edit(lambda d: d["containers"][0]["resources"].update(memory="5G"))
    # the PUT lands but its answer arrives after our timeout; the retry then trips over the digest
    penv.env.update(PVEGUARD_PVE_HTTP_TIMEOUT="0.5", PVEGUARD_PVE_RETRY_WAIT="1.5")  # retry after it landed
    penv.sim.control("POST", "/faults", {"method": "PUT", "path": r"/lxc/\d+/config$", "delay_ms": 1000,
                                         "times": 1})
    penv.reset_calls()
    code, _out, err = penv.run("apply", capsys=capsys)
    assert code == 0, err
    vmid = next(g["vmid"] for g in penv.lxc() if g["name"] == "pve-monitoring")
    assert penv.config(vmid)["memory"] == 5120
    assert penv.calls()["PUT /nodes/{node}/lxc/{vmid}/config"] == 2
    assert penv.run("plan", "--detailed-exitcode", capsys=capsys)[0] == 0


def test_change_that_needs_a_restart_is_reported(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.update(containers=d["containers"][:1]))
    assert penv.run("apply", capsys=capsys)[0] == 0
    # PVE lets only root@pam itself (not a token) change features other than nesting
    penv.env.update(PVEGUARD_PVE_TOKEN="", PVEGUARD_PVE_USER="root@pam", PVEGUARD_PVE_PASSWORD=penv.sim.password)
    penv.edit(lambda d: d["containers"][0].update(features={"nesting": True, "keyctl": True}))
    penv.edit(lambda d: d["containers"][0]["resources"].update(memory="6G"))
    code, out, _ = penv.run("plan", capsys=capsys)
    assert "features: nesting=1 -> keyctl=1,nesting=1  [after restart]" in out
    assert "memory: 4096 -> 6144\n" in out
    code, out, err = penv.run("apply", "--json", capsys=capsys)
    assert code == 0, err
    import json

    result = json.loads(out)["result"]
    assert result["restart_needed"] == {"pve-monitoring": ["features"]}
    [g] = penv.lxc()
    _status, _r, body = penv.sim.api("GET", f"/nodes/{g['node']}/lxc/{g['vmid']}/pending")
    pending = {p["key"]: p for p in body["data"]}
    assert pending["features"].get("pending") == "keyctl=1,nesting=1" and "pending" not in pending["memory"]


def test_push_pull_and_exec_through_pct(penv: Env, tmp_path: Path) -> None:
    from pveguard.backends import connect
    from pveguard.strategy.models import Strategy

    from .test_exec_pvesim import fake_ssh

    sim_env = penv.sim.env()
    bindir = fake_ssh(tmp_path, penv)
    env = {**penv.env, "PATH": f"{bindir}{os.pathsep}{sim_env['PATH']}", "PVESIM_INFO": sim_env["PVESIM_INFO"]}
    [vmid] = penv.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "status": "running"})
    backend = connect(Strategy(), env)
    old_path = os.environ["PATH"]
    os.environ.update(PATH=env["PATH"], PVESIM_INFO=env["PVESIM_INFO"])
    try:
        guest = next(g for g in backend.list_guests() if g.vmid == vmid)
        src = tmp_path / "motd"
        src.write_text("hello from pveguard\n")
        backend.push(guest, str(src), "/etc/motd", 0o600)
        back = tmp_path / "back"
        backend.pull(guest, "/etc/motd", str(back))
        assert back.read_text() == "hello from pveguard\n"
        r = backend.exec(guest, ["cat", "/etc/motd"])
        assert (r.returncode, r.stdout) == (0, "hello from pveguard\n")
        with pytest.raises(BackendError, match="copying CT"):
            backend.pull(guest, "/no/such/file", str(tmp_path / "x"))
    finally:
        os.environ["PATH"] = old_path
        os.environ.pop("PVESIM_INFO", None)


def test_secrets_never_in_output_or_ledger(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    secret = penv.sim.token_value
    outputs = [penv.run(*argv, capsys=capsys) for argv in (["-v", "apply"], ["plan", "--json"], ["status"],
                                                           ["status", "--json"], ["audit-log", "show", "--json"])]
    penv.env.update(PVEGUARD_PVE_TOKEN="", PVEGUARD_PVE_USER="root@pam", PVEGUARD_PVE_PASSWORD=penv.sim.password)
    outputs.append(penv.run("-v", "status", capsys=capsys))
    penv.env["PVEGUARD_PVE_HOST"] = "127.0.0.1:9"
    outputs.append(penv.run("-v", "status", capsys=capsys))
    assert outputs[0][0] == 0 and outputs[-2][0] == 0 and outputs[-1][0] == 1
    for _code, out, err in outputs:
        assert secret not in out + err and penv.sim.password not in out + err
    for f in (penv.dir / "state").iterdir():  # the database, its WAL, anything else kept there
        data = f.read_bytes()
        assert secret.encode() not in data and penv.sim.password.encode() not in data, f


def test_detailed_exitcode_keeps_2_for_changes_only(penv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    penv.strategy.write_text("containers: [{name: BAD NAME}]\n")
    assert penv.run("plan", capsys=capsys)[0] == 2  # a strategy error is a usage error...
    code, _out, err = penv.run("plan", "--detailed-exitcode", capsys=capsys)
    assert code == 1 and "BAD NAME" in err  # ...but 2 would read as "changes pending"


def test_soft_limits_are_refused_on_proxmox_before_anything_changes(penv: Env,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    penv.edit(lambda d: d.setdefault("resources", {}).update(hard_limits=False))
    penv.reset_calls()
    for verb in ("plan", "apply"):
        code, _out, err = penv.run(verb, capsys=capsys)
        assert code == 2, err
        assert "resources.hard_limits: false cannot be met on Proxmox VE" in err
        assert str(penv.strategy) in err and "set resources.hard_limits: true" in err
    assert penv.lxc() == []


def test_backup_volume_is_a_mount_point_that_grows_and_never_shrinks(penv: Env,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def one(size: str) -> Any:
        def fn(d: dict[str, Any]) -> None:
            c = next(c for c in d["containers"] if c["name"] == "pve-backup-manager")
            c["backup_volume"] = {"size": size, "mountpoint": "/srv/backup"}
            d["containers"] = [c]
        return fn

    penv.edit(one("8G"))
    penv.edit(lambda d: d["containers"][0].pop("backup_volume"))
    assert penv.run("apply", capsys=capsys)[0] == 0  # running, without a data volume
    penv.edit(one("8G"))
    code, out, err = penv.run("plan", capsys=capsys)
    assert "mp0: (unset) -> mp=/srv/backup,size=8G,backup=1" in out, out
    code, out, err = penv.run("apply", "--json", capsys=capsys)
    assert code == 0, err
    # PVE hot-plugs a new mount point into the running container: nothing waits for a restart
    assert json.loads(out)["result"]["restart_needed"] == {}
    [g] = penv.lxc()
    mp0 = penv.config(g["vmid"])["mp0"]
    # PVE allocated a volume for `STORAGE:8` and keeps mp= and backup=1 as sent
    assert mp0.startswith(f"local-lvm:vm-{g['vmid']}-disk-") and ",mp=/srv/backup" in mp0
    assert "backup=1" in mp0 and "size=8G" in mp0
    assert penv.json("plan", capsys=capsys)["changes"] is False  # converged

    penv.edit(one("12G"))
    code, out, _ = penv.run("plan", capsys=capsys)
    assert "mp0: mp=/srv/backup,size=8G,backup=1 -> mp=/srv/backup,size=12G,backup=1" in out
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert "size=12G" in penv.config(g["vmid"])["mp0"]
    assert penv.config(g["vmid"])["mp0"].split(",")[0] == mp0.split(",")[0]  # the same volume, grown

    penv.edit(one("4G"))
    plan = penv.json("plan", capsys=capsys)
    [a] = plan["actions"]
    assert a["action"] == "unchanged" and "only grows" in a["notes"][0]
    assert penv.run("apply", capsys=capsys)[0] == 0
    assert "size=12G" in penv.config(g["vmid"])["mp0"]

    # leaving the strategy: the delete sees the data volume (final backup, typed name)
    penv.edit(lambda d: d.update(containers=[]))
    code, out, _ = penv.run("plan", "--prune", capsys=capsys)
    assert "data volumes destroyed with it: mp0" in out and "vzdump leaves out" not in out
