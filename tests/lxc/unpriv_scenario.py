"""Run inside a private mount namespace by test_unprivileged_container: create, start and inspect
one unprivileged container through LxcBackend, destroy it, and print what was seen as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pveguard.backends.base import GuestSpec, NetSpec
from pveguard.backends.lxc import LxcBackend
from pveguard.strategy.models import LxcTarget


def main(root: str, cache: str, bridge: str) -> None:
    b = LxcBackend(LxcTarget(lxcpath=f"{root}/lxc", disk_dir=f"{root}/disks", template_cache=cache))
    seen: dict[str, object] = {"unprivileged_ok": b.facts.unprivileged_ok}
    g = b.create(GuestSpec(name="pgt-unpriv", role="test", cores=1, memory_mib=192, swap_mib=0, disk_gib=1,
                           net=NetSpec(bridge=bridge, vlan=30, ip="10.250.30.5/24"), unprivileged=True))
    try:
        b.start(g)
        seen["config_unprivileged"] = b.get_config(g).get("unprivileged", 0)
        seen["lxc_config_idmap"] = [line for line in Path(f"{root}/lxc/{g.vmid}/config").read_text().splitlines()
                                    if line.startswith("lxc.idmap")]
        seen["uid_map"] = b.exec(g, ["cat", "/proc/self/uid_map"]).stdout.split()
        seen["whoami"] = b.exec(g, ["id", "-u"]).stdout.strip()
        seen["system"] = b.exec(g, ["systemctl", "is-system-running"]).stdout.strip()
        seen["passwd_owner"] = b.exec(g, ["stat", "-c", "%u", "/usr/bin/passwd"]).stdout.strip()
        seen["limit"] = b.cgroup_value(g, "memory.max" if b.facts.layout.version == 2 else "memory.limit_in_bytes")
        seen["host_uid_of_init"] = next(line.split()[1] for line in
                                        Path(f"/proc/{b._status(g.vmid)[1]}/status").read_text().splitlines()
                                        if line.startswith("Uid:"))
    finally:
        b.destroy(g)
    seen["after_destroy"] = [x.name for x in b.list_guests()]
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:4])
