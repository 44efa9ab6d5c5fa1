"""A batched inotify reader of our own, for a `Watch` on Linux (a ctypes binding of our own).

What it delivers is what watchdog's observer delivers (the semantics are in `filesystem.py`),
with less in between: one thread, which wakes when the kernel has events, reads up to
`_READ_SIZE` bytes of them in one read(2) and turns each into a call of `events.change` (in
the watcher process: a record for the pipe). No event objects, no queue, no second thread,
no watchdog import.

Watches are ours: one per directory (IN_ONLYDIR, IN_DONT_FOLLOW: symlinked directories are
not followed), added by walking the tree at start and again whenever a directory arrives.

- A directory created or moved in from outside: its subtree is watched, then listed, and
  what is already inside is reported as watchdog reports it (a RESCAN of each directory, a
  CREATED of each file): files written before a directory's watch was added (`mkdir -p`,
  `cp -r`, `tar x`) have no event of their own. A file may be reported twice; never missed.
- Moves are paired by cookie: the kernel queues a rename's IN_MOVED_TO right after its
  IN_MOVED_FROM, so the pair is looked for among the next events (a read that ends on an
  IN_MOVED_FROM waits up to `_PAIR_WAIT` for the rest). A directory moved inside the tree
  keeps its watches (their paths follow it) and reports both ends of each file and
  directory under it (MOVED, RESCAN), as watchdog's synthetic events do. An IN_MOVED_FROM
  with no pair left the tree: a file is DELETED, a directory a RESCAN and its watches are
  removed (watchdog keeps them, and then reports later changes there under the old path).
- A deleted directory's watch ends by itself (IN_IGNORED); the directory is a RESCAN.
- The kernel queue overflowed (IN_Q_OVERFLOW): every watch is removed and the tree watched
  again (what changed meanwhile may include directories), then `events.overflow()`.
- inotify_add_watch refused below the root (ENOSPC: fs.inotify.max_user_watches): counted at
  start (`unwatched`) and, for a directory arriving later, passed to `unwatched_dir` (`Watch`
  covers it by rescans, as with watchdog). At the root it is raised.
- The root deleted (IN_DELETE_SELF): `source_root_gone` is reported with a RESCAN of "",
  and the reader ends (`healthy` is False), as watchdog's emitter does. A root renamed or
  replaced is found by `FilesystemSource`, which compares the root's inode.

Not asked for: IN_MODIFY (each write()), IN_ATTRIB, opens and closes without writing, nor
IN_MOVE_SELF (a watched directory's move is seen in its parent; the root's by its inode).
IN_EXCL_UNLINK: nothing about files already unlinked (a temporary file kept open).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from invalidatord.model import ChangeKind

if TYPE_CHECKING:
    from invalidatord.sources.watcher import WatchEvents

__all__ = ["MASK", "InotifyReader", "add_watch", "inotify_init", "parse_events", "rm_watch"]

# ---- the kernel's interface --------------------------------------------------------------------
#
# Three calls and one record layout (<sys/inotify.h>), bound with ctypes here rather than by a
# wrapper package: the one this replaced (`inotify_simple`) found libc with
# `ctypes.util.find_library`, whose imports (subprocess, shutil, tempfile, bz2, lzma) and
# `ldconfig -p` run were 1.2 MiB of the watcher process's peak (18.9 -> 17.7 MiB watching
# 100,000 files in 10,000 directories). `CDLL(None)` is the symbols already loaded into this
# process: the libc the interpreter itself is linked with.

# the event bits (struct inotify_event.mask) and the watch flags
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _init1 = _libc.inotify_init1
    _add_watch = _libc.inotify_add_watch
    _rm_watch = _libc.inotify_rm_watch
except (OSError, AttributeError) as exc:  # not Linux, or a libc without inotify
    raise ImportError(f"inotify is not available: {exc}") from exc
_init1.argtypes = [ctypes.c_int]
_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_init1.restype = _add_watch.restype = _rm_watch.restype = ctypes.c_int

#: struct inotify_event: wd, mask, cookie, len; then `len` bytes of NUL-padded name
_HEADER = struct.Struct("iIII")


def _check(result: int, what: str) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), what)
    return result


def inotify_init() -> int:
    """A new inotify instance (inotify_init1, close-on-exec and non-blocking): its fd."""
    return _check(_init1(os.O_CLOEXEC | os.O_NONBLOCK), "inotify_init1")


def add_watch(fd: int, path: bytes, mask: int) -> int:
    """inotify_add_watch: the watch descriptor of `path`. Raises OSError with the errno
    (ENOSPC: fs.inotify.max_user_watches reached; ENOENT, ENOTDIR: not a directory now)."""
    while True:
        wd: int = _add_watch(fd, path, mask)
        if wd != -1 or ctypes.get_errno() != errno.EINTR:
            return _check(wd, os.fsdecode(path))


def rm_watch(fd: int, wd: int) -> None:
    """inotify_rm_watch. Raises OSError (EINVAL: no such watch any more)."""
    _check(_rm_watch(fd, wd), "inotify_rm_watch")


def parse_events(data: bytes) -> list[tuple[int, int, int, str]]:
    """The events of one read(2) as (wd, mask, cookie, name); name is "" for an event about
    the watched directory itself, else decoded as `os.fsdecode` does. The kernel never
    splits an event across reads."""
    unpack = _HEADER.unpack_from
    header = _HEADER.size
    fsdecode = os.fsdecode
    events: list[tuple[int, int, int, str]] = []
    append = events.append
    pos, end = 0, len(data)
    while pos < end:
        wd, mask, cookie, length = unpack(data, pos)
        pos += header
        if length:
            append((wd, mask, cookie, fsdecode(data[pos : pos + length].rstrip(b"\0"))))
            pos += length
        else:
            append((wd, mask, cookie, ""))
    return events


MASK = (
    IN_CREATE
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)

# the names the reader's code uses
_CREATE = IN_CREATE
_CLOSE_WRITE = IN_CLOSE_WRITE
_MOVED_FROM = IN_MOVED_FROM
_MOVED_TO = IN_MOVED_TO
_DELETE = IN_DELETE
_DELETE_SELF = IN_DELETE_SELF
_IGNORED = IN_IGNORED
_OVERFLOW = IN_Q_OVERFLOW
_ISDIR = IN_ISDIR

_CREATED, _MODIFIED, _DELETED, _MOVED, _RESCAN = (
    ChangeKind.CREATED,
    ChangeKind.MODIFIED,
    ChangeKind.DELETED,
    ChangeKind.MOVED,
    ChangeKind.RESCAN,
)

#: Bytes of events read at once: about 2,000 events of a 20-byte name. Bounds the memory a
#: burst costs the reader; the kernel never splits an event across reads.
_READ_SIZE = 64 * 1024
#: How long a read that ends on an IN_MOVED_FROM waits for its IN_MOVED_TO.
_PAIR_WAIT_MS = 20
#: How far past an IN_MOVED_FROM its IN_MOVED_TO is looked for (events of other renames
#: may come between when several processes rename at once).
_PAIR_LOOKAHEAD = 64
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR})
_STOP_TIMEOUT = 10.0


class InotifyReader:
    """Watches `root` recursively and delivers to `events` on a thread of its own.

    `start` returns once every directory of the tree is watched (or could not be: see
    `unwatched`); `stop` returns once what was already queued has been delivered. `paths`
    and `rewatch` are what `Watch` uses to cover directories past the watch limit."""

    def __init__(
        self,
        root: str,
        match: Callable[[str], bool] | None,
        events: WatchEvents,
        unwatched_dir: Callable[[str], None],
    ) -> None:
        self.root = root
        self._root_raw = os.fsencode(root)
        self._match = match
        self._events = events
        self._unwatched_dir = unwatched_dir
        #: directories below the root that could not be watched at start
        self.unwatched = 0
        #: held while the watches change (the reader's batches, `rewatch` from the coverer)
        self.lock = threading.Lock()
        # watch descriptor -> the directory's path relative to the root with a trailing "/"
        # ("" for the root), and back. Full paths are not kept: made again where needed
        # (`_full`, `paths`), they were 1 MiB of the watcher's peak for 10,000 directories.
        self._rel: dict[int, str] = {}
        self._wd: dict[str, int] = {}
        self._root_wd = -1
        self._gone = False
        # inotify_init1: the kernel queue size is fixed here. Non-blocking: the reader reads
        # until the queue is empty, then waits in poll(2) with the stop pipe.
        self._fd = inotify_init()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="inotify-reader", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the tree and start reading. Raises OSError when the root cannot be watched."""
        try:
            with self.lock:
                self._watch_tree(self._root_raw, "", report=False)
        except BaseException:
            self._close()
            raise
        self._thread.start()

    def stop(self) -> None:
        """Deliver what is queued, end the thread, close the inotify instance."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(_STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._close()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    @property
    def healthy(self) -> bool:
        """Reading, and the root has not been deleted."""
        return self._thread.is_alive() and not self._gone

    @property
    def paths(self) -> Mapping[bytes, int]:
        """The full path of each watched directory -> its watch descriptor."""
        return _Paths(self._root_raw, self._wd)

    def rewatch(self, raw: bytes) -> None:
        """Try again to watch the tree at `raw` (a full path under the root)."""
        prefix = self._root_raw + b"/"
        if not raw.startswith(prefix):
            return
        with self.lock:
            if self._gone or not self._thread.is_alive():
                return
            self._watch_tree(raw, os.fsdecode(raw[len(prefix) :]) + "/", report=False)

    def _close(self) -> None:
        if self._closed:
            return  # the numbers may belong to other files by now
        self._closed = True
        os.close(self._fd)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- watches ---------------------------------------------------------------------------

    def _add(self, raw: bytes, rel_dir: str) -> bool:
        """Watch one directory (`rel_dir`: relative, with a trailing "/"). False when it
        cannot be watched; raises for the root."""
        try:
            wd = add_watch(self._fd, raw, MASK)
        except OSError as exc:
            if not rel_dir:
                raise
            if exc.errno not in _GONE:
                self.unwatched += 1
                if self._thread.is_alive():
                    self._unwatched_dir(rel_dir[:-1])
            return False
        if not rel_dir:
            self._root_wd = wd
        self._rel[wd] = rel_dir
        self._wd[rel_dir] = wd
        return True

    def _full(self, wd: int) -> bytes:
        """The full path of a watched directory."""
        return _full(self._root_raw, self._rel[wd])

    def _watch_tree(self, raw: bytes, rel_dir: str, *, report: bool) -> None:
        """Watch the directory and every one under it. With `report`, deliver what is inside
        already, as watchdog does: a RESCAN of each directory below, a CREATED of each file.
        Each directory is listed after its watch is added, so nothing falls between."""
        match = self._match
        change = self._events.change
        stack = [(raw, rel_dir)]
        while stack:
            path, rel = stack.pop()
            if not self._add(path, rel):
                continue
            try:
                with os.scandir(path) as entries:
                    listing = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            except OSError:
                continue  # gone meanwhile: its parent's watch says so
            for name, is_dir in listing:
                child_rel = rel + os.fsdecode(name)
                if is_dir:
                    stack.append((path + b"/" + name, child_rel + "/"))
                    if report and (match is None or not match(child_rel + "/")):
                        change(child_rel, _RESCAN)
                elif report and (match is None or not match(child_rel)):
                    change(child_rel, _CREATED)

    def _forget(self, wd: int) -> None:
        rel = self._rel.pop(wd, None)
        if rel is not None and self._wd.get(rel) == wd:
            del self._wd[rel]

    def _unwatch_tree(self, rel_dir: str) -> None:
        """Remove the watches of a directory moved out of the tree (`rel_dir`, with a
        trailing "/") and of all under it."""
        for wd in [w for r, w in self._wd.items() if r.startswith(rel_dir)]:
            self._forget(wd)
            with contextlib.suppress(OSError):  # already gone
                rm_watch(self._fd, wd)

    def _move_tree(self, src_dir: str, dst_dir: str) -> bool:
        """The watches of a directory renamed inside the tree follow it (both relative, with
        a trailing "/"). False when it had none (it could not be watched)."""
        if src_dir not in self._wd:
            return False
        moved = [(r, w) for r, w in self._wd.items() if r.startswith(src_dir)]
        for rel, _ in moved:
            del self._wd[rel]
        for rel, wd in moved:
            new = dst_dir + rel[len(src_dir) :]
            self._wd[new] = wd
            self._rel[wd] = new
        return True

    def _rebuild(self) -> None:
        """After an overflow: whatever happened to the tree, watch it as it is now."""
        for wd in list(self._rel):
            with contextlib.suppress(OSError):
                rm_watch(self._fd, wd)
        self._rel.clear()
        self._wd.clear()
        try:
            self._watch_tree(self._root_raw, "", report=False)
        except OSError:
            self._gone = True  # the root itself cannot be watched any more

    # -- reading ---------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        fd = self._fd
        while True:
            ready = poller.poll()
            stopping = any(r == self._wake_r for r, _ in ready)
            while True:
                data = self._read(fd, 0)
                if not data:
                    break
                with self.lock:
                    self._handle(parse_events(data))
                if self._gone or len(data) < _READ_SIZE // 2:
                    break  # the queue is (nearly) drained: back to poll
            if stopping or self._gone:
                return

    def _read(self, fd: int, timeout_ms: int) -> bytes:
        if timeout_ms:
            waiting = select.poll()
            waiting.register(fd, select.POLLIN)
            if not waiting.poll(timeout_ms):
                return b""
        try:
            return os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError:
            self._gone = True  # the instance is closed: nothing more will come
            return b""

    def _handle(self, batch: list[tuple[int, int, int, str]]) -> None:
        """One read's events (under `lock`). The hot path: no stat, no logging per event."""
        rel_of = self._rel
        match = self._match
        change = self._events.change
        paired: set[int] = set()
        n = len(batch)
        i = 0
        while i < n:
            wd, mask, cookie, name = batch[i]
            i += 1
            if mask & _OVERFLOW:
                paired.clear()
                self._rebuild()
                self._events.overflow()
                continue
            prefix = rel_of.get(wd)
            if prefix is None:
                continue  # a watch removed meanwhile
            if not name:  # about the watched directory itself
                if mask & _IGNORED:
                    self._forget(wd)
                    if wd == self._root_wd:
                        self._gone = True
                elif mask & _DELETE_SELF and wd == self._root_wd:
                    self._events.report("source_root_gone", {"root": self.root})
                    change("", _RESCAN)
                    self._gone = True
                continue
            rel = prefix + name
            if mask & _ISDIR:
                if mask & (_CREATE | _MOVED_TO):
                    if i - 1 in paired:
                        continue
                    if match is None or not match(rel + "/"):
                        change(rel, _RESCAN)
                    raw = self._full(wd) + b"/" + os.fsencode(name)
                    self._watch_tree(raw, rel + "/", report=True)
                elif mask & _DELETE:
                    if match is None or not match(rel + "/"):
                        change(rel, _RESCAN)
                elif mask & _MOVED_FROM:
                    j = self._pair(batch, i, cookie)
                    n = len(batch)  # the wait for the pair may have read more
                    if j < 0:
                        if match is None or not match(rel + "/"):
                            change(rel, _RESCAN)
                        self._unwatch_tree(rel + "/")
                    else:
                        paired.add(j)
                        self._dir_moved(wd, name, batch[j])
                continue
            if mask & _CLOSE_WRITE:
                kind = _MODIFIED
            elif mask & _CREATE:
                kind = _CREATED
            elif mask & _DELETE:
                kind = _DELETED
            elif mask & _MOVED_TO:
                if i - 1 in paired:
                    continue
                kind = _CREATED  # moved in from outside the tree
            elif mask & _MOVED_FROM:
                j = self._pair(batch, i, cookie)
                n = len(batch)
                if j < 0:
                    kind = _DELETED  # moved out of the tree
                else:
                    paired.add(j)
                    to_wd, _, _, to_name = batch[j]
                    to_prefix = rel_of.get(to_wd)
                    if match is None or not match(rel):
                        change(rel, _MOVED)
                    if to_prefix is not None:
                        dest = to_prefix + to_name
                        if match is None or not match(dest):
                            change(dest, _MOVED)
                    continue
            else:
                continue
            if match is None or not match(rel):
                change(rel, kind)

    def _pair(self, batch: list[tuple[int, int, int, str]], start: int, cookie: int) -> int:
        """The index of the IN_MOVED_TO of `cookie` among the events after `start`; -1 when
        there is none (moved out of the tree). Reads more when the batch ends first."""
        end = min(len(batch), start + _PAIR_LOOKAHEAD)
        for j in range(start, end):
            ev = batch[j]
            if ev[2] == cookie and ev[1] & _MOVED_TO:
                return j
        if end == len(batch) and end - start < _PAIR_LOOKAHEAD:
            more = self._read(self._fd, _PAIR_WAIT_MS)
            if more:
                batch.extend(parse_events(more))
                return self._pair(batch, end, cookie) if len(batch) > end else -1
        return -1

    def _dir_moved(self, from_wd: int, from_name: str, to: tuple[int, int, int, str]) -> None:
        """A directory renamed inside the tree: both ends are RESCANs, and each file and
        directory under it is reported at both ends (what watchdog's synthetic move events
        deliver)."""
        match = self._match
        change = self._events.change
        to_wd, _, _, to_name = to
        src_rel = self._rel[from_wd] + from_name
        to_prefix = self._rel.get(to_wd)
        if to_prefix is None:
            return
        dst_rel = to_prefix + to_name
        dst = self._full(to_wd) + b"/" + os.fsencode(to_name)
        for rel in (src_rel, dst_rel):
            if match is None or not match(rel + "/"):
                change(rel, _RESCAN)
        if not self._move_tree(src_rel + "/", dst_rel + "/"):
            self._watch_tree(dst, dst_rel + "/", report=False)
        for parent, dirs, files in os.walk(dst):
            sub = os.fsdecode(parent[len(dst) :]).lstrip("/")
            sub = sub + "/" if sub else ""
            for name in dirs:
                tail = sub + os.fsdecode(name)
                for rel in (src_rel + "/" + tail, dst_rel + "/" + tail):
                    if match is None or not match(rel + "/"):
                        change(rel, _RESCAN)
            for name in files:
                tail = sub + os.fsdecode(name)
                for rel in (src_rel + "/" + tail, dst_rel + "/" + tail):
                    if match is None or not match(rel):
                        change(rel, _MOVED)


def _full(root: bytes, rel_dir: str) -> bytes:
    """The full path of the directory `rel_dir` (relative, with a trailing "/"; "" = root)."""
    return root + b"/" + os.fsencode(rel_dir[:-1]) if rel_dir else root


class _Paths(Mapping[bytes, int]):
    """`InotifyReader.paths`: full paths made from the relative ones the reader keeps."""

    def __init__(self, root: bytes, wd: dict[str, int]) -> None:
        self._root = root
        self._below = root + b"/"
        self._wd = wd

    def __getitem__(self, raw: bytes) -> int:
        if raw == self._root:
            return self._wd[""]
        if not raw.startswith(self._below):
            raise KeyError(raw)
        return self._wd[os.fsdecode(raw[len(self._below) :]) + "/"]

    def __iter__(self) -> Iterator[bytes]:
        return (_full(self._root, rel) for rel in list(self._wd))

    def __len__(self) -> int:
        return len(self._wd)
