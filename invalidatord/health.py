"""Health: what /healthz and /metrics report, and how CloudFront's answers feed it.

`WatchedCloudFront` wraps the CloudFront edge and remembers, per distribution, whether
CloudFront answered its latest calls; `StatusServer` serves GET /healthz and GET /metrics for
whichever daemon is current (a reload hands it to the new one).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from invalidatord.contracts import CloudFront
from invalidatord.errors import AccessProblem, SinkError
from invalidatord.metrics import Metrics
from invalidatord.model import Invalidation

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StatusView(Protocol):
    """What the status server asks of a daemon."""

    metrics: Metrics

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def refresh_gauges(self) -> None: ...


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


class StatusServer:
    """GET /healthz and GET /metrics for whichever daemon is current (a reload hands the
    server to the new one)."""

    def __init__(self, listen: str, address: tuple[str, int], daemon: StatusView) -> None:
        self.listen = listen
        self.daemon = daemon
        host, port = address
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                current = owner.daemon
                if path == "/healthz":
                    ok, body = current.health()
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
