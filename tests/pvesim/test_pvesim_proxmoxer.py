"""proxmoxer (https backend, token and password auth) drives a full LXC lifecycle against pvesim."""

from __future__ import annotations

import pytest
from proxmoxer.core import ResourceException
from proxmoxer.tools import Tasks

from pvesim.testing import SimHandle

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def _wait(px: object, upid: str) -> dict:
    status = Tasks.blocking_status(px, upid, timeout=30, polling_interval=0.05)
    assert status is not None, f"task {upid} did not finish"
    return status


@pytest.mark.parametrize("auth", ["token", "password"])
def test_full_lxc_lifecycle(pvesim: SimHandle, auth: str) -> None:
    px = pvesim.proxmoxer(auth)
    node = px.nodes("pve1")
    vmid = int(px.cluster.nextid.get())
    upid = node.lxc.post(
        vmid=vmid,
        ostemplate=TEMPLATE,
        rootfs="local-lvm:8",
        hostname="web1",
        net0="name=eth0,bridge=vmbr0,ip=dhcp",
        tags="pveguard;Web",
        unprivileged=1,
    )
    assert upid.startswith("UPID:pve1:") and f":vzcreate:{vmid}:" in upid
    # while the task runs the config carries lock: create
    assert node.lxc(vmid).config.get().get("lock") == "create"
    st = _wait(px, upid)
    assert st["exitstatus"] == "OK"
    cfg = node.lxc(vmid).config.get()
    assert "lock" not in cfg
    assert cfg["rootfs"] == f"local-lvm:vm-{vmid}-disk-0,size=8G"
    assert cfg["tags"] == "pveguard;web"
    assert cfg["net0"].startswith("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:") and cfg["net0"].endswith(
        ",ip=dhcp,type=veth"
    )

    assert _wait(px, node.lxc(vmid).status.start.post())["exitstatus"] == "OK"
    cur = node.lxc(vmid).status.current.get()
    assert cur["status"] == "running" and cur["maxmem"] == 512 * 2**20

    # running CT: memory hot-plugs, hostname is fast-plug, ostype goes pending
    node.lxc(vmid).config.put(memory=1024, digest=cfg["digest"], ostype="ubuntu")
    pending = {e["key"]: e for e in node.lxc(vmid).pending.get()}
    assert pending["ostype"]["pending"] == "ubuntu" and pending["memory"]["value"] == 1024
    with pytest.raises(ResourceException) as ei:
        node.lxc(vmid).config.put(memory=2048, digest=cfg["digest"])
    assert ei.value.status_code == 500
    assert ei.value.content == "detected modified configuration - file changed by other user? Try again."

    # proxmoxer sends True as "True": PVE (and pvesim) answer 400
    with pytest.raises(ResourceException) as ei:
        node.lxc(vmid).status.stop.post(skiplock=True)
    assert ei.value.status_code == 400
    assert ei.value.errors == {"skiplock": "type check ('boolean') failed - got 'True'"}

    assert _wait(px, node.lxc(vmid).status.shutdown.post())["exitstatus"] == "OK"
    assert node.lxc(vmid).config.get()["ostype"] == "ubuntu"  # pending applied on stop

    assert _wait(px, node.lxc(vmid).migrate.post(target="pve2"))["exitstatus"] == "OK"
    assert px.nodes("pve2").lxc(vmid).config.get()["rootfs"].startswith(f"local-lvm:vm-{vmid}-disk-0")

    assert _wait(px, px.nodes("pve2").lxc(vmid).delete(purge=1))["exitstatus"] == "OK"
    assert all(r.get("vmid") != vmid for r in px.cluster.resources.get(type="vm"))


def test_removed_mount_point_becomes_unused(pvesim: SimHandle) -> None:
    px = pvesim.proxmoxer()
    node = px.nodes("pve1")
    upid = node.lxc.post(vmid=300, ostemplate=TEMPLATE, rootfs="local-lvm:4", mp0="local-lvm:2,mp=/data")
    _wait(px, upid)
    cfg = node.lxc(300).config.get()
    assert cfg["mp0"] == "local-lvm:vm-300-disk-1,mp=/data,size=2G"
    node.lxc(300).config.put(delete="mp0")
    cfg = node.lxc(300).config.get()
    assert "mp0" not in cfg and cfg["unused0"] == "local-lvm:vm-300-disk-1"
    vols = {v["volid"] for v in node.storage("local-lvm").content.get(vmid=300)}
    assert vols == {"local-lvm:vm-300-disk-0", "local-lvm:vm-300-disk-1"}
    node.lxc(300).config.put(delete="unused0")
    assert {v["volid"] for v in node.storage("local-lvm").content.get(vmid=300)} == {"local-lvm:vm-300-disk-0"}
