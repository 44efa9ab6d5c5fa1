"""The filesystem source on real files: real inotify (and polling) in tmp_path, real git and
vim where installed, a real kernel queue overflow where the queue size can be lowered."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pathspec
import pytest
import structlog
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invalidatord.contracts import Source, TreeScanner
from invalidatord.errors import SourceError
from invalidatord.model import Change, ChangeBatch, ChangeKind, FileStat
from invalidatord.sources import watcher
from invalidatord.sources.filesystem import (
    DEFAULT_IGNORE,
    OVERFLOW_LOGGER,
    OVERFLOW_MESSAGE,
    FilesystemSource,
)
from invalidatord.sources.ignore import matchers, walk_filter
from invalidatord.sources.memory import MemorySource
from invalidatord.sources.watcher import Watch, queue_warning
from tests.harness import Collector
from tests.waiting import wait_for

K = ChangeKind
#: The ignore list of the design card's example config (no `4913`).
DESIGN_IGNORE = (".git/", "*.swp", "*~", ".#*")
SETTLE = "zz-settled"


Start = Callable[..., FilesystemSource]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    return docroot


@pytest.fixture
def sink() -> Collector:
    return Collector(hide=SETTLE)


def _unbatch(sink: Collector) -> Callable[[ChangeBatch], None]:
    def deliver(batch: ChangeBatch) -> None:
        for change in batch:
            sink(change)

    return deliver


@pytest.fixture(params=["process", "process-batch", "inline", "inline-watchdog"])
def start(
    request: pytest.FixtureRequest, root: Path, sink: Collector, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Start]:
    """Builds and starts a source on `root` delivering to `sink`; stops them all at the end.
    Every test using it runs four times: the watcher in its own process (the default, with
    the native inotify reader on Linux), the same delivering each read of its pipe as one
    `ChangeBatch` (as the daemon has it), inline, and inline through watchdog (the reader of
    other systems)."""
    started: list[FilesystemSource] = []
    if request.param == "inline-watchdog":
        monkeypatch.setattr(watcher, "NATIVE", False)

    def _start(**kwargs: Any) -> FilesystemSource:
        kwargs.setdefault("ignore", DEFAULT_IGNORE)
        kwargs.setdefault("separate_process", request.param.startswith("process"))
        if request.param == "process-batch":
            kwargs.setdefault("sink_batch", _unbatch(sink))
        source = FilesystemSource("docroot", kwargs.pop("root", root), sink, **kwargs)
        started.append(source)
        source.start()
        return source

    yield _start
    for source in started:
        source.stop()


_settle_count = 0


def settle(root: Path, sink: Collector) -> None:
    """Wait until every event caused so far has been delivered: inotify reports in order, so
    once a file written now arrives, everything before it has (unpaired moves included)."""
    global _settle_count
    _settle_count += 1
    marker = f"{SETTLE}-{_settle_count}"
    (root / marker).write_bytes(b"")
    sink.wait(marker, K.CREATED)


# -- single files -------------------------------------------------------------------------


def test_created_file_arrives_as_created_then_modified(
    start: Start, root: Path, sink: Collector
) -> None:
    """Writing a new file delivers CREATED and, on close after writing, MODIFIED."""
    start()
    (root / "page.html").write_text("hello")
    sink.wait("page.html", K.MODIFIED)
    kinds = [c.kind for c in sink.changes if c.path == "page.html"]
    assert kinds == [K.CREATED, K.MODIFIED]
    change = sink.changes[0]
    assert change.source == "docroot"
    assert change.seen > 0
    assert change.receipt is None


def test_append_to_existing_file_is_modified(start: Start, root: Path, sink: Collector) -> None:
    """Appending to a file that existed before start delivers MODIFIED (on close)."""
    (root / "log.txt").write_text("one\n")
    start()
    with (root / "log.txt").open("a") as f:
        f.write("two\n")
    sink.wait("log.txt", K.MODIFIED)
    assert sink.paths(K.CREATED) == set()


def test_reads_and_attribute_changes_deliver_nothing(
    start: Start, root: Path, sink: Collector
) -> None:
    """Opening, reading and chmod-ing a file are not changes (not in the inotify mask)."""
    (root / "page.html").write_text("x")
    start()
    (root / "page.html").read_text()
    os.chmod(root / "page.html", 0o600)
    settle(root, sink)
    assert sink.changes == []


def test_deleted_file_is_deleted(start: Start, root: Path, sink: Collector) -> None:
    """Removing a file delivers DELETED."""
    (root / "gone.html").write_text("x")
    start()
    (root / "gone.html").unlink()
    sink.wait("gone.html", K.DELETED)


def test_rename_reports_both_ends_as_moved(start: Start, root: Path, sink: Collector) -> None:
    """A rename inside the tree is a change of its source and of its destination."""
    (root / "sub").mkdir()
    (root / "old.html").write_text("x")
    start()
    os.rename(root / "old.html", root / "sub" / "new.html")
    sink.wait("sub/new.html", K.MOVED)
    assert sink.has("old.html", K.MOVED)


def test_file_moved_out_of_the_tree_is_deleted_and_moved_in_is_created(
    start: Start, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """A file renamed out of the watched tree is DELETED; one renamed into it is CREATED."""
    (root / "leaving.html").write_text("x")
    (tmp_path / "arriving.html").write_text("y")
    start()
    os.rename(root / "leaving.html", tmp_path / "left.html")
    os.rename(tmp_path / "arriving.html", root / "arrived.html")
    sink.wait("arrived.html", K.CREATED)
    sink.wait("leaving.html", K.DELETED)


@pytest.mark.parametrize("temp_ignored", [False, True], ids=["temp-seen", "temp-ignored"])
def test_rsync_temp_file_renamed_over_the_page(
    start: Start, root: Path, sink: Collector, temp_ignored: bool
) -> None:
    """rsync writes `.page.html.Ab12Cd` and renames it to `page.html`: page.html arrives
    whether or not the temporary name is ignored, and the ignored end is dropped."""
    ignore = [*DEFAULT_IGNORE, ".page.html.*"] if temp_ignored else list(DEFAULT_IGNORE)
    (root / "page.html").write_text("old")
    start(ignore=ignore)
    temp = root / ".page.html.Ab12Cd"
    temp.write_text("new")
    os.rename(temp, root / "page.html")
    sink.wait("page.html", K.MOVED)
    settle(root, sink)
    temp_changes = {c.kind for c in sink.changes if c.path == ".page.html.Ab12Cd"}
    if temp_ignored:
        assert temp_changes == set()
    else:
        assert temp_changes == {K.CREATED, K.MODIFIED, K.MOVED}
    assert sink.paths() <= {"page.html", ".page.html.Ab12Cd"}


def vim_save(root: Path) -> None:
    """What vim does on disk to edit and `:wq` page.html (writebackup, backupcopy=no)."""
    swap = root / ".page.html.swp"
    swap.write_bytes(b"swap")  # the file is opened
    with swap.open("r+b") as f:  # swap churn while editing
        f.write(b"edits")
    probe = root / "4913"  # can vim create files in this directory?
    probe.write_bytes(b"")
    probe.unlink()
    os.rename(root / "page.html", root / "page.html~")  # the backup
    (root / "page.html").write_text("new content")
    (root / "page.html~").unlink()  # nobackup: the backup goes once the write succeeded
    swap.unlink()  # :q


def test_vim_save_with_default_ignore(start: Start, root: Path, sink: Collector) -> None:
    """A vim save delivers page.html and nothing of the swap file, the backup or the probe."""
    (root / "page.html").write_text("old")
    start()
    vim_save(root)
    settle(root, sink)
    assert sink.has("page.html", K.CREATED)
    assert sink.has("page.html", K.MODIFIED)
    assert sink.paths() == {"page.html"}


def test_vim_probe_without_4913_in_ignore_is_only_seen(
    start: Start, root: Path, sink: Collector
) -> None:
    """With the design card's list (no `4913`), the probe arrives only as created and deleted,
    and is gone from disk: the pipeline drops it (neither on disk at flush nor indexed)."""
    (root / "page.html").write_text("old")
    start(ignore=DESIGN_IGNORE)
    vim_save(root)
    settle(root, sink)
    assert {c.kind for c in sink.changes if c.path == "4913"} == {K.CREATED, K.MODIFIED, K.DELETED}
    assert not (root / "4913").exists()
    assert sink.paths() == {"page.html", "4913"}


#: vim without user config or viminfo, in ex mode: append a line, write, quit.
VIM_EDIT = ["vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c", "normal Gonew", "-c", "wq"]


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
def test_real_vim_edit(start: Start, root: Path, sink: Collector) -> None:
    """A real vim edit-and-write delivers page.html and no swap-file paths."""
    (root / "page.html").write_text("old\n")
    start()
    subprocess.run(
        [*VIM_EDIT, "page.html"],
        cwd=root,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=True,
    )
    assert (root / "page.html").read_text() == "old\nnew\n"
    sink.wait("page.html")
    settle(root, sink)
    assert not any(p.endswith((".swp", "~")) for p in sink.paths())
    assert "page.html" in sink.paths()


def test_non_utf8_name_keeps_its_bytes(start: Start, root: Path, sink: Collector) -> None:
    """A latin-1 file name arrives decoded with surrogateescape, and maps back to its bytes."""
    raw = b"caf\xe9.html"
    start()
    fd = os.open(os.path.join(os.fsencode(root), raw), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    name = os.fsdecode(raw)
    assert name == "caf\udce9.html"
    sink.wait(name, K.MODIFIED)
    assert os.fsencode(name) == raw
    assert dict(FilesystemSource("docroot", root, sink).scan()).keys() == {name}


# -- ignore -------------------------------------------------------------------------------


def test_git_directory_is_ignored_at_any_depth(start: Start, root: Path, sink: Collector) -> None:
    """`.git/` ignores the directory, everything under it and nested ones; `.gitignore` and
    `gitx/` are not ignored."""
    start()
    for git in (root / ".git", root / "vendor" / "lib" / ".git"):
        (git / "objects" / "ab").mkdir(parents=True)
        (git / "objects" / "ab" / "cdef").write_text("blob")
        (git / "HEAD.lock").write_text("ref")
        os.rename(git / "HEAD.lock", git / "HEAD")
    (root / ".gitignore").write_text("x")
    (root / "gitx").mkdir()
    (root / "gitx" / "a").write_text("x")
    settle(root, sink)
    assert not any(p == ".git" or ".git/" in p for p in sink.paths())
    assert {".gitignore", "gitx/a"} <= sink.paths()
    assert {"vendor", "vendor/lib"} <= sink.paths(K.RESCAN)


def test_is_ignored_follows_gitignore_rules(root: Path, sink: Collector) -> None:
    """is_ignored applies the list gitignore-style, anchored and unanchored patterns alike."""
    source = FilesystemSource(
        "docroot", root, sink, ignore=[*DEFAULT_IGNORE, "/cache/", "docs/*.tmp", "build"]
    )
    ignored = [".git/HEAD", "a/.git/x/y", "p.swp", "d/p.html~", ".#p", "d/4913"]
    ignored += ["cache/a", "docs/x.tmp", "build", "a/build/x"]
    kept = ["page.html", ".gitignore", "gitx/a", "x/cache/a", "x/docs/x.tmp", "docs/a/x.tmp"]
    assert [p for p in ignored if not source.is_ignored(p)] == []
    assert [p for p in kept if source.is_ignored(p)] == []
    assert not FilesystemSource("docroot", root, sink).is_ignored(".git/HEAD")


def test_negated_pattern_is_honoured(start: Start, root: Path, sink: Collector) -> None:
    """With a `!pattern` the ignore decision is pathspec's own: `*.log` but `!keep.log`."""
    start(ignore=["*.log", "!keep.log"])
    (root / "drop.log").write_text("x")
    (root / "keep.log").write_text("x")
    settle(root, sink)
    assert sink.paths() == {"keep.log"}


