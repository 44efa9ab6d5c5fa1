"""Health: what /healthz, the gauges and systemd's STATUS= report, and how CloudFront's answers
feed it.

`StatusReport` is one reading of everything they show, collected once (`collect_status`) and
read by all three, so they never disagree; `WatchedCloudFront` wraps the CloudFront edge and
remembers, per distribution, whether CloudFront answered its latest calls; `StatusServer`
serves GET /healthz and GET /metrics for whichever daemon is current (a reload hands it to the
new one).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from invalidatord.contracts import CloudFront, Source
from invalidatord.errors import AccessProblem, InvalidatordError, SinkError
from invalidatord.journal import Journal
from invalidatord.metrics import Metrics
from invalidatord.model import InFlight, Invalidation

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StatusView(Protocol):
    """What the status server asks of a daemon."""

    metrics: Metrics

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def liveness(self) -> tuple[bool, dict[str, Any]]: ...

    def refresh_gauges(self) -> None: ...


# ---- one reading of the daemon's state -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DistributionStatus:
    problem: str | None  # why it is not healthy (CloudFront refusing, unreachable), or None
    unsent: int  # paths accepted and not yet submitted (queued or in a planned batch)
    oldest: float | None  # first_seen of the oldest unsent path
    ours: InFlight  # our invalidations in progress (from the journal)
    external: InFlight  # others' invalidations in progress (from ListInvalidations)
    set_aside: int = 0  # paths CloudFront refused (InvalidArgument): never sent, kept


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything /healthz, the gauges and STATUS= show, read at one moment (`at`).

    `distributions` is empty and `billed` None when the journal could not be read (not open
    yet, or closed by a stop): the report then says only the phase and the sources."""

    at: float
    phase: str
    sources: Mapping[str, str | None]  # name -> why it is not watching, or None
    distributions: Mapping[str, DistributionStatus]
    billed: int | None
    journal_problem: str | None = None  # accepted changes cannot be committed
    #: CloudFront id -> unsent paths of a distribution the config no longer names
    orphans: Mapping[str, int] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        reasons = [] if self.phase == "ready" else [self.phase]
        if self.journal_problem:
            reasons.append(f"journal: {self.journal_problem}")
        reasons += [f"source {n!r}: {why}" for n, why in self.sources.items() if why]
        reasons += [
            f"distribution {n!r}: {d.problem}" for n, d in self.distributions.items() if d.problem
        ]
        reasons += [
            f"distribution id {i}: {count} path(s) accepted and not sent, but no distribution "
            f"in the config has this id (add it back under any name to send them, or drop them "
            f"with `invalidatord discard --distribution-id {i}`)"
            for i, count in sorted(self.orphans.items())
        ]
        return reasons

    @property
    def healthy(self) -> bool:
        return not self.reasons

    def body(self) -> dict[str, Any]:
        """The JSON body of /healthz."""
        reasons = self.reasons
        body: dict[str, Any] = {"status": "ok" if not reasons else "unavailable"}
        body["phase"] = self.phase
        if reasons:
            body["reasons"] = reasons
        body["sources"] = {n: why or "ok" for n, why in self.sources.items()}
        body["distributions"] = {n: d.problem or "ok" for n, d in self.distributions.items()}
        body["journal"] = self.journal_problem or "ok"
        if self.billed is not None:
            body["pending"] = sum(d.unsent for d in self.distributions.values())
            body["set_aside"] = sum(d.set_aside for d in self.distributions.values())
        if self.orphans:
            body["orphaned"] = dict(self.orphans)
        return body

    def text(self) -> str:
        """One line for `systemctl status` (STATUS=)."""
        if self.billed is None:
            return self.phase
        unsent = sum(d.unsent for d in self.distributions.values())
        flight = sum(d.ours.files + d.ours.wildcards for d in self.distributions.values())
        text = f"{unsent} paths pending, {flight} in flight"
        if not self.healthy:
            text += "; unhealthy: " + "; ".join(self.reasons)
        return text

    def set_gauges(self, metrics: Metrics) -> None:
        metrics.healthy.set(1 if self.healthy else 0)
        metrics.journal_writable.set(0 if self.journal_problem else 1)
        for name, why in self.sources.items():
            metrics.source_healthy.labels(name).set(0 if why else 1)
        if self.billed is None:
            return
        for name, d in self.distributions.items():
            metrics.pending.labels(name).set(d.unsent)
            age = max(0.0, self.at - d.oldest) if d.oldest is not None else 0
            metrics.oldest_pending.labels(name).set(age)
            flight = d.ours + d.external
            metrics.in_flight.labels(name, "file").set(flight.files)
            metrics.in_flight.labels(name, "wildcard").set(flight.wildcards)
            metrics.distribution_healthy.labels(name).set(0 if d.problem else 1)
            metrics.set_aside.labels(name).set(d.set_aside)
        metrics.orphaned.clear()
        for distribution_id, count in self.orphans.items():
            metrics.orphaned.labels(distribution_id).set(count)
        metrics.set_billed(self.billed)


