"""gc_paused: Python's cyclic garbage collector off for a block of work that allocates many objects and
no reference cycles (a monitor poll of 10,000 guests, a plan of 1,000 containers). Used by monitor and
provision alike, so it lives here rather than in either."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside: objects are still freed by reference counting,
    and what is cyclic is collected after (GC comes back on if it was on; nesting and threads are safe:
    whoever found it on turns it back on)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
