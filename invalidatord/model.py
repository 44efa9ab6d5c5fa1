"""Frozen values that flow through the pipeline. Imports nothing from the package."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

#: CloudFront's per-distribution limits on paths in progress (docs/cloudfront.md).
MAX_FILE_PATHS_IN_FLIGHT = 3000
MAX_WILDCARD_PATHS_IN_FLIGHT = 15
#: CloudFront rejects longer invalidation paths.
MAX_PATH_LENGTH = 4000
#: What a filesystem source ignores unless told otherwise: version control, and the leftovers of
#: editors (vim's swap files `.x.swp`/`.x.swx`, `x~` backups and `4913` write probe; emacs' `.#x`
#: lock files).
DEFAULT_IGNORE: tuple[str, ...] = (".git/", "*.swp", "*.swx", "*~", ".#*", "4913")


class ChangeKind(enum.StrEnum):
    CREATED = "created"
    MODIFIED = "modified"
    DELETED = "deleted"
    MOVED = "moved"  # both ends of a move are reported, each as MOVED
    #: "something under this directory changed in ways the watcher could not see"
    #: (a directory created, deleted or moved, an inotify overflow, a periodic safety net):
    #: the pipeline diffs the subtree `path` ("" = the whole root) against the source's index.
    RESCAN = "rescan"
    #: "the root was replaced" (renamed away and another put in its place, deleted and
    #: recreated, its symlink repointed to another release): the pipeline diffs the whole new
    #: tree against the index, comparing the bytes of files of equal size whatever
    #: `compare` says, and that diff alone decides what changed (events heard from the old
    #: tree in the same window are judged by it too). `path` is "".
    REATTACH = "reattach"


@dataclass(frozen=True, slots=True)
class Change:
    """One observed change of one path of one source.

    `path` is relative to the source root, POSIX separators, no leading slash. Names that are
    not valid UTF-8 arrive decoded with `surrogateescape` (as `os.fsdecode` does), so the raw
    bytes survive to the CloudFront encoder. For S3 sources it is the decoded object key (less
    the configured prefix). `seen` is wall-clock time (`time.time()`).
    `receipt` is an opaque acknowledgement token (an SQS receipt handle): the pipeline hands it
    back to the source only after the change is committed to the journal.
    """

    source: str
    path: str
    kind: ChangeKind
    seen: float
    receipt: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Changes of one source seen together (one read of the watcher's pipe): for each
    (path, kind) of `items`, in the order seen, what a `Change` of `source` with that path and
    kind, seen at `seen`, says. No receipts. One value for a burst, not one per path: the
    pipeline takes a 50,000-file burst as some twenty of these, not 50,000 `Change`s."""

    source: str
    items: Sequence[tuple[str, ChangeKind]]
    seen: float

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Change]:
        """Each item as the `Change` it stands for."""
        for path, kind in self.items:
            yield Change(self.source, path, kind, self.seen)


class FileStat(NamedTuple):
    """What the catch-up index remembers of one file (size, mtime, inode: what equality
    compares). `ctime_ns` comes with a listing but is neither stored nor compared: nothing
    can set it back, so it tells a file changed since a moment even when its mtime was
    preserved (rsync -a, cp -p); 0 = unknown. `digest` is a hash of the file's bytes, known
    when the source compares content (`compare: content`) or after a release swap read the
    file; None = not known. Not compared either: equal stats mean "not touched", equal
    digests mean "same bytes", and the two questions are asked separately.

    A named tuple, not a frozen dataclass: a catch-up builds two for every file (the listing
    and the index), and this one is built in 0.24 us instead of 0.82 (about 0.1 s per
    100,000 files)."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int = 0
    digest: bytes | None = None

    # tuple's own comparisons would compare ctime_ns and digest too
    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileStat) and self[:3] == other[:3]

    def __ne__(self, other: object) -> bool:
        return not (isinstance(other, FileStat) and self[:3] == other[:3])

    def __hash__(self) -> int:
        return hash(self[:3])


@dataclass(frozen=True, slots=True)
class S3Stamp:
    """What the S3 index of an s3-poll source remembers of one object: enough to tell that it
    changed."""

    etag: str
    last_modified: float  # epoch seconds


def is_wildcard(url_path: str) -> bool:
    """CloudFront counts a path ending in `*` as a wildcard, anything else as a file."""
    return url_path.endswith("*")


@dataclass(frozen=True, slots=True)
class Batch:
    """One CreateInvalidation request's worth of URL paths for one distribution (planner output)."""

    distribution: str  # the config name, not the CloudFront id
    paths: tuple[str, ...]

    @property
    def wildcards(self) -> int:
        return sum(1 for p in self.paths if is_wildcard(p))

    @property
    def files(self) -> int:
        return len(self.paths) - self.wildcards


@dataclass(frozen=True, slots=True)
class InFlight:
    """Paths in progress on one distribution, ours and other people's."""

    files: int = 0
    wildcards: int = 0

    def __add__(self, other: InFlight) -> InFlight:
        return InFlight(self.files + other.files, self.wildcards + other.wildcards)


@dataclass(frozen=True, slots=True)
class Invalidation:
    """CloudFront's answer about one invalidation."""

    id: str
    status: str  # "InProgress" | "Completed" (normalised; moto says "COMPLETED")
    create_time: float | None = None
    paths: tuple[str, ...] = ()
    caller_reference: str | None = None

    @property
    def completed(self) -> bool:
        return self.status.lower() == "completed"


def fingerprint(current: FileStat | None, indexed: FileStat | None = None) -> str:
    """What identifies one version of a file across hosts that hold the same tree (a fleet's
    deduplication key is built from it): the same bytes deployed to every host give the same
    fingerprint, so each host's report of the change is recognised as one.

    The content hash when the index has one (`compare: content`), else size and mtime in
    nanoseconds (rsync -a and cp -p preserve both; the inode differs from host to host, so it
    is left out). A file that is gone is fingerprinted by the version the index last knew,
    which is the same on every host. The one place this is decided: change it here only."""
    if current is None:
        return "gone" if indexed is None else "gone:" + fingerprint(indexed)
    # `digest` arrives with content comparison; read it without requiring it.
    digest = getattr(current, "digest", None)
    if isinstance(digest, bytes) and digest:
        return "h:" + digest.hex()
    return f"s:{current.size}:{current.mtime_ns}"
