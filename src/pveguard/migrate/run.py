"""`migrate run` and `migrate rollback`: the checklist's steps against a source and a container.

Each step is journaled (journal.py) and written to the ledger (intent before, result after); each is
idempotent, so a run killed anywhere is resumed by running it again. What the steps learn (the
source's answers before the move, addresses, the forwarding, the rollback bundle) lives in the run
row, never re-read from a source the migration has already changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pveguard.audit import inventory
from pveguard.audit.facts import HostFacts, Socket
from pveguard.backends.base import Backend, Guest
from pveguard.context import AppContext
from pveguard.errors import OperationError, PolicyRefused, PveguardError, UsageError
from pveguard.migrate import endpoints, plan, probe
from pveguard.migrate.endpoints import Endpoint, Local
from pveguard.migrate.journal import Journal, Run
from pveguard.provision.runlock import state_lock
from pveguard.security import extra_inbound

Progress = Callable[[str], None]
# tests: SIGKILL this process once that step is journaled done, or at a point inside a step
# (migrate-data:source-stopped)
KILL_ENV = "PVEGUARD_MIGRATE_KILL_AFTER"
APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive", "APT_LISTCHANGES_FRONTEND=none"]
# While packages are installed in the container their services must not start with the default
# configuration (they would answer before the data is there): Debian's policy-rc.d convention.
POLICY_RC = "/usr/sbin/policy-rc.d"
NO_START = b"#!/bin/sh\n# pveguard migrate: no service starts while packages are installed\nexit 101\n"
FACT_PATHS = ["etc/passwd", "etc/group", "etc/hostname", "etc/systemd", "lib/systemd/system", "usr/lib/systemd/system",
              "var/lib/dpkg/status", "var/lib/dpkg/info", "var/lib/apt/extended_states", "etc/os-release"]


def table_name(service: str) -> str:
    return "pveguard_mig_" + re.sub(r"[^a-z0-9]", "_", service.lower().removesuffix(".service"))[:40]


# --- facts of a source -----------------------------------------------------------------------------


def source_facts(src: Endpoint, work: Path) -> tuple[HostFacts, Callable[[str], plan.PathSize]]:
    """The audit's facts of the source (its root copied in part for a remote one) and a path sizer."""
    if isinstance(src, Local):
        return inventory.collect(Path("/")), lambda p: plan.path_size(Path("/"), p)
    tar = src.run(["sh", "-c", 'cd / && tar -cf - --ignore-failed-read $(for p in "$@"; do [ -e "$p" ] && echo "$p"; '
                   'done) 2>/dev/null', "sh", *FACT_PATHS], timeout=300)
    if not tar.stdout:
        raise OperationError(f"cannot read the package and unit database of {src.label}: {tar.err[-300:]}",
                             hint="the source must be a Debian-family system with tar")
    subprocess.run(["tar", "-C", str(work), "--no-same-owner", "--no-same-permissions", "-xf", "-"],
                   input=tar.stdout, capture_output=True, check=False)
    facts = inventory.collect(work, live=False)
    facts.hostname = src.run(["hostname"]).out.strip() or facts.hostname
    _live_facts(src, facts)

    def sizer(path: str) -> plan.PathSize:
        r = src.run(["sh", "-c", '[ -e "$1" ] || exit 3; du -sb --apparent-size "$1" | cut -f1; '
                     'find "$1" -type f | wc -l', "sh", path])
        if r.returncode == 3 or not r.ok:
            return plan.PathSize(path, False, 0, 0)
        nums = r.out.split()
        return plan.PathSize(path, True, int(nums[0]), int(nums[1]))
    return facts, sizer


def _live_facts(src: Endpoint, facts: HostFacts) -> None:
    """Listening sockets (with the unit of their process) and unit states, read through the endpoint."""
    ss = src.run(["ss", "-Hltunp"])
    if not ss.ok:
        return
    socks: list[tuple[str, str, int, int]] = []
    for line in ss.out.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        addr, _, port = f[4].rpartition(":")
        found = re.search(r"pid=(\d+)", line)
        if port.isdigit() and found:
            socks.append((f[0], addr.strip("[]"), int(port), int(found.group(1))))
    pids = sorted({s[3] for s in socks})
    cg = src.run(["sh", "-c", 'for p in "$@"; do echo "$p $(tail -n1 /proc/$p/cgroup 2>/dev/null)"; done', "sh",
                  *map(str, pids)]).out if pids else ""
    unit_of = {}
    for line in cg.splitlines():
        pid_text, _, path = line.partition(" ")
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".service") and pid_text.isdigit():
            unit_of[int(pid_text)] = name
    facts.sockets = [Socket(proto, addr, port, 0, pid, None, unit_of.get(pid)) for proto, addr, port, pid in socks]
    facts.unavailable = [u for u in facts.unavailable if u.fact != "listening sockets"]
    states = src.run(["systemctl", "show", "--type=service", "--property=Id,ActiveState,SubState", "*"])
    for block in states.out.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found_unit = facts.units.get(props.get("Id", ""))
        if found_unit is not None:
            found_unit.active, found_unit.sub = props.get("ActiveState"), props.get("SubState")


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Migration:
    app: AppContext
    journal: Journal
    run: Run
    src: Endpoint
    say: Progress
    backend: Backend | None = None
    guest: Guest | None = None
    ct: Endpoint | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def doc(self) -> dict[str, Any]:
        return dict(self.run.data["plan"])

    @property
    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = self.run.data.setdefault("state", {})
        return st

    @property
    def unit(self) -> str:
        return str(self.doc["service"])

    def save(self) -> None:
        self.journal.save(self.run)

    def paths(self) -> list[str]:
        d = self.doc
        return [p["path"] for p in d["config_paths"] + d["data_paths"]] + list(d.get("unit_paths", []))

    def tcp_ports(self) -> list[int]:
        return sorted({p["port"] for p in self.doc["ports"] if p["proto"] == "tcp"})

    def container(self) -> tuple[Backend, Guest, Endpoint]:
        """The target container (opened once per run), which must exist and run."""
        if self.backend is None or self.guest is None or self.ct is None:
            from pveguard.backends import connect

            backend = connect(self.app.strategy)
            guest = next((g for g in backend.list_guests() if g.name == self.run.target), None)
            if guest is None:
                raise OperationError(f"container {self.run.target} does not exist",
                                     hint="'pveguard migrate run' creates strategy containers; create others first")
            if guest.status != "running":
                backend.start(guest)
            self.backend, self.guest, self.ct = backend, guest, endpoints.for_guest(backend, guest)
        return self.backend, self.guest, self.ct


