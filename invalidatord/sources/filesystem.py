"""The filesystem source: watchdog (inotify, or polling) on a document root, and tree scans.

What it delivers, on watchdog's threads, through the sink (paths relative to the root, POSIX,
names that are not UTF-8 decoded with surrogateescape as `os.fsdecode` does):

- a file created -> CREATED; closed after writing -> MODIFIED (polling: modified -> MODIFIED);
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
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat as stat_module
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import pathspec
import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver
from watchdog.utils import UnsupportedLibcError

from invalidatord.contracts import ChangeSink
from invalidatord.errors import SourceError
from invalidatord.model import DEFAULT_IGNORE, Change, ChangeKind, FileStat

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_IGNORE", "FilesystemSource"]

# What inotify is asked for (watchdog 7.1 derives the kernel mask from this list): creates,
# closes after writing, moves and deletes. Not FileOpenedEvent/FileClosedNoWriteEvent (every
# read of every file) nor FileModifiedEvent (IN_MODIFY fires per write() call): with
# watchdog's default mask a tree of 6,000+ directories overflows the kernel queue in a loop.
_INOTIFY_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
# The polling observer compares snapshots: "modified" is its only signal of a content change.
_POLLING_EVENTS: list[type[FileSystemEvent]] = [*_INOTIFY_EVENTS, FileModifiedEvent]

_FILE_KINDS: dict[type[FileSystemEvent], ChangeKind] = {
    FileCreatedEvent: ChangeKind.CREATED,
    FileClosedEvent: ChangeKind.MODIFIED,
    FileModifiedEvent: ChangeKind.MODIFIED,
    FileDeletedEvent: ChangeKind.DELETED,
}

# watchdog 7.1 reports a kernel queue overflow (IN_Q_OVERFLOW) only as this WARNING on this
# logger (InotifyFD.handle_event), then rebuilds its watches; event handlers hear nothing.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_MESSAGE = "Inotify queue overflowed; filesystem events were lost"

_S_IFMT = 0o170000
_S_IFREG = stat_module.S_IFREG
_S_IFLNK = stat_module.S_IFLNK
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR})
_STOP_TIMEOUT = 10.0


class FilesystemSource:
    """Watches a directory tree and lists it. Satisfies `contracts.Source` and
    `contracts.TreeScanner`.

    `start` returns once the observer is watching (every change made after it returns is
    delivered) or raises `SourceError`; `stop` returns once nothing more will be delivered.
    The sink is called on watchdog's threads and must not block for long.
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if watcher not in ("auto", "inotify", "polling"):
            raise SourceError(
                name, f"unknown watcher {watcher!r} (expected auto, inotify or polling)"
            )
        if poll_interval <= 0:
            raise SourceError(name, f"poll_interval must be positive, got {poll_interval!r}")
        self.name = name
        self.root = Path(root)
        self.watcher = watcher
        self.poll_interval = poll_interval
        self.ignore = tuple(ignore)
        #: "inotify" or "polling" once started; "" before.
        self.watcher_kind = ""
        #: inotify queue overflows seen since construction.
        self.overflows = 0
        self._sink = sink
        self._clock = clock
        try:
            spec = pathspec.GitIgnoreSpec.from_lines(self.ignore)
        except (ValueError, TypeError) as exc:
            raise SourceError(name, f"bad ignore pattern: {exc}") from exc
        self._match, self._scan_match = _matchers(spec)
        self._set_root(os.path.realpath(self.root))
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._reader_ident: int | None = None
        self._delivering = False

    # -- Source ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching. Raises `SourceError` if the root is not a readable directory, or
        if `watcher="inotify"` and inotify cannot watch the whole tree."""
        with self._lock:
            if self._observer is not None:
                return
            # A root given as a symlink is watched (and listed) through its target: inotify
            # does not follow a symlink it is asked to watch.
            self._set_root(os.path.realpath(self.root))
            self._check_root()
            _quiet_rewatch_warning()
            observer: BaseObserver | None = None
            if self.watcher != "polling":
                try:
                    observer = self._start_inotify()
                except OSError as exc:
                    reason = f"inotify cannot watch {self._root_str}: {_describe(exc)}"
                    if self.watcher == "inotify":
                        raise SourceError(self.name, reason) from exc
                    log.warning(
                        "watcher_fallback", source=self.name, root=self._root_str, reason=reason
                    )
            if observer is None:
                observer = self._start_polling()
            self._observer = observer
        log.info(
            "source_started",
            source=self.name,
            root=self._root_str,
            watcher=self.watcher_kind,
            ignore=list(self.ignore),
        )

    def stop(self) -> None:
        """Stop watching; returns once the observer's threads have ended (10 s at most)."""
        with self._lock:
            observer, self._observer = self._observer, None
            self._delivering = False
        if observer is None:
            return
        _OVERFLOW_HOOK.remove(self)
        observer.stop()
        if observer.is_alive():
            observer.join(_STOP_TIMEOUT)
        if observer.is_alive():
            log.warning("source_stop_timeout", source=self.name, timeout=_STOP_TIMEOUT)
        log.info("source_stopped", source=self.name, root=self._root_str)

    @property
    def healthy(self) -> bool:
        """True while the observer and its emitter are alive (an emitter stops by itself when
        the root is deleted)."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = list(observer.emitters)
        return bool(emitters) and all(emitter.is_alive() for emitter in emitters)

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
        listing = self._sorted_listing(top, top_dir)
        if not listing:
            return
        file_stat = FileStat
        stack = [iter(listing)]
        while stack:
            for rel, entry, is_dir in stack[-1]:
                if is_dir:
                    listing = self._sorted_listing(entry.path, rel)
                    if listing:
                        stack.append(iter(listing))
                        break
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode & _S_IFMT
                    # a symlink counts (with its own lstat) when it leads to a file
                    if mode != _S_IFREG and (mode != _S_IFLNK or not entry.is_file()):
                        continue
                except OSError:
                    continue
                yield rel, file_stat(st.st_size, st.st_mtime_ns, st.st_ino)
            else:
                stack.pop()

    def _sorted_listing(
        self, directory: str, rel_dir: str
    ) -> list[tuple[str, os.DirEntry[str], bool]]:
        """The entries of one directory `scan` visits, as (relative path, entry, is a
        directory) sorted by the byte order of the paths under them: a subdirectory's relative
        path ends with "/". Ignored entries are left out; an unreadable directory is empty."""
        by_name, by_path = self._scan_match
        keyed: dict[str, tuple[str, os.DirEntry[str], bool]] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        name += "/"
                    if (by_name is not None and by_name(name)) or (
                        by_path is not None and by_path(rel_dir + name)
                    ):
                        continue
                    keyed[name] = (rel_dir + name, entry, is_dir)
        except OSError as exc:
            if exc.errno not in _VANISHED:
                log.warning("scan_unreadable", source=self.name, path=rel_dir, error=_describe(exc))
            return []
        try:
            # Without surrogate escapes, code point order is UTF-8 byte order.
            "".join(keyed).encode("utf-8")
            order = sorted(keyed)
        except UnicodeEncodeError:
            order = sorted(keyed, key=lambda name: name.encode("utf-8", "surrogateescape"))
        return [keyed[name] for name in order]

    def stat(self, path: str) -> FileStat | None:
        """The file's stat now (lstat for a symlink to a file, as `scan` reports it), or None
        if it does not exist or is not a regular file."""
        full = os.path.join(self._root_str, path)
        try:
            st = os.lstat(full)
            if stat_module.S_ISLNK(st.st_mode):
                if not stat_module.S_ISREG(os.stat(full).st_mode):
                    return None
            elif not stat_module.S_ISREG(st.st_mode):
                return None
        except (OSError, ValueError):
            return None
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ino)

    def is_ignored(self, path: str) -> bool:
        """Whether the file `path` (relative to the root) matches the ignore list, gitignore
        style: `.git/` ignores everything under any `.git` directory."""
        match = self._match
        return match is not None and bool(path) and match(path)

    # -- internals -------------------------------------------------------------------------

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
            raise SourceError(self.name, f"root {root} cannot be listed: {_describe(exc)}") from exc

    def _start_inotify(self) -> BaseObserver:
        try:
            from watchdog.observers.inotify import InotifyObserver
        except (ImportError, UnsupportedLibcError) as exc:  # not Linux, or a libc without it
            raise OSError(errno.ENOSYS, f"inotify is not available: {exc}") from exc

        observer = InotifyObserver()  # inotify_init: the kernel queue size is fixed here
        _OVERFLOW_HOOK.add(self)
        self._delivering = True
        try:
            observer.schedule(
                _Handler(self), self._root_str, recursive=True, event_filter=_INOTIFY_EVENTS
            )
            observer.start()
            # watchdog starts its inotify reader thread in the constructor; an overflow record
            # comes from that thread, which is how it is told apart from another source's.
            self._reader_ident = getattr(getattr(observer, "_inotify_fd", None), "ident", None)
            missing = _unwatched_directories(observer, self._root_str)
            if missing:
                raise OSError(
                    errno.ENOSPC,
                    f"inotify watch limit reached: {missing} directories are not watched"
                    " (raise fs.inotify.max_user_watches)",
                )
        except BaseException:
            self._delivering = False
            _OVERFLOW_HOOK.remove(self)
            _shutdown(observer)
            raise
        self.watcher_kind = "inotify"
        return observer

    def _start_polling(self) -> BaseObserver:
        observer = PollingObserver(timeout=self.poll_interval)
        self._delivering = True
        try:
            observer.schedule(
                _Handler(self), self._root_str, recursive=True, event_filter=_POLLING_EVENTS
            )
            observer.start()  # takes the first snapshot before returning
        except OSError as exc:
            self._delivering = False
            _shutdown(observer)
            raise SourceError(self.name, f"cannot poll {self._root_str}: {_describe(exc)}") from exc
        self._reader_ident = None
        self.watcher_kind = "polling"
        return observer

    def _deliver(self, rel: str, kind: ChangeKind) -> None:
        try:
            self._sink(Change(self.name, rel, kind, self._clock()))
        except Exception:
            # The sink promises not to raise; if it does, losing the observer thread would
            # lose every later change, so log and carry on.
            log.exception("sink_failed", source=self.name, path=rel, kind=str(kind))

    def _on_overflow(self) -> None:
        if not self._delivering:
            return
        self.overflows += 1
        log.warning(
            "watcher_overflow", source=self.name, root=self._root_str, overflows=self.overflows
        )
        self._deliver("", ChangeKind.RESCAN)


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into Changes. The hot path: no stat, no logging per event."""

    def __init__(self, source: FilesystemSource) -> None:
        self._source = source
        self._root = source._root_str
        self._prefix = source._root_prefix
        self._match = source._match

    def _relative(self, path: bytes | str) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.startswith(self._prefix):
            return path[len(self._prefix) :]
        if path == self._root:
            return ""
        return None  # "" for the unknown end of a move, or outside the root

    def dispatch(self, event: FileSystemEvent) -> None:
        source = self._source
        if not source._delivering:
            return
        match = self._match
        if event.is_directory:
            ends = (
                (event.src_path, event.dest_path)
                if type(event) is DirMovedEvent
                else (event.src_path,)
            )
            for end in ends:
                rel = self._relative(end)
                if rel is None or (match is not None and rel and match(rel + "/")):
                    continue
                if not rel and type(event) is DirDeletedEvent:
                    log.warning("source_root_gone", source=source.name, root=self._root)
                source._deliver(rel, ChangeKind.RESCAN)
            return
        if type(event) is FileMovedEvent:
            for end in (event.src_path, event.dest_path):
                rel = self._relative(end)
                if rel and (match is None or not match(rel)):
                    source._deliver(rel, ChangeKind.MOVED)
            return
        kind = _FILE_KINDS.get(type(event))
        if kind is None:
            return
        rel = self._relative(event.src_path)
        if rel and (match is None or not match(rel)):
            source._deliver(rel, kind)


