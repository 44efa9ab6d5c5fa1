"""S3 event notifications delivered through SQS (directly, via SNS, or via EventBridge).

Satisfies `contracts.Source`. The guarantees, in plain words:

- **Nothing is lost.** A message is deleted from the queue only after the pipeline has
  acknowledged every change it produced (`acknowledge`, called once they are committed to the
  journal), or right away when it produced no change at all (an `s3:TestEvent`, an SNS
  subscription confirmation, events of another bucket or outside the prefix, events that do not
  count such as restores). A message that cannot be parsed is logged (`sqs_message_malformed`)
  and left alone: it comes back after its visibility timeout and the queue's redrive policy
  moves it to the dead-letter queue in the end.
- **At least once, never forever.** While its changes are in the pipeline a message is kept
  invisible: a heartbeat extends its visibility timeout at half of it. If it comes back anyway
  (the heartbeat could not reach SQS, or SQS's 12-hour limit on visibility passed) its changes
  are delivered again: a duplicate invalidation costs little, a missed one serves stale content.
- **Receipts.** Every delivered `Change` carries its own receipt (`"<MessageId>#<n>.<i>"`), so
  the pipeline may acknowledge distinct receipts in any grouping (the debouncer hands back each
  distinct receipt once per flush); the message is deleted once all receipts of one delivery of
  it are acknowledged. Unknown receipts are ignored.
- **Never crashes.** SQS errors are logged and retried with exponential backoff;
  `healthy` is false while receives keep failing. A failure of the sink is logged and the
  message is no longer extended, so it comes back after its visibility timeout.
- **Stop.** `stop()` returns once no more changes will be delivered. It stops the heartbeat (held
  messages become visible again after their timeout and are redelivered to the next consumer),
  hands back at once any message received after the stop (visibility 0) and deletes what was
  already acknowledged. Receivers inside a long poll finish it in the background; `join` waits
  for them. `acknowledge` still deletes after `stop` (the daemon flushes after stopping its
  sources), synchronously then.

Keys: `bucket` (if set) keeps only that bucket's events; `prefix` (if set) is a directory:
`site` and `site/` both keep `site/a.html` as the path `a.html` and drop `site/` itself and
`site-old/a.html`.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from invalidatord.contracts import ChangeSink
from invalidatord.errors import SourceError
from invalidatord.model import Change, ChangeKind, S3Stamp
from invalidatord.s3events import KeyFilter, MalformedMessage, excerpt, parse_message
from invalidatord.sources._aws import describe as _describe
from invalidatord.sources._aws import error_code as _code

__all__ = ["SqsSource"]

log = structlog.get_logger(__name__)


class EtagIndex(Protocol):
    """The part of the journal `compare: content` needs (`journal.Journal` has it)."""

    def s3_index_get(self, source: str, keys: Sequence[str]) -> dict[str, S3Stamp]: ...

    def s3_index_apply(
        self, source: str, updates: Sequence[tuple[str, S3Stamp | None]]
    ) -> None: ...


#: SQS API limits.
MAX_BATCH = 10  # messages per ReceiveMessage, entries per *Batch call
#: Log excerpts of message bodies are at most this long.
EXCERPT_CHARS = 200
#: `healthy` turns false after this many receive attempts in a row failed.
UNHEALTHY_AFTER_FAILURES = 2
#: Receipt handles SQS will never accept again: retrying a delete or an extension is pointless.
_GONE_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidReceiptHandle",
        "MessageNotInflight",
        "InvalidParameterValue",
    }
)


@dataclass(slots=True)
class _Held:
    """One SQS message this source has not finished with."""

    message_id: str
    handle: str  # the newest receipt handle (only the newest one is sure to work)
    extend_at: float  # monotonic time of the next visibility extension
    #: delivery number -> receipts of that delivery not yet acknowledged
    deliveries: dict[int, set[str]] = field(default_factory=dict)
    #: set once the message may be deleted; then `retry_at` paces the delete attempts
    deleting: bool = False
    retry_at: float = 0.0
    attempts: int = 0


class SqsSource:
    """A `Source` reading S3 events from one SQS queue. See the module docstring.

    `client` is a boto3 SQS client (thread-safe; its retry configuration applies to each call).
    `wait_time` is the long-poll duration (whole seconds, 0-20), `visibility_timeout` how long a
    received message stays invisible before the heartbeat extends it (whole seconds, at least 1),
    `receivers` the number of polling threads. `clock` stamps `Change.seen` (wall clock).
    `min_backoff`/`max_backoff` bound the exponential wait after a failed SQS call.
    """

    def __init__(
        self,
        name: str,
        sink: ChangeSink,
        client: Any,
        *,
        queue_url: str,
        bucket: str | None = None,
        prefix: str = "",
        wait_time: float = 20.0,
        visibility_timeout: float = 60.0,
        receivers: int = 2,
        clock: Callable[[], float] = time.time,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        compare: Literal["mtime", "content"] = "content",
        index: EtagIndex | None = None,
    ) -> None:
        """`compare: content` with an `index` (the journal): an object created with the ETag
        the index has for its key is the same bytes uploaded again, and not a change; the
        index learns each key's ETag once its change is committed (`acknowledge`)."""
        # queue_url, wait_time, visibility_timeout and receivers are checked by the config
        # (SqsSourceConfig), the one place that names the key and line of a bad value.
        if not 0 < min_backoff <= max_backoff:
            raise SourceError(
                name, f"backoff must satisfy 0 < min <= max, got {min_backoff}, {max_backoff}"
            )
        self.name = name
        self.queue_url = queue_url
        self.keys = KeyFilter.of(bucket, prefix)
        self.prefix = self.keys.prefix
        self._sink = sink
        self._client = client
        self._wait = int(wait_time)
        self._visibility = math.ceil(visibility_timeout)
        self._receivers = receivers
        self._clock = clock
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._log = log.bind(source=name)
        self.compare = compare
        self._index = index if compare == "content" else None
        # receipt -> (path, its ETag; None = deleted or not said), for the index
        self._stamps: dict[str, tuple[str, str | None]] = {}

        # State. `_lock` guards everything below; it is never held while calling the sink or
        # SQS. `_deliver_lock` makes "not stopped, deliver" atomic against `stop()`.
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._receipts: dict[str, tuple[str, int]] = {}  # receipt -> (message id, delivery)
        self._deliveries = itertools.count(1)
        self._failures = 0  # receive attempts failed in a row
        self._started = False
        self._stopped = False
        self._stop_event = threading.Event()
        self._wake = threading.Event()  # wakes the keeper early (new deletes, stop)
        self._threads: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None

    # -- the Source contract -------------------------------------------------------------------

    def start(self) -> None:
        """Check that the queue answers, then start polling. Raises `SourceError` if it does
        not (missing queue, no permission, unreachable endpoint) or if started before."""
        with self._lock:
            if self._started or self._stopped:
                raise SourceError(self.name, "start() called twice or after stop()")
            self._started = True
        try:
            self._client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["VisibilityTimeout"]
            )
        except (ClientError, BotoCoreError) as exc:
            with self._lock:
                self._stopped = True
            raise SourceError(
                self.name, f"cannot read SQS queue {self.queue_url}: {_describe(exc)}"
            ) from exc
        self._keeper = threading.Thread(
            target=self._keep_loop, name=f"sqs-keeper-{self.name}", daemon=True
        )
        self._keeper.start()
        for i in range(self._receivers):
            thread = threading.Thread(
                target=self._receive_loop, name=f"sqs-receiver-{self.name}-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._log.info(
            "sqs_source_started",
            queue_url=self.queue_url,
            bucket=self.keys.bucket,
            prefix=self.prefix,
            receivers=self._receivers,
            visibility_timeout=self._visibility,
        )

    def stop(self) -> None:
        """Stop receiving and delivering; returns once no more changes will be delivered.
        Held messages are no longer extended (they will be redelivered); acknowledged ones are
        deleted now. Idempotent."""
        with self._deliver_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_event.set()
        self._wake.set()
        if self._keeper is not None:
            # the keeper finishes its current SQS call (if any) and exits
            self._keeper.join()
        self._delete_due(force=True)
        with self._lock:
            held = sum(1 for h in self._held.values() if not h.deleting)
            undeleted = len(self._held) - held
        self._log.info("sqs_source_stopped", held=held, undeleted=undeleted)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the receiver threads to finish their last long poll after `stop()`.
        True once they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._threads)

    @property
    def healthy(self) -> bool:
        """True while started, not stopped, and receives are not failing repeatedly."""
        with self._lock:
            return self._started and not self._stopped and self._failures < UNHEALTHY_AFTER_FAILURES

    def problem(self) -> str | None:
        """Why it is not receiving, or None while it is."""
        with self._lock:
            if not self._started or self._stopped:
                return "not receiving (not started or stopped)"
            if self._failures >= UNHEALTHY_AFTER_FAILURES:
                return f"not receiving: SQS calls to {self.queue_url} keep failing"
        return None

    def acknowledge(self, receipts: Sequence[str]) -> None:
        """The changes carrying `receipts` are committed. Deletes each message all of whose
        receipts (of one delivery) are now acknowledged: in the background while running, at
        once after `stop()`. Unknown or repeated receipts are ignored. Never raises."""
        completed = 0
        learned: list[tuple[str, S3Stamp | None]] = []
        with self._lock:
            for receipt in receipts:
                stamp = self._stamps.pop(receipt, None)
                if stamp is not None:
                    path, etag = stamp
                    learned.append((path, None if etag is None else S3Stamp(etag, self._clock())))
                owner = self._receipts.pop(receipt, None)
                if owner is None:
                    continue
                message_id, delivery = owner
                held = self._held.get(message_id)
                if held is None or held.deleting:
                    continue
                pending = held.deliveries.get(delivery)
                if pending is None:
                    continue
                pending.discard(receipt)
                if not pending:
                    self._mark_deletable(held)
                    completed += 1
            stopped = self._stopped
        if learned and self._index is not None:
            try:
                self._index.s3_index_apply(self.name, learned)
            except Exception as exc:  # noqa: BLE001 - a lost ETag costs one extra invalidation
                self._log.warning("sqs_etag_index_failed", error=f"{type(exc).__name__}: {exc}")
        if not completed:
            return
        if stopped:
            self._delete_due(force=True)
        else:
            self._wake.set()

    # -- receiving -----------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        delay = self._min_backoff
        while not self._stop_event.is_set():
            try:
                response = self._client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=MAX_BATCH,
                    WaitTimeSeconds=self._wait,
                    VisibilityTimeout=self._visibility,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
            except Exception as exc:  # noqa: BLE001 - ClientError, BotoCoreError, or a surprise:
                # a receiver must outlive all of them
                self._receive_failed(exc, delay)
                self._stop_event.wait(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            delay = self._min_backoff
            self._receive_succeeded()
            messages = response.get("Messages") or []
            if messages:
                received_at = time.monotonic()
                seen = self._clock()
                for message in messages:
                    try:
                        self._handle(message, seen, received_at)
                    except Exception as exc:  # noqa: BLE001 - one message must not stop the rest
                        self._log.error(
                            "sqs_message_failed",
                            message_id=message.get("MessageId"),
                            error=repr(exc),
                            exc_info=True,
                        )

    def _receive_failed(self, exc: Exception, retry_in: float) -> None:
        with self._lock:
            self._failures += 1
            failures = self._failures
        self._log.warning(
            "sqs_receive_failed",
            queue_url=self.queue_url,
            code=_code(exc),
            error=_describe(exc),
            failures=failures,
            retry_in=retry_in,
        )

    def _receive_succeeded(self) -> None:
        with self._lock:
            failures, self._failures = self._failures, 0
        if failures:
            self._log.info("sqs_receive_recovered", queue_url=self.queue_url, failures=failures)

    def _handle(self, message: dict[str, Any], seen: float, received_at: float) -> None:
        message_id = str(message.get("MessageId", ""))
        handle = str(message.get("ReceiptHandle", ""))
        body = message.get("Body", "")
        if not message_id or not handle:
            self._log.error(
                "sqs_message_unusable", message_id=message_id, excerpt=excerpt(body, EXCERPT_CHARS)
            )
            return
        if self._stopped:
            self._release([(message_id, handle)])
            return
        try:
            events = parse_message(body if isinstance(body, str) else "")
        except MalformedMessage as exc:
            self._log.warning(
                "sqs_message_malformed",
                message_id=message_id,
                reason=str(exc),
                excerpt=excerpt(body, EXCERPT_CHARS),
                receive_count=_receive_count(message),
            )
            return

        paths: dict[tuple[str, ChangeKind], None] = {}  # ordered, without duplicates
        etags: dict[str, str | None] = {}
        for event in events:
            path, why = self.keys.path_of(event.bucket, event.key)
            if path is None:
                self._log.debug(
                    "sqs_event_ignored",
                    message_id=message_id,
                    bucket=event.bucket,
                    key=event.key,
                    event_name=event.event_name,
                    reason=why,
                )
                continue
            paths[(path, event.kind)] = None
            etags[path] = event.etag if event.kind is ChangeKind.CREATED else None
        if self._index is not None and paths:
            paths = self._drop_unchanged(message_id, paths, etags)

        with self._deliver_lock:
            if self._stopped:
                release = True
            else:
                release = False
                changes = self._register(message_id, handle, received_at, seen, list(paths))
                if self._index is not None:
                    with self._lock:
                        for change in changes:
                            if change.receipt is not None:
                                self._stamps[change.receipt] = (change.path, etags[change.path])
                # The sink is called with `_deliver_lock` held (so `stop()` can promise that
                # nothing is delivered after it returns) but never with `_lock` held (so an
                # `acknowledge` from the pipeline can never wait on a sink call).
                for change in changes:
                    self._deliver(change, message_id)
        if release:
            self._release([(message_id, handle)])

    def _drop_unchanged(
        self,
        message_id: str,
        paths: dict[tuple[str, ChangeKind], None],
        etags: dict[str, str | None],
    ) -> dict[tuple[str, ChangeKind], None]:
        """The events of `paths` less the objects created with the ETag the index has."""
        assert self._index is not None
        try:
            known = self._index.s3_index_get(self.name, [p for p, _ in paths])
        except Exception as exc:  # noqa: BLE001 - unsure: deliver, an extra path is harmless
            self._log.warning("sqs_etag_index_failed", error=f"{type(exc).__name__}: {exc}")
            return paths
        kept: dict[tuple[str, ChangeKind], None] = {}
        for path, kind in paths:
            etag = etags.get(path)
            stamp = known.get(path)
            if (
                kind is ChangeKind.CREATED
                and etag is not None
                and stamp is not None
                and stamp.etag.strip('"') == etag
            ):
                self._log.debug("sqs_event_unchanged", message_id=message_id, path=path, etag=etag)
                continue
            kept[(path, kind)] = None
        return kept

    def _register(
        self,
        message_id: str,
        handle: str,
        received_at: float,
        seen: float,
        paths: list[tuple[str, ChangeKind]],
    ) -> list[Change]:
        """Record one delivery of a message and return the changes to deliver for it."""
        with self._lock:
            held = self._held.get(message_id)
            if held is None:
                held = _Held(message_id, handle, received_at + self._visibility / 2)
                self._held[message_id] = held
            else:
                # Delivered again while still held: SQS's newest handle is the one that works.
                held.handle = handle
                held.extend_at = received_at + self._visibility / 2
                self._log.info(
                    "sqs_message_redelivered",
                    message_id=message_id,
                    deleting=held.deleting,
                    deliveries=len(held.deliveries),
                )
            if held.deleting:
                # Already acknowledged (or empty): only the delete is left to do.
                held.retry_at = 0.0
                self._wake.set()
                return []
            if not paths:
                self._mark_deletable(held)
                self._wake.set()
                return []
            delivery = next(self._deliveries)
            receipts = [f"{message_id}#{delivery}.{i}" for i in range(len(paths))]
            held.deliveries[delivery] = set(receipts)
            for receipt in receipts:
                self._receipts[receipt] = (message_id, delivery)
        return [
            Change(self.name, path, kind, seen, receipt=receipt)
            for (path, kind), receipt in zip(paths, receipts, strict=True)
        ]

    def _deliver(self, change: Change, message_id: str) -> None:
        try:
            self._sink(change)
        except Exception as exc:  # noqa: BLE001 - the sink promises not to raise; survive if it does
            # The change is not in the pipeline, so this delivery can never be fully
            # acknowledged: stop extending the message so that it comes back after its timeout.
            self._log.error(
                "sqs_sink_failed",
                message_id=message_id,
                path=change.path,
                error=repr(exc),
                exc_info=True,
            )
            with self._lock:
                held = self._held.get(message_id)
                if held is not None and not held.deleting:
                    held.extend_at = math.inf

    def _mark_deletable(self, held: _Held) -> None:
        """Caller holds `_lock`. Forget the message's outstanding receipts; queue its delete."""
        for pending in held.deliveries.values():
            for receipt in pending:
                self._receipts.pop(receipt, None)
        held.deliveries.clear()
        held.deleting = True
        held.retry_at = 0.0

    # -- the keeper: visibility heartbeat and deletes -----------------------------------------

    def _keep_loop(self) -> None:
        while not self._stop_event.is_set():
            # cleared before the work, so a wake-up arriving during it is not lost
            self._wake.clear()
            try:
                self._extend_due()
                self._delete_due(force=False)
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any surprise
                self._log.error("sqs_keeper_failed", error=repr(exc), exc_info=True)
            self._wake.wait(self._next_wake())

    def _next_wake(self) -> float:
        now = time.monotonic()
        longest = max(0.05, self._visibility / 4)
        with self._lock:
            times = [h.retry_at if h.deleting else h.extend_at for h in self._held.values()]
        if not times:
            return longest
        return min(longest, max(0.01, min(times) - now))

    def _extend_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [
                (h.message_id, h.handle)
                for h in self._held.values()
                if not h.deleting and h.extend_at <= now
            ]
        for batch in _batches(due):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": self._visibility}
                for i, (_, handle) in enumerate(batch)
            ]
            try:
                response = self._client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except (ClientError, BotoCoreError) as exc:
                self._log.warning(
                    "sqs_visibility_extend_failed",
                    messages=len(batch),
                    code=_code(exc),
                    error=_describe(exc),
                )
                failed = {str(i): _code(exc) for i in range(len(batch))}
            else:
                failed = {}
                for failure in response.get("Failed", []):
                    entry_id = str(failure.get("Id"))
                    failed[entry_id] = str(failure.get("Code", ""))
                    self._log.warning(
                        "sqs_visibility_extend_failed",
                        message_id=batch[int(entry_id)][0],
                        code=failed[entry_id],
                        error=failure.get("Message"),
                    )
            with self._lock:
                for i, (message_id, handle) in enumerate(batch):
                    held = self._held.get(message_id)
                    if held is None or held.handle != handle:
                        continue
                    code = failed.get(str(i))
                    if code is None:
                        held.extend_at = now + self._visibility / 2
                    elif code in _GONE_CODES:
                        # This handle will never work again (delivered elsewhere, or past
                        # SQS's 12-hour limit): the message comes back to some receiver,
                        # and a redelivery here brings a fresh handle.
                        held.extend_at = now + self._visibility
                    else:
                        # try again soon, well before the current timeout runs out
                        held.extend_at = now + min(self._min_backoff, self._visibility / 4)

    def _delete_due(self, *, force: bool) -> None:
        """Delete the deletable messages whose retry time has come (all of them if `force`)."""
        now = time.monotonic()
        with self._lock:
            due = [
                (h.message_id, h.handle)
                for h in self._held.values()
                if h.deleting and (force or h.retry_at <= now)
            ]
        for batch in _batches(due):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle} for i, (_, handle) in enumerate(batch)
            ]
            gone: set[str] = set()
            retry: dict[str, str] = {}
            try:
                response = self._client.delete_message_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except (ClientError, BotoCoreError) as exc:
                self._log.warning(
                    "sqs_delete_failed", messages=len(batch), code=_code(exc), error=_describe(exc)
                )
                retry = {str(i): _code(exc) for i in range(len(batch))}
            else:
                for failure in response.get("Failed", []):
                    entry_id = str(failure.get("Id"))
                    code = str(failure.get("Code", ""))
                    message_id = batch[int(entry_id)][0]
                    permanent = code in _GONE_CODES
                    self._log.warning(
                        "sqs_delete_failed",
                        message_id=message_id,
                        code=code,
                        error=failure.get("Message"),
                        will_retry=not permanent,
                    )
                    if permanent:
                        gone.add(entry_id)
                    else:
                        retry[entry_id] = code
            with self._lock:
                for i, (message_id, handle) in enumerate(batch):
                    held = self._held.get(message_id)
                    if held is None or held.handle != handle:
                        continue  # redelivered meanwhile: the new handle gets its own attempt
                    if str(i) in retry:
                        held.attempts += 1
                        backoff = self._min_backoff * 2 ** min(held.attempts - 1, 16)
                        held.retry_at = now + min(backoff, self._max_backoff)
                    else:
                        # deleted, or SQS says this handle can never delete it (the message
                        # was delivered elsewhere meanwhile): nothing more this source can do
                        del self._held[message_id]

    def _release(self, messages: list[tuple[str, str]]) -> None:
        """Make messages received after `stop()` visible again at once, for the next consumer.
        Best effort: if this fails they become visible after their timeout anyway."""
        entries = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for i, (_, handle) in enumerate(messages)
        ]
        try:
            self._client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            self._log.info("sqs_release_failed", messages=len(messages), error=_describe(exc))


def _batches(items: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    return [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]


def _receive_count(message: dict[str, Any]) -> int | None:
    value = (message.get("Attributes") or {}).get("ApproximateReceiveCount")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
