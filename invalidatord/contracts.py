"""Every extension point in one place. Imports only `model`.

Implementations: sources in `invalidatord.sources` (filesystem, sqs, s3poll, memory); CloudFront
in `invalidatord.cloudfront` (boto3, dry run), wrapped for health by `invalidatord.health`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from invalidatord.model import Change, ChangeBatch, FileStat, Invalidation

#: Where sources deliver changes. Thread-safe, never blocks for long, never raises.
ChangeSink = Callable[[Change], None]
#: Where a source may deliver many changes at once, with the same guarantees as `ChangeSink`
#: and in order with what it delivers there: a batch is taken as its changes one by one.
BatchSink = Callable[[ChangeBatch], None]


class Source(Protocol):
    """A producer of changes.

    Guarantees: `start` returns once the source is watching (every change made after it returns
    is delivered) or raises `SourceError`; `stop` returns once no more changes will be delivered;
    delivery happens on the source's own thread(s) through the `ChangeSink` it was built with.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """True while the source is watching/receiving as configured."""
        ...

    def problem(self) -> str | None:
        """None while healthy; else one line saying what it cannot see and why (/healthz,
        STATUS=). Never raises, never blocks for long."""
        ...

    def acknowledge(self, receipts: Sequence[str]) -> None:
        """Called after the changes carrying these receipts are committed to the journal.
        Sources without receipts ignore it."""
        ...


@runtime_checkable
class Fenced(Protocol):
    """A source whose deploys can say "not yet" (`sources[].hold_while` markers)."""

    def deploy_marker(self) -> str | None:
        """The marker that exists now (a deploy or `git checkout` is under way), or None.
        Cheap (a few lstat calls): the pipeline asks when a batch's quiet window ends and
        about once a second while it holds one."""
        ...


class TreeScanner(Protocol):
    """A source whose current state can be listed (filesystem): the catch-up scan uses it."""

    name: str
    #: Wall clock (ns) at which its current watch began, at the latest; 0 = unknown. A first
    #: start's baseline reports files whose ctime is later (their events may have been lost).
    watching_since_ns: int

    def scan(self, prefix: str = "") -> Iterator[tuple[str, FileStat]]:
        """Every file under `prefix` ("" = the whole root) that is not ignored, as
        (path relative to the root, stat). Paths under `prefix` only; never raises for a file
        that vanishes during the walk.

        In ascending byte order of `path.encode("utf-8", "surrogateescape")`, each path once:
        the order of the journal's catch-up index, which the catch-up diff merges this listing
        against (`catchup.diff` raises ValueError on a listing out of order)."""
        ...

    def stat(self, path: str) -> FileStat | None:
        """The file's stat now, or None if it does not exist (or is not a regular file)."""
        ...

    @property
    def compare(self) -> str:
        """ "mtime": a file is changed when its size, mtime or inode are; "content": only
        when its bytes are (`digest` reads them)."""
        ...

    def digest(self, path: str) -> FileStat | None:
        """The file's stat now with `digest` set to the hash of its bytes (read once), or
        None if it does not exist (or is not a regular file)."""
        ...

    def previous_digest(self, path: str, indexed: FileStat) -> bytes | None:
        """The hash of `path` in the tree before the root's last swap, when that file is
        still there exactly as `indexed` (size, mtime, inode); None otherwise or unknown."""
        ...


#: One file as a catch-up merges it fast: (path_key, size, mtime_ns, inode), the path as
#: `catchup.path_key` encodes it, the stat as `FileStat` compares it.
Row = tuple[bytes, int, int, int]


@runtime_checkable
class RunScanner(Protocol):
    """A `TreeScanner` that also lists its tree as rows, a run of files at a time."""

    def scan_runs(self, prefix: str = "") -> Iterator[list[Row]]:
        """What `scan(prefix)` lists, in the same order, as `Row`s in runs (lists, none
        empty) that together are that listing."""
        ...


class CloudFront(Protocol):
    """The CloudFront edge. `distribution_id` is the CloudFront id (E2EXAMPLE...).

    Every method raises `SinkError` subclasses, never botocore exceptions.
    """

    def create_invalidation(
        self, distribution_id: str, paths: Sequence[str], caller_reference: str
    ) -> Invalidation: ...

    def get_invalidation(self, distribution_id: str, invalidation_id: str) -> Invalidation: ...

    def list_in_progress(self, distribution_id: str) -> list[Invalidation]:
        """Every invalidation of the distribution that is still InProgress, with its paths."""
        ...

    def check_distribution(self, distribution_id: str) -> None:
        """A cheap call that proves credentials and the distribution (ListInvalidations,
        MaxItems=1). Raises AccessProblem naming what is missing."""
        ...
