"""Build the audit's "real systemd host": local .debs (a fake proxmox-ve tree and a Grafana-like
service) made with dpkg-deb, installed with dpkg in a Debian 12 chroot next to real nginx/ssh/cron."""

from __future__ import annotations

import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

# Packages the debootstrap root needs besides minbase (systemd to boot, python3 to run pveguard inside).
INCLUDE = ["systemd-sysv", "nginx", "python3", "openssh-server", "cron", "iproute2", "procps"]


@dataclass
class Deb:
    name: str
    depends: str = ""
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> content
    executables: tuple[str, ...] = ()
    conffiles: tuple[str, ...] = ()
    postinst: str = ""
    description: str = "test package"


def _unit(description: str, exec_start: str, extra_unit: str = "", extra_service: str = "") -> str:
    return textwrap.dedent(f"""\
        [Unit]
        Description={description}
        {extra_unit}

        [Service]
        ExecStart={exec_start}
        {extra_service}

        [Install]
        WantedBy=multi-user.target
        """)


def _enable(*units: str) -> str:
    return "\n".join(f"deb-systemd-helper enable {u} >/dev/null" for u in units)


def packages() -> list[Deb]:
    """The fake PVE tree plus the Grafana-like non-core service."""
    http = "/usr/bin/python3 -m http.server --bind {addr} {port}"
    return [
        Deb("proxmox-ve", depends="pve-manager, openssh-server, systemd-sysv",
            description="fake Proxmox VE meta-package (audit test)"),
        Deb("pve-manager", depends="pve-cluster, pve-fake-helper, cron",
            files={
                "/lib/systemd/system/pveproxy.service": _unit(
                    "PVE API Proxy Server (fake)", http.format(addr="0.0.0.0", port=8006),
                    "Requires=pve-cluster.service\nAfter=pve-cluster.service pvedaemon.service",
                    "WorkingDirectory=/var/lib/pve-manager"),
                "/lib/systemd/system/pvedaemon.service": _unit(
                    "PVE API Daemon (fake)", http.format(addr="127.0.0.1", port=85),
                    "Requires=pve-cluster.service\nAfter=pve-cluster.service",
                    "WorkingDirectory=/var/lib/pve-manager"),
                "/var/lib/pve-manager/.keep": "",
            },
            postinst=_enable("pveproxy.service", "pvedaemon.service")),
        Deb("pve-cluster", files={
            "/lib/systemd/system/pve-cluster.service": _unit("The Proxmox VE cluster filesystem (fake)",
                                                             "/bin/sleep infinity"),
        }, postinst=_enable("pve-cluster.service")),
        # Not on any pveversion list: core only through the closure of proxmox-ve.
        Deb("pve-fake-helper", files={
            "/lib/systemd/system/pve-fake-helper.service": _unit("fake PVE helper", "/bin/sleep infinity"),
        }, postinst=_enable("pve-fake-helper.service")),
        Deb("grafana", depends="python3",
            files={
                "/usr/sbin/grafana-server": "#!/bin/sh\nexec /usr/bin/python3 -m http.server --bind 0.0.0.0 "
                                            "--directory /usr/share/grafana/public 3000\n",
                "/etc/grafana/grafana.ini": "[server]\nhttp_port = 3000\n",
                "/etc/default/grafana-server": "GRAFANA_HOME=/usr/share/grafana\n",
                "/usr/share/grafana/public/index.html": "<h1>grafana (fake)</h1>\n",
                "/lib/systemd/system/grafana-server.service": _unit(
                    "Grafana instance (fake)",
                    "/usr/sbin/grafana-server --config=/etc/grafana/grafana.ini --homepath /usr/share/grafana",
                    "Wants=network-online.target\nAfter=network-online.target",
                    "User=grafana\nGroup=grafana\nEnvironmentFile=-/etc/default/grafana-server\n"
                    "WorkingDirectory=/usr/share/grafana\nStateDirectory=grafana\nLogsDirectory=grafana"),
            },
            executables=("/usr/sbin/grafana-server",),
            conffiles=("/etc/grafana/grafana.ini", "/etc/default/grafana-server"),
            postinst="getent passwd grafana >/dev/null || useradd --system --user-group --home-dir "
                     "/usr/share/grafana --no-create-home --shell /usr/sbin/nologin grafana\n"
                     + _enable("grafana-server.service"),
            description="Grafana-like dashboard server (audit test)"),
    ]


def build_deb(deb: Deb, out_dir: Path) -> Path:
    """A binary package built with dpkg-deb from `deb` (arch all, version 1.0-1)."""
    tree = out_dir / f"{deb.name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = [f"Package: {deb.name}", "Version: 1.0-1", "Architecture: all", "Maintainer: pveguard tests <t@t>",
               "Priority: optional", "Section: admin"]
    if deb.depends:
        control.append(f"Depends: {deb.depends}")
    control.append(f"Description: {deb.description}")
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    if deb.conffiles:
        (tree / "DEBIAN/conffiles").write_text("\n".join(deb.conffiles) + "\n")
    if deb.postinst:
        script = tree / "DEBIAN/postinst"
        script.write_text("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n" + deb.postinst + "\nfi\n")
        script.chmod(0o755)
    for path, content in deb.files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o755 if path in deb.executables else 0o644)
    for d in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        d.chmod(0o755)  # independent of the caller's umask: services run as their own users
    out = out_dir / f"{deb.name}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


LOCAL_UNIT = textwrap.dedent("""\
    [Unit]
    Description=hand-made webhook relay (no package)
    After=network.target nginx.service

    [Service]
    ExecStart=/usr/local/bin/webhook -hooks /etc/webhook/hooks.json -port 9000

    [Install]
    WantedBy=multi-user.target
    """)
WEBHOOK_SCRIPT = "#!/bin/sh\nexec /usr/bin/python3 -m http.server --bind 127.0.0.1 9000\n"
CRON_JOB = "# nightly offsite copy\n30 2 * * * root /usr/local/bin/restic backup /etc --quiet\n"


def install_local_extras(root: Path) -> None:
    """Things admins add by hand: a unit file no package owns and a cron job."""
    (root / "usr/local/bin/webhook").write_text(WEBHOOK_SCRIPT)
    (root / "usr/local/bin/webhook").chmod(0o755)
    (root / "etc/webhook").mkdir(exist_ok=True)
    (root / "etc/webhook/hooks.json").write_text("[]\n")
    (root / "etc/systemd/system/webhook-relay.service").write_text(LOCAL_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "webhook-relay.service").symlink_to("/etc/systemd/system/webhook-relay.service")
    (root / "etc/cron.d/offsite-backup").write_text(CRON_JOB)
