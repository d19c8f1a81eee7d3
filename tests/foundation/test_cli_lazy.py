"""The root command imports subcommands on first use: --help and completion list every command
with the help it has when loaded, without loading it; every registration resolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pveguard import cli

SRC = str(Path(cli.__file__).resolve().parent.parent)
EAGER = "import functools, sys; from pveguard import cli; cli.command = functools.partial(cli.command, eager=True); "


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "100", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("argv", [["--help"], [], ["backup", "--help"], ["guard", "--help"]])
def test_help_is_the_same_lazy_and_eager(argv: list[str]) -> None:
    lazy = _run(f"from pveguard import cli; cli.main({argv!r})")
    eager = _run(EAGER + f"cli.main({argv!r})")
    assert lazy.stdout == eager.stdout and lazy.stderr == eager.stderr
    assert lazy.returncode == eager.returncode
    if argv in (["--help"], []):
        listed = lazy.stdout + lazy.stderr
        for name in cli.LAZY:
            assert f"  {name} " in listed, name


def test_every_registration_loads_with_the_registered_help() -> None:
    from typer._click.utils import make_default_short_help

    for name, (_, text, settings) in cli.LAZY.items():
        cmd = cli._load(name)
        assert cmd.name == name
        assert make_default_short_help(cmd.help or "", 200) == make_default_short_help(text, 200), name
        assert bool(cmd.hidden) == bool(settings.get("hidden")), name


def test_help_and_completion_import_no_subcommand() -> None:
    probe = (
        "import sys\nfrom pveguard import cli\ntry:\n    cli.main(ARGV)\nexcept SystemExit:\n    pass\n"
        "print('MODULES', sorted(m for m in sys.modules if m.startswith('pveguard') or m in ('pydantic', 'requests')),"
        " file=sys.stderr)\n"
    )
    help_run = _run(probe.replace("ARGV", "['--help']"))
    modules = help_run.stderr.split("MODULES", 1)[1]
    assert modules.strip() == "['pveguard', 'pveguard.cli', 'pveguard.errors']"
    complete = _run(
        probe.replace("ARGV", "None"), _PVEGUARD_COMPLETE="complete_bash", COMP_WORDS="pveguard ba", COMP_CWORD="1"
    )
    assert complete.stdout.split() == ["backup"]
    # nor pydantic: the root options' values are coerced without typer's pydantic adapters (cli._plain_value)
    assert complete.stderr.split("MODULES", 1)[1].strip() == "['pveguard', 'pveguard.cli', 'pveguard.errors']"
    deep = _run(probe.replace("ARGV", "None"), _PVEGUARD_COMPLETE="complete_bash",
                COMP_WORDS="pveguard backup prune-sim --keep-l", COMP_CWORD="3")
    assert deep.stdout.split() == ["--keep-last"]
    assert "'pydantic'" not in deep.stderr.split("MODULES", 1)[1]


def _outcome(runtime: object, value: object, param: object, ctx: object) -> tuple[str, object, object]:
    from typer._click.exceptions import BadParameter

    try:
        got = runtime._coerce_value(value, param=param, ctx=ctx)  # type: ignore[attr-defined]
        return "ok", type(got), got
    except BadParameter as exc:
        return "error", None, exc.format_message()


def test_plain_coercion_is_what_typers_adapter_gives() -> None:
    """cli._PlainRuntimeParam against typer's own (pydantic) coercion of the same parameter: the same
    value, or the same error, for str, bounded and unbounded int, bool and Path options."""
    from typer._click import Context
    from typer._coercion import build_runtime_param

    root = cli.command()
    backup = root.get_command(Context(root), "backup")
    prune = backup.commands["prune-sim"]
    params = [*root.params, *prune.params, *backup.commands["next-runs"].params]
    kinds = {p.type_descriptor.annotation for p in params}
    assert {str, int, bool, Path} <= kinds
    values: list[object] = ["", "0", "7", "007", "42", "-1", "+3", " 5", "5 ", "1_000", "3.0", "0x10", "١٢",
                            "123456789012345678", "1234567890123456789012", "a", "/tmp/x", " x ", ".",
                            0, 3, -2, True, False, 2.5, b"7"]
    checked = 0
    for param in params:
        desc = param.type_descriptor
        plain = cli._PlainRuntimeParam(parameter_info=desc.parameter_info, annotation=desc.annotation,
                                       descriptor=desc)
        ctx = Context(prune)
        for value in values:
            assert _outcome(plain, value, param, ctx) == _outcome(build_runtime_param(desc), value, param, ctx), (
                param.name, value)
            checked += 1
    assert checked > 100


def test_completion_reaches_into_a_lazy_group() -> None:
    done = _run(
        "from pveguard import cli; cli.main()",
        _PVEGUARD_COMPLETE="complete_bash",
        COMP_WORDS="pveguard backup prune-s",
        COMP_CWORD="2",
    )
    assert done.stdout.split() == ["prune-sim"]
    zsh = _run(
        "from pveguard import cli; cli.main()", _PVEGUARD_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="pveguard ap"
    )
    assert '"approve":"Approve a non-core package' in zsh.stdout and '"apply":' in zsh.stdout


def test_unknown_command_is_a_usage_error() -> None:
    done = _run("from pveguard import cli; cli.main(['no-such-command'])")
    assert done.returncode == 2
    assert "No such command" in done.stderr


def test_check_builds_no_typer_adapter(tmp_path: Path) -> None:
    """`check` needs pydantic for the strategy models, not for its own options (cli._plain_coercion)."""
    from infra.strategies import defaults_file

    done = _run("import sys\nfrom pveguard import cli\ntry:\n    cli.main(['--strategy', sys.argv[1], "
                "'--state-dir', sys.argv[2], 'check'])\nexcept SystemExit:\n    pass\n"
                "print('ADAPTERS', 'typer._adapters' in sys.modules, file=sys.stderr)\n"
                .replace("sys.argv[1]", repr(str(defaults_file()))).replace("sys.argv[2]", repr(str(tmp_path / "st"))))
    assert "ok (" in done.stdout, done.stderr
    assert "ADAPTERS False" in done.stderr
