"""What this process was asked to do and what it changed: read when it is interrupted or holds a lock.

`cli.LazyGroup.invoke` turns a Ctrl-C anywhere in a command (one outside apply's own handling) into
`interrupted_message()` on stderr and exit 130, instead of click's "Aborted." or a silent exit.

The CLI entry point sets `argv`; `Ledger.append` adds every entry it writes to `written`, so an
interrupted command can say what it left (nothing, or which entries, the last one perhaps unfinished)
without reading the database again, and a lock file can name the command that holds it.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from pveguard.records import record

argv: list[str] | None = None  # the words after `pveguard` (set by cli.main)
interrupted_during: str | None = None  # the innermost `during(what)` a Ctrl-C went through


@record(frozen=True)
class Written:
    """One ledger entry this process wrote."""

    seq: int
    ts: str
    action: str
    target: str
    result: object  # details["result"]; None on an intent ("before"), NO_RESULT when there is no such key


NO_RESULT = "-"
# the entries this process wrote (the newest KEEP: `serve` runs for months), and how many in all
KEEP = 500
written: deque[Written] = deque(maxlen=KEEP)
count = 0


def begin(words: list[str] | None) -> None:
    """A command starts (cli.LazyGroup.invoke): its words; nothing written or interrupted yet (tests run
    many commands in one process)."""
    global argv, count, interrupted_during
    argv, count, interrupted_during = words, 0, None
    written.clear()


def wrote(seq: int, ts: str, action: str, target: str, details: dict[str, object]) -> None:
    """Called by Ledger.append after each entry is committed."""
    global count
    count += 1
    written.append(Written(seq, ts, action, target, details.get("result", NO_RESULT)))


@contextmanager
def during(what: str) -> Iterator[None]:
    """Mark a blocking step (an API call, a task wait, a command run): a Ctrl-C inside it is reported as
    interrupting `what` (the innermost one wins)."""
    global interrupted_during
    try:
        yield
    except KeyboardInterrupt:
        if interrupted_during is None:
            interrupted_during = what
        raise


def unfinished() -> list[Written]:
    """Intents (an `.intent` action, or `result` None) this process wrote without their result after them,
    and results that say `interrupted`."""
    out: list[Written] = []
    entries = list(written)
    for i, e in enumerate(entries):
        if e.result == "interrupted":
            out.append(e)
            continue
        if not (e.action.endswith(".intent") or e.result is None):
            continue
        base = e.action.removesuffix(".intent")
        if not any(later.target == e.target and later.action.removesuffix(".intent") == base
                   and later.result is not None for later in entries[i + 1:]):
            out.append(e)
    return out


def interrupted_message(at_prompt: bool = False) -> str:
    """What an interrupted command says: which command, what it was doing, what it changed and left."""
    what = command_name()
    if at_prompt:
        head = f"interrupted (Ctrl-C) at {what}'s question"
    elif interrupted_during:
        head = f"interrupted (Ctrl-C): {what} stopped during: {interrupted_during}"
    else:
        head = f"interrupted (Ctrl-C) during {what}"
    if count == 0:
        return f"{head}; nothing was changed (this run wrote no ledger entry)"
    first = written[0]
    left = unfinished()
    text = f"{head}; it changed things first: {count} ledger entr{'y' if count == 1 else 'ies'}"
    if left:
        text += ("; begun and not finished: " + ", ".join(f"{e.action.removesuffix('.intent')} {e.target}".strip()
                                                          for e in left))
    return text + f" (pveguard audit-log show --since {first.ts}); run {what} again to finish"


def command_line(limit: int = 200) -> str:
    """`pveguard WORDS...` as typed (shell-quoted, cut at `limit` characters)."""
    words = argv if argv is not None else sys.argv[1:]
    import shlex  # not on the apt hook's path, which imports this module

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
