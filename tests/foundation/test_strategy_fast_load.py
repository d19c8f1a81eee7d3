"""The strategy is parsed by libyaml (yaml.CSafeLoader) and still names line and column in every error."""

from __future__ import annotations

import time

import pytest
import yaml

from pveguard.strategy import load


def big_file(n: int = 1000) -> list[str]:
    """A strategy with n containers, one line per key (as `pveguard init` style files are written)."""
    lines = ["version: 1", "containers:"]
    for i in range(n):
        lines += [f"  - name: svc-{i:04d}", "    role: app", "    resources:", f"      cores: {1 + i % 2}",
                  "      memory: 512M", "      storage: 8G", "    startup:", f"      order: {1 + i % 4}"]
    return lines


def test_the_parser_is_libyaml() -> None:
    assert yaml.__with_libyaml__, "PyYAML without libyaml: install python3-yaml / a PyYAML wheel built with it"
    assert load.FastLoader is yaml.CSafeLoader


def test_a_thousand_containers_parse_and_validate() -> None:
    strategy, problems = load.check_text("\n".join(big_file()) + "\n")
    assert strategy is not None, [p.text() for p in problems if p.severity == "error"]
    assert len(strategy.containers) == 1000


def _problems(text: str) -> list[tuple[int, int, str, str]]:
    strategy, problems = load.check_text(text)
    assert strategy is None
    return [(p.line, p.col, p.loc, p.message) for p in problems]


def test_errors_deep_in_a_big_file_keep_line_and_column(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = big_file()
    at = lines.index("  - name: svc-0700")
    bad_files = {
        # a key indented one column too far
        "syntax": [*lines[:at + 2], "     oops: 1", *lines[at + 2:]],
        # a value of the wrong kind: positions come from the composed nodes
        "value": [*lines[:at + 3], "      cores: many", *lines[at + 4:]],
        "duplicate": [*lines[:at + 2], "    role: db", *lines[at + 2:]],
    }
    got = {k: _problems("\n".join(v) + "\n") for k, v in bad_files.items()}
    assert got["syntax"][0][:2] == (at + 3, 10) and "YAML syntax error" in got["syntax"][0][3], got["syntax"]
    assert got["value"][0][:3] == (at + 4, 14, "containers[700].resources.cores"), got["value"]
    assert got["duplicate"][0][:3] == (at + 3, 5, "containers[700].role"), got["duplicate"]
    # the same findings at the same positions as the pure-Python parser gave before (libyaml words a syntax
    # error a little differently: "not allowed in this context" for "not allowed here")
    monkeypatch.setattr(load, "FastLoader", yaml.SafeLoader)
    before = {k: _problems("\n".join(v) + "\n") for k, v in bad_files.items()}
    assert {k: [x[:3] for x in v] for k, v in before.items()} == {k: [x[:3] for x in v] for k, v in got.items()}


def test_libyaml_is_several_times_faster_than_the_pure_python_parser() -> None:
    """CPU time of the event pass both ways on the same 1,000-container file (a ratio, robust to load)."""
    text = "\n".join(big_file()) + "\n"

    def cpu(loader: object) -> float:
        t = time.process_time()
        for _ in yaml.parse(text, Loader=loader):
            pass
        return time.process_time() - t

    fast, slow = min(cpu(yaml.CSafeLoader) for _ in range(3)), cpu(yaml.SafeLoader)
    assert fast * 4 < slow, (fast, slow)