@contextmanager
def migrate_lock(state_dir: Path) -> Iterator[None]:
    """One migrate run or rollback at a time per state directory (the kernel drops it on kill -9)."""
    with state_lock(state_dir, "migrate.lock", "migrate"):
        yield


def _kill_hook(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def start(app: AppContext, service: str, to: str | None, source: str | None, say: Progress,
          confirm: Callable[[dict[str, Any], list[str]], bool] | None = None) -> Migration | None:
    """The journaled migration of `service`: resumed when one is under way, else planned and begun.
    `confirm(plan, steps left)` may decline (None is returned, nothing is journaled)."""
    journal = Journal(app.store)
    unit_name = service if "." in service else f"{service}.service"
    run = journal.get(unit_name)
    lxcpath = app.strategy.target.lxc.lxcpath
    if run is not None and run.state not in ("rolled-back",):
        for given, kept, what in ((source, run.source, "--source"), (to, run.target, "--to")):
            if given is not None and given != kept:
                raise UsageError(f"{unit_name} is being migrated from {run.source} to {run.target}; {what} "
                                 f"{given} differs", hint=f"run it without {what}, or 'pveguard migrate rollback "
                                 f"{service}' first")
        say(f"resuming the migration of {unit_name} ({run.state}) from {run.source} to {run.target}")
        left = [s for s in plan.RUN_STEPS if not run.done(s)]
        if run.state != "done" and confirm is not None and not confirm(run.data["plan"], left):
            return None
        return Migration(app, journal, run, endpoints.parse_source(run.source, lxcpath), say)
    src_text = source or "local"
    src = endpoints.parse_source(src_text, lxcpath)
    with tempfile.TemporaryDirectory(prefix="pveguard-migrate-") as work:
        facts, sizer = source_facts(src, Path(work))
        unit_for_memory = service if "." in service else f"{service}.service"
        doc = plan.build(facts, app.strategy, service, to, source=src_text, sizer=sizer,
                         memory_bytes=service_memory(src, unit_for_memory))
    unit = facts.units[doc["service"]]
    if unit.active not in (None, "active"):
        raise UsageError(f"{doc['service']} is {unit.active} on {src.label}: only a running service is migrated "
                         "(its answers are the test of the copy)", hint=f"start it first: systemctl start {service}")
    if confirm is not None and not confirm(doc, list(plan.RUN_STEPS)):
        return None
    run = journal.begin(doc["service"], src_text, doc["target"]["container"],
                        {"plan": doc, "state": {"enabled": unit.enabled}})
    app.record("migrate.begin", doc["service"], source=src_text, container=doc["target"]["container"],
               steps=list(plan.RUN_STEPS))
    return Migration(app, journal, run, src, say)


def run_steps(m: Migration) -> Run:
    """Every step not done yet, in order; the run is `done` after validate."""
    if m.run.state == "done":
        m.say(f"{m.unit} is already migrated to {m.run.target} ('pveguard migrate status {m.unit}')")
        return m.run
    m.journal.save(m.run, "running")
    for name in plan.RUN_STEPS:
        if m.run.done(name):
            continue
        m.say(f"{name} ...")
        m.journal.step(m.run, name, "running")
        m.app.record(f"migrate.{name}.intent", m.unit, container=m.run.target, source=m.run.source)
        try:
            detail = STEPS[name](m)
        except (Exception, KeyboardInterrupt) as exc:
            text = getattr(exc, "message", None) or str(exc)
            m.journal.step(m.run, name, "failed", error=text)
            m.journal.save(m.run, "failed")
            m.app.record(f"migrate.{name}", m.unit, result="failed", error=text)
            raise
        m.save()
        m.journal.step(m.run, name, "done", detail)
        m.app.record(f"migrate.{name}", m.unit, result="ok", **detail)
        m.say(f"{name}: done")
        _kill_hook(name)
    m.journal.save(m.run, "done")
    return m.run


# --- the steps --------------------------------------------------------------------------------------


def step_create(m: Migration) -> dict[str, Any]:
    backend, guest, detail = provide_target(m.app, m.doc, m.say)
    m.backend, m.guest, m.ct = backend, guest, endpoints.for_guest(backend, guest)
    backend, guest, ct = m.container()
    if m.doc["ports"] and not m.src.run(["sh", "-c", "command -v nft"]).ok:
        raise OperationError(f"{m.src.label} has no nft (nftables) for the port forward of the switch",
                             hint="apt-get install nftables on the source, then run this again")
    m.state["ct_address"] = ct.address()
    m.state["src_address"] = m.src.address()
    m.state["ct_ports_before"] = sorted(_listening(ct))
    return {**detail, "vmid": guest.vmid, "address": m.state["ct_address"]}


def service_memory(src: Endpoint, unit: str) -> int | None:
    """The memory the unit's cgroup uses now on the source (None: not known there)."""
    r = src.run(["systemctl", "show", "--property=MemoryCurrent", "--value", unit])
    text = r.out.strip()
    return int(text) if r.ok and text.isdigit() and int(text) < 1 << 60 else None


def provide_target(app: AppContext, doc: dict[str, Any], say: Progress) -> tuple[Backend, Guest, dict[str, Any]]:
    """The target container, running and large enough for the service, through provisioning: created
    when missing (a container outside the strategy with the defaults of the audit's suggestion,
    recorded in the store so plan and apply keep it), grown when too small (a floor in the store that
    the desired state honours, so a later apply does not shrink it back nor plan report drift: the
    disk for the data with the headroom, the memory for the service)."""
    from pveguard.backends import connect
    from pveguard.provision import floors
    from pveguard.provision.ensure import ensure_container
    from pveguard.strategy.models import Container

    target, unit = str(doc["target"]["container"]), str(doc["service"])
    strategy = app.strategy
    backend = connect(strategy)
    existing = next((g for g in backend.list_guests() if g.name == target), None)
    added = floors.load(app.store)
    spec = next((c for c in strategy.containers if c.name == target), None) or next(
        (e.container for e in added.extras if e.container.name == target), None)
    res = doc["resources"]
    need_disk = plan.disk_gib_for(int(res["disk_needed_bytes"]))
    need_mem = plan.memory_for(int(res["memory_needed_bytes"])) if res.get("memory_needed_bytes") else None
    detail: dict[str, Any] = {"container": target, "created": existing is None, "grown": {}}
    if spec is None and existing is not None:
        # not pveguard's container: used as it is when it fits, never resized from here
        small = []
        if existing.maxdisk and need_disk * plan.GIB > existing.maxdisk:
            small.append(f"disk {existing.maxdisk // plan.GIB}G, needs {need_disk}G")
        if need_mem and existing.maxmem and need_mem * plan.MIB > existing.maxmem:
            small.append(f"memory {existing.maxmem // plan.MIB}M, needs {need_mem}M")
        if small:
            raise UsageError(f"{target} is too small for {unit} ({'; '.join(small)}) and is not a strategy "
                             "container, so pveguard does not resize it",
                             hint=f"grow it by hand (pct resize / pct set), or add {target} to the strategy "
                                  "with that size, then run this again (it resumes here)")
        if existing.status != "running":
            backend.start(existing)
            existing.status = "running"
        return backend, existing, {**detail, "note": f"{target} is not a strategy container: used as it is"}
    if spec is None:
        base_name = doc["target"].get("suggestion")
        base = next((c for c in strategy.containers if c.name == base_name), None)
        if base is None:
            raise UsageError(f"container {target} does not exist, is not in the strategy, and the audit suggests "
                             f"no strategy container for {unit} to take its defaults from",
                             hint=f"add {target} to the strategy's containers (or --to one that is there), "
                                  "then run this again")
        values = base.model_dump(mode="json")
        values.update(name=target, components=[], purpose=f"{unit} moved here by pveguard migrate", vmid=None,
                      packages=[], health_checks=[], backup_volume=None,
                      network={**values["network"], "ip": "dhcp", "gateway": None})
        spec = Container.model_validate(values)
        why = f"created by migrate {unit} with the defaults of {base.name} (role {base.role})"
        app.record("migrate.create.container", target, service=unit, base=base.name, role=base.role,
                   before=None, after=values)
        floors.add_extra(app.store, spec, f"migrate {unit}", why)
        detail["defaults_of"] = base.name
        say(f"{target} is not in the strategy: it is created with the defaults of {base.name}")
    floor = added.floors.get(target)
    have_disk = max(-(-spec.resources.storage // plan.GIB), floor.disk_gib if floor and floor.disk_gib else 0,
                    (existing.maxdisk + plan.GIB - 1) // plan.GIB if existing else 0)
    have_mem = max(spec.resources.memory // plan.MIB, floor.memory_mib if floor and floor.memory_mib else 0,
                   existing.maxmem // plan.MIB if existing else 0)
    grow_disk = need_disk if need_disk > have_disk else None
    grow_mem = need_mem if need_mem is not None and need_mem > have_mem else None
    if grow_disk or grow_mem:
        after = floors.raise_floor(app.store, target, f"migrate {unit}", f"grown by migrate {unit}",
                                   disk_gib=grow_disk, memory_mib=grow_mem)
        change = {"before": {"disk_gib": have_disk, "memory_mib": have_mem},
                  "after": {"disk_gib": grow_disk or have_disk, "memory_mib": grow_mem or have_mem}}
        app.record("migrate.create.grow", target, service=unit, floor=asdict(after), **change)
        detail["grown"] = change
        grows = [f"disk {have_disk}G -> {grow_disk}G"] if grow_disk else []
        grows += [f"memory {have_mem}M -> {grow_mem}M"] if grow_mem else []
        say(f"{target} must grow for {unit}: {', '.join(grows)} (through provisioning)")
    backend, guest = ensure_container(app, target, backend=backend, progress=say)
    if grow_disk and guest.maxdisk < grow_disk * plan.GIB:
        raise OperationError(f"{target} still has {guest.maxdisk // plan.GIB}G of disk after growing it to "
                             f"{grow_disk}G", hint="see 'pveguard plan' and 'pveguard status'")
    if grow_disk:
        detail["restarted"] = _grown_inside(app, backend, guest, grow_disk, say)
    return backend, guest, detail


def _fs_bytes(ct: Endpoint) -> int | None:
    r = ct.run(["df", "-B1", "--output=size", "/"])
    last = r.out.split()[-1] if r.ok and r.out.split() else ""
    return int(last) if last.isdigit() else None


def _grown_inside(app: AppContext, backend: Backend, guest: Guest, disk_gib: int, say: Progress) -> bool:
    """The root filesystem seen inside has the grown size; where it could not grow while running
    (plain LXC on a kernel without online ext4 resize: the loop image grows at the start) the
    container is restarted for it, before anything of the migration is in it. True: restarted."""
    from pveguard.backends.lxc import LxcBackend

    if not isinstance(backend, LxcBackend):   # PVE's resize grows a running container's filesystem at once
        return False
    ct = endpoints.for_guest(backend, guest)
    want = int(disk_gib * plan.GIB * 0.9)   # ext4's own metadata takes a few percent
    size = _fs_bytes(ct)
    if size is None or size >= want:
        return False
    change = {"name": guest.name, "before": {"fs_bytes": size}, "reason": f"grow the root disk to {disk_gib}G"}
    say(f"{guest.name}: the root disk can only grow at a start here (no online resize): restarting it")
    app.record("migrate.create.restart.intent", f"ct/{guest.vmid}", **change)
    backend.shutdown(guest)
    backend.start(guest)
    guest.status = "running"
    after = _fs_bytes(ct)
    app.record("migrate.create.restart", f"ct/{guest.vmid}", result="ok" if after and after >= want else "failed",
               after={"fs_bytes": after}, **change)
    if after is None or after < want:
        raise OperationError(f"{guest.name}'s root filesystem is {after} bytes after the restart, not {disk_gib}G",
                             hint="check 'pveguard status' and the container's disk; run this again")
    return True


def _listening(ep: Endpoint) -> set[int]:
    return _ports_of(ep.run(["ss", "-Hltn"]).out)


def _ports_of(ss_output: str) -> set[int]:
    out = set()
    for line in ss_output.splitlines():
        f = line.split()
        if len(f) >= 4 and f[3].rpartition(":")[2].isdigit():
            out.add(int(f[3].rpartition(":")[2]))
    return out


def step_install(m: Migration) -> dict[str, Any]:
    _, _, ct = m.container()
    names = [p["name"] for p in m.doc["packages"]]
    if not names:
        return {"packages": {}, "note": "no packages: a hand-made unit (its files move with the data)"}
    q = m.src.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *names])
    versions = dict(line.split(" ", 1) for line in q.out.splitlines() if " " in line)
    present = ct.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\\n", *names]).out
    before = [line.split(" ", 1)[0] for line in present.splitlines() if line.endswith("installed")]
    m.state.setdefault("ct_had_packages", before)
    ct.write_file(POLICY_RC, NO_START, 0o755)
    try:
        upd = ct.run([*APT_ENV, "apt-get", "update", "-q"], timeout=900)
        if not upd.ok:
            raise OperationError(f"apt-get update in {m.run.target} failed: {upd.err[-400:]}",
                                 hint="the container needs its Debian mirror (network, DNS)")
        specs, differs = [], []
        for name in names:
            want = versions.get(name)
            madison = ct.run(["apt-cache", "madison", name]).out if want else ""
            if want and any(line.split("|")[1].strip() == want for line in madison.splitlines() if "|" in line):
                specs.append(f"{name}={want}")
            else:
                specs.append(name)
                differs.append(name)
        inst = ct.run([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                       "-o", "Dpkg::Options::=--force-confold", *specs], timeout=1800)
        if not inst.ok:
            raise OperationError(f"installing {', '.join(specs)} in {m.run.target} failed: {inst.err[-600:]}",
                                 hint="check the container's apt sources")
    finally:
        ct.run(["rm", "-f", POLICY_RC])
    m.state["source_versions"] = versions
    got = ct.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *names]).out
    installed = dict(line.split(" ", 1) for line in got.splitlines() if " " in line)
    return {"packages": installed, "source_versions": versions, "other_version": differs}


