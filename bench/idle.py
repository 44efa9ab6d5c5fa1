"""`python -m bench.idle`: what the daemon and its watcher cost on a tree where nothing changes.

The start-up case's tree (100,000 files in 10,000 directories, made if missing), a daemon
with the default settings (the periodic rescan every 600 s: one lands inside a 10-minute
window; status polling every 30 s) and CloudFront's emulator on 127.0.0.1; from the
end of its first start's baseline, CPU seconds (utime + stime, /proc/PID/stat) and wake-ups
(times each thread was scheduled onto a CPU: the second field of /proc/PID/task/TID/schedstat,
summed over threads) of the daemon and of its watcher process, every 30 s and at the end.
Prints one JSON line per sample and a summary; nothing is timed against a target.
`python -m bench --only idle` runs the same measurement as a case of the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
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


def measure(
    root: Path,
    emulator: Emulator,
    base: Path,
    seconds: float,
    every: float = 30.0,
    on_sample: Callable[[dict[str, Any]], None] = lambda _row: None,
) -> dict[str, Any]:
    """The daemon with its default settings on `root` (state under `base`), measured for
    `seconds` from the end of its first start's baseline, sampled every `every` seconds."""
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
        loadavg_start = _loadavg()
        start, t0 = _sample(pids), time.monotonic()
        end = t0 + seconds
        rows: list[dict[str, Any]] = []
        while (now := time.monotonic()) < end:
            time.sleep(min(every, end - now))
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
            on_sample(row)
        rescans = [e for e in daemon.log.events if e.get("event") == "rescan_done"]
        return {
            "files": sum(1 for _ in _files(root)),
            "seconds": rows[-1]["elapsed_s"] if rows else 0,
            "rescans_in_window": len(rescans),
            "loadavg": loadavg_start,
            "loadavg_end": _loadavg(),
            **{n: rows[-1][n] for n in pids if rows},
            "samples": rows,
        }
    finally:
        daemon.stop()


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _files(root: Path) -> Iterator[str]:
    for _dirpath, _dirs, names in os.walk(root):
        yield from names


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
    try:
        summary = measure(
            root,
            emulator,
            args.work / "idle",
            args.seconds,
            on_sample=lambda row: print(json.dumps(row), flush=True),
        )
        del summary["samples"]
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        emulator.close()


if __name__ == "__main__":
    main()
