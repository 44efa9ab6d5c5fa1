"""The watcher in a process of its own: its pipe protocol, its start-up errors, and what the
source does when the process dies (a new one, and a rescan of everything)."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import structlog

from invalidatord.config import FilesystemSourceConfig, load_config
from invalidatord.errors import SourceError
from invalidatord.model import ChangeKind
from invalidatord.sources import registry
from invalidatord.sources.filesystem import FilesystemSource
from invalidatord.sources.watcher import (
    OVERFLOW_LOGGER,
    OVERFLOW_MESSAGE,
    WatchEvents,
    WatchProcess,
    WatchSettings,
    _ForwardLogs,
    _PipeWriter,
)
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import Collector, emulator_config, received, running_daemon, write_config
from tests.waiting import wait_for

K = ChangeKind


def _frames(data: bytes) -> list[bytes]:
    frames = data.split(b"\0")
    assert frames.pop() == b""  # every frame is terminated
    return frames


def _child(settings: dict[str, object]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "invalidatord.sources.watcher"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(settings).encode() + b"\n")
    proc.stdin.flush()
    return proc


def test_child_reports_a_root_it_cannot_watch_and_exits(tmp_path: Path) -> None:
    """Asked to watch a missing root with inotify only, the child sends one E frame naming
    the root and exits 1."""
    proc = _child(
        {
            "name": "docroot",
            "root": str(tmp_path / "missing"),
            "ignore": [],
            "watcher": "inotify",
            "poll_interval": 5,
        }
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    [frame] = _frames(out)
    assert frame.startswith(b"E")
    assert str(tmp_path / "missing").encode() in frame


def test_child_streams_raw_names_and_stops_when_stdin_closes(tmp_path: Path) -> None:
    """Frames carry the name's raw bytes (a non-UTF-8 name too); ignored names never leave
    the child; closing stdin makes it send what it has and exit 0."""
    root = tmp_path / "www"
    root.mkdir()
    proc = _child(
        {
            "name": "docroot",
            "root": str(root),
            "ignore": ["*.swp"],
            "watcher": "inotify",
            "poll_interval": 5,
        }
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stdout.read1, b"")))
    reader.start()
    wait_for(lambda: b"".join(chunks).startswith(b"Sinotify\0"), 30, what="the S frame")
    raw = b"caf\xe9.html"
    (root / ".page.swp").write_text("x")
    with open(os.path.join(os.fsencode(root), raw), "wb") as f:
        f.write(b"x")
    (root / "zz-last.html").write_text("x")
    wait_for(lambda: b"Mzz-last.html" in b"".join(chunks), 10, what="the last file's frames")
    proc.stdin.close()
    proc.wait(30)
    reader.join(10)
    frames = _frames(b"".join(chunks))
    assert proc.returncode == 0
    assert b"C" + raw in frames
    assert b"M" + raw in frames
    assert not any(b".page.swp" in f for f in frames)


def test_the_child_imports_only_what_watching_needs(tmp_path: Path) -> None:
    """With the settings line the parent sends, the child filters ignored names (a name and
    a directory pattern) with the regex it was sent, and never imports pathspec, subprocess,
    the polling observer or any of the daemon's dependencies (its memory is per pod)."""
    root = tmp_path / "www"
    (root / "build").mkdir(parents=True)
    line = WatchSettings("docroot", str(root), ("*.swp", "build/"), "inotify").to_line()
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
    proc.stdin.write(line)
    proc.stdin.flush()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stdout.read1, b"")))
    reader.start()
    wait_for(lambda: b"".join(chunks).startswith(b"Sinotify\0"), 30, what="the S frame")
    (root / ".page.swp").write_text("x")
    (root / "build" / "out.html").write_text("x")
    (root / "zz-last.html").write_text("x")
    wait_for(lambda: b"Mzz-last.html" in b"".join(chunks), 10, what="the last file's frames")
    _, err = proc.communicate(timeout=30)
    reader.join(10)
    frames = _frames(b"".join(chunks))
    assert proc.returncode == 0
    assert not any(b".page.swp" in f or b"build/" in f for f in frames)
    modules = set(ast.literal_eval(err.decode().strip().splitlines()[-1]))
    # (subprocess is not listed: watchdog's inotify module imports it, through ctypes.util)
    heavy = {"pathspec", "watchdog.observers.polling", "boto3", "botocore"}
    heavy |= {"pydantic", "prometheus_client", "structlog", "yaml", "sqlite3", "apscheduler"}
    heavy |= {"invalidatord.journal", "invalidatord.config", "invalidatord.sources.ignore"}
    assert modules & heavy == set()


