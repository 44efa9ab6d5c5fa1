"""`python -m bench.idle`: what the daemon and its watcher cost on a tree where nothing changes.

The start-up case's tree (100,000 files in 10,000 directories, made if missing), a daemon
with the default settings (the periodic rescan every 600 s: one lands inside a 10-minute
window; status polling every 30 s) and CloudFront's emulator on 127.0.0.1; from the
end of its first start's baseline, CPU seconds (utime + stime, /proc/PID/stat) and wake-ups
(times each thread was scheduled onto a CPU: the second field of /proc/PID/task/TID/schedstat,
summed over threads) of the daemon and of its watcher process, every 30 s and at the end.
Prints one JSON line per sample and a summary; nothing is timed against a target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from bench import tree
from bench.procs import Daemon, Emulator, cpu_seconds, family, write_config


def _wakeups(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[2])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total


def _sample(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {n: {"cpu_s": cpu_seconds(p), "wakeups": _wakeups(p)} for n, p in pids.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="measured interval (600)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/invalidatord-bench"))
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=10_000)
    args = ap.parse_args()
    root = args.work / "startup" / f"root-{args.files}"
    tree.ensure_tree(root, tree.layout(args.files, args.dirs))
    emulator = Emulator()
    base = args.work / "idle"
    shutil.rmtree(base, ignore_errors=True)
    dist = emulator.new_distribution()
    config = write_config(
        base, root=root, endpoint=emulator.endpoint, distribution_id=dist, quiet=2
    )
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    # the defaults (status polling, periodic rescan every 600 s...) are what idle costs
    del cfg["sources"][0]["rescan_interval"], cfg["debounce"], cfg["invalidation"]
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    daemon = Daemon(config)
    try:
        daemon.wait_ready(300)
        daemon.wait_event("baseline_recorded", 300)
        kids = [p for p in family(daemon.proc.pid) if p != daemon.proc.pid]
        pids = {"daemon": daemon.proc.pid, **({"watcher": kids[0]} if kids else {})}
        start, t0 = _sample(pids), time.monotonic()
        end = t0 + args.seconds
        rows: list[dict[str, Any]] = []
        while (now := time.monotonic()) < end:
            time.sleep(min(30.0, end - now))
            cur, dt = _sample(pids), time.monotonic() - t0
            row: dict[str, Any] = {"elapsed_s": round(dt, 1)}
            for n in pids:
                cpu = cur[n]["cpu_s"] - start[n]["cpu_s"]
                wake = cur[n]["wakeups"] - start[n]["wakeups"]
                row[n] = {
                    "cpu_s": round(cpu, 3),
                    "cpu_pct": round(100 * cpu / dt, 3),
                    "wakeups_per_s": round(wake / dt, 1),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
        rescans = [e for e in daemon.log.events if e.get("event") == "rescan_done"]
        summary = {
            "files": args.files,
            "seconds": rows[-1]["elapsed_s"] if rows else 0,
            "rescans_in_window": len(rescans),
            "loadavg": Path("/proc/loadavg").read_text(encoding="ascii").split()[:3],
            **{n: rows[-1][n] for n in pids if rows},
        }
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        daemon.stop()
        if emulator.proc.stdin is not None:
            emulator.proc.stdin.close()  # the emulator exits when its stdin closes
        emulator.proc.wait(30)


if __name__ == "__main__":
    main()
