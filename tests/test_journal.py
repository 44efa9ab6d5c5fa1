"""The journal: what is committed survives, batches move through their states, the index works."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from invalidatord.errors import JournalError
from invalidatord.journal import (
    COMPLETED,
    PLANNED,
    REJECTED,
    SPLIT,
    SUBMITTED,
    Accepted,
    Journal,
)
from invalidatord.model import FileStat, InFlight


def _accept(j: Journal, *paths: str, dist: str = "www", t: float = 100.0) -> int:
    return j.accept(Accepted(dist, p, t, f"docroot:{p}") for p in paths)


def test_accept_deduplicates_and_keeps_the_earliest_first_seen(tmp_path: Path) -> None:
    """The same URL accepted twice is pending once, with the earliest first_seen."""
    j = Journal(tmp_path / "j.sqlite")
    assert _accept(j, "/a", "/b", t=200.0) == 2
    _accept(j, "/a", t=100.0)
    assert j.pending_paths("www", 10) == ["/a", "/b"]
    assert j.pending_summary() == {"www": (2, 100.0)}


def test_committed_paths_survive_a_killed_process(tmp_path: Path) -> None:
    """A process SIGKILLed right after accept() returns leaves its paths in the journal."""
    path = tmp_path / "j.sqlite"

    def child() -> None:
        j = Journal(path)
        _accept(j, *(f"/p{i}" for i in range(1000)))
        os.kill(os.getpid(), signal.SIGKILL)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert Journal(path).pending_count() == 1000


def test_batch_lifecycle_and_in_flight(tmp_path: Path) -> None:
    """pending -> planned -> submitted -> completed, with in-flight counts from the journal."""
    j = Journal(tmp_path / "j.sqlite")
    _accept(j, "/a", "/b", "/img/*", "/img/x.png")
    rec = j.create_batch("www", ["/a", "/b", "/img/*"], ["/a", "/b", "/img/*", "/img/x.png"])
    assert rec.state == PLANNED
    assert j.pending_count() == 0
    assert rec.origins["/a"] == "docroot:/a"
    assert j.in_flight("www") == InFlight()
    j.mark_submitted(rec.id, "I123", completed=False)
    assert j.batch(rec.id).state == SUBMITTED
    assert j.in_flight("www") == InFlight(files=2, wildcards=1)
    assert j.known_invalidation_ids("www") == {"I123"}
    j.mark_completed(rec.id)
    assert j.batch(rec.id).state == COMPLETED
    assert j.in_flight("www") == InFlight()
    assert j.billed_this_month() == 3


def test_caller_reference_is_deterministic_and_per_journal(tmp_path: Path) -> None:
    """The same batch always has the same reference; another journal's never collides."""
    a, b = Journal(tmp_path / "a.sqlite"), Journal(tmp_path / "b.sqlite")
    assert a.caller_reference(7, "www", ["/y", "/x"]) == a.caller_reference(7, "www", ["/x", "/y"])
    assert a.caller_reference(7, "www", ["/x"]) != a.caller_reference(7, "www", ["/z"])
    assert a.caller_reference(7, "www", ["/x"]) != b.caller_reference(7, "www", ["/x"])
    _accept(a, "/x")
    rec = a.create_batch("www", ["/x"], ["/x"])
    reopened = Journal(tmp_path / "a.sqlite").batch(rec.id)
    assert reopened.caller_reference == rec.caller_reference


def test_split_and_reject(tmp_path: Path) -> None:
    """Bisecting replaces a batch by its halves; a rejected path is set aside, not retried."""
    j = Journal(tmp_path / "j.sqlite")
    paths = [f"/p{i}" for i in range(5)]
    _accept(j, *paths)
    rec = j.create_batch("www", paths, paths)
    first, second = j.split(rec.id)
    assert j.batch(rec.id).state == SPLIT
    assert first.paths + second.paths == tuple(paths)
    assert {first.state, second.state} == {PLANNED}
    assert first.caller_reference != second.caller_reference != rec.caller_reference
    assert [b.id for b in j.batches(PLANNED, "www")] == [first.id, second.id]
    j.reject(first.id, "InvalidArgument: bad path")
    assert j.batch(first.id).state == REJECTED
    assert [b.id for b in j.batches(PLANNED)] == [second.id]


def test_rereference_gives_a_new_reference(tmp_path: Path) -> None:
    """A reference CloudFront says was used for other paths is replaced, once per attempt."""
    j = Journal(tmp_path / "j.sqlite")
    _accept(j, "/x")
    rec = j.create_batch("www", ["/x"], ["/x"])
    j.record_failure(rec.id, "InvalidationBatchAlreadyExists")
    fresh = j.rereference(rec.id)
    assert fresh.caller_reference != rec.caller_reference
    assert fresh.caller_reference.startswith(rec.caller_reference)


def test_index_prefix_queries_and_non_utf8_names(tmp_path: Path) -> None:
    """index_iter returns the prefix itself and what is under it, never a sibling prefix."""
    j = Journal(tmp_path / "j.sqlite")
    weird = os.fsdecode(b"docs/caf\xe9.html")
    st = FileStat(1, 2, 3)
    j.record_baseline(
        "root", [("docs/a.html", st), ("docs-old/b.html", st), ("docs", st), (weird, st)]
    )
    assert [p for p, _ in j.index_iter("root", "docs")] == ["docs", "docs/a.html", weird]
    assert [p for p, _ in j.index_iter("root", "/docs/")] == ["docs", "docs/a.html", weird]
    assert len(list(j.index_iter("root", ""))) == 4
    assert j.baseline_recorded("root")
    assert not j.baseline_recorded("other")
    j.accept([], [("root", "docs/a.html", None), ("root", "new.html", FileStat(5, 6, 7))])
    assert "docs/a.html" not in dict(j.index_iter("root", ""))
    assert j.index_get("root", ["new.html", "nope"]) == {"new.html": FileStat(5, 6, 7)}


