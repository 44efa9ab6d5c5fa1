"""Per-path coalescing of changes: a quiet window, a maximum delay and a pending cap.

Pure: no I/O, no clock of its own. Every call that depends on time takes `now`, monotonic seconds
(`time.monotonic()` in the daemon, plain floats in tests). Not thread-safe: the pipeline owns one
debouncer and feeds it from one thread.

The guarantees:

- nothing added is lost: every key added since the last flush is in the next `flush()`, and so
  is every receipt;
- a batch is due when no change has arrived for `quiet` seconds, or when the oldest pending add
  is `max_delay` seconds old, or when `max_pending` keys are pending, whichever comes first; so a
  constant stream of changes can delay a flush by at most `max_delay`;
- `add` is a handful of dict operations: it is the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from invalidatord.model import Change, ChangeBatch, ChangeKind

_RESCAN = ChangeKind.RESCAN

#: (source, path, is_rescan): a rescan of directory P and a change of a file named P are
#: different work, so they never coalesce.
_Key = tuple[str, str, bool]


@dataclass(frozen=True, slots=True)
class Coalesced:
    """Everything seen for one key during one debounce window."""

    source: str
    path: str
    kinds: frozenset[ChangeKind]  # every kind seen for this path in the window
    last_kind: ChangeKind  # the kind of the change added last
    first_seen: float  # the earliest `Change.seen` (wall clock) among them

    @property
    def rescan(self) -> bool:
        return ChangeKind.RESCAN in self.kinds


@dataclass(frozen=True, slots=True)
class Flush:
    """What one `Debouncer.flush()` hands over."""

    changes: tuple[Coalesced, ...]  # one per key, oldest `first_seen` first
    receipts: tuple[str, ...]  # every distinct non-None receipt added since the last flush

    @property
    def oldest(self) -> float | None:
        """The earliest `first_seen` of the flush, None when it holds no change."""
        return min((c.first_seen for c in self.changes), default=None)

    def __len__(self) -> int:
        return len(self.changes)


class _Pending:
    """The mutable accumulator behind one key (frozen into a `Coalesced` at flush)."""

    __slots__ = ("first_seen", "kinds", "last_kind", "path", "source")

    def __init__(self, source: str, path: str, kind: ChangeKind, seen: float) -> None:
        self.source = source
        self.path = path
        self.kinds = {kind}
        self.last_kind = kind
        self.first_seen = seen

    def freeze(self) -> Coalesced:
        return Coalesced(
            source=self.source,
            path=self.path,
            kinds=frozenset(self.kinds),
            last_kind=self.last_kind,
            first_seen=self.first_seen,
        )


class Debouncer:
    """Coalesces changes per (source, path, is-rescan) until a batch is due.

    `quiet` and `max_delay` are seconds (`max_delay` smaller than `quiet` simply wins);
    `max_pending` is the number of pending keys that makes a batch due at once. Adding past the
    cap never drops anything: the cap only says "flush now".
    """

    __slots__ = (
        "_first_add",
        "_last_add",
        "_max_delay",
        "_max_pending",
        "_pending",
        "_quiet",
        "_receipts",
    )

    def __init__(self, quiet: float, max_delay: float, max_pending: int = 10_000) -> None:
        if quiet < 0:
            raise ValueError(f"debounce quiet must be >= 0 seconds, got {quiet!r}")
        if max_delay < 0:
            raise ValueError(f"debounce max_delay must be >= 0 seconds, got {max_delay!r}")
        if max_pending < 1:
            raise ValueError(f"debounce max_pending must be >= 1, got {max_pending!r}")
        self._quiet = float(quiet)
        self._max_delay = float(max_delay)
        self._max_pending = max_pending
        self._pending: dict[_Key, _Pending] = {}
        # a dict, not a set: distinct receipts in arrival order (one SQS message often carries
        # several records, so the same receipt arrives on several changes)
        self._receipts: dict[str, None] = {}
        self._first_add = 0.0  # monotonic time of the oldest pending add (meaningless if empty)
        self._last_add = 0.0  # monotonic time of the newest add (meaningless if empty)

    @property
    def quiet(self) -> float:
        return self._quiet

    @property
    def max_delay(self) -> float:
        return self._max_delay

    @property
    def max_pending(self) -> int:
        return self._max_pending

    def add(self, change: Change, now: float) -> None:
        """Record `change`, observed at monotonic time `now`."""
        pending = self._pending
        key = (change.source, change.path, change.kind is _RESCAN)
        entry = pending.get(key)
        if entry is None:
            if not pending:
                self._first_add = now
            pending[key] = _Pending(change.source, change.path, change.kind, change.seen)
        else:
            entry.kinds.add(change.kind)
            entry.last_kind = change.kind
            if change.seen < entry.first_seen:
                entry.first_seen = change.seen
        self._last_add = now
        if change.receipt is not None:
            self._receipts[change.receipt] = None

    def add_many(self, changes: Iterable[Change], now: float) -> None:
        """Record every change of `changes`, all observed at monotonic time `now`."""
        for change in changes:
            self.add(change, now)

    def add_batch(self, batch: ChangeBatch, now: float) -> None:
        """Record every change of `batch` in order, observed at monotonic time `now`: the
        same as `add` of each, without a `Change` built for each."""
        if not batch.items:
            return
        pending = self._pending
        if not pending:
            self._first_add = now
        source, seen = batch.source, batch.seen
        get = pending.get
        for path, kind in batch.items:
            key = (source, path, kind is _RESCAN)
            entry = get(key)
            if entry is None:
                pending[key] = _Pending(source, path, kind, seen)
            else:
                entry.kinds.add(kind)
                entry.last_kind = kind
                if seen < entry.first_seen:
                    entry.first_seen = seen
        self._last_add = now

    def first_seen(self, source: str, path: str) -> float | None:
        """The earliest `Change.seen` pending for the file `path` of `source` (None: none)."""
        entry = self._pending.get((source, path, False))
        return None if entry is None else entry.first_seen

    def next_due(self, held: bool = False) -> float | None:
        """The monotonic time from which `due()` is true, None while nothing is pending.

        When the pending cap is reached the batch is due already, and this is the time of the
        newest add (at or before any `now` the caller has passed in). `held`: a deploy is under
        way, so the quiet window does not count; only `max_delay` (and the cap) do.
        """
        if not self._pending:
            return None
        if len(self._pending) >= self._max_pending:
            return self._last_add
        bound = self._first_add + self._max_delay
        if held:
            return bound
        return min(self._last_add + self._quiet, bound)

    def due(self, now: float, held: bool = False) -> bool:
        """Whether the pending changes should be flushed at monotonic time `now` (`held` as
        for `next_due`)."""
        deadline = self.next_due(held)
        # comparing against the deadline (not `now - last_add >= quiet`) keeps `due` and
        # `next_due` exactly consistent under float rounding
        return deadline is not None and now >= deadline

    def quiet_due(self, now: float) -> bool:
        """Whether the quiet window has passed at `now` but `max_delay` has not: the only case
        in which holding the batch changes anything (so the caller looks for its deploy
        markers only then)."""
        return self.due(now) and not self.due(now, held=True)

    def flush(self) -> Flush:
        """Hand over everything pending and start empty; an empty debouncer flushes empty."""
        entries = self._pending.values()
        # sorted() is stable: keys with the same first_seen keep the order they were first added
        changes = tuple(sorted((e.freeze() for e in entries), key=_first_seen))
        receipts = tuple(self._receipts)
        self._pending = {}
        self._receipts = {}
        return Flush(changes=changes, receipts=receipts)

    def __len__(self) -> int:
        """The number of pending keys."""
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __repr__(self) -> str:
        return (
            f"Debouncer(quiet={self._quiet!r}, max_delay={self._max_delay!r}, "
            f"max_pending={self._max_pending!r}, pending={len(self._pending)})"
        )


def _first_seen(c: Coalesced) -> float:
    return c.first_seen
