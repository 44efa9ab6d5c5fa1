"""`compare: content` and release swaps in the pipeline: a file is changed only when its bytes
are, each file is read once per change, and the index keeps the hashes. Through the real
journal and the in-memory source (a stat's `digest` stands for the file's bytes), fake clocks.
The same against real files and the daemon: tests/test_e2e_deploys.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from invalidatord import catchup
from invalidatord.errors import JournalError
from invalidatord.journal import SCHEMA_VERSION, Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import ChangeKind, FileStat
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.memory import MemorySource

K = ChangeKind


def stat(n: int, content: bytes | None, size: int = 10) -> FileStat:
    """A stat with inode and mtime `n`, and a digest standing for the bytes `content`."""
    return FileStat(size, n, n, 0, content)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Setup = tuple[Pipeline, MemorySource, Journal, Clock]


def _setup(tmp_path: Path, compare: Any, files: dict[str, FileStat]) -> Setup:
    journal = Journal(tmp_path / "journal.sqlite", clock=lambda: 50.0)
    pipeline: Pipeline | None = None

    def sink(change: Any) -> None:
        assert pipeline is not None
        pipeline.sink(change)

    source = MemorySource("docroot", sink, compare=compare, clock=lambda: 100.0)
    for path, st in files.items():
        source.set_file(path, st)
    journal.record_baseline("docroot", source.scan())
    clock = Clock()
    pipeline = Pipeline(
        sources={"docroot": source},
        scanners={"docroot": source},
        mapper=Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))]),
        journal=journal,
        debounce=DebounceSettings(quiet=10.0, max_delay=60.0),
        metrics=Metrics(),
        clock=lambda: 100.0,
        monotonic=clock,
    )
    source.start()
    return pipeline, source, journal, clock


@pytest.fixture
def content(tmp_path: Path) -> Iterator[Setup]:
    """compare: content over a baseline of three files with known hashes."""
    setup = _setup(
        tmp_path,
        "content",
        {"a.html": stat(1, b"A"), "b.html": stat(1, b"B"), "c.html": stat(1, b"C")},
    )
    yield setup
    setup[1].stop()
    setup[2].close()


@pytest.fixture
def mtime(tmp_path: Path) -> Iterator[Setup]:
    """compare: mtime over a baseline of three files whose hashes the index does not have."""
    setup = _setup(
        tmp_path,
        "mtime",
        {"a.html": stat(1, None), "b.html": stat(1, None), "c.html": stat(1, None)},
    )
    yield setup
    setup[1].stop()
    setup[2].close()


def _flush(pipeline: Pipeline, clock: Clock) -> None:
    for _ in range(3):
        pipeline.run_once()
    clock.now += 11.0
    pipeline.run_once()


def _pending(journal: Journal) -> set[str]:
    return set(journal.pending_paths("www", 10_000))


def test_diff_asks_the_passed_comparison_for_every_path_in_both() -> None:
    """The pure diff hands each path in both listings to `same` (equal stats too) and
    reports MODIFIED only where it says so; created and deleted need no comparison."""
    asked: list[str] = []

    def same(path: str, disk: FileStat, old: FileStat) -> bool:
        asked.append(path)
        return path != "b"

    disk = [("a", stat(2, None)), ("b", stat(1, None)), ("d", stat(1, None))]
    index = [("a", stat(1, None)), ("b", stat(1, None)), ("c", stat(1, None))]
    changes = catchup.diff("s", disk, index, 5.0, same)
    assert [(c.path, c.kind) for c in changes] == [
        ("b", K.MODIFIED),
        ("c", K.DELETED),
        ("d", K.CREATED),
    ]
    assert asked == ["a", "b"]


def test_a_rewrite_with_the_same_bytes_is_not_a_change(content: Setup) -> None:
    """A file rewritten by temp file + rename (new inode, new mtime, same bytes) is not
    invalidated; the index learns its new stat. Each file is read once."""
    pipeline, source, journal, clock = content
    source.set_file("a.html", stat(2, b"A"))
    source.set_file("b.html", stat(2, b"B2"))
    source.emit("a.html", K.MOVED)
    source.emit("b.html", K.MOVED)
    _flush(pipeline, clock)
    assert _pending(journal) == {"/b.html"}
    assert source.reads == 2
    index = dict(journal.index_iter("docroot"))
    assert (index["a.html"].inode, index["a.html"].digest) == (2, b"A")
    assert (index["b.html"].inode, index["b.html"].digest) == (2, b"B2")


def test_an_event_with_an_unchanged_stat_is_still_read(content: Setup) -> None:
    """A same-size rewrite within one tick of the coarse clock keeps size, mtime and inode:
    the event is trusted and the bytes decide."""
    pipeline, source, journal, clock = content
    source.set_file("c.html", stat(1, b"C2"))
    source.emit("c.html", K.MODIFIED)
    _flush(pipeline, clock)
    assert _pending(journal) == {"/c.html"}


def test_a_catch_up_reads_only_files_whose_stat_changed_at_equal_size(content: Setup) -> None:
    """At restart: equal stats are not read, a size change is changed without a read by the
    diff (its accept reads it once, for the index), equal bytes under a new stat are not
    invalidated, new bytes are, and each file is read at most once."""
    pipeline, source, journal, clock = content
    source.set_file("a.html", stat(2, b"A"))  # same bytes, new inode and mtime
    source.set_file("b.html", stat(2, b"B2"))  # new bytes, same size
    source.set_file("c.html", stat(1, b"C"))  # untouched
    source.set_file("d.html", stat(2, b"D"))  # added
    source.emit("", K.RESCAN)
    _flush(pipeline, clock)
    assert _pending(journal) == {"/b.html", "/d.html"}
    assert source.reads == 3  # a and b by the diff, d by its accept; c never
    index = dict(journal.index_iter("docroot"))
    assert index["a.html"].inode == 2
    assert index["b.html"].digest == b"B2"
    assert index["d.html"].digest == b"D"


def test_a_swap_under_mtime_compares_with_the_previous_release(mtime: Setup) -> None:
    """A release swap with no hashes in the index: each file of equal size is compared with
    the previous release's file while that still exists as indexed; a file whose previous
    version is gone counts as changed."""
    pipeline, source, journal, clock = mtime
    source.previous = {"a.html": stat(1, b"A"), "b.html": stat(1, b"B")}  # c.html is gone
    source.files = {
        "a.html": stat(2, b"A"),
        "b.html": stat(2, b"B2"),
        "c.html": stat(2, b"C"),
        "e.html": stat(2, b"E"),
    }
    source.emit("a.html", K.DELETED)  # the old release's deletion, heard before the swap
    source.emit("", K.REATTACH)
    _flush(pipeline, clock)
    assert _pending(journal) == {"/b.html", "/c.html", "/e.html"}
    assert dict(journal.index_iter("docroot"))["a.html"].inode == 2


def test_a_swap_under_content_needs_no_previous_release(content: Setup) -> None:
    """git-sync deletes the old worktree right after the swap: the index's hashes decide."""
    pipeline, source, journal, clock = content
    source.files = {"a.html": stat(2, b"A"), "b.html": stat(2, b"B2"), "x.html": stat(2, b"X")}
    source.emit("", K.REATTACH)
    _flush(pipeline, clock)
    assert _pending(journal) == {"/b.html", "/c.html", "/x.html"}


def test_a_version_1_journal_gains_the_digest_column(tmp_path: Path) -> None:
    """A journal written before content hashes opens, keeps its index (hash unknown), and
    says it is now at the current schema version."""
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE fs_index (
            source TEXT NOT NULL, path BLOB NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, PRIMARY KEY (source, path)
        ) WITHOUT ROWID;
        INSERT INTO fs_index VALUES ('docroot', X'612E68746D6C', 3, 4, 5);
        """
    )
    db.commit()
    db.close()
    journal = Journal(path)
    try:
        assert list(journal.index_iter("docroot")) == [("a.html", FileStat(3, 4, 5))]
        assert next(journal.index_iter("docroot"))[1].digest is None
        journal.accept([], [("docroot", "a.html", FileStat(3, 4, 6, 0, b"h"))])
        assert journal.index_get("docroot", ["a.html"])["a.html"].digest == b"h"
    finally:
        journal.close()
    version = (
        sqlite3.connect(path)
        .execute("SELECT value FROM meta WHERE key = 'schema_version'")
        .fetchone()[0]
    )
    assert version == str(SCHEMA_VERSION) == "3"


def test_a_journal_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A schema version this code does not know is an error naming both versions."""
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema version 99 was written by a newer"):
        Journal(path)
