"""S3 bucket polling: list a bucket (or a prefix of it) every `interval`, compare the listing with
the index kept in the journal, and deliver what was created, modified or deleted.

For buckets whose event notifications cannot be wired to a queue (someone else's bucket, an
S3-compatible store without notifications), or as a safety net beside the SQS source. Satisfies
`contracts.Source`. The guarantees, in plain words:

- **Baseline.** The very first poll lists the bucket, records every key's ETag and
  LastModified in the journal's `s3_index` and invalidates nothing. It runs on the source's
  thread, not in `start()`: a bucket of a million keys takes minutes to list, longer than a
  service manager waits for a start. A change made meanwhile is found by the next poll if the
  listing had passed its key, and is part of the baseline otherwise. A baseline is marked
  complete only after its last page is written: one that was interrupted is started over. A
  source whose bucket or prefix changed in the config records a new baseline (and invalidates
  nothing).
- **Polls.** The source polls as soon as it starts (on later starts, that finds the changes made
  while the daemon was stopped), then every `interval` after the previous listing ended. A key
  missing from the index is CREATED, a key whose ETag or LastModified differ is MODIFIED, an
  indexed key no longer listed is DELETED. The path is the key less the prefix.
- **Nothing lost across a crash.** A poll never writes the index. Each change carries a
  receipt, and a key's index row is updated only in `acknowledge`, which the pipeline calls
  after the change is committed to the journal. A crash before that commit leaves the index as
  it was, so the next poll (the one at start-up) finds the change again. A crash between the
  commit and the index update finds it again too: it is invalidated twice, never not at all.
  While a change awaits its acknowledgement, later polls compare against what it reported,
  so an unchanged object is not reported again.
- **Bounded memory.** The listing is streamed one page (up to 1,000 keys) at a time and merged
  with the same key range of the index, read in chunks. Both are in ListObjectsV2 order (the
  keys' UTF-8 bytes; SQLite compares TEXT the same way), so a poll holds about one page,
  whatever the number of keys. Only changes awaiting acknowledgement are kept beyond it.
- **Never crashes.** A failed or out-of-order listing is logged (`s3_poll_failed`), makes
  `healthy` false and is retried with backoff (capped at `interval`); what it already reported
  stays reported.
- **Stop.** `stop()` returns once no more changes will be delivered; a listing in progress ends
  in the background (`join` waits for it). `acknowledge` still works after `stop` (the daemon
  flushes after stopping its sources).

Keys: `prefix` is a directory, as for the SQS source: `site` and `site/` both keep
`site/a.html` as the path `a.html`, and drop `site/` itself and `site-old/a.html`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from invalidatord.contracts import ChangeSink
from invalidatord.errors import SourceError
from invalidatord.model import Change, ChangeKind, S3Stamp
from invalidatord.s3events import directory
from invalidatord.sources._aws import describe as _describe
from invalidatord.sources._aws import error_code as _code

__all__ = ["PollResult", "S3Index", "S3PollSource"]

log = structlog.get_logger(__name__)

#: ListObjectsV2 returns at most this many keys per page.
MAX_PAGE_SIZE = 1000
#: Index rows read per query while merging.
INDEX_CHUNK = 1000


class S3Index(Protocol):
    """The part of the journal an S3 poll source needs (`journal.Journal` has it)."""

    def s3_baseline(self, source: str) -> tuple[str, str] | None: ...

    def s3_baseline_start(self, source: str) -> None: ...

    def s3_baseline_done(self, source: str, bucket: str, prefix: str) -> None: ...

    def s3_index_apply(
        self, source: str, updates: Iterable[tuple[str, S3Stamp | None]]
    ) -> None: ...

    def s3_index_range(
        self, source: str, after: str | None, upto: str | None, limit: int
    ) -> list[tuple[str, S3Stamp]]: ...


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one listing found. `baseline` is true when it recorded a baseline instead."""

    listed: int
    created: int = 0
    modified: int = 0
    deleted: int = 0
    seconds: float = 0.0
    baseline: bool = False

    @property
    def changes(self) -> int:
        return self.created + self.modified + self.deleted