class _SubmitterView(Protocol):
    def problems(self) -> dict[str, str]: ...

    def external(self, name: str) -> InFlight: ...


def collect_status(
    *,
    phase: str,
    now: float,
    sources: Mapping[str, Source],
    distributions: Sequence[str],
    cloudfront: WatchedCloudFront,
    submitter: _SubmitterView | None,
    journal: Journal | None,
    accept_problem: str | None = None,
) -> StatusReport:
    """Read the daemon's state once. Each journal read is one query (`unsent_summary`,
    `in_flight_summary`, `billed_this_month`), whatever the number of distributions."""
    source_problems = {name: source.problem() for name, source in sources.items()}
    cf_problems = cloudfront.problems()
    sub_problems = submitter.problems() if submitter is not None else {}
    if journal is None:
        return StatusReport(now, phase, source_problems, {}, None, accept_problem)
    try:
        unsent = journal.unsent_summary()
        ours = journal.in_flight_summary()
        set_aside = journal.set_aside_summary()
        orphans = journal.orphans()
        billed = journal.billed_this_month(now)
    except InvalidatordError:  # closed under us by a stop: no answer
        return StatusReport(now, phase, source_problems, {}, None, accept_problem)
    out: dict[str, DistributionStatus] = {}
    for name in distributions:
        count, oldest = unsent.get(name, (0, None))
        out[name] = DistributionStatus(
            problem=cf_problems.get(name) or sub_problems.get(name),
            unsent=count,
            oldest=oldest if count else None,
            ours=ours.get(name, InFlight()),
            external=submitter.external(name) if submitter is not None else InFlight(),
            set_aside=set_aside.get(name, 0),
        )
    return StatusReport(now, phase, source_problems, out, billed, accept_problem, orphans)


# ---- CloudFront, watched ------------------------------------------------------------------------


def _not_answering(exc: SinkError) -> bool:
    """CloudFront refused us (access, credentials, distribution) or could not be reached (after
    botocore's retries: connection errors, timeouts, 5xx). Throttling, TooMany and refused paths
    are answers: CloudFront is there and talking."""
    if isinstance(exc, AccessProblem):
        return True
    return exc.retryable and (exc.http_status is None or exc.http_status >= 500)


