"""Resource exhaustion against pvesim: a sustained memory alert of the monitor leads `recover --once` to
identify (ps inside), scale one step live with a receipt in the ledger, wait for the monitor before the
next step, and -- capped -- migrate in restart mode to the node with the most headroom; on a single node
it does not migrate and says why. `scale --revert` / manual `scale`, and `rca` with its errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pveguard.security.ledger import Ledger
from pveguard.store import Store
from tests.provision.conftest import small
from tests.provision.test_exec_pvesim import fake_ssh

from .conftest import Env, make_env

pytest.importorskip("pvesim.testing")

FAST = {"vzcreate": 0.2, "vzstart": 0.1, "vzstop": 0.1, "vzshutdown": 0.1, "vzdestroy": 0.1, "download": 0.1,
        "vzmigrate": 0.2}
MIB = 1 << 20
PS = ("    1  9000  0.0 systemd /sbin/init\n"
      "  412 240000 3.0 memhog /usr/local/bin/memhog --fill 240M\n"
      "  300  4000  0.0 sshd sshd: /usr/sbin/sshd -D\n"
      "  500   100  0.0 evil evil <script>alert(1)</script>\n")


def build(pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes: int,
          scale_max: float = 2.0, node: str | None = None) -> Env:
    sim = pvesim_factory(nodes=nodes, task_seconds=FAST)
    e = make_env(sim, tmp_path)
    sim_env = sim.env()  # exec inside goes `ssh root@NODE pct exec ...`: a fake ssh runs the sim's pct
    e.env.update(PATH=f"{fake_ssh(tmp_path, e)}{os.pathsep}{sim_env['PATH']}", PVESIM_INFO=sim_env["PVESIM_INFO"])

    def edit(doc: dict[str, Any]) -> None:
        hot = small("app-hot")
        if node:
            hot["node"] = node
        doc["containers"] = [hot, small("app-calm")]
        doc["monitoring"].update(sustain="1s", poll_interval="10s")
        doc["emergency"]["resource_exhaustion"].update(scale_step=0.25, scale_max=scale_max)
    e.edit(edit)
    code, out, err = e.run("apply", "--yes", capsys=capsys)
    assert code == 0, out + err
    return e


def guest(env: Env, name: str) -> dict[str, Any]:
    return next(g for g in env.lxc() if g["name"] == name)


def hog(env: Env, name: str, used_mib: int) -> None:
    """The container's memory in use, as PVE reports it (the sim's usage override), and its ps output."""
    vmid = guest(env, name)["vmid"]
    env.sim.control("POST", f"/guests/{vmid}", {"mem": used_mib * MIB})
    env.sim.control("POST", "/pct/scripts", {"vmid": vmid, "match": "^ps -eo", "stdout": PS})


def sustained(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Two monitor polls `sustain` apart: the memory alert is firing."""
    for i in range(2):
        code, out, err = env.run("monitor", "--once", "--json", capsys=capsys)
        assert code == 0, out + err
        if i == 0:
            time.sleep(1.1)
    doc = json.loads(out)
    assert any(a["rule"] == "memory" and a["state"] == "firing" for a in doc["alerts"]), doc["alerts"]


