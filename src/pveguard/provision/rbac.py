"""The RBAC part of plan/apply (security.access.rbac): per container role a PVE user, token, roles and ACLs.

On PVE the plan reads users, roles, tokens and ACLs back, and checks (one `grep` per running container)
that each role's container holds its token file naming the role's token; apply re-reads everything after the
containers are created and converges, delivering new secrets. The lxc backend has no PVE, so no RBAC:
the plan says so and nothing is changed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from pveguard.backends.base import MANAGED_TAG, Backend, Guest
from pveguard.backends.proxmox import FileChecks, ProxmoxBackend
from pveguard.errors import PveguardError
from pveguard.provision.firewall import managed_cts
from pveguard.provision.plan import Plan
from pveguard.security import rbac, rbac_state
from pveguard.security.isolation import Ct, FwPlan
from pveguard.store import Store
from pveguard.strategy.models import Strategy

LXC_NOTE = ("RBAC (security.access.rbac) applies to the proxmox backend: the lxc backend has no PVE users or "
            "API tokens; nothing RBAC-related is changed")
OFF_NOTE = "security.access.rbac is false: PVE users, tokens and ACLs are left as they are"


def guests_of(p: Plan) -> dict[int, Guest]:
    return {a.vmid: a.guest for a in p.actions if a.guest is not None and a.vmid is not None}


class EarlyChecks:
    """The token-file checks of `plan`, started from the guest listing instead of after every API read.

    All they need is which managed containers run on which node, and the listing says that: every running
    LXC guest carrying the managed tag and named like a strategy container is checked at once (nodes in
    parallel, ProxmoxBackend.start_has_files) while the configs, firewall and RBAC objects are read. The
    plan then takes the answers of the containers it checks (this installation's, running, on the node the
    listing named) and checks any it still lacks (one renamed since it was created) as before, so the
    answers and their meanings are the ones has_files gives; answers for guests the plan does not check (a
    same-named container of another installation) are dropped. Planning that fails first ends the checks
    (close)."""

    def __init__(self, backend: ProxmoxBackend, names: dict[str, str]) -> None:
        self.backend, self.names = backend, names  # container name -> the token id line its file must hold
        self.started: dict[int, Guest] = {}
        self.expected: dict[int, str] = {}
        self.run: FileChecks | None = None

    def listed(self, guests: list[Guest]) -> None:
        up = [g for g in guests if g.type == "lxc" and g.status == "running" and MANAGED_TAG in g.tags
              and g.name in self.names]
        if up:
            self.started = {g.vmid: g for g in up}
            self.expected = {g.vmid: self.names[g.name] for g in up}
            self.run = self.backend.start_has_files(up, rbac.SECRET_PATH, timeout=60 + 2 * len(up),
                                                    expect=self.expected)

    def answers(self, up: list[Guest], expect: dict[int, str]) -> dict[int, bool | str]:
        """The answers for `up` (the plan's running containers; `expect`: the token id line each file must hold):
        those started early for the same node and line, the rest checked now."""
        got, self.run = (self.run.result() if self.run is not None else {}), None
        out = {g.vmid: got[g.vmid] for g in up
               if g.vmid in got and (s := self.started.get(g.vmid)) is not None and s.node == g.node
               and self.expected.get(g.vmid) == expect.get(g.vmid)}
        rest = [g for g in up if g.vmid not in out]
        if rest:
            out.update(self.backend.has_files(rest, rbac.SECRET_PATH, timeout=60 + 2 * len(rest), expect=expect))
        return out

    def close(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.run = None


def early_checks(strategy: Strategy, backend: Backend, only: set[str] | None) -> EarlyChecks | None:
    """The token-file checks to start from the listing: on PVE with RBAC on, for a whole plan (not --only)."""
    if only is not None or not isinstance(backend, ProxmoxBackend) or not rbac.enforced(strategy):
        return None
    return EarlyChecks(backend, {c.name: rbac.id_line_of(c.role) for c in strategy.containers})


def has_secret(backend: Backend, guests: dict[int, Guest], cts: list[Ct] | None = None,
               early: EarlyChecks | None = None, expect: dict[int, str] | None = None) -> rbac.HasSecret:
    """Whether each container holds the token file -- with `expect` (vmid -> its role's token id line,
    rbac.id_line_of), a file naming that token (another role's or an old token's is no file: rewritten). With `cts`
    (the plan's), the running ones are checked up front in one batch (one process per node,
    ProxmoxBackend.has_files; with `early`, mostly started from the listing already); others one `pct exec` each."""
    batch: dict[int, bool | str] = {}
    expect = expect or {}
    if cts and isinstance(backend, ProxmoxBackend):
        up = [g for c in cts if (g := guests.get(c.vmid)) is not None and g.status == "running"]
        if early is not None:
            batch = early.answers(up, expect)
        elif up:
            batch = backend.has_files(up, rbac.SECRET_PATH, timeout=60 + 2 * len(up), expect=expect)

    def check(ct: Ct) -> bool | str:
        g = guests.get(ct.vmid)
        if g is None or g.status != "running":
            return "not running"
        if ct.vmid in batch:
            return batch[ct.vmid]
        line = expect.get(ct.vmid)
        try:
            r = backend.exec(g, ProxmoxBackend.check_argv(rbac.SECRET_PATH, line), timeout=60)
        except PveguardError as exc:
            return f"pct exec does not reach it: {exc.message}"
        if (answer := ProxmoxBackend.check_answer(r.returncode, r.stderr, line is not None)) is None:
            # 255: ssh or pct failed, not the check
            return f"pct exec does not reach it: {(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1]}"
        return answer
    return check


def deliver(backend: Backend, guests: dict[int, Guest]) -> rbac.Deliver:
    """Put the token file into a container: /etc/pveguard (0700) then the file, 0600, root-owned."""
    def put(ct: Ct, content: str) -> None:
        g = guests[ct.vmid]
        backend.exec(g, ["mkdir", "-p", "-m", "0700", os.path.dirname(rbac.SECRET_PATH)], timeout=60)
        with tempfile.TemporaryDirectory(prefix="pveguard-token-") as d:
            path = os.path.join(d, "pve-token")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            backend.push(g, path, rbac.SECRET_PATH, mode=0o600)
    return put


def running_of(guests: dict[int, Guest]) -> Callable[[rbac.RoleWant], list[Ct]]:
    """The role's containers that run (tokens rotate delivers to these; a failure is the command's)."""
    def running(w: rbac.RoleWant) -> list[Ct]:
        return [c for c in w.containers if (g := guests.get(c.vmid)) is not None and g.status == "running"]
    return running


def remember(store: Store) -> rbac.Rotated:
    def done(role: str, cts: list[Ct]) -> None:
        rbac_state.save(store, role, rbac.tokenid_of(role),
                        [{"container": c.name, "vmid": c.vmid, "path": rbac.SECRET_PATH} for c in cts])
    return done


def forget(store: Store) -> Callable[[str], None]:
    """A removed role's delivery record goes with its user and token."""
    def gone(role: str) -> None:
        rbac_state.forget(store, role)
    return gone


