"""A fleet of origins: publishers hand URL changes to an SQS FIFO queue, invalidators take them.

Each origin host of a fleet (the same document root on every web server) runs a *publisher*:
its pipeline accepts URL paths into the journal's outbox instead of `pending`, and
`FleetPublisher` sends them to the queue. One message per (distribution, URL path, version of
the file); `MessageGroupId` is the CloudFront distribution id and `MessageDeduplicationId` a
hash of the three, so the same deploy reported by every host is one message as far as SQS
deduplicates (five minutes). Publishers never call CloudFront.

One or two hosts run an *invalidator*: `FleetConsumer` receives the messages, queues their
paths in the journal as a single daemon's pipeline does, and the usual planner and submitter
send them to CloudFront. It deduplicates again, in its journal, for `fleet.dedup_window`
(hosts finish deploys minutes apart, more than SQS remembers).

The guarantees, in plain words:

- **Never lost.** An outbox entry leaves the outbox only once SQS has accepted it
  (`SendMessageBatch` names it in `Successful`); while SQS cannot be reached the entries stay,
  `/healthz` says so and `invalidatord_fleet_outbox_paths` counts them, and they are sent when
  it answers again, after a restart too. The consumer deletes a message only after the
  transaction that queued its path (or found it a duplicate) has committed; a message it cannot
  read is left alone, comes back after its visibility timeout and ends in the dead-letter queue.
- **At least once.** A message received twice (a consumer died before deleting it, two
  invalidators) costs at most one more invalidation of its path, never a missed one.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from invalidatord.journal import Accepted, FleetItem, Journal, OutboxEntry
from invalidatord.metrics import Metrics
from invalidatord.sources._aws import describe as _describe
from invalidatord.sources._aws import error_code as _code

log = structlog.get_logger(__name__)

#: SQS limits: entries per SendMessageBatch / ReceiveMessage / DeleteMessageBatch, and the
#: total payload of one SendMessageBatch.
MAX_BATCH = 10
MAX_BATCH_BYTES = 256 * 1024
#: The message format; an invalidator refuses (leaves in the queue) what it does not know.
FORMAT_VERSION = 1
#: Backoff while SQS cannot be reached, in seconds.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
#: How many send failures in a row make `/healthz` say the publisher is not sending.
UNHEALTHY_AFTER_FAILURES = 2


def dedup_id(distribution_id: str, path: str, fingerprint: str) -> str:
    """The MessageDeduplicationId of one change: equal on every host that saw the same version
    of the same file (SQS allows at most 128 characters; a SHA-256 in hex is 64)."""
    text = "\n".join((distribution_id, path, fingerprint))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def encode(entry: OutboxEntry, distribution_id: str, host: str) -> str:
    """The message body of one outbox entry."""
    return json.dumps(
        {
            "v": FORMAT_VERSION,
            "distribution_id": distribution_id,
            "path": entry.path,
            "fingerprint": entry.fingerprint,
            "first_seen": entry.first_seen,
            "origin": f"{host}:{entry.origin}",
        },
        separators=(",", ":"),
    )


def decode(body: str) -> tuple[str, Accepted]:
    """(distribution id, the path as `Accepted` with the distribution left to the caller).
    Raises ValueError naming what is wrong."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
        raise ValueError(f"not a fleet message of format {FORMAT_VERSION}")
    dist, path, fp = data.get("distribution_id"), data.get("path"), data.get("fingerprint")
    first_seen = data.get("first_seen")
    if not (isinstance(dist, str) and isinstance(path, str) and path.startswith("/")):
        raise ValueError("distribution_id and an absolute path are required")
    if not isinstance(fp, str) or not isinstance(first_seen, int | float):
        raise ValueError("fingerprint and first_seen are required")
    origin = str(data.get("origin", ""))
    return dist, Accepted("", path, float(first_seen), f"fleet:{origin}", fp)


