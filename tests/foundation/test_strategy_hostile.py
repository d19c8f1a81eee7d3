"""Hostile and broken strategy files end in positioned errors, quickly and in little memory.

Each case here crashed or stalled the loader before the limits in `strategy/load.py` (issue 12):
an alias bomb took 21 s and 297 MB, a self-referencing alias and deep nesting hit RecursionError,
a huge number OverflowError, a complex key IndexError, a 10 MB value 25 s. Issue 11: an empty
file was accepted as "all defaults", and four containers could share one static address.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from pveguard.cli import main as cli_main
from pveguard.strategy.load import MAX_BYTES, StrategyInvalid, check_text, load

CONTAINER = "  - name: {name}\n    role: r\n    resources: {{cores: 1, memory: 1G}}\n    network: {{ip: {ip}}}\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level repeats the previous one `width` times (~300 bytes)."""
    lines = [f"a0: &a0 [{','.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# (id, text, (line, col) or None for "no position", loc, message substring)
HOSTILE: list[tuple[str, str, tuple[int, int] | None, str, str]] = [
    ("alias-bomb", alias_bomb(), (5, 14), "", "expands to more than"),
    ("alias-bomb-in-section", "monitoring:\n  metrics: &m [cpu_usage, cpu_usage]\n" + "".join(
        f"x{i}: &x{i} [*{'m' if i == 0 else f'x{i - 1}'}, *{'m' if i == 0 else f'x{i - 1}'}]\n" for i in range(40)),
     None, "", "expands to more than"),
    ("self-alias", "a: &a [*a]\n", (1, 8), "", "alias *a refers to the value that contains it"),
    ("self-alias-mapping", "network: &n\n  bridge: *n\n", (2, 11), "", "refers to the value that contains it"),
    ("undefined-alias", "network:\n  bridge: *nowhere\n", (2, 11), "", "alias *nowhere is not defined"),
    ("flow-nesting-500", "x: " + "[" * 500 + "]" * 500 + "\n", (1, 35), "", "nested more than 32 levels"),
    ("block-nesting-500", "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "v: 1\n",
     (33, 65), "", "nested more than 32 levels"),
    ("huge-duration", "monitoring:\n  renotify: 99999999999999999999\n", (2, 13), "monitoring.renotify",
     "too long for a duration"),
    ("huge-duration-text", "monitoring:\n  renotify: 99999999999999999d\n", (2, 13), "monitoring.renotify",
     "too long for a duration"),
    ("huge-size", "resources:\n  host_reserved_memory: 99999999999999999999P\n", (2, 25),
     "resources.host_reserved_memory", "too large for a size"),
    ("infinite-size", "resources:\n  host_reserved_memory: 1.0e+400\n", (2, 25), "resources.host_reserved_memory",
     "too large for a size"),
    ("nan-size", "resources:\n  host_reserved_memory: .nan\n", (2, 25), "resources.host_reserved_memory",
     "is not a size"),
    ("int-beyond-digit-limit", "resources:\n  host:\n    cores: " + "9" * 5000 + "\n", (3, 12),
     "resources.host.cores", "cannot read this value"),
    ("complex-key-list", "? [a, b]\n: 1\n", (1, 3), "", "a key must be plain text, not a list"),
    ("complex-key-mapping", "network:\n  ? {a: 1}\n  : 1\n", (2, 5), "network", "not a mapping"),
    ("python-tag", "network:\n  bridge: !!python/object:os.system ls\n", (2, 11), "network.bridge",
     "cannot read this value"),
    ("impossible-date", "network:\n  bridge: 2020-13-45\n", (2, 11), "network.bridge", "cannot read this value"),
    ("key-with-bracket", "network:\n  a[b]: 1\n", (2, 3), "network.a[b]", "unknown key 'a[b]'"),
    ("top-key-with-bracket", "0[:\n", (1, 1), "0[", "unknown key '0['"),
    ("huge-key", "1" + "0" * 900 + ": 1\n", (1, 1), "1" + "0" * 59 + "...", "unknown key '1000"),
    ("ten-megabyte-value", "network:\n  bridge: " + "x" * 10_000_000 + "\n", None, "", "larger than"),
    ("empty-file", "", (1, 1), "", "the file is empty"),
    ("only-comments", "# nothing here\n\n", (1, 1), "", "the file is empty"),
    ("duplicate-static-ip", "containers:\n" + "".join(
        CONTAINER.format(name=n, ip="10.0.0.5/24") for n in ("a", "b", "c", "d")), (9, 19),
     "containers[1].network.ip", "address 10.0.0.5 is also given to containers[0] (a)"),
]


def _timed(text: str) -> tuple[list[str], list[tuple[int, int, str, str]], float, int]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        strategy, problems = check_text(text, "s.yaml")
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert strategy is None, "a hostile file must not load"
    errors = [p for p in problems if p.severity == "error"]
    return [str(p) for p in errors], [(p.line, p.col, p.loc, p.message) for p in errors], elapsed, peak


@pytest.mark.parametrize("text,where,loc,message", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_file_is_a_positioned_error_quickly(text: str, where: tuple[int, int] | None, loc: str,
                                                    message: str) -> None:
    shown, errors, elapsed, peak = _timed(text)
    matching = [e for e in errors if e[2] == loc and message in e[3]]
    assert matching, f"no error {loc}: {message!r} in {shown}"
    if where is not None:
        assert matching[0][:2] == where, shown
    assert elapsed < 2.0, f"took {elapsed:.1f} s"
    # tracemalloc also counts the input the test built (10 MB for the large value).
    assert peak < 50 * 2**20 + len(text) * 2, f"peak {peak >> 20} MiB"
    assert all(len(s) < 1000 for s in shown), "a message must not echo a huge value"


def test_two_static_addresses_on_different_vlans_are_fine() -> None:
    text = "containers:\n" + CONTAINER.format(name="a", ip="10.0.0.5/24") + CONTAINER.format(
        name="b", ip="10.0.0.5/24") + "    network: {ip: 10.0.0.5/24, vlan: 200}\n"
    text = text.replace("    network: {ip: 10.0.0.5/24}\n    network:", "    network:")
    strategy, problems = check_text(text, "s.yaml")
    assert strategy is not None, [str(p) for p in problems]


def test_aliases_a_real_strategy_uses_still_work() -> None:
    text = ("containers:\n  - name: a\n    role: r\n    resources: &small {cores: 1, memory: 1G}\n"
            "  - name: b\n    role: r\n    resources: *small\n")
    strategy, problems = check_text(text, "s.yaml")
    assert strategy is not None, [str(p) for p in problems]
    assert strategy.containers[1].resources.memory == 1 << 30


def test_file_too_large_is_refused_before_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("network:\n  bridge: " + "x" * (MAX_BYTES + 10) + "\n")
    with pytest.raises(StrategyInvalid, match="larger than 256 KiB"):
        load(path)


def test_file_not_utf8_is_a_positioned_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"network:\n  bridge: vmbr\xff0\n")
    with pytest.raises(StrategyInvalid) as info:
        load(path)
    assert str(info.value.problems[0]) == f"{path}:2:15: the file is not UTF-8 text; save it as UTF-8"


@pytest.mark.parametrize("case", ["alias-bomb", "self-alias", "flow-nesting-500", "huge-duration",
                                  "complex-key-list", "python-tag", "ten-megabyte-value", "empty-file"])
@pytest.mark.parametrize("command", [["check"], ["info"], ["plan"]])
def test_hostile_file_never_reaches_the_internal_error_handler(
        case: str, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = next(c[1] for c in HOSTILE if c[0] == case)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--strategy", str(path), "--state-dir", str(tmp_path / "state"), *command])
    err = capsys.readouterr().err
    # `info` shows host facts even with a broken strategy (saying so); the others refuse.
    assert exit_info.value.code == (0 if command == ["info"] else 2), err
    assert "internal error" not in err
    assert f"{path}:" in err or str(path) in err
