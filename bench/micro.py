"""`python -m bench.micro`: the hot spots the profiles found, timed in isolation, each beside
the cheaper way proposed for it (so a proposal comes with a measured gain, not a guess).

Runs in-process on the start-up tree (bench/run.py makes it; made here when missing) and a
throw-away journal; prints a table and writes micro.json beside the last results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench import tree
from bench.procs import PYTHON, REPO, SOURCE_ENV, aws_env

WORK = Path("/var/tmp/invalidatord-bench")


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """The median of `repeat` timings of `fn()` in seconds (the machine is noisy)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _StatTuple(NamedTuple):
    size: int
    mtime_ns: int
    inode: int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=10_000)
    args = parser.parse_args(argv)
    if os.environ.get(SOURCE_ENV):
        sys.path.insert(0, os.environ[SOURCE_ENV])
        out_source = os.environ[SOURCE_ENV]
    else:
        out_source = "working tree"
    from invalidatord import catchup
    from invalidatord.journal import Accepted, Journal
    from invalidatord.mapping import Mapper, Rule
    from invalidatord.model import FileStat
    from invalidatord.sources.filesystem import DEFAULT_IGNORE, FilesystemSource

    root = WORK / "startup" / "root"
    rels = tree.layout(args.files, args.dirs)
    tree.ensure_tree(root, rels)
    tree.prewarm(root)
    out: dict[str, Any] = {"files": len(rels), "dirs": args.dirs, "code": out_source}
    rows: list[tuple[str, str, float, str]] = []

    def record(group: str, label: str, seconds: float, note: str = "") -> None:
        rows.append((group, label, seconds, note))
        out.setdefault(group, {})[label] = round(seconds, 4)

    # -- the catch-up scan ------------------------------------------------------------------
    sink = lambda change: None  # noqa: E731
    src_default = FilesystemSource("docroot", root, sink, ignore=DEFAULT_IGNORE)
    src_none = FilesystemSource("docroot", root, sink, ignore=())
    scan = "scan: 100k files"
    record(
        scan, "FilesystemSource.scan, default ignore", best_of(lambda: list(src_default.scan("")))
    )
    record(scan, "FilesystemSource.scan, no ignore list", best_of(lambda: list(src_none.scan(""))))
    from bench.walk import walk

    record(scan, "plain scandir walk + lstat", best_of(lambda: walk(str(root))))
    record(scan, "os.walk (the _unwatched_directories check)", best_of(
        lambda: sum(len(d) for _, d, _ in os.walk(os.fsencode(root)))))  # fmt: skip

    # -- value objects ------------------------------------------------------------------------
    n = len(rels)
    objs = f"value objects: {n:,} built"
    record(objs, "FileStat (frozen slots dataclass)", best_of(
        lambda: [FileStat(i, i, i) for i in range(n)]))  # fmt: skip
    record(objs, "NamedTuple with the same fields", best_of(
        lambda: [_StatTuple(i, i, i) for i in range(n)]))  # fmt: skip
    record(objs, "plain tuple", best_of(lambda: [(i, i, i) for i in range(n)]))

    # -- the journal ----------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite")
        listing = list(src_default.scan(""))
        t0 = time.perf_counter()
        journal.record_baseline("docroot", iter(listing))
        record("journal", "record_baseline of the tree", time.perf_counter() - t0)

        record("journal", "index_iter('') (the whole index, streamed in pages)", best_of(
            lambda: sum(1 for _ in journal.index_iter("docroot", "")), 3))  # fmt: skip
        record("journal", "catchup.diff of scan('') and index_iter('')", best_of(
            lambda: catchup.diff("docroot", src_default.scan(""),
                                 journal.index_iter("docroot", ""), 0.0), 3))  # fmt: skip
        tracemalloc.start()
        entries = sum(1 for _ in journal.index_iter("docroot", ""))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        catchup.diff("docroot", src_default.scan(""), journal.index_iter("docroot", ""), 0.0)
        _, diff_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["index_iter_peak_mib"] = round(peak / 2**20, 2)
        out["index_iter_entries"] = entries
        out["catchup_diff_peak_mib"] = round(diff_peak / 2**20, 2)

        def per_select(paths: list[str]) -> Callable[[], object]:
            return lambda: journal.index_get("docroot", paths)

        def chunked(paths: list[str]) -> Callable[[], object]:
            return lambda: _index_get_chunked(journal._db, "docroot", paths)

        for count in (10_000, 50_000):
            group = f"index lookups for {count:,} paths"
            record(group, "index_get (one SELECT per path)", best_of(per_select(rels[:count]), 3))
            record(group, "chunked IN (...) of 500 keys", best_of(chunked(rels[:count]), 3))

        pending = [f"/{r}" for r in rels[:2900]]
        fake_rows = [(p, 1.0, "docroot:" + p) for p in pending]
        group = "create_batch origins, 2,900 paths"
        record(group, "`r[0] in set(paths)` per row (now)", best_of(lambda: {
            str(r[0]): str(r[2] or "") for r in fake_rows if r[0] in set(pending)}))  # fmt: skip
        wanted = set(pending)
        record(group, "one set, built once", best_of(
            lambda: {str(r[0]): str(r[2] or "") for r in fake_rows if r[0] in wanted}))  # fmt: skip

        # the per-path work of one accepted flush, step by step
        per = f"accept work for {min(50_000, n):,} paths"
        paths = rels[: min(50_000, n)]
        record(
            per, "FilesystemSource.stat", best_of(lambda: [src_default.stat(p) for p in paths], 3)
        )
        record(per, "os.lstat alone", best_of(
            lambda: [os.lstat(f"{root}/{p}") for p in paths], 3))  # fmt: skip
        mapper = Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))])
        record(per, "Mapper.map", best_of(lambda: [mapper.map("docroot", p) for p in paths], 3))
        from invalidatord.mapping import _encode_value, _fields

        def all_fields() -> object:
            return [{k: _encode_value(v) for k, v in _fields(p).items()} for p in paths]

        record(per, "  of which: encode all 5 template fields", best_of(all_fields, 3))
        record(per, "  vs encode only {path}, the one the rule uses", best_of(
            lambda: [{"path": _encode_value(p)} for p in paths], 3))  # fmt: skip
        urls = [Accepted("www", "/" + p, 1.0, "docroot:" + p) for p in paths]
        record(per, "Journal.accept (pending rows only)", best_of(
            lambda: journal.accept(urls), 3))  # fmt: skip
        journal.close()

    # -- imports ---------------------------------------------------------------------------------
    out["imports"] = _import_times()
    for name, seconds in out["imports"]["top"][:8]:
        rows.append(("imports (self time per top-level package, -X importtime)", name, seconds, ""))
    rows.append(("imports (self time per top-level package, -X importtime)",
                 "total: import invalidatord.cli, invalidatord.daemon", out["imports"]["total"],
                 ""))  # fmt: skip

    group = ""
    for g, label, seconds, note in rows:
        if g != group:
            print(f"\n{g}")
            group = g
        print(f"   {seconds * 1000:9.1f} ms  {label}" + (f"  ({note})" if note else ""))
    target = REPO / "bench" / "results"
    target.mkdir(parents=True, exist_ok=True)
    (target / "micro.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten: {target / 'micro.json'}")
    return 0


