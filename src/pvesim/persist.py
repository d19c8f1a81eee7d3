"""Saving and loading the emulator state (--state FILE) as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

from pvesim.access import AclEntry, Token, User
from pvesim.state import Guest, Sim, Volume


def save_state(sim: Sim, path: str) -> None:
    """Write guests (with their packages and offered upgrades), volumes, pools, jobs, firewall, HA, notifications
    and access config atomically."""
    with sim.lock:
        doc: dict[str, Any] = {
            "version": 1,
            "now": sim.now(),
            "nodes": {n: {"online": x.online, "level": x.level, "maintenance": x.maintenance}
                      for n, x in sim.nodes.items()},
            "guests": [
                {
                    "vmid": g.vmid,
                    "type": g.type,
                    "node": g.node,
                    "config": g.config,
                    "status": g.status,
                    "started_at": g.started_at,
                    "pending": g.pending,
                    "pending_delete": g.pending_delete,
                    "override": g.override,
                    "snapshots": g.snapshots,
                }
                for g in sim.guests.values()
            ],
            "volumes": [
                {"node": k[0], "storage": k[1], "volumes": [asdict(v) for v in vs.values()]}
                for k, vs in sim.volumes.items()
            ],
            "pools": {
                k: {
                    "comment": v.get("comment", ""),
                    "vms": sorted(v.get("vms", set())),
                    "storage": sorted(v.get("storage", set())),
                }
                for k, v in sim.pools.items()
            },
            "backup_jobs": sim.backup_jobs,
            "ha_resources": sim.ha_resources,
            "ha_groups": sim.ha_groups,
            "ha_manager": sim.ha_manager,
            "fw_cluster": sim.fw_cluster,
            "fw_groups": sim.fw_groups,
            "fw_guest": {str(k): v for k, v in sim.fw_guest.items()},
            "fw_log": sim.fw_log,
            "notif_endpoints": sim.notif_endpoints,
            "notif_matchers": sim.notif_matchers,
            "datacenter": sim.datacenter,
            "users": [{**asdict(u), "groups": sorted(u.groups)} for u in sim.access.users.values()],
            "groups": sim.access.groups,
            "tokens": [asdict(t) for t in sim.access.tokens.values()],
            "acl": [asdict(e) for e in sim.access.acl],
            "roles": {k: sorted(v) for k, v in sim.access.roles.items()},
            "packages": {str(k): v for k, v in sim.guest_packages.items()},
            # what apt inside each guest is offered: its package lists live on the guest's disk, and
            # PVE keeps a node's list too (pve-manager PVE/API2/APT.pm: /var/lib/pve-manager/pkgupdates)
            "upgrades": {str(k): v for k, v in sim.guest_upgrades.items()},
        }
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def load_state(sim: Sim, path: str) -> None:
    """Replace the sim's state with a saved one (the root password and token stay those of this run)."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    with sim.lock:
        for n, v in doc.get("nodes", {}).items():
            if n in sim.nodes:
                sim.nodes[n].online = bool(v.get("online", True))
                sim.nodes[n].level = v.get("level", "")
                sim.nodes[n].maintenance = bool(v.get("maintenance", False))
        sim.guests = {}
        for gd in doc.get("guests", []):
            if gd["node"] not in sim.nodes:
                continue
            g = Guest(
                int(gd["vmid"]),
                gd["type"],
                gd["node"],
                gd["config"],
                gd["status"],
                gd["started_at"],
                gd.get("pending", {}),
                gd.get("pending_delete", []),
                gd.get("override", {}),
                gd.get("snapshots", {}),
            )
            sim.guests[g.vmid] = g
        sim.volumes = {}
        for entry in doc.get("volumes", []):
            vols = sim.volumes.setdefault((entry["node"], entry["storage"]), {})
            for v in entry["volumes"]:
                vols[v["volid"]] = Volume(**v)
        sim.pools = {
            k: {"comment": v["comment"], "vms": set(v["vms"]), "storage": set(v["storage"])}
            for k, v in doc.get("pools", {}).items()
        }
        sim.access.pools_changed(sim.pools)
        sim.backup_jobs = doc.get("backup_jobs", {})
        sim.ha_resources = doc.get("ha_resources", {})
        sim.ha_groups = doc.get("ha_groups", {})
        sim.ha_manager = bool(doc.get("ha_manager", bool(sim.ha_resources)))
        sim.fw_cluster = doc.get("fw_cluster", sim.fw_cluster)
        sim.fw_groups = doc.get("fw_groups", {})
        sim.fw_guest = {int(k): v for k, v in doc.get("fw_guest", {}).items()}
        sim.fw_log = {str(k): list(v) for k, v in doc.get("fw_log", {}).items()}
        sim.notif_endpoints = doc.get("notif_endpoints", sim.notif_endpoints)
        sim.notif_matchers = doc.get("notif_matchers", sim.notif_matchers)
        sim.datacenter = doc.get("datacenter", sim.datacenter)
        acc = sim.access
        for u in doc.get("users", []):
            if u["userid"] == "root@pam":
                continue
            acc.users[u["userid"]] = User(**{**u, "groups": set(u["groups"])})
        acc.groups = doc.get("groups", {})
        for t in doc.get("tokens", []):
            if (t["userid"], t["tokenid"]) != ("root@pam", "pvesim"):
                acc.tokens[(t["userid"], t["tokenid"])] = Token(**t)
        acc.acl = [AclEntry(**e) for e in doc.get("acl", [])]
        for k, v in doc.get("roles", {}).items():
            acc.roles.setdefault(k, frozenset(v))
        sim.guest_packages = {int(k): v for k, v in doc.get("packages", {}).items()}
        sim.guest_upgrades = {int(k): v for k, v in doc.get("upgrades", {}).items()}
        acc.changed()
        sim.changed()