def _ensure_users(m: Migration, ct: Endpoint) -> list[str]:
    made = []
    for user in m.doc["users"]:
        if not user["create"]:
            continue
        name = user["name"]
        if ct.run(["getent", "passwd", name]).ok:
            continue
        pw = m.src.run(["getent", "passwd", name]).out.strip().split(":")
        if len(pw) < 7:
            continue
        gr = m.src.run(["getent", "group", pw[3]]).out.strip().split(":")
        gname = gr[0] if gr and gr[0] else name
        if not ct.run(["getent", "group", gname]).ok:
            gid_free = not ct.run(["getent", "group", pw[3]]).ok
            ct.check(["groupadd", "--system", *(["-g", pw[3]] if gid_free else []), gname], f"creating group {gname}")
        uid_free = not ct.run(["getent", "passwd", pw[2]]).ok
        ct.check(["useradd", "--system", *(["-u", pw[2]] if uid_free else []), "-g", gname, "-d", pw[5], "-M",
                  "-s", pw[6], "-c", pw[4], name], f"creating user {name}")
        made.append(name)
    return made


def step_migrate_data(m: Migration) -> dict[str, Any]:
    _, _, ct = m.container()
    made = _ensure_users(m, ct)
    st = m.state
    if "baseline" not in st:   # the source's answers while it still serves: the test compares against them
        addr = st["src_address"]
        st["baseline"] = {str(p): probe.probe(addr, p) for p in m.tcp_ports()}
        st["latency_before"] = {str(p): probe.latency(addr, p, st["baseline"][str(p)]["kind"])
                                for p in m.tcp_ports() if st["baseline"][str(p)]["ok"]}
        m.save()
    paths = m.paths()
    first = 0
    prepared = False
    if m.src.run(["systemctl", "is-active", "--quiet", m.unit]).ok:
        first = endpoints.tar_copy(m.src, ct, paths)         # while the service runs
        m.say(f"first sync: {first} bytes")
        # everything that needs no final data before the service stops: the gap stays short
        ct.check(["systemctl", "daemon-reload"], "reloading systemd")
        ct.check(["systemctl", "enable", m.unit], f"enabling {m.unit}")
        prepared = True
        st["source_stopped_at"] = time.time()
        m.save()
        m.src.check(["systemctl", "stop", m.unit], f"stopping {m.unit}")
        m.say(f"stopped on {m.src.label} ({time.time() - st['source_stopped_at']:.2f}s)")
        _kill_hook("migrate-data:source-stopped")   # tests: killed inside a step, after the stop
    final = endpoints.tar_copy(m.src, ct, paths)
    removed = endpoints.delete_extras(m.src, ct, [p for p in paths if not p.startswith("/etc/systemd/")])
    if not prepared:
        ct.check(["systemctl", "daemon-reload"], "reloading systemd")
        ct.check(["systemctl", "enable", m.unit], f"enabling {m.unit}")
    st["ct_started"] = True
    m.save()
    ct.check(["systemctl", "restart", m.unit], f"starting {m.unit}")
    if "source_stopped_at" in st:
        m.say(f"final sync {final} bytes, started in {m.run.target} "
              f"({time.time() - st['source_stopped_at']:.2f}s after the stop)")
    return {"users_created": made, "first_sync_bytes": first, "final_sync_bytes": final,
            "deleted_in_container": len(removed), "paths": paths}


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def step_test(m: Migration) -> dict[str, Any]:
    _, _, ct = m.container()
    rollback = f"the service is stopped on the source: 'pveguard migrate rollback {m.unit}' brings it back"
    ports = m.tcp_ports()
    seen: dict[str, Any] = {}

    def up() -> bool:   # one round trip: active, and what listens
        r = ct.run(["sh", "-c", 'systemctl is-active --quiet "$1" && ss -Hltn', "sh", m.unit])
        seen["active"] = r.ok
        seen["ports"] = _ports_of(r.out) if r.ok else set()
        return r.ok and set(ports) <= seen["ports"]
    if not _wait(up, 15):
        if not seen.get("active"):
            status = ct.run(["systemctl", "status", "--no-pager", "-n", "5", m.unit]).out[-600:]
            raise OperationError(f"{m.unit} is not active in {m.run.target}: {status}", hint=rollback)
        raise OperationError(f"{m.run.target} does not listen on {sorted(set(ports) - seen['ports'])}",
                             hint=rollback)
    # the target's firewall admits the moved ports from the source before anything is asked through it
    firewall = _open_firewall(m) if any(p["proto"] in ("tcp", "udp") for p in m.doc["ports"]) else None
    answers = {}
    for p in ports:
        want = m.state["baseline"][str(p)]
        got = probe.probe(m.state["ct_address"], p, want["kind"])
        if not probe.same(want, got):
            hint = rollback
            if not got.get("ok") and "timed out" in str(got.get("error")):
                hint = (f"nothing answered: the firewall of {m.run.target} admits port {p} only from the source "
                        f"({m.state.get('fw_source')}) and what the strategy allows, and this probe comes from "
                        "this machine; admit it (network.management.cidr / security.network.allowed_inbound), "
                        f"then run this again; or {rollback}")
            raise OperationError(f"port {p} answers differently in {m.run.target}: {_answer(got)} "
                                 f"(the source answered {_answer(want)})", hint=hint)
        answers[str(p)] = got
    return {"active": True, "ports": ports, "answers": answers, "firewall": firewall}


