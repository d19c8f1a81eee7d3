"""What the fake `pct` does inside the sim: exec / push / pull / status / list / config; and the fake `lxc-attach`.

Wording follows pve-container's PVE/CLI/pct.pm. Commands run "inside" a container are recorded;
scripted answers (control API) win, then a few built-ins (apt-get, dpkg-query, dpkg, cat, test,
grep -F, rm, echo, true/false) act on a per-guest package list and file map; anything else succeeds
silently with exit 0 (or the configured default exit code).
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from pvesim.state import Guest, Sim

NOT_FOUND = 255  # PVE CLI tools exit(-1) on die

# `pct exec|enter --keep-env` exists since pve-container 5.0.9 (March 2024, commit "pct: add keep-env
# option to the 'enter' and 'exec' command"); its default is 1 (lxc-attach --keep-env) in PVE 8 and, as
# of pve-container master, still 1 with a FIXME to switch to 0 "with pve 9" (src/PVE/CLI/pct.pm; still
# so in 6.1.10, June 2026: PVE 9.1 keeps the environment too unless told --keep-env 0).
KEEP_ENV_SINCE = (5, 0, 9)
# What lxc-attach --clear-env leaves: lxc puts `container=lxc` and a default PATH into the cleared env.
CLEAR_ENV = {"container": "lxc", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# pct's clean_environment() drops these before lxc-attach even with keep-env (fix #5194)
_DROPPED = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def _parse_bool(text: str) -> bool | None:
    """pve-common JSONSchema.pm parse_boolean."""
    if re.fullmatch(r"1|on|yes|true", text, re.I):
        return True
    if re.fullmatch(r"0|off|no|false", text, re.I):
        return False
    return None


def _exec_options(sim: Sim, args: list[str]) -> tuple[bool, list[str]] | Result:
    """`pct exec <vmid> [--keep-env [0|1]] [--] <cmd...>` as pct's Getopt reads it: (keep_env, command)."""
    keep: bool = sim.pct_keep_env_default
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "--":
        opt = rest.pop(0)
        name, eq, value = opt.lstrip("-").partition("=")
        if name != "keep-env" or sim.pct_version < KEEP_ENV_SINCE:
            return _err(f"Unknown option: {name}\nunable to parse option")
        if not eq and rest and not rest[0].startswith("-"):
            value = rest.pop(0)  # Getopt ":s": an optional value when the next word is no option
        parsed = True if value == "" else _parse_bool(value)
        if parsed is None:
            return _err("unable to parse boolean option")
        keep = parsed
    if rest and rest[0] == "--":
        rest = rest[1:]
    return keep, rest


@dataclass
class Result:
    exit: int = 0
    stdout: str = ""
    stderr: str = ""
    data_b64: str | None = None  # pull: file content for the caller to write
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"exit": self.exit, "stdout": self.stdout, "stderr": self.stderr}
        if self.data_b64 is not None:
            d["data_b64"] = self.data_b64
        return d


def _err(msg: str, code: int = NOT_FOUND) -> Result:
    return Result(code, "", msg if msg.endswith("\n") else msg + "\n")


def _guest(sim: Sim, vmid_text: str, node: str | None) -> Guest | Result:
    if not re.fullmatch(r"[1-9][0-9]{2,8}", vmid_text):
        return _err(
            "400 Parameter verification failed.\nvmid: invalid format - value does not look like a valid VM ID\n"
        )
    vmid = int(vmid_text)
    g = sim.guests.get(vmid)
    here = node or (g.node if g else next(iter(sim.nodes)))
    if g is None or g.type != "lxc" or g.node != here:
        return _err(f"Configuration file 'nodes/{here}/lxc/{vmid}.conf' does not exist")
    return g


