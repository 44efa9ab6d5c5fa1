"""watchdog's inotify observer for a `Watch`: where the native reader (`sources/inotify.py`)
cannot be used (not Linux, or a libc without inotify). Imported only then, so the
watcher process of a Linux host never loads watchdog.

It delivers what the native reader delivers (the semantics are in `filesystem.py`); the
differences are watchdog's: two threads and a queue per event, and overflow and watch-limit
failures that reach us only through its logger and internals (see `_OverflowHook` and
`_unwatched_directories` in `watcher.py` and here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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

from invalidatord.model import ChangeKind

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from invalidatord.sources.watcher import Watch

__all__ = ["WatchdogGroup", "start_observer"]

_STOP_TIMEOUT = 10.0

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

_FILE_KINDS: dict[type[FileSystemEvent], ChangeKind] = {
    FileCreatedEvent: ChangeKind.CREATED,
    FileClosedEvent: ChangeKind.MODIFIED,
    FileModifiedEvent: ChangeKind.MODIFIED,
    FileDeletedEvent: ChangeKind.DELETED,
}


def start_observer(watch: Watch) -> BaseObserver:
    """An `InotifyObserver` on `watch.root`, started (every watch added). Raises OSError
    when inotify is not available or cannot watch the root."""
    from watchdog.utils import UnsupportedLibcError

    try:
        from watchdog.observers.inotify import InotifyObserver
    except (ImportError, UnsupportedLibcError) as exc:  # not Linux, or a libc without it
        raise OSError(errno.ENOSYS, f"inotify is not available: {exc}") from exc
    _quiet_rewatch_warning()
    observer = InotifyObserver()  # inotify_init: the kernel queue size is fixed here
    try:
        observer.schedule(_Handler(watch), watch.root, recursive=True, event_filter=_INOTIFY_EVENTS)
        observer.start()
    except BaseException:
        _shutdown(observer)
        raise
    return observer


def reader_ident(observer: BaseObserver) -> int | None:
    """The thread that logs watchdog's overflow warning: its inotify reader's."""
    return getattr(getattr(observer, "_inotify_fd", None), "ident", None)


def healthy(observer: BaseObserver) -> bool:
    """Alive, with its emitter (an emitter stops by itself when the root is deleted)."""
    emitters = list(observer.emitters)
    return bool(emitters) and all(emitter.is_alive() for emitter in emitters)


def shutdown(observer: BaseObserver) -> None:
    _shutdown(observer)


class WatchdogGroup:
    """What `Watch` needs of the watches (the same as `InotifyReader` offers): the watched
    directories and a way to watch a tree again. Reads watchdog 7.1's internals."""

    def __init__(self, group: Any, paths: Mapping[bytes, object]) -> None:
        self._group = group
        #: full path (bytes) of each watched directory -> its watch. Live: the reader thread
        #: adds to it; `in` is atomic, copying is not.
        self.paths = paths

    def rewatch(self, raw: bytes) -> None:
        lock = getattr(self._group, "_lock", None)
        if lock is None:
            return
        with lock:
            if getattr(self._group, "is_active", False):
                with contextlib.suppress(OSError):
                    self._group._add_all_callbacks(raw)


def group_of(observer: BaseObserver) -> WatchdogGroup | None:
    for emitter in list(observer.emitters):
        group = getattr(emitter, "_inotify", None)
        paths = getattr(group, "_active_callbacks_by_path", None)
        if isinstance(paths, dict):
            return WatchdogGroup(group, paths)
    return None


def unwatched_directories(observer: BaseObserver, root: str) -> int:
    """How many directories under `root` inotify is not watching. watchdog 7.1 swallows the
    ENOSPC of inotify_add_watch below the root (InotifyWatchGroup._add_callback), so a tree
    larger than fs.inotify.max_user_watches would otherwise be watched in part, silently.
    Reads watchdog internals; 0 when they are not where expected."""
    group = group_of(observer)
    if group is None:
        return 0
    watched = group.paths
    missing: list[bytes] = []
    for parent, dirs, _ in os.walk(os.fsencode(root)):
        for name in dirs:
            path = os.path.join(parent, name)
            if path not in watched and not os.path.islink(path):
                missing.append(path)
    # A directory created since watchdog's own walk gets its watch when the reader thread
    # handles its IN_CREATE: count only those still unwatched and still there.
    return sum(1 for path in missing if path not in watched and os.path.isdir(path))


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


class _Handler(FileSystemEventHandler):
    """watchdog events -> changes. The hot path: no stat, no logging per event."""

    def __init__(self, watch: Watch) -> None:
        self._watch = watch
        self._root = watch.root
        self._prefix = watch.prefix
        self._match = watch.match
        self._change = watch.events.change

    def _relative(self, path: bytes | str) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.startswith(self._prefix):
            return path[len(self._prefix) :]
        if path == self._root:
            return ""
        return None  # "" for the unknown end of a move, or outside the root

    def dispatch(self, event: FileSystemEvent) -> None:
        if not self._watch.delivering:
            return
        match = self._match
        change = self._change
        if event.is_directory:
            ends = (
                (event.src_path, event.dest_path)
                if type(event) is DirMovedEvent
                else (event.src_path,)
            )
            arrives = type(event) is DirCreatedEvent or type(event) is DirMovedEvent
            for i, end in enumerate(ends):
                rel = self._relative(end)
                if rel is None or (match is not None and rel and match(rel + "/")):
                    continue
                if not rel and type(event) is DirDeletedEvent:
                    self._watch.events.report("source_root_gone", {"root": self._root})
                change(rel, ChangeKind.RESCAN)
                if arrives and rel and (i == 1 or type(event) is DirCreatedEvent):
                    self._watch.directory_arrived(rel)
            return
        if type(event) is FileMovedEvent:
            for end in (event.src_path, event.dest_path):
                rel = self._relative(end)
                if rel and (match is None or not match(rel)):
                    change(rel, ChangeKind.MOVED)
            return
        kind = _FILE_KINDS.get(type(event))
        if kind is None:
            return
        rel = self._relative(event.src_path)
        if rel and (match is None or not match(rel)):
            change(rel, kind)