def recover(env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code, out, err = env.run("recover", "--once", "--json", capsys=capsys)
    assert "Traceback" not in err and out, err
    return code, json.loads(out)


def entries(env: Env, prefix: str) -> list[Any]:
    with Store(env.dir / "state") as store:
        return [e for e in Ledger(store).entries() if e.action.startswith(prefix)]


def test_a_sustained_memory_alert_scales_live_with_a_receipt_then_waits(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = build(pvesim_factory, tmp_path, capsys, nodes=1)
    code, doc = recover(env, capsys)
    assert code == 0 and doc["exhaustion"] == []  # no alert: nothing to do
    hog(env, "app-hot", 240)  # 240 of 256 MiB: 94 %
    sustained(env, capsys)
    code, doc = recover(env, capsys)
    assert code == 0, doc
    [h] = doc["exhaustion"]
    assert (h["name"], h["rule"], h["resource"], h["action"]) == ("app-hot", "memory", "memory", "scaled"), h
    assert h["scale"]["before"]["memory_mib"] == 256 and h["scale"]["after"]["memory_mib"] == 320
    assert h["scale"]["live"] is True and h["scale"]["pending"] == []
    # identify: the top process from ps inside, and the container's share of the node
    assert h["top"][0]["comm"] == "memhog" and h["top_source"] == "ps"
    assert 0 < h["share"]["memory"] < 100
    vmid = guest(env, "app-hot")["vmid"]
    cfg = env.config(vmid)
    assert int(cfg["memory"]) == 320
    assert guest(env, "app-hot")["maxmem"] == 320 * MIB  # live: the running CT has the new limit now
    intent, receipt = entries(env, "recover.scale")
    assert intent.action == "recover.scale.intent" and receipt.details["result"] == "ok"
    assert receipt.target == f"ct/{vmid}" and receipt.details["after"]["memory_mib"] == 320
    assert entries(env, "recover.exhaustion")[0].details["top"][0]["comm"] == "memhog"
    # the rca report of the event was written
    assert h["report"] and Path(h["report"]).read_text().startswith("# Root cause analysis: app-hot")
    # the alert is still firing in the store, but the monitor has not looked again: no second step yet
    code, doc = recover(env, capsys)
    [h] = doc["exhaustion"]
    assert h["action"] == "waiting", h
    assert int(env.config(vmid)["memory"]) == 320
    # the memory relief resolves the alert at the next poll (240/320 = 75 % < 85 - 5)
    code, out, err = env.run("monitor", "--once", "--json", capsys=capsys)
    assert not [a for a in json.loads(out)["alerts"] if a["rule"] == "memory" and a["state"] == "firing"]

    # revert: back to the strategy's size, with its own receipt
    code, out, err = env.run("scale", "app-hot", "--revert", "--json", capsys=capsys)
    assert code == 0, out + err
    r = json.loads(out)
    assert (r["before"]["memory_mib"], r["after"]["memory_mib"]) == (320, 256)
    assert (r["changed"], r["live"]) == (["memory"], True)
    assert int(env.config(vmid)["memory"]) == 256
    assert entries(env, "recover.revert")[-1].details["result"] == "ok"
    # manual: cores and a disk that only grows
    code, out, err = env.run("scale", "app-hot", "--cores", "2", "--disk", "3G", "--json", capsys=capsys)
    assert code == 0, out + err
    assert json.loads(out)["after"] == {"memory_mib": 256, "cores": 2, "disk_gib": 3}
    cfg = env.config(vmid)
    assert int(cfg["cores"]) == 2 and "size=3G" in cfg["rootfs"]
    code, out, err = env.run("scale", "app-hot", "--disk", "2G", capsys=capsys)
    assert code == 2 and "cannot shrink" in err
    code, out, err = env.run("scale", "app-hot", "--revert", capsys=capsys)
    assert code == 0 and "cores 2 -> 1 cores (live)" in out and "disks cannot shrink" in err, out + err
    code, out, err = env.run("scale", "nope", "--revert", capsys=capsys)
    assert code == 2 and "no container 'nope' in the strategy" in err and "Traceback" not in err


def test_capped_on_a_cluster_migrates_to_the_node_with_the_most_headroom(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = build(pvesim_factory, tmp_path, capsys, nodes=3, scale_max=1.0, node="pve1")
    assert guest(env, "app-hot")["node"] == "pve1"
    env.sim.control("POST", "/nodes/pve2", {"maxmem": 256 << 30})  # the most headroom
    env.sim.control("POST", "/nodes/pve3", {"maxmem": 96 << 30})
    hog(env, "app-hot", 250)
    sustained(env, capsys)
    code, doc = recover(env, capsys)
    assert code == 0, doc
    [h] = doc["exhaustion"]
    assert (h["action"], h["migrated_to"]) == ("migrated", "pve2"), h
    assert "memory is at its cap (256 MiB, scale_max 1 x 256)" in h["reason"]
    assert "pve2 has the most free memory" in h["reason"]
    g = guest(env, "app-hot")
    assert (g["node"], g["status"]) == ("pve2", "running")  # restart mode: running again on the target
    assert "lock" not in env.config(g["vmid"])
    intent, result = entries(env, "recover.migrate")
    assert (intent.details["source"], intent.details["to"], intent.details["mode"]) == ("pve1", "pve2", "restart")
    assert result.details["result"] == "ok"
    assert not entries(env, "recover.scale")  # capped: nothing was scaled


def test_capped_on_a_single_node_does_not_migrate_and_says_why(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = build(pvesim_factory, tmp_path, capsys, nodes=1, scale_max=1.0)
    hog(env, "app-hot", 250)
    sustained(env, capsys)
    code, doc = recover(env, capsys)
    [h] = doc["exhaustion"]
    assert code == 0 and h["action"] == "capped" and h["migrated_to"] is None
    assert h["reason"].endswith("no migration: a single node: there is nowhere to migrate to"), h
    assert not entries(env, "recover.migrate") and not entries(env, "recover.scale")
    assert guest(env, "app-hot")["node"] == "pve1"


def test_rca_reports_and_its_errors(pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = build(pvesim_factory, tmp_path, capsys, nodes=1)
    code, out, err = env.run("rca", "app-hot", capsys=capsys)
    assert code == 1 and "no metrics of app-hot" in err and "pveguard monitor" in err, err
    code, out, err = env.run("rca", "ghost", capsys=capsys)
    assert code == 2 and "no container 'ghost' in the strategy" in err
    code, out, err = env.run("rca", "app-hot", "--format", "pdf", capsys=capsys)
    assert code == 2 and "unknown format 'pdf'" in err
    hog(env, "app-hot", 240)
    vmid = guest(env, "app-hot")["vmid"]
    env.sim.control("POST", f"/guests/{vmid}/files", {
        "path": "/var/log/dpkg.log",
        "content": f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} install memhog:amd64 <none> 1.0\n"
                   "2001-01-01 00:00:00 install ancient:amd64 <none> 0.1\n"})
    sustained(env, capsys)
    code, doc = recover(env, capsys)
    assert code == 0 and doc["exhaustion"][0]["action"] == "scaled"
    code, out, err = env.run("rca", "app-hot", "--since", "10m", "--format", "json", capsys=capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["container"]["name"] == "app-hot" and r["metrics"]["memory"]["max"] >= 85
    assert r["top"]["processes"][0]["comm"] == "memhog"
    assert [a["what"] for a in r["alerts"] if a["what"].startswith("memory")]
    assert "recover.scale" in [e["action"] for e in r["ledger"]]
    assert "memory_mib 256 -> 320 (ok)" in [a["detail"] for a in r["alerts"] if a["what"] == "recover.scale"]
    # the package installed in the window, not the one from 2001
    assert [(p["action"], p["package"]) for p in r["packages"]["changes"]] == [("install", "memhog:amd64")]
    assert r["size"]["now"]["memory_mib"] == 320 and r["size"]["strategy"]["memory_mib"] == 256
    html = tmp_path / "r.html"
    code, out, err = env.run("rca", "app-hot", "--format", "html", "--output", str(html), capsys=capsys)
    assert code == 0, err
    text = html.read_text()
    assert "<h1>Root cause analysis: app-hot" in text and "memhog" in text
    # what comes from inside the container is escaped
    assert "<script>" not in text and "evil &lt;script&gt;alert(1)&lt;/script&gt;" in text
    code, out, err = env.run("rca", "app-hot", capsys=capsys)
    assert code == 0 and "| 412 | 234.4 | 3.0 | /usr/local/bin/memhog --fill 240M |" in out, out
    assert "| evil \\<script>alert(1)\\</script> |" in out and "memory 256 -> 320 MiB (live)" in out


def test_maintenance_stale_alerts_and_other_guests_are_left_alone(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = build(pvesim_factory, tmp_path, capsys, nodes=1)
    hog(env, "app-hot", 240)
    # a guest that is not this installation's, as busy: the monitor alerts on it, recover never touches it
    [stranger] = env.sim.control("POST", "/guests", {"count": 1, "type": "lxc", "status": "running"})
    env.sim.control("POST", f"/guests/{stranger}", {"mem": 10 ** 12})
    sustained(env, capsys)
    firing = {a["target"] for a in env.json("alerts", capsys=capsys)["alerts"]
              if a["rule"] == "memory" and a["state"] == "firing"}
    assert firing == {f"lxc/{guest(env, 'app-hot')['vmid']}", f"lxc/{stranger}"}
    code, _out, err = env.run("maintenance", "app-hot", "on", "--reason", "load test", capsys=capsys)
    assert code == 0, err
    code, doc = recover(env, capsys)
    assert [(h["name"], h["action"], h["reason"]) for h in doc["exhaustion"]] == \
        [("app-hot", "skipped", "in maintenance (load test)")]
    assert env.run("maintenance", "app-hot", "off", capsys=capsys)[0] == 0
    # the monitor stopped polling: its alerts are stale, nothing is done on them
    with Store(env.dir / "state") as store, store.transaction() as conn:
        row = conn.execute("SELECT value FROM monitor_meta WHERE key = 'last_counters'").fetchone()
        data = json.loads(row["value"])
        data["ts"] -= 3600
        conn.execute("UPDATE monitor_meta SET value = ? WHERE key = 'last_counters'", (json.dumps(data),))
    code, doc = recover(env, capsys)
    [h] = doc["exhaustion"]
    assert h["action"] == "skipped" and h["reason"].startswith("the monitor's alerts are stale (last poll 36"), h
    assert not entries(env, "recover.scale") and not entries(env, "recover.exhaustion")
    assert int(env.config(guest(env, "app-hot")["vmid"])["memory"]) == 256


def test_serve_in_a_container_leaves_its_own_container_alone(
        pvesim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PVEGUARD_SELF_CONTAINER (the env file apply pushes into serve.container): no scaling of itself."""
    env = build(pvesim_factory, tmp_path, capsys, nodes=1)
    hog(env, "app-hot", 240)
    sustained(env, capsys)
    env.env["PVEGUARD_SELF_CONTAINER"] = "app-hot"
    code, doc = recover(env, capsys)
    [h] = doc["exhaustion"]
    assert (h["name"], h["action"]) == ("app-hot", "skipped") and "never acts on its own container" in h["reason"]
    assert int(env.config(guest(env, "app-hot")["vmid"])["memory"]) == 256
    assert not entries(env, "recover.scale")
    del env.env["PVEGUARD_SELF_CONTAINER"]  # the same alert, seen from outside: scaled
    code, doc = recover(env, capsys)
    assert code == 0, doc
    assert doc["exhaustion"][0]["action"] == "scaled", doc