pattern_sets = st.sampled_from(
    [
        list(DEFAULT_IGNORE),
        ["/cache/", "docs/*.tmp", "a/**/b", "build", "*.min.*", "[ab]?.css"],
        ["*.log", "!keep.log", "tmp/"],
        ["**/node_modules/", "x/*/y", "\\#lit", "sp ace"],
        ["/.git/index.lock", "/a/b", "docs/x.tmp", "x*/y", "c?che/"],
    ]
)
rel_paths = st.lists(
    st.sampled_from(
        [
            *(".git", "a", "b", "cache", "docs", "build", "x", "y", "x.tmp", "p.swp", "q~"),
            *(".#r", "4913", "keep.log", "d.log", "node_modules", "tmp", "a.min.js", "ab.css"),
            *("#lit", "sp ace", "caf\udce9"),
        ]
    ),
    min_size=1,
    max_size=5,
).map("/".join)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(patterns=pattern_sets, path=rel_paths)
def test_fast_ignore_matcher_agrees_with_pathspec(
    patterns: list[str], path: str, root: Path, sink: Collector
) -> None:
    """The compiled matcher decides exactly as pathspec.GitIgnoreSpec, for files and dirs."""
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    source = FilesystemSource("docroot", root, sink, ignore=patterns)
    assert source.is_ignored(path) == spec.match_file(path)
    assert source.is_ignored(path + "/") == spec.match_file(path + "/")


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(patterns=pattern_sets, path=rel_paths, is_dir=st.booleans())
def test_walk_filter_agrees_with_the_scan_matchers(
    patterns: list[str], path: str, is_dir: bool
) -> None:
    """The scan's per-directory filter (names through one regex, path patterns only in the
    directories their literal start can reach) ignores exactly what the per-entry matchers
    ignore, for files and directories."""
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    by_name, by_path = matchers(spec)[1]
    walk = walk_filter(spec)
    rel_dir, _, name = path.rpartition("/")
    rel_dir = rel_dir + "/" if rel_dir else ""
    name += "/" if is_dir else ""
    expected = bool(by_name and by_name(name)) or bool(by_path and by_path(rel_dir + name))
    got = bool(walk.by_name and walk.by_name(name)) or bool(
        walk.paths_may_match(rel_dir) and walk.by_path and walk.by_path(rel_dir + name)
    )
    assert got == expected


