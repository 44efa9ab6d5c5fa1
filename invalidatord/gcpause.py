"""Pausing Python's cyclic garbage collector over a short stretch of latency-critical work.

A flush of a large burst allocates tens of thousands of objects while the burst's own
objects (pending changes, prepared paths) are still alive, so the collector runs a full
(generation 2) collection in the middle of it, scanning all of them: 30-70 ms of a 10,000-path
flush, measured with `gc.callbacks`. Nothing on that path makes reference cycles, and what it
allocates is mostly freed by reference counting before the next collection, so pausing the
collector there saves the work rather than postponing it.

Paused stretches may nest and overlap across threads: the collector runs again once the last
of them ends (and only if it was enabled when the first began).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while inside (an explicit `gc.collect()` still runs)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
