"""Table tests of the pure parsers: unit files, /proc/net, cgroups, crontabs, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from pveguard.audit import inventory, unitfile

UNIT = """\
[Unit]
Description=x
Wants=a.service b.service
Wants=c.service
After=network.target \\
  a.service
# comment
; other comment
[Service]
ExecStart=/usr/bin/x --config=/etc/x/x.conf
User=nobody
User=x
StateDirectory=x x/sub
ConfigurationDirectory=x
LogsDirectory=/abs/log
[Install]
WantedBy=multi-user.target
"""


def test_unit_parse_lists_continuations_and_overrides() -> None:
    u = unitfile.parse(UNIT, name="x.service")
    assert u.units("Unit", "Wants") == ["a.service", "b.service", "c.service"]
    assert u.units("Unit", "After") == ["network.target", "a.service"]
    assert u.first("Service", "User") == "x"
    assert u.has_install
    assert unitfile.directories(u) == {"StateDirectory": ["/var/lib/x", "/var/lib/x/sub"],
                                       "ConfigurationDirectory": ["/etc/x"], "LogsDirectory": ["/abs/log"]}


def test_drop_in_empty_assignment_resets() -> None:
    u = unitfile.parse(UNIT, name="x.service")
    u = unitfile.parse("[Service]\nExecStart=\nExecStart=/bin/y\n[Unit]\nWants=\n", u)
    assert u.get("Service", "ExecStart") == ["/bin/y"]
    assert u.units("Unit", "Wants") == []


@pytest.mark.parametrize(("value", "argv"), [
    ("/usr/bin/x -a 'b c'", ["/usr/bin/x", "-a", "b c"]),
    ("-/sbin/agetty --noclear", ["/sbin/agetty", "--noclear"]),
    ("@/bin/foo foo-name", ["/bin/foo", "foo-name"]),
    ("+!/bin/priv", ["/bin/priv"]),
    ("/bin/unbalanced 'quote", ["/bin/unbalanced", "'quote"]),
])
def test_exec_argv(value: str, argv: list[str]) -> None:
    assert unitfile.exec_argv(value) == argv


@pytest.mark.parametrize(("name", "template"), [
    ("getty@tty1.service", "getty@.service"), ("getty@.service", None), ("nginx.service", None),
    ("pve-container@101.service", "pve-container@.service"),
])
def test_instance_template(name: str, template: str | None) -> None:
    assert unitfile.instance_template(name) == template


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 80736 1 0 100 0 0 10 0
   1: 0100007F:0055 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 80768 1 0 100 0 0 10 0
   2: 0100007F:0055 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 80769 1 0 100 0 0 10 0
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 00000000000000000000000000000000:1F46 00000000000000000000000000000000:0000 0A 0 0 0 0 0 111 1
   1: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 0 0 0 0 0 112 1
   2: 0000000000000000FFFF00000100007F:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 113 1
"""
PROC_UDP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:006F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 500 2 0 0
  2: 0100007F:8000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 501 2 0 0
"""


def test_parse_proc_net() -> None:
    tcp = inventory.parse_proc_net(PROC_TCP, "tcp")
    assert [(s.address, s.port, s.inode) for s in tcp] == [("0.0.0.0", 80, 80736), ("127.0.0.1", 85, 80768)]
    tcp6 = inventory.parse_proc_net(PROC_TCP6, "tcp6")
    assert [(s.address, s.port) for s in tcp6] == [("::", 8006), ("::1", 3000), ("127.0.0.1", 22)]
    assert tcp6[1].loopback and tcp6[2].loopback and not tcp6[0].loopback
    udp = inventory.parse_proc_net(PROC_UDP, "udp")
    assert [(s.address, s.port) for s in udp] == [("0.0.0.0", 111)]


@pytest.mark.parametrize(("text", "unit"), [
    ("9:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n", "nginx.service"),
    ("0::/system.slice/grafana-server.service\n", "grafana-server.service"),
    ("1:name=systemd:/lxc.payload.ct/system.slice/ssh.service\n", "ssh.service"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", "session-3.scope"),
    ("0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"),
    ("0::/init.scope\n", "init.scope"),
    ("0::/\n", None),
])
def test_unit_of_cgroup(text: str, unit: str | None) -> None:
    assert inventory.unit_of_cgroup(text) == unit


def test_parse_crontab_system_and_user_formats() -> None:
    system = inventory.parse_crontab(
        "SHELL=/bin/sh\nMAILTO = root\n# c\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n"
        "@reboot backup /usr/local/bin/restic check\nbroken line\n", "/etc/crontab")
    assert [(j.schedule, j.user, j.command) for j in system] == [
        ("17 * * * *", "root", "cd / && run-parts --report /etc/cron.hourly"),
        ("@reboot", "backup", "/usr/local/bin/restic check"),
    ]
    user = inventory.parse_crontab("*/5 * * * * /home/a/sync.sh --now\n@daily rclone sync a b\n", "spool", "alice")
    assert [(j.schedule, j.user, j.command) for j in user] == [
        ("*/5 * * * *", "alice", "/home/a/sync.sh --now"), ("@daily", "alice", "rclone sync a b")]


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/x.service").symlink_to("/lib/systemd/system/x.service")
    (tmp_path / "etc/masked.service").symlink_to("/dev/null")
    (tmp_path / "etc/up.service").symlink_to("../../../../lib/systemd/system/x.service")
    assert inventory.resolve_in_root(tmp_path, "/etc/x.service") == "/usr/lib/systemd/system/x.service"
    assert inventory.resolve_in_root(tmp_path, "/etc/masked.service") == "/dev/null"
    assert inventory.resolve_in_root(tmp_path, "/etc/up.service") == "/usr/lib/systemd/system/x.service"


@pytest.mark.parametrize(("path", "canon"), [
    ("/usr/lib/systemd/system/a.service", "/lib/systemd/system/a.service"),
    ("/lib/systemd/system/a.service", "/lib/systemd/system/a.service"),
    ("/usr/sbin/nginx", "/sbin/nginx"), ("/usr/share/doc", "/usr/share/doc"), ("/etc/x", "/etc/x"),
])
def test_canonical(path: str, canon: str) -> None:
    assert inventory.canonical(path) == canon
