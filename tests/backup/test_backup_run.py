"""`pveguard backup run [--due]` end to end on plain LXC: host-config (restic), a container archive
of a backend-made container with prune, verification, offsite copy; then nothing is due."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.backends.base import GuestSpec, NetSpec, marker_line
from pveguard.strategy.defaults import render
from tests.lxc.conftest import TEMPLATE_CACHE, lxc_env, lxcfs  # noqa: F401  (fixtures)
from tests.provision.conftest import Env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed"),
]
FAR = "2199-01-01"  # a schedule whose next run is far away: after the first run nothing is due


INSTANCE = "1a51a51a51a5"  # the strategy pins it; the container carries its marker

def test_run_then_nothing_due(lxc_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    b = lxc_env.backend
    br = lxc_env.bridge("r")
    g = b.create(GuestSpec(name="pgt-run", role="test", cores=1, memory_mib=256, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=br, ip="10.250.50.2/24"), tags=["pveguard"],
                           description=marker_line(INSTANCE)))  # this installation's  # fmt: skip
    b.start(g)
    # The state dir holds the restore test's throwaway containers: as with the lxcpath, keep it off
    # pytest's 0700 basetemp so an unprivileged container's mapped root can reach its rootfs.
    state = lxc_env.root / "state"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    doc = yaml.safe_load(render())
    doc["backup"]["host_config"].update(paths=[str(etc), str(tmp_path / "absent")], schedule=FAR)
    doc["backup"]["containers"].update(schedule=FAR, keep={"last": 1})
    doc["backup"]["verification"].update(schedule=FAR, restic_read_data_subset="100%")
    doc["backup"]["offsite"] = {"type": "directory", "target": str(tmp_path / "nas"), "schedule": FAR}
    doc["target"] = {"backend": "lxc", "lxc": {"lxcpath": str(b.lxcpath), "disk_dir": str(b.disk_dir),
                                               "template_cache": str(TEMPLATE_CACHE)}}  # fmt: skip
    doc["target"]["instance"] = INSTANCE
    (tmp_path / "strategy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = Env(None, tmp_path, {"PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"),
                               "PVEGUARD_STATE_DIR": str(state)})  # fmt: skip

    code, out, err = env.run("backup", "run", "--due", "--json", capsys=capsys)
    assert code == 0, out + err
    steps = {s["step"]: s for s in json.loads(out)["steps"]}
    assert steps["host-config"]["status"] == "done" and str(tmp_path / "absent") in steps["host-config"]["detail"]
    ct = steps[f"container {g.vmid} (pgt-run)"]
    assert ct["status"] == "done" and f"vzdump-lxc-{g.vmid}-" in ct["detail"]
    verification = steps["verification"]
    assert verification["status"] == "done" and "1 of 1 archive(s) ok" in verification["detail"]
    assert f"restore test of vzdump-lxc-{g.vmid}-" in verification["detail"]  # strategy: restore_test on
    assert steps["offsite"]["status"] == "done"
    dump = state / "dump"
    archives = sorted(p.name for p in dump.glob("vzdump-lxc-*.tar.zst"))
    assert len(archives) == 1 and (tmp_path / "nas" / archives[0]).exists()
    assert (dump / archives[0]).with_name(archives[0] + ".notes").read_text() == "pgt-run (pveguard)\n"

    # status on plain LXC: the archive, its age, the verification and offsite times
    code, out, err = env.run("backup", "status", "--json", capsys=capsys)
    assert code == 0, out + err
    (row,) = json.loads(out)
    assert row["guest"] == f"lxc/{g.vmid}" and row["archives"] == 1 and row["compliant"]
    assert row["last_verified"] and row["offsite_synced"] and 0 <= row["age_seconds"] < 600

    # Everything ran just now and the schedules point far ahead: nothing is due.
    code, out, err = env.run("backup", "run", "--due", "--json", capsys=capsys)
    assert code == 0, err
    assert {s["status"] for s in json.loads(out)["steps"]} == {"skipped"}

    # Without --due everything runs again; keep-last=1 leaves one archive (the new one).
    import time

    time.sleep(1)
    code, out, err = env.run("backup", "run", "--json", capsys=capsys)
    assert code == 0, err
    now_archives = sorted(p.name for p in dump.glob("vzdump-lxc-*.tar.zst"))
    assert len(now_archives) == 1 and now_archives != archives
    code, out, _ = env.run("audit-log", "show", "--json", capsys=capsys)
    actions = [e["action"] for e in json.loads(out)]
    assert actions.count("backup.host-config.run") == 2 and "backup.archives.dump" in actions

    # A corrupted archive makes the next verification fail and name it; the other steps still run.
    bad = dump / now_archives[0]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    os.unlink(state / "backup-verify.json")  # make verification due again
    code, out, _ = env.run("backup", "run", "--due", "--json", capsys=capsys)
    assert code == 1
    steps = {s["step"]: s for s in json.loads(out)["steps"]}
    assert steps["verification"]["status"] == "failed" and now_archives[0] in steps["verification"]["detail"]
    # `backup verify` on its own says the same, exit 1
    code, _out, err = env.run("backup", "verify", capsys=capsys)
    assert code == 1 and now_archives[0] in err
    b.stop(g)
    b.destroy(g)
    assert not list((state / "restore-test").iterdir())  # throwaway containers are gone
