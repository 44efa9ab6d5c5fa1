"""The filesystem source: watchdog's inotify (or polling) on a document root, and tree scans.

With `watcher: polling` (NFS/EFS, overlay filesystems: inotify does not see writes made by
other hosts) the source delivers only a RESCAN of "" every `poll_interval`; the pipeline diffs
the tree against the catch-up index, streaming both, and so finds the changes below.

What it delivers, on watchdog's threads, through the sink (paths relative to the root, POSIX,
names that are not UTF-8 decoded with surrogateescape as `os.fsdecode` does):

- a file created -> CREATED; closed after writing -> MODIFIED;
  deleted or moved out of the tree -> DELETED; moved in -> CREATED;
- a file moved inside the tree -> MOVED for the source and MOVED for the destination, each
  end checked against the ignore list on its own (rsync's ignored `.page.html.Ab12Cd` renamed
  to `page.html` is a change of `page.html`);
- a directory created, deleted or moved (either end) -> RESCAN of that directory: the pipeline
  diffs the subtree against its index, which covers files inotify cannot report (a directory
  moved out of the tree says nothing about its files). File events inside still arrive;
- an inotify queue overflow -> RESCAN of "" (the whole tree).

Not delivered: opens, closes without writing, each write() (IN_MODIFY), attribute changes. A
file changed without being closed after a write (truncate(2) by path, writes through mmap or
by a process that keeps it open) is found by the periodic catch-up scan, not here.

The root itself is watched too: the directory the configured `root` leads to (through any
symlinks) is identified by its device and inode, checked every second while nothing happens
(a `current` link repointed to a release written elsewhere sends no event into the tree), at
most every 10 ms while events arrive, and at once when the watch reports the root itself
deleted or moved. When another directory is there (the root renamed away and another
renamed in, deleted and recreated, a `current` or git-sync link repointed to another
release) the source stops the old watch, drops what it still reports, watches the new tree
and delivers one REATTACH: the pipeline diffs the new tree against the index. When nothing
is there the source is unhealthy (`problem`, `root_missing`), asks the pipeline to hold its
batch (`holding`, for `root_wait` at most: files deleted just before may be a tree being
replaced) and re-attaches by itself when the root is back; after `root_wait` it logs
`source_root_lost`, stops holding and keeps looking every 5 s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pathspec
import structlog

from invalidatord.contracts import BatchSink, ChangeSink, Row
from invalidatord.errors import SourceError
from invalidatord.model import DEFAULT_IGNORE, Change, ChangeBatch, ChangeKind, FileStat
from invalidatord.sources.content import Hashed, IsSymlink, file_digest
from invalidatord.sources.ignore import GIT_LOCK, matchers, walk_filter, with_fences
from invalidatord.sources.watcher import (
    OVERFLOW_LOGGER,
    OVERFLOW_MESSAGE,
    Watch,
    WatchEvents,
    WatchProcess,
    WatchSettings,
    describe,
    queue_warning,
)

if TYPE_CHECKING:
    from invalidatord.metrics import Metrics

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_IGNORE", "OVERFLOW_LOGGER", "OVERFLOW_MESSAGE", "FilesystemSource"]

_S_IFMT = 0o170000
_S_IFREG = stat_module.S_IFREG
_S_IFLNK = stat_module.S_IFLNK
_STOP_JOIN = 10.0
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR})
#: How often the root's identity is checked while nothing happens (one stat(2) and a thread
#: wake-up: at 100 ms these were 10 of an idle daemon's 16 wake-ups a second), how often a
#: missing root is looked for, and at most how often while events arrive.
_ROOT_CHECK_IDLE = 1.0
_ROOT_CHECK = 0.1
_ROOT_CHECK_ON_EVENT_NS = 10_000_000
#: How often a root that stayed missing past `root_wait` is looked for.
_ROOT_CHECK_SLOW = 5.0
#: How long a missing root holds the source's batch before it is reported lost.
ROOT_WAIT = 60.0

_Identity = tuple[int, int]  # (st_dev, st_ino) of the root directory


def _file_lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's own lstat when it is a regular file or a symlink leading to one (what
    `scan` lists), else None; None too when it vanished."""
    try:
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode & _S_IFMT
        if mode != _S_IFREG and (mode != _S_IFLNK or not entry.is_file()):
            return None
    except OSError:
        return None
    return st


