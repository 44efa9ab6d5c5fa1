"""The catch-up diff: a merge of a sorted tree listing and the sorted index. Pure logic."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invalidatord.catchup import diff, diff_runs, path_key
from invalidatord.model import Change, ChangeKind, FileStat

K = ChangeKind


def fs(size: int = 1, mtime_ns: int = 1_000, inode: int = 1) -> FileStat:
    return FileStat(size=size, mtime_ns=mtime_ns, inode=inode)


def ordered(files: dict[str, FileStat]) -> list[tuple[str, FileStat]]:
    """A listing in the order scan() and index_iter() give: by the path's bytes."""
    return sorted(files.items(), key=lambda item: path_key(item[0]))


def apply(index: dict[str, FileStat], changes: list[Change], disk: dict[str, FileStat]) -> None:
    """What the pipeline does to the index: record what is on disk, forget what is gone."""
    for change in changes:
        if change.kind is K.DELETED:
            del index[change.path]
        else:
            index[change.path] = disk[change.path]


def test_first_listing_against_an_empty_index_is_all_created() -> None:
    """Every file on disk is CREATED when the index is empty, carrying source and time."""
    changes = diff("docroot", [("a.html", fs()), ("b/c.css", fs())], [], now=42.0)
    assert changes == [
        Change("docroot", "a.html", K.CREATED, 42.0),
        Change("docroot", "b/c.css", K.CREATED, 42.0),
    ]


def test_unchanged_files_produce_nothing() -> None:
    """A tree identical to its index yields no change at all."""
    index = {"a.html": fs(1, 10, 100), "b.html": fs(2, 20, 200)}
    assert diff("docroot", ordered(index), ordered(index), now=1.0) == []


def test_each_stat_field_counts_as_a_modification() -> None:
    """A different size, mtime_ns or inode (replace by rename) each make the file MODIFIED."""
    index = {"size": fs(), "mtime": fs(), "inode": fs(), "same": fs()}
    disk = {
        "size": fs(size=2),
        "mtime": fs(mtime_ns=2_000),
        "inode": fs(inode=2),
        "same": fs(),
    }
    changes = diff("docroot", ordered(disk), ordered(index), now=1.0)
    assert [(c.path, c.kind) for c in changes] == [
        ("inode", K.MODIFIED),
        ("mtime", K.MODIFIED),
        ("size", K.MODIFIED),
    ]


def test_changes_come_out_in_path_order() -> None:
    """Indexed files missing from the listing are DELETED, new ones CREATED, all in the
    order of the merged listings."""
    index = {"z.html": fs(), "a.html": fs(), "keep.html": fs()}
    changes = diff("docroot", [("keep.html", fs()), ("new.html", fs())], ordered(index), now=1.0)
    assert [(c.path, c.kind) for c in changes] == [
        ("a.html", K.DELETED),
        ("new.html", K.CREATED),
        ("z.html", K.DELETED),
    ]


def test_both_listings_are_consumed_once_in_step() -> None:
    """Generator listings work: each is read exactly once, to the end, and neither runs
    ahead of the other by more than one entry (nothing is buffered)."""
    pulled: list[str] = []

    def listing(side: str, paths: str) -> Iterator[tuple[str, FileStat]]:
        for path in paths:
            pulled.append(side + path)
            yield path, fs()

    changes = diff("docroot", listing("disk:", "abce"), listing("index:", "bde"), now=1.0)
    assert [c.path for c in changes] == ["a", "c", "d"]
    assert pulled == [
        "disk:a",
        "index:b",
        "disk:b",
        "disk:c",
        "index:d",
        "disk:e",
        "index:e",
    ]


def test_surrogate_escaped_names_survive() -> None:
    """Non-UTF-8 names (surrogateescape) are compared and reported unchanged."""
    name = b"caf\xe9.html".decode("utf-8", "surrogateescape")
    changes = diff("docroot", [(name, fs(size=5))], [(name, fs(size=4))], now=1.0)
    assert changes == [Change("docroot", name, K.MODIFIED, 1.0)]