class WatchedCloudFront:
    """`contracts.CloudFront` around another, for health and metrics.

    Remembers, per distribution and operation, whether CloudFront answered the latest call
    (`problems`, what /healthz reports), and counts the errors of every call except
    CreateInvalidation in `invalidatord_api_errors_total` (the submitter counts those).
    """

    def __init__(self, inner: CloudFront, names: Mapping[str, str], metrics: Metrics) -> None:
        """`names`: distribution config name -> CloudFront id."""
        self.inner = inner
        self._by_id: dict[str, str] = {}
        for name, distribution_id in names.items():
            self._by_id.setdefault(distribution_id, name)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._failing: dict[tuple[str, str], SinkError] = {}

    def _name(self, distribution_id: str) -> str:
        return self._by_id.get(distribution_id, distribution_id)

    def _call(self, operation: str, distribution_id: str, call: Callable[[], T]) -> T:
        name = self._name(distribution_id)
        try:
            result = call()
        except SinkError as exc:
            if operation != "CreateInvalidation":
                self._metrics.api_errors.labels(name, exc.code).inc()
            self._record(name, operation, exc if _not_answering(exc) else None)
            raise
        self._record(name, operation, None)
        return result

    def _record(self, name: str, operation: str, failure: SinkError | None) -> None:
        """Remember the outcome; log when the distribution turns unhealthy or healthy."""
        with self._lock:
            was = any(key[0] == name for key in self._failing)
            if failure is None:
                self._failing.pop((name, operation), None)
            else:
                self._failing[(name, operation)] = failure
            now = any(key[0] == name for key in self._failing)
        if now and not was:
            reason = self.problems().get(name, "")
            log.warning("distribution_unhealthy", distribution=name, reason=reason)
        elif was and not now:
            log.info("distribution_healthy", distribution=name)

    def create_invalidation(
        self, distribution_id: str, paths: Sequence[str], caller_reference: str
    ) -> Invalidation:
        return self._call(
            "CreateInvalidation",
            distribution_id,
            lambda: self.inner.create_invalidation(distribution_id, paths, caller_reference),
        )

    def get_invalidation(self, distribution_id: str, invalidation_id: str) -> Invalidation:
        return self._call(
            "GetInvalidation",
            distribution_id,
            lambda: self.inner.get_invalidation(distribution_id, invalidation_id),
        )

    def list_in_progress(self, distribution_id: str) -> list[Invalidation]:
        return self._call(
            "ListInvalidations",
            distribution_id,
            lambda: self.inner.list_in_progress(distribution_id),
        )

    def check_distribution(self, distribution_id: str) -> None:
        self._call(
            "ListInvalidations",
            distribution_id,
            lambda: self.inner.check_distribution(distribution_id),
        )

    def problems(self) -> dict[str, str]:
        """distribution name -> why CloudFront is not answering for it (one line)."""
        out: dict[str, str] = {}
        with self._lock:
            failing = sorted(self._failing.items())
        for (name, operation), exc in failing:
            if name in out:
                continue
            if isinstance(exc, AccessProblem):
                out[name] = f"{operation}: {exc.code}: {exc.message}"
            else:
                out[name] = f"CloudFront unreachable ({operation}): {exc.code}: {exc.message}"
        return out


# ---- the HTTP endpoint ----------------------------------------------------------------------


#: A client that sends nothing for this long is disconnected: a scrape or probe sends its
#: request at once, a half-open or stalled connection must not hold a thread forever.
IDLE_TIMEOUT = 10.0
#: Connections served at once; more are closed on accept (each one costs a thread).
MAX_CONNECTIONS = 32


class StatusServer:
    """GET /healthz (ready and nothing needs attention: sources watching, CloudFront answering),
    GET /livez (the process works: see `Daemon.liveness`) and GET /metrics, for whichever
    daemon is current (a reload hands the server to the new one). One thread per connection,
    at most `max_connections` of them; a connection idle for `idle_timeout` seconds is closed."""

    def __init__(
        self,
        listen: str,
        address: tuple[str, int],
        daemon: StatusView,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.listen = listen
        self.daemon = daemon
        self.refused = 0  # connections closed on accept because all slots were taken
        host, port = address
        owner = self
        slots = threading.BoundedSemaphore(max_connections)

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout  # on the socket: every read and write

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                current = owner.daemon
                if path in ("/healthz", "/livez"):
                    ok, body = current.health() if path == "/healthz" else current.liveness()
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif path == "/metrics":
                    current.refresh_gauges()
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(current.metrics.registry))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True
            request_queue_size = 128  # a burst of scrapes waits in the kernel, not refused

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):
                    owner.refused += 1
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self._server = Server((host, port), Handler)
        bound = self._server.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @property
    def health_url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/healthz"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
