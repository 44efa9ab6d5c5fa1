"""A faithful CloudFront invalidation API on top of moto, served over real HTTP in-process.

moto 5.2.5's CloudFront is not CloudFront where invalidatord cares (docs/cloudfront.md): every
invalidation is instantly "COMPLETED", nothing is validated or limited, CallerReference is not
idempotent and listing is oldest first. This module answers the three invalidation operations
itself, the way CloudFront does, and hands every other request (CreateDistribution, S3, SQS, SNS,
EventBridge, STS...) to moto's own server application on the same port.

What it guarantees, per distribution (the distribution must exist in moto, else 404
NoSuchDistribution):

- paths are validated like CloudFront's (leading `/`, `*` only last, at most 4,000 characters,
  nothing that must be percent-encoded); a bad one is answered 400 InvalidArgument naming it;
- at most 3,000 file paths and 15 wildcard paths in progress, counted separately; a batch over
  either together with what is in flight is answered 400 TooManyInvalidationsInProgress, a batch
  over either on its own 413 BatchTooLarge;
- CallerReference is idempotent: the same reference with the same paths answers the existing
  invalidation (201, same id, nothing new created); with other paths 409
  InvalidationBatchAlreadyExists;
- an invalidation is InProgress for `in_progress_seconds` (measured with `clock`), then
  Completed, and stays Completed; `hold(True)` stops completion, `complete_all()` forces it;
- ListInvalidations is newest first with Marker/MaxItems paging.

moto is an optional dependency (the `demo` extra); it is imported when the emulator starts.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import structlog

from invalidatord.mapping import tag_problem
from invalidatord.model import (
    MAX_FILE_PATHS_IN_FLIGHT,
    MAX_PATH_LENGTH,
    MAX_WILDCARD_PATHS_IN_FLIGHT,
    InFlight,
    Invalidation,
    is_wildcard,
)
from invalidatord.testing.sqs import SqsFifoDouble

log = structlog.get_logger(__name__)

API_VERSION = "2020-05-31"
XMLNS = f"http://cloudfront.amazonaws.com/doc/{API_VERSION}/"

CREATE = "CreateInvalidation"
GET = "GetInvalidation"
LIST = "ListInvalidations"
OPERATIONS = (CREATE, GET, LIST)

#: Default HTTP status of each injectable fault code. Other codes need an explicit `status`.
FAULT_STATUS: dict[str, int] = {
    "Throttling": 400,
    "ServiceUnavailable": 503,
    "InternalError": 500,
    "TooManyInvalidationsInProgress": 400,
    "BatchTooLarge": 413,
    "AccessDenied": 403,
    "NoSuchDistribution": 404,
    "InvalidArgument": 400,
    "ConnectionReset": 0,  # no response at all: the connection is dropped
}
_FAULT_MESSAGES = {
    "Throttling": "Rate exceeded",
    "ServiceUnavailable": "CloudFront is temporarily unavailable.",
    "InternalError": "We encountered an internal error. Please try again.",
    "TooManyInvalidationsInProgress": (
        "Processing your request will cause you to exceed the maximum number of "
        "in-progress wildcard invalidations."
    ),
    "BatchTooLarge": "Invalidation batch specified is too large.",
    "AccessDenied": "User is not authorized to perform this operation.",
    "NoSuchDistribution": "The specified distribution does not exist.",
    "InvalidArgument": "Your request contains one or more invalid invalidation paths.",
}

# RFC 1738's unsafe characters: CloudFront wants them percent-encoded (docs/cloudfront.md). `%` is
# checked separately: it is fine as the start of an escape (`%20`), not alone.
_UNSAFE = frozenset(' <>"#{}|\\^~[]`')
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_ROUTE = re.compile(rf"^/{API_VERSION}/distribution/([^/]+)/invalidation(?:/([^/]+))?$")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One invalidation API call as the emulator saw and answered it."""

    op: str  # "CreateInvalidation" | "GetInvalidation" | "ListInvalidations"
    distribution_id: str
    paths: tuple[str, ...]  # CreateInvalidation only
    caller_reference: str | None  # CreateInvalidation only
    status: int | None  # HTTP status answered; None when the connection was dropped
    error_code: str | None  # None on success
    time: float  # the emulator's clock
    invalidation_id: str | None = None  # the one created, returned or asked for


