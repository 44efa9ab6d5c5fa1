"""What `compare: content` costs against `compare: mtime` and a plain walk, through the real code:
the filesystem source's scan and hashing, the real journal and the pipeline's catch-up diff.

    python -m bench.content [--files 100000] [--reps 1] [--work DIR] [--json out.json]

One tree (`--files` pages of 1-8 KiB, 100 to a folder, made once under `--work` and reused),
and for each mode (`--reps` times each, medians):
- first start: the baseline (mode content reads and hashes every file);
- restart: the catch-up diff of the unchanged tree (neither mode reads a file);
- full rebuild: every file rewritten by temp file + rename (new inode and mtime, as rsync and
  static-site generators do), 1% with new bytes, then the catch-up diff and its accept:
  time, bytes read, and how many paths would be invalidated. The tree is rebuilt once; each
  repetition starts from a copy of the journal as it was before the rebuild.
The yardsticks, on the rebuilt tree: a plain `os.scandir` walk with an lstat per file (the
least any catch-up does) and the same walk reading every file's bytes (the least a content
comparison of a full rebuild does). Files are read through the page cache (the tree was just
written, as on a build host); a cold cache adds the disk's read time to `content`'s first
start and rebuild only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invalidatord import catchup
from invalidatord.journal import Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeKind
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.filesystem import FilesystemSource

MODES = ("mtime", "content")
PHASES = ("first_start", "restart", "full_rebuild")


def _layout(files: int) -> list[str]:
    return [f"d{i // 100:04}/p{i % 100:02}.html" for i in range(files)]


def build(root: Path, files: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    rels = _layout(files)
    for rel in rels:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
    return rels


def ensure_built(root: Path, files: int) -> list[str]:
    """The tree under `root`, made once: a marker beside it says it is complete (a rebuild
    interrupted half-way removes it, so the next run starts from a whole tree)."""
    marker = root.parent / f".{root.name}.built"
    if root.is_dir() and marker.exists():
        return _layout(files)
    shutil.rmtree(root, ignore_errors=True)
    rels = build(root, files)
    marker.touch()
    return rels


def rebuild(root: Path, rels: list[str], changed: set[str]) -> None:
    """Every file rewritten by temp file + rename; the `changed` ones with new bytes."""
    marker = root.parent / f".{root.name}.built"
    marker.unlink(missing_ok=True)
    for rel in rels:
        target = root / rel
        data = target.read_bytes()
        if rel in changed:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # same size, new bytes
        temp = target.with_name("." + target.name + ".tmp")
        temp.write_bytes(data)
        os.replace(temp, target)
    marker.touch()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _walk(root: Path, read: bool) -> tuple[int, int]:
    """(files, bytes read): a scandir walk with an lstat per file, and with `read` every byte."""
    files = size = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                entry.stat(follow_symlinks=False)
                files += 1
                if read:
                    with open(entry.path, "rb", buffering=0) as f:
                        while chunk := f.read(1 << 16):
                            size += len(chunk)
    return files, size


class _Daemon:
    """The parts of the daemon a catch-up uses, on one journal, in this process."""

    def __init__(self, journal_path: Path, root: Path, mode: str) -> None:
        self.journal = Journal(journal_path)
        pipeline: Pipeline | None = None

        def sink(change: Change) -> None:
            assert pipeline is not None
            pipeline.sink(change)

        self.sink = sink
        self.source = FilesystemSource("docroot", root, sink, compare=mode)  # type: ignore[arg-type]
        pipeline = Pipeline(
            sources={"docroot": self.source},
            scanners={"docroot": self.source},
            mapper=Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))]),
            journal=self.journal,
            debounce=DebounceSettings(quiet=3600.0, max_delay=3600.0, max_pending=10**9),
            metrics=Metrics(),
        )
        self.pipeline = pipeline

    def measure(self, work: Callable[[], Any]) -> dict[str, Any]:
        read0, cpu0, t0 = self.source.hashed.bytes, _cpu(), time.perf_counter()
        work()
        return {
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(_cpu() - cpu0, 3),
            "bytes_read": self.source.hashed.bytes - read0,
            "pending_paths": self.journal.pending_count(),
        }

    def first_start(self) -> dict[str, Any]:
        return self.measure(
            lambda: catchup.record_baseline(self.journal, self.source, self.sink, time.time)
        )

    def catch_up(self) -> dict[str, Any]:
        def run() -> None:
            self.pipeline.sink(Change("docroot", "", ChangeKind.RESCAN, time.time()))
            self.pipeline.flush_all()

        return self.measure(run)

    def close(self) -> None:
        self.journal.close()


def _copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a closed journal (its WAL included) by SQLite's backup."""
    dst.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in rows[0]:
        m = statistics.median(r[k] for r in rows)
        out[k] = round(m) if all(isinstance(r[k], int) for r in rows) else round(m, 3)
    return out


