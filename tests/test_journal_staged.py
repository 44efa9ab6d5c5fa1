"""Staged rows (`Journal.stage` / `seal`): nothing staged is accepted before its window is
sealed, nothing sealed is lost, and a window a dead process left open is forgotten."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from invalidatord.journal import SCHEMA_VERSION, Accepted, Journal
from invalidatord.model import FileStat


def _urls(*paths: str, t: float = 100.0) -> list[Accepted]:
    return [Accepted("www", p, t, f"docroot:{p[1:]}") for p in paths]


def _stats(*paths: str, size: int = 7) -> list[tuple[str, str, FileStat | None]]:
    return [("docroot", p[1:], FileStat(size, 1, 2)) for p in paths]


def _die_after(path: Path, work: Callable[[Journal], None]) -> None:
    """Run `work` on the journal in a child process that is then SIGKILLed."""

    def child() -> None:
        j = Journal(path)
        work(j)
        os.kill(os.getpid(), signal.SIGKILL)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def test_staged_rows_are_accepted_only_once_sealed(tmp_path: Path) -> None:
    """While the window is open its URL paths are not pending for anyone (submitter, status)
    and the index is as before; the seal accepts both at once."""
    j = Journal(tmp_path / "j.sqlite")
    j.record_baseline("docroot", [("a.html", FileStat(1, 1, 1))])
    assert j.stage("docroot", _urls("/a.html", "/b.html"), _stats("/a.html", "/b.html"))
    other = Journal(tmp_path / "j.sqlite")  # another process: `invalidatord status`
    for journal in (j, other):
        assert journal.pending_count() == 0
        assert journal.pending_paths("www", 10) == []
        assert journal.pending_summary() == {}
        assert journal.unsent_summary() == {}
    assert j.index_get("docroot", ["a.html", "b.html"]) == {"a.html": FileStat(1, 1, 1)}
    j.seal("docroot", [], [], {"changes_accepted:docroot": 2})
    assert other.pending_paths("www", 10) == ["/a.html", "/b.html"]
    assert j.index_get("docroot", ["a.html", "b.html"]) == {
        "a.html": FileStat(7, 1, 2),
        "b.html": FileStat(7, 1, 2),
    }
    assert j.counters()["changes_accepted:docroot"] == 2


def test_a_window_left_open_by_a_dead_process_is_forgotten(tmp_path: Path) -> None:
    """Staged, never sealed, SIGKILLed: the next daemon's `discard_staged` drops the rows and
    the index keeps what it had (so the catch-up finds those files again); a reader that
    is not the daemon drops nothing and sees nothing pending."""
    path = tmp_path / "j.sqlite"
    Journal(path).record_baseline("docroot", [("a.html", FileStat(1, 1, 1))])
    _die_after(path, lambda j: j.stage("docroot", _urls("/a.html"), _stats("/a.html")))
    reader = Journal(path)
    assert reader.pending_count() == 0
    daemon = Journal(path)
    assert daemon.discard_staged() == 1
    assert daemon.pending_count() == 0
    assert list(daemon.index_iter("docroot")) == [("a.html", FileStat(1, 1, 1))]
    # nothing of that window can be accepted later by another one's seal
    daemon.stage("docroot", _urls("/c.html"), _stats("/c.html"))
    daemon.seal("docroot", [], [])
    assert daemon.pending_paths("www", 10) == ["/c.html"]


def test_a_sealed_window_is_not_lost_with_the_process(tmp_path: Path) -> None:
    """Sealed, then SIGKILLed before its index rows were copied into the index: its URL paths
    are pending and the index has its rows at the next start."""
    path = tmp_path / "j.sqlite"

    def stage_and_seal(j: Journal) -> None:
        j.stage("docroot", _urls("/a.html"), _stats("/a.html"))
        j.seal("docroot", _urls("/b.html"), _stats("/b.html", size=9))

    _die_after(path, stage_and_seal)
    j = Journal(path)
    j.discard_staged()
    assert j.pending_paths("www", 10) == ["/a.html", "/b.html"]
    assert list(j.index_iter("docroot")) == [
        ("a.html", FileStat(7, 1, 2)),
        ("b.html", FileStat(9, 1, 2)),
    ]


def test_seal_removes_what_the_flush_does_not_accept(tmp_path: Path) -> None:
    """A path staged, then found created-and-gone before the flush: the seal unstages its URL
    and index rows; what it names besides (not staged) is accepted as `accept` would."""
    j = Journal(tmp_path / "j.sqlite")
    j.stage("docroot", _urls("/a.html", "/tmp.swp"), _stats("/a.html", "/tmp.swp"))
    j.seal(
        "docroot",
        _urls("/c.html", t=50.0),
        _stats("/c.html"),
        unstage=[("www", "/tmp.swp")],
        unstage_index=["tmp.swp"],
    )
    assert j.pending_paths("www", 10) == ["/c.html", "/a.html"]  # oldest first
    assert sorted(j.index_get("docroot", ["a.html", "tmp.swp", "c.html"])) == ["a.html", "c.html"]


def test_a_path_already_pending_is_not_the_windows_own(tmp_path: Path) -> None:
    """Staging a URL path that is pending already leaves it accepted (and says so); one that
    another writer accepts while it is staged stays accepted even if the window unstages it."""
    j = Journal(tmp_path / "j.sqlite")
    j.accept(_urls("/a.html", t=10.0))
    assert not j.stage("docroot", _urls("/a.html", "/b.html"), [])
    assert j.pending_paths("www", 10) == ["/a.html"]
    Journal(tmp_path / "j.sqlite").accept(_urls("/b.html", t=20.0))  # `invalidatord invalidate`
    j.seal("docroot", [], [], unstage=[("www", "/b.html")])
    assert j.pending_paths("www", 10) == ["/a.html", "/b.html"]
    assert j.pending_summary() == {"www": (2, 10.0)}


def test_a_flush_sealed_in_parts_is_accepted_with_the_last(tmp_path: Path) -> None:
    """`seal(last=False)` commits its part, but the window's own rows wait for the last."""
    j = Journal(tmp_path / "j.sqlite")
    j.stage("docroot", _urls("/a.html"), [])
    j.seal("docroot", _urls("/b.html"), [], last=False)
    assert j.pending_paths("www", 10) == ["/b.html"]
    j.seal("docroot", _urls("/c.html"), [])
    assert j.pending_paths("www", 10) == ["/a.html", "/b.html", "/c.html"]


