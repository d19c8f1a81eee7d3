"""Why installing packages in a container failed, from what ssh, pct and apt printed.

`install_packages` runs `apt-get update` and `apt-get install` through the backend's exec: on
Proxmox VE that is `pct exec` on the guest's node, over `ssh -o BatchMode=yes` when pveguard runs
elsewhere. Each layer fails in its own words, and each needs a different fix: an ssh key, the
node's address, a stopped container, the container's network, or its apt sources. One generic
"check the container's network and apt sources" sent admins to the wrong place.

The patterns are the tools' own messages (OpenSSH's ssh, PVE's pct, apt); ssh reports its own
failures with exit status 255.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pveguard.backends.base import ExecResult

Kind = Literal["ssh-auth", "ssh-host-key", "node-unreachable", "ssh-failed", "container-state",
               "container-network", "package-not-found", "apt-locked", "dpkg-interrupted", "apt-failed"]

_SSH_AUTH = re.compile(r"Permission denied \(|Too many authentication failures")
_SSH_HOST_KEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED")
_SSH_UNREACHABLE = re.compile(r"ssh: (connect to host|Could not resolve hostname)|Connection (refused|timed out)|"
                              r"No route to host|Network is unreachable|Connection closed by|kex_exchange")
_PCT_STATE = re.compile(r"CT \d+ not running|CT is locked|Configuration file '[^']*' does not exist|"
                        r"container '?\d+'? not running", re.IGNORECASE)
_APT_NETWORK = re.compile(r"Temporary failure resolving|Could not resolve '|Failed to fetch|Could not connect to|"
                          r"Unable to connect to|Connection failed|Network is unreachable|"
                          r"Some index files failed to download")
_APT_NOT_FOUND = re.compile(r"Unable to locate package (\S+)|Package '?([^' ]+)'? has no installation candidate|"
                            r"Package (\S+) is not available")
_APT_LOCK = re.compile(r"Could not get lock|Unable to acquire the dpkg frontend lock")
_DPKG_INTERRUPTED = re.compile(r"dpkg was interrupted")


@dataclass(frozen=True)
class InstallFailure:
    kind: Kind
    message: str
    hint: str


def explain(update: ExecResult, install: ExecResult | None, *, container: str, vmid: int, node: str,
            packages: list[str]) -> InstallFailure:
    """What went wrong, from `apt-get update`'s result and (when it ran) `apt-get install`'s."""
    last = install if install is not None and not install.ok else update
    text = last.stderr + "\n" + last.stdout
    tail = "\n".join(line for line in text.strip().splitlines()[-5:] if line.strip())
    what = (f"installing {', '.join(packages)} in {container} failed (CT {vmid}"
            f"{f' on node {node}' if node else ''}, exit {last.returncode})")
    if last.returncode == 255 and _SSH_AUTH.search(text):
        return InstallFailure("ssh-auth", f"{what}: ssh to node {node or '?'} was refused (authentication failed)",
                              f"pveguard runs 'ssh -o BatchMode=yes root@{node or 'NODE'}' (no password prompt): put "
                              "the public key of the user running pveguard into the node's /root/.ssh/"
                              f"authorized_keys (ssh-copy-id root@{node or 'NODE'}); the container was not reached")
    if last.returncode == 255 and _SSH_HOST_KEY.search(text):
        return InstallFailure("ssh-host-key", f"{what}: the host key of node {node or '?'} is unknown or changed",
                              f"connect once by hand (ssh root@{node or 'NODE'}), compare the fingerprint with the "
                              "node's (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the node), then retry")
    if last.returncode == 255 and _SSH_UNREACHABLE.search(text):
        return InstallFailure("node-unreachable", f"{what}: node {node or '?'} cannot be reached over ssh ({tail})",
                              "check the node's address (pvesh get /cluster/status), that it is up and that sshd "
                              "listens on it; the container was not reached")
    if last.returncode == 255 and text.lstrip().startswith("ssh:"):
        return InstallFailure("ssh-failed", f"{what}: ssh to node {node or '?'} failed ({tail})",
                              f"run 'ssh -o BatchMode=yes root@{node or 'NODE'} true' to see why")
    if _PCT_STATE.search(text):
        return InstallFailure("container-state", f"{what}: {tail}",
                              f"start or unlock the container (pct start {vmid} / pct unlock {vmid}), then retry")
    if _APT_LOCK.search(text):
        return InstallFailure("apt-locked", f"{what}: another apt or dpkg holds the lock in the container",
                              "wait for it to finish (an automatic update?), then retry")
    if _DPKG_INTERRUPTED.search(text):
        return InstallFailure("dpkg-interrupted", f"{what}: an earlier dpkg run in the container was interrupted",
                              f"repair it: pct exec {vmid} -- dpkg --configure -a, then retry")
    update_text = update.stderr + "\n" + update.stdout
    if _APT_NETWORK.search(text) or _APT_NETWORK.search(update_text):
        return InstallFailure("container-network", f"{what}: the container cannot reach its apt mirror ({tail})",
                              "check the container's network (bridge, address or DHCP, gateway, DNS): "
                              f"pct exec {vmid} -- getent hosts deb.debian.org")
    missing = _APT_NOT_FOUND.search(text)
    if missing:
        name = next(g for g in missing.groups() if g)
        return InstallFailure("package-not-found", f"{what}: {name} is not in the container's apt sources",
                              f"check the name (pct exec {vmid} -- apt-cache search {name}) or add the repository "
                              "that provides it to the container's /etc/apt/sources.list.d/")
    return InstallFailure("apt-failed", f"{what}: {tail}",
                          f"see apt's whole output: pct exec {vmid} -- apt-get install -y {' '.join(packages)}")
