"""The composition root: the only module that names concrete adapters.

Start-up order (each step only once the previous one holds):
  1. journal opened and the state_dir lock taken (one daemon per journal);
  2. health endpoint up (503 until ready);
  3. preflight: each distribution answers a cheap ListInvalidations (AccessDenied or
     NoSuchDistribution stops the start with a clear error; an outage only degrades health);
  4. sources started (each returns once watching); filesystem sources record their baseline on
     the very first start, or queue a catch-up scan of the whole tree on every later one;
  5. pipeline, submitter and scheduled jobs (status poll, reconcile, safety-net rescans) started;
  6. READY=1.

Shutdown order (SIGTERM/SIGINT), stated because it is what makes "nothing lost" true:
  1. STOPPING=1, health 503;
  2. sources stopped, so nothing new arrives;
  3. pipeline stopped and everything queued or debouncing accepted into the journal;
  4. submitter drains what is pending, bounded by `shutdown_timeout`; the rest stays journaled;
  5. scheduler, health endpoint, journal closed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from invalidatord import systemd
from invalidatord.cloudfront import Boto3CloudFront, DryRunCloudFront, make_session
from invalidatord.config import Config, FilesystemSourceConfig, SqsSourceConfig
from invalidatord.contracts import CloudFront, Source, TreeScanner
from invalidatord.errors import AccessProblem, InvalidatordError, JournalError, SinkError
from invalidatord.journal import Journal
from invalidatord.mapping import Mapper, Rule
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeKind
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.planner import Limits
from invalidatord.sources.filesystem import FilesystemSource
from invalidatord.submitter import Submitter

log = structlog.get_logger(__name__)

JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "daemon.lock"


def mapper_for(cfg: Config) -> Mapper:
    return Mapper(
        [
            Rule(
                match=rule.match,
                distributions=cfg.rule_distributions(i),
                urls=tuple(rule.urls),
                source=rule.source,
            )
            for i, rule in enumerate(cfg.rules)
        ]
    )


def limits_for(cfg: Config) -> Limits:
    return Limits(
        headroom_files=cfg.invalidation.headroom_files,
        headroom_wildcards=cfg.invalidation.headroom_wildcards,
    )


def cloudfront_for(cfg: Config, dry_run: bool = False) -> CloudFront:
    if dry_run:
        return DryRunCloudFront()
    session = make_session(cfg.aws.region, cfg.aws.profile, cfg.aws.role_arn)
    return Boto3CloudFront(session, endpoint_url=cfg.aws.endpoint_url)


def open_journal(cfg: Config, dry_run: bool = False) -> Journal:
    # A dry run must not consume the real journal's pending work: it keeps its own, in memory.
    return Journal(":memory:" if dry_run else Path(cfg.state_dir) / JOURNAL_NAME)


class StateLock:
    """An flock on state_dir/daemon.lock: one daemon per journal. `invalidatord invalidate`
    uses it to learn whether a daemon is running (and will submit for it)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Daemon:
    """Everything a running invalidatord is, built from one config."""

    def __init__(
        self,
        cfg: Config,
        *,
        dry_run: bool = False,
        cloudfront: CloudFront | None = None,
        notifier: systemd.Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.metrics = Metrics()
        self.notifier = notifier or systemd.Notifier()
        self.cloudfront = cloudfront or cloudfront_for(cfg, dry_run)
        self.ready = threading.Event()
        self._stopping = False
        self._lock = StateLock(Path(cfg.state_dir)) if not dry_run else None
        self.journal: Journal | None = None
        self.sources: dict[str, Source] = {}
        self.scanners: dict[str, TreeScanner] = {}
        self.pipeline: Pipeline | None = None
        self.submitter: Submitter | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.http: ThreadingHTTPServer | None = None
        self.http_address: tuple[str, int] | None = None
        self._last_watchdog = 0.0
        self._watchdog_every = (systemd.watchdog_interval() or 0) / 2

    # ---- start -------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        if self._lock is not None and not self._lock.acquire():
            raise JournalError(
                f"another invalidatord is already running with state_dir {cfg.state_dir} "
                f"(lock {self._lock.path})"
            )
        self.journal = open_journal(cfg, self.dry_run)
        self._start_http()
        self.submitter = Submitter(
            journal=self.journal,
            cloudfront=self.cloudfront,
            distributions={name: d.id for name, d in cfg.distributions.items()},
            limits=limits_for(cfg),
            metrics=self.metrics,
            max_backoff=cfg.invalidation.max_backoff,
            completion_wait=cfg.invalidation.poll_interval,
        )
        self._preflight()
        self._build_sources()  # their sink is self._sink; nothing is delivered before start()
        self.pipeline = Pipeline(
            sources=self.sources,
            scanners=self.scanners,
            mapper=mapper_for(cfg),
            journal=self.journal,
            debounce=DebounceSettings(
                cfg.debounce.quiet, cfg.debounce.max_delay, cfg.debounce.max_pending
            ),
            metrics=self.metrics,
            on_accepted=self.submitter.wake,
            heartbeat=self._heartbeat,
        )
        for source in self.sources.values():
            source.start()
            log.info("source_watching", source=source.name)
        self._catch_up()
        self.pipeline.start()
        self.submitter.start()
        self._start_scheduler()
        self.submitter.wake()
        self.ready.set()
        self.notifier.ready(self._status_text())
        log.info(
            "daemon_ready",
            sources=list(self.sources),
            distributions=list(cfg.distributions),
            dry_run=self.dry_run,
            health=self.health_url,
        )

    @property
    def health_url(self) -> str | None:
        if self.http_address is None:
            return None
        host, port = self.http_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/healthz"

    def _preflight(self) -> None:
        for name, dist in self.cfg.distributions.items():
            try:
                self.cloudfront.check_distribution(dist.id)
            except AccessProblem:
                raise
            except SinkError as exc:
                # An outage at start is not a reason to stop watching: changes are journaled
                # and submitted once CloudFront answers. Health says why it is degraded.
                assert self.submitter is not None
                self.submitter.states[name].unreachable = f"{exc.code}: {exc.message}"
                self.submitter.states[name].failures = 3
                log.warning("preflight_failed", distribution=name, error=str(exc))

    def _build_sources(self) -> None:
        for scfg in self.cfg.sources:
            if isinstance(scfg, FilesystemSourceConfig):
                fs = FilesystemSource(
                    scfg.name,
                    Path(scfg.root),
                    self._sink,
                    ignore=scfg.ignore,
                    watcher=scfg.watcher,
                    poll_interval=scfg.poll_interval,
                )
                self.sources[scfg.name] = fs
                self.scanners[scfg.name] = fs
            elif isinstance(scfg, SqsSourceConfig):
                self.sources[scfg.name] = self._sqs_source(scfg)

    def _sqs_source(self, scfg: SqsSourceConfig) -> Source:
        from invalidatord.sources.sqs import SqsSource

        session = make_session(self.cfg.aws.region, self.cfg.aws.profile, self.cfg.aws.role_arn)
        client = session.client("sqs", endpoint_url=self.cfg.aws.endpoint_url)
        return SqsSource(
            scfg.name,
            self._sink,
            client,
            queue_url=scfg.queue_url,
            bucket=scfg.bucket,
            prefix=scfg.prefix,
            wait_time=scfg.wait_time,
            visibility_timeout=scfg.visibility_timeout,
            receivers=scfg.receivers,
        )

    def _sink(self, change: Change) -> None:
        assert self.pipeline is not None
        if change.kind is ChangeKind.RESCAN and not change.path:
            self.metrics.overflows.labels(change.source).inc()
        self.pipeline.sink(change)

    def _catch_up(self) -> None:
        assert self.journal is not None
        assert self.pipeline is not None
        for name, scanner in self.scanners.items():
            if not self.journal.baseline_recorded(name):
                started = time.monotonic()
                count = self.journal.record_baseline(name, scanner.scan(""))
                log.info(
                    "baseline_recorded",
                    source=name,
                    files=count,
                    seconds=round(time.monotonic() - started, 3),
                )
            else:
                # Changes made while the daemon was not watching (or still debouncing when it
                # died) are found by diffing the tree against the index.
                self.pipeline.sink(Change(name, "", ChangeKind.RESCAN, time.time()))

    def _start_scheduler(self) -> None:
        assert self.submitter is not None
        inv = self.cfg.invalidation
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        scheduler.add_job(self.submitter.poll_status, "interval", seconds=inv.poll_interval)
        scheduler.add_job(self.submitter.reconcile, "interval", seconds=inv.reconcile_interval)
        scheduler.add_job(self.submitter.reconcile)  # once, now
        for scfg in self.cfg.sources:
            interval = getattr(scfg, "rescan_interval", None)
            if isinstance(scfg, FilesystemSourceConfig) and interval:
                scheduler.add_job(
                    self._rescan, "interval", seconds=interval, args=[scfg.name], id=scfg.name
                )
        scheduler.add_job(self._refresh_gauges, "interval", seconds=5)
        scheduler.start()
        self.scheduler = scheduler

    def _rescan(self, source: str) -> None:
        assert self.pipeline is not None
        self.pipeline.sink(Change(source, "", ChangeKind.RESCAN, time.time()))

    # ---- health, metrics, systemd --------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        reasons: list[str] = []
        if self._stopping:
            reasons.append("stopping")
        elif not self.ready.is_set():
            reasons.append("starting")
        for name, source in self.sources.items():
            if not source.healthy:
                reasons.append(f"source {name!r} is not watching")
        if self.submitter is not None:
            for dist, why in self.submitter.problems().items():
                reasons.append(f"distribution {dist!r}: {why}")
        body: dict[str, Any] = {"status": "ok" if not reasons else "unavailable"}
        if reasons:
            body["reasons"] = reasons
        if self.journal is not None:
            body["pending"] = self.journal.pending_count()
        return not reasons, body

    def _refresh_gauges(self) -> None:
        journal, submitter = self.journal, self.submitter
        if journal is None or submitter is None:
            return
        now = time.time()
        summary = journal.pending_summary()
        for name in self.cfg.distributions:
            count, oldest = summary.get(name, (0, now))
            self.metrics.pending.labels(name).set(count)
            self.metrics.oldest_pending.labels(name).set(max(0.0, now - oldest) if count else 0)
            flight = journal.in_flight(name) + submitter.states[name].external
            self.metrics.in_flight.labels(name, "file").set(flight.files)
            self.metrics.in_flight.labels(name, "wildcard").set(flight.wildcards)
        self.metrics.set_billed(journal.billed_this_month())
        self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        if self.journal is None:
            return "starting"
        flight = sum(
            (self.journal.in_flight(n).files + self.journal.in_flight(n).wildcards)
            for n in self.cfg.distributions
        )
        return f"{self.journal.pending_count()} paths pending, {flight} in flight"

    def _heartbeat(self) -> None:
        """Called by the pipeline loop each turn: a wedged pipeline stops the watchdog pings."""
        if not self._watchdog_every:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = now
            self.notifier.watchdog()

    def _start_http(self) -> None:
        listen = self.cfg.metrics.listen
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/healthz":
                    ok, body = daemon.health()
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif self.path.split("?")[0] == "/metrics":
                    daemon._refresh_gauges()
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(daemon.metrics.registry))
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

        server_class = ThreadingHTTPServer
        if ":" in host:
            import socket

            class V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_class = V6Server
        self.http = server_class((host, int(port)), Handler)
        self.http.daemon_threads = True
        self.http_address = self.http.server_address[:2]  # type: ignore[assignment]
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()

    # ---- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """The shutdown order in the module docstring."""
        self._stopping = True
        self.notifier.stopping()
        log.info("daemon_stopping")
        for source in self.sources.values():
            try:
                source.stop()
            except Exception:  # one stuck source must not keep the others' work unjournaled
                log.exception("source_stop_failed", source=source.name)
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.submitter is not None:
            self.submitter.stop()
            done = self.submitter.drain(time.monotonic() + self.cfg.shutdown_timeout)
            if self.journal is not None:
                log.info(
                    "daemon_stopped",
                    drained=done,
                    pending_kept=self.journal.pending_count(),
                )
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.journal is not None:
            self.journal.close()
        if self._lock is not None:
            self._lock.release()


