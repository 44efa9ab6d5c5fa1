"""What `compare: content` costs against `compare: mtime`, through the real code: the filesystem
source's scan and hashing, the real journal and the pipeline's catch-up diff.

    python -m bench.content [--files 100000] [--dir /var/tmp/x] [--json out.json]

For each mode, on the same tree (`--files` pages of 1-8 KiB, 100 to a folder):
- first start: the baseline (mode content reads and hashes every file);
- restart: the catch-up diff of the unchanged tree (neither mode reads a file);
- full rebuild: every file rewritten by temp file + rename (new inode and mtime, as rsync and
  static-site generators do), 1% with new bytes, then the catch-up diff and its accept:
  time, bytes read, and how many paths would be invalidated.
Files are read through the page cache (the tree was just written, as on a build host); a
cold cache adds the disk's read time to `content`'s first start and rebuild only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from invalidatord import catchup
from invalidatord.journal import Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeKind
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.filesystem import FilesystemSource


def build(root: Path, files: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    rels: list[str] = []
    for i in range(files):
        rel = f"d{i // 100:04}/p{i % 100:02}.html"
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
        rels.append(rel)
    return rels


def rebuild(root: Path, rels: list[str], changed: set[str]) -> None:
    """Every file rewritten by temp file + rename; the `changed` ones with new bytes."""
    for rel in rels:
        target = root / rel
        data = target.read_bytes()
        if rel in changed:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # same size, new bytes
        temp = target.with_name("." + target.name + ".tmp")
        temp.write_bytes(data)
        os.replace(temp, target)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_mode(base: Path, root: Path, rels: list[str], mode: str) -> dict[str, Any]:
    journal = Journal(base / f"journal-{mode}.sqlite")
    pipeline: Pipeline | None = None

    def sink(change: Change) -> None:
        assert pipeline is not None
        pipeline.sink(change)

    source = FilesystemSource("docroot", root, sink, compare=mode)  # type: ignore[arg-type]
    pipeline = Pipeline(
        sources={"docroot": source},
        scanners={"docroot": source},
        mapper=Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))]),
        journal=journal,
        debounce=DebounceSettings(quiet=3600.0, max_delay=3600.0, max_pending=10**9),
        metrics=Metrics(),
    )
    out: dict[str, Any] = {}

    def measure(name: str, work: Any) -> None:
        read0, cpu0, t0 = source.hashed.bytes, _cpu(), time.perf_counter()
        work()
        out[name] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(_cpu() - cpu0, 3),
            "bytes_read": source.hashed.bytes - read0,
            "pending_paths": journal.pending_count(),
        }

    def catch_up() -> None:
        pipeline.sink(Change("docroot", "", ChangeKind.RESCAN, time.time()))
        pipeline.flush_all()

    measure("first_start", lambda: catchup.record_baseline(journal, source, sink, time.time))
    measure("restart", catch_up)
    changed = set(random.Random(3).sample(rels, len(rels) // 100))
    rebuild(root, rels, changed)
    measure("full_rebuild", catch_up)
    out["changed_files"] = len(changed)
    journal.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the tree is built")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-content-", dir=args.dir))
    try:
        results: dict[str, Any] = {"files": args.files}
        for mode in ("mtime", "content"):
            root = base / f"tree-{mode}"
            rels = build(root, args.files)
            results["tree_bytes"] = sum((root / r).stat().st_size for r in rels)
            results[mode] = run_mode(base, root, rels, mode)
            shutil.rmtree(root)
        text = json.dumps(results, indent=2)
        print(text)
        if args.json is not None:
            args.json.write_text(text + "\n")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