def test_a_wildcard_batch_takes_only_accepted_rows(tmp_path: Path) -> None:
    """A batch's wildcard consumes the accepted paths under it, never a staged one."""
    j = Journal(tmp_path / "j.sqlite")
    j.accept(_urls("/d/a.html"))
    j.stage("docroot", _urls("/d/b.html"), [])
    j.create_batch("www", ["/d/*"], [])
    j.seal("docroot", [], [])
    assert j.pending_paths("www", 10) == ["/d/b.html"]


def test_a_schema_2_journal_is_upgraded(tmp_path: Path) -> None:
    """A journal of schema 2 opens at the current version with its pending paths accepted."""
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE pending (
            distribution TEXT NOT NULL, path TEXT NOT NULL, first_seen REAL NOT NULL,
            origin TEXT, PRIMARY KEY (distribution, path)
        ) WITHOUT ROWID;
        CREATE INDEX pending_age ON pending (distribution, first_seen);
        INSERT INTO pending VALUES ('www', '/old.html', 5.0, 'docroot:old.html');
        """
    )
    db.commit()
    db.close()
    j = Journal(path)
    assert j.pending_paths("www", 10) == ["/old.html"]
    j.stage("docroot", _urls("/new.html"), [])
    assert j.pending_count() == 1
    j.seal("docroot", [], [])
    assert j.pending_paths("www", 10) == ["/old.html", "/new.html"]
    j.close()
    check = sqlite3.connect(path)
    version = check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    indexes = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert version == str(SCHEMA_VERSION) == "3"
    assert "pending_order" in indexes
    assert "pending_age" not in indexes
