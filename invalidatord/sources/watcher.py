"""Watching one document root, in this process or in a child process of its own.

`Watch` reads inotify (or polls) and turns what it reports into (relative path, ChangeKind)
pairs: the event semantics are described in `filesystem.py`. On Linux it reads inotify
itself (`sources/inotify.py`: one thread, batched reads, no watchdog); elsewhere, or
where libc has no inotify, through watchdog's observer (`sources/watchdog_observer.py`).
Polling is ours either way (`_Poller`). It is used in-process, or in a child started by
`WatchProcess`: `python -m invalidatord.sources.watcher`.

Why a child: reading inotify and filtering its events is Python work. In the daemon's
process it shares one GIL with the work each change costs after it arrives (stat, index
lookup, mapping, journal), so under a burst the daemon accepted changes at about half the
rate watchdog alone reads them. In a child, watching runs on the second core and the daemon
receives compact, already-filtered records over a pipe.

The pipe (child stdout -> parent), one record per NUL-terminated frame: a type byte, then a
payload. Paths are the raw bytes of the name relative to the root (`os.fsencode`), which can
hold anything but NUL, exactly like the names the kernel reports.

    C/M/D/V/R <path>   a change: created, modified, deleted, moved (either end), rescan
    O                  the inotify queue overflowed (the parent counts it and rescans)
    L <json>           a log event for the parent to log: {"event": ..., key: value...}
    S <kind>           watching, with "inotify" or "polling"
    E <message>        could not start (the child then exits)
    H 0|1              health changed (an emitter stops by itself when the root is deleted)
    P <text>           `Watch.problem` changed (empty: none): directories it cannot watch

The parent asks the child to stop by closing its stdin; the child then stops its observer,
sends everything the observer had dispatched, and exits. SIGINT/SIGTERM/SIGHUP are ignored in
the child: a terminal's Ctrl-C or systemd's SIGTERM to the whole control group reaches both
processes, and the parent, which decides when sending stops, closes the pipe itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from invalidatord.errors import SourceError
from invalidatord.model import ChangeKind

if TYPE_CHECKING:
    import subprocess

    from watchdog.observers.api import BaseObserver

    from invalidatord.sources.inotify import InotifyReader

# The watcher process imports this module and little else: no pathspec (the parent sends the
# ignore list compiled to one regex), no watchdog on Linux (the native reader).
# Measured in bench/ (start-up, 100,000 files): see the README's Performance section.

__all__ = [
    "OVERFLOW_LOGGER",
    "OVERFLOW_MESSAGE",
    "Watch",
    "WatchEvents",
    "WatchProcess",
    "WatchSettings",
]

#: Whether `Watch` reads inotify itself where it can (Linux: `sources/inotify.py`);
#: False: always through watchdog (the tests run both).
NATIVE = sys.platform.startswith("linux")

# watchdog 7.1 reports a kernel queue overflow (IN_Q_OVERFLOW) only as this WARNING on this
# logger (InotifyFD.handle_event), then rebuilds its watches; event handlers hear nothing.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_MESSAGE = "Inotify queue overflowed; filesystem events were lost"

_STOP_TIMEOUT = 10.0

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
MAX_QUEUED_EVENTS = "/proc/sys/fs/inotify/max_queued_events"
#: Below this kernel queue size a deploy of a few thousand files overflows it (every event of
#: a create is two or three records), and each overflow costs a rescan of the whole tree.
QUEUE_ADVISED = 65_536


def read_sysctl(path: str) -> int | None:
    """An integer sysctl from /proc/sys, or None where it cannot be read (not Linux)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def queue_warning(path: str = MAX_QUEUED_EVENTS) -> dict[str, Any] | None:
    """The fields of an `inotify_queue_small` warning when fs.inotify.max_queued_events is
    below `QUEUE_ADVISED`, else None."""
    current = read_sysctl(path)
    if current is None or current >= QUEUE_ADVISED:
        return None
    return {
        "sysctl": "fs.inotify.max_queued_events",
        "current": current,
        "advised": QUEUE_ADVISED,
        "why": (
            "a burst of changes larger than the kernel queue overflows it; each overflow "
            "forces a rescan of the whole tree (nothing is lost, but a large tree costs a "
            f"full walk each time): sysctl -w fs.inotify.max_queued_events={QUEUE_ADVISED}"
        ),
    }