def current(states: dict[str, rbac_state.TokenState], wants: list[rbac.RoleWant],
            check: rbac.HasSecret) -> rbac.HasSecret:
    """A file that is there counts only if this installation put the current secret there: a container that
    was not running at the last rotation still holds the old secret (the state says where the new one went).
    states: rbac_state.load()."""
    role_of = {c.vmid: w.role for w in wants for c in w.containers}

    def has(ct: Ct) -> bool | str:
        got = check(ct)
        st = states.get(role_of.get(ct.vmid, ""))
        if got is True and st is not None and ct.vmid not in {d.get("vmid") for d in st.delivered}:
            return False  # an older secret
        return got
    return has


def rbac_plan(strategy: Strategy, backend: Backend, p: Plan, store: Store, instance: str,
              early: EarlyChecks | None = None) -> FwPlan:
    """The RBAC changes (PVE) or why there are none (lxc, switched off); `early`: the token-file checks
    started from the listing (early_checks)."""
    if not isinstance(backend, ProxmoxBackend):
        return FwPlan(notes=[LXC_NOTE])
    if not rbac.enforced(strategy):
        return FwPlan(notes=[OFF_NOTE])
    wants = rbac.desired_rbac(strategy, managed_cts(p), instance)
    cts = [c for w in wants for c in w.containers]
    expect = {c.vmid: rbac.id_line_of(w.role) for w in wants for c in w.containers}
    states = rbac_state.load(store)
    seen = rbac.observe_rbac(backend.call, wants,
                             current(states, wants, has_secret(backend, guests_of(p), cts, early, expect)), instance)
    seen.left = left_roles(states, wants, p)
    return rbac.plan_rbac(wants, seen, instance)


def left_roles(states: dict[str, rbac_state.TokenState], wants: list[rbac.RoleWant], p: Plan) -> dict[str, list[str]]:
    """Per role: the containers its current secret was delivered to that are no longer of the role but still
    exist (the role changed with the name kept, or the container left the strategy and was not pruned). A
    container this apply deletes does not count: it goes before the RBAC step."""
    deleted = {a.vmid for a in p.actions if a.kind == "delete"}
    there = {vmid: g.name for vmid, g in guests_of(p).items() if vmid not in deleted}
    out: dict[str, list[str]] = {}
    for w in wants:
        st = states.get(w.role)
        if st is None:
            continue
        own = {c.vmid for c in w.containers}
        names = sorted({there[v] for d in st.delivered if isinstance(v := d.get("vmid"), int)
                        and v in there and v not in own})
        if names:
            out[w.role] = names
    return out
