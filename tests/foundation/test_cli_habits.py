"""CLI habits (issue 11): shell completion, -V, help placeholders that read as words, required
options marked required. The help of every command is rendered by the real command tree."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pveguard.cli import command

# Placeholders that name a type instead of what to type: typer's "<str>", "<int range>", "<path>",
# click's TEXT / INTEGER / FLOAT.
TYPE_PLACEHOLDER = re.compile(r"<(?:str|int|float|bool|path|file|directory|datetime|uuid|(?:int|float) range|"
                              r"list\[[^>]*\])>|\b(?:TEXT|INTEGER|FLOAT|BOOLEAN)\b")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pveguard", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", **env})


def commands(cmd: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    cmd = cmd or command()
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        command().main([*path, "--help"], prog_name="pveguard", standalone_mode=True)
    return out.getvalue()


def test_show_completion_prints_a_bash_script() -> None:
    # Typer detects the shell from the parent processes, which a CI runner may not have; its
    # documented switch makes --show-completion take the shell's name instead.
    r = run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert r.returncode == 0, r.stderr
    assert "_PVEGUARD_COMPLETE=complete_bash" in r.stdout and "complete -o default -F" in r.stdout
    assert "--install-completion" in run("--help").stdout


def test_short_version_option() -> None:
    short, long = run("-V"), run("--version")
    assert short.returncode == long.returncode == 0
    assert short.stdout == long.stdout and short.stdout.startswith("pveguard ")


ALL = [path for path, _ in commands()]


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "pveguard" for p in ALL])
def test_help_placeholders_read_as_words(path: tuple[str, ...]) -> None:
    text = help_text(path)
    assert text.startswith("Usage: pveguard"), text
    assert not TYPE_PLACEHOLDER.findall(text), text
    usage = text.splitlines()[0]
    assert not re.search(r"\{[a-z_]+\}|\[[a-z_]+\]", usage), usage  # arguments by name in capitals


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "pveguard" for p in ALL])
def test_required_options_are_marked_required(path: tuple[str, ...]) -> None:
    cmd = dict(commands())[path]
    required = [p for p in cmd.params if getattr(p, "required", False) and getattr(p, "opts", None)
                and p.opts[0].startswith("-")]
    text = " ".join(help_text(path).split())
    for p in required:
        line = text[text.index(p.opts[0]):]
        assert re.search(r"\[[^\]]*\brequired\]", line[:300]), (p.opts, text)


def test_silence_reason_is_a_required_option() -> None:
    r = run("alerts", "silence", "web", "--for", "1h")
    assert r.returncode == 2 and "Missing option '--reason'" in r.stderr
    assert "[required]" in " ".join(run("alerts", "silence", "--help").stdout.split())