def execute(sim: Sim, argv: list[str], node: str | None = None, data_b64: str | None = None,
            env: dict[str, str] | None = None) -> Result:
    """Run one `pct ...` invocation against the sim state; `env` is the environment pct was called with."""
    if not argv:
        return _err("ERROR: no command specified")
    sub, args = argv[0], argv[1:]
    if sub == "list":
        lines = ["VMID       Status     Lock         Name                "]
        for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
            if g.type == "lxc" and (node is None or g.node == node):
                lines.append(f"{g.vmid:<10} {g.status:<10} {g.config.get('lock', '')!s:<12} {g.name:<20}")
        return Result(0, "\n".join(lines) + "\n")
    if sub not in ("exec", "push", "pull", "status", "config"):
        return _err(f"ERROR: unknown command 'pct {sub}'\nUSAGE: pct <COMMAND> [ARGS] [OPTIONS]")
    if not args:
        return _err("400 not enough arguments\npct " + sub + " <vmid>")
    got = _guest(sim, args[0], node)
    if isinstance(got, Result):
        return got
    g = got
    if sub == "status":
        return Result(0, f"status: {g.status}\n")
    if sub == "config":
        return Result(0, "".join(f"{k}: {v}\n" for k, v in sorted(g.config.items())))
    if sub == "exec":
        opts = _exec_options(sim, args[1:])
        if isinstance(opts, Result):
            return opts
        keep_env, rest = opts
        if g.status != "running":
            return _err(f"container '{g.vmid}' not running!")
        if not rest:
            return _err("missing command at /usr/share/perl5/PVE/CLI/pct.pm line 229.")
        inside = {k: v for k, v in (env or {}).items() if k not in _DROPPED} if keep_env else dict(CLEAR_ENV)
        sim.pct_log.append({"vmid": g.vmid, "node": g.node, "argv": rest, "time": sim.now(), "env": inside})
        return _run(sim, g, rest, inside)
    if sub == "push":
        if len(args) < 3:
            return _err("400 not enough arguments\npct push <vmid> <file> <destination> [OPTIONS]")
        if g.status != "running":
            return _err("can only push files to a running CT")
        if data_b64 is None:
            return _err(f"failed to open {args[1]} for reading")
        sim.guest_files.setdefault(g.vmid, {})[args[2]] = base64.b64decode(data_b64)
        perms = args[args.index("--perms") + 1] if "--perms" in args[3:-1] else "644"
        sim.guest_file_modes.setdefault(g.vmid, {})[args[2]] = int(perms, 8)
        sim.pct_log.append({"vmid": g.vmid, "node": g.node, "argv": ["<push>", args[1], args[2]], "time": sim.now()})
        return Result(0)
    # pull
    if len(args) < 3:
        return _err("400 not enough arguments\npct pull <vmid> <path> <destination> [OPTIONS]")
    if g.status != "running":
        return _err("can only pull files from a running VM at /usr/share/perl5/PVE/CLI/pct.pm line 511.")
    data = sim.guest_files.get(g.vmid, {}).get(args[1])
    sim.pct_log.append({"vmid": g.vmid, "node": g.node, "argv": ["<pull>", args[1], args[2]], "time": sim.now()})
    if data is None:
        return _err(f"failed to open {args[1]}: No such file or directory")
    return Result(0, data_b64=base64.b64encode(data).decode())


# lxc-attach (lxc src/lxc/attach.c, the same lines in lxc 5.0.2 and 6.0.0-6.0.4): a container that does not run on
# this node (stopped, another node's, no such name) has no command socket, so there is no init pid to attach to;
# the tool then exits EXIT_FAILURE (1) -- the same status as a command inside that fails with 1.
ATTACH_NOT_RUNNING = ("lxc-attach: {name}: ../src/lxc/attach.c: get_attach_context: 406 Connection refused - "
                      "Failed to get init pid\n"
                      "lxc-attach: {name}: ../src/lxc/attach.c: lxc_attach: 1470 Connection refused - "
                      "Failed to get attach context\n")
# options lxc-attach takes a value for (lxc src/lxc/tools/lxc_attach.c my_longopts + the common ones)
_ATTACH_VALUED = {"-n": "name", "--name": "name", "-a": None, "--arch": None, "-s": None,
                  "--namespaces": None, "-L": None, "--pty-log": None, "-v": None, "--set-var": None,
                  "--keep-var": None, "-f": None, "--rcfile": None, "-u": None, "--uid": None, "-g": None,
                  "--gid": None, "-c": None, "--context": None, "-o": None, "--logfile": None, "-l": None,
                  "--logpriority": None, "-P": None, "--lxcpath": None}
_ATTACH_FLAGS = {"--clear-env", "--keep-env", "-R", "--remount-sys-proc", "-q", "--quiet", "-e",
                 "--elevated-privileges"}


