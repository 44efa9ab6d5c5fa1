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
A fleet (`fleet:`) changes two steps: a publisher has no preflight and no submitter (it never
calls CloudFront; its pipeline accepts into the journal's outbox and the fleet publisher sends
that to SQS); an invalidator starts the fleet consumer right after its sources (step 4).

Shutdown order (SIGTERM/SIGINT), stated because it is what makes "nothing lost" true:
  1. STOPPING=1, health 503;
  2. sources (and an invalidator's fleet consumer) stopped, so nothing new arrives;
  3. scheduler stopped (waiting for a job still running), since it produces work too: a
     safety-net rescan must not reach a stopped pipeline, nor a status poll run beside the
     drain;
  4. pipeline stopped and everything queued or debouncing accepted into the journal;
  5. submitter drains what is pending, bounded by `shutdown_timeout` (a CloudFront call still
     running at the deadline is abandoned: its batch is journaled with its CallerReference, so
     the next start resubmits it without creating a second invalidation); the rest stays
     journaled;
  5b. a fleet publisher sends what is in its outbox, bounded by `shutdown_timeout`; the rest
     stays in the outbox for the next start;
  6. health endpoint, journal closed.

Threads and processes, what each owns (is the only writer of), and how each stops:

  thread / process     owns                                 stops
  -------------------  -----------------------------------  ---------------------------------
  main                 the Daemon; signals; start, stop     `run` returns
                       and reload order
  watcher process      watchdog's watch of one root         stdin closed by source.stop()
    (a child, one per  (inotify or polling), in its own     (SIGKILL after 10 s)
    filesystem source) process
  watcher reader /     nothing shared: delivers changes     source.stop() joins it
    watchdog observer  to the pipeline through the sink
  sqs receivers and    their messages in flight and the     source.stop() joins them
    keeper; s3-poll    receipts; the S3 index (through
    poller             the journal)
  pipeline             the debouncer; the fs index and      pipeline.stop(): accepts what is
                       pending rows (journal writes)        queued, then joins
  submitter            every DistributionState (backoff,    submitter.stop() joins it
                       others' in flight); batches
                       (planned -> submitted -> completed)
  drain (stop only)    the submitter's work once the        `shutdown_timeout`, then abandoned
                       submitter thread has ended
  scheduler and its    nothing: jobs only ask               scheduler.shutdown(wait=True),
    2 job threads      (`Submitter.request`, a RESCAN       right after the sources
                       change, a status tick)
  fleet-publisher      sends the outbox; removes what SQS    publisher.stop() joins it, then
    (role publisher)   accepted (journal writes)             drains within shutdown_timeout
  fleet-consumer       messages received and not yet         consumer.stop() joins it (up to
    (role invalidator) deleted; queues their paths           wait_time + 5 s), with the sources
  http (one a request) nothing: reads a `StatusReport`      close() at stop

  The journal is shared: SQLite in WAL mode, writes serialised by the journal's own lock,
  reads on a connection of their own.

Reload (SIGHUP): the new config is loaded first; if it does not load, its problems are logged
(`reload_rejected`, the lines `check` prints) and the old daemon keeps running untouched.
Then CloudFront is checked for the new config on a thread of its own while the old daemon
keeps running (its pipeline keeps pinging systemd's watchdog, however slow CloudFront is); a
refusal (AccessDenied, no such distribution) keeps the old config, a SIGTERM meanwhile wins.
SIGHUPs that arrive during a reload coalesce into one more; a SIGTERM drops queued reloads.
Otherwise the old daemon stops without STOPPING=1 and without draining (the new one resumes
from the same journal; its start-up catch-up scan finds what changed in between), and a new one
starts with the same metrics registry and, when `metrics.listen` is unchanged, the same HTTP
endpoint. If the new one cannot start, the old config is started again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from invalidatord import catchup, logs, systemd
from invalidatord.config import Config, config_warnings
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
from invalidatord.fleet import FleetConsumer, FleetPublisher
from invalidatord.health import StatusReport, StatusServer, WatchedCloudFront, collect_status
from invalidatord.journal import Journal
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeBatch, ChangeKind
from invalidatord.pipeline import DebounceSettings, Pipeline
from invalidatord.sources import registry
from invalidatord.submitter import Submitter

log = structlog.get_logger(__name__)

#: How often each distribution is asked a cheap ListInvalidations (at most; never more often
#: than `invalidation.reconcile_interval`), so /healthz notices CloudFront refusing or
#: unreachable while nothing is being submitted.
PROBE_INTERVAL = 30.0
#: How often the gauges are refreshed and STATUS= is sent to systemd (also at every scrape).
GAUGE_INTERVAL = 5.0
#: How old a StatusReport /healthz may answer from (a tick collects one every GAUGE_INTERVAL).
REPORT_MAX_AGE = 1.0
#: How long the pipeline loop may go without a turn, or a watcher stay stopped while its root
#: is there, before GET /livez says the process no longer works (systemd's WatchdogSec is the
#: same 30 s). The loop turns at least once a second when idle.
LIVENESS_STALL = 30.0
#: Threads running scheduled jobs: each job only asks or reads, so two are plenty.
JOB_THREADS = 2

Phase = Literal["starting", "ready", "reloading", "stopping", "stopped"]


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
        # a fleet (`fleet:`): a publisher sends to SQS instead of CloudFront (no submitter); an
        # invalidator takes the fleet queue's paths besides its own sources'
        self.role = cfg.fleet.role if cfg.fleet is not None else None
        self.publisher: FleetPublisher | None = None
        self.consumer: FleetConsumer | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.http = http
        self._report: StatusReport | None = None
        self._report_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._last_turn: float | None = None  # monotonic time of the pipeline loop's last turn
        self._unwatched_since: dict[str, float] = {}

    # ---- start -------------------------------------------------------------------------------

    def start(self, *, preflight: bool = True) -> None:
        """Start in the order of the module docstring. `preflight=False`: `preflight()` has
        already been called (a reload checks CloudFront before it stops the old daemon)."""
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
        if self.role == "publisher":
            # Publishers never call CloudFront: no submitter, no preflight.
            self.publisher = self._publisher()
        else:
            self.submitter = submitter_for(
                cfg, self.journal, self.cloudfront, self.metrics, dry_run=self.dry_run
            )
            if preflight:
                self.preflight()
        wake = self.publisher.wake if self.publisher is not None else self._wake_submitter
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
            on_accepted=wake,
            heartbeat=self._heartbeat,
            outbox=self.publisher is not None,
        )
        for source in self.sources.values():
            source.start()
            log.info("source_watching", source=source.name)
        if self.role == "invalidator":
            self.consumer = self._consumer()
            self.consumer.start()
            log.info("fleet_receiving", queue_url=self.consumer.queue_url)
        self.pipeline.start(first=self._catch_up())
        if self.submitter is not None:
            self.submitter.start()
        if self.publisher is not None:
            self.publisher.start()
        self._started = True
        self._start_scheduler()
        self._wake_submitter()
        self.phase = "ready"
        self.ready.set()
        report = self.status_report(max_age=0)
        report.set_gauges(self.metrics)
        self.notifier.ready(report.text())
        log.info(
            "daemon_ready",
            sources=list(self.sources),
            distributions=list(cfg.distributions),
            dry_run=self.dry_run,
            health=self.health_url,
            fleet=self.role,
        )

    def _wake_submitter(self) -> None:
        if self.submitter is not None:
            self.submitter.wake()

    def _publisher(self) -> FleetPublisher:
        assert self.journal is not None
        assert self.cfg.fleet is not None
        return FleetPublisher(
            client=client_for(self.cfg, "sqs"),
            journal=self.journal,
            queue_url=self.cfg.fleet.queue_url,
            distribution_ids={name: d.id for name, d in self.cfg.distributions.items()},
            metrics=self.metrics,
        )

    def _consumer(self) -> FleetConsumer:
        fleet = self.cfg.fleet
        assert self.journal is not None
        assert fleet is not None
        return FleetConsumer(
            client=client_for(self.cfg, "sqs"),
            journal=self.journal,
            queue_url=fleet.queue_url,
            distributions={name: d.id for name, d in self.cfg.distributions.items()},
            metrics=self.metrics,
            dedup_window=fleet.dedup_window,
            on_accepted=self._wake_submitter,
            wait_time=fleet.wait_time,
            visibility_timeout=fleet.visibility_timeout,
            max_delay=self.cfg.debounce.max_delay,
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
            tree_sources=registry.tree_sources(cfg.sources),
        )

    def preflight(self) -> None:
        """Ask each distribution a cheap ListInvalidations. AccessProblem (denied, no such
        distribution) raises, naming the distribution; an outage is logged and not fatal."""
        if self.role == "publisher":
            return  # a fleet publisher never calls CloudFront
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
        assert self.journal is not None
        context = registry.BuildContext(
            sink=self._sink,
            journal=self.journal,
            metrics=self.metrics,
            client=functools.partial(client_for, self.cfg),
            sink_batch=self._sink_batch,
        )
        for scfg in self.cfg.sources:
            source = registry.build(scfg, context)
            self.sources[scfg.name] = source
            if registry.source_type(scfg).tree:
                self.scanners[scfg.name] = source  # type: ignore[assignment]

    def _sink(self, change: Change) -> None:
        assert self.pipeline is not None
        self.pipeline.sink(change)

    def _sink_batch(self, batch: ChangeBatch) -> None:
        assert self.pipeline is not None
        self.pipeline.sink_batch(batch)

    def _catch_up(self) -> list[Callable[[], None]]:
        """Queue each filesystem source's start-up work; returns the first-start baselines,
        which the pipeline runs before it takes any change (READY does not wait for them)."""
        assert self.journal is not None
        assert self.pipeline is not None
        baselines: list[Callable[[], None]] = []
        self._replace_lost_journal()
        for name, scanner in self.scanners.items():
            if not self.journal.baseline_recorded(name):
                baselines.append(functools.partial(self._record_baseline, name, scanner))
            else:
                # Changes made while the daemon was not watching (or still debouncing when it
                # died) are found by diffing the tree against the index.
                self.pipeline.sink(Change(name, "", ChangeKind.RESCAN, time.time()))
        return baselines

    def _replace_lost_journal(self) -> None:
        """A new journal where the state dir had another one (deleted, or lost with its WAL)
        is not a first start: nothing proves any file unchanged, so every tree source gets an
        empty baseline and its catch-up scan invalidates every file."""
        assert self.journal is not None
        previous = self.journal.lost_predecessor()
        if previous is None:
            return
        log.warning(
            "journal_lost",
            journal=self.journal.path,
            previous_instance=previous,
            instance=self.journal.instance,
            sources=sorted(self.scanners),
            action="every file is treated as changed and invalidated (not a first start)",
        )
        self.metrics.journal_lost.set(1)
        for name in self.scanners:
            self.journal.mark_baseline_empty(name)
        self.journal.adopt_identity()

    def _record_baseline(self, name: str, scanner: TreeScanner) -> None:
        """The first start (`catchup.record_baseline` says what it does)."""
        assert self.journal is not None
        assert self.pipeline is not None
        started = time.monotonic()
        baseline = catchup.record_baseline(self.journal, scanner, self.pipeline.sink, time.time)
        log.info(
            "baseline_recorded",
            source=name,
            files=baseline.files,
            changed_since_watching=baseline.changed_since_watching,
            seconds=round(time.monotonic() - started, 3),
        )

    def _start_scheduler(self) -> None:
        submitter = self.submitter
        inv = self.cfg.invalidation
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(JOB_THREADS)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        if submitter is not None:  # a fleet publisher has none
            # CloudFront is called on the submitter's thread only: the jobs ask it to.
            scheduler.add_job(submitter.request, "interval", ["poll"], seconds=inv.poll_interval)
            scheduler.add_job(
                submitter.request, "interval", ["reconcile"], seconds=inv.reconcile_interval
            )
            submitter.request("reconcile")  # once, now
            probe_every = min(PROBE_INTERVAL, inv.reconcile_interval)
            scheduler.add_job(submitter.request, "interval", ["probe"], seconds=probe_every)
        for scfg in self.cfg.sources:
            interval = registry.source_type(scfg).rescan_interval(scfg)
            if interval and scfg.name in self.scanners:
                scheduler.add_job(
                    self._rescan, "interval", seconds=interval, args=[scfg.name], id=scfg.name
                )
        scheduler.add_job(self._tick, "interval", seconds=GAUGE_INTERVAL)
        scheduler.start()
        self.scheduler = scheduler

    def _rescan(self, source: str) -> None:
        assert self.pipeline is not None
        self.pipeline.sink(Change(source, "", ChangeKind.RESCAN, time.time()))

    # ---- health, metrics, systemd --------------------------------------------------------------

    def status_report(self, max_age: float = REPORT_MAX_AGE) -> StatusReport:
        """The latest `StatusReport`, collected anew when older than `max_age` seconds."""
        with self._report_lock:
            report = self._report
            now = time.time()
            if report is None or now - report.at >= max_age or report.phase != self.phase:
                report = collect_status(
                    phase=self.phase,
                    now=now,
                    sources=self._watched(),
                    distributions=list(self.cfg.distributions),
                    cloudfront=self.cloudfront,
                    submitter=self.submitter,
                    journal=None if self._stopped else self.journal,
                    accept_problem=self.pipeline.accept_problem if self.pipeline else None,
                )
                self._report = report
            return report

    def _watched(self) -> dict[str, Any]:
        """The sources, and the fleet queue as one more (`fleet`): health names what fails."""
        fleet = self.publisher or self.consumer
        return {**self.sources, "fleet": fleet} if fleet is not None else dict(self.sources)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body of /healthz)."""
        report = self.status_report()
        return report.healthy, report.body()

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, the JSON body of /livez): does the process itself work? The pipeline loop
        turns, the submitter's thread runs, each watcher watches a root that is there, the
        journal can be written. Not CloudFront, not permissions, not a root that is gone:
        restarting the process fixes none of those, and a probe that restarts it (Kubernetes
        liveness) or takes the pod out of its Service (readiness) must not depend on them.
        Starting (a first start's baseline may take minutes) and stopping count as alive."""
        problems: list[str] = []
        now = time.monotonic()
        if self._started and not self._stopped:
            pipeline, submitter = self.pipeline, self.submitter
            if pipeline is not None and not pipeline.alive:
                problems.append("pipeline: its thread has ended")
            elif self._last_turn is not None and now - self._last_turn > LIVENESS_STALL:
                problems.append(f"pipeline: no turn for {now - self._last_turn:.0f}s")
            if submitter is not None and not submitter.alive:
                problems.append("submitter: its thread has ended")
            problems += self._stopped_watchers(now)
        journal = self.journal
        if journal is not None and not self._stopped:
            why = journal.writable()
            if why:
                problems.append(why)
        body: dict[str, Any] = {"status": "ok" if not problems else "failing", "phase": self.phase}
        if problems:
            body["problems"] = problems
        return not problems, body

    def _stopped_watchers(self, now: float) -> list[str]:
        """Tree sources not watching although their root is there, for over LIVENESS_STALL
        (a watcher that died is replaced well within it; one that stays dead needs a restart)."""
        problems = []
        for scfg in self.cfg.sources:
            source, root = self.sources.get(scfg.name), getattr(scfg, "root", None)
            if source is None or root is None or source.healthy or not os.path.isdir(root):
                self._unwatched_since.pop(scfg.name, None)
                continue
            since = self._unwatched_since.setdefault(scfg.name, now)
            if now - since > LIVENESS_STALL:
                problems.append(f"source {scfg.name!r}: not watching {root} for {now - since:.0f}s")
        return problems

    def refresh_gauges(self) -> None:
        """Set every gauge from a fresh report (at each scrape and each tick)."""
        self.status_report(max_age=0).set_gauges(self.metrics)
        self._fleet_gauges()

    def _fleet_gauges(self) -> None:
        if self.publisher is not None and not self._stopped:
            with contextlib.suppress(InvalidatordError):  # closed under us by a stop
                self.metrics.fleet_outbox.set(self.publisher.outbox())

    def _tick(self) -> None:
        report = self.status_report(max_age=0)
        report.set_gauges(self.metrics)
        self._fleet_gauges()
        self.notifier.status(report.text())

    def status_text(self) -> str:
        """One line for `systemctl status`."""
        return self.status_report().text()

    def _heartbeat(self) -> None:
        """Called by the pipeline loop each turn: a wedged pipeline stops the watchdog pings.
        systemd starts the watchdog once READY=1 is sent, so nothing is sent before."""
        self._last_turn = time.monotonic()
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
        if self.consumer is not None:
            self.consumer.stop()  # what it received and did not commit comes back to the queue
        if self.scheduler is not None:
            # Its jobs produce work (rescans) and requests: none may follow the pipeline's
            # stop or race the drain. Each job only asks or reads, so the wait is short.
            self.scheduler.shutdown(wait=True)
        if self.pipeline is not None:
            self.pipeline.stop()
        finished = self._stop_submitter(drain=drain and self._started)
        self._stop_publisher(drain=drain and self._started)
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

    def _stop_publisher(self, *, drain: bool) -> None:
        """Stop the fleet publisher and (with `drain`) send what is in the outbox, within
        `shutdown_timeout`; what is not sent stays in the outbox for the next start."""
        publisher = self.publisher
        if publisher is None:
            return
        publisher.stop()
        drained = publisher.drain(time.monotonic() + self.cfg.shutdown_timeout) if drain else False
        log.info("fleet_publisher_stopped", drained=drained, outbox_kept=publisher.outbox())

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
            kept = sum(count for count, _ in journal.unsent_summary().values())
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


class _Signals:
    """The signals received and not yet handled, coalesced: 60 SIGHUPs queued while one reload
    runs are one more reload, and a SIGTERM among them wins over every queued reload.

    The handler takes no lock (it runs between two bytecodes of whatever the main thread is
    doing, possibly inside a lock it would wait on forever, as `threading.Event.set` would
    inside `Event.clear`): it only adds to a set; the wake-up comes through
    `signal.set_wakeup_fd`, written by the interpreter's C-level handler."""

    STOP = frozenset({"SIGTERM", "SIGINT"})

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)

    def handler(self, signum: int, _frame: object) -> None:
        self._pending.add(signal.Signals(signum).name)

    def wait(self, timeout: float | None = None) -> None:
        """Until a signal arrives (or `timeout`); its handler has run when this returns."""
        if self._pending:
            return
        self._read.settimeout(timeout)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            self._read.recv(4096)

    def take(self) -> set[str]:
        taken = set(self._pending)
        self._pending.difference_update(taken)
        return taken

    @property
    def stop_pending(self) -> bool:
        return bool(self._pending & self.STOP)


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
    signals = _Signals()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signals.handler)

    daemon = Daemon(cfg, dry_run=dry_run)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    if on_ready is not None:
        on_ready(daemon)
    while True:
        signals.wait()
        asked = signals.take()
        if not asked:
            continue
        stop = asked & signals.STOP
        if stop:
            log.info("signal_received", signal=sorted(stop)[0], reloads_dropped="SIGHUP" in asked)
            daemon.stop()
            return 0
        if "SIGHUP" in asked:
            log.info("signal_received", signal="SIGHUP")
            if reload is not None:
                daemon = _reload(daemon, reload, dry_run, signals)


