"""The catch-up merge's precondition, through real parts: scan() of a real tree, MemorySource
and the journal's index list paths in the same order (the bytes of the UTF-8, surrogateescape
encoded path), so diffing a real tree against a real journal needs neither side in memory."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invalidatord.catchup import diff, diff_runs, path_key
from invalidatord.journal import Journal
from invalidatord.model import Change, ChangeKind, FileStat
from invalidatord.sources.filesystem import FilesystemSource
from invalidatord.sources.memory import MemorySource

K = ChangeKind

#: Names that sort differently as str and as bytes, or around "/" (- . 0 are its neighbours).
_NAMES = ["a", "b", "a.b", "a-b", "a0", "ab", "é", "\u0800", "\udce9", "\udc80", "\udcff", "~"]

_trees = itertools.count()


def _sink(change: Change) -> None:
    """Scans deliver nothing."""


def _make(root: Path, rels: list[str]) -> list[str]:
    """Create the files `rels` (skipping one that would be both a file and a directory);
    returns those made."""
    made: list[str] = []
    for rel in sorted(rels, key=len):
        parts = rel.split("/")
        ancestors = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if ancestors & set(made) or any(m.startswith(rel + "/") for m in made):
            continue
        path = os.fsencode(root / rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")
        made.append(rel)
    return made


def _byte_sorted(paths: list[str]) -> list[str]:
    return sorted(paths, key=path_key)


def test_scan_lists_a_real_tree_in_path_byte_order(tmp_path: Path) -> None:
    """Files and directories whose names sort around "/" ("a.b" < "a/..." < "a0") and names
    that are not UTF-8 come out in the byte order of their full paths, also under a prefix."""
    rels = [
        "a-b",
        "a.b",
        "a/b.c",
        "a/b0",
        "a/b-/x",
        "a/b/c",
        "a0",
        "ab",
        "é/x",
        "\u0800",
        "\udce9",
        "\udcff/\udc80",
        "\udcff/z",
        "\udcff-",
    ]
    made = _make(tmp_path, rels)
    assert len(made) == len(rels)
    source = FilesystemSource("docroot", tmp_path, _sink)
    assert [p for p, _ in source.scan()] == _byte_sorted(made)
    assert [p for p, _ in source.scan("a")] == ["a/b-/x", "a/b.c", "a/b/c", "a/b0"]
    weird = "\udcff"
    assert [p for p, _ in source.scan(weird)] == [f"{weird}/z", f"{weird}/\udc80"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rels=st.lists(
        st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4).map("/".join),
        min_size=1,
        max_size=25,
        unique=True,
    )
)
def test_scan_order_equals_sorting_the_listing_by_bytes(tmp_path: Path, rels: list[str]) -> None:
    """For any tree of such names, scan() yields exactly the files, already sorted by their
    paths' bytes, and MemorySource with the same files yields the same sequence."""
    root = tmp_path / f"tree{next(_trees)}"
    root.mkdir()
    made = _make(root, rels)
    source = FilesystemSource("docroot", root, _sink)
    listing = list(source.scan())
    assert [p for p, _ in listing] == _byte_sorted(made)
    memory = MemorySource("docroot", _sink)
    for path, stat in listing:
        memory.set_file(path, stat)
    assert list(memory.scan()) == listing
    shutil.rmtree(root)


def test_a_real_tree_diffs_against_a_real_journal(tmp_path: Path) -> None:
    """The baseline of a tree, the tree changed (a file rewritten, one removed, one added,
    a non-UTF-8 name among them), then scan() merged with index_iter(): exactly those
    changes, in path order, at every page size."""
    root = tmp_path / "root"
    rels = _make(root, ["a.b", "a/b", "a/c", "a0", "é", "\udce9", "\u0800", "d/\udc80"])
    source = FilesystemSource("docroot", root, _sink)
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record_baseline("docroot", source.scan())
    assert [p for p, _ in journal.index_iter("docroot")] == _byte_sorted(rels)
    os.unlink(os.fsencode(root / "a/b"))
    os.unlink(os.fsencode(root / "\u0800"))
    with open(os.fsencode(root / "\udce9"), "ab") as f:
        f.write(b"more")
    _make(root, ["a/a", "d/\udcff"])
    for page in (1, 3, 2_000):
        changes = diff("docroot", source.scan(), journal.index_iter("docroot", page=page), 1.0)
        assert [(c.path, c.kind) for c in changes] == [
            ("a/a", K.CREATED),
            ("a/b", K.DELETED),
            ("d/\udcff", K.CREATED),
            ("\u0800", K.DELETED),
            ("\udce9", K.MODIFIED),
        ]
        under_d = diff("docroot", source.scan("d"), journal.index_iter("docroot", "d"), 1.0)
        assert [(c.path, c.kind) for c in under_d] == [("d/\udcff", K.CREATED)]
    journal.close()


def test_memory_source_scans_in_byte_order_not_code_point_order() -> None:
    """MemorySource sorts by the paths' bytes: a surrogate-escaped byte before U+0800."""
    memory = MemorySource("mem", _sink)
    for path in ("\u0800", "\udc80", "a/b", "a.b", "a0"):
        memory.set_file(path, FileStat(1, 1, 1))
    assert [p for p, _ in memory.scan()] == ["a.b", "a/b", "a0", "\udc80", "\u0800"]


def test_scan_runs_and_index_pages_are_scan_and_index_iter_as_rows(tmp_path: Path) -> None:
    """scan_runs() lists what scan() does, in the same order, as rows (path bytes, size,
    mtime, inode) in runs broken at each subdirectory, none empty; index_pages() lists what
    index_iter() does, page by page, under a prefix too; merged by diff_runs they find the
    changes diff finds."""
    root = tmp_path / "root"
    rels = ["a.b", "a/b", "a/c", "a/x/y", "a/z", "a0", "é", "\udce9", "\u0800", "d/\udc80"]
    _make(root, rels)
    source = FilesystemSource("docroot", root, _sink)

    def as_rows(listing: Iterable[tuple[str, FileStat]]) -> list[tuple[bytes, int, int, int]]:
        return [(path_key(p), s.size, s.mtime_ns, s.inode) for p, s in listing]

    for prefix in ("", "a", "d", "a/x", "nope"):
        runs = list(source.scan_runs(prefix))
        assert all(runs)
        assert [r for run in runs for r in run] == as_rows(source.scan(prefix))
    # a.b; then a/ is entered: a/b a/c, a/x/y, a/z; a0 ...: a new run after each directory
    assert [[r[0] for r in run] for run in source.scan_runs("a")] == [
        [b"a/b", b"a/c"],
        [b"a/x/y"],
        [b"a/z"],
    ]
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record_baseline("docroot", source.scan())
    for prefix, page in (("", 1), ("", 3), ("", 2_000), ("a", 2), ("a.b", 5), ("d", 1)):
        pages = list(journal.index_pages("docroot", prefix, page=page))
        assert all(len(p) <= page for p in pages)
        assert [r for p in pages for r in p] == as_rows(journal.index_iter("docroot", prefix))
    os.unlink(os.fsencode(root / "a/c"))
    with open(os.fsencode(root / "\udce9"), "ab") as f:
        f.write(b"more")
    _make(root, ["a/a", "d/\udcff"])
    for page in (1, 3, 2_000):
        changes, merged = diff_runs(
            "docroot", source.scan_runs(), journal.index_pages("docroot", page=page), 1.0
        )
        assert changes == diff("docroot", source.scan(), journal.index_iter("docroot"), 1.0)
        assert merged == len(rels)
    journal.close()
