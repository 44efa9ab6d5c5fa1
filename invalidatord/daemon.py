"""The composition root: the only module that names concrete adapters.

Start-up order (each step only once the previous one holds):
  1. journal opened and the state_dir lock taken (one daemon per journal);
  2. health endpoint up (503 until ready);
  3. preflight: each distribution answers a cheap ListInvalidations (AccessDenied or
     NoSuchDistribution stops the start with a clear error naming the distribution; an outage
     only degrades health: changes are journaled and submitted once CloudFront answers);
  4. sources started (each returns once watching); filesystem sources queue their start-up
     scan: on the very first start, recording the baseline (the pipeline runs it before it takes
     any change, so changes seen meanwhile are judged against the finished baseline); on every
     later one, a catch-up diff of the whole tree;
  5. pipeline, submitter and scheduled jobs (status poll, reconcile, CloudFront probe,
     safety-net rescans, gauges) started;
  6. READY=1 (and from then on WATCHDOG=1 from the pipeline loop).

Shutdown order (SIGTERM/SIGINT), stated because it is what makes "nothing lost" true:
  1. STOPPING=1, health 503;
  2. sources stopped, so nothing new arrives;
  3. pipeline stopped and everything queued or debouncing accepted into the journal;
  4. submitter drains what is pending, bounded by `shutdown_timeout` (a CloudFront call still
     running at the deadline is abandoned: its batch is journaled with its CallerReference, so
     the next start resubmits it without creating a second invalidation); the rest stays
     journaled;
  5. scheduler, health endpoint, journal closed.

Reload (SIGHUP): the new config is loaded first; if it does not load, its problems are logged
(`reload_rejected`, the lines `check` prints) and the old daemon keeps running untouched.
Otherwise the old daemon stops without STOPPING=1 and without draining (the new one resumes
from the same journal; its start-up catch-up scan finds what changed in between), and a new one
starts with the same metrics registry and, when `metrics.listen` is unchanged, the same HTTP
endpoint. If the new one cannot start, the old config is started again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from invalidatord import logs, systemd
from invalidatord.config import (
    Config,
    FilesystemSourceConfig,
    S3PollSourceConfig,
    SqsSourceConfig,
    config_warnings,
)
from invalidatord.contracts import CloudFront, Source, TreeScanner
from invalidatord.errors import AccessProblem, InvalidatordError, JournalError, SinkError
from invalidatord.factory import (
    StateLock,
    client_for,
    cloudfront_for,
    mapper_for,
    open_journal,
    submitter_for,
)
from invalidatord.health import StatusServer, WatchedCloudFront
from invalidatord.journal import PLANNED, Journal
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeKind, FileStat
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources.filesystem import FilesystemSource
from invalidatord.submitter import Submitter

log = structlog.get_logger(__name__)

#: How far a file's ctime may lag the wall clock (the kernel stamps files with a coarse
#: clock, one tick behind at most: 10 ms at HZ=100).
_CTIME_SLACK_NS = 20_000_000

#: How often each distribution is asked a cheap ListInvalidations (at most; never more often
#: than `invalidation.reconcile_interval`), so /healthz notices CloudFront refusing or
#: unreachable while nothing is being submitted.
PROBE_INTERVAL = 30.0
#: How often the gauges are refreshed and STATUS= is sent to systemd (also at every scrape).
GAUGE_INTERVAL = 5.0

T = TypeVar("T")
Phase = Literal["starting", "ready", "reloading", "stopping", "stopped"]


# ---- scheduled jobs on daemon threads -----------------------------------------------------------


class _DaemonThreadPool(concurrent.futures.Executor):
    """Runs each job on a new daemon thread. concurrent.futures' pool joins its (non-daemon)
    workers when the interpreter exits, so one status poll stuck in a CloudFront call (a read
    timeout of 30 s, three attempts) would hold the exit well past `shutdown_timeout`."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - the future hands it to APScheduler
                future.set_exception(exc)

        threading.Thread(target=run, name="job", daemon=True).start()
        return future