def watch_limit_message(missing: int) -> str:
    """One line naming the sysctl, its value now and the value needed for `missing` more
    watches."""
    current = read_sysctl(MAX_USER_WATCHES)
    if current is None:
        return f"inotify watch limit reached: {missing} directories are not watched"
    return (
        f"inotify watch limit reached: {missing} directories are not watched; "
        f"fs.inotify.max_user_watches is {current}, needs at least {current + missing} "
        f"(sysctl -w fs.inotify.max_user_watches={current + missing})"
    )


@dataclass(frozen=True)
class WatchSettings:
    """What a watch needs: the same for `Watch`, `WatchProcess` and `prespawn`, and what
    travels to the child as one JSON line (equal settings = a prespawned child to adopt)."""

    name: str
    root: str  # already resolved (realpath): inotify does not follow a symlinked root
    ignore: tuple[str, ...] = ()
    watcher: Literal["auto", "inotify", "polling"] = "auto"
    poll_interval: float = 5.0
    #: `ignore` compiled by `ignore.full_regex` ("" = nothing ignored; None = not compiled,
    #: or a negation that needs pathspec). Derived from `ignore`, so not compared.
    ignore_regex: str | None = field(default=None, compare=False)

    def to_line(self) -> bytes:
        fields = asdict(self)
        if self.ignore_regex is None:
            from invalidatord.sources.ignore import full_regex  # the parent has pathspec

            fields["ignore_regex"] = full_regex(self.ignore)
        # ensure_ascii: a root or pattern with surrogate escapes survives as \udcXX
        return json.dumps(fields, sort_keys=True).encode("ascii") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> WatchSettings:
        raw = json.loads(line)
        return cls(
            name=str(raw["name"]),
            root=str(raw["root"]),
            ignore=tuple(str(p) for p in raw["ignore"]),
            watcher=raw["watcher"],
            poll_interval=float(raw["poll_interval"]),
            ignore_regex=raw.get("ignore_regex"),
        )


def _event_matcher(settings: WatchSettings) -> Callable[[str], bool] | None:
    """Whether a relative path (a directory with a trailing "/") is ignored; None: never."""
    regex = settings.ignore_regex
    if regex is None:
        import pathspec

        from invalidatord.sources.ignore import matchers

        return matchers(pathspec.GitIgnoreSpec.from_lines(settings.ignore))[0]
    if not regex:
        return None
    match = re.compile(regex).match
    return lambda path: match(path) is not None


class WatchEvents:
    """What a `Watch` tells its owner, on watchdog's threads. Override what you need."""

    def change(self, rel: str, kind: ChangeKind) -> None:
        """A change of `rel` (relative to the root; "" = the root itself)."""

    def changes(self, items: Sequence[tuple[str, ChangeKind]]) -> None:
        """Many changes in the order seen, as `change` of each (the default): the watcher
        process delivers each read of its pipe this way."""
        change = self.change
        for rel, kind in items:
            change(rel, kind)

    def overflow(self) -> None:
        """The kernel's event queue overflowed: changes were lost, rescan everything."""

    def report(self, event: str, fields: Mapping[str, Any]) -> None:
        """Something worth a log line (`watcher_fallback`, `source_root_gone`)."""

    def ended(self, reason: str) -> None:
        """The watcher process ended without being asked to: nothing is watched any more."""


class _Watches(Protocol):
    """The watches of an inotify watch, as `Watch` covers what they miss: the full path
    (bytes) of each watched directory, and a way to watch a tree again."""

    @property
    def paths(self) -> Mapping[bytes, object]: ...

    def rewatch(self, raw: bytes) -> None: ...