class _Stopped(Exception):
    """The source was stopped during a listing."""


class S3PollSource:
    """A `Source` listing one bucket (or prefix) on a timer. See the module docstring.

    `client` is a boto3 S3 client; `index` the journal. `interval` is the pause between the end
    of one listing and the start of the next. `clock` stamps `Change.seen` (wall clock).
    """

    def __init__(
        self,
        name: str,
        sink: ChangeSink,
        client: Any,
        index: S3Index,
        *,
        bucket: str,
        prefix: str = "",
        interval: float = 300.0,
        compare: Literal["mtime", "content"] = "content",
        page_size: int = MAX_PAGE_SIZE,
        min_backoff: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # bucket and interval are checked by the config (S3PollSourceConfig).
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise SourceError(name, f"page_size must be 1-{MAX_PAGE_SIZE}, got {page_size}")
        if min_backoff <= 0:
            raise SourceError(name, f"min_backoff must be more than 0, got {min_backoff}")
        self.name = name
        self.bucket = bucket
        self.prefix = directory(prefix)
        self.interval = float(interval)
        #: "content": only a new ETag is a change (an object uploaded again with the same
        #: bytes keeps its ETag, not its LastModified); "mtime": either
        self.compare = compare
        self._sink = sink
        self._client = client
        self._index = index
        self._page_size = page_size
        self._min_backoff = min(min_backoff, self.interval)
        self._clock = clock
        self._log = log.bind(source=name, bucket=bucket)
        # `_lock` guards the bookkeeping below and makes "read an index range, compare, record
        # what is outstanding" atomic with respect to `acknowledge`.
        self._lock = threading.Lock()
        # `_deliver_lock` is held while delivering, so that stop() can promise no delivery
        # after it returns; never taken while `_lock` is held.
        self._deliver_lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one listing at a time
        self._stop_event = threading.Event()
        self._started = False
        self._stopped = False
        self._failures = 0
        self._sequence = itertools.count(1)
        #: receipt -> (sequence, key, stamp reported; None = deleted)
        self._receipts: dict[str, tuple[int, str, S3Stamp | None]] = {}
        #: key -> (receipt, stamp) of its newest change awaiting acknowledgement
        self._outstanding: dict[str, tuple[str, S3Stamp | None]] = {}
        self._thread: threading.Thread | None = None
        self.last_poll: PollResult | None = None

    # -- the Source contract ------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._started and not self._stopped and self._failures == 0

    def problem(self) -> str | None:
        """Why it is not listing, or None while it is."""
        with self._lock:
            if not self._started or self._stopped:
                return "not listing (not started or stopped)"
            if self._failures:
                return f"not listing: listings of s3://{self.bucket}/{self.prefix} keep failing"
        return None

    def start(self) -> None:
        """Check that the bucket can be listed, then poll in the background, at once (the
        first poll records the baseline if there is none). Raises `SourceError` if the bucket
        cannot be listed, or if started twice."""
        with self._lock:
            if self._started or self._stopped:
                raise SourceError(self.name, "start() called twice or after stop()")
            self._started = True
        try:
            self._client.list_objects_v2(**self._list_args(), MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            with self._lock:
                self._stopped = True
            raise SourceError(
                self.name, f"cannot list s3://{self.bucket}/{self.prefix}: {_describe(exc)}"
            ) from exc
        self._thread = threading.Thread(target=self._run, name=f"s3-poll-{self.name}", daemon=True)
        self._thread.start()
        self._log.info(
            "s3_poll_source_started",
            prefix=self.prefix,
            interval=self.interval,
            baseline=self._index.s3_baseline(self.name) is not None,
        )

    def stop(self) -> None:
        """Stop polling; returns once no more changes will be delivered. Idempotent."""
        self._stop_event.set()
        with self._deliver_lock, self._lock:
            self._stopped = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the polling thread to end (after `stop`); True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def acknowledge(self, receipts: Sequence[str]) -> None:
        """Record the acknowledged changes in the index, in one transaction, in the order they
        were found. Unknown receipts are ignored. If the journal write fails the receipts stay
        known, so the pipeline's retry of the acknowledgement records them."""
        with self._lock:
            known = sorted(
                (self._receipts[r], r) for r in dict.fromkeys(receipts) if r in self._receipts
            )
            if not known:
                return
            self._index.s3_index_apply(self.name, [(key, stamp) for (_, key, stamp), _ in known])
            for (_, key, _stamp), receipt in known:
                del self._receipts[receipt]
                if self._outstanding.get(key, ("",))[0] == receipt:
                    del self._outstanding[key]

    # -- polling ------------------------------------------------------------------------------

    def poll(self) -> PollResult:
        """List the bucket once: record a baseline if there is none (or the bucket or prefix
        changed), else deliver the differences from the index. Raises botocore errors, and
        SourceError for a listing out of order or a stop during the listing; what was delivered
        before stays delivered."""
        with self._poll_lock:
            started = time.monotonic()
            recorded = self._index.s3_baseline(self.name)
            try:
                if recorded != (self.bucket, self.prefix):
                    result = self._record_baseline(recorded, started)
                else:
                    result = self._diff(started)
            except _Stopped:
                raise SourceError(self.name, "stopped during a listing") from None
            self.last_poll = result
            return result

    def _run(self) -> None:
        wait = 0.0
        while not self._stop_event.wait(wait):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the poller must outlive any failure
                if self._stop_event.is_set():
                    return
                with self._lock:
                    self._failures += 1
                    failures = self._failures
                wait = min(self.interval, self._min_backoff * 2 ** min(failures - 1, 16))
                self._log.warning(
                    "s3_poll_failed",
                    prefix=self.prefix,
                    code=_code(exc),
                    error=_describe(exc),
                    failures=failures,
                    retry_in=wait,
                    exc_info=not isinstance(exc, ClientError | BotoCoreError | SourceError),
                )
                continue
            with self._lock:
                failures, self._failures = self._failures, 0
            if failures:
                self._log.info("s3_poll_recovered", failures=failures)
            wait = self.interval

    def _record_baseline(self, previous: tuple[str, str] | None, started: float) -> PollResult:
        self._index.s3_baseline_start(self.name)
        with self._lock:
            self._receipts.clear()
            self._outstanding.clear()
        count = 0
        for page in self._pages():
            entries = [(key, stamp) for key, stamp in page if key != self.prefix]
            self._index.s3_index_apply(self.name, entries)
            count += len(entries)
        self._index.s3_baseline_done(self.name, self.bucket, self.prefix)
        seconds = round(time.monotonic() - started, 3)
        self._log.info(
            "s3_baseline_recorded",
            prefix=self.prefix,
            objects=count,
            seconds=seconds,
            replaced=None if previous is None else f"s3://{previous[0]}/{previous[1]}",
        )
        return PollResult(listed=count, seconds=seconds, baseline=True)

    def _diff(self, started: float) -> PollResult:
        seen = self._clock()
        counts = dict.fromkeys(ChangeKind, 0)
        listed = 0
        after: str | None = None  # every key up to here (inclusive) has been compared
        for page in self._pages():
            page = [(key, stamp) for key, stamp in page if key != self.prefix]
            if not page:
                continue
            listed += len(page)
            upto = page[-1][0]
            with self._lock:
                found = self._compare(page, self._indexed(after, upto))
            self._deliver(found, seen, counts)
            after = upto
        with self._lock:  # indexed keys after the last one listed are gone
            found = self._compare([], self._indexed(after, None))
        self._deliver(found, seen, counts)
        result = PollResult(
            listed=listed,
            created=counts[ChangeKind.CREATED],
            modified=counts[ChangeKind.MODIFIED],
            deleted=counts[ChangeKind.DELETED],
            seconds=round(time.monotonic() - started, 3),
        )
        self._log.info(
            "s3_poll_done",
            prefix=self.prefix,
            listed=result.listed,
            created=result.created,
            modified=result.modified,
            deleted=result.deleted,
            seconds=result.seconds,
        )
        return result

    def _indexed(self, after: str | None, upto: str | None) -> Iterator[tuple[str, S3Stamp]]:
        """The index rows in (after, upto], in key order, read a chunk at a time."""
        while True:
            rows = self._index.s3_index_range(self.name, after, upto, INDEX_CHUNK)
            yield from rows
            if len(rows) < INDEX_CHUNK:
                return
            after = rows[-1][0]

    def _compare(
        self, listed: list[tuple[str, S3Stamp]], indexed: Iterator[tuple[str, S3Stamp]]
    ) -> list[tuple[str, ChangeKind, str]]:
        """Caller holds `_lock`. Merge one sorted page with the index rows of its key range;
        register each difference as outstanding and return (key, kind, receipt) for each."""
        found: list[tuple[str, ChangeKind, str]] = []

        def report(key: str, kind: ChangeKind, stamp: S3Stamp | None) -> None:
            sequence = next(self._sequence)
            receipt = f"{self.name}#{sequence}"
            self._receipts[receipt] = (sequence, key, stamp)
            self._outstanding[key] = (receipt, stamp)
            found.append((key, kind, receipt))

        def known(key: str, indexed_stamp: S3Stamp | None) -> S3Stamp | None:
            """What the daemon last recorded or reported of `key` (None = absent)."""
            pending = self._outstanding.get(key)
            return indexed_stamp if pending is None else pending[1]

        content = self.compare == "content"
        row = next(indexed, None)
        for key, stamp in listed:
            while row is not None and row[0] < key:  # indexed, not listed: deleted
                if known(row[0], row[1]) is not None:
                    report(row[0], ChangeKind.DELETED, None)
                row = next(indexed, None)
            indexed_stamp = None
            if row is not None and row[0] == key:
                indexed_stamp = row[1]
                row = next(indexed, None)
            before = known(key, indexed_stamp)
            if before is None:
                report(key, ChangeKind.CREATED, stamp)
            elif before.etag != stamp.etag if content else before != stamp:
                report(key, ChangeKind.MODIFIED, stamp)
        while row is not None:
            if known(row[0], row[1]) is not None:
                report(row[0], ChangeKind.DELETED, None)
            row = next(indexed, None)
        return found

    def _deliver(
        self,
        found: list[tuple[str, ChangeKind, str]],
        seen: float,
        counts: dict[ChangeKind, int],
    ) -> None:
        if not found:
            return
        with self._deliver_lock:
            if self._stopped:
                # Not delivered, so never acknowledged: the index keeps the old state and the
                # next start finds these changes again.
                raise _Stopped
            for key, kind, receipt in found:
                counts[kind] += 1
                path = key[len(self.prefix) :]
                try:
                    self._sink(Change(self.name, path, kind, seen, receipt=receipt))
                except Exception as exc:  # noqa: BLE001 - the sink promises not to raise
                    self._log.error("s3_sink_failed", path=path, error=repr(exc), exc_info=True)
                    with self._lock:  # forget it: the next poll reports it again
                        self._receipts.pop(receipt, None)
                        if self._outstanding.get(key, ("",))[0] == receipt:
                            del self._outstanding[key]

    def _list_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.prefix:
            args["Prefix"] = self.prefix
        return args

    def _pages(self) -> Iterator[list[tuple[str, S3Stamp]]]:
        """The listing, one page at a time, checked to be in strictly ascending key order."""
        args = self._list_args()
        args["MaxKeys"] = self._page_size
        last: str | None = None
        while True:
            if self._stop_event.is_set():
                raise _Stopped
            response = self._client.list_objects_v2(**args)
            page: list[tuple[str, S3Stamp]] = []
            for obj in response.get("Contents") or ():
                key = str(obj["Key"])
                if last is not None and key <= last:
                    raise SourceError(
                        self.name,
                        f"ListObjectsV2 returned {key!r} after {last!r}: keys must come in "
                        "ascending UTF-8 order, as S3 lists them",
                    )
                last = key
                page.append((key, S3Stamp(str(obj["ETag"]), obj["LastModified"].timestamp())))
            yield page
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token
