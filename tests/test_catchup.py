"""The catch-up diff: a tree listing against the persisted index. Pure logic."""

from __future__ import annotations

import time
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from invalidatord.catchup import diff
from invalidatord.model import Change, ChangeKind, FileStat

K = ChangeKind


def fs(size: int = 1, mtime_ns: int = 1_000, inode: int = 1) -> FileStat:
    return FileStat(size=size, mtime_ns=mtime_ns, inode=inode)


def apply(index: dict[str, FileStat], changes: list[Change], disk: dict[str, FileStat]) -> None:
    """What the pipeline does to the index: record what is on disk, forget what is gone."""
    for change in changes:
        if change.kind is K.DELETED:
            del index[change.path]
        else:
            index[change.path] = disk[change.path]


def test_first_listing_against_an_empty_index_is_all_created() -> None:
    """Every file on disk is CREATED when the index is empty, carrying source and time."""
    changes = diff("docroot", [("a.html", fs()), ("b/c.css", fs())], {}, now=42.0)
    assert changes == [
        Change("docroot", "a.html", K.CREATED, 42.0),
        Change("docroot", "b/c.css", K.CREATED, 42.0),
    ]


def test_unchanged_files_produce_nothing() -> None:
    """A tree identical to its index yields no change at all."""
    index = {"a.html": fs(1, 10, 100), "b.html": fs(2, 20, 200)}
    assert diff("docroot", index.items(), index, now=1.0) == []


def test_each_stat_field_counts_as_a_modification() -> None:
    """A different size, mtime_ns or inode (replace by rename) each make the file MODIFIED."""
    index = {"size": fs(), "mtime": fs(), "inode": fs(), "same": fs()}
    disk = [
        ("size", fs(size=2)),
        ("mtime", fs(mtime_ns=2_000)),
        ("inode", fs(inode=2)),
        ("same", fs()),
    ]
    changes = diff("docroot", disk, index, now=1.0)
    assert [(c.path, c.kind) for c in changes] == [
        ("size", K.MODIFIED),
        ("mtime", K.MODIFIED),
        ("inode", K.MODIFIED),
    ]


def test_files_gone_from_disk_are_deleted_in_path_order() -> None:
    """Indexed files missing from the listing come out DELETED, after the rest, sorted."""
    index = {"z.html": fs(), "a.html": fs(), "keep.html": fs()}
    changes = diff("docroot", [("keep.html", fs()), ("new.html", fs())], index, now=1.0)
    assert [(c.path, c.kind) for c in changes] == [
        ("new.html", K.CREATED),
        ("a.html", K.DELETED),
        ("z.html", K.DELETED),
    ]


def test_disk_listing_is_consumed_once_and_lazily() -> None:
    """A generator listing works: it is read exactly once, to the end."""
    pulled: list[str] = []

    def listing() -> Iterator[tuple[str, FileStat]]:
        for path in ("a", "b", "c"):
            pulled.append(path)
            yield path, fs()

    changes = diff("docroot", listing(), {"b": fs()}, now=1.0)
    assert pulled == ["a", "b", "c"]
    assert [c.path for c in changes] == ["a", "c"]


def test_surrogate_escaped_names_survive() -> None:
    """Non-UTF-8 names (surrogateescape) are compared and reported unchanged."""
    name = b"caf\xe9.html".decode("utf-8", "surrogateescape")
    changes = diff("docroot", [(name, fs(size=5))], {name: fs(size=4)}, now=1.0)
    assert changes == [Change("docroot", name, K.MODIFIED, 1.0)]


def test_hundred_thousand_entries_diff_quickly() -> None:
    """100,000 files with 1% created, modified and deleted diff in well under a second."""
    n = 100_000
    index = {f"d{i // 100}/page{i}.html": fs(i, i, i) for i in range(n)}

    def listing() -> Iterator[tuple[str, FileStat]]:
        for i in range(n):
            if i % 100 == 1:
                continue  # deleted
            size = i + 1 if i % 100 == 2 else i  # modified
            yield f"d{i // 100}/page{i}.html", fs(size, i, i)
        for i in range(n // 100):
            yield f"new/page{i}.html", fs()

    started = time.perf_counter()
    changes = diff("docroot", listing(), index, now=1.0)
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
    changes = diff("docroot", iter(disk.items()), index, now=7.0)
    updated = dict(index)
    apply(updated, changes, disk)
    assert updated == disk
    assert len({c.path for c in changes}) == len(changes)
    assert all(c.source == "docroot" and c.seen == 7.0 for c in changes)
    differing = {p for p in disk.keys() | index.keys() if disk.get(p) != index.get(p)}
    assert {c.path for c in changes} == differing
