"""The inotify binding of `sources/inotify.py` (ctypes, no wrapper package) through the real
kernel: the events of a file's life, a queue overflow, a watch removed, and the errno of each
failure, ENOSPC (fs.inotify.max_user_watches) included."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.sources.watcher import NATIVE, WatchSettings

pytestmark = pytest.mark.skipif(not NATIVE, reason="inotify is Linux's")

if NATIVE:
    from invalidatord.sources.inotify import (
        IN_CLOSE_WRITE,
        IN_CREATE,
        IN_DELETE,
        IN_IGNORED,
        IN_ISDIR,
        IN_MOVED_FROM,
        IN_MOVED_TO,
        IN_ONLYDIR,
        IN_Q_OVERFLOW,
        MASK,
        add_watch,
        inotify_init,
        parse_events,
        rm_watch,
    )

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
Event = tuple[int, int, int, str]


@pytest.fixture
def fd() -> Iterator[int]:
    fd = inotify_init()
    yield fd
    os.close(fd)


def _read(fd: int, until: int, timeout_ms: int = 5000) -> list[Event]:
    """Events until at least `until` of them have arrived (or the timeout)."""
    events: list[Event] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while len(events) < until and poller.poll(timeout_ms):
        events += parse_events(os.read(fd, 65536))
    return events


def test_a_file_created_written_renamed_and_deleted(fd: int, tmp_path: Path) -> None:
    """Each step is one event with the watch, the mask and the name, in order; the two ends
    of a rename carry one cookie; a name that is not UTF-8 comes back surrogate-escaped, as
    os.fsdecode gives it; the instance is non-blocking and close-on-exec."""
    wd = add_watch(fd, os.fsencode(tmp_path), MASK)
    assert os.get_blocking(fd) is False
    assert os.get_inheritable(fd) is False
    odd = os.fsdecode(b"caf\xe9.html")
    (tmp_path / "page.html").write_bytes(b"x")
    os.rename(tmp_path / "page.html", tmp_path / "moved.html")
    os.unlink(tmp_path / "moved.html")
    (tmp_path / "sub").mkdir()
    (tmp_path / odd).write_bytes(b"")
    events = _read(fd, 8)
    cookie = events[2][2]
    assert cookie != 0
    assert events == [
        (wd, IN_CREATE, 0, "page.html"),
        (wd, IN_CLOSE_WRITE, 0, "page.html"),
        (wd, IN_MOVED_FROM, cookie, "page.html"),
        (wd, IN_MOVED_TO, cookie, "moved.html"),
        (wd, IN_DELETE, 0, "moved.html"),
        (wd, IN_CREATE | IN_ISDIR, 0, "sub"),
        (wd, IN_CREATE, 0, odd),
        (wd, IN_CLOSE_WRITE, 0, odd),
    ]


def test_a_removed_watch_ends_with_in_ignored_and_cannot_be_removed_again(
    fd: int, tmp_path: Path
) -> None:
    """rm_watch makes the kernel queue IN_IGNORED for the watch (an event without a name);
    a second rm_watch of it is EINVAL, raised as OSError."""
    wd = add_watch(fd, os.fsencode(tmp_path), MASK)
    rm_watch(fd, wd)
    assert _read(fd, 1) == [(wd, IN_IGNORED, 0, "")]
    with pytest.raises(OSError, match="Invalid argument") as excinfo:
        rm_watch(fd, wd)
    assert excinfo.value.errno == errno.EINVAL


def test_failures_raise_oserror_with_the_kernels_errno(fd: int, tmp_path: Path) -> None:
    """A path that does not exist is ENOENT; a file under IN_ONLYDIR is ENOTDIR; a closed
    instance is EBADF: each an OSError naming what was asked."""
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as excinfo:
        add_watch(fd, os.fsencode(missing), MASK)
    assert excinfo.value.errno == errno.ENOENT
    assert excinfo.value.filename == str(missing)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as excinfo:
        add_watch(fd, os.fsencode(tmp_path / "file"), MASK | IN_ONLYDIR)
    assert excinfo.value.errno == errno.ENOTDIR
    other = inotify_init()
    os.close(other)
    with pytest.raises(OSError, match="Bad file descriptor") as excinfo:
        add_watch(other, os.fsencode(tmp_path), MASK)
    assert excinfo.value.errno == errno.EBADF


def test_an_overflowed_queue_is_one_in_q_overflow_event(tmp_path: Path) -> None:
    """With a 16-event kernel queue (fixed at inotify_init1), 100 files created unread
    overflow it: the events that fit, then one IN_Q_OVERFLOW with watch -1."""
    try:
        old = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text("16\n")
    except OSError as exc:
        pytest.skip(f"cannot lower {MAX_QUEUED}: {exc}")
    try:
        fd = inotify_init()
    finally:
        MAX_QUEUED.write_text(old)
    try:
        add_watch(fd, os.fsencode(tmp_path), MASK)
        for i in range(100):
            (tmp_path / f"f{i}").write_bytes(b"")
        events = _read(fd, 17)
        assert len(events) == 17
        assert events[-1] == (-1, IN_Q_OVERFLOW, 0, "")
        assert all(not m & IN_Q_OVERFLOW for _, m, _, _ in events[:-1])
    finally:
        os.close(fd)


def _watches_in_use() -> int:
    """inotify watches held by every process of this user (the limit is per user)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    total += sum(1 for line in info if line.startswith("inotify wd:"))
    return total