class _OverflowHook(logging.Handler):
    """Hears watchdog's overflow WARNING and tells the source whose inotify reader thread
    logged it; a record from any other thread (unattributable) goes to every inotify source,
    since an extra rescan costs a walk and a lost change costs a stale cache."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._sources: set[FilesystemSource] = set()
        self._guard = threading.Lock()

    def add(self, source: FilesystemSource) -> None:
        logger = logging.getLogger(OVERFLOW_LOGGER)
        with self._guard:
            self._sources.add(source)
            if self not in logger.handlers:
                logger.addHandler(self)
            # The hook hears nothing if logging config silenced the logger: a dictConfig with
            # disable_existing_loggers, or a level above WARNING (log.level: error).
            logger.disabled = False
            if not logger.isEnabledFor(logging.WARNING):
                logger.setLevel(logging.WARNING)

    def remove(self, source: FilesystemSource) -> None:
        with self._guard:
            self._sources.discard(source)
            if not self._sources:
                logging.getLogger(OVERFLOW_LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(OVERFLOW_MESSAGE):
            return
        with self._guard:
            sources = list(self._sources)
        mine = [s for s in sources if s._reader_ident == record.thread]
        for source in mine or sources:
            source._on_overflow()


_OVERFLOW_HOOK = _OverflowHook()


def _unwatched_directories(observer: BaseObserver, root: str) -> int:
    """How many directories under `root` inotify is not watching. watchdog 7.1 swallows the
    ENOSPC of inotify_add_watch below the root (InotifyWatchGroup._add_callback), so a tree
    larger than fs.inotify.max_user_watches would otherwise be watched in part, silently.
    Reads watchdog internals; 0 when they are not where expected."""
    watched: dict[bytes, object] | None = None
    for emitter in list(observer.emitters):
        paths = getattr(getattr(emitter, "_inotify", None), "_active_callbacks_by_path", None)
        if isinstance(paths, dict):
            watched = paths  # live: the reader thread adds to it; `in` is atomic, copying is not
    if watched is None:
        return 0
    missing: list[bytes] = []
    for parent, dirs, _ in os.walk(os.fsencode(root)):
        for name in dirs:
            path = os.path.join(parent, name)
            if path not in watched and not os.path.islink(path):
                missing.append(path)
    # A directory created since watchdog's own walk gets its watch when the reader thread
    # handles its IN_CREATE: count only those still unwatched and still there.
    return sum(1 for path in missing if path not in watched and os.path.isdir(path))


_Match = Callable[[str], bool]


def _matchers(
    spec: pathspec.GitIgnoreSpec,
) -> tuple[_Match | None, tuple[_Match | None, _Match | None]]:
    """Functions telling whether a normalised relative path is ignored (None: never).

    Returns `full` (any path: events, `is_ignored`) and, for a walk that has already pruned
    every ignored ancestor, `(by_name, by_path)`: a path is ignored if `by_name` matches its
    last component or `by_path` matches the whole path. Directories are asked with a
    trailing "/".

    Without negations (`!pattern`) git's rule "the last matching pattern decides" reduces to
    "any pattern matches", which one alternation of the patterns' regexes answers ~3x faster
    than `GitIgnoreSpec.match_file`, and a pattern without a slash (`*.swp`, `.git/`) only
    needs the last component during a walk. With a negation, pathspec decides everything.
    """
    patterns = [p for p in spec.patterns if p.include is not None]
    if not patterns:
        return None, (None, None)
    sources: list[str] = []
    for p in patterns:
        regex = getattr(p, "regex", None)
        if not p.include or not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str):
            return spec.match_file, (None, spec.match_file)
        # The directory mark is a named group in each regex; `re` refuses a name twice.
        sources.append(_NAMED_GROUP.sub("(?:", regex.pattern))
    names = [s[len(_ANY_DIRS) :] for s in sources if _is_name_pattern(s)]
    paths = [s for s in sources if not _is_name_pattern(s)]
    return (
        _alternation(sources),
        (_alternation(["^" + n for n in names]), _alternation(paths)),
    )


_ANY_DIRS = "^(?:.+/)?"  # how pathspec starts the regex of a pattern without a slash
_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def _is_name_pattern(source: str) -> bool:
    rest = source[len(_ANY_DIRS) :]
    return source.startswith(_ANY_DIRS) and "/" not in rest.replace("(?:/)", "").replace("[^/]", "")


def _alternation(sources: list[str]) -> _Match | None:
    if not sources:
        return None
    match = re.compile("|".join("(?:" + s + ")" for s in sources)).match
    return lambda path: match(path) is not None


def _quiet_rewatch_warning() -> None:
    """watchdog 7.1 issues a RuntimeWarning each time it re-adds a watch it already holds,
    which happens whenever a new directory's IN_CREATE races its own recursive walk (`mkdir -p`,
    `cp -r`, `git checkout`). Nothing is lost, but the message embeds the repr of every watch
    of the tree: megabytes per line on stderr for a large one. (Re-added on each start: a
    `catch_warnings` block, as pytest uses, restores the filters it found.)"""
    warnings.filterwarnings(
        "ignore", message="Callback with id", category=RuntimeWarning, module=r"watchdog\."
    )


def _shutdown(observer: BaseObserver) -> None:
    with contextlib.suppress(Exception):
        observer.stop()
    if observer.is_alive():
        observer.join(_STOP_TIMEOUT)


def _describe(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc)