class Watch:
    """Inotify (ours or watchdog's) or polling on `settings.root`, delivering to `events`."""

    def __init__(self, settings: WatchSettings, events: WatchEvents) -> None:
        self.name = settings.name
        self.root = settings.root
        self.prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        self.match = _event_matcher(settings)
        self.events = events
        self.watcher = settings.watcher
        self.poll_interval = settings.poll_interval
        #: "inotify" or "polling" once started.
        self.kind = ""
        #: with inotify: "native" (`sources/inotify.py`) or "watchdog".
        self.reader = ""
        self.delivering = False
        self.reader_ident: int | None = None
        self._observer: BaseObserver | InotifyReader | _Poller | None = None
        # Directories inotify could not watch (ENOSPC): relative path of each uncovered top
        # -> unwatched directories counted under it at the last look.
        self._uncovered: dict[str, int] = {}
        self._uncovered_lock = threading.Lock()
        self._coverer: _Coverer | None = None

    def start(self) -> str:
        """Start watching; returns "inotify" or "polling". Raises `SourceError`."""
        observer: BaseObserver | InotifyReader | _Poller | None = None
        if self.watcher != "polling":
            try:
                observer = self._start_inotify()
            except OSError as exc:
                reason = f"inotify cannot watch {self.root}: {describe(exc)}"
                if self.watcher == "inotify":
                    raise SourceError(self.name, reason) from exc
                self.events.report("watcher_fallback", {"root": self.root, "reason": reason})
        if observer is None:
            observer = self._start_polling()
        self._observer = observer
        return self.kind

    def stop(self) -> None:
        """Stop; returns once the reader's threads have ended (10 s at most). Events already
        read are delivered first."""
        observer, self._observer = self._observer, None
        if observer is None:
            return
        _OVERFLOW_HOOK.remove(self)
        coverer, self._coverer = self._coverer, None
        if coverer is not None:
            coverer.stop()
            coverer.join(_STOP_TIMEOUT)
        observer.stop()
        if observer.is_alive():
            observer.join(_STOP_TIMEOUT)
        self.delivering = False

    @property
    def problem(self) -> str | None:
        """Why part of the tree is not watched (and how it is covered), or None."""
        with self._uncovered_lock:
            uncovered = dict(self._uncovered)
        if not uncovered:
            return None
        missing = sum(uncovered.values()) or len(uncovered)
        tops = ", ".join(sorted(uncovered)[:3]) + (", ..." if len(uncovered) > 3 else "")
        current = read_sysctl(MAX_USER_WATCHES)
        limit = f"fs.inotify.max_user_watches is {current}" if current is not None else "limit"
        return (
            f"not fully watching: {missing} directories cannot be watched ({limit}, needs at "
            f"least {(current or 0) + missing}); {tops} rescanned every "
            f"{_fmt(self.poll_interval)} until they can be"
        )

    def directory_arrived(self, rel: str) -> None:
        """A directory was created or moved in (on the reader's thread, after it tried to
        watch it): if inotify could not, cover it by rescans."""
        watches = self._watches()
        if watches is None:
            return
        path = self.prefix + rel
        if os.fsencode(path) in watches.paths or os.path.islink(path) or not os.path.isdir(path):
            return
        with self._uncovered_lock:
            if any(rel.startswith(top + "/") for top in self._uncovered):
                return  # under a directory already covered
            self._uncovered[rel] = 0
            if self._coverer is None:
                self._coverer = _Coverer(self)
                self._coverer.start()

    def _watches(self) -> _Watches | None:
        observer = self._observer
        if observer is None or isinstance(observer, _Poller):
            return None
        if self.reader == "native":
            return observer  # type: ignore[return-value]  # an InotifyReader
        from invalidatord.sources.watchdog_observer import group_of

        return group_of(observer)  # type: ignore[arg-type]

    def cover(self) -> bool:
        """One look at the uncovered directories (the coverer's thread): try to watch each
        again, rescan it, and drop it once wholly watched. Logs one line when directories
        first cannot be watched and one when all are watched again. False once none is left."""
        watches = self._watches()
        if watches is None:
            return False
        with self._uncovered_lock:
            tops = list(self._uncovered)
        for rel in tops:
            path = self.prefix + rel
            raw = os.fsencode(path)
            if os.path.isdir(path):
                watches.rewatch(raw)
                missing = _unwatched_under(watches.paths, raw)
            else:
                missing = 0  # gone: the parent's watch reported the deletion
            # a rescan either way: what changed while it was not watched (or before its new
            # watches were added) is found by diffing it against the index
            self.events.change(rel, ChangeKind.RESCAN)
            with self._uncovered_lock:
                if missing:
                    self._uncovered[rel] = missing
                else:
                    self._uncovered.pop(rel, None)
        with self._uncovered_lock:
            return bool(self._uncovered)

    @property
    def healthy(self) -> bool:
        """True while the reader is alive and watching (it stops by itself when the root is
        deleted)."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        if isinstance(observer, _Poller):
            return True
        if self.reader == "native":
            return observer.healthy  # type: ignore[union-attr]
        from invalidatord.sources.watchdog_observer import healthy

        return healthy(observer)  # type: ignore[arg-type]

    def _start_inotify(self) -> BaseObserver | InotifyReader:
        reader = _native_reader() if NATIVE else None
        _OVERFLOW_HOOK.add(self)
        self.delivering = True
        try:
            observer = self._start_native(reader) if reader else self._start_watchdog()
        except BaseException:
            self.delivering = False
            _OVERFLOW_HOOK.remove(self)
            raise
        self.kind = "inotify"
        return observer

    def _start_native(self, reader: type[InotifyReader]) -> InotifyReader:
        native = reader(self.root, self.match, self.events, self.directory_arrived)
        native.start()
        if native.unwatched:
            native.stop()
            raise OSError(errno.ENOSPC, watch_limit_message(native.unwatched))
        self.reader, self.reader_ident = "native", native.ident
        return native

    def _start_watchdog(self) -> BaseObserver:
        from invalidatord.sources import watchdog_observer as wo

        observer = wo.start_observer(self)
        try:
            # watchdog starts its inotify reader thread in the constructor; an overflow record
            # comes from that thread, which is how it is told apart from another watch's.
            self.reader, self.reader_ident = "watchdog", wo.reader_ident(observer)
            missing = wo.unwatched_directories(observer, self.root)
            if missing:
                raise OSError(errno.ENOSPC, watch_limit_message(missing))
        except BaseException:
            wo.shutdown(observer)
            raise
        return observer

    def _start_polling(self) -> _Poller:
        # No watchdog PollingObserver: it keeps a snapshot of the whole tree in memory (and
        # builds a second one per poll). Each poll is a RESCAN of the root instead, which the
        # pipeline answers with the catch-up's streaming diff of the tree against the index
        # (`FilesystemSource.scan` merged with the journal's `index_iter`): memory is one
        # directory listing per level, and what a poll finds is exactly what the catch-up
        # would find.
        try:
            with os.scandir(self.root):
                pass
        except OSError as exc:
            raise SourceError(self.name, f"cannot poll {self.root}: {describe(exc)}") from exc
        self.delivering = True
        poller = _Poller(self, self.poll_interval)
        poller.start()
        self.reader_ident = None
        self.kind = "polling"
        return poller


def _native_reader() -> type[InotifyReader] | None:
    """The native reader's class; None where it cannot be imported (no inotify in libc)."""
    try:
        from invalidatord.sources.inotify import InotifyReader
    except ImportError:
        return None
    return InotifyReader


