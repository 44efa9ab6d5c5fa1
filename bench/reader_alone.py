"""invalidatord's watcher process alone: `python -m invalidatord.sources.watcher` (on Linux the
native inotify reader and its pipe records) on the root, and a reader of its pipe counting
distinct file paths. What the watcher can hand the daemon, without the daemon's own cost
per change; the yardstick for the native reader against watchdog alone and inotifywait.

Prints {"ready": T} once the watcher says it watches, then {"done": T, "distinct": N} when
`--expect` distinct file paths have been seen (T on CLOCK_MONOTONIC), and {"final": N} at
SIGTERM (which closes the watcher's stdin: its way to stop).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from invalidatord.sources.watcher import WatchSettings

_CHANGES = frozenset(b"CMDV")


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--expect", type=int, default=0)
    args = parser.parse_args()
    root = os.path.realpath(args.root)
    child = subprocess.Popen(
        [sys.executable, "-m", "invalidatord.sources.watcher"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(WatchSettings("bench", root, (), "inotify", ignore_regex="").to_line())
    child.stdin.flush()
    stdin = child.stdin
    signal.signal(signal.SIGTERM, lambda *_: stdin.close())
    fd = child.stdout.fileno()
    seen: set[bytes] = set()
    tail = b""
    done = False
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            break
        frames = (tail + data).split(b"\0")
        tail = frames.pop()
        for frame in frames:
            if frame[0] in _CHANGES:
                seen.add(frame[1:])
            elif frame[:1] == b"S":
                _say({"ready": time.monotonic(), "reader": frame[1:].decode()})
            elif frame[:1] == b"O":
                print("inotify queue overflowed", file=sys.stderr, flush=True)
            elif frame[:1] == b"E":
                print(frame[1:].decode("utf-8", "replace"), file=sys.stderr)
                return 1
        if not done and args.expect and len(seen) >= args.expect:
            done = True
            _say({"done": time.monotonic(), "distinct": len(seen)})
    child.wait()
    _say({"final": len(seen)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