class _DaemonThreadExecutor(BasePoolExecutor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(_DaemonThreadPool())


# ---- the daemon -----------------------------------------------------------------------------


class Daemon:
    """Everything a running invalidatord is, built from one config."""

    def __init__(
        self,
        cfg: Config,
        *,
        dry_run: bool = False,
        cloudfront: CloudFront | None = None,
        notifier: systemd.Notifier | None = None,
        metrics: Metrics | None = None,
        http: StatusServer | None = None,
    ) -> None:
        """`metrics` and `http` are handed over by a reload (counters keep counting, the
        endpoint keeps answering)."""
        self.cfg = cfg
        self.dry_run = dry_run
        self.metrics = metrics or Metrics()
        self.notifier = notifier or systemd.Notifier()
        self.cloudfront = WatchedCloudFront(
            cloudfront or cloudfront_for(cfg, dry_run),
            {name: d.id for name, d in cfg.distributions.items()},
            self.metrics,
        )
        self.ready = threading.Event()
        self.phase: Phase = "starting"
        self._lock = StateLock(Path(cfg.state_dir)) if not dry_run else None
        self.journal: Journal | None = None
        self.sources: dict[str, Source] = {}
        self.scanners: dict[str, TreeScanner] = {}
        self.pipeline: Pipeline | None = None
        self.submitter: Submitter | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.http = http
        self._watcher_counts_seen: dict[str, int] = {}
        self._watcher_counts_lock = threading.Lock()
        self._started = False
        self._stopped = False

    # ---- start -------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        if self._lock is not None and not self._lock.acquire():
            raise JournalError(
                f"another invalidatord is already running with state_dir {cfg.state_dir} "
                f"(lock {self._lock.path})"
            )
        self.journal = open_journal(cfg, self.dry_run)
        self._declare_metrics()
        self._start_http()
        for warning in config_warnings(cfg):
            log.warning("config_warning", warning=warning)
        self.submitter = submitter_for(cfg, self.journal, self.cloudfront, self.metrics)
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
        self.pipeline.start(first=self._catch_up())
        self.submitter.start()
        self._started = True
        self._start_scheduler()
        self.submitter.wake()
        self.phase = "ready"
        self.ready.set()
        self.refresh_gauges()
        self.notifier.ready(self.status_text())
        log.info(
            "daemon_ready",
            sources=list(self.sources),
            distributions=list(cfg.distributions),
            dry_run=self.dry_run,
            health=self.health_url,
        )

    @property
    def health_url(self) -> str | None:
        return None if self.http is None else self.http.health_url

    def _declare_metrics(self) -> None:
        cfg = self.cfg
        self.metrics.forget(distributions=cfg.distributions, sources=[s.name for s in cfg.sources])
        self.metrics.declare(
            distributions=cfg.distributions,
            sources=[s.name for s in cfg.sources],
            tree_sources=[s.name for s in cfg.sources if isinstance(s, FilesystemSourceConfig)],
        )

    def _preflight(self) -> None:
        for name, dist in self.cfg.distributions.items():
            try:
                self.cloudfront.check_distribution(dist.id)
            except AccessProblem as exc:
                log.error(
                    "preflight_failed",
                    distribution=name,
                    distribution_id=dist.id,
                    code=exc.code,
                    error=exc.message,
                )
                # Named by its config name, with the id: the operator fixes one or the other.
                raise AccessProblem(
                    name,
                    exc.code,
                    f"{exc.message} [CloudFront id {dist.id}]",
                    retryable=False,
                    http_status=exc.http_status,
                ) from exc
            except SinkError as exc:
                # An outage at start is not a reason to stop watching: changes are journaled
                # and submitted once CloudFront answers. Health says why it is degraded until
                # a call (the probe, a submission) gets an answer.
                log.warning(
                    "preflight_failed",
                    distribution=name,
                    distribution_id=dist.id,
                    code=exc.code,
                    error=exc.message,
                    retryable=exc.retryable,
                )

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
                    separate_process=scfg.watcher_process,
                )
                self.sources[scfg.name] = fs
                self.scanners[scfg.name] = fs
            elif isinstance(scfg, SqsSourceConfig):
                self.sources[scfg.name] = self._sqs_source(scfg)
            elif isinstance(scfg, S3PollSourceConfig):
                self.sources[scfg.name] = self._s3_poll_source(scfg)
            else:  # a new source type in the config that nothing builds would watch nothing
                raise InvalidatordError(f"source {scfg.name!r}: unsupported type {scfg.type!r}")

    def _sqs_source(self, scfg: SqsSourceConfig) -> Source:
        from invalidatord.sources.sqs import SqsSource

        client = client_for(self.cfg, "sqs")
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

    def _s3_poll_source(self, scfg: S3PollSourceConfig) -> Source:
        from invalidatord.sources.s3poll import S3PollSource

        assert self.journal is not None
        client = client_for(self.cfg, "s3")
        return S3PollSource(
            scfg.name,
            self._sink,
            client,
            self.journal,  # its index of ETags lives in the journal
            bucket=scfg.bucket,
            prefix=scfg.prefix,
            interval=scfg.interval,
        )

    def _sink(self, change: Change) -> None:
        assert self.pipeline is not None
        if change.kind is ChangeKind.RESCAN and not change.path:
            # an overflow (or the root itself moved or deleted): count it now, not at the
            # next scrape, so the counter moves with the rescan it causes
            self._count_watcher_events()
        self.pipeline.sink(change)

    def _count_watcher_events(self) -> None:
        """Add each filesystem source's new overflows and watcher restarts (its own counts)
        to the counters. A RESCAN of the whole tree is not an overflow by itself: start-up
        catch-up and the periodic safety net send one too."""
        with self._watcher_counts_lock:
            for name, source in self.sources.items():
                for attribute, counter in (
                    ("overflows", self.metrics.overflows),
                    ("watcher_restarts", self.metrics.watcher_restarts),
                ):
                    count = getattr(source, attribute, None)
                    if not isinstance(count, int):
                        continue
                    key = f"{attribute}:{name}"
                    new = count - self._watcher_counts_seen.get(key, 0)
                    if new > 0:
                        counter.labels(name).inc(new)
                        self._watcher_counts_seen[key] = count

    def _catch_up(self) -> list[Callable[[], None]]:
        """Queue each filesystem source's start-up work; returns the first-start baselines,
        which the pipeline runs before it takes any change (READY does not wait for them)."""
        assert self.journal is not None
        assert self.pipeline is not None
        baselines: list[Callable[[], None]] = []
        for name, scanner in self.scanners.items():
            if not self.journal.baseline_recorded(name):
                baselines.append(functools.partial(self._record_baseline, name, scanner))
            else:
                # Changes made while the daemon was not watching (or still debouncing when it
                # died) are found by diffing the tree against the index.
                self.pipeline.sink(Change(name, "", ChangeKind.RESCAN, time.time()))
        return baselines

    def _record_baseline(self, name: str, scanner: TreeScanner) -> None:
        """The first start: remember the tree, invalidate nothing, except the files changed
        since the watch began. Their changes are queued too, but an inotify overflow before
        the scan reached them would lose those events while the baseline already holds the
        new state, and the overflow's rescan would find nothing: so the baseline itself
        reports them (their ctime, which nothing can set back)."""
        assert self.journal is not None
        assert self.pipeline is not None
        started = time.monotonic()
        since = scanner.watching_since_ns
        # a file's timestamps come from the kernel's coarse clock, up to a tick behind
        since = since - _CTIME_SLACK_NS if since else 0
        recent: list[str] = []

        def entries() -> Iterator[tuple[str, FileStat]]:
            for path, st in scanner.scan(""):
                if since and st.ctime_ns >= since:
                    recent.append(path)
                yield path, st

        count = self.journal.record_baseline(name, entries())
        now = time.time()
        for path in recent:
            self.pipeline.sink(Change(name, path, ChangeKind.CREATED, now))
        log.info(
            "baseline_recorded",
            source=name,
            files=count,
            changed_since_watching=len(recent),
            seconds=round(time.monotonic() - started, 3),
        )

    def _start_scheduler(self) -> None:
        assert self.submitter is not None
        inv = self.cfg.invalidation
        scheduler = BackgroundScheduler(
            executors={"default": _DaemonThreadExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        scheduler.add_job(self.submitter.poll_status, "interval", seconds=inv.poll_interval)
        scheduler.add_job(self.submitter.reconcile, "interval", seconds=inv.reconcile_interval)
        scheduler.add_job(self.submitter.reconcile)  # once, now
        probe_every = min(PROBE_INTERVAL, inv.reconcile_interval)
        scheduler.add_job(self._probe, "interval", seconds=probe_every)
        for scfg in self.cfg.sources:
            interval = getattr(scfg, "rescan_interval", None)
            if isinstance(scfg, FilesystemSourceConfig) and interval:
                scheduler.add_job(
                    self._rescan, "interval", seconds=interval, args=[scfg.name], id=scfg.name
                )
        scheduler.add_job(self._tick, "interval", seconds=GAUGE_INTERVAL)
        scheduler.start()
        self.scheduler = scheduler

    def _rescan(self, source: str) -> None:
        assert self.pipeline is not None
        self.pipeline.sink(Change(source, "", ChangeKind.RESCAN, time.time()))

    def _probe(self) -> None:
        """Ask each distribution a cheap ListInvalidations, so health notices CloudFront
        refusing or unreachable while nothing is being submitted (`self.cloudfront` remembers
        the outcome and logs the changes of state)."""
        for dist in self.cfg.distributions.values():
            with contextlib.suppress(SinkError):
                self.cloudfront.check_distribution(dist.id)

    # ---- health, metrics, systemd --------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body of /healthz)."""
        reasons: list[str] = []
        if self.phase != "ready":
            reasons.append(self.phase)
        sources: dict[str, str] = {}
        for name, source in self.sources.items():
            if source.healthy:
                sources[name] = "ok"
            else:
                sources[name] = self._source_problem(name)
                reasons.append(f"source {name!r}: {sources[name]}")
        distributions: dict[str, str] = {}
        cf_problems = self.cloudfront.problems()
        sub_problems = self.submitter.problems() if self.submitter is not None else {}
        for name in self.cfg.distributions:
            why = cf_problems.get(name) or sub_problems.get(name)
            distributions[name] = why or "ok"
            if why:
                reasons.append(f"distribution {name!r}: {why}")
        body: dict[str, Any] = {
            "status": "ok" if not reasons else "unavailable",
            "phase": self.phase,
        }
        if reasons:
            body["reasons"] = reasons
        body["sources"] = sources
        body["distributions"] = distributions
        pending = self._pending()
        if pending is not None:
            body["pending"] = sum(count for count, _ in pending.values())
        return not reasons, body

    def _source_problem(self, name: str) -> str:
        scfg = self.cfg.source(name)
        if isinstance(scfg, FilesystemSourceConfig) and not Path(scfg.root).is_dir():
            return f"not watching: root {scfg.root} is gone"
        if self.phase in ("starting", "stopping", "stopped"):
            return f"not watching ({self.phase})"
        if isinstance(scfg, SqsSourceConfig):
            return f"not receiving: SQS calls to {scfg.queue_url} keep failing"
        if isinstance(scfg, S3PollSourceConfig):
            return f"not listing: listings of s3://{scfg.bucket}/{scfg.prefix} keep failing"
        return "not watching"

    def _pending(self) -> dict[str, tuple[int, float | None]] | None:
        """distribution -> (paths accepted and not yet submitted, first_seen of the oldest).
        Counts the paths of batches still being sent as well as queued ones: while CloudFront
        refuses or is unreachable, the paths wait in a planned batch."""
        journal = self.journal
        if journal is None or self._stopped:
            return None
        try:
            summary = journal.pending_summary()
            planned = journal.batches(PLANNED)
        except InvalidatordError:  # closed under us by a stop: no answer
            return None
        out: dict[str, tuple[int, float | None]] = {}
        for name in self.cfg.distributions:
            count, oldest = summary.get(name, (0, None))
            for record in planned:
                if record.distribution == name:
                    count += len(record.paths)
                    oldest = record.first_seen if oldest is None else min(oldest, record.first_seen)
            out[name] = (count, oldest if count else None)
        return out

    def refresh_gauges(self) -> None:
        """Set every gauge from the journal, the submitter and the sources (at each scrape)."""
        journal, submitter = self.journal, self.submitter
        pending = self._pending()
        if journal is None or submitter is None or pending is None:
            return
        now = time.time()
        try:
            for name in self.cfg.distributions:
                count, oldest = pending[name]
                self.metrics.pending.labels(name).set(count)
                self.metrics.oldest_pending.labels(name).set(
                    max(0.0, now - oldest) if oldest is not None else 0
                )
                flight = journal.in_flight(name) + submitter.states[name].external
                self.metrics.in_flight.labels(name, "file").set(flight.files)
                self.metrics.in_flight.labels(name, "wildcard").set(flight.wildcards)
            self.metrics.set_billed(journal.billed_this_month())
        except InvalidatordError:
            return
        self._count_watcher_events()
        ok, body = self.health()
        self.metrics.healthy.set(1 if ok else 0)
        for name, state in body["sources"].items():
            self.metrics.source_healthy.labels(name).set(1 if state == "ok" else 0)
        for name, state in body["distributions"].items():
            self.metrics.distribution_healthy.labels(name).set(1 if state == "ok" else 0)

    def _tick(self) -> None:
        self.refresh_gauges()
        self.notifier.status(self.status_text())

    def status_text(self) -> str:
        """One line for `systemctl status`."""
        pending = self._pending()
        journal = self.journal
        if pending is None or journal is None:
            return self.phase
        try:
            flight = sum(
                journal.in_flight(n).files + journal.in_flight(n).wildcards
                for n in self.cfg.distributions
            )
        except InvalidatordError:
            return self.phase
        text = f"{sum(c for c, _ in pending.values())} paths pending, {flight} in flight"
        ok, body = self.health()
        if not ok:
            text += "; unhealthy: " + "; ".join(body.get("reasons", []))
        return text

    def _heartbeat(self) -> None:
        """Called by the pipeline loop each turn: a wedged pipeline stops the watchdog pings.
        systemd starts the watchdog once READY=1 is sent, so nothing is sent before."""
        if self.ready.is_set():
            self.notifier.watchdog()  # rate-limits itself to a quarter of the interval

    def _start_http(self) -> None:
        listen = self.cfg.metrics.listen
        http, self.http = self.http, None
        if http is not None and http.listen == listen:
            http.daemon = self
            self.http = http
            return
        if http is not None:
            http.close()
        address = self.cfg.metrics.address
        if listen is None or address is None:
            return
        try:
            self.http = StatusServer(listen, address, self)
        except OSError as exc:
            raise InvalidatordError(
                f"metrics.listen {listen}: cannot serve /metrics and /healthz there: "
                f"{exc.strerror or exc}"
            ) from exc

    def release_http(self) -> StatusServer | None:
        """Hand the HTTP endpoint over to the next daemon (a reload)."""
        http, self.http = self.http, None
        return http

    # ---- stop --------------------------------------------------------------------------------

    def stop(self, *, reloading: bool = False, drain: bool = True) -> None:
        """The shutdown order in the module docstring. A reload (`reloading`) sends no
        STOPPING=1 and keeps the HTTP endpoint for the next daemon (`release_http`);
        `drain=False` leaves pending work in the journal for the next daemon."""
        if self._stopped:
            return
        self.phase = "reloading" if reloading else "stopping"
        self.ready.clear()  # no WATCHDOG=1 after STOPPING=1
        if not reloading:
            self.notifier.stopping()
        log.info("daemon_stopping", reloading=reloading)
        for source in self.sources.values():
            try:
                source.stop()
            except Exception:  # one stuck source must not keep the others' work unjournaled
                log.exception("source_stop_failed", source=source.name)
        if self.pipeline is not None:
            self.pipeline.stop()
        finished = self._stop_submitter(drain=drain and self._started)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self._stopped = True
        if self.http is not None and not reloading:
            self.http.close()
            self.http = None
        if self.journal is not None and finished:
            # An abandoned drain may still be inside a journal call: leave the connection to
            # the process exit (every commit is already durable).
            self.journal.close()
        if self._lock is not None:
            self._lock.release()
        self.phase = "stopped" if not reloading else "reloading"

    def _stop_submitter(self, *, drain: bool) -> bool:
        """Stop the submitter and (with `drain`) submit what is pending, all within
        `shutdown_timeout`. False when the deadline passed with a CloudFront call unfinished."""
        submitter, journal = self.submitter, self.journal
        if submitter is None or journal is None:
            return True
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        outcome: dict[str, bool] = {}

        def work() -> None:
            submitter.stop()  # waits for the call in progress, if any
            outcome["drained"] = submitter.drain(deadline) if drain else False

        worker = threading.Thread(target=work, name="drain", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()) + 0.2)
        finished = not worker.is_alive()
        try:
            kept = journal.pending_count() + sum(len(b.paths) for b in journal.batches(PLANNED))
        except InvalidatordError:
            kept = -1
        if not finished:
            log.warning(
                "drain_abandoned",
                timeout=self.cfg.shutdown_timeout,
                reason="a CloudFront call was still running at the deadline",
                pending_kept=kept,
            )
        log.info(
            "daemon_stopped",
            drained=outcome.get("drained", False) if drain else None,
            pending_kept=kept,
        )
        return finished


# ---- the process ----------------------------------------------------------------------------


def run(
    cfg: Config,
    *,
    dry_run: bool = False,
    reload: Callable[[], Config] | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (then return 0). SIGHUP reloads the config through `reload`:
    a config that does not load is logged with the same messages `check` prints and the old
    one keeps running. Raises what a failed start raises (the CLI turns it into exit 1)."""
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
            if name == "SIGHUP":
                log.info("signal_received", signal=name)
                if reload is not None:
                    daemon = _reload(daemon, reload, dry_run)


def _reload(daemon: Daemon, reload: Callable[[], Config], dry_run: bool) -> Daemon:
    daemon.notifier.reloading()
    old_cfg = daemon.cfg
    try:
        new_cfg = reload()
    except InvalidatordError as exc:
        for line in str(exc).splitlines():
            log.error("reload_rejected", problem=line)
        log.warning("reload_kept_old_config")
        daemon.notifier.ready(daemon.status_text())
        return daemon
    log.info("reload_started")
    if new_cfg.log != old_cfg.log:
        logs.configure(new_cfg.log.format, new_cfg.log.level)
    # Same journal: the next daemon resumes its pending work. Another one: drain this one's.
    daemon.stop(reloading=True, drain=new_cfg.state_dir != old_cfg.state_dir)
    fresh = Daemon(
        new_cfg,
        dry_run=dry_run,
        notifier=daemon.notifier,
        metrics=daemon.metrics,
        http=daemon.release_http(),
    )
    try:
        fresh.start()
    except InvalidatordError as exc:
        log.error("reload_failed", error=str(exc))
        fresh.stop(reloading=True, drain=False)
        if new_cfg.log != old_cfg.log:
            logs.configure(old_cfg.log.format, old_cfg.log.level)
        again = Daemon(
            old_cfg,
            dry_run=dry_run,
            notifier=daemon.notifier,
            metrics=daemon.metrics,
            http=fresh.release_http(),
        )
        try:
            again.start()
        except BaseException:
            again.stop()
            raise
        log.warning("reload_kept_old_config")
        return again
    log.info("reload_done")
    return fresh
