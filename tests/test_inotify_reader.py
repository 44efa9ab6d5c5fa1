"""The native inotify reader (`sources/inotify.py`) where it does what watchdog did not, or
did differently: whole trees arriving faster than watches can be added, directories moved
out of the tree, an overflow that hid new directories, and a watcher process without
watchdog. The shared semantics are proven by test_filesystem_source.py, which runs each
test through this reader and through watchdog."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.model import ChangeKind
from invalidatord.sources.filesystem import FilesystemSource
from invalidatord.sources.watcher import NATIVE, WatchSettings
from tests.harness import Collector
from tests.waiting import wait_for

K = ChangeKind
SETTLE = "zz-settled"
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")

pytestmark = pytest.mark.skipif(not NATIVE, reason="the native reader is Linux's")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    return docroot


@pytest.fixture
def sink() -> Collector:
    return Collector(hide=SETTLE)


@pytest.fixture(params=[True, False], ids=["process", "inline"])
def source(
    request: pytest.FixtureRequest, root: Path, sink: Collector
) -> Iterator[FilesystemSource]:
    src = FilesystemSource("docroot", root, sink, watcher="inotify", separate_process=request.param)
    src.start()
    yield src
    src.stop()


def _settle(root: Path, sink: Collector, n: int) -> None:
    """inotify reports in order: once a file written now arrives, everything before has."""
    (root / f"{SETTLE}-{n}").write_bytes(b"")
    sink.wait(f"{SETTLE}-{n}", K.CREATED)


def _tree(top: Path, depth: int = 3, width: int = 3, files: int = 4) -> set[str]:
    """A tree of `width`**`depth` leaf directories with `files` files in each directory;
    returns the files' paths relative to `top`."""
    made: set[str] = set()

    def fill(here: Path, rel: str, level: int) -> None:
        here.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (here / f"f{i}.html").write_text(rel)
            made.add(f"{rel}f{i}.html")
        if level < depth:
            for j in range(width):
                fill(here / f"d{j}", f"{rel}d{j}/", level + 1)

    fill(top, "", 0)
    return made


def test_a_tree_moved_in_is_reported_file_by_file(
    source: FilesystemSource, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """A 40-directory tree renamed into the root: every directory in it is a RESCAN and
    every one of its 160 files arrives CREATED, though none of them had an event of its own."""
    files = _tree(tmp_path / "incoming")
    os.rename(tmp_path / "incoming", root / "release")
    want = {f"release/{f}" for f in files}
    wait_for(lambda: want <= sink.paths(K.CREATED), 15, what="every file of the tree")
    dirs = {str(Path(f).parent) for f in want}
    assert dirs <= sink.paths(K.RESCAN)


def test_a_tree_copied_in_faster_than_watches_are_added_is_all_seen(
    source: FilesystemSource, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """`cp -r` makes directories and files faster than their watches can be added: each file
    arrives anyway (from its own event, or from the listing made after the watch), and
    later writes deep inside are seen as modifications."""
    files = _tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(tmp_path / "src"), str(root / "copy")], check=True)
    want = {f"copy/{f}" for f in files}
    wait_for(lambda: want <= sink.paths(K.CREATED, K.MODIFIED), 15, what="every copied file")
    before = sink.mark()
    (root / "copy/d2/d2/d2/f0.html").write_text("later")
    sink.wait("copy/d2/d2/d2/f0.html", K.MODIFIED, since=before)


def test_a_directory_moved_out_is_no_longer_watched(
    source: FilesystemSource, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """A directory renamed out of the tree is a RESCAN of its old path; what is written in it
    afterwards, outside the root, is not reported under that old path (its watches are
    removed, where watchdog kept them)."""
    (root / "old" / "sub").mkdir(parents=True)
    _settle(root, sink, 1)
    sink.take()
    os.rename(root / "old", tmp_path / "elsewhere")
    sink.wait("old", K.RESCAN)
    (tmp_path / "elsewhere" / "sub" / "new.html").write_text("not ours")
    (tmp_path / "elsewhere" / "top.html").write_text("not ours")
    _settle(root, sink, 2)
    assert sink.paths() == {"old"}


def test_a_directory_renamed_inside_keeps_its_watches_under_the_new_name(
    source: FilesystemSource, root: Path, sink: Collector
) -> None:
    """After `mv v1 v2` a write under v2 is reported as v2's, not under the old name."""
    (root / "v1" / "deep").mkdir(parents=True)
    _settle(root, sink, 1)
    os.rename(root / "v1", root / "v2")
    sink.wait("v2", K.RESCAN)
    before = sink.mark()
    (root / "v2" / "deep" / "page.html").write_text("x")
    sink.wait("v2/deep/page.html", K.MODIFIED, since=before)
    _settle(root, sink, 2)
    assert not sink.has("v1/deep/page.html")


def test_an_overflow_watches_the_directories_it_hid(root: Path, sink: Collector) -> None:
    """With a 16-event kernel queue and the watcher stopped, 2,000 new files and a new
    directory tree overflow it, so the tree's IN_CREATE is lost: the reader watches the tree
    again before asking for the rescan, and a file written later deep in the new tree is
    delivered."""
    try:
        old = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text("16\n")
    except OSError as exc:
        pytest.skip(f"cannot lower {MAX_QUEUED}: {exc}")
    source = FilesystemSource("docroot", root, sink, watcher="inotify")
    try:
        source.start()  # the kernel fixes the queue size at inotify_init1
    finally:
        MAX_QUEUED.write_text(old)
    try:
        watcher = source.watcher_pid
        assert watcher is not None
        os.kill(watcher, signal.SIGSTOP)
        try:
            subprocess.run(["touch", *[f"f{i}.html" for i in range(2000)]], cwd=root, check=True)
            (root / "hidden" / "deeper").mkdir(parents=True)
        finally:
            os.kill(watcher, signal.SIGCONT)
        wait_for(lambda: source.overflows >= 1, 10, what="an overflow")
        sink.wait("", K.RESCAN)
        before = sink.mark()
        (root / "hidden" / "deeper" / "late.html").write_text("x")
        wait_for(
            lambda: sink.has("hidden/deeper/late.html", since=before),
            15,
            what="a file in a directory made during the overflow",
        )
        assert source.healthy
    finally:
        source.stop()


def test_the_native_watcher_process_never_imports_watchdog(tmp_path: Path) -> None:
    """On Linux the watcher process reads inotify itself: watchdog is not imported at all
    (its threads, queues and state were most of the process's memory)."""
    root = tmp_path / "www"
    root.mkdir()
    report = (
        "import atexit, sys; atexit.register(lambda: print(sorted(sys.modules), file=sys.stderr))"
    )
    main = "from invalidatord.sources.watcher import child_main; sys.exit(child_main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{report}; {main}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(WatchSettings("docroot", str(root), (), "inotify").to_line())
    proc.stdin.flush()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stdout.read1, b"")))
    reader.start()
    wait_for(lambda: b"".join(chunks).startswith(b"Sinotify\0"), 30, what="the S frame")
    (root / "page.html").write_text("x")
    wait_for(lambda: b"Mpage.html\0" in b"".join(chunks), 10, what="the page's frame")
    _, err = proc.communicate(timeout=30)
    reader.join(10)
    assert proc.returncode == 0
    modules = set(ast.literal_eval(err.decode().strip().splitlines()[-1]))
    assert "invalidatord.sources.inotify" in modules
    assert {m for m in modules if m.split(".")[0] == "watchdog"} == set()