class _Coverer(threading.Thread):
    """Rescans the directories inotify could not watch every `poll_interval` (the first look
    at once), and tries to watch them again each time; ends when all are watched."""

    def __init__(self, watch: Watch) -> None:
        super().__init__(name=f"cover-{watch.name}", daemon=True)
        self._watch = watch
        self._stopped = threading.Event()

    def run(self) -> None:
        watch = self._watch
        reported = False
        while not self._stopped.is_set():
            left = watch.cover()
            if left and not reported:
                reported = True
                watch.events.report("inotify_watch_limit", _limit_fields(watch))
            if not left:
                with watch._uncovered_lock:
                    if watch._uncovered:
                        continue  # one arrived meanwhile
                    watch._coverer = None
                if reported:
                    watch.events.report("inotify_watch_restored", {"root": watch.root})
                return
            self._stopped.wait(watch.poll_interval)

    def stop(self) -> None:
        self._stopped.set()


def _limit_fields(watch: Watch) -> dict[str, Any]:
    with watch._uncovered_lock:
        uncovered = dict(watch._uncovered)
    missing = sum(uncovered.values()) or len(uncovered)
    current = read_sysctl(MAX_USER_WATCHES)
    return {
        "sysctl": "fs.inotify.max_user_watches",
        "current": current,
        "needed": (current or 0) + missing,
        "unwatched": missing,
        "directories": sorted(uncovered)[:10],
        "message": (
            f"{watch_limit_message(missing)}; new directories are rescanned every "
            f"{_fmt(watch.poll_interval)} until they can be watched"
        ),
    }