def test_the_watch_limit_is_enospc_and_the_watchers_message(tmp_path: Path) -> None:
    """With fs.inotify.max_user_watches reached, add_watch is ENOSPC; a watcher process whose
    root can be watched but not the 3 directories below refuses to start with the message
    that names the sysctl, its value and the value needed."""
    if os.environ.get("INVALIDATORD_SKIP_SYSCTL_TESTS"):
        pytest.skip("INVALIDATORD_SKIP_SYSCTL_TESTS is set")
    root = tmp_path / "www"
    for i in range(3):
        (root / f"d{i}").mkdir(parents=True)
    settings = WatchSettings("docroot", str(root), (), "inotify").to_line()
    try:
        original = MAX_USER_WATCHES.read_text()
        MAX_USER_WATCHES.write_text(original)
    except OSError as exc:
        pytest.skip(f"cannot write {MAX_USER_WATCHES}: {exc}")
    fd = inotify_init()
    try:
        MAX_USER_WATCHES.write_text(f"{_watches_in_use()}\n")
        with pytest.raises(OSError, match="No space left on device") as excinfo:
            add_watch(fd, os.fsencode(tmp_path), MASK)
        assert excinfo.value.errno == errno.ENOSPC
        # other processes of the user may take watches meanwhile: a few attempts
        for _ in range(5):
            limit = _watches_in_use() + 1  # room for the root's watch only
            MAX_USER_WATCHES.write_text(f"{limit}\n")
            child = subprocess.run(
                [sys.executable, "-m", "invalidatord.sources.watcher"],
                input=settings,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if b"inotify watch limit reached" in child.stdout:
                break
    finally:
        MAX_USER_WATCHES.write_text(original)
        os.close(fd)
    errors = [f[1:].decode() for f in child.stdout.split(b"\0") if f.startswith(b"E")]
    assert child.returncode == 1
    assert errors == [
        f"inotify cannot watch {root}: ENOSPC: inotify watch limit reached: 3 directories "
        f"are not watched; fs.inotify.max_user_watches is {limit}, needs at least "
        f"{limit + 3} (sysctl -w fs.inotify.max_user_watches={limit + 3})"
    ]


def test_the_watcher_process_imports_no_ctypes_util() -> None:
    """The binding finds libc without `ctypes.util` (whose imports and `ldconfig -p` run
    were 1.2 MiB of the watcher process's peak): nothing of it, nor subprocess, is loaded."""
    probe = (
        "import sys; import invalidatord.sources.inotify; "
        "print(sorted(m for m in sys.modules if m in ('ctypes.util', 'subprocess', "
        "'inotify_simple', 'tempfile', 'shutil')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
