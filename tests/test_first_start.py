"""The first start's baseline invalidates nothing, except files changed since the watch
began: an event for them could have been lost (an inotify overflow, or a change inotify does
not report) while the baseline took their new state, and nothing would find them again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from invalidatord import catchup
from invalidatord.config import load_config
from invalidatord.daemon import Daemon
from invalidatord.journal import Journal
from invalidatord.model import Change, FileStat
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, emulator_config, received
from tests.waiting import wait_for


class ListedTree:
    """A TreeScanner (the project's interface) listing fixed entries, watching since `since`."""

    name = "docroot"
    compare = "mtime"

    def __init__(self, since: int, entries: list[tuple[str, FileStat]]) -> None:
        self.watching_since_ns = since
        self._entries = entries

    def scan(self, prefix: str = "") -> Iterator[tuple[str, FileStat]]:
        return iter(self._entries)

    def stat(self, path: str) -> FileStat | None:
        return dict(self._entries).get(path)

    def digest(self, path: str) -> FileStat | None:
        return self.stat(path)

    def previous_digest(self, path: str, indexed: FileStat) -> bytes | None:
        return None


def test_the_baseline_reports_files_changed_since_the_watch_began(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A file whose ctime is after the watch began is queued as a change by the baseline
    that records it; one changed before is only recorded."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "old.html").write_text("old")
    (root / "new.html").write_text("new")
    cfg = load_config(
        emulator_config(
            tmp_path,
            root,
            cloudfront,
        )
    )
    daemon = Daemon(cfg)
    daemon.start()
    try:
        since = time.time_ns()
        old, new = os.stat(root / "old.html"), os.stat(root / "new.html")
        tree = ListedTree(
            since,
            [
                ("new.html", FileStat(new.st_size, new.st_mtime_ns, new.st_ino, since + 1)),
                ("old.html", FileStat(old.st_size, old.st_mtime_ns, old.st_ino, since - 10**9)),
            ],
        )
        daemon._record_baseline("docroot", tree)
        wait_for(lambda: "/new.html" in received(cloudfront), 15, what="/new.html invalidated")
        assert "/old.html" not in received(cloudfront)
    finally:
        daemon.stop()


def test_under_content_a_file_changed_since_the_watch_began_is_recorded_without_its_hash(
    tmp_path: Path,
) -> None:
    """The scan may read a file after the change its queued event reports: recorded with that
    hash, the event would be judged "same bytes" and dropped. So the baseline keeps no hash
    for a file changed since the watch began (the event's read decides), and keeps the hash
    of every other file."""
    since = 10**18
    tree = ListedTree(
        since,
        [
            ("new.html", FileStat(3, 1, 1, since + 1, b"read after the change")),
            ("old.html", FileStat(3, 1, 2, since - 10**9, b"old bytes")),
        ],
    )
    tree.compare = "content"
    queued: list[Change] = []
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        catchup.record_baseline(journal, tree, queued.append, lambda: 5.0)
        index = dict(journal.index_iter("docroot"))
    finally:
        journal.close()
    assert [c.path for c in queued] == ["new.html"]
    assert index["new.html"].digest is None
    assert index["old.html"].digest == b"old bytes"


def test_under_content_files_rewritten_during_the_first_scan_are_all_invalidated(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """The real race: 2,000 files rewritten with new bytes right after READY, while the first
    start's scan reads them. Every one is invalidated, whether the scan read it before its
    rewrite or after (before the fix, those read after were judged unchanged and lost)."""
    root = tmp_path / "www"
    root.mkdir()
    names = [f"d{i % 20}/p{i}.html" for i in range(2_000)]
    for d in {n.split("/")[0] for n in names}:
        (root / d).mkdir()
    for name in names:
        (root / name).write_text("before")
    config = emulator_config(
        tmp_path, root, cloudfront, quiet="300ms", extra={"sources": [
            {"name": "docroot", "type": "filesystem", "root": str(root), "compare": "content"}
        ]},
    )  # fmt: skip
    proc = DaemonProcess("run", "-c", str(config)).start()
    try:
        proc.wait_ready()
        for name in names:
            (root / name).write_text("after, longer")
        recorded = proc.wait_event("baseline_recorded", timeout=60)
        assert recorded["files"] == 2_000
        expected = {"/" + n for n in names}
        wait_for(
            lambda: expected <= received(cloudfront), 60, what="all 2,000 rewrites invalidated"
        )
    finally:
        assert proc.stop() == 0
    assert received(cloudfront) == expected


def test_a_first_start_on_an_unchanged_tree_invalidates_nothing(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Files written before the daemon started (by more than the kernel clock's slack) are
    baseline only: a first start sends nothing, then watches."""
    root = tmp_path / "www"
    root.mkdir()
    for i in range(50):
        (root / f"p{i}.html").write_text("x")
    config = emulator_config(
        tmp_path,
        root,
        cloudfront,
        quiet="100ms",
    )
    proc = DaemonProcess("run", "-c", str(config)).start()
    try:
        proc.wait_ready()
        recorded = proc.wait_event("baseline_recorded")
        assert recorded["files"] == 50
        assert recorded["changed_since_watching"] == 0
        (root / "later.html").write_text("x")
        wait_for(lambda: "/later.html" in received(cloudfront), 15, what="/later.html")
        assert received(cloudfront) == {"/later.html"}
    finally:
        proc.stop()


def test_a_journal_lost_while_stopped_is_not_a_first_start(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Start, stop, delete the journal and its WAL, change files, restart: the new journal is
    not taken for a first start (the marker beside it names the lost one), so every file is
    treated as changed: the changed ones are invalidated, the log says `journal_lost` and the
    `invalidatord_journal_lost` metric is 1."""
    root = tmp_path / "www"
    root.mkdir()
    for i in range(10):
        (root / f"p{i}.html").write_text("x")
    config = emulator_config(tmp_path, root, cloudfront, quiet="100ms")
    state = Path(load_config(config).state_dir)
    first = DaemonProcess("run", "-c", str(config)).start()
    try:
        first.wait_ready()
        first.wait_event("baseline_recorded")
    finally:
        assert first.stop() == 0
    assert received(cloudfront) == set()
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (state / name).unlink(missing_ok=True)
    (root / "p3.html").write_text("changed while stopped")
    (root / "new.html").write_text("created while stopped")

    second = DaemonProcess("run", "-c", str(config)).start()
    try:
        second.wait_ready()
        lost = second.wait_event("journal_lost")
        assert lost["level"] == "warning"
        wait_for(
            lambda: {"/p3.html", "/new.html"} <= received(cloudfront),
            20,
            what="the files changed while stopped invalidated",
        )
        assert not second.find("baseline_recorded")
        assert second.metric("invalidatord_journal_lost") == 1
    finally:
        assert second.stop() == 0
    assert received(cloudfront) == {f"/p{i}.html" for i in range(10)} | {"/new.html"}
