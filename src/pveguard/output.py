"""Terminal output: rich for people, stable JSON for scripts, errors on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """One JSON document on stdout (sorted keys, so shapes diff cleanly)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def iso_utc(value: float | datetime | None) -> str | None:
    """A time as every `--json` prints it: ISO 8601 in UTC with a Z (docs/json.md). An epoch of 0
    is how the state machines say "never": null, like None."""
    if value is None or (isinstance(value, int | float) and value <= 0):
        return None
    if isinstance(value, datetime):
        dt = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        dt = datetime.fromtimestamp(value, UTC)
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds").replace("+00:00", "Z")


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    err_console.print(message, markup=False, soft_wrap=True)


# --- sentences that fit the terminal --------------------------------------------------------------
#
# `console` soft-wraps (a line runs past the edge and the terminal folds it anywhere), which keeps a
# line whole for scripts but cuts words for people. A `Prose` wraps at words at the width it is
# printed at; lines after the first are indented by `hang`, so an entry that takes two lines still
# reads as one (a doctor check with its fix, a plan's field change).


class Prose:
    """A paragraph wrapped at words to the width it is rendered at; a rich renderable."""

    def __init__(self, text: str | Text, hang: int = 0, style: str = "") -> None:
        self.text = text if isinstance(text, Text) else Text(text, style=style)
        self.hang = hang

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width - self.hang)
        text = self.text.copy()
        text.no_wrap, text.overflow = False, "fold"
        for n, line in enumerate(text.wrap(console, width)):
            line.rstrip()
            yield Text(" " * self.hang) + line if n and self.hang else line


def say(text: str | Text, hang: int = 0, style: str = "") -> None:
    """Print a paragraph on stdout, wrapped at words at the terminal's width (see `Prose`)."""
    console.print(Prose(text, hang, style), soft_wrap=False)


# --- tables that fit the terminal ----------------------------------------------------------------
#
# A rich Table squeezed below its natural width cuts cells into "…", names included. Every table
# pveguard prints is a `FitTable` instead: each column says how much it matters (`priority`, 0 =
# the identifying column: never dropped) and whether its values are names, shown whole on one line
# (`wrap=False`), or text that may wrap down to `min_width`. At the width it is rendered at, the
# least important columns are dropped until the rest fit, and a footer says how many were hidden.


@dataclass(frozen=True)
class Col:
    """One column of a `FitTable`."""

    header: str
    priority: int = 1        # 0: identifying (never dropped); larger numbers are dropped first
    wrap: bool = True        # False: a name or number, never broken (the column is as wide as its widest value)
    min_width: int = 8       # a wrapping column is never narrower than this (or its widest value, if less)
    words: bool = False      # a wrapping list of names: breaks only between them (never narrower than the longest)
    justify: JustifyMethod = "left"


def _text_width(cell: str | Text) -> int:
    text = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in text.split("\n")), default=0)


def _as_text(cell: str | Text) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def _wrapping(text: str | None, style: str) -> Text | None:
    return None if text is None else Text(text, style=style, no_wrap=False, overflow="fold")


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


# A rich table with edges and a one-character padding each side: two edges, a separator between
# columns and the padding, i.e. 3 per column plus 1.
def _chrome(columns: int) -> int:
    return 3 * columns + 1


_SHRUNK = 6  # the narrowest a wrapping text column gets before identifying columns fold