def _answer(a: dict[str, Any]) -> str:
    if not a.get("ok"):
        return f"no answer ({a.get('error')})"
    if a["kind"] == "http":
        return f"HTTP {a['status']}, body sha256 {a['body_sha256'][:12]}"
    return f"TCP banner sha256 {a['banner_sha256'][:12]}"


def forward_rules(service: str, ct_address: str, ports: list[dict[str, Any]], guard_dev: str | None = None) -> str:
    """The nft script that sends the source's ports to the container (replacing an earlier one).

    Clients from outside arrive in prerouting; the source's own clients, 127.0.0.1 included, in output
    (a loopback-sourced packet may leave towards the container only with route_localnet on its
    interface, which the switch turns on; the masquerade then gives it the interface's address).
    `guard_dev`: the interface route_localnet was turned on for: packets to 127.0.0.0/8 arriving there
    from outside are dropped before routing (route_localnet would otherwise route them to the source's
    loopback services; the replies of the forwarded flows are still addressed to the source then)."""
    t = table_name(service)
    lines = [f"table ip {t} {{}}", f"delete table ip {t}", f"table ip {t} {{"]
    by_proto: dict[str, list[int]] = {}
    for p in ports:
        by_proto.setdefault(p["proto"], []).append(p["port"])
    if guard_dev:
        lines.append("  chain localnet_guard { type filter hook prerouting priority -150; policy accept;")
        lines.append(f'    iifname "{guard_dev}" ip daddr 127.0.0.0/8 counter drop')
        lines.append("  }")
    lines.append("  chain prerouting { type nat hook prerouting priority dstnat; policy accept;")
    for proto, nums in sorted(by_proto.items()):
        ports_text = ", ".join(str(n) for n in sorted(set(nums)))
        lines.append(f"    fib daddr type local ip daddr != 127.0.0.0/8 {proto} dport {{ {ports_text} }} counter "
                     f"dnat to {ct_address}")
    lines.append("  }")
    lines.append("  chain output { type nat hook output priority -100; policy accept;")
    for proto, nums in sorted(by_proto.items()):
        ports_text = ", ".join(str(n) for n in sorted(set(nums)))
        lines.append(f"    fib daddr type local {proto} dport {{ {ports_text} }} counter dnat to {ct_address}")
    lines.append("  }")
    lines.append("  chain postrouting { type nat hook postrouting priority srcnat; policy accept;")
    for proto, nums in sorted(by_proto.items()):
        ports_text = ", ".join(str(n) for n in sorted(set(nums)))
        lines.append(f"    ip daddr {ct_address} {proto} dport {{ {ports_text} }} counter masquerade")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _route_to(m: Migration, address: str) -> tuple[str, str]:
    """(the source's own address towards `address`, the interface it leaves by): what the container sees
    as the client of every forwarded (masqueraded) flow."""
    r = m.src.run(["ip", "-4", "-o", "route", "get", address])
    src, dev = re.search(r"\bsrc (\S+)", r.out), re.search(r"\bdev (\S+)", r.out)
    if not r.ok or src is None or dev is None:
        raise OperationError(f"{m.src.label} has no route to the container's address {address}: "
                             f"{(r.err or r.out)[-300:]}", hint="the source must reach the container's network "
                             "(the bridge, or a routed gateway); 'ip route get ADDRESS' there shows the path")
    return src.group(1), dev.group(1)


