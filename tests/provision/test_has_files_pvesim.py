"""ProxmoxBackend.has_files (the RBAC token-file check of `plan`) against pvesim's lxc-attach and pct: 20 containers on
2 nodes (one local, one over ssh), checked concurrently per node, bounded, with the same answers as one `pct exec`
each -- through lxc-attach where the node has it (pct only where lxc-attach cannot answer), and through pct alone
on a node without lxc-attach."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pveguard.backends.base import Guest
from pveguard.backends.proxmox import HAS_FILES_PER_NODE, ProxmoxBackend, PveSettings
from pveguard.provision.rbac import has_secret
from pveguard.security import rbac
from pveguard.security.isolation import Ct

from .conftest import Env
from .test_exec_pvesim import fake_ssh

pytest.importorskip("pvesim.testing")

SECRET = rbac.SECRET_PATH
PCT_SECONDS = 0.3  # what one `pct exec` costs on a node (a Perl start), added by a wrapper around the sim's pct


def slow_pct(tmp_path: Path, real: str, tool: str = "pct") -> Path:
    """A `pct` (or `lxc-attach`) that takes PCT_SECONDS and logs when each call on a node starts and ends (ns),
    in TOOL-times.log."""
    bindir = tmp_path / f"slow-{tool}"
    bindir.mkdir(exist_ok=True)
    script = bindir / tool
    log = tmp_path / f"{tool}-times.log"
    script.write_text(f"""#!/bin/sh
echo "start ${{PVESIM_NODE:-?}} $(date +%s%N)" >> {log}
sleep {PCT_SECONDS}
{real} "$@"; rc=$?
echo "end ${{PVESIM_NODE:-?}} $(date +%s%N)" >> {log}
exit $rc
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir


def without_lxc_attach(tmp_path: Path, sim_bin: str) -> str:
    """A PATH on which no lxc-attach is found (this machine has LXC's real one in /usr/bin): the sim's pct and
    pvesh, and everything else of the system's bin directories by symlink."""
    d = tmp_path / "no-lxc-attach"
    d.mkdir()
    for src in [Path(sim_bin), *(Path(p) for p in os.environ["PATH"].split(os.pathsep) if p)]:
        if not src.is_dir():
            continue
        for f in src.iterdir():
            if f.name != "lxc-attach" and not (d / f.name).exists():
                (d / f.name).symlink_to(f)
    return str(d)


