"""Control API (/_sim), usage model through the API, clock, faults, CLI entry point and --state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proxmoxer.core import ResourceException
from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle, running, schema_available

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def _res(sim: SimHandle) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["id"]: r for r in sim.api("GET", "/cluster/resources")[2]["data"]}


def test_resources_fields_and_usage_moves(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=20, seed=5, running_share=0.5)
    before = _res(sim)
    kinds = {r["type"] for r in before.values()}
    # PVE 9.1 lists the localnetwork zone as type 'network' instead of 'sdn'
    assert kinds == {"lxc", "qemu", "node", "storage", "sdn" if sim.sim.pve_major < 9 else "network"}
    guest_keys = {
        "id",
        "type",
        "vmid",
        "node",
        "status",
        "name",
        "template",
        "uptime",
        "maxcpu",
        "cpu",
        "maxmem",
        "mem",
        "maxdisk",
        "disk",
        "netin",
        "netout",
        "diskread",
        "diskwrite",
    }
    assert all(guest_keys <= set(r) for r in before.values() if r["type"] in ("lxc", "qemu"))
    assert {"storage/pve1/local", "storage/pve2/local-lvm", "node/pve3"} <= set(before)
    stopped = [r for r in before.values() if r.get("status") == "stopped"]
    assert stopped and all(r[k] == 0 for r in stopped for k in ("cpu", "mem", "disk", "netin", "uptime"))
    sim.control("POST", "/clock", {"advance": 600})
    after = _res(sim)
    running_ = [k for k, r in before.items() if r.get("status") == "running"]
    assert running_
    for k in running_:
        for c in ("netin", "netout", "diskread", "diskwrite", "uptime"):
            assert after[k][c] > before[k][c], (k, c)
    assert any(after[k]["cpu"] != before[k]["cpu"] for k in running_)


def test_guest_overrides_and_status(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=3, seed=1, running_share=1.0, qemu_share=0.0)
    sim.control("POST", "/guests/100", {"cpu": 0.95, "mem": 123456})
    r = _res(sim)["lxc/100"]
    assert (r["cpu"], r["mem"]) == (0.95, 123456)
    sim.control("POST", "/guests/100", {"status": "stopped"})
    r = _res(sim)["lxc/100"]
    assert (r["status"], r["cpu"], r["mem"]) == ("stopped", 0, 0)
    cur = sim.api("GET", f"/nodes/{r['node']}/lxc/100/status/current")[2]["data"]
    assert cur["status"] == "stopped" and "pid" not in cur


def test_faults_times_delay_and_calls(pvesim: SimHandle) -> None:
    px = pvesim.proxmoxer()
    pvesim.control("DELETE", "/calls")
    pvesim.control(
        "POST",
        "/faults",
        {
            "method": "GET",
            "path": "^/cluster/resources$",
            "status": 500,
            "message": "simulated outage",
            "times": 2,
        },
    )
    for _ in range(2):
        with pytest.raises(ResourceException) as ei:
            px.cluster.resources.get()
        assert (ei.value.status_code, ei.value.content) == (500, "simulated outage")
    assert px.cluster.resources.get()  # times used up
    pvesim.control("POST", "/faults", {"path": "^/version$", "delay_ms": 300, "times": 1})
    t0 = time.monotonic()
    px.version.get()
    assert time.monotonic() - t0 >= 0.3
    calls = pvesim.control("GET", "/calls")
    assert calls["calls"]["GET /cluster/resources"] == 3 and calls["calls"]["GET /version"] == 1


def test_task_faults_and_locks(pvesim: SimHandle) -> None:
    px = pvesim.proxmoxer()
    pvesim.control("POST", "/task-faults", {"type": "vzcreate", "error": "no space left on device", "times": 1})
    up = px.nodes("pve1").lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4")
    st = Tasks.blocking_status(px, up, polling_interval=0.05)
    assert st["exitstatus"] == "unable to create CT 300 - no space left on device"
    assert all(r.get("vmid") != 300 for r in px.cluster.resources.get(type="vm"))  # config removed
    up = px.nodes("pve1").lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4")
    assert Tasks.blocking_status(px, up, polling_interval=0.05)["exitstatus"] == "OK"
    pvesim.control("POST", "/locks/300", {"lock": "backup"})
    assert px.cluster.resources.get(type="vm")[0]["lock"] == "backup"
    with pytest.raises(ResourceException) as ei:
        px.nodes("pve1").lxc(300).config.put(memory=1024)
    assert ei.value.content == "CT is locked (backup)"
    pvesim.control("DELETE", "/locks/300")
    px.nodes("pve1").lxc(300).config.put(memory=1024)


def test_clock_and_task_durations(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(task_seconds={"vzcreate": 3600})
    px = sim.proxmoxer()
    up = px.nodes("pve1").lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4")
    assert px.nodes("pve1").tasks(up).status.get()["status"] == "running"
    assert px.nodes("pve1").lxc(300).config.get()["lock"] == "create"
    sim.control("POST", "/clock", {"advance": 3600})
    st = px.nodes("pve1").tasks(up).status.get()
    assert (st["status"], st["exitstatus"]) == ("stopped", "OK")


def test_backup_and_prune_through_api(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=2, seed=1, qemu_share=0.0, task_seconds={"vzdump": 0})
    px = sim.proxmoxer()
    vols = []
    for _ in range(4):
        sim.control("POST", "/clock", {"advance": 86400})
        up = px.nodes("pve1").vzdump.post(
            vmid=100,
            storage="local",
            compress="zstd",
            **{"prune-backups": "keep-daily=2", "notes-template": "{{guestname}}"},
        )
        assert px.nodes("pve1").tasks(up).status.get()["exitstatus"] == "OK"
        vols = px.nodes("pve1").storage("local").content.get(content="backup", vmid=100)
    assert len(vols) == 2
    assert all(v["volid"].startswith("local:backup/vzdump-lxc-100-") and v["volid"].endswith(".tar.zst") for v in vols)
    assert {v["format"] for v in vols} == {"tar.zst"} and {v["notes"] for v in vols} == {"ct100"}
    # protect one, delete the other
    px.nodes("pve1").storage("local").content(vols[0]["volid"]).put(protected=1)
    with pytest.raises(ResourceException):
        px.nodes("pve1").storage("local").content(vols[0]["volid"]).delete()
    up = px.nodes("pve1").storage("local").content(vols[1]["volid"]).delete()
    Tasks.blocking_status(px, up, polling_interval=0.05)
    assert [v["volid"] for v in px.nodes("pve1").storage("local").content.get(content="backup")] == [vols[0]["volid"]]
    # not-backed-up follows backup jobs
    assert {g["vmid"] for g in px.cluster("backup-info")("not-backed-up").get()} == {100, 101}
    px.cluster.backup.post(id="nightly", schedule="mon..fri 22:00", vmid="100", storage="local")
    assert {g["vmid"] for g in px.cluster("backup-info")("not-backed-up").get()} == {101}
    with pytest.raises(ResourceException) as ei:
        px.cluster.backup.post(id="nightly", schedule="daily", all=1)
    assert ei.value.content == "Job 'nightly' already exists"


def test_firewall_digest_and_ha(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0)
    px = sim.proxmoxer()
    fw = px.nodes("pve1").lxc(100).firewall
    fw.rules.post(type="in", action="ACCEPT", dport="22", proto="tcp", enable=1)
    digest = fw.rules.get()[0]["digest"]
    fw.rules.post(type="in", action="DROP", enable=1, digest=digest)
    with pytest.raises(ResourceException) as ei:
        fw.rules.post(type="in", action="DROP", enable=1, digest=digest)
    assert ei.value.content.startswith("detected modified configuration")
    assert [r["pos"] for r in fw.rules.get()] == [0, 1]
    px.cluster.ha.resources.post(sid="ct:100")
    assert px.cluster.resources.get(type="vm")[0]["hastate"] == "started"
    with pytest.raises(ResourceException) as ei:
        px.nodes("pve1").lxc(100).delete()
    assert ei.value.content == "unable to remove CT 100 - used in HA resources and purge parameter not set."


@pytest.mark.skipif(not schema_available(), reason="PVE API schema not found")
def test_cli_prints_one_json_line_and_saves_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    cmd = [
        sys.executable,
        "-m",
        "pvesim",
        "--port",
        "0",
        "--no-tls",
        "--guests",
        "5",
        "--seed",
        "3",
        "--state",
        str(state),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) == {"url", "token", "username", "password", "fingerprint", "cafile", "pve_version"}
        from pvesim.schema import default_version
        from pvesim.versions import RELEASES

        assert info["pve_version"] == RELEASES[default_version()].version
        assert info["url"].startswith("http://127.0.0.1:") and info["token"].startswith("root@pam!pvesim=")
        import urllib.request

        req = urllib.request.Request(
            info["url"] + "/api2/json/cluster/resources?type=vm",
            headers={"Authorization": f"PVEAPIToken={info['token']}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.loads(r.read())["data"]) == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line on stdout
    saved = json.loads(state.read_text())
    assert len(saved["guests"]) == 5
    with running(guests=0, state=str(state), tls=False) as h:
        assert len(h.api("GET", "/cluster/resources", {"type": "vm"})[2]["data"]) == 5


def test_cli_reports_missing_schema(tmp_path: Path) -> None:
    env = {"PVESIM_SCHEMA": str(tmp_path / "nope.json"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "pvesim", "--port", "0"], capture_output=True, text=True, env=env, timeout=30
    )
    assert r.returncode == 2 and r.stdout == ""
    assert "API schema not found" in r.stderr and "PVESIM_SCHEMA" in r.stderr


def test_quorum_loss_blocks_writes_and_rrddata(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=2, seed=1, qemu_share=0.0, running_share=1.0)
    rows = sim.api("GET", "/nodes/pve1/lxc/100/rrddata", {"timeframe": "hour"})[2]["data"]
    assert len(rows) == 70 and rows[1]["time"] - rows[0]["time"] == 60
    assert {"cpu", "mem", "maxmem", "netin"} <= set(rows[-1])
    sim.control("POST", "/nodes/pve2", {"online": False})
    sim.control("POST", "/nodes/pve3", {"online": False})
    assert sim.api("PUT", "/nodes/pve1/lxc/100/config", {"memory": 1024})[:2] == (500, "cluster not ready - no quorum?")
    assert sim.api("GET", "/nodes/pve1/lxc/100/config")[0] == 200


def test_vzdump_without_prune_respects_limit(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0, task_seconds={"vzdump": 0})
    px = sim.proxmoxer()
    opts = {"vmid": 100, "storage": "local", "remove": 0, "prune-backups": "keep-last=1"}
    for expected in ("OK", "job errors"):
        sim.control("POST", "/clock", {"advance": 60})
        up = px.nodes("pve1").vzdump.post(**opts)
        assert px.nodes("pve1").tasks(up).status.get()["exitstatus"] == expected
    log = [line["t"] for line in px.nodes("pve1").tasks(up).log.get()]
    assert any("There is a max backup limit of 1 enforced" in t for t in log)


def test_control_bulk_guests_finish_files_and_save(pvesim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(task_seconds={"vzcreate": 3600})
    added = sim.control("POST", "/guests", {"count": 5, "type": "lxc", "node": "pve2", "status": "running"})
    assert added == [100, 101, 102, 103, 104]
    listed = sim.control("GET", "/guests")
    assert {(g["node"], g["status"], g["type"]) for g in listed} == {("pve2", "running", "lxc")}
    px = sim.proxmoxer()
    up = px.nodes("pve1").lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4")
    assert px.nodes("pve1").tasks(up).status.get()["status"] == "running"
    sim.control("POST", "/tasks/finish")
    assert px.nodes("pve1").tasks(up).status.get()["exitstatus"] == "OK"
    sim.control("POST", "/guests/100/files", {"path": "/etc/motd", "content": "hi\n"})
    assert sim.control("GET", "/guests/100/files") == {"/etc/motd": "aGkK"}
    path = tmp_path / "s.json"
    assert sim.control("POST", "/save", {"path": str(path)}) == {"saved": str(path)}
    assert {g["vmid"] for g in json.loads(path.read_text())["guests"]} == {100, 101, 102, 103, 104, 300}
    with pytest.raises(RuntimeError, match="404"):
        sim.control("GET", "/nope")


def test_snapshot_rollback_and_extractconfig(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(
        guests=1,
        seed=1,
        qemu_share=0.0,
        running_share=0.0,
        task_seconds={"vzsnapshot": 0, "vzrollback": 0, "vzdelsnapshot": 0, "vzdump": 0},
    )
    px = sim.proxmoxer()
    ct = px.nodes("pve1").lxc(100)
    ct.snapshot.post(snapname="before")
    ct.config.put(memory=2048, hostname="changed")
    assert ct.snapshot("before").config.get()["memory"] != 2048
    up = ct.snapshot("before").rollback.post()
    assert px.nodes("pve1").tasks(up).status.get()["exitstatus"] == "OK"
    cfg = ct.config.get()
    assert cfg["hostname"] == "ct100" and "lock" not in cfg
    ct.snapshot("before").delete()
    assert [s["name"] for s in ct.snapshot.get()] == ["current"]
    up = px.nodes("pve1").vzdump.post(vmid=100, storage="local")
    vol = px.nodes("pve1").storage("local").content.get(content="backup")[0]["volid"]
    text = px.nodes("pve1").vzdump.extractconfig.get(volume=vol)
    assert "hostname: ct100\n" in text and text.endswith("\n")


def test_prunebackups_dry_run_and_prune(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(guests=1, seed=1, qemu_share=0.0, task_seconds={"vzdump": 0})
    px = sim.proxmoxer()
    for _ in range(3):
        sim.control("POST", "/clock", {"advance": 86400})
        px.nodes("pve1").vzdump.post(vmid=100, storage="local")
    plan = px.nodes("pve1").storage("local").prunebackups.get(**{"prune-backups": "keep-last=1", "vmid": 100})
    assert [e["mark"] for e in plan] == ["keep", "remove", "remove"]  # newest first
    assert all(e["type"] == "lxc" and e["vmid"] == 100 for e in plan)
    up = px.nodes("pve1").storage("local").prunebackups.delete(**{"prune-backups": "keep-last=1", "vmid": 100})
    assert Tasks.blocking_status(px, up, polling_interval=0.05)["exitstatus"] == "OK"
    assert [v["volid"] for v in px.nodes("pve1").storage("local").content.get(content="backup")] == [plan[0]["volid"]]


def test_status_lag_shows_unknown_until_statd_reported(pvesim_factory) -> None:  # type: ignore[no-untyped-def]
    sim: SimHandle = pvesim_factory(status_lag=10, task_seconds={"vzcreate": 0})
    px = sim.proxmoxer()
    px.nodes("pve1").lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4")
    assert px.cluster.resources.get(type="vm")[0]["status"] == "unknown"
    assert px.nodes("pve1").lxc(300).status.current.get()["status"] == "stopped"  # the node itself knows
    sim.control("POST", "/clock", {"advance": 10})
    assert px.cluster.resources.get(type="vm")[0]["status"] == "stopped"


def test_untrusting_client_leaves_no_traceback(pvesim: SimHandle, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import ssl

    ctx = ssl.create_default_context()  # does not trust pvesim's self-signed certificate
    with socket.create_connection((pvesim.hostname, pvesim.port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname=pvesim.hostname)
    time.sleep(0.2)
    assert pvesim.api("GET", "/version")[0] == 200
    assert "Traceback" not in capsys.readouterr().err