def _unwatched_under(watched: Mapping[bytes, object], top: bytes) -> int:
    """How many directories at or under `top` are not in `watched` (symlinks not followed)."""
    missing = 0 if top in watched else 1
    for parent, dirs, _ in os.walk(top):
        for name in dirs:
            path = os.path.join(parent, name)
            if path not in watched and not os.path.islink(path):
                missing += 1
    return missing


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"


class _Poller(threading.Thread):
    """`watcher: polling`: asks for a rescan of the whole root every `interval` seconds. A
    poll still running when the next is due coalesces with it (the debouncer keys a rescan
    by its prefix), so a slow filesystem is polled back to back, never in parallel."""

    def __init__(self, watch: Watch, interval: float) -> None:
        super().__init__(name=f"poll-{watch.name}", daemon=True)
        self._watch = watch
        self._interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            if self._watch.delivering:
                self._watch.events.change("", ChangeKind.RESCAN)

    def stop(self) -> None:
        self._stopped.set()


class _OverflowHook(logging.Handler):
    """Hears watchdog's overflow WARNING and tells the watch whose inotify reader thread
    logged it; a record from any other thread (unattributable) goes to every inotify watch,
    since an extra rescan costs a walk and a lost change costs a stale cache."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._watches: set[Watch] = set()
        self._guard = threading.Lock()

    def add(self, watch: Watch) -> None:
        logger = logging.getLogger(OVERFLOW_LOGGER)
        with self._guard:
            self._watches.add(watch)
            if self not in logger.handlers:
                logger.addHandler(self)
            # The hook hears nothing if logging config silenced the logger: a dictConfig with
            # disable_existing_loggers, or a level above WARNING (log.level: error).
            logger.disabled = False
            if not logger.isEnabledFor(logging.WARNING):
                logger.setLevel(logging.WARNING)

    def remove(self, watch: Watch) -> None:
        with self._guard:
            self._watches.discard(watch)
            if not self._watches:
                logging.getLogger(OVERFLOW_LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(OVERFLOW_MESSAGE):
            return
        with self._guard:
            watches = list(self._watches)
        mine = [w for w in watches if w.reader_ident == record.thread]
        for watch in mine or watches:
            if watch.delivering:
                watch.events.overflow()


_OVERFLOW_HOOK = _OverflowHook()


def describe(exc: OSError) -> str:
    """`ENOSPC: No space left on device` rather than `[Errno 28] ...`."""
    if exc.errno is not None and exc.strerror:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc)


# ---- the child process and its pipe ------------------------------------------------------------

_KIND_CODE = {
    ChangeKind.CREATED: b"C",
    ChangeKind.MODIFIED: b"M",
    ChangeKind.DELETED: b"D",
    ChangeKind.MOVED: b"V",
    ChangeKind.RESCAN: b"R",
}
_CODE_KIND = {code[0]: kind for kind, code in _KIND_CODE.items()}
_OVERFLOW, _LOG, _STARTED, _ERROR, _HEALTH, _PROBLEM = b"OLSEHP"
#: How long the child's writer lets records gather before writing them.
_GATHER = 0.002
#: Bytes of records the parent reads at once.
_READ_SIZE = 1 << 20


class _PipeWriter(WatchEvents):
    """The child's side: records are queued by watchdog's threads and written by one writer
    thread, so a burst goes out in large writes and the observer never waits on the pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._records: list[bytes] = []
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pipe-writer", daemon=True)
        self._thread.start()

    def send(self, record: bytes) -> None:
        self._records.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def change(self, rel: str, kind: ChangeKind) -> None:
        self.send(_KIND_CODE[kind] + os.fsencode(rel) + b"\0")

    def overflow(self) -> None:
        self.send(b"O\0")

    def report(self, event: str, fields: Mapping[str, Any]) -> None:
        self.send(b"L" + json.dumps({"event": event, **fields}).encode("ascii") + b"\0")

    def close(self) -> None:
        """Write everything queued, then return."""
        self._closing = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        broken = False
        while True:
            self._wake.wait()
            if not self._closing:
                # Let a burst gather: one write of many records instead of a wake-up (and a
                # GIL hand-over) per event. Costs at most this long in latency.
                time.sleep(_GATHER)
            self._wake.clear()
            records, self._records = self._records, []
            if records and not broken:
                data = memoryview(b"".join(records))
                try:
                    while data:
                        data = data[os.write(self._fd, data) :]
                except OSError:
                    broken = True  # the parent is gone; stdin's end tells the main loop
            if self._closing and not self._records:
                return