def test_sigint_and_sigterm_do_not_end_the_child(tmp_path: Path) -> None:
    """A terminal's Ctrl-C or systemd's SIGTERM reach the whole group: the child keeps
    watching until its parent closes the pipe."""
    root = tmp_path / "www"
    root.mkdir()
    sink = Collector()
    source = FilesystemSource("docroot", root, sink)
    source.start()
    try:
        pid = source.watcher_pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        (root / "after.html").write_text("x")
        sink.wait("after.html", K.MODIFIED)
        assert source.healthy
        assert source.watcher_pid == pid
    finally:
        source.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: stop() waited for it


def test_a_killed_watcher_process_is_replaced_and_the_tree_rescanned(tmp_path: Path) -> None:
    """SIGKILL of the watcher process: the source logs watcher_process_ended, starts another,
    delivers a RESCAN of the whole tree (changes made meanwhile were not seen) and keeps
    delivering."""
    root = tmp_path / "www"
    root.mkdir()
    sink = Collector()
    source = FilesystemSource("docroot", root, sink)
    with structlog.testing.capture_logs() as logs:
        source.start()
        try:
            first = source.watcher_pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            sink.wait("", K.RESCAN, timeout=15)
            wait_for(lambda: source.healthy, 15, what="a healthy source again")
            assert source.watcher_pid not in (None, first)
            (root / "later.html").write_text("x")
            sink.wait("later.html", K.MODIFIED)
        finally:
            source.stop()
    events = [e["event"] for e in logs]
    assert "watcher_process_ended" in events
    assert "watcher_restarted" in events
    ended = next(e for e in logs if e["event"] == "watcher_process_ended")
    assert "exit -9" in ended["reason"]


def test_start_raises_the_childs_reason(tmp_path: Path) -> None:
    """When the child cannot watch, start() raises a SourceError with the child's own words
    (here: inotify on a root that is gone) and leaves no process behind."""
    missing = str(tmp_path / "gone")
    watch = WatchProcess(WatchSettings("docroot", missing, watcher="inotify"), WatchEvents())
    with pytest.raises(SourceError, match="inotify cannot watch") as raised:
        watch.start()
    assert missing in raised.value.reason
    assert not watch.healthy
    assert watch.pid is None


def _children(pid: int | None = None) -> set[int]:
    """The child processes of `pid` (this process by default), from /proc."""
    pid = pid or os.getpid()
    kids: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            kids |= {int(k) for k in f.read().split()}
    return kids


def test_a_prespawned_watcher_is_adopted_by_its_source(tmp_path: Path) -> None:
    """`registry.prespawn` (the CLI calls it before importing the daemon) starts the child
    early; the source with the same settings adopts that very process instead of starting a
    second one, and changes flow through it."""
    root = tmp_path / "www"
    root.mkdir()
    config = load_config(
        write_config(tmp_path, root=root, endpoint="http://127.0.0.1:9", distribution_id="E1")
    )
    before = _children()
    registry.prespawn(config.sources)
    early = _children() - before
    assert len(early) == 1
    sink = Collector()
    [cfg] = config.sources
    assert isinstance(cfg, FilesystemSourceConfig)
    source = FilesystemSource("docroot", cfg.root, sink, ignore=cfg.ignore)
    source.start()
    try:
        assert source.watcher_pid in early
        assert _children() - before == early
        (root / "page.html").write_text("x")
        sink.wait("page.html", K.MODIFIED)
    finally:
        source.stop()


def test_watchdog_warnings_travel_as_log_events_not_stderr_text() -> None:
    """In the child, a WARNING from any watchdog logger becomes an L record (a
    `watchdog_warning` event for the daemon's log); the overflow warning does not (it has a
    record of its own), nor do INFO records."""
    read_end, write_end = os.pipe()
    pipe = _PipeWriter(write_end)
    handler = _ForwardLogs(pipe)
    logger = logging.getLogger("watchdog.observers.inotify_buffer")
    logger.addHandler(handler)
    try:
        logger.info("not forwarded")
        logger.warning("something odd: %s", "details")
        logging.getLogger(OVERFLOW_LOGGER).warning(OVERFLOW_MESSAGE)
    finally:
        logger.removeHandler(handler)
        pipe.close()
        os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        frames = _frames(f.read())
    assert [json.loads(f[1:]) for f in frames if f.startswith(b"L")] == [
        {
            "event": "watchdog_warning",
            "logger": "watchdog.observers.inotify_buffer",
            "message": "something odd: details",
        }
    ]
    assert len(frames) == 1


