"""`pveguard migrate run --source ssh:HOST` end to end, for real (slow; root, lxc, dnsmasq, nft, the mirror).

A container with openssh-server plays the host, reached over the test's own bridge as root with a key
this test generates; the host key is read from the container itself into a known_hosts file of the
test (strict checking), and ssh reads no configuration or key of this machine (-F /dev/null,
IdentitiesOnly): the options reach the endpoint through PVEGUARD_MIGRATE_SSH_OPTIONS. nginx serving
a page is migrated into pve-api-gateway: every command of the run (facts, dpkg, tar streams, nft,
systemctl) goes through ssh; the page then answers at the host's address through the forward, the
package is gone from the host; rollback brings nginx back on the host and removes the forward.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_lxc_own_network import free_pool, ip_forward_restored  # noqa: F401 - a fixture
from .test_migrate_lxc import PAGE, bridged_traffic_unfiltered, pveguard  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return str(r.read().decode())


def test_migrate_from_an_ssh_source_and_back(lxc_env: Any, ip_forward_restored: Any,  # noqa: F811
                                             bridged_traffic_unfiltered: Any, tmp_path: Path) -> None:  # noqa: F811
    for tool in ("dnsmasq", "nft", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/debian-packages.txt lists it)")
    b = lxc_env.backend
    strategy = lxc_env.root / "strategy.yaml"
    env = lxc_env.init_env()
    doc = yaml.safe_load(strategy.read_text())
    doc["network"]["bridge"] = f"{lxc_env.prefix}n"
    doc["target"]["lxc"].update(lxcpath=b.config.lxcpath, disk_dir=b.config.disk_dir,
                                template_cache=b.config.template_cache, subnet=free_pool())
    gateway = next(c for c in doc["containers"] if c["name"] == "pve-api-gateway")
    gateway["resources"].update(memory="1G", storage="4G")
    gateway.setdefault("network", {})["firewall"] = False
    host = {"name": "mcr-sshhost", "role": "host", "purpose": "plays the PVE host, reached over ssh",
            "resources": {"cores": 1, "memory": "1G", "storage": "4G"},
            "packages": ["nginx", "nftables", "openssh-server"], "network": {"firewall": False}}
    doc["containers"] = [gateway, host]
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes")
    assert code == 0, out + err
    guests = {g.name: g for g in b.list_guests()}
    hg, ct = guests["mcr-sshhost"], guests["pve-api-gateway"]
    sh = lambda g, script, **kw: b.exec(g, ["sh", "-c", script], **kw)  # noqa: E731
    assert sh(hg, "cat > /var/www/html/index.html", input=PAGE).ok
    host_ip = sh(hg, "hostname -I").stdout.split()[0]

    # the test's own key and known_hosts; nothing of this machine's ~/.ssh
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pveguard-migrate-test", "-f", str(key)],
                   check=True)
    assert sh(hg, "install -d -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys && "
                  "chmod 600 /root/.ssh/authorized_keys && systemctl restart ssh",
              input=(tmp_path / "id_ed25519.pub").read_text()).ok
    host_key = sh(hg, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
    known = tmp_path / "known_hosts"
    known.write_text(f"{host_ip} {host_key[0]} {host_key[1]}\n")
    options = (f"-F /dev/null -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known} "
               "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes")
    env["PVEGUARD_MIGRATE_SSH_OPTIONS"] = options
    source = f"ssh:root@{host_ip}"

    # a wrong host key is refused, nothing changes (strict checking: the options really are used)
    known.write_text(f"{host_ip} {host_key[0]} AAAAC3NzaC1lZDI1NTE5AAAAIMcDYKe1BkT6ogfjSvJ+Yqk2MW6cMF1XV4EW0ozYyNjB\n")
    code, out, err = pveguard(env, "migrate", "run", "nginx", "--source", source, "--yes")
    assert code != 0 and "Host key verification failed" in err and "Traceback" not in err, out + err
    assert pveguard(env, "migrate", "status", "--json")[1].count("nginx") == 0
    known.write_text(f"{host_ip} {host_key[0]} {host_key[1]}\n")

    code, out, err = pveguard(env, "migrate", "run", "nginx", "--source", source, "--yes", "--json")
    assert code == 0, out + err
    status = json.loads(out)
    assert status["state"] == "done" and status["source"] == source, status
    assert [s["state"] for s in status["steps"]] == ["done"] * 7
    migrate_data = next(s for s in status["steps"] if s["name"] == "migrate-data")["detail"]
    assert migrate_data["final_sync_bytes"] > 0
    assert get(host_ip) == PAGE                                # through the forward on the ssh host
    assert b.exec(ct, ["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
    assert get(sh(ct, "hostname -I").stdout.split()[0]) == PAGE
    assert not b.exec(hg, ["dpkg-query", "-W", "-f", "${Status}", "nginx"]).stdout.endswith(" installed")
    assert "pveguard_mig_nginx" in b.exec(hg, ["nft", "list", "tables"]).stdout

    code, out, err = pveguard(env, "migrate", "rollback", "nginx", "--yes")
    assert code == 0, out + err
    assert b.exec(hg, ["dpkg-query", "-W", "-f", "${Status}", "nginx"]).stdout.endswith(" installed")
    assert b.exec(hg, ["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
    assert "pveguard_mig" not in b.exec(hg, ["nft", "list", "tables"]).stdout
    assert b.exec(ct, ["systemctl", "is-active", "nginx"]).stdout.strip() != "active"
    assert get(host_ip) == PAGE
    code, out, err = pveguard(env, "migrate", "status", "--json")
    assert {m["service"]: m["state"] for m in json.loads(out)["migrations"]} == {"nginx.service": "rolled-back"}
    code, out, err = pveguard(env, "audit-log", "verify")
    assert code == 0, out + err

    doc["containers"] = []
    strategy.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = pveguard(env, "apply", "--yes", "--prune")
    assert code == 0, out + err