def attach(sim: Sim, argv: list[str], node: str | None = None, env: dict[str, str] | None = None) -> Result:
    """One `lxc-attach` on a node (PVESIM_NODE; default: the container's own) as lxc's tool answers: the
    command's exit status when the container runs there, else lxc's two errors and exit 1. The name is the
    VMID on PVE (pct exec runs `lxc-attach -n VMID --keep-env|--clear-env -- CMD`); the environment is kept
    unless --clear-env (lxc's default is to keep it), which leaves container=lxc and a default PATH."""
    name: str | None = None
    keep = True
    rest = list(argv)
    while rest and rest[0].startswith("-") and rest[0] != "--":
        opt = rest.pop(0)
        key, eq, value = opt.partition("=")
        if key in _ATTACH_VALUED:
            if not eq:
                if not rest:
                    return _err(f"lxc-attach: option '{key}' requires an argument", 1)
                value = rest.pop(0)
            if _ATTACH_VALUED[key] == "name":
                name = value
        elif opt in _ATTACH_FLAGS:
            if opt == "--clear-env":
                keep = False
            elif opt == "--keep-env":
                keep = True
        else:
            return _err(f"lxc-attach: unrecognized option '{opt}'\nUsage: lxc-attach --name=NAME [-- COMMAND]", 1)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if name is None and rest:  # lxc's tools take the first word for the name when -n is missing
        name = rest.pop(0)
    if name is None:
        return _err("lxc-attach: missing container name, use --name option", 1)
    g = sim.guests.get(int(name)) if name.isdigit() else None
    here = node or (g.node if g else None)
    if g is None or g.type != "lxc" or g.node != here or g.status != "running":
        return _err(ATTACH_NOT_RUNNING.format(name=name), 1)
    if not rest:  # no command: the user's shell (not emulated beyond succeeding)
        return Result(0)
    inside = dict(env or {}) if keep else dict(CLEAR_ENV)
    sim.pct_log.append({"vmid": g.vmid, "node": g.node, "argv": rest, "time": sim.now(), "env": inside,
                        "tool": "lxc-attach"})
    return _run(sim, g, rest, inside)


def _scripted(sim: Sim, g: Guest, cmd: list[str]) -> Result | None:
    text = shlex.join(cmd)
    for s in sim.pct_scripts:
        if s.get("vmid") not in (None, g.vmid):
            continue
        if not re.search(str(s.get("match", ".*")), text):
            continue
        if s.get("times") is not None:
            s["times"] -= 1
        sim.pct_scripts = [x for x in sim.pct_scripts if x.get("times") is None or x["times"] > 0]
        return Result(int(s.get("exit", 0)), str(s.get("stdout", "")), str(s.get("stderr", "")))
    return None


