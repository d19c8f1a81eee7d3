"""Safe updates on real LXC (slow): an upgrade whose postinst fails is rolled back to the snapshot and the
container's service answers again.

The test builds a package `pgu-app` with dpkg-deb: version 1 ships a tiny TCP service (perl, port 8080,
enabled by its postinst); version 2 stops the service in its postinst and fails. Version 1 is installed
first (`apt-get install ./pgu-app_1.0_all.deb`), version 2 is offered by a file: apt repository inside
the container whose Release says `Suite: stable-security`, the container's only apt source (no network
needed). `pveguard update --json` must then see one pending *security* upgrade, snapshot the container
(a copy of its root image), run apt-get (exit 100), roll back (container stopped, image restored,
started), and find the service answering `pgu-app 1` again; a file written to the data volume (mp0)
after the snapshot survives the rollback (a host directory is not part of a snapshot).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import pveguard as run_pveguard

pytestmark = pytest.mark.slow

SERVICE = """[Unit]
Description=pgu-app test service

[Service]
ExecStart=/usr/bin/pgu-app

[Install]
WantedBy=multi-user.target
"""
SERVER = """#!/usr/bin/perl
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:8080", Listen => 5, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) { print $c "pgu-app VERSION\\n"; close $c; }
"""
POSTINST_OK = "#!/bin/sh\nset -e\nsystemctl daemon-reload\nsystemctl enable --now pgu-app.service\n"
POSTINST_FAIL = ("#!/bin/sh\nsystemctl stop pgu-app.service\n"
                 "echo written-by-2.0 > /srv/backup/after-snapshot\necho written-by-2.0 > /root/after-snapshot\n"
                 "echo 'pgu-app 2.0: postinst fails on purpose' >&2\nexit 1\n")


def build_deb(work: Path, version: str, postinst: str) -> Path:
    root = work / f"pgu-app-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: pgu-app\nVersion: {version}\nArchitecture: all\nMaintainer: pveguard tests <t@example.org>\n"
        f"Depends: perl-base\nDescription: pveguard update test service\n")
    (root / "DEBIAN/postinst").write_text(postinst)
    (root / "DEBIAN/postinst").chmod(0o755)
    (root / "usr/bin/pgu-app").write_text(SERVER.replace("VERSION", version))
    (root / "usr/bin/pgu-app").chmod(0o755)
    (root / "usr/lib/systemd/system/pgu-app.service").write_text(SERVICE)
    deb = work / f"pgu-app_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def packages_stanza(deb: Path) -> str:
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    data = deb.read_bytes()
    return (control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")


pveguard = partial(run_pveguard, timeout=1200)


def test_a_failing_postinst_is_rolled_back_and_the_service_answers_again(lxc_env: Any, tmp_path: Path) -> None:
    b = lxc_env.backend
    br = lxc_env.bridge("u")
    strategy = lxc_env.root / "strategy.yaml"
    doc: dict[str, Any] = {
        "version": 1,
        "network": {"bridge": br, "container_vlan": 31},
        "containers": [{"name": "pgu-up", "role": "test", "resources": {"cores": 1, "memory": "256M",
                                                                         "swap": "256M", "storage": "1G"},
                        "network": {"ip": "10.250.31.21/24"},
                        "backup_volume": {"size": "1G", "mountpoint": "/srv/backup"},
                        "health_checks": [{"type": "tcp", "port": 8080, "interval": "1s", "timeout": "2s"}]}],
        "updates": {"keep_snapshots": 1, "health_timeout": "20s"},
    }
    env = lxc_env.cli_env(doc)
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    [g] = b.list_guests()
    assert g.status == "running"

    v1 = build_deb(tmp_path, "1.0", POSTINST_OK)
    v2 = build_deb(tmp_path, "2.0", POSTINST_FAIL)
    b.push(g, str(v1), "/root/pgu-app_1.0_all.deb")
    assert b.exec(g, ["mkdir", "-p", "/srv/repo"]).ok
    b.push(g, str(v2), "/srv/repo/pgu-app_2.0_all.deb")
    index = packages_stanza(v2).encode()
    (tmp_path / "Packages").write_bytes(index)
    # apt reads an index only when the Release file lists it with its hash
    (tmp_path / "Release").write_text(
        "Origin: pgu-test\nLabel: pgu-test\nSuite: stable-security\nCodename: bookworm-security\n"
        f"Date: {formatdate(usegmt=True)}\nArchitectures: all amd64\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n")
    (tmp_path / "sources.list").write_text("deb [trusted=yes] file:/srv/repo ./\n")
    for name, where in (("Packages", "/srv/repo/Packages"), ("Release", "/srv/repo/Release"),
                        ("sources.list", "/etc/apt/sources.list")):
        b.push(g, str(tmp_path / name), where)
    r = b.exec(g, ["sh", "-c", "rm -f /etc/apt/sources.list.d/*; chmod -R a+rX /srv/repo; apt-get -q update "
                   "&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/pgu-app_1.0_all.deb"
                   " && dpkg-query -W -f='${Version}' pgu-app"], timeout=600)
    assert r.ok and r.stdout.strip().endswith("1.0"), r.stdout + r.stderr

    def answer() -> str:
        res = b.exec(g, ["timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080; cat <&3"])
        return res.stdout.strip() if res.ok else f"no answer: {res.stderr.strip()}"

    assert answer() == "pgu-app 1.0"
    code, out, err = pveguard(env, "update", "--dry-run", "--json")
    assert code == 0, out + err
    [o] = json.loads(out)["containers"]
    assert o["action"] == "would-update" and o["security_pending"] == 1, o
    assert [(p["name"], p["installed"], p["candidate"], p["security"]) for p in o["pending"]] == [
        ("pgu-app", "1.0", "2.0", True)]

    mp0 = Path(b.config.disk_dir) / str(g.vmid) / "mp0"
    assert mp0.is_dir() and not (mp0 / "after-snapshot").exists()
    code, out, err = pveguard(env, "update", "--security-only", "--json")
    assert code == 1, out + err  # the update failed (and was rolled back)
    [o] = json.loads(out)["containers"]
    assert o["action"] == "rolled-back", o
    assert o["reason"].startswith("apt-get failed (exit 100): dpkg: error processing package pgu-app"), o["reason"]
    assert [c["ok"] for c in o["checks"]] == [True]
    [g] = b.list_guests()
    assert g.status == "running" and g.lock is None
    assert answer() == "pgu-app 1.0"
    v = b.exec(g, ["dpkg-query", "-W", "-f=${Version} ${db:Status-Abbrev}", "pgu-app"])
    assert v.stdout.strip() == "1.0 ii", v.stdout + v.stderr  # not the half-configured 2.0
    # what 2.0's postinst wrote after the snapshot: gone from the root disk, kept on the data volume (mp0)
    assert not b.exec(g, ["test", "-e", "/root/after-snapshot"]).ok
    assert (mp0 / "after-snapshot").read_text() == "written-by-2.0\n"
    assert [s.name for s in b.snapshots(g)] == [o["snapshot"]]
    assert (Path(b.config.disk_dir) / str(g.vmid) / "snapshots" / f"{o['snapshot']}.raw").is_file()
    code, out, err = pveguard(env, "audit-log", "show", "--action", "update", "--json")
    assert code == 0, err
    results = [(e["action"], e["details"].get("result")) for e in json.loads(out)]
    assert ("update.intent", None) in results and ("update.rollback.intent", None) in results
    assert ("update", "rolled-back") in results

    # then a good version 3.0: updated, the service answers 3.0, the rollback's snapshot pruned (keep 1)
    v3 = build_deb(tmp_path, "3.0", POSTINST_OK.replace("enable --now", "enable") + "systemctl restart pgu-app\n")
    b.push(g, str(v3), "/srv/repo/pgu-app_3.0_all.deb")
    assert b.exec(g, ["rm", "/srv/repo/pgu-app_2.0_all.deb"]).ok
    index = packages_stanza(v3).encode()
    (tmp_path / "Packages").write_bytes(index)
    (tmp_path / "Release").write_text(
        "Origin: pgu-test\nLabel: pgu-test\nSuite: stable-security\nCodename: bookworm-security\n"
        f"Date: {formatdate(usegmt=True)}\nArchitectures: all amd64\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n")
    for name in ("Packages", "Release"):
        b.push(g, str(tmp_path / name), f"/srv/repo/{name}")
    first = o["snapshot"]
    code, out, err = pveguard(env, "update", "--json")
    assert code == 0, out + err
    [o] = json.loads(out)["containers"]
    assert o["action"] == "updated" and o["pruned"] == [first], o
    assert answer() == "pgu-app 3.0"
    [g] = b.list_guests()
    assert [s.name for s in b.snapshots(g)] == [o["snapshot"]]
    snapdir = Path(b.config.disk_dir) / str(g.vmid) / "snapshots"
    assert sorted(p.name for p in snapdir.iterdir()) == [f"{o['snapshot']}.raw"]
    assert b.get_config(g).get("lock") is None

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--prune", "--yes", "--i-mean-it", "pgu-up")
    assert code == 0, out + err
    assert not (Path(b.config.disk_dir) / str(g.vmid)).exists()
