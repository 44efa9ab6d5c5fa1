"""SQS FIFO deduplication as SQS does it, in front of moto's SQS (a WSGI layer).

SQS remembers every MessageDeduplicationId of a FIFO queue for five minutes after the message
was sent, whether or not the message is still in the queue: a second send with the same id in
that interval is answered as a success (with the first message's id) and delivers nothing.
moto 5.2.5 compares only against the messages still in the queue, so once a consumer has
deleted a message, moto accepts its duplicate. This layer answers SendMessage and
SendMessageBatch on `.fifo` queues itself for the ids it has seen within `DEDUPLICATION_SECONDS`
of its clock (`advance` moves the clock: a test needs no five-minute wait), and hands everything
else to moto. It also records every entry sent (`sends`) and can refuse every SQS call
(`outage`), for tests of a publisher that cannot reach SQS.

Entries without a MessageDeduplicationId (content-based deduplication) are passed to moto as
they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: How long SQS remembers a deduplication id (the SQS Developer Guide, "Exactly-once
#: processing": a five-minute deduplication interval).
DEDUPLICATION_SECONDS = 300.0
_TARGET = "AmazonSQS."
_JSON = "application/x-amz-json-1.0"


@dataclass(frozen=True, slots=True)
class SentEntry:
    """One entry of a SendMessage(Batch) call on a FIFO queue, as the layer answered it."""

    queue: str  # the queue's name
    group_id: str
    deduplication_id: str
    body: str
    duplicate: bool  # answered from the deduplication interval; not delivered
    time: float  # the layer's clock


class SqsFifoDouble:
    """Wrap moto's WSGI application (`wrap`); thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._offset = 0.0
        self._lock = threading.Lock()
        # Sends run one at a time, from the check of their ids to recording them: two hosts
        # sending the same id at once must not both get through (SQS decides atomically).
        self._send_lock = threading.Lock()
        # (queue name, deduplication id) -> (sent at, message id, MD5 of the body)
        self._seen: dict[tuple[str, str], tuple[float, str, str]] = {}
        self._app: Any = None
        #: every entry sent to a FIFO queue, in arrival order
        self.sends: list[SentEntry] = []
        #: while True every SQS call is answered 503 ServiceUnavailable
        self.outage = False

    def wrap(self, app: Any) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
        self._app = app
        return self

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass for the deduplication interval."""
        with self._lock:
            self._offset += seconds

    def delivered(self, queue: str | None = None) -> list[SentEntry]:
        """The entries that were not duplicates (what reached the queue)."""
        with self._lock:
            return [e for e in self.sends if not e.duplicate and queue in (None, e.queue)]

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if not target.startswith(_TARGET):
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        if self.outage:
            return _error(start_response, 503, "ServiceUnavailable", "SQS is unavailable (test)")
        op = target[len(_TARGET) :]
        if op not in ("SendMessage", "SendMessageBatch"):
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length)
        try:
            request = json.loads(raw)
            queue = str(request["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]
        except (ValueError, KeyError, TypeError):
            return self._forward(environ, start_response, raw)
        if not queue.endswith(".fifo"):
            return self._forward(environ, start_response, raw)
        with self._send_lock:
            if op == "SendMessage":
                return self._send_one(environ, start_response, raw, request, queue)
            return self._send_batch(environ, start_response, request, queue)

    # -- internals ----------------------------------------------------------------------------

    def _known(self, queue: str, dedup: str) -> tuple[str, str] | None:
        seen = self._seen.get((queue, dedup))
        if seen is None or self.now() - seen[0] >= DEDUPLICATION_SECONDS:
            return None
        return seen[1], seen[2]

    def _record(self, queue: str, entry: dict[str, Any], duplicate: bool) -> None:
        self.sends.append(
            SentEntry(
                queue,
                str(entry.get("MessageGroupId", "")),
                str(entry.get("MessageDeduplicationId", "")),
                str(entry.get("MessageBody", "")),
                duplicate,
                self.now(),
            )
        )

    def _send_one(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        raw: bytes,
        request: dict[str, Any],
        queue: str,
    ) -> Iterable[bytes]:
        dedup = request.get("MessageDeduplicationId")
        with self._lock:
            known = self._known(queue, dedup) if isinstance(dedup, str) else None
            if known is not None:
                self._record(queue, request, duplicate=True)
                return _ok(start_response, {"MessageId": known[0], "MD5OfMessageBody": known[1]})
        status, headers, body = self._call(environ, raw)
        if status.startswith("200") and isinstance(dedup, str):
            answer = json.loads(body)
            with self._lock:
                self._seen[(queue, dedup)] = (
                    self.now(),
                    str(answer.get("MessageId", "")),
                    str(answer.get("MD5OfMessageBody", "")),
                )
                self._record(queue, request, duplicate=False)
        start_response(status, headers)
        return [body]

    def _send_batch(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        request: dict[str, Any],
        queue: str,
    ) -> Iterable[bytes]:
        entries = list(request.get("Entries") or [])
        suppressed: list[dict[str, str]] = []
        forward: list[dict[str, Any]] = []
        with self._lock:
            for entry in entries:
                dedup = entry.get("MessageDeduplicationId")
                known = self._known(queue, dedup) if isinstance(dedup, str) else None
                if known is None:
                    forward.append(entry)
                    continue
                self._record(queue, entry, duplicate=True)
                suppressed.append(
                    {
                        "Id": str(entry.get("Id")),
                        "MessageId": known[0],
                        "MD5OfMessageBody": known[1],
                    }
                )
        answer: dict[str, Any] = {"Successful": [], "Failed": []}
        if forward:
            status, headers, body = self._call(
                environ, json.dumps({**request, "Entries": forward}).encode()
            )
            if not status.startswith("200"):
                start_response(status, headers)
                return [body]
            answer = json.loads(body)
            by_id = {str(e.get("Id")): e for e in forward}
            with self._lock:
                for done in answer.get("Successful") or []:
                    entry = by_id.get(str(done.get("Id")), {})
                    dedup = entry.get("MessageDeduplicationId")
                    if isinstance(dedup, str):
                        self._seen[(queue, dedup)] = (
                            self.now(),
                            str(done.get("MessageId", "")),
                            str(done.get("MD5OfMessageBody", "")),
                        )
                    self._record(queue, entry, duplicate=False)
        answer["Successful"] = [*(answer.get("Successful") or []), *suppressed]
        answer.setdefault("Failed", [])
        return _ok(start_response, answer)

    def _forward(
        self, environ: dict[str, Any], start_response: Callable[..., Any], raw: bytes
    ) -> Iterable[bytes]:
        status, headers, body = self._call(environ, raw)
        start_response(status, headers)
        return [body]

    def _call(self, environ: dict[str, Any], raw: bytes) -> tuple[str, list[Any], bytes]:
        """Ask moto with `raw` as the request body; (status, headers, body)."""
        inner = dict(environ)
        inner["wsgi.input"] = io.BytesIO(raw)
        inner["CONTENT_LENGTH"] = str(len(raw))
        answered: dict[str, Any] = {}

        def capture(status: str, headers: list[Any], exc_info: Any = None) -> Callable[..., Any]:
            answered["status"], answered["headers"] = status, headers
            return lambda _data: None

        chunks = self._app(inner, capture)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers = [(k, v) for k, v in answered["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        return str(answered["status"]), headers, body


def _ok(start_response: Callable[..., Any], answer: dict[str, Any]) -> list[bytes]:
    data = json.dumps(answer).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(data))),
            ("x-amzn-RequestId", hashlib.md5(data).hexdigest()),  # noqa: S324 - an id, not security
        ],
    )
    return [data]


def _error(start_response: Callable[..., Any], status: int, code: str, message: str) -> list[bytes]:
    data = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
    start_response(
        f"{status} Service Unavailable",
        [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(data))),
            ("x-amzn-query-error", f"{code};Receiver"),
        ],
    )
    return [data]