def test_a_daemon_counts_a_replaced_watcher_and_keeps_invalidating(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """SIGKILL of a running daemon's watcher process: invalidatord_watcher_restarts_total
    counts it, /healthz is 200 again once the replacement watches, and a file changed while
    no watcher ran is invalidated (the rescan), as is one changed afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("home")
    config = emulator_config(
        tmp_path,
        root,
        cloudfront,
        quiet="100ms",
    )
    with running_daemon(config) as proc:
        assert proc.proc is not None
        [watcher] = _children(proc.proc.pid)
        os.kill(watcher, signal.SIGKILL)
        (root / "unseen.html").write_text("made while no watcher may run")
        proc.wait_event("watcher_restarted")
        wait_for(
            lambda: proc.metric("invalidatord_watcher_restarts_total", source="docroot") == 1,
            10,
            what="the restart counted",
        )
        wait_for(lambda: proc.health()[0] == 200, 10, what="healthy again")
        (root / "later.html").write_text("x")
        wait_for(
            lambda: {"/unseen.html", "/later.html"} <= received(cloudfront),
            20,
            what="both files invalidated",
        )
        assert watcher not in _children(proc.proc.pid)


class _Recorder(WatchEvents):
    """Every call a watch makes, in order: ("changes", items), ("overflow", None)..."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, object]] = []

    def changes(self, items: Sequence[tuple[str, ChangeKind]]) -> None:
        with self._lock:
            self.calls.append(("changes", list(items)))

    def change(self, rel: str, kind: ChangeKind) -> None:
        with self._lock:
            self.calls.append(("change", (rel, kind)))

    def overflow(self) -> None:
        with self._lock:
            self.calls.append(("overflow", None))

    def delivered(self) -> list[tuple[str, ChangeKind]]:
        with self._lock:
            calls = list(self.calls)
        out: list[tuple[str, ChangeKind]] = []
        for what, payload in calls:
            if what == "changes":
                out += payload  # type: ignore[arg-type]
            elif what == "change":
                out.append(payload)  # type: ignore[arg-type]
        return out


def test_a_burst_through_the_pipe_arrives_in_batches_complete_and_in_order(
    tmp_path: Path,
) -> None:
    """3,000 files written one after another: the parent hears them in batches (one per read
    of the pipe, not one call per change), every file's creation and close, in the order
    they were written."""
    root = tmp_path / "www"
    root.mkdir()
    events = _Recorder()
    watch = WatchProcess(WatchSettings("docroot", str(root), watcher="inotify"), events)
    watch.start()
    names = [f"f{i:04}.html" for i in range(3000)]
    try:
        for name in names:
            (root / name).write_bytes(b"x")
        wait_for(lambda: (names[-1], K.MODIFIED) in events.delivered(), 30, what="the last")
    finally:
        watch.stop()
    delivered = events.delivered()
    assert [rel for rel, kind in delivered if kind is K.MODIFIED] == names
    assert [rel for rel, kind in delivered if kind is K.CREATED] == names
    for name in names:
        assert delivered.index((name, K.CREATED)) < delivered.index((name, K.MODIFIED))
    batches = [p for what, p in events.calls if what == "changes"]
    assert all(what == "changes" for what, _ in events.calls)
    assert len(batches) < len(delivered) / 10  # batched: far fewer calls than changes


def test_a_control_record_between_changes_keeps_its_place(tmp_path: Path) -> None:
    """Records read at once are delivered in their order: the changes before an overflow
    go before it, in one batch, and those after it in another."""
    events = _Recorder()
    watch = WatchProcess(WatchSettings("docroot", str(tmp_path)), events)
    read_end, write_end = os.pipe()
    os.write(write_end, b"Ca.html\0Ma.html\0O\0Db.html\0Rsub\0")
    os.close(write_end)
    try:
        watch._read(read_end)
    finally:
        os.close(read_end)
    assert events.calls == [
        ("changes", [("a.html", K.CREATED), ("a.html", K.MODIFIED)]),
        ("overflow", None),
        ("changes", [("b.html", K.DELETED), ("sub", K.RESCAN)]),
    ]