def _index_get_chunked(
    db: sqlite3.Connection, source: str, paths: list[str], chunk: int = 500
) -> dict[str, tuple[int, int, int]]:
    result: dict[str, tuple[int, int, int]] = {}
    for i in range(0, len(paths), chunk):
        keys = [p.encode("utf-8", "surrogateescape") for p in paths[i : i + chunk]]
        marks = ",".join("?" * len(keys))
        sql = (
            "SELECT path, size, mtime_ns, inode FROM fs_index "  # noqa: S608 - placeholders only
            f"WHERE source = ? AND path IN ({marks})"
        )
        for path, size, mtime, inode in db.execute(sql, (source, *keys)):
            result[bytes(path).decode("utf-8", "surrogateescape")] = (size, mtime, inode)
    return result


_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def _import_times() -> dict[str, Any]:
    """Import time of the daemon by top-level package: the sum of each module's self time (one
    run of `python -X importtime`, which prints microseconds)."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import invalidatord.cli, invalidatord.daemon"],
        capture_output=True,
        text=True,
        env=aws_env(),
        check=True,
    )
    top: dict[str, float] = {}
    total = 0.0
    for line in proc.stderr.splitlines():
        m = _IMPORT.match(line)
        if not m:
            continue
        own = int(m.group(1)) / 1e6
        name = m.group(4).split(".")[0]
        top[name] = top.get(name, 0.0) + own
        total += own
    ranked = sorted(top.items(), key=lambda kv: -kv[1])
    return {"total": round(total, 4), "top": [(k, round(v, 4)) for k, v in ranked[:15]]}


if __name__ == "__main__":
    sys.exit(main())