def most_at_once(log: Path) -> dict[str, int]:
    """Per node: the most `pct` calls running at the same time."""
    events: dict[str, list[tuple[int, int]]] = {}
    for line in log.read_text().splitlines():
        kind, node, ns = line.split()
        events.setdefault(node, []).append((int(ns), 1 if kind == "start" else -1))
    peak: dict[str, int] = {}
    for node, ev in events.items():
        now = best = 0
        for _t, d in sorted(ev, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
            now += d
            best = max(best, now)
        peak[node] = best
    return peak


def test_concurrent_token_checks_answer_as_one_pct_exec_each(penv: Env, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """On nodes without lxc-attach (or where it cannot be found): every check is a `pct exec`."""
    sim = penv.sim
    sim_env = sim.env()
    sim_bin = sim_env["PATH"].split(os.pathsep)[0]
    real_pct = str(Path(sim_bin) / "pct")
    ssh_bin = fake_ssh(tmp_path, penv)
    monkeypatch.setenv("PATH", os.pathsep.join([str(slow_pct(tmp_path, real_pct)), str(ssh_bin),
                                                without_lxc_attach(tmp_path, sim_bin)]))
    monkeypatch.setenv("PVESIM_INFO", sim_env["PVESIM_INFO"])
    monkeypatch.setenv("PVESIM_NODE", "pve1")  # we "are" pve1: its pct runs here, pve2's over (fake) ssh
    ids = {n: sim.control("POST", "/guests", {"count": 10, "type": "lxc", "node": n, "status": "running"})
           for n in ("pve1", "pve2")}
    assert [len(v) for v in ids.values()] == [10, 10]
    guests = [Guest(vmid=v, name=f"CT{v}", node=n, type="lxc", status="running") for n, vs in ids.items() for v in vs]
    want: dict[int, bool | str] = {}
    for i, g in enumerate(guests):
        kind = i % 5
        if kind in (0, 1):  # the token file is there
            sim.control("POST", f"/guests/{g.vmid}/files", {"path": SECRET, "content": "PVE_TOKEN_ID=x\n"})
            want[g.vmid] = True
        elif kind in (2, 4):  # absent
            want[g.vmid] = False
        elif kind == 3:  # there but empty: `test -s` says no
            sim.control("POST", f"/guests/{g.vmid}/files", {"path": SECRET, "content": ""})
            want[g.vmid] = False
    p1, p2 = ids["pve1"], ids["pve2"]
    # stopped since the listing said running (pct's own words), and one moved to pve3 since (not on its node)
    for v in (p1[0], p2[6]):  # both hold the file: a stopped one is not taken for done
        sim.control("POST", f"/guests/{v}", {"status": "stopped"})
        want[v] = f"pct exec does not reach it: container '{v}' not running!"
    sim.control("POST", f"/guests/{p2[3]}", {"node": "pve3"})
    want[p2[3]] = f"pct exec does not reach it: Configuration file 'nodes/pve2/lxc/{p2[3]}.conf' does not exist"
    assert set(want) == {g.vmid for g in guests}

    backend = ProxmoxBackend(PveSettings(mode="local", local_node="pve1"), api=sim.proxmoxer("token"))
    log = tmp_path / "pct-times.log"
    got = backend.has_files(guests, SECRET, timeout=60)
    assert got == want
    # concurrent on each node, never more than the bound: 10 calls of 0.3 s a node took >= 3 s one by one
    peak = most_at_once(log)
    assert set(peak) == {"pve1", "pve2"} and all(1 < n <= HAS_FILES_PER_NODE for n in peak.values()), peak
    assert (tmp_path / "ssh.log").read_text().split() == ["root@127.0.2.12"]  # one session for pve2's ten

    # the same answers as the one-by-one path (one `pct exec` each through backend.exec)
    log.unlink()
    one_by_one = has_secret(backend, {g.vmid: g for g in guests})
    assert {g.vmid: one_by_one(Ct(g.name, g.vmid, g.node)) for g in guests} == want
    assert max(most_at_once(log).values()) == 1

    # a node whose pct predates --keep-env: every check there says so, nothing is taken for absent
    sim.control("POST", "/pct/default", {"version": "5.0.8"})
    old = backend.has_files([g for g in guests if g.node == "pve2"], SECRET, timeout=60)
    # (pct reads its options before it looks at the container's state; the moved one is not on pve2 at all)
    assert old == {**dict.fromkeys(p2, "pct on node pve2 does not know --keep-env (pve-container older than 5.0.9): "
                                       "update the node"), p2[3]: want[p2[3]]}


def test_a_node_ssh_cannot_reach_gives_each_of_its_containers_the_reason(penv: Env, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sim = penv.sim
    sim_env = sim.env()
    bindir = tmp_path / "nossh"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text("#!/bin/sh\necho 'ssh: connect to host 127.0.2.12 port 22: Connection refused' >&2\nexit 255\n")
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{sim_env['PATH']}")
    monkeypatch.setenv("PVESIM_INFO", sim_env["PVESIM_INFO"])
    monkeypatch.setenv("PVESIM_NODE", "pve1")
    on1 = sim.control("POST", "/guests", {"count": 3, "type": "lxc", "node": "pve1", "status": "running"})
    on2 = sim.control("POST", "/guests", {"count": 3, "type": "lxc", "node": "pve2", "status": "running"})
    sim.control("POST", f"/guests/{on1[0]}/files", {"path": SECRET, "content": "x\n"})
    guests = [Guest(vmid=v, name=f"CT{v}", node=n, type="lxc", status="running")
              for n, vs in (("pve1", on1), ("pve2", on2)) for v in vs]
    backend = ProxmoxBackend(PveSettings(mode="local", local_node="pve1"), api=sim.proxmoxer("token"))
    got = backend.has_files(guests, SECRET, timeout=60)
    assert got == {on1[0]: True, on1[1]: False, on1[2]: False,
                   **dict.fromkeys(on2, "pct exec does not reach it: "
                                        "ssh: connect to host 127.0.2.12 port 22: Connection refused")}


def test_token_checks_go_through_lxc_attach_and_ask_pct_only_where_it_cannot_answer(
        penv: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the node has lxc-attach, each check is `lxc-attach -n VMID --clear-env -- test -s PATH` (what
    `pct exec VMID --keep-env 0` runs after its checks); a stopped, moved or otherwise failing one is asked of
    `pct exec`, whose reason is the answer: the same answers as the pct-only path."""
    sim = penv.sim
    sim_env = sim.env()
    sim_bin = sim_env["PATH"].split(os.pathsep)[0]
    slow = [slow_pct(tmp_path, str(Path(sim_bin) / t), t) for t in ("pct", "lxc-attach")]
    monkeypatch.setenv("PATH", os.pathsep.join([*map(str, slow), str(fake_ssh(tmp_path, penv)), sim_env["PATH"]]))
    monkeypatch.setenv("PVESIM_INFO", sim_env["PVESIM_INFO"])
    monkeypatch.setenv("PVESIM_NODE", "pve1")
    monkeypatch.setenv("PVEGUARD_SECRET_LEAK", "must not reach a container")
    ids = {n: sim.control("POST", "/guests", {"count": 10, "type": "lxc", "node": n, "status": "running"})
           for n in ("pve1", "pve2")}
    guests = [Guest(vmid=v, name=f"CT{v}", node=n, type="lxc", status="running") for n, vs in ids.items() for v in vs]
    want: dict[int, bool | str] = {}
    for i, g in enumerate(guests):
        if i % 3 == 0:
            sim.control("POST", f"/guests/{g.vmid}/files", {"path": SECRET, "content": "PVE_TOKEN_ID=x\n"})
            want[g.vmid] = True
        elif i % 3 == 1:  # there but empty
            sim.control("POST", f"/guests/{g.vmid}/files", {"path": SECRET, "content": ""})
            want[g.vmid] = False
        else:  # absent
            want[g.vmid] = False
    p1, p2 = ids["pve1"], ids["pve2"]
    sim.control("POST", f"/guests/{p1[0]}", {"status": "stopped"})  # it holds the file: not taken for done
    want[p1[0]] = f"pct exec does not reach it: container '{p1[0]}' not running!"
    sim.control("POST", f"/guests/{p2[3]}", {"node": "pve3"})
    want[p2[3]] = f"pct exec does not reach it: Configuration file 'nodes/pve2/lxc/{p2[3]}.conf' does not exist"
    # a container without `test`: lxc-attach exits 127 with lxc's own error; pct exec (the same attach) says so
    nocmd = (f'lxc-attach: {p2[5]}: ../src/lxc/attach.c: lxc_attach_run_command: 1841 No such file or directory - '
             'Failed to exec "test"')
    sim.control("POST", "/pct/scripts", {"vmid": p2[5], "match": "^test -s", "exit": 127, "stderr": nocmd + "\n"})
    want[p2[5]] = f"pct exec does not reach it: {nocmd}"

    backend = ProxmoxBackend(PveSettings(mode="local", local_node="pve1"), api=sim.proxmoxer("token"))
    sim.control("DELETE", "/pct/log")
    assert backend.has_files(guests, SECRET, timeout=60) == want
    # pct was asked for the three that lxc-attach could not answer, nothing else
    asked_pct = (tmp_path / "pct-times.log").read_text().split("\n")
    assert sum(1 for line in asked_pct if line.startswith("start ")) == 3
    log = sim.control("GET", "/pct/log")
    attached = [e for e in log if e.get("tool") == "lxc-attach"]
    assert sorted(e["vmid"] for e in attached) == sorted(v for v in want if v not in (p1[0], p2[3]))
    assert all(e["argv"] == ["test", "-s", SECRET] for e in attached)
    # --clear-env: nothing of this process's environment inside, as with pct exec --keep-env 0
    assert all(e["env"] == {"container": "lxc", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
               for e in attached)
    peak = most_at_once(tmp_path / "lxc-attach-times.log")
    assert set(peak) == {"pve1", "pve2"} and all(1 < n <= HAS_FILES_PER_NODE for n in peak.values()), peak

    # a node whose pct predates --keep-env does not matter where lxc-attach answers (it clears the environment
    # itself); where pct is asked, its refusal is the answer as before
    sim.control("POST", "/pct/default", {"version": "5.0.8"})
    old = backend.has_files([g for g in guests if g.node == "pve1"], SECRET, timeout=60)
    assert old == {**{v: want[v] for v in p1[1:]},
                   p1[0]: "pct on node pve1 does not know --keep-env (pve-container older than 5.0.9): update the node"}


@pytest.mark.parametrize("tool", ["lxc-attach", "pct"])
def test_expected_token_id_tells_another_roles_file_from_the_right_one(
        penv: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    """With `expect` each check is `grep -q -s -F -x -e PVE_TOKEN_ID=<id> PATH`: the role's own id is current;
    another role's id, an old id, a prefix of it, an empty file or none is not; a stopped one says why. The
    secret in the files is never on a command line (the sim logs each tool's argv)."""
    sim = penv.sim
    sim_env = sim.env()
    sim_bin = sim_env["PATH"].split(os.pathsep)[0]
    path = sim_env["PATH"] if tool == "lxc-attach" else without_lxc_attach(tmp_path, sim_bin)
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_ssh(tmp_path, penv)), path]))
    monkeypatch.setenv("PVESIM_INFO", sim_env["PVESIM_INFO"])
    monkeypatch.setenv("PVESIM_NODE", "pve1")
    ids = {n: sim.control("POST", "/guests", {"count": 4, "type": "lxc", "node": n, "status": "running"})
           for n in ("pve1", "pve2")}
    guests = [Guest(vmid=v, name=f"CT{v}", node=n, type="lxc", status="running") for n, vs in ids.items() for v in vs]
    mine, other = "PVE_TOKEN_ID=pveguard-monitoring@pve!pveguard", "PVE_TOKEN_ID=pveguard-backup@pve!pveguard"
    secret = "5e1c2f0a-secret-never-in-argv"
    content = {  # per container on each node: what its token file holds (None: no file)
        0: f"# pveguard\n{mine}\nPVE_TOKEN_SECRET={secret}\n",
        1: f"# pveguard\n{other}\nPVE_TOKEN_SECRET={secret}\n",
        2: "",
        3: None,
    }
    expect = {g.vmid: mine for g in guests}
    want: dict[int, bool | str] = {}
    for vs in ids.values():
        for i, v in enumerate(vs):
            if content[i] is not None:
                sim.control("POST", f"/guests/{v}/files", {"path": SECRET, "content": content[i]})
            want[v] = i == 0
    p2 = ids["pve2"]
    sim.control("POST", f"/guests/{p2[1]}/files", {"path": SECRET, "content": f"{mine}x\n"})  # a longer id
    sim.control("POST", f"/guests/{p2[0]}", {"status": "stopped"})
    want[p2[0]] = f"pct exec does not reach it: container '{p2[0]}' not running!"
    backend = ProxmoxBackend(PveSettings(mode="local", local_node="pve1"), api=sim.proxmoxer("token"))
    sim.control("DELETE", "/pct/log")
    assert backend.has_files(guests, SECRET, timeout=60, expect=expect) == want
    log = sim.control("GET", "/pct/log")
    greps = [e for e in log if e["argv"][:1] == ["grep"]]
    assert {e["vmid"] for e in greps} == set(want) - {p2[0]}
    assert all(e["argv"] == ["grep", "-q", "-s", "-F", "-x", "-e", mine, SECRET] for e in greps)
    assert all((e.get("tool") == "lxc-attach") == (tool == "lxc-attach") for e in greps), greps
    assert secret not in json.dumps(log)
    # without `expect` the check is `test -s` as before: any non-empty file counts
    assert backend.has_files(guests, SECRET, timeout=60) == {**want, ids["pve1"][1]: True, p2[1]: True}
    # the one-by-one path (one `pct exec` each) gives the same answers for the same question
    one_by_one = has_secret(backend, {g.vmid: g for g in guests}, expect=expect)
    assert {g.vmid: one_by_one(Ct(g.name, g.vmid, g.node)) for g in guests} == want
    assert secret not in json.dumps(sim.control("GET", "/pct/log"))