# -- directories --------------------------------------------------------------------------


def test_directory_created_with_files(start: Start, root: Path, sink: Collector) -> None:
    """A new directory is a RESCAN of it, and the files written into it arrive too."""
    start()
    (root / "new").mkdir()
    for name in ("a.html", "b.html"):
        (root / "new" / name).write_text(name)
    sink.wait("new", K.RESCAN)
    sink.wait("new/a.html", K.CREATED, K.MODIFIED)
    sink.wait("new/b.html", K.CREATED, K.MODIFIED)


def test_mkdir_p_and_touch_in_one_go(
    start: Start, root: Path, sink: Collector, recwarn: pytest.WarningsRecorder
) -> None:
    """`mkdir -p a/b/c && touch a/b/c/f`, faster than watches can be added: the top directory
    is rescanned, the file is still reported, and watchdog's re-watch warning (whose text
    embeds every watch of the tree) is not printed."""
    start()
    for _ in range(5):
        before = sink.mark()
        subprocess.run(["sh", "-c", "mkdir -p a/b/c && touch a/b/c/f"], cwd=root, check=True)
        sink.wait("a/b/c/f", K.CREATED, since=before)
        assert sink.has("a", K.RESCAN, since=before)
        before = sink.mark()
        shutil.rmtree(root / "a")
        sink.wait("a/b/c/f", K.DELETED, since=before)
    assert [str(w.message)[:60] for w in recwarn if "Callback with id" in str(w.message)] == []


