"""What this process was asked to do and what it changed: read when it is interrupted or holds a lock.

The CLI entry point sets `argv`; `Ledger.append` adds every entry it writes to `written`, so an
interrupted command can say what it left (nothing, or which entries, the last one perhaps unfinished)
without reading the database again, and a lock file can name the command that holds it.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

argv: list[str] | None = None  # the words after `pveguard` (set by cli.main)
doing: list[str] = []  # what the command does right now, innermost last (see `step`)


@dataclass(frozen=True)
class Written:
    """One ledger entry this process wrote."""

    seq: int
    action: str
    target: str
    result: object  # details["result"]; None on an intent ("before"), absent -> "-"


written: list[Written] = []


def command_line(limit: int = 200) -> str:
    """`pveguard WORDS...` as typed (shell-quoted, cut at `limit` characters)."""
    words = argv if argv is not None else sys.argv[1:]
    text = " ".join(["pveguard", *(shlex.quote(w) for w in words)])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def command_name() -> str:
    """`pveguard backup run`: the command words, without options and their values."""
    words = argv if argv is not None else sys.argv[1:]
    out = ["pveguard"]
    for w in words:
        if w.startswith("-"):
            break
        out.append(w)
    return " ".join(out[:3])
