"""watchdog alone: the same observer, recursion and event filter as invalidatord's filesystem
source, and nothing else. The yardstick for the daemon's event throughput and start-up.

Prints {"ready": T} once watching, then {"done": T, "distinct": N} when `--expect` distinct
file paths have been seen (T on CLOCK_MONOTONIC), and {"final": N} at SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

#: invalidatord.sources.watchdog_observer._INOTIFY_EVENTS (bench/run.py checks they stay equal).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class Counter(FileSystemEventHandler):
    def __init__(self, root: str, expect: int) -> None:
        self.prefix = root.rstrip("/") + "/"
        self.expect = expect
        self.seen: set[str] = set()
        self.done = False

    def _add(self, path: bytes | str) -> None:
        path = os.fsdecode(path)
        if path.startswith(self.prefix):
            self.seen.add(path[len(self.prefix) :])

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        self._add(event.src_path)
        if event.dest_path:
            self._add(event.dest_path)
        if not self.done and self.expect and len(self.seen) >= self.expect:
            self.done = True
            _say({"done": time.monotonic(), "distinct": len(self.seen)})


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--expect", type=int, default=0)
    args = parser.parse_args()
    root = os.path.realpath(args.root)
    counter = Counter(root, args.expect)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    observer = InotifyObserver()
    observer.schedule(counter, root, recursive=True, event_filter=EVENT_FILTER)
    observer.start()  # adds every watch before returning
    _say({"ready": time.monotonic()})
    stop.wait()
    observer.stop()
    observer.join()
    _say({"final": len(counter.seen)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
