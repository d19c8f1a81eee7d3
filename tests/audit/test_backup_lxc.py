"""Backup findings in `pveguard audit` on plain LXC (real containers, pveguard's own archives):
no archive -> `backup run` -> compliant -> verification marker gone -> `backup verify` -> compliant;
judged two days later -> late.

Needs root and the LXC tools (skips with the reason otherwise) and restic.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pveguard.backends.base import GuestSpec, NetSpec, marker_line
from pveguard.strategy.defaults import render
from tests.lxc.conftest import TEMPLATE_CACHE, lxc_env, lxcfs  # noqa: F401  (fixtures)
from tests.provision.conftest import Env

from .test_json_shape import assert_conforms

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed"),
]


def _backup(env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], dict[str, Any]]:
    code, out, err = env.run("audit", "--json", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert_conforms(doc)
    return {f["id"]: f["severity"] for f in doc["findings"] if f["category"] == "backup"}, doc


INSTANCE = "1a51a51a51a5"  # the strategy pins it; the container carries its marker

def test_audit_backup_findings_on_plain_lxc(lxc_env: Any, tmp_path: Path,  # noqa: F811
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("a")
    name = f"{lxc_env.prefix}-bk"
    g = b.create(GuestSpec(name=name, role="test", cores=1, memory_mib=256, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=br, ip="10.250.51.2/24"), tags=["pveguard"],
                           description=marker_line(INSTANCE)))  # this installation's  # fmt: skip
    b.start(g)
    doc = yaml.safe_load(render())
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("127.0.0.1 localhost\n")
    doc["backup"]["host_config"].update(paths=[str(tmp_path / "etc")])
    doc["backup"]["verification"].update(restore_test=False)
    doc["target"] = {"backend": "lxc", "lxc": {"lxcpath": str(b.lxcpath), "disk_dir": str(b.disk_dir),
                                               "template_cache": str(TEMPLATE_CACHE)}}  # fmt: skip
    doc["target"]["instance"] = INSTANCE
    (tmp_path / "strategy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = Env(None, tmp_path, {"PVEGUARD_STRATEGY": str(tmp_path / "strategy.yaml"),
                               "PVEGUARD_STATE_DIR": str(tmp_path / "state")})  # fmt: skip
    try:
        # pveguard backs up every managed container itself: never "no job", but no archive yet
        found, report = _backup(env, capsys)
        assert found == {f"backup-no-backup:{name}": "high"}
        assert report["backup"]["backend"] == "lxc" and report["backup"]["source"] == str(tmp_path / "state/dump")

        code, out, err = env.run("backup", "run", "--json", capsys=capsys)
        assert code == 0, out + err
        found, report = _backup(env, capsys)
        assert found == {}
        (row,) = report["backup"]["items"]
        assert row["compliant"] and row["archives"] == 1 and row["last_verified"]

        # verification never recorded -> low finding; `backup verify` (the finding's fix) clears it
        (tmp_path / "state/backup-verify.json").unlink()
        found, report = _backup(env, capsys)
        assert found == {f"backup-verify-overdue:{name}": "low"}
        fix = next(f["fix"] for f in report["findings"] if f["id"].startswith("backup-verify-overdue"))
        assert fix == "pveguard backup verify"
        code, out, err = env.run("backup", "verify", capsys=capsys)
        assert code == 0, out + err
        assert _backup(env, capsys)[0] == {}

        # two days on, the daily archive is late (and the weekly verification may be due too)
        from pveguard.audit import assemble, inventory, sources
        from pveguard.context import AppContext

        for k, v in env.env.items():
            monkeypatch.setenv(k, v)
        ctx = AppContext.from_options(None, None)
        later = datetime.now(UTC) + timedelta(days=2)
        ext = sources.external(ctx, ctx.strategy, Path("/"), now=later)
        late = assemble.build(inventory.collect(Path("/")), ctx.strategy, ext, now=later)
        ctx.close()
        got = {f["id"]: f["severity"] for f in late["findings"] if f["category"] == "backup"}
        assert got.get(f"backup-late:{name}") == "medium"
        assert set(got) <= {f"backup-late:{name}", f"backup-verify-overdue:{name}"}
    finally:
        b.stop(g)
        b.destroy(g)