FW_OWNER = "migrate:{unit}"


def _fw_record(m: Migration) -> Callable[..., None]:
    """The converge's ledger writer: intent before, result after, like apply's."""
    def record(step: str, target: str, name: str, result: str | None, **details: Any) -> None:
        action = f"migrate.{step}" + (".intent" if result is None else "")
        m.app.record(action, target, name=name, service=m.unit, **({"result": result} if result else {}),
                     **details)
    return record


def _converge_firewall(m: Migration) -> dict[str, Any]:
    """The target's firewall made what its desired state says now (the strategy's rules and the store's
    extra ones) through apply's own firewall step, restricted to the target."""
    from pveguard.provision.cli import firewall_step
    from pveguard.provision.runlock import apply_lock
    from pveguard.security.isolation import enforced

    target = m.run.target
    if not any(c.name == target for c in m.app.strategy.containers):
        return {"converged": [], "note": f"{target} is not a strategy container: pveguard keeps no firewall for "
                                         "it; admit the moved ports there yourself"}
    if not enforced(m.app.strategy):
        return {"converged": [], "note": "firewall desired state is off in the strategy: nothing converged"}
    backend, _, _ = m.container()
    step = firewall_step(m.app, backend, {target})
    if step is None:
        return {"converged": [], "note": f"the {backend.name} backend has no firewall pveguard keeps"}
    with apply_lock(m.app.state_dir):
        return {"converged": step(_fw_record(m))}


def _open_firewall(m: Migration) -> dict[str, Any]:
    """The moved ports become part of the target's desired firewall state (security.extra_inbound),
    admitted only from the address the source reaches the container from, and converged at once.
    `plan` shows them, `apply` keeps them, `migrate rollback` removes them."""
    from pveguard.security.isolation import Rule

    st = m.state
    if "fw_source" not in st:
        st["fw_source"], st["route_dev"] = _route_to(m, st["ct_address"])
        m.save()
    if not any(c.name == m.run.target for c in m.app.strategy.containers):
        return {"rules": [], "note": f"{m.run.target} is not a strategy container: pveguard keeps no firewall "
                                     f"for it; admit the moved ports there from {st['fw_source']} yourself"}
    by_proto: dict[str, set[int]] = {}
    for p in m.doc["ports"]:
        if p["proto"] in ("tcp", "udp"):
            by_proto.setdefault(p["proto"], set()).add(int(p["port"]))
    why = f"migrate {m.unit} from {m.run.source}"
    rules = [Rule(proto, ",".join(str(n) for n in sorted(nums)), st["fw_source"], why=why)
             for proto, nums in sorted(by_proto.items())]
    owner = FW_OWNER.format(unit=m.unit)
    before, after = extra_inbound.set_rules(m.app.store, owner, m.run.target, rules)
    if before != after:
        m.app.record("migrate.firewall-desired", m.run.target, service=m.unit, owner=owner,
                     before=[r.text() for r in before], after=[r.text() for r in after])
    return {"rules": [r.text() for r in rules], **_converge_firewall(m)}