class FleetPublisher:
    """Sends the journal's outbox to the fleet queue, on its own thread.

    `wake()` is called by the pipeline after each accepted flush; the thread also looks at the
    outbox every `interval` seconds, so entries left by an earlier process go out too."""

    def __init__(
        self,
        *,
        client: Any,
        journal: Journal,
        queue_url: str,
        distribution_ids: Mapping[str, str],
        metrics: Metrics,
        interval: float = 1.0,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._journal = journal
        self.queue_url = queue_url
        self._ids = dict(distribution_ids)
        self._metrics = metrics
        self._interval = interval
        self._host = host or socket.gethostname()
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # sends: the thread's, or the drain's after it stopped
        self._failures = 0
        self._last_error: str | None = None
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-publisher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def drain(self, deadline: float) -> bool:
        """Send what is in the outbox until it is empty (True) or `deadline` (monotonic) passes
        or SQS fails (False: the rest stays in the outbox for the next start)."""
        while time.monotonic() < deadline:
            outcome = self.send_some()
            if outcome is None:
                return True
            if not outcome:
                return False
        return self._journal.outbox_summary()[0] == 0

    def problem(self) -> str | None:
        """Why the publisher is not handing changes to SQS, or None."""
        with self._lock:
            failures, error = self._failures, self._last_error
        if failures < UNHEALTHY_AFTER_FAILURES or error is None:
            return None
        try:
            kept = self._journal.outbox_summary()[0]
        except Exception:  # noqa: BLE001 - health must answer even with the journal closed
            kept = -1
        return f"cannot send to {self.queue_url} ({error}); {kept} URL paths kept in the outbox"

    @property
    def healthy(self) -> bool:
        return self.problem() is None

    def outbox(self) -> int:
        return self._journal.outbox_summary()[0]

    def _run(self) -> None:
        delay = _FIRST_BACKOFF
        while not self._stop.is_set():
            try:
                outcome = self.send_some()
            except Exception:  # the thread must outlive anything; the outbox keeps the work
                log.exception("fleet_publisher_error")
                outcome = False
            if outcome is None:  # empty: wait for the pipeline or the interval
                delay = _FIRST_BACKOFF
                self._wake.wait(self._interval)
                self._wake.clear()
            elif not outcome:
                self._stop.wait(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            else:
                delay = _FIRST_BACKOFF

    def send_some(self) -> bool | None:
        """Send one SendMessageBatch from the head of the outbox. None: the outbox is empty;
        True: SQS took at least one entry; False: it took none (the entries stay)."""
        with self._lock:
            entries = self._journal.outbox_peek(MAX_BATCH)
            if not entries:
                return None
            batch: list[dict[str, str]] = []
            size = 0
            for entry in entries:
                distribution_id = self._ids.get(entry.distribution)
                if distribution_id is None:
                    # Configured away since it was accepted (a reload): no queue can take it.
                    log.warning(
                        "fleet_entry_dropped",
                        distribution=entry.distribution,
                        path=entry.path,
                        reason="the distribution is no longer configured",
                    )
                    self._journal.outbox_remove([entry.id])
                    continue
                body = encode(entry, distribution_id, self._host)
                item = {
                    "Id": str(entry.id),
                    "MessageBody": body,
                    "MessageGroupId": distribution_id,
                    "MessageDeduplicationId": dedup_id(
                        distribution_id, entry.path, entry.fingerprint
                    ),
                }
                grows = len(body.encode()) + 200  # the entry's other fields, generously
                if batch and size + grows > MAX_BATCH_BYTES:
                    break
                batch.append(item)
                size += grows
            if not batch:
                return True
            try:
                response = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=batch)
            except (ClientError, BotoCoreError) as exc:
                self._send_failed(exc, len(batch))
                return False
            taken = [int(item["Id"]) for item in response.get("Successful", [])]
            for failure in response.get("Failed", []):
                log.warning(
                    "fleet_entry_refused",
                    entry=failure.get("Id"),
                    code=failure.get("Code"),
                    error=failure.get("Message"),
                    sender_fault=failure.get("SenderFault"),
                    kept=True,
                )
            if taken:
                self._journal.outbox_remove(taken, {"fleet_sent": len(taken)})
                self.sent += len(taken)
                self._metrics.fleet_sent.inc(len(taken))
                recovered = self._failures
                self._failures, self._last_error = 0, None
                if recovered:
                    log.info("fleet_send_recovered", queue_url=self.queue_url, failures=recovered)
                log.info(
                    "fleet_sent",
                    messages=len(taken),
                    refused=len(batch) - len(taken),
                    sample=[e.path for e in entries[:3]],
                )
                return True
            self._failures += 1
            self._last_error = "every entry refused"
            return False

    def _send_failed(self, exc: Exception, entries: int) -> None:
        self._failures += 1
        self._last_error = _describe(exc)
        self._metrics.fleet_send_errors.labels(_code(exc)).inc()
        log.warning(
            "fleet_send_failed",
            queue_url=self.queue_url,
            code=_code(exc),
            error=_describe(exc),
            entries=entries,
            failures=self._failures,
            kept=True,
        )


class FleetConsumer:
    """Receives a fleet queue's messages and queues their paths in the journal, on its own
    thread. `on_accepted` (the submitter's wake) is called when the queue has been drained for
    now or `max_delay` after the first path queued since the last call, so a deploy reported
    message by message is still planned as a few batches, not one per ten messages."""

    def __init__(
        self,
        *,
        client: Any,
        journal: Journal,
        queue_url: str,
        distributions: Mapping[str, str],
        metrics: Metrics,
        dedup_window: float,
        on_accepted: Callable[[], None],
        wait_time: float = 20.0,
        visibility_timeout: float = 60.0,
        max_delay: float = 5.0,
    ) -> None:
        self._client = client
        self._journal = journal
        self.queue_url = queue_url
        self._names = {dist_id: name for name, dist_id in distributions.items()}
        self._metrics = metrics
        self._window = dedup_window
        self._on_accepted = on_accepted
        self._wait = max(0, min(20, round(wait_time)))
        self._visibility = max(1, round(visibility_timeout))
        self._max_delay = max_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._last_error: str | None = None
        self.name = "fleet"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Returns once nothing more will be queued; a long poll still running is left to end
        in the background (its messages, if any, come back after their visibility timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._wait + 5)

    def problem(self) -> str | None:
        if self._failures < UNHEALTHY_AFTER_FAILURES or self._last_error is None:
            return None
        return f"cannot receive from {self.queue_url} ({self._last_error})"

    @property
    def healthy(self) -> bool:
        return self.problem() is None

    def _run(self) -> None:
        delay = _FIRST_BACKOFF
        unwoken_since: float | None = None
        while not self._stop.is_set():
            try:
                response = self._client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=MAX_BATCH,
                    WaitTimeSeconds=self._wait if unwoken_since is None else 0,
                    VisibilityTimeout=self._visibility,
                )
            except Exception as exc:  # noqa: BLE001 - the consumer must outlive anything
                self._failures += 1
                self._last_error = _describe(exc)
                log.warning(
                    "fleet_receive_failed",
                    queue_url=self.queue_url,
                    code=_code(exc),
                    error=_describe(exc),
                    retry_in=delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            delay = _FIRST_BACKOFF
            self._failures, self._last_error = 0, None
            messages = response.get("Messages") or []
            if messages and not self._stop.is_set():
                try:
                    queued = self._take(messages)
                except Exception:  # not deleted: the messages come back
                    log.exception("fleet_accept_failed", messages=len(messages))
                    self._stop.wait(1.0)
                    continue
                if queued and unwoken_since is None:
                    unwoken_since = time.monotonic()
            if unwoken_since is not None and (
                not messages or time.monotonic() - unwoken_since >= self._max_delay
            ):
                unwoken_since = None
                self._on_accepted()

    def _take(self, messages: Sequence[dict[str, Any]]) -> int:
        """Queue the paths of `messages`, then delete the messages. Returns paths queued."""
        items: list[FleetItem] = []
        done: list[dict[str, Any]] = []
        for message in messages:
            try:
                dist_id, accepted = decode(str(message.get("Body", "")))
            except ValueError as exc:
                log.error(
                    "fleet_message_malformed",
                    message_id=message.get("MessageId"),
                    error=str(exc),
                    left_in_queue=True,
                )
                continue
            name = self._names.get(dist_id)
            if name is None:
                log.error(
                    "fleet_unknown_distribution",
                    message_id=message.get("MessageId"),
                    distribution_id=dist_id,
                    left_in_queue=True,
                )
                continue
            items.append(
                FleetItem(
                    Accepted(
                        name,
                        accepted.path,
                        accepted.first_seen,
                        accepted.origin,
                        accepted.fingerprint,
                    )
                )
            )
            done.append(message)
        queued = duplicates = 0
        if items:
            queued, duplicates = self._journal.fleet_accept(items, self._window)
            self._metrics.fleet_received.inc(len(items))
            self._metrics.fleet_duplicates.inc(duplicates)
            log.info("fleet_received", messages=len(items), queued=queued, duplicates=duplicates)
        # Only now is every path of these messages committed: SQS may forget them.
        self._delete(done)
        return queued

    def _delete(self, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": str(m["ReceiptHandle"])} for i, m in enumerate(messages)
        ]
        try:
            response = self._client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            # They come back after the visibility timeout and are found duplicates then.
            log.warning("fleet_delete_failed", messages=len(entries), error=_describe(exc))
            return
        for failure in response.get("Failed", []):
            log.warning("fleet_delete_failed", entry=failure.get("Id"), code=failure.get("Code"))