class _ForwardLogs(logging.Handler):
    """In the child: watchdog's WARNING and above, as `watchdog_warning` log events for the
    parent (the overflow has a record type of its own)."""

    def __init__(self, pipe: _PipeWriter) -> None:
        super().__init__(level=logging.WARNING)
        self._pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(OVERFLOW_MESSAGE):
            return
        self._pipe.report("watchdog_warning", {"logger": record.name, "message": message[:500]})


def child_main(stdin: Any = None, stdout_fd: int | None = None) -> int:
    """`python -m invalidatord.sources.watcher`: one JSON line of settings on stdin (name,
    root, ignore, watcher, poll_interval), then watch until stdin closes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stdin = stdin if stdin is not None else sys.stdin.buffer
    out = stdout_fd if stdout_fd is not None else os.dup(sys.stdout.fileno())
    # Nothing else may write to the record stream.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    pipe = _PipeWriter(out)
    # watchdog's own warnings reach the daemon's log as events, not as plain text on stderr
    logging.getLogger("watchdog").addHandler(_ForwardLogs(pipe))
    try:
        watch = Watch(WatchSettings.from_line(stdin.readline()), pipe)
        kind = watch.start()
    except SourceError as exc:
        pipe.send(b"E" + exc.reason.encode("utf-8", "backslashreplace") + b"\0")
        pipe.close()
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        pipe.send(b"E" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace") + b"\0")
        pipe.close()
        return 1
    pipe.send(b"S" + kind.encode("ascii") + b"\0")
    healthy = True
    problem: str | None = None
    fd = stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready and not os.read(fd, 4096):
            break  # the parent closed the pipe (or died): stop
        now = watch.healthy
        if now != healthy:
            healthy = now
            pipe.send(b"H" + (b"1" if now else b"0") + b"\0")
        said = watch.problem
        if said != problem:
            problem = said
            pipe.send(b"P" + (said or "").encode("utf-8", "backslashreplace") + b"\0")
    watch.stop()
    pipe.close()
    return 0


#: Children started ahead of their source (see `prespawn`), with the wall clock (ns) at which
#: each was started.
_PRESPAWNED: dict[WatchSettings, tuple[subprocess.Popen[bytes], int]] = {}


def _spawn(settings: WatchSettings) -> subprocess.Popen[bytes]:
    import subprocess  # the parent's side only

    proc = subprocess.Popen(
        [sys.executable, "-m", "invalidatord.sources.watcher"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(settings.to_line())
        proc.stdin.flush()
    except OSError:
        pass  # it died: its reader sees the end of its output
    return proc


def prespawn(settings: WatchSettings) -> None:
    """Start a watcher process now, for a `WatchProcess` with the same settings to adopt
    later: the daemon calls this as soon as its config is read, so the child adds its
    watches while the daemon imports boto3 and checks CloudFront, on the other core. Changes
    it sees before it is adopted wait in the pipe. A child nobody adopts ends with this
    process (its stdin closes). Failing here is not an error: `start` spawns again."""
    if settings not in _PRESPAWNED:
        with contextlib.suppress(OSError):
            _PRESPAWNED[settings] = (_spawn(settings), time.time_ns())


class WatchProcess:
    """The parent's side: starts the child, turns its records back into calls on `events`
    (on a reader thread of this process), and stops it."""

    def __init__(self, settings: WatchSettings, events: WatchEvents) -> None:
        self.name = settings.name
        self.root = settings.root
        self.events = events
        self.kind = ""
        #: when the child was started ahead of this object (`prespawn`), its wall clock (ns).
        self.spawned_ns = 0
        self._settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = False
        self._error = ""
        self._healthy = False
        #: what the child's `Watch.problem` said last
        self.problem: str | None = None

    def start(self) -> str:
        """Start the child (or adopt the one `prespawn` started for the same settings) and
        wait until it watches; returns "inotify" or "polling". Raises `SourceError` with the
        child's reason when it cannot."""
        proc, self.spawned_ns = _PRESPAWNED.pop(self._settings, (None, 0))
        if proc is None:
            try:
                proc = _spawn(self._settings)
            except OSError as exc:
                reason = f"cannot start the watcher process: {describe(exc)}"
                raise SourceError(self.name, reason) from exc
        assert proc.stdin is not None
        assert proc.stdout is not None
        self._proc = proc
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout.fileno(),), name=f"watch-{self.name}", daemon=True
        )
        self._reader.start()
        self._started.wait()
        if not self.kind:
            self.stop()
            raise SourceError(
                self.name, self._error or f"the watcher process ended (exit {proc.poll()})"
            )
        return self.kind

    def stop(self) -> None:
        """Close the child's stdin; return once it has sent everything and ended."""
        self._stopping = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._healthy = False
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        import subprocess

        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(_STOP_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()

    @property
    def healthy(self) -> bool:
        proc = self._proc
        return self._healthy and proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _read(self, fd: int) -> None:
        tail = b""
        fsdecode = os.fsdecode
        try:
            while True:
                data = os.read(fd, _READ_SIZE)
                if not data:
                    break
                frames = (tail + data).split(b"\0") if tail else data.split(b"\0")
                tail = frames.pop()
                # The changes of one read go as one call (a burst is some 2,500 records a
                # read): per change, a call chain and a queue item less.
                batch: list[tuple[str, ChangeKind]] = []
                for frame in frames:
                    code = frame[0]
                    kind = _CODE_KIND.get(code)
                    if kind is not None:
                        batch.append((fsdecode(frame[1:]), kind))
                        continue
                    if batch:  # what came before a control record goes before it
                        self.events.changes(batch)
                        batch = []
                    self._control(code, frame[1:])
                if batch:
                    self.events.changes(batch)
        finally:
            self._healthy = False
            ended = bool(self.kind) and not self._stopping
            self._started.set()
        if ended:
            proc = self._proc
            status = proc.wait() if proc is not None else None
            self.events.ended(f"the watcher process ended (exit {status})")

    def _control(self, code: int, payload: bytes) -> None:
        if code == _OVERFLOW:
            self.events.overflow()
        elif code == _LOG:
            fields = json.loads(payload)
            self.events.report(str(fields.pop("event")), fields)
        elif code == _STARTED:
            self.kind = payload.decode("ascii")
            self._healthy = True
            self._started.set()
        elif code == _ERROR:
            self._error = payload.decode("utf-8", "replace")
        elif code == _HEALTH:
            self._healthy = payload == b"1"
        elif code == _PROBLEM:
            self.problem = payload.decode("utf-8", "replace") or None


if __name__ == "__main__":
    sys.exit(child_main())
