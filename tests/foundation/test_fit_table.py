"""The one table mechanism (`output.FitTable`): columns dropped by priority, names never cut."""

from __future__ import annotations

import io

from rich.console import Console

from pveguard.output import Col, FitTable


def render(table: FitTable, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, soft_wrap=True).print(table)
    return buf.getvalue()


def sample() -> FitTable:
    t = FitTable(Col("name", 0, wrap=False), Col("state", 1, wrap=False), Col("notes", 3, min_width=12),
                 Col("node", 2, wrap=False))
    t.add_row("prometheus-alertmanager.service", "running", "a long explanation " * 4, "pve-node-01")
    t.add_row("[bold]x[/]", "stopped", "", "pve-node-02")
    return t


def test_wide_terminal_shows_everything_on_one_line_each() -> None:
    out = render(sample(), 200)
    assert "hidden" not in out
    assert "a long explanation a long explanation a long explanation a long explanation" in out


def test_least_important_columns_go_first_and_the_footer_says_so() -> None:
    t = sample()
    assert t.hidden(60) == ["notes"]
    assert t.hidden(50) == ["notes", "node"]
    assert t.hidden(40) == ["state", "notes", "node"]
    out = render(t, 60)
    assert "1 column hidden at this width (notes); use --json or a wider terminal" in out.replace("\n", " ")
    assert "prometheus-alertmanager.service" in out and "pve-node-01" in out


def test_identifying_column_is_never_dropped_nor_cut() -> None:
    out = render(sample(), 20)
    assert all(len(line) <= 20 for line in out.splitlines())
    assert "…" not in out
    # narrower than the name itself: the name folds onto the next lines, every character kept
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert "".join(cells).startswith("prometheus-alertmanager.service[bold]x[/]")


def test_text_columns_wrap_down_to_their_minimum_before_being_dropped() -> None:
    t = sample()
    kept, widths = t.layout(74)
    assert [t.columns[i].header for i in kept] == ["name", "state", "notes", "node"]
    assert widths[2] == 12
    assert t.hidden(73) == ["notes"]


def test_cells_are_text_not_markup() -> None:
    assert "[bold]x[/]" in render(sample(), 200)


def test_text_columns_shrink_before_a_name_folds() -> None:
    # only identifying columns left and still too wide: the text column gives up its minimum
    t = FitTable(Col("result", 0, wrap=False), Col("guest", 0, wrap=False), Col("name", 0, wrap=False),
                 Col("problems", 0, min_width=16))
    t.add_row("BAD", "lxc/103", "pve-monitoring-long-guest-name-site-b-rack-4", "not in any backup job")
    out = render(t, 80)
    assert "pve-monitoring-long-guest-name-site-b-rack-4" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_a_list_of_names_breaks_only_between_names() -> None:
    t = FitTable(Col("verdict", 0, wrap=False), Col("packages", 0, min_width=10, words=True))
    names = ["grafana", "prometheus-node-exporter-collectors", "libpve-guest-common-perl"]
    t.add_row("refuse", ", ".join(names))
    out = render(t, 60)
    assert all(any(n in line for line in out.splitlines()) for n in names), out