def _close_firewall(m: Migration) -> dict[str, Any]:
    """The moved ports leave the target's desired firewall state, and the firewall follows."""
    owner = FW_OWNER.format(unit=m.unit)
    gone = extra_inbound.drop(m.app.store, owner)
    if not gone:
        return {"removed": []}
    m.app.record("migrate.firewall-desired", m.run.target, service=m.unit, owner=owner,
                 before=[e.rule.text() for e in gone], after=[])
    removed = [e.rule.text() for e in gone]
    try:
        return {"removed": removed, **_converge_firewall(m)}
    except PveguardError as exc:
        # no longer desired either way: the rollback goes on, and the next apply removes what is left
        m.say(f"note: the firewall of {m.run.target} was not converged now ({exc.message}); 'pveguard apply' "
              "removes the moved ports' rules")
        return {"removed": removed, "converged": [], "note": exc.message}


def step_switch_traffic(m: Migration) -> dict[str, Any]:
    st = m.state
    ports = [p for p in m.doc["ports"] if p["proto"] in ("tcp", "udp")]
    if not ports:
        return {"forwarded": [], "note": "the service listens on no port: no traffic to switch"}
    firewall = _open_firewall(m)    # before the forward: its first packet is admitted
    dev = st["route_dev"]
    knobs = ["/proc/sys/net/ipv4/ip_forward", f"/proc/sys/net/ipv4/conf/{dev}/route_localnet"]
    if "ip_forward_before" not in st or "route_localnet_before" not in st:
        # journal first: the old values are saved before anything changes them, so a run killed in
        # between resumes (and rolls back) with the values from before the migration
        old = m.src.run(["cat", *knobs]).out.split()
        if len(old) != 2:
            raise OperationError(f"cannot read {' and '.join(knobs)} on {m.src.label}",
                                 hint="the source must be a Linux host (or a container with its own netns)")
        st.setdefault("ip_forward_before", old[0])
        st.setdefault("route_localnet_before", {"dev": dev, "value": old[1]})
        m.save()
    # forwarding on, and route_localnet on the container's interface (the source's own 127.0.0.1 clients)
    on = m.src.run(["sh", "-c", 'for f in "$@"; do [ "$(cat "$f")" = 1 ] || echo 1 > "$f"; cat "$f"; done', "sh",
                    *knobs]).out.split()
    if on != ["1", "1"]:
        raise OperationError(f"cannot turn on IPv4 forwarding and route_localnet of {dev} on {m.src.label}",
                             hint="net.ipv4.ip_forward and net.ipv4.conf.<if>.route_localnet must be writable "
                                  "there (a container needs its own netns)")
    _kill_hook("switch-traffic:forwarding-on")   # tests: killed between the change and the step's end
    guard = dev if st["route_localnet_before"]["value"] != "1" else None
    script = forward_rules(m.unit, st["ct_address"], ports, guard)
    m.src.check(["nft", "-f", "-"], "installing the port forward", input=script.encode())
    st["forward_table"] = table_name(m.unit)
    st["switched_at"] = time.time()
    m.save()
    if "source_stopped_at" in st:
        m.say(f"forward on: {st['switched_at'] - st['source_stopped_at']:.2f}s after the stop on the source")
    answers = {}
    for p in m.tcp_ports():
        want = st["baseline"][str(p)]

        def answers_as_before(p: int = p, want: dict[str, Any] = want) -> bool:
            return probe.same(want, probe.probe(st["src_address"], p, want["kind"]))
        ok = _wait(answers_as_before, 5)
        if not ok:
            raise OperationError(f"port {p} on {st['src_address']} does not answer as before through the forward",
                                 hint=f"'nft list table ip {table_name(m.unit)}' on the source; or 'pveguard migrate "
                                      f"rollback {m.unit}'")
        answers[str(p)] = True
    gap = st["switched_at"] - st["source_stopped_at"] if "source_stopped_at" in st else None
    return {"forwarded": [f"{p['proto']}/{p['port']}" for p in ports], "to": st["ct_address"],
            "switched_at": st["switched_at"], "firewall": firewall, "loopback": True,
            "table": st["forward_table"], "gap_seconds": round(gap, 3) if gap is not None else None}


def bundle_dir(app: AppContext, service: str) -> Path:
    return app.state_dir / "migrate" / service


def step_remove_from_host(m: Migration) -> dict[str, Any]:
    st = m.state
    bundle = bundle_dir(m.app, m.unit)
    bundle.mkdir(parents=True, exist_ok=True)
    names = [p["name"] for p in m.doc["packages"]]
    if not (bundle / "packages.txt").exists():
        q = m.src.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *names]) if names else None
        conf = m.src.run(["sh", "-c", 'cd / && tar -cpf - $(for p in "$@"; do [ -e "$p" ] && echo "$p"; done) '
                          '2>/dev/null', "sh", *[p.lstrip("/") for p in m.paths()]], timeout=1800)
        (bundle / "config.tar").write_bytes(conf.stdout)
        (bundle / "packages.txt.tmp").write_text(q.out if q else "")
        os.replace(bundle / "packages.txt.tmp", bundle / "packages.txt")
    m.src.run(["systemctl", "disable", "--now", m.unit])
    removed: list[str] = []
    if names:
        installed = [n for n in names if m.src.run(["dpkg-query", "-W", "-f", "${Status}", n]).out.endswith(
            " installed")]
        if installed:
            sim = m.src.run([*APT_ENV, "apt-get", "-s", "remove", *installed])
            others = sorted({line.split()[1] for line in sim.out.splitlines() if line.startswith("Remv ")}
                            - set(installed))
            if others:
                raise OperationError(f"removing {', '.join(installed)} on {m.src.label} would also remove "
                                     f"{', '.join(others)}", hint="those depend on the service; migrate or remove "
                                     "them first, then run this again (it resumes here)")
            _guard_allows(m, installed, "remove")
            r = m.src.run([*APT_ENV, "apt-get", "remove", "-y", "-q", *installed], timeout=1800)
            if not r.ok:
                raise OperationError(f"removing {', '.join(installed)} on {m.src.label} failed: {r.err[-500:]}",
                                     hint="see apt's message; run this again when it is fixed (it resumes here)")
            removed = installed
    st["removed_packages"] = sorted(set(st.get("removed_packages", [])) | set(removed))
    return {"disabled": m.unit, "removed": removed, "bundle": str(bundle),
            "packages": (bundle / "packages.txt").read_text().split()}


