"""Property tests: what apply writes reads back as 'unchanged' (no perpetual diffs)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pveguard.backends.proxmox import ProxmoxBackend, PveSettings
from pveguard.provision.apply import update_params
from pveguard.provision.desired import actual_fields, desired_fields, desired_state
from pveguard.provision.plan import diff_fields
from pveguard.strategy.models import Strategy

containers = st.fixed_dictionaries({
    "name": st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    "role": st.sampled_from(["monitoring", "backup", "devtools", "gateway", "Web"]),
    "purpose": st.text(alphabet="abc xyz", max_size=20),
    "resources": st.fixed_dictionaries({
        "cores": st.integers(1, 64), "memory": st.integers(16, 65536).map(lambda m: f"{m}M"),
        "swap": st.integers(0, 8192).map(lambda m: f"{m}M"), "storage": st.integers(1, 500).map(lambda g: f"{g}G"),
        "cpulimit": st.sampled_from([0, 0.5, 1, 2.5]), "cpuunits": st.integers(1, 10000)}),
    "network": st.fixed_dictionaries({
        "bridge": st.sampled_from(["vmbr0", "vmbr1"]), "vlan": st.integers(1, 4094),
        "ip": st.sampled_from(["dhcp", "10.0.0.5/24", "192.168.1.9/16"]), "firewall": st.booleans()}),
    "features": st.fixed_dictionaries({}, optional={"nesting": st.booleans(), "keyctl": st.booleans(),
                                                    "fuse": st.booleans()}),
    "onboot": st.booleans(), "unprivileged": st.booleans(),
    "startup": st.fixed_dictionaries({"order": st.integers(0, 9)}, optional={"up": st.integers(0, 300)}),
    "tags": st.lists(st.sampled_from(["prod", "EU", "db"]), max_size=2),
})


def as_pve_stores_it(params: dict[str, Any], vmid: int) -> dict[str, Any]:
    """What GET .../config returns after a create with these parameters (pve-container's rules)."""
    cfg = {k: v for k, v in params.items() if k not in ("vmid", "ostemplate")}
    storage, size = str(cfg.pop("rootfs")).split(":")
    cfg["rootfs"] = f"{storage}:vm-{vmid}-disk-0,size={size}G"
    cfg["net0"] = cfg["net0"] + ",hwaddr=BC:24:11:12:34:56,type=veth"
    cfg["tags"] = ";".join(sorted({t.lower() for t in str(cfg["tags"]).split(";")}))
    if not cfg.get("unprivileged"):
        cfg.pop("unprivileged", None)
    cfg["description"] = cfg["description"] + "\n"
    cfg["digest"] = "f" * 40
    return cfg


@settings(max_examples=200, deadline=None)
@given(containers)
def test_created_config_reads_back_unchanged(c: dict[str, Any]) -> None:
    [d] = desired_state(Strategy.model_validate({"containers": [c]}), "i1")
    backend = ProxmoxBackend(PveSettings(mode="https"), api=object())
    cfg = as_pve_stores_it(backend.create_params(d.spec, 123, "local:vztmpl/x.tar.zst"), 123)
    assert diff_fields(desired_fields(d.spec), actual_fields(cfg)) == []


@settings(max_examples=200, deadline=None)
@given(containers, containers)
def test_update_params_converge(old: dict[str, Any], new: dict[str, Any]) -> None:
    new = {**new, "name": old["name"], "unprivileged": old["unprivileged"]}
    [d_old] = desired_state(Strategy.model_validate({"containers": [old]}), "i1")
    [d_new] = desired_state(Strategy.model_validate({"containers": [new]}), "i1")
    backend = ProxmoxBackend(PveSettings(mode="https"), api=object())
    cfg = as_pve_stores_it(backend.create_params(d_old.spec, 123, "local:vztmpl/x.tar.zst"), 123)
    changes = diff_fields(desired_fields(d_new.spec), actual_fields(cfg))
    params, delete = update_params(changes, cfg)
    # apply the PUT the way PVE does: set keys, delete keys, grow rootfs through resize
    size = params.pop("rootfs", None)
    params.pop("digest", None)
    cfg.update(params)
    for k in delete:
        cfg.pop(k, None)
    if size:
        cfg["rootfs"] = cfg["rootfs"].rsplit(",size=", 1)[0] + f",size={size}"
    left = diff_fields(desired_fields(d_new.spec), actual_fields(cfg))
    assert all(not c.possible for c in left), left
    assert "hwaddr=BC:24:11:12:34:56" in cfg["net0"]
