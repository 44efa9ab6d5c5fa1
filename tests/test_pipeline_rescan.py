"""The pipeline's catch-up rescan: the tree listing merged with the journal's index, both
streamed, through the real journal and the in-memory source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from invalidatord.journal import Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import ChangeKind, FileStat
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.memory import MemorySource

TREE = {
    "a.b": FileStat(1, 1, 1),
    "a/keep.html": FileStat(2, 2, 2),
    "a/gone.html": FileStat(3, 3, 3),
    "a/sub/edit.html": FileStat(4, 4, 4),
    "a0": FileStat(5, 5, 5),
    "caf\udce9.html": FileStat(6, 6, 6),
    "z.html": FileStat(7, 7, 7),
}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Pipeline, MemorySource, Journal]]:
    """A started pipeline over a MemorySource whose TREE is the journal's baseline."""
    journal = Journal(tmp_path / "journal.sqlite", clock=lambda: 50.0)
    pipeline: Pipeline | None = None

    def sink(change: Any) -> None:
        assert pipeline is not None
        pipeline.sink(change)

    memory = MemorySource("docroot", sink, clock=lambda: 100.0)
    for path, stat in TREE.items():
        memory.set_file(path, stat)
    journal.record_baseline("docroot", memory.scan())
    pipeline = Pipeline(
        sources={"docroot": memory},
        scanners={"docroot": memory},
        mapper=Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))]),
        journal=journal,
        debounce=DebounceSettings(quiet=60.0, max_delay=60.0),
        metrics=Metrics(),
        clock=lambda: 100.0,
    )
    memory.start()
    yield pipeline, memory, journal
    memory.stop()
    journal.close()


def _change_the_tree(memory: MemorySource) -> None:
    memory.set_file("a/gone.html", None)
    memory.set_file("a/sub/edit.html", FileStat(40, 4, 4))
    memory.set_file("a/new.html", FileStat(8, 8, 8))
    memory.set_file("z.html", None)


def test_a_full_rescan_accepts_what_changed_and_logs_the_rows_it_read(
    setup: tuple[Pipeline, MemorySource, Journal],
) -> None:
    """A RESCAN of the whole tree accepts the created, modified and deleted files (and
    nothing unchanged), brings the index in line with the tree, and logs `rescan_done` with
    `indexed` = the index rows it merged."""
    pipeline, memory, journal = setup
    _change_the_tree(memory)
    memory.emit("", ChangeKind.RESCAN)
    with capture_logs() as logs:
        pipeline.flush_all()
    done = [e for e in logs if e["event"] == "rescan_done"]
    assert len(done) == 1
    assert done[0]["prefix"] == ""
    assert done[0]["indexed"] == len(TREE)
    assert done[0]["changes"] == 4
    assert sorted(journal.pending_paths("www", 100)) == [
        "/a/gone.html",
        "/a/new.html",
        "/a/sub/edit.html",
        "/z.html",
    ]
    assert list(journal.index_iter("docroot")) == list(memory.scan())


def test_a_subtree_rescan_reads_only_that_part_of_the_index(
    setup: tuple[Pipeline, MemorySource, Journal],
) -> None:
    """A RESCAN of `a` merges a/... only: `a.b` and `a0` (which sort around `a/`) and the
    change to z.html outside it are neither read nor reported."""
    pipeline, memory, journal = setup
    _change_the_tree(memory)
    memory.emit("a", ChangeKind.RESCAN)
    with capture_logs() as logs:
        pipeline.flush_all()
    (done,) = [e for e in logs if e["event"] == "rescan_done"]
    assert (done["prefix"], done["indexed"], done["changes"]) == ("a", 3, 3)
    assert sorted(journal.pending_paths("www", 100)) == [
        "/a/gone.html",
        "/a/new.html",
        "/a/sub/edit.html",
    ]
    assert "z.html" in dict(journal.index_iter("docroot"))
