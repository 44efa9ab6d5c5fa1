"""One poll of `watcher: polling` on an unchanged tree, against a plain `os.scandir` walk.

    .venv/bin/python -m bench.poll [--files 100000] [--dirs 1000] [--reps 3] [--work DIR]
                                   [--root TREE] [--json FILE]

`python -m bench` runs it as its `poll` case on the start-up case's tree.

A poll is what the pipeline does for the RESCAN of "" the polling watcher asks for: the
filesystem source's sorted streaming walk (`FilesystemSource.scan`) merged with the journal's
catch-up index (`Journal.index_iter`) by `catchup.diff`. The yardstick is `bench/walk.py`: a
scandir walk with one lstat per file, the least any poll must do. Each subject runs in a fresh
process per repetition (after one unmeasured warm-up walk, so both read a warm dentry cache), so
its peak memory is its own: reported as the peak RSS grown during the poll (VmHWM after minus
VmRSS before) and the process's whole peak. CPU is the process's user + system time of the poll
alone. Prints one line per subject (medians) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.tree import ensure_tree, layout


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _measure(work: Any) -> dict[str, float]:
    rss_before = _status_kib("VmRSS")
    cpu = os.times()
    started = time.monotonic()
    found = work()
    seconds = time.monotonic() - started
    after = os.times()
    return {
        "seconds": seconds,
        "cpu_seconds": (after.user - cpu.user) + (after.system - cpu.system),
        "grown_kib": max(0, _status_kib("VmHWM") - rss_before),
        "peak_kib": _status_kib("VmHWM"),
        "found": float(found),
    }


def _child(subject: str, root: str, journal_path: str) -> dict[str, float]:
    from bench.walk import walk

    walk(root)  # warm the dentry and inode caches for both subjects alike
    if subject == "scandir":
        return _measure(lambda: walk(root))
    from invalidatord import catchup
    from invalidatord.journal import Journal
    from invalidatord.sources.filesystem import FilesystemSource

    journal = Journal(journal_path)
    source = FilesystemSource("docroot", Path(root), lambda change: None, separate_process=False)

    def poll() -> int:
        changes = catchup.diff(
            "docroot", source.scan(""), journal.index_iter("docroot", ""), time.time()
        )
        return len(changes)

    return _measure(poll)


def measure(
    root: Path, files: int, dirs: int, reps: int, work: Path, say: Any = lambda _m: None
) -> dict[str, Any]:
    """`reps` polls and walks of the tree `root` (made if missing), alternating which goes
    first; raw samples, medians and ratios."""
    from invalidatord.journal import Journal
    from invalidatord.sources.filesystem import FilesystemSource

    work.mkdir(parents=True, exist_ok=True)
    ensure_tree(root, layout(files, dirs))
    with tempfile.TemporaryDirectory(dir=work) as state:
        journal_path = os.path.join(state, "journal.sqlite3")
        journal = Journal(journal_path)
        source = FilesystemSource("docroot", root, lambda change: None, separate_process=False)
        indexed = journal.record_baseline("docroot", source.scan(""))
        journal.close()
        results: dict[str, list[dict[str, float]]] = {"poll": [], "scandir": []}
        for rep in range(reps):
            order = ["poll", "scandir"] if rep % 2 == 0 else ["scandir", "poll"]
            for subject in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.poll",
                        "--child",
                        subject,
                        str(root),
                        journal_path,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[subject].append(json.loads(out.strip().splitlines()[-1]))
            say(
                f"poll rep {rep}: poll {results['poll'][-1]['seconds']:.2f}s, "
                f"walk {results['scandir'][-1]['seconds']:.2f}s"
            )
    medians = {
        subject: {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        for subject, samples in results.items()
    }
    poll, walk = medians["poll"], medians["scandir"]
    return {
        "files": indexed,
        "dirs": dirs,
        "reps": reps,
        "samples": results,
        "median": medians,
        "ratios": {
            "poll_vs_walk_time": round(poll["seconds"] / walk["seconds"], 2),
            "poll_vs_walk_cpu": round(poll["cpu_seconds"] / max(walk["cpu_seconds"], 1e-9), 2),
        },
        # an unchanged tree must poll as no change
        "changes_found": int(poll["found"]),
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        f"poll of an unchanged tree: {r['files']:,} files in {r['dirs']:,} directories, "
        f"median of {r['reps']}"
    ]
    for subject, m in r["median"].items():
        label = "watcher: polling (scan + index + diff)" if subject == "poll" else "os.scandir walk"
        lines.append(
            f"  {label:40s} {m['seconds']:6.2f} s  cpu {m['cpu_seconds']:6.2f} s  "
            f"memory grown {m['grown_kib'] / 1024:6.1f} MiB  process peak "
            f"{m['peak_kib'] / 1024:6.1f} MiB  "
            + (
                f"changes found {int(m['found'])}"
                if subject == "poll"
                else f"files {int(m['found']):,}"
            )
        )
    rr = r["ratios"]
    lines.append(
        f"  ratio poll/scandir: time {rr['poll_vs_walk_time']:.1f}x, "
        f"cpu {rr['poll_vs_walk_cpu']:.1f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", default="/var/tmp/invalidatord-bench")
    parser.add_argument(
        "--root", type=Path, default=None, help="the tree (default: WORK/poll-FILES)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    work = Path(args.work)
    root = args.root or work / f"poll-{args.files}"
    r = measure(
        root,
        args.files,
        args.dirs,
        args.reps,
        work,
        lambda msg: print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr),
    )
    print(report(r))
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    if r["changes_found"]:
        print("an unchanged tree must poll as no change", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
