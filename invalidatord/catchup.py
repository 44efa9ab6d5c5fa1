"""The catch-up diff: a listing of the tree now against the persisted index -> changes.

Pure: no I/O, time passed in. The daemon feeds it `TreeScanner.scan(prefix)` (a generator) and
the journal's `index_under(source, prefix)`; the changes it returns go through the pipeline like
any watched change, so files changed while the daemon was stopped (or while inotify overflowed)
are invalidated and unchanged files are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from invalidatord.model import Change, ChangeKind, FileStat

_CREATED = ChangeKind.CREATED
_MODIFIED = ChangeKind.MODIFIED
_DELETED = ChangeKind.DELETED


def diff(
    source: str,
    disk: Iterable[tuple[str, FileStat]],
    index: Mapping[str, FileStat],
    now: float,
) -> list[Change]:
    """Changes that turn `index` into the `disk` listing.

    A path on disk but not in the index is CREATED; in both with a different `FileStat`
    (size, mtime_ns or inode: a replace-by-rename keeps size and mtime but not the inode) is
    MODIFIED; in the index but not on disk is DELETED. `disk` is consumed once, lazily, so a
    tree walk is never held in memory twice; deletions come last, sorted by path.
    Every change carries `seen=now`.
    """
    changes: list[Change] = []
    append = changes.append
    on_disk: set[str] = set()
    remember = on_disk.add
    known = index.get
    for path, stat in disk:
        remember(path)
        old = known(path)
        if old is None:
            append(Change(source, path, _CREATED, now))
        elif old != stat:
            append(Change(source, path, _MODIFIED, now))
    for path in sorted(index.keys() - on_disk):
        append(Change(source, path, _DELETED, now))
    return changes