def path_problem(path: str, cache_tags: bool = False) -> str | None:
    """Why CloudFront would refuse `path` as an invalidation path, or None if it is acceptable.
    A `#tag` item is a cache tag: accepted only by distributions with CacheTagConfig."""
    if path.startswith("#"):
        if not cache_tags:
            return "cache tags ('#') need a distribution with CacheTagConfig"
        return tag_problem(path[1:])
    if not path.startswith("/"):
        return "it does not start with '/'"
    if len(path) > MAX_PATH_LENGTH:
        return f"it is longer than {MAX_PATH_LENGTH} characters"
    if "*" in path[:-1]:
        return "'*' is allowed only as the last character"
    for i, ch in enumerate(path):
        code = ord(ch)
        if code < 0x20 or code == 0x7F:
            return f"control character {code:#04x} must be percent-encoded"
        if code > 0x7E:
            return f"non-ASCII character {ch!r} must be percent-encoded"
        if ch in _UNSAFE:
            return f"character {ch!r} must be percent-encoded"
        if ch == "%" and not _ESCAPE.match(path, i):
            return "'%' must start a percent-encoded byte (%XX)"
    return None


class _CloudFrontError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _DropConnection(ConnectionResetError):
    """Raised in the WSGI app: werkzeug takes it for a dropped connection and answers nothing."""


@dataclass(slots=True)
class _Fault:
    code: str
    status: int
    operation: str
    remaining: int | None
    rate: float | None
    rng: random.Random
    after: bool
    message: str

    def fires(self, op: str) -> bool:
        if self.operation not in ("*", op) or self.remaining == 0:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass(slots=True)
class _Inv:
    id: str
    caller_reference: str
    paths: tuple[str, ...]
    create_time: float  # wall clock, what CloudFront reports
    started: float  # the emulator's clock, what completion is measured with
    completed: bool = False

    @property
    def status(self) -> str:
        return "Completed" if self.completed else "InProgress"

    def in_flight(self) -> InFlight:
        if self.completed:
            return InFlight()
        wildcards = sum(1 for p in self.paths if is_wildcard(p))
        return InFlight(len(self.paths) - wildcards, wildcards)

    def model(self) -> Invalidation:
        return Invalidation(
            id=self.id,
            status=self.status,
            create_time=self.create_time,
            paths=self.paths,
            caller_reference=self.caller_reference,
        )


@dataclass(slots=True)
class _Dist:
    invalidations: list[_Inv] = field(default_factory=list)  # oldest first
    by_reference: dict[str, _Inv] = field(default_factory=dict)


def _missing_moto() -> RuntimeError:
    return RuntimeError("the CloudFront emulator needs moto: pip install 'invalidatord[demo]'")