def run(
    cfg: Config,
    *,
    dry_run: bool = False,
    reload: Callable[[], Config] | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. SIGHUP reloads the config through `reload`: a config that does
    not load is logged with the same messages `check` prints and the old one keeps running."""
    events: list[str] = []
    wake = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        events.append(signal.Signals(signum).name)
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    daemon = Daemon(cfg, dry_run=dry_run)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    if on_ready is not None:
        on_ready(daemon)
    while True:
        wake.wait()
        wake.clear()
        while events:
            name = events.pop(0)
            if name in ("SIGTERM", "SIGINT"):
                log.info("signal_received", signal=name)
                daemon.stop()
                return 0
            if name == "SIGHUP" and reload is not None:
                daemon = _reload(daemon, reload, dry_run)


def _reload(daemon: Daemon, reload: Callable[[], Config], dry_run: bool) -> Daemon:
    daemon.notifier.reloading()
    try:
        new_cfg = reload()
    except InvalidatordError as exc:
        for line in str(exc).splitlines():
            log.error("reload_rejected", problem=line)
        log.warning("reload_kept_old_config")
        daemon.notifier.ready(daemon._status_text())
        return daemon
    log.info("reload_started")
    daemon.stop()
    fresh = Daemon(new_cfg, dry_run=dry_run, notifier=daemon.notifier)
    fresh.start()
    log.info("reload_done")
    return fresh
