"""The debouncer: per-path coalescing, quiet window, max delay, cap. Pure logic, fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invalidatord.debounce import Coalesced, Debouncer, Flush
from invalidatord.model import Change, ChangeBatch, ChangeKind

K = ChangeKind


def ch(
    path: str,
    kind: ChangeKind = K.MODIFIED,
    seen: float = 1000.0,
    source: str = "docroot",
    receipt: str | None = None,
) -> Change:
    return Change(source=source, path=path, kind=kind, seen=seen, receipt=receipt)


def test_empty_debouncer_is_never_due() -> None:
    """Nothing pending: never due, no deadline, and a flush is empty."""
    d = Debouncer(quiet=2, max_delay=30)
    assert len(d) == 0
    assert d.next_due() is None
    assert not d.due(1e9)
    f = d.flush()
    assert f == Flush(changes=(), receipts=())
    assert f.oldest is None


def test_due_after_quiet_window() -> None:
    """A single change is due exactly `quiet` seconds after it was added, not before."""
    d = Debouncer(quiet=2, max_delay=30)
    d.add(ch("a.html"), now=10.0)
    assert not d.due(11.999)
    assert d.next_due() == 12.0
    assert d.due(12.0)


def test_each_add_restarts_the_quiet_window() -> None:
    """A new change inside the quiet window pushes the quiet deadline back."""
    d = Debouncer(quiet=2, max_delay=30)
    d.add(ch("a.html"), now=10.0)
    d.add(ch("b.html"), now=11.5)
    assert not d.due(12.0)
    assert d.next_due() == 13.5
    assert d.due(13.5)


def test_constant_churn_cannot_delay_past_max_delay() -> None:
    """Changes every 0.5 s (never quiet for 2 s) still make the batch due at first add + 30 s."""
    d = Debouncer(quiet=2, max_delay=30)
    t = 100.0
    first = t
    while not d.due(t):
        d.add(ch(f"f{int(t * 2)}.html"), now=t)
        assert d.next_due() == pytest.approx(min(t + 2, first + 30))
        t += 0.5
    assert t == first + 30
    assert len(d.flush()) == 60


def test_max_delay_counts_from_oldest_pending_add_after_a_flush() -> None:
    """After a flush the max-delay clock restarts at the next add, not at the old one."""
    d = Debouncer(quiet=5, max_delay=10)
    d.add(ch("a"), now=0.0)
    d.flush()
    d.add(ch("b"), now=50.0)
    d.add(ch("c"), now=54.0)
    d.add(ch("d"), now=58.0)
    assert d.next_due() == 60.0
    assert not d.due(59.9)
    assert d.due(60.0)


def test_cap_makes_due_immediately_and_drops_nothing() -> None:
    """Reaching max_pending keys is due at once; adding past the cap keeps every change."""
    d = Debouncer(quiet=2, max_delay=30, max_pending=3)
    d.add(ch("a"), now=5.0)
    d.add(ch("b"), now=5.0)
    assert not d.due(5.0)
    d.add(ch("a", K.DELETED), now=5.1)  # same key: still two pending
    assert not d.due(5.1)
    d.add(ch("c"), now=5.2)
    assert d.due(5.2)
    assert d.next_due() == 5.2
    d.add(ch("d"), now=5.3)
    assert {c.path for c in d.flush().changes} == {"a", "b", "c", "d"}


def test_coalesces_kinds_per_path() -> None:
    """Several changes of one path become one entry with every kind and the last kind."""
    d = Debouncer(quiet=1, max_delay=10)
    d.add(ch("a", K.CREATED, seen=3.0), now=0.0)
    d.add(ch("a", K.MODIFIED, seen=4.0), now=0.1)
    d.add(ch("a", K.DELETED, seen=5.0), now=0.2)
    assert len(d) == 1
    (c,) = d.flush().changes
    assert c == Coalesced(
        source="docroot",
        path="a",
        kinds=frozenset({K.CREATED, K.MODIFIED, K.DELETED}),
        last_kind=K.DELETED,
        first_seen=3.0,
    )
    assert not c.rescan
    assert len(d) == 0


def test_rescan_and_file_change_of_same_path_are_separate_keys() -> None:
    """A RESCAN of `docs` and a change of a file named `docs` never merge."""
    d = Debouncer(quiet=1, max_delay=10)
    d.add(ch("docs", K.MODIFIED, seen=1.0), now=0.0)
    d.add(ch("docs", K.RESCAN, seen=2.0), now=0.0)
    d.add(ch("docs", K.RESCAN, seen=3.0), now=0.0)
    assert len(d) == 2
    file_change, rescan = d.flush().changes
    assert file_change.kinds == {K.MODIFIED}
    assert rescan.kinds == {K.RESCAN}
    assert rescan.rescan
    assert rescan.first_seen == 2.0


def test_same_path_of_two_sources_are_separate_keys() -> None:
    """Two sources reporting the same relative path keep their own entries (and names)."""
    d = Debouncer(quiet=1, max_delay=10)
    d.add(ch("x.css", source="docroot"), now=0.0)
    d.add(ch("x.css", source="assets"), now=0.0)
    assert {(c.source, c.path) for c in d.flush().changes} == {
        ("docroot", "x.css"),
        ("assets", "x.css"),
    }


def test_first_seen_is_the_earliest_wall_clock_and_orders_the_flush() -> None:
    """first_seen is the earliest `seen` even when changes arrive out of order, and the flush
    lists entries by it (ties keep arrival order); `oldest` is the minimum."""
    d = Debouncer(quiet=1, max_delay=10)
    d.add(ch("late", seen=50.0), now=0.0)
    d.add(ch("tie1", seen=20.0), now=0.0)
    d.add(ch("tie2", seen=20.0), now=0.0)
    d.add(ch("late", seen=10.0), now=0.1)  # an SQS message delivered late
    f = d.flush()
    assert [(c.path, c.first_seen) for c in f.changes] == [
        ("late", 10.0),
        ("tie1", 20.0),
        ("tie2", 20.0),
    ]
    assert f.oldest == 10.0


def test_receipts_are_all_returned_once_each() -> None:
    """Every receipt added since the last flush is handed over, even for coalesced changes;
    a receipt carried by several changes appears once; the next flush starts with none."""
    d = Debouncer(quiet=1, max_delay=10)
    d.add(ch("a", receipt="r1"), now=0.0)
    d.add(ch("a", receipt="r2"), now=0.0)
    d.add(ch("b", receipt="r1"), now=0.0)
    d.add(ch("c"), now=0.0)
    assert d.flush().receipts == ("r1", "r2")
    d.add(ch("a", receipt="r3"), now=1.0)
    assert d.flush().receipts == ("r3",)


def test_add_many_is_add_at_one_time() -> None:
    """add_many records every change with one timestamp, like repeated add calls."""
    d = Debouncer(quiet=2, max_delay=30)
    d.add_many((ch(p) for p in ("a", "b", "a")), now=7.0)
    assert len(d) == 2
    assert d.next_due() == 9.0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"quiet": -1, "max_delay": 1}, "quiet"),
        ({"quiet": 1, "max_delay": -1}, "max_delay"),
        ({"quiet": 1, "max_delay": 1, "max_pending": 0}, "max_pending"),
    ],
)
def test_rejects_nonsense_settings(kwargs: dict[str, float], word: str) -> None:
    """Negative durations and a cap below one are refused with a message naming the setting."""
    with pytest.raises(ValueError, match=word):
        Debouncer(**kwargs)  # type: ignore[arg-type]


def test_zero_quiet_is_due_at_once() -> None:
    """quiet=0 makes every add due immediately (useful for manual invalidations)."""
    d = Debouncer(quiet=0, max_delay=30)
    d.add(ch("a"), now=3.0)
    assert d.due(3.0)


# --- properties -------------------------------------------------------------------------------


@dataclass
class _Window:
    """What the reference model expects in the next flush."""

    first_add: float | None = None
    kinds: dict[tuple[str, str, bool], set[ChangeKind]] = field(default_factory=dict)
    last: dict[tuple[str, str, bool], ChangeKind] = field(default_factory=dict)
    seen: dict[tuple[str, str, bool], float] = field(default_factory=dict)
    receipts: set[str] = field(default_factory=set)


_changes = st.builds(
    Change,
    source=st.sampled_from(["docroot", "assets"]),
    path=st.sampled_from(["", "a", "a/b", "c.html", "d/e.css"]),
    kind=st.sampled_from(list(ChangeKind)),
    seen=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    receipt=st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3", "r4"])),
)
# (gap before this step in seconds, the changes added at that step; empty = a bare poll)
_steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=20, allow_nan=False),
        st.lists(_changes, max_size=4),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=200)
@given(
    quiet=st.floats(min_value=0, max_value=10, allow_nan=False),
    max_delay=st.floats(min_value=0, max_value=40, allow_nan=False),
    max_pending=st.integers(min_value=1, max_value=12),
    steps=_steps,
)
def test_property_nothing_lost_and_no_flush_later_than_max_delay(
    quiet: float,
    max_delay: float,
    max_pending: int,
    steps: list[tuple[float, list[Change]]],
) -> None:
    """Driven like the pipeline (flush at every deadline that passes, poll at every step):
    every flush holds exactly the keys, kinds, last kinds, earliest `seen` and receipts added
    since the previous one; no flush comes later than max_delay after its oldest add; and
    whenever due() is false the oldest pending add is younger than max_delay."""
    d = Debouncer(quiet=quiet, max_delay=max_delay, max_pending=max_pending)
    window = _Window()
    added: set[tuple[str, str, bool]] = set()
    flushed: set[tuple[str, str, bool]] = set()

    def flush_and_check(at: float) -> None:
        nonlocal window
        assert window.first_add is not None
        assert at - window.first_add <= max_delay + 1e-9
        f = d.flush()
        got = {(c.source, c.path, c.rescan): c for c in f.changes}
        assert len(got) == len(f.changes)  # one entry per key
        assert set(got) == set(window.kinds)
        for key, c in got.items():
            assert c.kinds == window.kinds[key]
            assert c.last_kind == window.last[key]
            assert c.first_seen == window.seen[key]
        assert [c.first_seen for c in f.changes] == sorted(c.first_seen for c in f.changes)
        assert len(f.receipts) == len(set(f.receipts))
        assert set(f.receipts) == window.receipts
        assert len(d) == 0
        flushed.update(got)
        window = _Window()

    now = 0.0
    for gap, changes in steps:
        now += gap
        # the daemon sleeps until next_due(): flush at each deadline up to now
        deadline = d.next_due()
        while deadline is not None and deadline <= now:
            assert d.due(deadline)
            flush_and_check(deadline)
            deadline = d.next_due()
        if window.first_add is not None:
            assert not d.due(now)
            assert now < window.first_add + max_delay
        for c in changes:
            key = (c.source, c.path, c.kind is ChangeKind.RESCAN)
            added.add(key)
            if window.first_add is None:
                window.first_add = now
            window.kinds.setdefault(key, set()).add(c.kind)
            window.last[key] = c.kind
            window.seen[key] = min(window.seen.get(key, c.seen), c.seen)
            if c.receipt is not None:
                window.receipts.add(c.receipt)
        d.add_many(changes, now)
        assert len(d) == len(window.kinds)
        assert (d.next_due() is None) == (not window.kinds)
        if len(d) >= max_pending:  # the cap: due at once
            assert d.due(now)
            flush_and_check(now)
    if window.kinds:
        deadline = d.next_due()
        assert deadline is not None
        flush_and_check(deadline)
    assert d.next_due() is None
    assert flushed == added


@settings(deadline=None, max_examples=200)
@given(
    quiet=st.floats(min_value=0, max_value=10, allow_nan=False),
    max_delay=st.floats(min_value=0, max_value=40, allow_nan=False),
    adds=st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=30),
    probe=st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_property_next_due_is_where_due_turns_true(
    quiet: float, max_delay: float, adds: list[float], probe: float
) -> None:
    """For any add history, due(t) is true exactly for t >= next_due()."""
    d = Debouncer(quiet=quiet, max_delay=max_delay)
    now = 0.0
    for i, gap in enumerate(adds):
        now += gap
        d.add(ch(f"p{i}"), now)
    deadline = d.next_due()
    assert deadline is not None
    assert d.due(deadline)
    t = now + probe
    assert d.due(t) == (t >= deadline)


# ---- holding a batch while a deploy is under way -------------------------------------------


def test_held_batch_waits_past_quiet_until_max_delay() -> None:
    """Held, a batch is not due when its quiet window ends, only at first add + max_delay."""
    d = Debouncer(quiet=2, max_delay=30)
    d.add(ch("a.html"), now=10.0)
    assert d.due(12.0)
    assert not d.due(12.0, held=True)
    assert d.next_due(held=True) == 40.0
    assert not d.due(39.999, held=True)
    assert d.due(40.0, held=True)


def test_quiet_due_is_true_only_between_quiet_and_max_delay() -> None:
    """quiet_due says when a hold matters: after the quiet window, before max_delay."""
    d = Debouncer(quiet=2, max_delay=30)
    assert not d.quiet_due(0.0)
    d.add(ch("a.html"), now=10.0)
    assert not d.quiet_due(11.0)
    assert d.quiet_due(12.0)
    assert d.quiet_due(39.0)
    assert not d.quiet_due(40.0)


def test_hold_released_flushes_at_once_when_quiet_has_passed() -> None:
    """A deploy spread over 20 s, held: due at no point while held; once the hold ends (the
    marker is removed) the whole deploy is due together, as one flush."""
    d = Debouncer(quiet=2, max_delay=30)
    for i in range(20):
        t = 100.0 + i
        d.add(ch(f"p{i}.html"), now=t)
        assert not d.due(t + 0.1, held=True)
    # 5 s of silence while the marker still exists: still held
    assert not d.due(125.0, held=True)
    assert d.due(125.0)  # released: the quiet window passed long ago
    assert len(d.flush()) == 20


def test_held_batch_still_flushes_at_the_pending_cap() -> None:
    """The pending cap bounds memory, so it wins over a hold too."""
    d = Debouncer(quiet=2, max_delay=30, max_pending=3)
    for i, t in enumerate((1.0, 2.0, 3.0)):
        d.add(ch(f"p{i}"), now=t)
    assert d.due(3.0, held=True)


@settings(deadline=None, max_examples=200)
@given(steps=_steps)
def test_property_a_batch_is_its_changes_added_one_by_one(
    steps: list[tuple[float, list[Change]]],
) -> None:
    """`add_batch` of a burst leaves the debouncer exactly as `add` of each of its changes
    does: the same keys, kinds, last kinds, earliest `seen`, order and deadlines."""
    one = Debouncer(quiet=2, max_delay=30)
    many = Debouncer(quiet=2, max_delay=30)
    now = 0.0
    for gap, changes in steps:
        now += gap
        for source in sorted({c.source for c in changes}):
            mine = [c for c in changes if c.source == source]
            seen = min(c.seen for c in mine)
            burst = [Change(source, c.path, c.kind, seen) for c in mine]
            one.add_many(burst, now)
            many.add_batch(ChangeBatch(source, [(c.path, c.kind) for c in mine], seen), now)
        assert one.next_due() == many.next_due()
    assert one.flush() == many.flush()


def test_an_empty_batch_changes_nothing() -> None:
    """A batch with no changes neither starts a window nor moves the quiet deadline."""
    d = Debouncer(quiet=2, max_delay=30)
    d.add_batch(ChangeBatch("docroot", [], 1.0), now=5.0)
    assert d.next_due() is None
    d.add(ch("a.html"), now=10.0)
    d.add_batch(ChangeBatch("docroot", [], 1.0), now=11.0)
    assert d.next_due() == 12.0