class FitTable:
    """A table that fits the width it is printed at (see the comment above); a rich renderable."""

    def __init__(self, *columns: Col, title: str | None = None, caption: str | None = None) -> None:
        self.columns = columns
        self.title = title
        self.caption = caption
        self.rows: list[tuple[list[str | Text], str | None]] = []

    def add_row(self, *cells: str | Text, style: str | None = None) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append((list(cells), style))

    def _natural(self, i: int) -> int:
        """The width that shows every value and the header on one line each."""
        col = self.columns[i]
        return max([cell_len(col.header), *(_text_width(cells[i]) for cells, _ in self.rows)])

    def _values(self, i: int) -> int:
        """The width of the widest value; a header may wrap at its spaces to fit it."""
        col = self.columns[i]
        return max([_longest_word(col.header), *(_text_width(cells[i]) for cells, _ in self.rows)])

    def _need(self, i: int) -> int:
        col = self.columns[i]
        if not col.wrap:
            return self._values(i)
        need = min(self._values(i), max(col.min_width, _longest_word(col.header)))
        if col.words:
            need = max([need, *(_longest_word(_as_text(cells[i]).plain) for cells, _ in self.rows)])
        return need

    def layout(self, width: int) -> tuple[list[int], list[int]]:
        """(indexes of the columns shown, their content widths) at `width` terminal columns."""
        kept = list(range(len(self.columns)))
        need = {i: self._need(i) for i in kept}
        while sum(need[i] for i in kept) > width - _chrome(len(kept)):
            droppable = [i for i in kept if self.columns[i].priority > 0]
            if not droppable:
                break
            # the least important column goes first; among equals, the rightmost
            kept.remove(max(droppable, key=lambda i: (self.columns[i].priority, i)))
        room = width - _chrome(len(kept))
        widths = {i: need[i] for i in kept}
        # Still too wide with only identifying columns left: text columns give up their minimum
        # first (down to a few characters), so that names keep their line.
        for i in kept:
            col = self.columns[i]
            excess = sum(widths.values()) - room
            if excess > 0 and col.wrap and not col.words:
                widths[i] = max(min(widths[i], _SHRUNK), widths[i] - excess)
        if sum(widths.values()) > room:
            # Even the identifying columns alone are too wide: share the room; their values fold
            # onto a second line (whole, never cut into "…").
            share = max(1, room // max(1, len(kept)))
            widths = {i: max(1, min(need[i], share)) for i in kept}
        natural = {i: self._natural(i) for i in kept}
        spare = room - sum(widths.values())
        # The spare room makes whole the columns closest to whole first (a header "cpu %" that
        # wraps, a time that needs 9 more characters); what is left is shared evenly by the text
        # columns still wrapping (two long text columns split it).
        for i in sorted(kept, key=lambda i: (natural[i] - widths[i], i)):
            if natural[i] - widths[i] <= spare:
                spare -= natural[i] - widths[i]
                widths[i] = natural[i]
        texts = [i for i in kept if self.columns[i].wrap and widths[i] < natural[i]]
        for n, i in enumerate(texts):
            grow = min(natural[i] - widths[i], spare // (len(texts) - n))
            widths[i] += grow
            spare -= grow
        return kept, [widths[i] for i in kept]

    def hidden(self, width: int) -> list[str]:
        """Headers of the columns dropped at `width`."""
        kept = set(self.layout(width)[0])
        return [c.header for i, c in enumerate(self.columns) if i not in kept]

    def build(self, width: int) -> Table:
        """The rich Table for `width` terminal columns."""
        kept, widths = self.layout(width)
        # Title and caption wrap even on a console that soft-wraps (which would let them run past the edge).
        table = Table(title=_wrapping(self.title, "table.title"), title_justify="left",
                      caption=_wrapping(self.caption, "table.caption"), caption_justify="left")
        for i, w in zip(kept, widths, strict=True):
            col = self.columns[i]
            table.add_column(col.header, width=w, overflow="fold", justify=col.justify)
        for cells, style in self.rows:
            # plain strings are text, not rich markup: a '[' in a name or detail must show as itself
            table.add_row(*(_as_text(cells[i]) for i in kept), style=style)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        yield self.build(width)
        hidden = self.hidden(width)
        if hidden:
            n = len(hidden)
            yield Text(f"{n} column{'s' if n > 1 else ''} hidden at this width ({', '.join(hidden)}); "
                       "use --json or a wider terminal", style="dim", no_wrap=False, overflow="fold")
