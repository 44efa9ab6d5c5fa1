"""The pipeline spends the quiet window on the per-path work of accepting (stat, index lookup,
mapping), so a flush only has the journal left; a path changed again is prepared again, so
the last stat always wins. Through the real journal and the in-memory source, fake clocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from invalidatord.journal import Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import ChangeBatch, ChangeKind, FileStat
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.memory import MemorySource
from tests.harness import FakeClock

K = ChangeKind


class CountingSource(MemorySource):
    """The in-memory source, counting the stats the pipeline asks for."""

    stats = 0

    def stat(self, path: str) -> FileStat | None:
        self.stats += 1
        return super().stat(path)


Setup = tuple[Pipeline, CountingSource, Journal, FakeClock]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A pipeline (quiet window 10 s on a fake monotonic clock) over a counting in-memory
    source whose one file `known.html` is the journal's baseline."""
    journal = Journal(tmp_path / "journal.sqlite", clock=lambda: 50.0)
    pipeline: Pipeline | None = None

    def sink(change: Any) -> None:
        assert pipeline is not None
        pipeline.sink(change)

    source = CountingSource("docroot", sink, clock=lambda: 100.0)
    source.set_file("known.html", FileStat(1, 1, 1))
    journal.record_baseline("docroot", source.scan())
    clock = FakeClock()
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
    yield pipeline, source, journal, clock
    source.stop()
    journal.close()


def _run_window(pipeline: Pipeline) -> None:
    """Loop iterations with the window still open, as the pipeline thread runs them."""
    for _ in range(5):
        pipeline.run_once()


def _close_window(pipeline: Pipeline, clock: FakeClock) -> None:
    clock.now += 11.0
    pipeline.run_once()


def test_the_window_does_the_stats_and_the_flush_does_none(setup: Setup) -> None:
    """1,200 changed files (more than one preparation chunk) are all stat'ed while the window
    is open; closing it accepts every one of them without a single stat more."""
    pipeline, source, journal, clock = setup
    names = [f"d/f{i:04}.html" for i in range(1200)]
    for name in names:
        source.set_file(name, FileStat(2, 2, 2))
        source.emit(name, K.CREATED)
    _run_window(pipeline)
    assert source.stats == len(names)
    assert journal.pending_count() == 0
    _close_window(pipeline, clock)
    assert source.stats == len(names)
    assert set(journal.pending_paths("www", 10_000)) == {"/" + n for n in names}
    assert dict(journal.index_iter("docroot", "d")) == dict.fromkeys(names, FileStat(2, 2, 2))


def test_a_path_changed_after_its_preparation_is_prepared_again(setup: Setup) -> None:
    """The file's second change in the same window is what the index records."""
    pipeline, source, journal, clock = setup
    source.set_file("page.html", FileStat(5, 5, 5))
    source.emit("page.html", K.CREATED)
    _run_window(pipeline)
    source.set_file("page.html", FileStat(6, 6, 6))
    source.emit("page.html", K.MODIFIED)
    _run_window(pipeline)
    _close_window(pipeline, clock)
    assert journal.pending_paths("www", 10) == ["/page.html"]
    assert dict(journal.index_iter("docroot", "page.html")) == {"page.html": FileStat(6, 6, 6)}


def test_a_file_created_and_deleted_after_preparation_is_dropped(setup: Setup) -> None:
    """Prepared while it existed, then gone before the window closed, a file the index never
    knew is neither invalidated nor indexed (rsync's temporary files)."""
    pipeline, source, journal, clock = setup
    source.set_file(".page.html.Ab12Cd", FileStat(5, 5, 5))
    source.emit(".page.html.Ab12Cd", K.CREATED)
    _run_window(pipeline)
    source.set_file(".page.html.Ab12Cd", None)
    source.emit(".page.html.Ab12Cd", K.MOVED)
    _run_window(pipeline)
    _close_window(pipeline, clock)
    assert journal.pending_count() == 0
    assert list(journal.index_iter("docroot", ".page.html.Ab12Cd")) == []


def test_a_known_file_deleted_after_preparation_is_invalidated_and_unindexed(
    setup: Setup,
) -> None:
    """A file of the baseline, modified (prepared) and then deleted in the same window, is
    invalidated and leaves the index."""
    pipeline, source, journal, clock = setup
    source.set_file("known.html", FileStat(9, 9, 9))
    source.emit("known.html", K.MODIFIED)
    _run_window(pipeline)
    source.set_file("known.html", None)
    source.emit("known.html", K.DELETED)
    _run_window(pipeline)
    _close_window(pipeline, clock)
    assert journal.pending_paths("www", 10) == ["/known.html"]
    assert list(journal.index_iter("docroot", "known.html")) == []


def test_a_batch_is_prepared_and_accepted_like_its_changes(setup: Setup) -> None:
    """3,000 changes delivered as one `ChangeBatch` (more than one drain and one preparation
    chunk), then a single change: every one is stat'ed in the window and accepted at its end."""
    pipeline, source, journal, clock = setup
    names = [f"d/f{i:04}.html" for i in range(3000)]
    for name in names:
        source.set_file(name, FileStat(2, 2, 2))
    source.set_file("single.html", FileStat(3, 3, 3))
    pipeline.sink_batch(ChangeBatch("docroot", [(n, K.CREATED) for n in names], 100.0))
    source.emit("single.html", K.CREATED)
    for _ in range(10):
        pipeline.run_once()
    assert source.stats == len(names) + 1
    _close_window(pipeline, clock)
    assert source.stats == len(names) + 1
    assert set(journal.pending_paths("www", 10_000)) == {"/" + n for n in [*names, "single.html"]}


def test_a_path_in_a_later_batch_is_prepared_again(setup: Setup) -> None:
    """Batches are taken in order: a file prepared from one batch and changed again in the
    next is prepared again, and the index records its last stat."""
    pipeline, source, journal, clock = setup
    source.set_file("page.html", FileStat(5, 5, 5))
    pipeline.sink_batch(ChangeBatch("docroot", [("page.html", K.CREATED)], 100.0))
    _run_window(pipeline)
    source.set_file("page.html", FileStat(6, 6, 6))
    pipeline.sink_batch(
        ChangeBatch("docroot", [("other.html", K.DELETED), ("page.html", K.MODIFIED)], 100.0)
    )
    _run_window(pipeline)
    _close_window(pipeline, clock)
    assert journal.pending_paths("www", 10) == ["/page.html"]
    assert dict(journal.index_iter("docroot", "page.html")) == {"page.html": FileStat(6, 6, 6)}


def test_the_window_stages_the_rows_and_the_flush_seals_them(setup: Setup) -> None:
    """The prepared paths' rows are written while the window is open (staged, not accepted:
    nobody sees them pending), and the flush accepts exactly them."""
    pipeline, source, journal, clock = setup
    names = [f"s/f{i:04}.html" for i in range(600)]
    for name in names:
        source.set_file(name, FileStat(3, 3, 3))
        source.emit(name, K.CREATED)
    _run_window(pipeline)
    staged = journal._db.execute("SELECT count(*) FROM pending WHERE staged_in != 0").fetchone()
    assert staged[0] == len(names)
    assert journal.pending_count() == 0
    _close_window(pipeline, clock)
    assert sorted(journal.pending_paths("www", 10_000)) == sorted("/" + n for n in names)
    assert dict(journal.index_iter("docroot", "s")) == dict.fromkeys(names, FileStat(3, 3, 3))
    assert journal._db.execute("SELECT count(*) FROM windows").fetchone()[0] == 0
    assert journal._db.execute("SELECT count(*) FROM staged_index").fetchone()[0] == 0