def test_hundred_thousand_entries_diff_quickly() -> None:
    """100,000 files with 1% created, modified and deleted diff in well under a second."""
    n = 100_000
    index = [(f"d{i // 100:04d}/page{i:06d}.html", fs(i, i, i)) for i in range(n)]

    def listing() -> Iterator[tuple[str, FileStat]]:
        for i, (path, _) in enumerate(index):
            if i % 100 == 1:
                continue  # deleted
            size = i + 1 if i % 100 == 2 else i  # modified
            yield path, fs(size, i, i)
        for i in range(n // 100):
            yield f"new/page{i:06d}.html", fs()

    started = time.perf_counter()
    changes = diff("docroot", listing(), iter(index), now=1.0)
    elapsed = time.perf_counter() - started
    counts = {kind: sum(1 for c in changes if c.kind is kind) for kind in K}
    assert counts[K.CREATED] == counts[K.MODIFIED] == counts[K.DELETED] == n // 100
    assert elapsed < 1.0, f"diff of {n} entries took {elapsed:.2f}s"


paths = st.text(alphabet="ab/é\udce9", min_size=1, max_size=6)
stats = st.builds(
    FileStat,
    size=st.integers(0, 3),
    mtime_ns=st.integers(0, 3),
    inode=st.integers(0, 3),
)
trees = st.dictionaries(paths, stats, max_size=30)


@settings(max_examples=300, deadline=None)
@given(disk=trees, index=trees)
def test_applying_the_diff_to_the_index_yields_the_disk_listing(
    disk: dict[str, FileStat], index: dict[str, FileStat]
) -> None:
    """For any index and any tree, index + diff == tree, one change per differing path."""
    changes = diff("docroot", iter(ordered(disk)), iter(ordered(index)), now=7.0)
    updated = dict(index)
    apply(updated, changes, disk)
    assert updated == disk
    assert len({c.path for c in changes}) == len(changes)
    assert all(c.source == "docroot" and c.seen == 7.0 for c in changes)
    differing = {p for p in disk.keys() | index.keys() if disk.get(p) != index.get(p)}
    assert {c.path for c in changes} == differing


# -- against a reference, with names whose str order is not their byte order ---------------

#: Pieces of names: "/"-adjacent bytes (- . 0 sort around "/"), non-ASCII (é, U+0800) and
#: surrogate escapes of non-UTF-8 bytes, which sort before é in bytes but after it as str.
_pieces = ["a", "b", "a.b", "a-b", "a0", "é", "\u0800", "\udce9", "\udc80", "\udcff", "~"]
weird_paths = st.lists(st.sampled_from(_pieces), min_size=1, max_size=3).map("/".join)
weird_trees = st.dictionaries(weird_paths, stats, max_size=25)


def reference(disk: dict[str, FileStat], index: dict[str, FileStat]) -> list[tuple[str, K]]:
    """The diff as sets and a dict: what the merge must agree with, in path-byte order."""
    changes = [(p, K.CREATED) for p in disk.keys() - index.keys()]
    changes += [(p, K.DELETED) for p in index.keys() - disk.keys()]
    changes += [(p, K.MODIFIED) for p in disk.keys() & index.keys() if disk[p] != index[p]]
    return sorted(changes, key=lambda change: path_key(change[0]))


@settings(max_examples=500, deadline=None)
@given(disk=weird_trees, index=weird_trees)
def test_the_merge_agrees_with_a_set_based_reference(
    disk: dict[str, FileStat], index: dict[str, FileStat]
) -> None:
    """For any two listings in byte order, the merge reports exactly the reference's changes,
    in path-byte order, and index + diff == tree."""
    changes = diff("docroot", iter(ordered(disk)), iter(ordered(index)), now=3.0)
    assert [(c.path, c.kind) for c in changes] == reference(disk, index)
    updated = dict(index)
    apply(updated, changes, disk)
    assert updated == disk


@settings(max_examples=300, deadline=None)
@given(
    disk=weird_trees.filter(lambda t: len(t) >= 2),
    index=weird_trees,
    at=st.integers(0, 100),
    side=st.sampled_from(["tree listing", "index"]),
)
def test_an_input_out_of_order_is_an_error_naming_both_paths(
    disk: dict[str, FileStat], index: dict[str, FileStat], at: int, side: str
) -> None:
    """Two neighbours swapped in either listing raise ValueError naming that listing and
    both paths, never a wrong answer."""
    listing = ordered(disk)
    i = at % (len(listing) - 1)
    listing[i], listing[i + 1] = listing[i + 1], listing[i]
    other = ordered(index)
    args = (listing, other) if side == "tree listing" else (other, listing)
    with pytest.raises(ValueError, match="out of order") as raised:
        diff("docroot", iter(args[0]), iter(args[1]), now=1.0)
    message = str(raised.value)
    assert repr(listing[i][0]) in message
    assert repr(listing[i + 1][0]) in message
    assert side in message


def test_code_point_order_is_not_accepted_for_byte_order() -> None:
    """U+0800 sorts before a surrogate-escaped byte 0x80 as str but after it as bytes: a
    listing sorted as str is refused."""
    high, low = "\u0800.html", "\udc80.html"
    assert sorted([low, high]) == [high, low]
    with pytest.raises(ValueError, match="tree listing out of order"):
        diff("docroot", [(high, fs()), (low, fs())], [], now=1.0)
    changes = diff("docroot", [(low, fs()), (high, fs())], [], now=1.0)
    assert [c.path for c in changes] == [low, high]


def test_a_path_listed_twice_is_an_error() -> None:
    """A repeated path in one listing is refused, whether or not the other one has it."""
    with pytest.raises(ValueError, match="index out of order"):
        diff("docroot", [], [("a", fs()), ("a", fs())], now=1.0)
    with pytest.raises(ValueError, match="out of order"):
        diff("docroot", [("a", fs()), ("a", fs())], [("a", fs())], now=1.0)


def test_the_merge_holds_neither_listing() -> None:
    """Diffing 200,000 unchanged files allocates no more at its peak than a few entries:
    nothing grows with the listings (a set of the paths alone would take megabytes)."""
    n = 200_000

    def listing() -> Iterator[tuple[str, FileStat]]:
        for i in range(n):
            yield f"d{i // 100:05d}/page{i:06d}.html", fs(i, i, i)

    tracemalloc.start()
    try:
        changes = diff("docroot", listing(), listing(), now=1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert changes == []
    assert peak < 64 * 1024, f"peak {peak} bytes"


# -- diff_runs: the same merge over rows, in runs and pages ------------------------------------


def rows(files: dict[str, FileStat]) -> list[tuple[bytes, int, int, int]]:
    return [(path_key(p), s.size, s.mtime_ns, s.inode) for p, s in ordered(files)]


def split(items: list[tuple[bytes, int, int, int]], cuts: list[int]) -> list[list[Any]]:
    """`items` cut into consecutive lists at the given positions (some may be empty)."""
    bounds = sorted({0, len(items), *(c % (len(items) + 1) for c in cuts)})
    return [items[a:b] for a, b in itertools.pairwise(bounds)] + [[]]


@settings(max_examples=500, deadline=None)
@given(
    disk=weird_trees,
    index=weird_trees,
    runs=st.lists(st.integers(0, 30), max_size=6),
    pages=st.lists(st.integers(0, 30), max_size=6),
)
def test_diff_runs_agrees_with_diff_however_the_listings_are_cut(
    disk: dict[str, FileStat], index: dict[str, FileStat], runs: list[int], pages: list[int]
) -> None:
    """For any two listings cut into any runs and pages, diff_runs reports what diff does,
    in the same order, and counts every index row it merged."""
    changes, merged = diff_runs(
        "docroot", split(rows(disk), runs), split(rows(index), pages), now=3.0
    )
    assert changes == diff("docroot", iter(ordered(disk)), iter(ordered(index)), now=3.0)
    assert merged == len(index)


@settings(max_examples=200, deadline=None)
@given(disk=weird_trees, index=weird_trees, runs=st.lists(st.integers(0, 30), max_size=6))
def test_diff_runs_hands_the_pairs_that_differ_to_the_caller(
    disk: dict[str, FileStat], index: dict[str, FileStat], runs: list[int]
) -> None:
    """With `differing`, a path in both whose row differs is not MODIFIED but handed back
    with both rows, in path order; created and deleted paths are reported as before."""
    differing: list[tuple[str, Any, Any]] = []
    changes, _ = diff_runs(
        "docroot", split(rows(disk), runs), [rows(index)], now=3.0, differing=differing
    )
    expected = reference(disk, index)
    assert [(c.path, c.kind) for c in changes] == [e for e in expected if e[1] is not K.MODIFIED]
    assert [p for p, _, _ in differing] == [p for p, k in expected if k is K.MODIFIED]
    for path, on_disk, indexed in differing:
        assert on_disk[1:] == tuple(disk[path][:3])
        assert indexed[1:] == tuple(index[path][:3])


def test_diff_runs_refuses_listings_out_of_order() -> None:
    """A run or a page out of order (or a path twice) is a ValueError naming the listing,
    as with diff."""
    a, b = (b"a", 1, 1, 1), (b"b", 1, 1, 1)
    with pytest.raises(ValueError, match="tree listing out of order"):
        diff_runs("docroot", [[b], [a]], [], now=1.0)
    with pytest.raises(ValueError, match="tree listing out of order"):
        diff_runs("docroot", [[b, a]], [[a]], now=1.0)
    with pytest.raises(ValueError, match="index out of order"):
        diff_runs("docroot", [[(b"c", 1, 1, 1)]], [[b, a]], now=1.0)
    with pytest.raises(ValueError, match="index out of order"):
        diff_runs("docroot", [], [[b], [a]], now=1.0)
