"""The catch-up diff: a listing of the tree now against the persisted index -> changes.

Pure: no I/O, time passed in. The daemon feeds it `TreeScanner.scan(prefix)` and the journal's
`index_iter(source, prefix)`, both generators in the byte order of the paths' UTF-8
(surrogateescape) encoding, and merges them: neither side is ever held in memory. The changes
it returns go through the pipeline like any watched change, so files changed while the daemon
was stopped (or while inotify overflowed) are invalidated and unchanged files are not.

`diff_runs` is the same merge for `compare: mtime` over `Row`s a run (a directory's files) and
a page at a time (`RunScanner.scan_runs`, `Journal.index_pages`), which is what a restart of
the daemon on a filesystem source does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from invalidatord.contracts import ChangeSink, Row, TreeScanner
from invalidatord.model import Change, ChangeKind, FileStat

_CREATED = ChangeKind.CREATED
_MODIFIED = ChangeKind.MODIFIED
_DELETED = ChangeKind.DELETED

#: How a path in both listings is judged: (path, stat on disk, stat in the index) -> unchanged.
#: The default is stat equality (`compare: mtime`); a content comparison is passed in by the
#: caller, which owns the reading of files: this module does no I/O.
Same = Callable[[str, FileStat, FileStat], bool]


#: How far a file's ctime may lag the wall clock (the kernel stamps files with a coarse
#: clock, one tick behind at most: 10 ms at HZ=100).
CTIME_SLACK_NS = 20_000_000


class BaselineStore(Protocol):
    """The part of the journal a first start writes."""

    def record_baseline(self, source: str, entries: Iterable[tuple[str, FileStat]]) -> int: ...


@dataclass(frozen=True, slots=True)
class Baseline:
    files: int  # files recorded
    changed_since_watching: int  # of which reported as changed (see `record_baseline`)


def record_baseline(
    store: BaselineStore, scanner: TreeScanner, sink: ChangeSink, clock: Callable[[], float]
) -> Baseline:
    """The first start of a tree source: remember the tree, invalidate nothing, except the files
    changed since the watch began.

    Their changes are queued by the watch too, but an inotify overflow before the scan reached
    them would lose those events while the baseline already holds the new state, and the
    overflow's rescan would find nothing: so the baseline itself reports them, by their ctime
    (which nothing can set back), as CREATED changes through `sink`.

    Under `compare: content` such a file is recorded without its hash: the scan may have read
    it after the change, and its queued event, judged against that hash, would find the bytes
    unchanged and drop the one change CloudFront has not seen (2,000 files rewritten during a
    first start's scan lost 469 that way). With no hash the event's read decides as changed."""
    since = scanner.watching_since_ns
    # a file's timestamps come from the kernel's coarse clock, up to a tick behind
    since = since - CTIME_SLACK_NS if since else 0
    recent: list[str] = []
    # compare: content records each file's hash with it: the first change is then judged
    # by its bytes too
    digest = scanner.digest if scanner.compare == "content" else None

    def entries() -> Iterator[tuple[str, FileStat]]:
        for path, listed in scanner.scan(""):
            st = listed if digest is None else digest(path)
            if st is None:
                continue  # gone since it was listed
            if since and st.ctime_ns >= since:
                recent.append(path)
                if st.digest is not None:
                    st = st._replace(digest=None)
            yield path, st

    count = store.record_baseline(scanner.name, entries())
    now = clock()
    for path in recent:
        sink(Change(scanner.name, path, _CREATED, now))
    return Baseline(count, len(recent))


def path_key(path: str) -> bytes:
    """The sort key of a path in both listings: its bytes, as the index stores them."""
    return path.encode("utf-8", "surrogateescape")


def _precedes(a: str, b: str) -> bool:
    """Whether `a` sorts before `b` by `path_key`. Code point order is UTF-8 byte order except
    around surrogate escapes (lone bytes 0x80-0xFF), so str comparison answers when `b` is
    ASCII (str.isascii() is O(1)): `a` then differs from it first at an ASCII character."""
    if b.isascii():
        return a < b
    return path_key(a) < path_key(b)


def diff(
    source: str,
    disk: Iterable[tuple[str, FileStat]],
    index: Iterable[tuple[str, FileStat]],
    now: float,
    same: Same | None = None,
) -> list[Change]:
    """Changes that turn `index` into the `disk` listing, both sorted by `path_key`.

    A path on disk but not in the index is CREATED; in both with a different `FileStat`
    (size, mtime_ns or inode: a replace-by-rename keeps size and mtime but not the inode) is
    MODIFIED; in the index but not on disk is DELETED. Both inputs are consumed once, lazily,
    in step; the changes come out in path order. Every change carries `seen=now`.

    `same`, when given, decides for each path in both listings whether it is unchanged
    (it is called for every such path, equal stats or not, so it can count them); without
    it a path is unchanged when its stats are equal.

    Raises ValueError, naming both paths, when either input is out of order or repeats a
    path: a merge of unsorted listings would report files as created and deleted at random.
    """
    changes: list[Change] = []
    disk_rows = iter(disk)
    index_rows = iter(index)
    on_disk = next(disk_rows, None)
    indexed = next(index_rows, None)
    last = ""  # the greatest path taken so far; every path taken must sort after it
    while on_disk is not None and indexed is not None:
        path, stat = on_disk
        old_path, old_stat = indexed
        if path == old_path:
            # _precedes inlined for the common case, a path in both: 0.03 s per 100,000
            if not (last < path if path.isascii() else _precedes(last, path)):
                _out_of_order(last, path, "tree listing and index")
            if (stat != old_stat) if same is None else not same(path, stat, old_stat):
                changes.append(Change(source, path, _MODIFIED, now))
            on_disk = next(disk_rows, None)
            indexed = next(index_rows, None)
        elif _precedes(path, old_path):
            if not _precedes(last, path):
                _out_of_order(last, path, "tree listing")
            changes.append(Change(source, path, _CREATED, now))
            on_disk = next(disk_rows, None)
        else:
            path = old_path
            if not _precedes(last, path):
                _out_of_order(last, path, "index")
            changes.append(Change(source, path, _DELETED, now))
            indexed = next(index_rows, None)
        last = path
    tails = (
        (on_disk, disk_rows, _CREATED, "tree listing"),
        (indexed, index_rows, _DELETED, "index"),
    )
    for head, rest, kind, name in tails:
        if head is None:
            continue
        path = head[0]
        if not _precedes(last, path):
            _out_of_order(last, path, name)
        changes.append(Change(source, path, kind, now))
        last = path
        for path, _ in rest:
            if not _precedes(last, path):
                _out_of_order(last, path, name)
            changes.append(Change(source, path, kind, now))
            last = path
    return changes


def _out_of_order(before: str, after: str, listing: str) -> None:
    raise ValueError(
        f"catch-up diff: {listing} out of order, {after!r} came after {before!r} (both the "
        "tree listing and the index must be sorted by path_key, each path once)"
    )


def diff_runs(
    source: str,
    disk: Iterable[list[Row]],
    index: Iterable[list[Row]],
    now: float,
    differing: list[tuple[str, Row, Row]] | None = None,
) -> tuple[list[Change], int]:
    """`diff` over `Row`s: `disk` in runs, `index` in pages, both sorted by path key, each
    path once. Returns the changes, in path order, and how many index rows were merged.

    A path in both with a different row is MODIFIED; with `differing`, it is appended there
    as (path, row on disk, row in the index) instead, for the caller to judge (`compare:
    content` reads the file), and is not among the changes.

    A run is compared whole with the next index rows as one list comparison (in C, no Python
    per file): a directory nothing changed in costs no more. A run that differs is merged row
    by row. Raises ValueError, as `diff` does, for a listing found out of order."""
    changes: list[Change] = []
    append = changes.append
    pages = (page for page in index if page)
    page: list[Row] = next(pages, [])
    at = 0  # the next index row is page[at]
    merged = 0  # index rows of earlier pages
    last = b""  # the greatest path key taken so far
    for run in disk:
        if not run:
            continue
        k = len(run)
        if at + k <= len(page) and run[0][0] > last and page[at : at + k] == run:
            at += k  # this whole run unchanged: 1.5x the walk, not 1.9x (100,000 files)
            last = run[-1][0]
            continue
        for row in run:
            key = row[0]
            if key <= last:
                _out_of_order(_path(last), _path(key), "tree listing")
            while True:  # the index rows before this one were deleted
                if at == len(page):
                    merged += at
                    page, at = next(pages, []), 0
                    if not page:
                        break
                old = page[at]
                if old[0] >= key:
                    break
                if old[0] <= last:
                    _out_of_order(_path(last), _path(old[0]), "index")
                append(Change(source, _path(old[0]), _DELETED, now))
                last = old[0]
                at += 1
            if at < len(page) and page[at][0] == key:
                if page[at] != row:
                    if differing is None:
                        append(Change(source, _path(key), _MODIFIED, now))
                    else:
                        differing.append((_path(key), row, page[at]))
                at += 1
            else:
                append(Change(source, _path(key), _CREATED, now))
            last = key
    while page:  # what is left of the index was deleted
        for old in page[at:]:
            if old[0] <= last:
                _out_of_order(_path(last), _path(old[0]), "index")
            append(Change(source, _path(old[0]), _DELETED, now))
            last = old[0]
        merged += len(page)
        page, at = next(pages, []), 0
    return changes, merged + at


def _path(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")