class _Attachment(WatchEvents):
    """What one watch reports, passed on while it is the source's current watch: once the
    root is replaced, the old watch's events describe a tree no longer served."""

    def __init__(self, source: FilesystemSource, generation: int) -> None:
        self._source = source
        self._generation = generation

    def _current(self) -> bool:
        return self._generation == self._source._generation

    def change(self, rel: str, kind: ChangeKind) -> None:
        if self._current():
            self._source.change(rel, kind)

    def changes(self, items: Sequence[tuple[str, ChangeKind]]) -> None:
        if self._current():
            self._source.changes(items)

    def overflow(self) -> None:
        if self._current():
            self._source.overflow()

    def report(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "source_root_gone":
            self._source._root_event.set()
        if self._current():
            self._source.report(event, fields)

    def ended(self, reason: str) -> None:
        if self._current():
            self._source.ended(reason)


class FilesystemSource(WatchEvents):
    """Watches a directory tree and lists it. Satisfies `contracts.Source` and
    `contracts.TreeScanner`.

    `start` returns once the observer is watching (every change made after it returns is
    delivered) or raises `SourceError`; `stop` returns once nothing more will be delivered.
    The sink is called on one of this process's threads (watchdog's, or the thread reading
    the watcher process) and must not block for long.

    With `separate_process` (the default) watchdog runs in a child process of its own
    (`sources/watcher.py` says why); without it, in this one.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        sink: ChangeSink,
        *,
        ignore: Sequence[str] = (),
        watcher: Literal["auto", "inotify", "polling"] = "auto",
        poll_interval: float = 5.0,
        separate_process: bool = True,
        compare: Literal["mtime", "content"] = "mtime",
        root_wait: float = ROOT_WAIT,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        hold_while: Sequence[str] = (),
        sink_batch: BatchSink | None = None,
    ) -> None:
        """`sink_batch`: where a burst the watcher process read at once is delivered as one
        `ChangeBatch` (without it, each of its changes goes to `sink`).
        `metrics`: where its overflows and watcher restarts are counted as they happen.
        `hold_while`: deploy markers, relative to the root (`deploy_marker` says which exists);
        `.git/index.lock` is always one. Markers are ignored: never a change."""
        # watcher, poll_interval and each ignore pattern are checked by the config
        # (FilesystemSourceConfig), the one place that names the key and line of a bad value.
        self.name = name
        self.root = Path(root)
        self.watcher = watcher
        self.poll_interval = poll_interval
        self.separate_process = separate_process
        self.ignore = with_fences(ignore, hold_while)
        #: deploy markers relative to the root, `.git/index.lock` last
        self.hold_while = (
            *dict.fromkeys(m.strip("/") for m in hold_while if m.strip("/")),
            GIT_LOCK,
        )
        #: "content": a file is changed only when its bytes are (see `digest`).
        self.compare = compare
        #: files and bytes read to hash them since construction.
        self.hashed = Hashed()
        self.root_wait = root_wait
        #: times the root was replaced since construction.
        self.swaps = 0
        #: wall clock at which the root went missing; None while it is there.
        self.missing_since: float | None = None
        self._lost = False
        self._identity: _Identity | None = None
        self._generation = 0
        self._attached_generation = 0
        self._root_fd: int | None = None
        self._previous_fd: int | None = None
        self._last_swap: dict[str, str] = {}
        self._next_check_ns = 0
        self._root_event = threading.Event()
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        #: "inotify" or "polling" once started; "" before.
        self.watcher_kind = ""
        #: inotify queue overflows seen since construction.
        self.overflows = 0
        #: watcher processes that ended unasked since construction (each one is replaced).
        self.watcher_restarts = 0
        #: wall clock (ns) at which the current watch began, at the latest; 0 before.
        self.watching_since_ns = 0
        self._sink = sink
        self._sink_batch = sink_batch
        self._clock = clock
        self._metrics = metrics
        spec = pathspec.GitIgnoreSpec.from_lines(self.ignore)
        self._match = matchers(spec)[0]
        self._walk_filter = walk_filter(spec)
        self._set_root(os.path.realpath(self.root))
        self._lock = threading.Lock()
        self._watch: Watch | WatchProcess | None = None
        self._delivering = False

    # -- Source ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching. Raises `SourceError` if the root is not a readable directory, or
        if `watcher="inotify"` and inotify cannot watch the whole tree."""
        with self._lock:
            if self._watch is not None:
                return
            # A root given as a symlink is watched (and listed) through its target: inotify
            # does not follow a symlink it is asked to watch.
            self._set_root(os.path.realpath(self.root))
            self._check_root()
            self._identity = self._root_identity()
            since = time.time_ns()
            self._delivering = True
            try:
                watch = self._attach()
            except BaseException:
                self._delivering = False
                raise
            if self.watcher_kind == "inotify":
                small = queue_warning()
                if small is not None:
                    log.warning("inotify_queue_small", source=self.name, **small)
            spawned = getattr(watch, "spawned_ns", 0)
            self.watching_since_ns = min(since, spawned) if spawned else since
            self._monitor_stop.clear()
            self._monitor = threading.Thread(
                target=self._watch_root, name=f"root-{self.name}", daemon=True
            )
            self._monitor.start()
        log.info(
            "source_started",
            source=self.name,
            root=self._root_str,
            watcher=self.watcher_kind,
            ignore=list(self.ignore),
            process=self.separate_process,
        )

    def stop(self) -> None:
        """Stop watching; returns once the watcher's threads (or process) have ended, 10 s
        at most."""
        self._monitor_stop.set()
        self._root_event.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.join(_STOP_JOIN)
        with self._lock:
            watch, self._watch = self._watch, None
            self._close_fds()
        if watch is not None:
            watch.stop()
        self._delivering = False
        log.info("source_stopped", source=self.name, root=self._root_str)

    @property
    def healthy(self) -> bool:
        """True while the watcher is alive and watching the root that is there (watchdog's
        emitter stops by itself when the root is deleted)."""
        watch = self._watch
        return self.missing_since is None and watch is not None and watch.healthy

    def problem(self) -> str | None:
        """Why the source is not watching all it should, in one line; None while it is."""
        missing = self.missing_since
        if missing is not None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(missing))
            if self._lost:
                return (
                    f"not watching: root {self.root} has been missing since {since}; "
                    f"looking for it every {_ROOT_CHECK_SLOW:g} s"
                )
            return (
                f"not watching: root {self.root} is missing (since {since}); it is "
                "watched again as soon as it is back"
            )
        watch = self._watch
        if watch is None:
            return "not watching (not started or stopped)"
        if not watch.healthy:
            return f"not watching: the watcher of {self._root_str} stopped"
        return watch.problem  # directories past the inotify watch limit, or None

    @property
    def root_missing(self) -> bool:
        return self.missing_since is not None

    @property
    def holding(self) -> bool:
        """Whether the pipeline should hold this source's batch: the root is missing and has
        not been for longer than `root_wait` (a tree being replaced, not removed)."""
        return self.missing_since is not None and not self._lost

    @property
    def attached(self) -> bool:
        """Whether the root is there to be listed (a rescan while it is not waits for the
        diff of the re-attach)."""
        return self.missing_since is None

    def swap(self) -> dict[str, str]:
        """The last swap of the root, for its log line: the root now, the one before, and
        the configured path when it is a symlink."""
        return dict(self._last_swap)

    def deploy_marker(self) -> str | None:
        """The first deploy marker that exists now (relative to the root), or None. A
        dangling symlink counts: it exists as a marker."""
        prefix = self._root_prefix
        for marker in self.hold_while:
            if os.path.lexists(prefix + marker):
                return marker
        return None

    @property
    def watcher_pid(self) -> int | None:
        """The watcher process's pid while it runs in one."""
        watch = self._watch
        return watch.pid if isinstance(watch, WatchProcess) else None

    def acknowledge(self, receipts: Sequence[str]) -> None:
        """Filesystem changes carry no receipts: nothing to do."""

    # -- TreeScanner -------------------------------------------------------------------------

    def scan(self, prefix: str = "") -> Iterator[tuple[str, FileStat]]:
        """Every regular file under `prefix` ("" = the whole root) that is not ignored, as
        (path relative to the root, FileStat). A symlink to a file counts, with its own lstat;
        symlinked directories are not followed; ignored directories are not entered. Files
        and directories that vanish mid-walk are skipped. Raises `SourceError` when the root
        itself cannot be listed: an empty listing would read as "every file deleted".

        Paths come in the byte order of `path.encode("utf-8", "surrogateescape")` (the order
        of the catch-up index), so the catch-up diff can merge the two without holding
        either: each directory is sorted with a subdirectory keyed as its name + "/", and
        walked depth first. Memory is the sorted listings along one path from the top."""
        new = tuple.__new__  # FileStat's fields as one tuple: 0.2 us a file less than FileStat(...)
        for rel_dir, files in self._runs(prefix):
            for name, entry in files:
                st = _file_lstat(entry)
                if st is None:
                    continue
                yield (
                    rel_dir + name,
                    new(FileStat, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, None)),
                )

    def scan_runs(self, prefix: str = "") -> Iterator[list[Row]]:
        """`scan(prefix)` as `Row`s, the files of one directory between its subdirectories
        at a time (`contracts.RunScanner`): what `catchup.diff_runs` merges."""
        for rel_dir, files in self._runs(prefix):
            rows: list[Row] = []
            for name, entry in files:
                st = _file_lstat(entry)
                if st is None:
                    continue
                key = (rel_dir + name).encode("utf-8", "surrogateescape")
                rows.append((key, st.st_size, st.st_mtime_ns, st.st_ino))
            if rows:
                yield rows

    def _runs(self, prefix: str) -> Iterator[tuple[str, list[tuple[str, os.DirEntry[str]]]]]:
        """The walk `scan` lists: (relative directory with a trailing "/", entries) for each
        run of entries between a directory's subdirectories, in listing order. The entries
        may be files or anything else but directories; the caller stats them."""
        top_rel = prefix.strip("/")
        match = self._match
        if top_rel:
            if match is not None and match(top_rel + "/"):
                return
            top = os.path.join(self._root_str, top_rel)
            try:
                if not stat_module.S_ISDIR(os.lstat(top).st_mode):
                    return
            except OSError:
                self._check_root()
                return
            top_dir = top_rel + "/"
        else:
            self._check_root()
            top, top_dir = self._root_str, ""
        listing, subdirs = self._sorted_listing(top, top_dir)
        if not listing:
            return
        stack = [(top_dir, listing, 0, subdirs)]
        while stack:
            rel_dir, entries, start, subdirs = stack.pop()
            if not subdirs:  # most directories: no entry to look at here
                yield rel_dir, entries
                continue
            end = len(entries)
            for i in range(start, end):
                name, entry = entries[i]
                if name[-1] == "/":
                    if i > start:
                        yield rel_dir, entries[start:i]
                    stack.append((rel_dir, entries, i + 1, True))
                    sub = rel_dir + name
                    listing, below = self._sorted_listing(entry.path, sub)
                    if listing:
                        stack.append((sub, listing, 0, below))
                    break
            else:
                if start < end:
                    yield rel_dir, entries[start:] if start else entries

    def _sorted_listing(
        self, directory: str, rel_dir: str
    ) -> tuple[list[tuple[str, os.DirEntry[str]]], bool]:
        """The entries of one directory `scan` visits, as (name, entry), a subdirectory's
        name ending with "/", sorted by the byte order of the paths under them, and whether
        there is a subdirectory among them. Ignored entries are left out; an unreadable
        directory is empty."""
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
            try:
                # one comprehension, not a loop with a try per entry: about 0.05 s less per
                # 100,000 files; is_dir raises only where d_type is unknown and lstat fails
                keyed = {
                    e.name + "/" if e.is_dir(follow_symlinks=False) else e.name: e for e in entries
                }
            except OSError:
                keyed = {}
                for entry in entries:
                    with contextlib.suppress(OSError):
                        keyed[
                            entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name
                        ] = entry
        except OSError as exc:
            if exc.errno not in _VANISHED:
                log.warning("scan_unreadable", source=self.name, path=rel_dir, error=describe(exc))
            return [], False
        walk = self._walk_filter
        # The ignore list a directory at a time, the regexes called from C by filter():
        # about 0.15 s less per 100,000 files than two calls of a Python function each.
        ignored = [] if walk.by_name is None else list(filter(walk.by_name, keyed))
        if walk.paths_may_match(rel_dir):
            by_path = walk.by_path
            ignored += [name for name in keyed if by_path(rel_dir + name)]  # type: ignore[misc]
        for name in ignored:
            keyed.pop(name, None)
        names = "".join(keyed)
        subdirs = "/" in names  # only a subdirectory's name has one
        try:
            # Without surrogate escapes, code point order is UTF-8 byte order. (The names
            # are distinct: the entries themselves are never compared.)
            names.encode("utf-8")
            return sorted(keyed.items()), subdirs
        except UnicodeEncodeError:
            items = sorted(keyed.items(), key=lambda i: i[0].encode("utf-8", "surrogateescape"))
            return items, subdirs

    def stat(self, path: str) -> FileStat | None:
        """The file's stat now (lstat for a symlink to a file, as `scan` reports it), or None
        if it does not exist or is not a regular file."""
        full = self._root_prefix + path
        try:
            st = os.lstat(full)
            mode = st.st_mode & _S_IFMT
            # a symlink counts when it leads to a file
            if mode != _S_IFREG and (
                mode != _S_IFLNK or not stat_module.S_ISREG(os.stat(full).st_mode)
            ):
                return None
        except (OSError, ValueError):
            return None
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def digest(self, path: str) -> FileStat | None:
        """The file's stat now (as `stat` gives it) with the hash of its bytes, read once;
        None if it does not exist or is not a regular file."""
        return self._digest(self._root_prefix + path)

    def previous_digest(self, path: str, indexed: FileStat) -> bytes | None:
        """The hash of `path` in the tree the root was before its last swap, when that file
        is still there as the index knew it (same size, mtime and inode): what a release
        swap compares against when the index holds no hash. None otherwise. The old tree is
        reached through a descriptor held open since it was attached, so it is found
        wherever it was renamed to (`mv html html.old`), and not at all once deleted."""
        previous = self._previous_fd
        if previous is None:
            return None
        got = self._digest(path, previous)
        return got.digest if got is not None and got == indexed else None

    def _digest(self, full: str, dir_fd: int | None = None) -> FileStat | None:
        try:
            got = file_digest(full, self.hashed, dir_fd, follow=False)
        except IsSymlink:
            # a symlink to a file is indexed with its own lstat, as `scan` lists it
            try:
                link = os.lstat(full, dir_fd=dir_fd)
            except (OSError, ValueError):
                return None
            got = file_digest(full, self.hashed, dir_fd)
            if got is None:
                return None
            return FileStat(link.st_size, link.st_mtime_ns, link.st_ino, link.st_ctime_ns, got[1])
        if got is None:
            return None
        st, digest = got
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest)

    def is_ignored(self, path: str) -> bool:
        """Whether the file `path` (relative to the root) matches the ignore list, gitignore
        style: `.git/` ignores everything under any `.git` directory."""
        match = self._match
        return match is not None and bool(path) and match(path)

    # -- internals -------------------------------------------------------------------------

    def _watch_settings(self) -> WatchSettings:
        return WatchSettings(
            self.name, self._root_str, self.ignore, self.watcher, self.poll_interval
        )

    def _set_root(self, root: str) -> None:
        self._root_str = root
        self._root_prefix = root if root.endswith(os.sep) else root + os.sep

    def _check_root(self) -> None:
        root = self._root_str
        try:
            with os.scandir(root):
                pass
        except FileNotFoundError as exc:
            raise SourceError(self.name, f"root {root} does not exist") from exc
        except NotADirectoryError as exc:
            raise SourceError(self.name, f"root {root} is not a directory") from exc
        except OSError as exc:
            raise SourceError(self.name, f"root {root} cannot be listed: {describe(exc)}") from exc

    # -- the root: attach, watch its identity, re-attach -----------------------------------------

    def _root_identity(self) -> _Identity | None:
        """The device and inode of the directory `root` leads to now; None when there is none."""
        try:
            st = os.stat(self.root)
        except (OSError, ValueError):
            return None
        return (st.st_dev, st.st_ino) if stat_module.S_ISDIR(st.st_mode) else None

    def _attach(self) -> Watch | WatchProcess:
        """Watch `_root_str` (under the lock). A new generation: only this watch's events
        pass from now on."""
        self._generation += 1
        kind = WatchProcess if self.separate_process else Watch
        watch = kind(self._watch_settings(), _Attachment(self, self._generation))
        self.watcher_kind = watch.start()
        self._watch = watch
        self._attached_generation = self._generation
        fd: int | None = None
        with contextlib.suppress(OSError):
            fd = os.open(self._root_str, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if self._root_fd is not None:
            if self._previous_fd is not None:
                os.close(self._previous_fd)
            self._previous_fd = self._root_fd
        self._root_fd = fd
        return watch

    def _close_fds(self) -> None:
        for fd in (self._root_fd, self._previous_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._root_fd = self._previous_fd = None

    def _watch_root(self) -> None:
        """The root monitor thread: see the module docstring."""
        while not self._monitor_stop.is_set():
            if self._lost:
                wait = _ROOT_CHECK_SLOW
            else:
                wait = _ROOT_CHECK if self.missing_since is not None else _ROOT_CHECK_IDLE
            self._root_event.wait(wait)
            self._root_event.clear()
            if self._monitor_stop.is_set():
                return
            try:
                self._check_identity()
            except Exception:  # the monitor must outlive anything: it is what recovers
                log.exception("source_root_check_failed", source=self.name)

    def _check_identity(self) -> None:
        identity = self._root_identity()
        if (
            identity is not None
            and identity == self._identity
            and self.missing_since is None
            and self._attached_generation == self._generation
        ):
            return
        if identity is None:
            self._root_gone()
            return
        with self._lock:
            if self._watch is None and self.missing_since is None:
                return  # stopped meanwhile
            self._reattach(identity)

    def _root_gone(self) -> None:
        now = self._clock()
        with self._lock:
            if self.missing_since is None:
                self.missing_since = now
                if self._metrics is not None:
                    self._metrics.root_missing.labels(self.name).set(1)
                self._generation += 1  # what the old watch still says is about a gone tree
                watch, self._watch = self._watch, None
                log.warning(
                    "source_root_missing",
                    source=self.name,
                    root=str(self.root),
                    waiting=self.root_wait,
                )
                if watch is not None:
                    watch.stop()
            elif not self._lost and now - self.missing_since >= self.root_wait:
                self._lost = True
                log.error(
                    "source_root_lost",
                    source=self.name,
                    root=str(self.root),
                    missing_for=round(now - self.missing_since, 1),
                    reason=f"the root did not come back within {self.root_wait:g} s; changes "
                    f"held meanwhile are accepted, and it is looked for every "
                    f"{_ROOT_CHECK_SLOW:g} s",
                )

    def _reattach(self, identity: _Identity) -> None:
        """Under the lock: the root is there and is not the directory being watched."""
        previous = self._root_str
        returned = self.missing_since is not None
        self._generation += 1
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        self._set_root(os.path.realpath(self.root))
        try:
            self._attach()
        except SourceError as exc:
            # e.g. half created: try again at the next check
            log.error("source_reattach_failed", source=self.name, error=exc.reason)
            if self.missing_since is None:
                self.missing_since = self._clock()
            return
        self._identity = identity
        missing_since, self.missing_since, self._lost = self.missing_since, None, False
        self.swaps += 1
        if self._metrics is not None:
            self._metrics.root_missing.labels(self.name).set(0)
            self._metrics.root_swaps.labels(self.name).inc()
        self._last_swap = {"root": self._root_str, "previous": previous}
        if os.path.islink(self.root):
            self._last_swap["link"] = str(self.root)
        log.warning(
            "source_root_returned" if returned else "source_root_replaced",
            source=self.name,
            **self._last_swap,
            missing_for=round(self._clock() - missing_since, 3) if missing_since else 0,
            watcher=self.watcher_kind,
        )
        self._sink(Change(self.name, "", ChangeKind.REATTACH, self._clock()))

    # -- WatchEvents: called on the watcher's threads -----------------------------------------

    def change(self, rel: str, kind: ChangeKind) -> None:
        if not self._delivering or self._root_replaced():
            return
        try:
            self._sink(Change(self.name, rel, kind, self._clock()))
        except Exception:
            # The sink promises not to raise; if it does, losing the watcher's thread would
            # lose every later change, so log and carry on.
            log.exception("sink_failed", source=self.name, path=rel, kind=str(kind))

    def changes(self, items: Sequence[tuple[str, ChangeKind]]) -> None:
        sink_batch = self._sink_batch
        if sink_batch is None:
            super().changes(items)
            return
        if not self._delivering or self._root_replaced():
            return
        try:
            sink_batch(ChangeBatch(self.name, items, self._clock()))
        except Exception:
            # as in `change`: the watcher's thread must outlive a sink that raises
            log.exception("sink_failed", source=self.name, changes=len(items))

    def _root_replaced(self) -> bool:
        """Whether the root was found replaced under a busy watch (checked at most every
        10 ms): its events may already be about a tree no longer served (git-sync deletes
        the old worktree right after the swap), so they are dropped from now on."""
        now = time.monotonic_ns()
        if now < self._next_check_ns:
            return False
        self._next_check_ns = now + _ROOT_CHECK_ON_EVENT_NS
        if self._root_identity() == self._identity:
            return False
        self._generation += 1
        self._root_event.set()
        return True

    def overflow(self) -> None:
        if not self._delivering:
            return
        self.overflows += 1
        if self._metrics is not None:
            self._metrics.overflows.labels(self.name).inc()
        log.warning(
            "watcher_overflow", source=self.name, root=self._root_str, overflows=self.overflows
        )
        self.change("", ChangeKind.RESCAN)

    def report(self, event: str, fields: Mapping[str, Any]) -> None:
        log.warning(event, source=self.name, **fields)

    def ended(self, reason: str) -> None:
        """The watcher process died (killed, out of memory): start another, then rescan the
        whole tree, since whatever changed in between was not seen. Retried with a growing
        delay while it cannot start; the source is unhealthy meanwhile."""
        self.watcher_restarts += 1
        if self._metrics is not None:
            self._metrics.watcher_restarts.labels(self.name).inc()
        log.error("watcher_process_ended", source=self.name, root=self._root_str, reason=reason)
        threading.Thread(target=self._restart, name=f"restart-{self.name}", daemon=True).start()

    def _restart(self) -> None:
        delay = 1.0
        while True:
            with self._lock:
                old = self._watch
                if not isinstance(old, WatchProcess) or old.healthy or self.missing_since:
                    return  # stopped meanwhile, already replaced, or the root is gone
                old.stop()
                watch = WatchProcess(self._watch_settings(), _Attachment(self, self._generation))
                try:
                    self.watcher_kind = watch.start()
                except SourceError as exc:
                    log.error("watcher_restart_failed", source=self.name, error=exc.reason)
                else:
                    self._watch = watch
                    log.warning("watcher_restarted", source=self.name, pid=watch.pid)
                    self.change("", ChangeKind.RESCAN)
                    return
            time.sleep(delay)
            delay = min(60.0, delay * 2)