class CloudFrontEmulator:
    """CloudFront's invalidation API, faithful where invalidatord depends on it, over HTTP.

    `start()` serves on 127.0.0.1 (a free port) and returns the endpoint URL to give boto3.
    Every attribute and method is safe to use from the test's thread while the server's
    threads answer requests.
    """

    _running = 0
    _running_lock = threading.Lock()

    def __init__(
        self, *, in_progress_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: Invalidations complete this many seconds (of `clock`) after creation. Settable any time.
        self.in_progress_seconds = in_progress_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._held = False
        self._dists: dict[str, _Dist] = {}
        self._faults: list[_Fault] = []
        self._rejected: set[str] = set()
        self._distribution_ids: list[str] = []
        #: distributions that accept `#tag` items (CloudFront's CacheTagConfig); settable
        self.cache_tag_distributions: set[str] = set()
        #: Every invalidation API call, in arrival order.
        self.requests: list[RecordedRequest] = []
        #: The highest in-flight counts seen per distribution (files and wildcards separately).
        self.max_in_flight_seen: dict[str, InFlight] = {}
        self.endpoint_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._moto_app: Any = None
        self._client: Any = None
        #: SQS FIFO deduplication as SQS does it (moto's forgets deleted messages' ids)
        self.sqs = SqsFifoDouble(clock)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 on `port` (0: a free one); return the endpoint URL
        ("http://127.0.0.1:PORT"). Raises OSError when the port is taken."""
        if self._server is not None:
            return self.endpoint_url
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
        except ImportError as exc:
            raise _missing_moto() from exc
        from werkzeug.serving import make_server

        class _Handler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """Quiet: `requests` records what matters."""

        self._moto_app = self.sqs.wrap(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", port, self._wsgi, threaded=True, request_handler=_Handler
        )
        port = self._server.server_port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        # A short poll interval makes stop() quick; the loop costs nothing noticeable.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"cloudfront-emulator-{port}",
            daemon=True,
        )
        self._thread.start()
        with CloudFrontEmulator._running_lock:
            CloudFrontEmulator._running += 1
        log.debug("emulator_started", endpoint_url=self.endpoint_url)
        return self.endpoint_url

    def stop(self) -> None:
        """Stop serving. When the last emulator of the process stops, moto's state is wiped
        (moto keeps it per process, not per server), so the next one starts clean."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._client = None
        with CloudFrontEmulator._running_lock:
            CloudFrontEmulator._running -= 1
            last = CloudFrontEmulator._running == 0
        if last:
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()
        log.debug("emulator_stopped", endpoint_url=self.endpoint_url)

    def __enter__(self) -> CloudFrontEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- set-up -------------------------------------------------------------------------------

    def create_distribution(self, comment: str = "") -> str:
        """Create a distribution in moto (through this server, with boto3); return its id."""
        if self._server is None:
            raise RuntimeError("start the emulator before creating distributions")
        if self._client is None:
            self._client = _own_client(self.endpoint_url)
        origin = "origin"
        response = self._client.create_distribution(
            DistributionConfig={
                "CallerReference": uuid.uuid4().hex,
                "Comment": comment,
                "Enabled": True,
                "Origins": {
                    "Quantity": 1,
                    "Items": [
                        {
                            "Id": origin,
                            "DomainName": "origin.example.com",
                            "CustomOriginConfig": {
                                "HTTPPort": 80,
                                "HTTPSPort": 443,
                                "OriginProtocolPolicy": "http-only",
                            },
                        }
                    ],
                },
                "DefaultCacheBehavior": {
                    "TargetOriginId": origin,
                    "ViewerProtocolPolicy": "allow-all",
                },
            }
        )
        distribution_id: str = response["Distribution"]["Id"]
        with self._lock:
            self._distribution_ids.append(distribution_id)
        return distribution_id

    @property
    def distribution_id(self) -> str:
        """The first distribution created on this emulator (the `cloudfront` fixture's)."""
        with self._lock:
            if not self._distribution_ids:
                raise RuntimeError("no distribution has been created on this emulator")
            return self._distribution_ids[0]

    # -- control ------------------------------------------------------------------------------

    def hold(self, on: bool) -> None:
        """While held, nothing completes (time still passes: releasing may complete a lot)."""
        with self._lock:
            self._held = on

    def complete_all(self) -> None:
        """Mark every InProgress invalidation Completed now (even while held)."""
        with self._lock:
            for dist in self._dists.values():
                for inv in dist.invalidations:
                    inv.completed = True

    def inject(
        self,
        code: str,
        *,
        times: int | None = None,
        rate: float | None = None,
        status: int | None = None,
        operation: str = CREATE,
        seed: int | None = None,
        after: bool = False,
        message: str | None = None,
    ) -> None:
        """Answer `operation` ("*" = any of the three) with error `code` instead of the real answer.

        `times`: at most this many times (None = until `clear_faults`); `rate`: with this
        probability per request (`seed` makes it repeatable); `status`: the HTTP status
        (default from FAULT_STATUS). "ConnectionReset" drops the connection without a response.
        `after=True` performs the operation first and then answers with the fault: the request
        took effect but the caller cannot know (a lost response). `message` replaces the error
        message. Faults are tried in the order they were injected; the first that fires wins.
        """
        if operation != "*" and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r} (known: {', '.join(OPERATIONS)})")
        if status is None:
            if code not in FAULT_STATUS:
                raise ValueError(f"fault code {code!r} needs an explicit status")
            status = FAULT_STATUS[code]
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        if rate is not None and not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], not {rate}")
        with self._lock:
            self._faults.append(
                _Fault(
                    code=code,
                    status=status,
                    operation=operation,
                    remaining=times,
                    rate=rate,
                    rng=random.Random(seed),  # noqa: S311 - chaos, not cryptography
                    after=after,
                    message=message or _FAULT_MESSAGES.get(code, f"Injected fault {code}."),
                )
            )

    def clear_faults(self) -> None:
        """Forget every injected fault and every rejected path."""
        with self._lock:
            self._faults.clear()
            self._rejected.clear()

    def reject_path(self, path: str) -> None:
        """Answer InvalidArgument (naming `path`) for any batch that contains `path`."""
        with self._lock:
            self._rejected.add(path)

    # -- inspection ---------------------------------------------------------------------------

    def invalidations(self, distribution_id: str) -> list[Invalidation]:
        """Every invalidation created on the distribution, newest first."""
        with self._lock:
            self._settle()
            dist = self._dists.get(distribution_id)
            return [inv.model() for inv in reversed(dist.invalidations)] if dist else []

    def created_paths(self, distribution_id: str) -> list[str]:
        """Every path of every distinct invalidation created, oldest invalidation first."""
        with self._lock:
            dist = self._dists.get(distribution_id)
            return [p for inv in dist.invalidations for p in inv.paths] if dist else []

    def in_flight(self, distribution_id: str) -> InFlight:
        """The paths InProgress on the distribution now."""
        with self._lock:
            self._settle()
            return self._in_flight(distribution_id)

    # -- internals ----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Complete what has been in progress long enough. Completion is sticky: lowering
        `in_progress_seconds` completes more, raising it or holding never un-completes."""
        if self._held:
            return
        now = self._clock()
        for dist in self._dists.values():
            for inv in dist.invalidations:
                if not inv.completed and now - inv.started >= self.in_progress_seconds:
                    inv.completed = True

    def _in_flight(self, distribution_id: str) -> InFlight:
        dist = self._dists.get(distribution_id)
        total = InFlight()
        for inv in dist.invalidations if dist else ():
            total = total + inv.in_flight()
        return total

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = _ROUTE.match(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD", "")
        credential = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        service = credential.group(2) if credential else "cloudfront"
        if match is None or service != "cloudfront" or method not in ("GET", "POST"):
            return self._moto_app(environ, start_response)  # type: ignore[no-any-return]
        distribution_id, invalidation_id = match.group(1), match.group(2)
        if method == "POST" and invalidation_id is None:
            op = CREATE
        elif method == "GET":
            op = LIST if invalidation_id is None else GET
        else:
            return self._moto_app(environ, start_response)  # type: ignore[no-any-return]
        access_key = credential.group(1) if credential else ""
        return self._serve(
            op, distribution_id, invalidation_id, access_key, environ, start_response
        )

    def _serve(
        self,
        op: str,
        distribution_id: str,
        invalidation_id: str | None,
        access_key: str,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
    ) -> Iterable[bytes]:
        from werkzeug.wrappers import Request

        request = Request(environ)
        body = request.get_data() if op == CREATE else b""
        paths: tuple[str, ...] = ()
        reference: str | None = None
        status, code = 200, None
        headers: list[tuple[str, str]] = []
        try:
            if op == CREATE:
                paths, reference = _parse_batch(body)
            with self._lock:
                fault = next((f for f in self._faults if f.fires(op)), None)
                if fault is not None and not fault.after:
                    raise _CloudFrontError(fault.status, fault.code, fault.message)
                self._settle()
                if not self._distribution_exists(distribution_id, access_key, environ):
                    raise _CloudFrontError(
                        404, "NoSuchDistribution", "The specified distribution does not exist."
                    )
                if op == CREATE:
                    status, inv = self._create(distribution_id, paths, reference or "")
                    invalidation_id = inv.id
                    payload = _invalidation_xml(inv)
                    headers.append(
                        (
                            "Location",
                            f"https://cloudfront.amazonaws.com/{API_VERSION}/distribution/"
                            f"{distribution_id}/invalidation/{inv.id}",
                        )
                    )
                elif op == GET:
                    payload = _invalidation_xml(self._get(distribution_id, invalidation_id or ""))
                else:
                    payload = self._list(distribution_id, request.args)
                if fault is not None:
                    raise _CloudFrontError(fault.status, fault.code, fault.message)
        except _CloudFrontError as err:
            status, code = err.status, err.code
            payload = _error_xml(err)
            headers = []
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    op=op,
                    distribution_id=distribution_id,
                    paths=paths,
                    caller_reference=reference,
                    status=None if code == "ConnectionReset" else status,
                    error_code=code,
                    time=self._clock(),
                    invalidation_id=invalidation_id,
                )
            )
        if code == "ConnectionReset":
            _drop(environ)
            raise _DropConnection("fault injected: ConnectionReset")
        request_id = str(uuid.uuid4())
        data = payload.encode("utf-8")
        headers += [
            ("Content-Type", "text/xml"),
            ("Content-Length", str(len(data))),
            ("x-amz-request-id", request_id),
            ("x-amzn-RequestId", request_id),
        ]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        return [data]

    def _distribution_exists(self, distribution_id: str, access_key: str, environ: Any) -> bool:
        """Ask moto's backend, in the account moto would use for this request."""
        from moto.cloudfront.models import cloudfront_backends
        from moto.iam.models import get_account_id_from

        account = (
            os.environ.get("MOTO_ACCOUNT_ID")
            or environ.get("HTTP_X_MOTO_ACCOUNT_ID")
            or get_account_id_from(access_key)
        )
        return distribution_id in cloudfront_backends[account]["aws"].distributions

    def _create(
        self, distribution_id: str, paths: tuple[str, ...], reference: str
    ) -> tuple[int, _Inv]:
        dist = self._dists.setdefault(distribution_id, _Dist())
        existing = dist.by_reference.get(reference)
        if existing is not None:
            if existing.paths == paths:
                return 201, existing
            raise _CloudFrontError(
                409,
                "InvalidationBatchAlreadyExists",
                f"The caller reference {reference!r} was already used for an invalidation "
                "batch with other paths.",
            )
        for path in paths:
            problem = "it is rejected by this emulator" if path in self._rejected else None
            problem = problem or path_problem(path, distribution_id in self.cache_tag_distributions)
            if problem:
                shown = repr(path) if len(path) <= 200 else repr(path[:200]) + "..."
                raise _CloudFrontError(
                    400, "InvalidArgument", f"Invalid invalidation path {shown}: {problem}."
                )
        wildcards = sum(1 for p in paths if is_wildcard(p))
        batch = InFlight(len(paths) - wildcards, wildcards)
        if batch.files > MAX_FILE_PATHS_IN_FLIGHT or batch.wildcards > MAX_WILDCARD_PATHS_IN_FLIGHT:
            raise _CloudFrontError(
                413,
                "BatchTooLarge",
                f"The batch has {batch.files} file paths and {batch.wildcards} wildcard paths; "
                f"at most {MAX_FILE_PATHS_IN_FLIGHT} and {MAX_WILDCARD_PATHS_IN_FLIGHT} "
                "may be in progress.",
            )
        after = self._in_flight(distribution_id) + batch
        if after.files > MAX_FILE_PATHS_IN_FLIGHT:
            raise _CloudFrontError(
                400,
                "TooManyInvalidationsInProgress",
                "Processing your request will cause you to exceed the maximum number of "
                f"in-progress file invalidations ({MAX_FILE_PATHS_IN_FLIGHT}).",
            )
        if after.wildcards > MAX_WILDCARD_PATHS_IN_FLIGHT:
            raise _CloudFrontError(
                400,
                "TooManyInvalidationsInProgress",
                "Processing your request will cause you to exceed the maximum number of "
                f"in-progress wildcard invalidations ({MAX_WILDCARD_PATHS_IN_FLIGHT}).",
            )
        inv = _Inv(
            id="I" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(13)),
            caller_reference=reference,
            paths=paths,
            create_time=time.time(),
            started=self._clock(),
        )
        dist.invalidations.append(inv)
        dist.by_reference[reference] = inv
        seen = self.max_in_flight_seen.get(distribution_id, InFlight())
        self.max_in_flight_seen[distribution_id] = InFlight(
            max(seen.files, after.files), max(seen.wildcards, after.wildcards)
        )
        log.debug(
            "emulator_invalidation_created",
            distribution_id=distribution_id,
            invalidation_id=inv.id,
            paths=len(paths),
        )
        return 201, inv

    def _get(self, distribution_id: str, invalidation_id: str) -> _Inv:
        dist = self._dists.get(distribution_id)
        for inv in dist.invalidations if dist else ():
            if inv.id == invalidation_id:
                return inv
        raise _CloudFrontError(
            404, "NoSuchInvalidation", "The specified invalidation does not exist."
        )

    def _list(self, distribution_id: str, args: Any) -> str:
        marker = args.get("Marker", "")
        raw_max = args.get("MaxItems", "100")
        try:
            max_items = int(raw_max)
        except ValueError:
            max_items = 0
        if max_items < 1:
            raise _CloudFrontError(
                400, "InvalidArgument", f"MaxItems must be a positive integer, not {raw_max!r}."
            )
        dist = self._dists.get(distribution_id)
        newest_first = list(reversed(dist.invalidations)) if dist else []
        if marker:
            ids = [inv.id for inv in newest_first]
            newest_first = newest_first[ids.index(marker) + 1 :] if marker in ids else []
        page = newest_first[:max_items]
        truncated = len(newest_first) > max_items
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?><InvalidationList xmlns="{XMLNS}">',
            f"<Marker>{escape(marker)}</Marker>",
        ]
        if truncated:
            parts.append(f"<NextMarker>{page[-1].id}</NextMarker>")
        parts += [
            f"<MaxItems>{max_items}</MaxItems>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
            f"<Quantity>{len(page)}</Quantity>",
        ]
        if page:  # CloudFront leaves Items out of an empty list
            parts.append("<Items>")
            parts += (
                f"<InvalidationSummary><Id>{inv.id}</Id>"
                f"<CreateTime>{_timestamp(inv.create_time)}</CreateTime>"
                f"<Status>{inv.status}</Status></InvalidationSummary>"
                for inv in page
            )
            parts.append("</Items>")
        parts.append("</InvalidationList>")
        return "".join(parts)


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _parse_batch(body: bytes) -> tuple[tuple[str, ...], str]:
    """The paths and CallerReference of an InvalidationBatch document."""
    try:
        # The body comes from a client on loopback; expat refuses entity-expansion bombs.
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError as exc:
        raise _CloudFrontError(400, "MalformedInput", f"Malformed XML: {exc}.") from exc

    def local(element: ET.Element) -> str:
        return element.tag.rpartition("}")[2]

    def child(element: ET.Element, name: str) -> ET.Element | None:
        return next((c for c in element if local(c) == name), None)

    reference_el = child(root, "CallerReference")
    paths_el = child(root, "Paths")
    if local(root) != "InvalidationBatch" or reference_el is None or paths_el is None:
        raise _CloudFrontError(
            400, "MalformedInput", "Expected an InvalidationBatch with Paths and CallerReference."
        )
    reference = reference_el.text or ""
    if not reference:
        raise _CloudFrontError(400, "InvalidArgument", "CallerReference must not be empty.")
    quantity_el = child(paths_el, "Quantity")
    items_el = child(paths_el, "Items")
    found = list(items_el) if items_el is not None else []
    paths = tuple(p.text or "" for p in found if local(p) == "Path")
    try:
        quantity = int(quantity_el.text or "") if quantity_el is not None else -1
    except ValueError:
        quantity = -1
    if quantity != len(paths):
        raise _CloudFrontError(
            400,
            "InconsistentQuantities",
            f"Paths.Quantity is {quantity_el.text if quantity_el is not None else None!r} "
            f"but {len(paths)} paths were given.",
        )
    if not paths:
        raise _CloudFrontError(400, "InvalidArgument", "The invalidation batch has no paths.")
    return paths, reference


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _invalidation_xml(inv: _Inv) -> str:
    items = "".join(f"<Path>{escape(p)}</Path>" for p in inv.paths)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Invalidation xmlns="{XMLNS}">'
        f"<Id>{inv.id}</Id><Status>{inv.status}</Status>"
        f"<CreateTime>{_timestamp(inv.create_time)}</CreateTime>"
        f"<InvalidationBatch><Paths><Quantity>{len(inv.paths)}</Quantity>"
        f"<Items>{items}</Items></Paths>"
        f"<CallerReference>{escape(inv.caller_reference)}</CallerReference>"
        "</InvalidationBatch></Invalidation>"
    )


def _error_xml(err: _CloudFrontError) -> str:
    kind = "Receiver" if err.status >= 500 else "Sender"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ErrorResponse xmlns="{XMLNS}">'
        f"<Error><Type>{kind}</Type><Code>{escape(err.code)}</Code>"
        f"<Message>{escape(err.message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )


_session_lock = threading.Lock()
_session: Any = None


def _own_client(endpoint_url: str) -> Any:
    """A CloudFront client for the emulator to talk to itself (moto), with throwaway keys.
    One boto3 session is shared: it caches service models, which makes a client ~5x cheaper."""
    global _session
    import boto3
    from botocore.config import Config

    with _session_lock:
        if _session is None:
            _session = boto3.session.Session(
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106 - moto accepts any key
                region_name="us-east-1",
            )
        return _session.client(
            "cloudfront",
            endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )


def _drop(environ: dict[str, Any]) -> None:
    """Make the connection end with no response: shut it down now, reset it on close."""
    sock: socket.socket | None = environ.get("werkzeug.socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