def _guard_allows(m: Migration, names: list[str], kind: str) -> None:
    """The guard's own decision for removing (or reinstalling) `names` on the source: core packages
    need an approval (`pveguard approve`); recorded in the ledger like the apt hook records it."""
    from pveguard.guard import approvals
    from pveguard.guard.aptproto import REMOVE, Action
    from pveguard.guard.decide import Candidate, decide, messages
    from pveguard.guard.install import policy_from_strategy
    from pveguard.packages.classify import Classifier
    from pveguard.packages.status import parse_status

    status = m.src.read_file("/var/lib/dpkg/status") or b""
    packages = parse_status(status.decode(errors="replace"))
    strategy = m.app.strategy
    policy = policy_from_strategy(strategy, m.app.state_dir, None)
    classifier = Classifier(packages, strategy.core_roots(), tuple(strategy.installation_policy.extra_allowed))
    versions = m.state.get("source_versions", {})
    cands = []
    for n in names:
        pkg = packages.get(n)
        if kind == "remove":
            action = Action(n, pkg.version if pkg else None, ">", None, REMOVE)
        else:
            action = Action(n, None, "<", versions.get(n) or (pkg.version if pkg else None), f"/{n}.deb")
        cands.append(Candidate(action, classifier.classify(n, pkg)))
    decision = decide(cands, policy, approvals.for_packages(m.app.store, names), time.time())
    m.app.record("migrate.guard-decision", m.unit, kind=kind, source=m.run.source, allowed=decision.allowed,
                 items=[i.as_dict() for i in decision.items])
    if not decision.allowed:
        if isinstance(m.src, Local):
            raise PolicyRefused("the guard refuses: " + "; ".join(messages(decision, policy)),
                                hint="approve with 'pveguard approve PACKAGE --reason ...', then run this again")
        m.say(f"note: the host's guard policy would refuse this on the host; {m.src.label} is not the host, "
              "so it is recorded, not enforced")
    if decision.used_approvals and isinstance(m.src, Local):
        approvals.consume(m.app.store, decision.used_approvals)


def step_validate(m: Migration) -> dict[str, Any]:
    backend, guest, ct = m.container()
    st = m.state
    problems: list[str] = []
    latency = {}
    for p in m.tcp_ports():
        kind = st["baseline"][str(p)]["kind"]
        after = probe.latency(st["src_address"], p, kind)
        latency[str(p)] = {"before": st.get("latency_before", {}).get(str(p)), "after": after}
        if after["failed"]:
            problems.append(f"port {p}: {after['failed']} of {after['count']} probes failed")
    expected = set(st.get("ct_ports_before", [])) | set(m.tcp_ports())
    open_now = _listening(ct)
    if open_now != expected:
        problems.append(f"{m.run.target} listens on {sorted(open_now)}, expected {sorted(expected)}")
    firewall = _firewall_pending(m, backend, guest)
    if firewall:
        problems.append(f"the firewall of {m.run.target} is not as its desired state says: {'; '.join(firewall)} "
                        "('pveguard apply' converges it)")
    backup = _backup(m, backend, guest)
    if not backup.get("ok"):
        problems.append(f"backup: {backup.get('detail')}")
    monitored = _monitored(m, backend, guest)
    if not monitored["ok"]:
        problems.append(monitored["detail"])
    if problems:
        raise OperationError(f"validation of {m.unit} in {m.run.target}: " + "; ".join(problems),
                             hint="fix it and run 'pveguard migrate run' again (only validate runs again)")
    return {"latency": latency, "open_ports": sorted(open_now), "backup": backup, "monitoring": monitored,
            "firewall": "as desired (the moved ports admitted from the source)" if m.state.get("fw_source") and
            _fw_kept(m) else "not kept by pveguard for this target"}


def _fw_kept(m: Migration) -> bool:
    from pveguard.security.isolation import enforced

    return enforced(m.app.strategy) and any(c.name == m.run.target and c.network.firewall
                                            for c in m.app.strategy.containers)


def _firewall_pending(m: Migration, backend: Backend, guest: Guest) -> list[str]:
    """The target's firewall changes a plan would still make (the moved ports missing, or other drift)."""
    if not _fw_kept(m):
        return []
    from pveguard.provision.cli import compute_plan

    p = compute_plan(m.app, backend, False, {m.run.target})
    return [c.text() for c in p.firewall.changes if c.target == f"ct/{guest.vmid}"]


def _backup(m: Migration, backend: Backend, guest: Guest) -> dict[str, Any]:
    from pveguard.backends.lxc import LxcBackend

    if isinstance(backend, LxcBackend):
        from pveguard.backup.lxcdump import dump_container
        from pveguard.backup.verify import verify_archive

        dump_dir = m.app.state_dir / "dump"
        dump_dir.mkdir(parents=True, exist_ok=True)
        result = dump_container(str(guest.vmid), guest.vmid, dump_dir, backend.lxcpath, mode="snapshot",
                                notes=f"{guest.name} after migrating {m.unit} (pveguard)")
        v = verify_archive(result.archive)
        m.app.record("backup.container.run", f"ct/{guest.vmid}", archive=result.archive.name, reason="migrate")
        return {"ok": v.ok, "archive": str(result.archive), "sha256": v.sha256, "entries": v.entries,
                "detail": "; ".join(v.problems) if not v.ok else "verified"}
    return {"ok": True, "archive": None,
            "detail": "PVE: the container is covered by the vzdump job of 'pveguard backup apply'; "
                      "verify with 'pveguard backup verify'"}


def _monitored(m: Migration, backend: Backend, guest: Guest) -> dict[str, Any]:
    from pveguard.provision.cli import instance_id
    from pveguard.provision.observe import observe
    from pveguard.provision.plan import managed_guests

    names = {g.name for g in managed_guests(observe(backend), instance_id(m.app))}
    sampled = any(s.vmid == guest.vmid for s in backend.stats())
    t = m.app.strategy.monitoring.thresholds
    ok = guest.name in names and sampled
    return {"ok": ok, "alerts": {"cpu": t.cpu, "memory": t.memory, "disk": t.disk},
            "detail": "managed by this installation and sampled by the monitor" if ok else
            f"{guest.name} is not monitored (not this installation's container, or no usage sample): "
            f"'pveguard adopt {guest.name}'"}