def _run(sim: Sim, g: Guest, cmd: list[str], env: dict[str, str] | None = None) -> Result:
    hit = _scripted(sim, g, cmd)
    if hit is not None:
        return hit
    if cmd in (["env"], ["printenv"]):  # what the command sees of the environment pct passed in
        return Result(0, "".join(f"{k}={v}\n" for k, v in sorted((env or {}).items())))
    if len(cmd) >= 3 and cmd[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash") and cmd[1] in ("-c", "-lc", "-ec"):
        return _run_script(sim, g, cmd[2])
    return _builtin(sim, g, cmd)


def _run_script(sim: Sim, g: Guest, script: str) -> Result:
    """A tiny shell: commands joined by `&&`, `||` and `;` (no pipes or redirections beyond `>/dev/null`)."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    tokens = list(lex)
    out = Result(0)
    cur: list[str] = []
    op = ";"

    def flush(next_op: str) -> bool:
        nonlocal cur, op
        cmd = [t for t in cur if t not in (">/dev/null", "2>&1")]
        cur = []
        run = op == ";" or (op == "&&" and out.exit == 0) or (op == "||" and out.exit != 0)
        op = next_op
        if cmd and run:
            r = _scripted(sim, g, cmd) or _builtin(sim, g, cmd)
            out.stdout += r.stdout
            out.stderr += r.stderr
            out.exit = r.exit
        return True

    for t in tokens:
        if t in (";", "&&", "||"):
            flush(t)
        else:
            cur.append(t)
    flush(";")
    return out


def _strip_env(cmd: list[str]) -> list[str]:
    if cmd and cmd[0] == "env":
        cmd = cmd[1:]
    while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
        cmd = cmd[1:]
    return cmd


def _builtin(sim: Sim, g: Guest, cmd: list[str]) -> Result:
    cmd = _strip_env(cmd)
    if not cmd:
        return Result(0)
    prog = cmd[0].rsplit("/", 1)[-1]
    args = cmd[1:]
    if prog == "timeout":  # coreutils timeout [OPTION] DURATION COMMAND...: runs the command (never slow here)
        rest = list(args)
        while rest and rest[0].startswith("-"):
            if rest.pop(0) in ("-k", "-s", "--kill-after", "--signal") and rest:
                rest.pop(0)
        return _run(sim, g, rest[1:]) if len(rest) > 1 else Result(125, "", "timeout: missing operand\n")
    pkgs = sim.guest_packages.setdefault(g.vmid, {})
    files = sim.guest_files.setdefault(g.vmid, {})
    if prog in ("apt-get", "apt"):
        return _apt(sim, pkgs, args, sim.guest_upgrades.get(g.vmid, {}), files)
    if prog == "dpkg-query":
        return _dpkg_query(pkgs, args)
    if prog == "dpkg":
        if args[:1] in (["-l"], ["--list"]):
            names = args[1:] or sorted(pkgs)
            lines = [f"ii  {n:<30} {pkgs[n]:<20} amd64        {n} package" for n in names if n in pkgs]
            missing = [n for n in names if n not in pkgs]
            err = "".join(f"dpkg-query: no packages found matching {n}\n" for n in missing)
            return Result(1 if missing else 0, "\n".join(lines) + ("\n" if lines else ""), err)
        if args[:1] in (["-s"], ["--status"]) and len(args) > 1:
            n = args[1]
            if n not in pkgs:
                return Result(1, "", f"dpkg-query: package '{n}' is not installed and no information is available\n")
            return Result(0, f"Package: {n}\nStatus: install ok installed\nVersion: {pkgs[n]}\n")
        return Result(0)
    if prog == "cat":
        out = ""
        for f in args:
            if f not in files:
                return Result(1, out, f"cat: {f}: No such file or directory\n")
            out += files[f].decode("utf-8", "replace")
        return Result(0, out)
    if prog in ("test", "["):
        a = [x for x in args if x != "]"]
        if len(a) == 2 and a[0] in ("-f", "-e"):
            return Result(0 if a[1] in files else 1)
        if len(a) == 2 and a[0] == "-s":  # exists and is not empty
            return Result(0 if files.get(a[1]) else 1)
        return Result(0)
    if prog == "grep":
        return _grep(args, files)
    if prog == "rm":
        for f in args:
            if not f.startswith("-"):
                files.pop(f, None)
        return Result(0)
    if prog == "echo":
        return Result(0, " ".join(a for a in args if a != "-n") + ("" if "-n" in args else "\n"))
    if prog == "true":
        return Result(0)
    if prog == "false":
        return Result(1)
    if prog == "hostname":
        return Result(0, f"{g.name}\n")
    return Result(sim.pct_default_exit)


_GREP_USAGE = "Usage: grep [OPTION]... PATTERNS [FILE]...\nTry 'grep --help' for more information.\n"


def _grep(args: list[str], files: dict[str, bytes]) -> Result:
    """GNU grep with -F (fixed strings) and -x, -q, -s, -e PATTERN (short options may be bundled, `--` ends them):
    exit 0 a line matched, 1 none, 2 an error (an absent file: "No such file or directory" unless -s; with -q a
    match wins over an error, as GNU grep stops at the first match). Without -F only patterns free of BRE
    characters are taken (then the same as -F); anything else exits 2 saying pvesim does not emulate it."""
    quiet = silent = fixed = whole = False
    patterns: list[str] = []
    rest = list(args)
    operands: list[str] = []
    while rest:
        a = rest.pop(0)
        if a == "--":
            operands.extend(rest)
            break
        if not a.startswith("-") or a == "-":
            operands.append(a)
            continue
        if a.startswith("--"):
            long = {"--quiet": "q", "--silent": "q", "--no-messages": "s", "--fixed-strings": "F",
                    "--line-regexp": "x"}
            if a.startswith("--regexp="):
                patterns.append(a.split("=", 1)[1])
                continue
            if a not in long:
                return Result(2, "", f"grep: unrecognized option '{a}'\n{_GREP_USAGE}")
            a = "-" + long[a]
        i = 1
        while i < len(a):
            c = a[i]
            if c == "e":
                value = a[i + 1:]
                if not value:
                    if not rest:
                        return Result(2, "", f"grep: option requires an argument -- 'e'\n{_GREP_USAGE}")
                    value = rest.pop(0)
                patterns.append(value)
                break
            if c not in "qsFx":
                return Result(2, "", f"grep: invalid option -- '{c}'\n{_GREP_USAGE}")
            quiet, silent, fixed, whole = quiet or c == "q", silent or c == "s", fixed or c == "F", whole or c == "x"
            i += 1
    if not patterns:
        if not operands:
            return Result(2, "", _GREP_USAGE)
        patterns = [operands.pop(0)]
    if not fixed and any(re.search(r"[.\[\]*^$\\]", p) for p in patterns):
        return Result(2, "", "grep: pvesim emulates fixed strings only (-F, or a pattern without BRE characters)\n")
    # a pattern with newlines is one pattern per line (GNU grep)
    wanted = [q.encode() for p in patterns for q in p.split("\n")]
    out, err, matched, failed = "", "", False, False
    for f in operands:
        data = files.get(f)
        if data is None:
            failed = True
            if not silent:
                err += f"grep: {f}: No such file or directory\n"
            continue
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for line in lines:
            if any(line == w if whole else w in line for w in wanted):
                matched = True
                if quiet:
                    return Result(0, "", err)
                out += (f"{f}:" if len(operands) > 1 else "") + line.decode("utf-8", "replace") + "\n"
    return Result(2 if failed else (0 if matched else 1), out, err)


def _apt(sim: Sim, pkgs: dict[str, str], args: list[str], upgrades: dict[str, dict[str, Any]] | None = None,
         files: dict[str, bytes] | None = None) -> Result:
    upgrades = upgrades or {}
    # values of -o options are no operation words
    words = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-o")]
    if (words and words[0] in ("upgrade", "dist-upgrade", "full-upgrade")) or "--only-upgrade" in args:
        return _upgrade(pkgs, words[1:], upgrades, simulate="-s" in args or "--simulate" in args,
                        only="--only-upgrade" in args, files=files)
    if not words:
        return Result(100, "", "E: Invalid operation\n")
    op, names = words[0], words[1:]
    if op == "update":
        return Result(0, "Hit:1 http://deb.debian.org/debian bookworm InRelease\nReading package lists...\n")
    if op in ("install", "reinstall"):
        bad = [n for n in names if n.split("=", 1)[0] in sim.unavailable_packages]
        if bad:
            return Result(
                100,
                "Reading package lists...\nBuilding dependency tree...\n",
                "".join(f"E: Unable to locate package {n}\n" for n in bad),
            )
        out = "Reading package lists...\nBuilding dependency tree...\nReading state information...\n"
        new = []
        for n in names:
            name, _, ver = n.partition("=")
            if name in pkgs and not ver and op == "install":
                out += f"{name} is already the newest version ({pkgs[name]}).\n"
                continue
            pkgs[name] = ver or pkgs.get(name) or "1.0-1"
            new.append(name)
        out += f"0 upgraded, {len(new)} newly installed, 0 to remove and 0 not upgraded.\n"
        out += "".join(f"Setting up {n} ({pkgs[n]}) ...\n" for n in new)
        return Result(0, out)
    if op in ("remove", "purge", "autoremove"):
        out = "Reading package lists...\n"
        for n in names:
            if n in pkgs:
                del pkgs[n]
                out += f"Removing {n} ...\n"
            else:
                out += f"Package '{n}' is not installed, so not removed\n"
        return Result(0, out)
    if op in ("clean", "autoclean"):
        return Result(0, "Reading package lists...\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n")
    return Result(100, "", f"E: Invalid operation {op}\n")


def _upgrade(pkgs: dict[str, str], names: list[str], upgrades: dict[str, dict[str, Any]], *, simulate: bool,
             only: bool, files: dict[str, bytes] | None) -> Result:
    """apt-get [-s] upgrade / install --only-upgrade NAMES against the guest's available upgrades
    (control API: {"pkg": {"version", "origin", "postinst_fails", "files"}}), in apt's own words. The new
    version's `files` ({path: content, or null for removed}) replace the guest's when it is unpacked; a
    package whose postinst fails stays unpacked at the new version and apt exits 100, as dpkg leaves it."""
    files = {} if files is None else files
    todo = [n for n in sorted(upgrades) if n in pkgs and pkgs[n] != str(upgrades[n]["version"])
            and (not only or n in names)]
    out = ("Reading package lists...\nBuilding dependency tree...\nReading state information...\n"
           "Calculating upgrade...\n")
    if simulate:
        for n in todo:
            u = upgrades[n]
            out += f"Inst {n} [{pkgs[n]}] ({u['version']} {u.get('origin', 'Debian:12.8/stable')} [amd64])\n"
        for n in todo:
            out += f"Conf {n} ({upgrades[n]['version']} {upgrades[n].get('origin', 'Debian:12.8/stable')} [amd64])\n"
        return Result(0, out)
    out += f"{len(todo)} upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n"
    failed = []
    for n in todo:
        out += f"Unpacking {n} ({upgrades[n]['version']}) over ({pkgs[n]}) ...\n"
        pkgs[n] = str(upgrades[n]["version"])
        for path, content in dict(upgrades[n].get("files") or {}).items():
            if content is None:
                files.pop(str(path), None)
            else:
                files[str(path)] = str(content).encode()
    for n in todo:
        out += f"Setting up {n} ({pkgs[n]}) ...\n"
        if upgrades[n].get("postinst_fails"):
            out += (f"dpkg: error processing package {n} (--configure):\n installed {n} package "
                    "post-installation script subprocess returned error exit status 1\n")
            failed.append(n)
    if failed:
        return Result(100, out, "Errors were encountered while processing:\n" + "".join(f" {n}\n" for n in failed)
                      + "E: Sub-process /usr/bin/dpkg returned an error code (1)\n")
    return Result(0, out)


def _dpkg_query(pkgs: dict[str, str], args: list[str]) -> Result:
    fmt = "${binary:Package}\t${Version}\n"
    names: list[str] = []
    i = 0
    show = False
    while i < len(args):
        a = args[i]
        if a in ("-W", "--show"):
            show = True
        elif a.startswith("-f=") or a.startswith("--showformat="):
            fmt = a.split("=", 1)[1]
        elif a in ("-f", "--showformat") and i + 1 < len(args):
            fmt = args[i + 1]
            i += 1
        elif a == "-s" or a == "--status":
            show = False
        else:
            names.append(a)
        i += 1
    if not show and names:
        n = names[0]
        if n not in pkgs:
            return Result(1, "", f"dpkg-query: package '{n}' is not installed and no information is available\n")
        return Result(0, f"Package: {n}\nStatus: install ok installed\nVersion: {pkgs[n]}\n")
    targets = names or sorted(pkgs)
    out = ""
    err = ""
    code = 0
    for n in targets:
        if n not in pkgs:
            err += f"dpkg-query: no packages found matching {n}\n"
            code = 1
            continue
        out += (
            fmt.replace("${binary:Package}", n)
            .replace("${Package}", n)
            .replace("${Version}", pkgs[n])
            .replace("${Status}", "install ok installed")
            .replace("${db:Status-Abbrev}", "ii ")
            .replace("\\n", "\n")
            .replace("\\t", "\t")
        )
    return Result(code, out, err)


def control(sim: Sim, method: str, rest: list[str], doc: dict[str, Any], q: dict[str, str]) -> Any:
    """Control-API entry for /_sim/pct/...: exec (used by the fake pct), log, scripts, default."""
    head = rest[0] if rest else ""
    if head == "exec" and method == "POST":
        argv = [str(a) for a in doc.get("argv", [])]
        env = doc.get("env")
        return execute(sim, argv, doc.get("node"), doc.get("data_b64"),
                       {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else None).as_dict()
    if head == "attach" and method == "POST":  # the fake lxc-attach
        env = doc.get("env")
        return attach(sim, [str(a) for a in doc.get("argv", [])], doc.get("node"),
                      {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else None).as_dict()
    if head == "log":
        if method == "DELETE":
            sim.pct_log.clear()
        return list(sim.pct_log)
    if head == "scripts":
        if method == "POST":
            s: dict[str, Any] = {k: doc[k] for k in ("vmid", "match", "stdout", "stderr", "exit", "times") if k in doc}
            re.compile(str(s.get("match", ".*")))
            sim.pct_scripts.append(s)
        elif method == "DELETE":
            sim.pct_scripts.clear()
        return list(sim.pct_scripts)
    if head == "default" and method == "POST":
        if "exit" in doc:
            sim.pct_default_exit = int(doc["exit"])
        if "version" in doc:  # the pve-container version pct behaves as, e.g. "5.0.8" (no --keep-env)
            sim.pct_version = tuple(int(x) for x in str(doc["version"]).split("."))
        if "keep_env" in doc:  # the --keep-env default (1 in PVE 8; announced to become 0)
            sim.pct_keep_env_default = bool(doc["keep_env"])
        return {"exit": sim.pct_default_exit, "version": ".".join(map(str, sim.pct_version)),
                "keep_env": int(sim.pct_keep_env_default)}
    raise KeyError(f"unknown pct control endpoint {method} {'/'.join(rest)}")