def measure(
    work: Path, files: int, reps: int = 1, say: Callable[[str], None] = lambda _m: None
) -> dict[str, Any]:
    """Every phase of both modes and the walks, `reps` times each; raw samples and medians."""
    base = work / "content"
    base.mkdir(parents=True, exist_ok=True)
    root = base / f"root-{files}"
    t0 = time.monotonic()
    rels = ensure_built(root, files)
    say(f"content tree: {files:,} files ({time.monotonic() - t0:.1f}s to make or find)")
    samples: list[dict[str, Any]] = []
    state = base / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            journal = state / f"journal-{mode}.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{journal}{suffix}").unlink(missing_ok=True)
            d = _Daemon(journal, root, mode)
            try:
                tag = {"rep": rep, "mode": mode}
                samples.append({**tag, "phase": "first_start", **d.first_start()})
                samples.append({**tag, "phase": "restart", **d.catch_up()})
            finally:
                d.close()
    for mode in MODES:  # the last repetition's journals are the index before the rebuild
        _copy_db(state / f"journal-{mode}.sqlite", state / f"before-{mode}.sqlite")
    changed = set(random.Random(3).sample(rels, max(1, len(rels) // 100)))
    t0 = time.monotonic()
    rebuild(root, rels, changed)
    rebuild_s = time.monotonic() - t0
    say(f"content: full rebuild written in {rebuild_s:.1f}s")
    walks: list[dict[str, Any]] = []
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            journal = state / f"journal-{mode}.sqlite"
            _copy_db(state / f"before-{mode}.sqlite", journal)
            d = _Daemon(journal, root, mode)
            try:
                samples.append({"rep": rep, "mode": mode, "phase": "full_rebuild", **d.catch_up()})
            finally:
                d.close()
        row: dict[str, Any] = {"rep": rep}
        for name, read in (("walk", False), ("walk_read", True)):
            cpu0, w0 = _cpu(), time.perf_counter()
            found, size = _walk(root, read)
            row[name] = {
                "seconds": round(time.perf_counter() - w0, 3),
                "cpu_seconds": round(_cpu() - cpu0, 3),
                "bytes_read": size,
                "files": found,
            }
        walks.append(row)
        say(
            f"content rep {rep}: rebuild catch-up "
            + ", ".join(
                f"{s['mode']} {s['seconds']:.2f}s"
                for s in samples
                if s["rep"] == rep and s["phase"] == "full_rebuild"
            )
            + f"; walk {row['walk']['seconds']:.2f}s, walk+read {row['walk_read']['seconds']:.2f}s"
        )
    shutil.rmtree(state, ignore_errors=True)
    out: dict[str, Any] = {
        "files": files,
        "tree_bytes": sum((root / r).stat().st_size for r in rels),
        "changed_files": len(changed),
        "reps": reps,
        "rebuild_write_s": round(rebuild_s, 2),
        "samples": samples,
        "walk_samples": walks,
    }
    for mode in MODES:
        out[mode] = {
            phase: _median_row(
                [
                    {k: v for k, v in s.items() if k not in ("rep", "mode", "phase")}
                    for s in samples
                    if s["mode"] == mode and s["phase"] == phase
                ]
            )
            for phase in PHASES
        }
    for name in ("walk", "walk_read"):
        out[name] = _median_row([w[name] for w in walks])
    out["ratios"] = _ratios(out)
    return out


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    def x(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("nan")

    c, m = r["content"], r["mtime"]
    return {
        "content_rebuild_vs_walk": x(c["full_rebuild"]["seconds"], r["walk"]["seconds"]),
        "content_rebuild_vs_walk_read": x(c["full_rebuild"]["seconds"], r["walk_read"]["seconds"]),
        "mtime_rebuild_vs_walk": x(m["full_rebuild"]["seconds"], r["walk"]["seconds"]),
        "content_first_start_vs_walk_read": x(
            c["first_start"]["seconds"], r["walk_read"]["seconds"]
        ),
        "content_restart_vs_walk": x(c["restart"]["seconds"], r["walk"]["seconds"]),
        "content_rebuild_bytes_vs_tree": x(c["full_rebuild"]["bytes_read"], r["tree_bytes"]),
        "invalidated_content_vs_mtime": x(
            c["full_rebuild"]["pending_paths"], m["full_rebuild"]["pending_paths"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.content", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--work", "--dir", type=Path, default=Path("/var/tmp/invalidatord-bench"),
        help="where the tree is made and kept",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    results = measure(args.work, args.files, args.reps, say)
    text = json.dumps(results, indent=2)
    if args.json is None:
        print(text)
    else:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