_INDEXED = [
    "a",
    "a-b",
    "a.b",
    "a/b",
    "a/b.c",
    "a/b/c",
    "a/b0",
    "a0",
    "a0/x",
    "ab",
    os.fsdecode(b"caf\xe9"),
    "caf\xe9",
    "\u0800",
    os.fsdecode(b"\xff/z"),
]


def _index(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.sqlite")
    j.record_baseline("root", [(p, FileStat(i, i, i)) for i, p in enumerate(_INDEXED)])
    j.record_baseline("other", [("a/b", FileStat(9, 9, 9)), ("zz", FileStat(9, 9, 9))])
    return j


@pytest.mark.parametrize("page", [1, 2, 3, 4, 13, 14, 15, 2_000])
def test_index_iter_pages_through_in_path_byte_order(tmp_path: Path, page: int) -> None:
    """Any page size (below, at and above the row count, dividing it or not) yields every
    row of the source once, with its stat, in the order of the UTF-8 (surrogateescape)
    bytes of the path: the order scan() lists the tree in."""
    j = _index(tmp_path)
    rows = list(j.index_iter("root", "", page=page))
    expected = sorted(_INDEXED, key=lambda p: p.encode("utf-8", "surrogateescape"))
    assert [p for p, _ in rows] == expected
    assert dict(rows) == {p: FileStat(i, i, i) for i, p in enumerate(_INDEXED)}
    assert [p for p, _ in j.index_iter("other", "", page=page)] == ["a/b", "zz"]


@pytest.mark.parametrize("page", [1, 2, 2_000])
def test_index_iter_under_a_prefix_pages_through_that_subtree_only(
    tmp_path: Path, page: int
) -> None:
    """A prefix gives the prefix itself and prefix/..., never a name that merely starts with
    it (a-b, a.b, a0, ab), at every page size; a prefix nothing is under gives nothing."""
    j = _index(tmp_path)
    assert [p for p, _ in j.index_iter("root", "a", page=page)] == [
        "a",
        "a/b",
        "a/b.c",
        "a/b/c",
        "a/b0",
    ]
    assert [p for p, _ in j.index_iter("root", "a/b", page=page)] == ["a/b", "a/b/c"]
    assert [p for p, _ in j.index_iter("root", "a0", page=page)] == ["a0", "a0/x"]
    weird_dir = os.fsdecode(b"\xff")
    assert [p for p, _ in j.index_iter("root", weird_dir, page=page)] == [weird_dir + "/z"]
    assert list(j.index_iter("root", "a/b/c/d", page=page)) == []
    assert list(j.index_iter("root", "missing", page=page)) == []


def test_index_iter_holds_no_cursor_between_pages(tmp_path: Path) -> None:
    """Between pages the journal is free: other reads and a write go through while a listing
    is half read, and the listing carries on after the last row it gave (keyset paging)."""
    j = _index(tmp_path)
    rows = j.index_iter("root", "", page=3)
    first = [next(rows)[0] for _ in range(3)]
    assert first == ["a", "a-b", "a.b"]
    assert j.index_get("root", ["a"]) == {"a": FileStat(0, 0, 0)}
    j.accept([], [("root", "a-a", FileStat(1, 1, 1)), ("root", "a/b", None)])
    assert [p for p, _ in rows] == [p for p in _sorted_after("a.b") if p != "a/b"]


def _sorted_after(last: str) -> list[str]:
    ordered = sorted(_INDEXED, key=lambda p: p.encode("utf-8", "surrogateescape"))
    return ordered[ordered.index(last) + 1 :]


def test_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A state_dir that cannot be created names the path in the error."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="file"):
        Journal(blocker / "journal.sqlite")


def test_second_process_reads_while_writer_holds_it(tmp_path: Path) -> None:
    """WAL: another connection reads committed rows while this one stays open."""
    path = tmp_path / "j.sqlite"
    writer = Journal(path)
    _accept(writer, "/a")
    reader = Journal(path)
    assert reader.pending_paths("www", 10) == ["/a"]
    _accept(writer, "/b")
    assert reader.pending_count() == 2


def test_a_wildcard_batch_consumes_every_pending_path_it_covers(tmp_path: Path) -> None:
    """Planning `/img/*` removes all pending paths under /img/ (even those the planner did not
    see), and nothing outside it."""
    j = Journal(tmp_path / "j.sqlite")
    _accept(j, "/img/a.png", "/img/sub/b.png", "/img/*", "/imgx/c.png", "/index.html")
    j.create_batch("www", ["/img/*"], ["/img/*"])
    assert sorted(j.pending_paths("www", 10)) == ["/imgx/c.png", "/index.html"]


def test_state_dir_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 022 the state dir is created 0750 and the journal, its WAL and SHM and the
    daemon lock 0640 or tighter: nothing in it is readable by other users."""
    from invalidatord.factory import StateLock

    state = tmp_path / "state" / "invalidatord"
    old = os.umask(0o022)
    try:
        j = Journal(state / "journal.sqlite")
        _accept(j, "/a")  # a write: the WAL and SHM exist from here on
        lock = StateLock(state)
        assert lock.acquire()
        files = [state / n for n in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm")]
        modes = {p.name: p.stat().st_mode & 0o777 for p in [*files, lock.path]}
        lock.release()
        j.close()
    finally:
        os.umask(old)
    assert (state.stat().st_mode & 0o777) == 0o750
    assert (state.parent.stat().st_mode & 0o777) == 0o750
    assert all(mode & ~0o640 == 0 for mode in modes.values()), modes
