"""invalidatord's CloudFront emulator in a process of its own (see procs.Emulator).

Protocol: one JSON object per line. Prints {"endpoint": URL} once serving; then answers each
command read on stdin ({"cmd": "dist"} -> {"dist": ID}, {"cmd": "hold", "on": BOOL},
{"cmd": "in_progress", "seconds": S}) with one line, and streams every invalidation API call
it answered as {"req": {...}} with its receive time on CLOCK_MONOTONIC. Exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from invalidatord.testing.cloudfront import CloudFrontEmulator

_out_lock = threading.Lock()
# The protocol owns the real stdout; anything else that prints (structlog's default logger
# writes to sys.stdout) goes to stderr.
_protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
sys.stdout = sys.stderr


def _emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with _out_lock:
        _protocol.write(line)
        _protocol.flush()


def _stream(emulator: CloudFrontEmulator, done: threading.Event) -> None:
    sent = 0
    while not done.is_set():
        requests = emulator.requests
        while sent < len(requests):
            r = requests[sent]
            sent += 1
            _emit(
                {
                    "req": {
                        "op": r.op,
                        "dist": r.distribution_id,
                        "paths": list(r.paths),
                        "status": r.status,
                        "error": r.error_code,
                        "time": r.time,
                    }
                }
            )
        done.wait(0.002)


def main() -> int:
    emulator = CloudFrontEmulator(clock=time.monotonic)
    endpoint = emulator.start()
    done = threading.Event()
    streamer = threading.Thread(target=_stream, args=(emulator, done), daemon=True)
    streamer.start()
    _emit({"endpoint": endpoint})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            name = cmd.get("cmd")
            if name == "dist":
                _emit({"dist": emulator.create_distribution("bench")})
            elif name == "hold":
                emulator.hold(bool(cmd["on"]))
                _emit({"ok": True})
            elif name == "in_progress":
                emulator.in_progress_seconds = float(cmd["seconds"])
                _emit({"ok": True})
            else:
                _emit({"error": f"unknown command {name!r}"})
    finally:
        done.set()
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
