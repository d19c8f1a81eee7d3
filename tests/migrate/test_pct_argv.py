"""The argv the proxmox backend's endpoint builds (`pct exec VMID --keep-env 0 -- ...`), read the way
the real pct reads it.

pct's command line is parsed by pve-common's PVE::JSONSchema::get_options (src/PVE/JSONSchema.pm)
with the schema of pve-container's `exec` (src/PVE/CLI/pct.pm: properties `vmid` (pve-vmid),
`keep-env` (boolean, optional) and `extra-args`; `exec => [__PACKAGE__, 'exec', ['vmid',
'extra-args']]`). get_options turns that schema into Getopt::Long specs (a boolean is an optional
string `keep-env:s`, an array `=s@`, anything else `=s`), sets `prefix_pattern=(--|-)`, calls
GetOptionsFromArray (default configuration: options may come after positional arguments, `--` ends
them) and maps what is left to `vmid` and then, all of it, to `extra-args`; a boolean's value goes
through parse_boolean. The harness below is that code path run by this machine's perl and its real
Getopt::Long, so a command argument that looks like an option (`-c`, `--keep-env`) is read exactly
as pct would read it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from typing import Any

import pytest

from pveguard.migrate.endpoints import PATH, Pct

GET_OPTIONS = r"""
use strict;
use warnings;
use Getopt::Long;
use JSON::PP;

my @args = @ARGV;
my @getopt = ('vmid=s', 'keep-env:s', 'extra-args=s@');   # pct exec's schema, as get_options builds them
Getopt::Long::Configure('prefix_pattern=(--|-)');
my $opts = {};
if (!Getopt::Long::GetOptionsFromArray(\@args, $opts, @getopt)) {
    print STDERR "400 unable to parse option\n";
    exit 255;
}
for my $name ('vmid', 'extra-args') {            # arg_param ['vmid', 'extra-args']
    if ($name eq 'extra-args') { $opts->{'extra-args'} = [@args]; @args = (); last; }
    if (!@args) { print STDERR "400 not enough arguments\n"; exit 255; }
    $opts->{$name} = shift @args;
}
if (defined(my $v = $opts->{'keep-env'})) {      # parse_boolean
    if ($v eq '' || $v =~ m/^(1|on|yes|true)$/i) { $opts->{'keep-env'} = 1 }
    elsif ($v =~ m/^(0|off|no|false)$/i) { $opts->{'keep-env'} = 0 }
    else { print STDERR "400 keep-env: type check ('boolean') failed - got '$v'\n"; exit 255; }
}
# pct.pm exec: die "missing command" if !@{ $param->{'extra-args'} }
if (!@{ $opts->{'extra-args'} }) { print STDERR "missing command\n"; exit 255; }
print JSON::PP->new->canonical->encode($opts);
"""

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="perl (Getopt::Long) is not installed")


def pct_reads(argv: list[str]) -> dict[str, Any]:
    """What pct's option parser makes of `pct exec ARGS...` (argv without `pct exec`)."""
    p = subprocess.run(["perl", "-e", GET_OPTIONS, "--", *argv], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise AssertionError(p.stderr.strip())
    parsed: dict[str, Any] = json.loads(p.stdout)
    return parsed


COMMANDS = [
    ["true"],
    ["sh", "-c", 'echo "$1" > /tmp/x', "sh", "a b; c"],
    ["tar", "--acls", "--xattrs", "--xattrs-include=*", "-C", "/", "-cpf", "-", "--", "etc/nginx"],
    ["systemctl", "--keep-env", "0", "--vmid", "5", "-v"],   # words that are pct's own option names
    ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "nginx"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_local_pct_exec_argv_reaches_the_container_unchanged(command: list[str]) -> None:
    argv = Pct(123, ()).wrap(command)
    assert argv[:2] == ["pct", "exec"]
    got = pct_reads(argv[2:])
    assert got == {"vmid": "123", "keep-env": 0, "extra-args": ["env", f"PATH={PATH}", *command]}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_pct_exec_over_ssh_to_another_node(command: list[str]) -> None:
    prefix = ("ssh", "-o", "BatchMode=yes", "root@10.0.0.2")
    argv = Pct(4567, prefix).wrap(command)
    assert tuple(argv[:-1]) == prefix
    remote = shlex.split(argv[-1])   # what the node's login shell runs
    assert remote[:2] == ["pct", "exec"]
    assert pct_reads(remote[2:]) == {"vmid": "4567", "keep-env": 0,
                                     "extra-args": ["env", f"PATH={PATH}", *command]}


def test_the_harness_reads_as_pct_does() -> None:
    # without `--`, a command's own options are pct's: refused (why the endpoint puts `--` first)
    with pytest.raises(AssertionError, match="unable to parse option"):
        pct_reads(["123", "--keep-env", "0", "sh", "-c", "true"])
    # `--keep-env` with no value is true (PVE 8's default); after the command words, an option is still read
    assert pct_reads(["123", "true", "--keep-env"]) == {"vmid": "123", "keep-env": 1, "extra-args": ["true"]}
    with pytest.raises(AssertionError, match="missing command"):
        pct_reads(["123", "--keep-env", "0", "--"])