def test_directory_moved_out_is_a_rescan(
    start: Start, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """A directory renamed out of the tree (inotify names none of its files) is a RESCAN of
    its old path, so the pipeline finds its files in the index."""
    (root / "old" / "sub").mkdir(parents=True)
    (root / "old" / "sub" / "a.html").write_text("x")
    start()
    os.rename(root / "old", tmp_path / "elsewhere")
    sink.wait("old", K.RESCAN)
    settle(root, sink)
    assert sink.paths() == {"old"}


def test_directory_moved_in_is_a_rescan_and_its_files_created(
    start: Start, root: Path, tmp_path: Path, sink: Collector
) -> None:
    """A directory renamed into the tree is a RESCAN of it, and its files arrive CREATED."""
    (tmp_path / "incoming" / "sub").mkdir(parents=True)
    (tmp_path / "incoming" / "sub" / "a.html").write_text("x")
    (tmp_path / "incoming" / "b.html").write_text("x")
    start()
    os.rename(tmp_path / "incoming", root / "arrived")
    sink.wait("arrived", K.RESCAN)
    sink.wait("arrived/sub/a.html", K.CREATED)
    sink.wait("arrived/b.html", K.CREATED)


def test_directory_moved_inside_the_tree(start: Start, root: Path, sink: Collector) -> None:
    """A directory renamed inside the tree rescans both ends and moves each file under it."""
    (root / "v1").mkdir()
    (root / "v1" / "a.html").write_text("x")
    start()
    os.rename(root / "v1", root / "v2")
    sink.wait("v2/a.html", K.MOVED)
    assert sink.has("v1", K.RESCAN)
    assert sink.has("v2", K.RESCAN)
    assert sink.has("v1/a.html", K.MOVED)


def test_directory_deleted_is_a_rescan(start: Start, root: Path, sink: Collector) -> None:
    """`rm -r dir` delivers DELETED for its files and a RESCAN of the directory."""
    (root / "d").mkdir()
    (root / "d" / "a.html").write_text("x")
    start()
    shutil.rmtree(root / "d")
    sink.wait("d", K.RESCAN)
    assert sink.has("d/a.html", K.DELETED)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_checkout_inside_the_root(
    start: Start, root: Path, sink: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `git checkout` of another branch delivers the working-tree files it changes and
    nothing under .git/."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=30,
        )

    git("init", "-q", "-b", "main")
    (root / "index.html").write_text("main")
    (root / "same.html").write_text("same")
    git("add", "-A")
    git("commit", "-q", "-m", "main")
    git("checkout", "-q", "-b", "other")
    (root / "index.html").write_text("other")
    (root / "docs").mkdir()
    (root / "docs" / "new.html").write_text("new")
    git("add", "-A")
    git("commit", "-q", "-m", "other")
    git("checkout", "-q", "main")
    start()
    git("checkout", "-q", "other")
    sink.wait("docs/new.html", K.CREATED, K.MODIFIED)
    sink.wait("index.html")
    settle(root, sink)
    assert sink.paths() <= {"index.html", "docs", "docs/new.html"}
    assert "same.html" not in sink.paths()


# -- polling ------------------------------------------------------------------------------


def test_polling_watcher_asks_for_a_rescan_of_the_root_each_interval(
    start: Start, root: Path, sink: Collector
) -> None:
    """With watcher="polling" the source holds no snapshot of its own: every poll_interval
    it asks for a RESCAN of the root (the pipeline diffs the tree against the index), and
    after stop() it asks for nothing more."""
    source = start(watcher="polling", poll_interval=0.05)
    assert source.watcher_kind == "polling"
    assert source.healthy
    wait_for(lambda: sum(1 for c in sink.changes if c.kind is K.RESCAN) >= 3, 5, what="3 polls")
    assert {(c.path, c.kind) for c in sink.changes} == {("", K.RESCAN)}
    source.stop()
    assert not source.healthy
    assert source.watcher_pid is None  # a watcher process has ended
    assert not [t for t in threading.enumerate() if t.name == "poll-docroot"]


def test_auto_falls_back_to_polling_when_inotify_fails(
    root: Path, sink: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under watcher="auto" an inotify failure (here: no instance left) logs
    watcher_fallback with the reason and polls; under "inotify" it is a SourceError."""

    def no_inotify(self: Watch) -> None:
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    monkeypatch.setattr(Watch, "_start_inotify", no_inotify)
    source = FilesystemSource("docroot", root, sink, poll_interval=0.05, separate_process=False)
    with structlog.testing.capture_logs() as logs:
        source.start()
    try:
        assert source.watcher_kind == "polling"
        assert source.healthy
        fallback = [e for e in logs if e["event"] == "watcher_fallback"]
        assert len(fallback) == 1
        assert "EMFILE" in fallback[0]["reason"]
        sink.wait("", K.RESCAN)
    finally:
        source.stop()
    strict = FilesystemSource("docroot", root, sink, watcher="inotify", separate_process=False)
    with pytest.raises(SourceError, match="inotify instance limit reached"):
        strict.start()
    assert not strict.healthy


# -- overflow -----------------------------------------------------------------------------


def test_overflow_warning_triggers_a_full_rescan(start: Start, root: Path, sink: Collector) -> None:
    """watchdog's overflow WARNING (the exact record) counts an overflow, logs
    watcher_overflow and delivers a RESCAN of the whole tree; other warnings do nothing."""
    source = start(watcher="inotify", separate_process=False)
    watchdog_log = logging.getLogger(OVERFLOW_LOGGER)
    with structlog.testing.capture_logs() as logs:
        watchdog_log.warning("Unrelated warning")
        watchdog_log.warning(OVERFLOW_MESSAGE)
    assert source.overflows == 1
    assert [(c.path, c.kind) for c in sink.changes] == [("", K.RESCAN)]
    assert [e for e in logs if e["event"] == "watcher_overflow"] == [
        {"event": "watcher_overflow", "log_level": "warning", "source": "docroot"}
        | {"root": os.path.realpath(root), "overflows": 1}
    ]


def test_overflow_hook_survives_a_silenced_watchdog_logger(start: Start, sink: Collector) -> None:
    """Logging config that disabled the watchdog logger or raised its level above WARNING
    (`log.level: error`) does not blind the hook: start() lets the WARNING through."""
    watchdog_log = logging.getLogger(OVERFLOW_LOGGER)
    old_level, old_disabled = watchdog_log.level, watchdog_log.disabled
    watchdog_log.setLevel(logging.ERROR)
    watchdog_log.disabled = True
    try:
        source = start(watcher="inotify", separate_process=False)
        watchdog_log.warning(OVERFLOW_MESSAGE)
        assert source.overflows == 1
    finally:
        watchdog_log.setLevel(old_level)
        watchdog_log.disabled = old_disabled


def test_stopped_source_ignores_overflow(root: Path, sink: Collector) -> None:
    """After stop() an overflow record neither counts nor delivers."""
    source = FilesystemSource("docroot", root, sink, watcher="inotify", separate_process=False)
    source.start()
    source.stop()
    logging.getLogger(OVERFLOW_LOGGER).warning(OVERFLOW_MESSAGE)
    assert source.overflows == 0
    assert sink.changes == []


MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def test_real_kernel_queue_overflow(start: Start, root: Path, sink: Collector) -> None:
    """With a 16-event kernel queue, 2,000 files created at once overflow it: the source
    counts it, rescans the whole tree, and keeps watching afterwards."""
    try:
        old = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text("16\n")
    except OSError as exc:
        pytest.skip(f"cannot lower {MAX_QUEUED}: {exc}")
    try:
        # The kernel fixes an inotify instance's queue size when it is created (in start()).
        source = start(watcher="inotify")
    finally:
        MAX_QUEUED.write_text(old)
    names = [f"f{i}.html" for i in range(2000)]
    # A watcher process has a core to itself and can keep up even with 16 events: stopped
    # while the files are made, it certainly cannot.
    watcher = source.watcher_pid
    if watcher is not None:
        os.kill(watcher, signal.SIGSTOP)
    try:
        subprocess.run(["touch", *names], cwd=root, check=True)
    finally:
        if watcher is not None:
            os.kill(watcher, signal.SIGCONT)
    wait_for(lambda: source.overflows >= 1, 10, what="an overflow")
    sink.wait("", K.RESCAN)
    (root / "after.html").write_text("x")
    # Still watching: the new file arrives (as a create or a close-after-write; on a loaded
    # machine the tiny queue may overflow again, which is a rescan that covers it too).
    wait_for(
        lambda: sink.has("after.html") or source.overflows > 1, 30, what="after.html delivered"
    )
    assert source.healthy


# -- lifecycle ----------------------------------------------------------------------------


def test_start_refuses_a_missing_or_non_directory_root(tmp_path: Path, sink: Collector) -> None:
    """A root that does not exist, or is a file, is a SourceError naming it."""
    missing = FilesystemSource("docroot", tmp_path / "nope", sink)
    with pytest.raises(SourceError, match="does not exist"):
        missing.start()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="is not a directory"):
        FilesystemSource("docroot", tmp_path / "file", sink).start()
    assert not missing.healthy
    assert missing.watcher_kind == ""


def test_stop_ends_delivery_and_health(start: Start, root: Path, sink: Collector) -> None:
    """After stop() the source is unhealthy and nothing more is delivered; it can start again."""
    source = start()
    assert source.healthy
    assert source.watcher_kind == "inotify"
    source.stop()
    assert not source.healthy
    (root / "late.html").write_text("x")
    source.start()
    (root / "again.html").write_text("x")
    sink.wait("again.html", K.MODIFIED)
    assert not sink.has("late.html")


def test_deleted_root_is_reported_and_reattached_when_it_is_back(
    start: Start, root: Path, sink: Collector
) -> None:
    """Deleting the root makes the source unhealthy, with a problem naming the root, and holds
    its batch; recreating it re-attaches by itself (one REATTACH) and later edits are seen."""
    source = start()
    shutil.rmtree(root)
    wait_for(lambda: not source.healthy, 5, what="unhealthy source")
    problem = source.problem()
    assert problem is not None
    assert f"root {root} is missing" in problem
    assert source.root_missing
    assert source.holding
    mark = sink.mark()
    root.mkdir()
    sink.wait("", K.REATTACH, since=mark)
    wait_for(lambda: source.healthy, 5, what="healthy again")
    assert source.problem() is None
    assert not source.holding
    (root / "later.html").write_text("x")
    sink.wait("later.html", K.MODIFIED, since=mark)


def test_a_root_missing_past_root_wait_is_lost_then_found(
    start: Start, root: Path, sink: Collector
) -> None:
    """Missing for longer than `root_wait`: the source stops holding its batch and says the
    root is lost, and still re-attaches when it comes back."""
    source = start(root_wait=0.3)
    shutil.rmtree(root)
    wait_for(lambda: "looking for it every" in (source.problem() or ""), 5, what="lost root")
    assert not source.holding
    assert source.root_missing
    mark = sink.mark()
    root.mkdir()
    sink.wait("", K.REATTACH, since=mark, timeout=15)
    assert source.problem() is None


def test_a_renamed_root_replaced_by_another_is_reattached(
    start: Start, tmp_path: Path, root: Path, sink: Collector
) -> None:
    """`mv docroot docroot.old && mv docroot.new docroot`: one REATTACH, the new tree is
    watched, and what happens in the old one afterwards is not delivered."""
    source = start()
    new = tmp_path / "docroot.new"
    new.mkdir()
    (new / "page.html").write_text("new")
    mark = sink.mark()
    root.rename(tmp_path / "docroot.old")
    new.rename(root)
    sink.wait("", K.REATTACH, since=mark)
    assert source.swap()["root"] == str(root)
    (tmp_path / "docroot.old" / "stale.html").write_text("old tree")
    (root / "fresh.html").write_text("x")
    sink.wait("fresh.html", K.MODIFIED, since=mark)
    settle(root, sink)
    assert not sink.has("stale.html")


def test_a_repointed_symlink_root_watches_the_new_release(
    start: Start, tmp_path: Path, sink: Collector
) -> None:
    """`current -> releases/1` swapped to `releases/2` by rename (`ln -sfn` + `mv -T`): one
    REATTACH naming both releases; edits in the new release are seen, in the old one not."""
    one, two = tmp_path / "releases/1", tmp_path / "releases/2"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    current = tmp_path / "current"
    current.symlink_to("releases/1")
    source = start(root=current)
    mark = sink.mark()
    (tmp_path / "current.tmp").symlink_to("releases/2")
    (tmp_path / "current.tmp").rename(current)
    sink.wait("", K.REATTACH, since=mark)
    assert source.swap() == {"root": str(two), "previous": str(one), "link": str(current)}
    (one / "old.html").write_text("x")
    (two / "new.html").write_text("x")
    sink.wait("new.html", K.MODIFIED, since=mark)
    settle(two, sink)
    assert not sink.has("old.html")


def test_root_given_as_symlink_is_watched_through_it(
    start: Start, tmp_path: Path, root: Path, sink: Collector
) -> None:
    """A root that is a symlink to a directory (a deploy's `current`) watches its target."""
    link = tmp_path / "current"
    link.symlink_to(root, target_is_directory=True)
    start(root=link)
    (root / "page.html").write_text("x")
    sink.wait("page.html", K.MODIFIED)


def test_failing_sink_does_not_stop_the_watch(start: Start, root: Path, sink: Collector) -> None:
    """A sink that raises is logged (sink_failed); later changes still arrive."""
    calls = 0

    def flaky(change: Change) -> None:
        nonlocal calls
        calls += 1
        if change.path == "bad.html":
            raise RuntimeError("boom")
        sink(change)

    source = FilesystemSource("docroot", root, flaky, watcher="inotify")
    source.start()
    try:
        with structlog.testing.capture_logs() as logs:
            (root / "bad.html").write_text("x")
            (root / "good.html").write_text("x")
            sink.wait("good.html", K.MODIFIED)
        assert source.healthy
        assert {e["path"] for e in logs if e["event"] == "sink_failed"} == {"bad.html"}
    finally:
        source.stop()


def test_a_failing_batch_sink_does_not_stop_the_watch(root: Path, sink: Collector) -> None:
    """A batch sink that raises is logged (sink_failed, with the number of changes); later
    batches still arrive."""
    deliver = _unbatch(sink)

    def flaky(batch: ChangeBatch) -> None:
        if any(path == "bad.html" for path, _ in batch.items):
            raise RuntimeError("boom")
        deliver(batch)

    source = FilesystemSource("docroot", root, sink, watcher="inotify", sink_batch=flaky)
    with structlog.testing.capture_logs() as logs:
        source.start()
        try:
            (root / "bad.html").write_text("x")
            wait_for(lambda: any(e["event"] == "sink_failed" for e in logs), 10, what="it")
            (root / "good.html").write_text("x")
            sink.wait("good.html", K.MODIFIED)
            assert source.healthy
        finally:
            source.stop()
    failed = [e for e in logs if e["event"] == "sink_failed"]
    assert failed
    assert all(e["changes"] >= 1 for e in failed)


# -- scan and stat ------------------------------------------------------------------------


def make_tree(root: Path, files: Sequence[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)


def test_scan_lists_files_prunes_ignored_and_honours_prefix(root: Path, sink: Collector) -> None:
    """scan() yields every non-ignored regular file with its lstat; ignored directories are
    not entered; a prefix limits the walk to that subtree."""
    make_tree(
        root,
        ["index.html", "a/b/c.html", "a/d.css", "ab.html", ".git/HEAD", "x/.git/y", "a/e.swp"],
    )
    source = FilesystemSource("docroot", root, sink, ignore=DEFAULT_IGNORE)
    listing = dict(source.scan())
    assert listing.keys() == {"index.html", "a/b/c.html", "a/d.css", "ab.html"}
    st = os.lstat(root / "a" / "b" / "c.html")
    assert listing["a/b/c.html"] == FileStat(st.st_size, st.st_mtime_ns, st.st_ino)
    assert {p for p, _ in source.scan("a")} == {"a/b/c.html", "a/d.css"}
    assert {p for p, _ in source.scan("/a/b/")} == {"a/b/c.html"}
    assert list(source.scan(".git")) == []
    assert list(source.scan("missing")) == []
    assert list(source.scan("index.html")) == []


def test_scan_prunes_ignored_directories_without_listing_them(root: Path, sink: Collector) -> None:
    """An ignored directory is never opened: an unreadable one under it raises nothing."""
    make_tree(root, ["keep.html", ".git/objects/ab/cd"])
    source = FilesystemSource("docroot", root, sink, ignore=DEFAULT_IGNORE)
    os.chmod(root / ".git", 0)
    try:
        assert [p for p, _ in source.scan()] == ["keep.html"]
    finally:
        os.chmod(root / ".git", 0o700)


def test_scan_symlinks_and_special_files(root: Path, tmp_path: Path, sink: Collector) -> None:
    """A symlink to a file counts with its own lstat; symlinked directories, dangling links
    and fifos do not; nothing outside the root is listed."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.html").write_text("x")
    (root / "real.html").write_text("x")
    (root / "link.html").symlink_to(root / "real.html")
    (root / "dirlink").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")
    source = FilesystemSource("docroot", root, sink)
    listing = dict(source.scan())
    assert listing.keys() == {"real.html", "link.html"}
    assert listing["link.html"].inode == os.lstat(root / "link.html").st_ino
    assert source.stat("link.html") == listing["link.html"]


def test_scan_of_a_vanished_root_raises(tmp_path: Path, sink: Collector) -> None:
    """A root that cannot be listed is a SourceError, never an empty listing (which would read
    as every file deleted)."""
    source = FilesystemSource("docroot", tmp_path / "gone", sink)
    with pytest.raises(SourceError, match="does not exist"):
        list(source.scan())
    with pytest.raises(SourceError, match="does not exist"):
        list(source.scan("sub"))


def test_scan_skips_files_vanishing_mid_walk(root: Path, sink: Collector) -> None:
    """Files and directories removed while the walk is in progress are skipped silently."""
    make_tree(root, [f"d{i}/f{j}.html" for i in range(5) for j in range(20)])
    source = FilesystemSource("docroot", root, sink)
    seen = []
    for rel, _ in source.scan():
        seen.append(rel)
        if len(seen) == 1:
            for i in range(5):
                shutil.rmtree(root / f"d{i}", ignore_errors=True)
            make_tree(root, ["d0/late.html"])
    assert 1 <= len(seen) <= 21


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    patterns=pattern_sets,
    files=st.sets(rel_paths.filter(lambda p: len(p) < 120), min_size=1, max_size=15),
)
def test_scan_equals_a_naive_walk_filtered_by_pathspec(
    patterns: list[str], files: set[str], tmp_path: Path, sink: Collector
) -> None:
    """scan() lists exactly the files git would not ignore: a file is out if it, or any
    directory above it, matches the spec."""
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    tree = tmp_path / f"tree{next(_trees)}"
    made: set[str] = set()
    for rel in sorted(files, key=len):
        path = tree / rel
        if any(p in made for p in _ancestors(rel)) or any(m.startswith(rel + "/") for m in made):
            continue  # one name cannot be a file and a directory
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        made.add(rel)
    expected = {
        rel
        for rel in made
        if not spec.match_file(rel) and not any(spec.match_file(d + "/") for d in _ancestors(rel))
    }
    source = FilesystemSource("docroot", tree, sink, ignore=patterns)
    assert {p for p, _ in source.scan()} == expected
    shutil.rmtree(tree)


_trees = itertools.count()


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def test_stat_reports_regular_files_only(root: Path, sink: Collector) -> None:
    """stat() returns the FileStat of a regular file and None for missing paths, directories,
    symlinked directories and paths through a file."""
    make_tree(root, ["a/page.html"])
    (root / "dirlink").symlink_to(root / "a", target_is_directory=True)
    source = FilesystemSource("docroot", root, sink)
    st = os.stat(root / "a" / "page.html")
    assert source.stat("a/page.html") == FileStat(st.st_size, st.st_mtime_ns, st.st_ino)
    for path in ("missing.html", "a", "dirlink", "a/page.html/x", "nul\0byte"):
        assert source.stat(path) is None, path


def test_digest_hashes_files_and_links_to_files_only(root: Path, sink: Collector) -> None:
    """digest() gives a file's stat with the hash of its bytes (any size: one read or many);
    a symlink to a file its own lstat with the target's hash, as scan lists it; None for a
    missing path, a directory, a dangling link and a FIFO (without blocking on its open)."""
    big = bytes(range(256)) * 8192  # 2 MiB: more than one read
    make_tree(root, ["a/page.html"])
    (root / "big.bin").write_bytes(big)
    (root / "empty.html").write_bytes(b"")
    (root / "link.html").symlink_to(root / "a" / "page.html")
    (root / "dangling.html").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")
    source = FilesystemSource("docroot", root, sink)
    for rel, data in (("a/page.html", b"a/page.html"), ("big.bin", big), ("empty.html", b"")):
        got = source.digest(rel)
        st = os.stat(root / rel)
        assert got == FileStat(st.st_size, st.st_mtime_ns, st.st_ino), rel
        assert got is not None, rel
        assert got.digest == xxhash.xxh3_128_digest(data), rel
    link = source.digest("link.html")
    lst = os.lstat(root / "link.html")
    assert link == FileStat(lst.st_size, lst.st_mtime_ns, lst.st_ino)
    assert link is not None
    assert link.digest == xxhash.xxh3_128_digest(b"a/page.html")
    for rel in ("missing.html", "a", "dangling.html", "fifo"):
        assert source.digest(rel) is None, rel


# -- the contracts, against the real and the in-memory implementation -----------------------


def real_and_memory(
    root: Path, sink: Collector, files: Sequence[str]
) -> tuple[FilesystemSource, MemorySource]:
    """The same tree as a FilesystemSource over real files and as a MemorySource."""
    make_tree(root, files)
    memory = MemorySource("docroot", sink)
    for rel in files:
        memory.set_file(rel, FilesystemSource("docroot", root, sink).stat(rel))
    return FilesystemSource("docroot", root, sink), memory


def test_tree_scanner_contract(root: Path, sink: Collector) -> None:
    """Both TreeScanners list the same files under a prefix (and only under it: `a` is not a
    prefix of `ab.html`), and stat the same way."""
    files = ["index.html", "a/b.html", "a/c/d.html", "ab.html"]
    listings = []
    scanners: list[TreeScanner] = [*real_and_memory(root, sink, files)]  # type-checked
    for scanner in scanners:
        listings.append((dict(scanner.scan()), dict(scanner.scan("a")), dict(scanner.scan("a/c/"))))
        assert scanner.stat("missing.html") is None
        assert scanner.stat("a/b.html") is not None
    (real_all, real_a, real_c), (mem_all, mem_a, mem_c) = listings
    assert real_all == mem_all
    assert real_all.keys() == set(files)
    assert real_a == mem_a
    assert real_a.keys() == {"a/b.html", "a/c/d.html"}
    assert real_c == mem_c
    assert real_c.keys() == {"a/c/d.html"}


def test_source_contract_lifecycle(root: Path, sink: Collector) -> None:
    """Both Sources: unhealthy before start and after stop, healthy between, stop twice is
    harmless, acknowledge accepts receipts."""
    sources: list[Source] = [*real_and_memory(root, sink, [])]  # type-checked
    for source in sources:
        assert not source.healthy
        source.start()
        try:
            assert source.healthy
            source.acknowledge(["r1"])
        finally:
            source.stop()
        source.stop()
        assert not source.healthy


def test_memory_source_emits_synchronously_and_only_when_started() -> None:
    """MemorySource.emit delivers on the caller's thread before returning, refuses while
    stopped, and records acknowledged receipts; set_file(None) removes a file."""
    sink = Collector()
    source = MemorySource("mem", sink, clock=lambda: 5.0)
    with pytest.raises(SourceError, match="not started"):
        source.emit("a.html")
    source.start()
    change = source.emit("a.html", K.CREATED, receipt="r1")
    assert sink.changes == [Change("mem", "a.html", K.CREATED, 5.0, receipt="r1")]
    assert change.receipt == "r1"
    source.acknowledge(["r1"])
    assert source.acknowledged == ["r1"]
    source.set_file("a.html", FileStat(1, 2, 3))
    assert source.stat("a.html") == FileStat(1, 2, 3)
    source.set_file("a.html", None)
    assert list(source.scan()) == []


def test_a_small_kernel_queue_is_named_with_the_value_advised_and_why(tmp_path: Path) -> None:
    """fs.inotify.max_queued_events below 65,536 gives a warning naming the sysctl, its value,
    the value advised and why (overflows force full rescans); at 65,536 or unreadable, none."""
    sysctl = tmp_path / "max_queued_events"
    sysctl.write_text("16384\n")
    warning = queue_warning(str(sysctl))
    assert warning is not None
    assert (warning["sysctl"], warning["current"], warning["advised"]) == (
        "fs.inotify.max_queued_events",
        16384,
        65536,
    )
    assert "rescan of the whole tree" in warning["why"]
    sysctl.write_text("65536\n")
    assert queue_warning(str(sysctl)) is None
    assert queue_warning(str(tmp_path / "absent")) is None