def _reload(
    daemon: Daemon, reload: Callable[[], Config], dry_run: bool, signals: _Signals
) -> Daemon:
    """Load the new config, check CloudFront for it while the old daemon keeps running (and
    pinging systemd's watchdog from its pipeline), then swap. A SIGTERM while the check runs
    abandons the reload: the main loop stops the old daemon."""
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
    fresh = Daemon(new_cfg, dry_run=dry_run, notifier=daemon.notifier, metrics=daemon.metrics)
    checked: dict[str, InvalidatordError] = {}

    def preflight() -> None:
        try:
            fresh.preflight()
        except InvalidatordError as exc:
            checked["error"] = exc

    checker = threading.Thread(target=preflight, name="reload-preflight", daemon=True)
    checker.start()
    while checker.is_alive():
        if signals.stop_pending:
            log.warning("reload_abandoned", reason="stop requested while checking CloudFront")
            return daemon
        checker.join(0.2)
    if "error" in checked:
        log.error("reload_failed", error=str(checked["error"]))
        log.warning("reload_kept_old_config")
        daemon.notifier.ready(daemon.status_text())
        return daemon
    if new_cfg.log != old_cfg.log:
        logs.configure(new_cfg.log.format, new_cfg.log.level)
    # Same journal: the next daemon resumes its pending work. Another one: drain this one's.
    daemon.stop(reloading=True, drain=new_cfg.state_dir != old_cfg.state_dir)
    fresh.http = daemon.release_http()
    try:
        fresh.start(preflight=False)
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