STEPS: dict[str, Callable[[Migration], dict[str, Any]]] = {
    "create": step_create, "install": step_install, "migrate-data": step_migrate_data, "test": step_test,
    "switch-traffic": step_switch_traffic, "remove-from-host": step_remove_from_host, "validate": step_validate,
}


# --- rollback ---------------------------------------------------------------------------------------


def rollback(app: AppContext, service: str, say: Progress) -> Run:
    """Undo the finished steps: the service back on the source with what it wrote in the container
    meanwhile, the forward removed. Resumable like run (each undo is idempotent)."""
    journal = Journal(app.store)
    unit_name = service if "." in service else f"{service}.service"
    run = journal.get(unit_name)
    if run is None:
        raise UsageError(f"no migration of {unit_name} in {app.state_dir}", hint="see 'pveguard migrate status'")
    if run.state == "rolled-back":
        say(f"{unit_name} is already rolled back")
        return run
    m = Migration(app, journal, run, endpoints.parse_source(run.source, app.strategy.target.lxc.lxcpath), say)
    journal.save(run, "rolling-back")
    app.record("migrate.rollback.intent", unit_name, steps=[s for s in plan.RUN_STEPS if s in run.steps])
    touched = {name for name, s in run.steps.items() if s.state in ("done", "running", "failed")}
    st = m.state

    def undo(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name not in touched:
            return
        say(f"undo {name} ...")
        detail = fn()
        journal.save(run)
        journal.step(run, name, "undone", {**run.steps[name].detail, "undo": detail})
        app.record(f"migrate.rollback.{name}", unit_name, result="ok", **detail)

    undo("validate", lambda: {})
    undo("remove-from-host", lambda: _undo_remove(m))
    # data back, service started on the source, then the forward removed: the gap stays short
    data: dict[str, Any] = {}
    if "migrate-data" in touched:
        data = _undo_data(m)
    undo("switch-traffic", lambda: _undo_switch(m))
    undo("test", lambda: {"firewall": _close_firewall(m)})
    undo("migrate-data", lambda: data)
    undo("install", lambda: _undo_install(m))
    undo("create", lambda: _undo_create(m))
    if extra_inbound.of_owner(app.store, FW_OWNER.format(unit=unit_name)):
        _close_firewall(m)   # opened by a step the journal lost track of: still never left behind
    st.pop("baseline", None)
    journal.save(run, "rolled-back")
    app.record("migrate.rollback", unit_name, result="ok")
    return run


def _undo_create(m: Migration) -> dict[str, Any]:
    """The container is kept; what this migration added to the desired state (a floor, a container
    outside the strategy) is released, so the strategy's sizes count again and `apply --prune`
    removes a container the migration created."""
    from pveguard.provision import floors

    released = floors.release(m.app.store, f"migrate {m.unit}")
    return {"note": f"{m.run.target} is kept ('pveguard plan' shows what the strategy makes of it now)",
            "released": released}


def _undo_remove(m: Migration) -> dict[str, Any]:
    bundle = bundle_dir(m.app, m.unit)
    specs = (bundle / "packages.txt").read_text().split() if (bundle / "packages.txt").exists() else []
    missing = [s for s in specs if not m.src.run(["dpkg-query", "-W", "-f", "${Status}", s.split("=")[0]]).out
               .endswith(" installed")]
    if missing:
        _guard_allows(m, [s.split("=")[0] for s in missing], "install")
        m.src.write_file(POLICY_RC, NO_START, 0o755)
        try:
            upd = m.src.run([*APT_ENV, "apt-get", "update", "-q"], timeout=900)
            r = m.src.run([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                           "-o", "Dpkg::Options::=--force-confold", *missing], timeout=1800)
            if not r.ok:
                r = m.src.run([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                               "-o", "Dpkg::Options::=--force-confold", *[s.split("=")[0] for s in missing]],
                              timeout=1800)
            if not r.ok:
                raise OperationError(f"reinstalling {' '.join(missing)} on {m.src.label} failed: {r.err[-500:]} "
                                     f"{upd.err[-200:]}", hint=f"the bundle is in {bundle}; run rollback again")
        finally:
            m.src.run(["rm", "-f", POLICY_RC])
    conf = bundle / "config.tar"
    if conf.exists() and conf.stat().st_size:
        # the configuration as it was (the data then comes back from the container, newer)
        m.src.check(["tar", "-C", "/", "--same-owner", "-xpf", "-"], "restoring the config bundle",
                    input=conf.read_bytes())
    m.src.run(["systemctl", "daemon-reload"])
    return {"reinstalled": missing}


def _undo_data(m: Migration) -> dict[str, Any]:
    st = m.state
    synced = 0
    if st.get("ct_started"):
        _, _, ct = m.container()
        ct.run(["systemctl", "stop", m.unit])
        paths = [p["path"] for p in m.doc["data_paths"] + m.doc["config_paths"]]
        synced = endpoints.tar_copy(ct, m.src, paths)
        endpoints.delete_extras(ct, m.src, paths)
        ct.run(["systemctl", "disable", m.unit])
    m.src.run(["systemctl", "daemon-reload"])
    if st.get("enabled", True):
        m.src.run(["systemctl", "enable", m.unit])
    m.src.check(["systemctl", "start", m.unit], f"starting {m.unit} on the source")
    st["ct_started"] = False
    return {"synced_back_bytes": synced, "started_on_source": True}


def _undo_switch(m: Migration) -> dict[str, Any]:
    st = m.state
    t = st.get("forward_table") or table_name(m.unit)
    m.src.run(["nft", "delete", "table", "ip", t])
    before = st.get("ip_forward_before")
    if before is not None and before != "1":
        m.src.run(["sh", "-c", f"echo {int(before)} > /proc/sys/net/ipv4/ip_forward"])
    localnet = st.get("route_localnet_before")
    if localnet is not None and localnet["value"] != "1":
        m.src.run(["sh", "-c", 'echo "$2" > "/proc/sys/net/ipv4/conf/$1/route_localnet"', "sh", localnet["dev"],
                   str(int(localnet["value"]))])
    return {"removed_table": t, "ip_forward": before, "route_localnet": localnet, "firewall": _close_firewall(m)}


def _undo_install(m: Migration) -> dict[str, Any]:
    had = set(m.state.get("ct_had_packages", []))
    names = [p["name"] for p in m.doc["packages"] if p["name"] not in had]
    if not names:
        return {"removed": []}
    _, _, ct = m.container()
    ct.run([*APT_ENV, "apt-get", "remove", "-y", "-q", *names], timeout=1800)
    return {"removed": names}
