"""The submitter: pending paths in the journal -> planner -> CloudFront, and tracking to Completed.

Per distribution it never exceeds CloudFront's in-flight limits less the headroom (counting our
own InProgress invalidations from the journal and other people's from ListInvalidations), and it
handles every answer CloudFront can give without losing work:

- TooManyInvalidationsInProgress: the batch stays planned; if some of ours are in flight, wait
  for one to complete (the status poll wakes us), else back off (seconds growing to minutes).
- Throttling, 5xx, timeouts, connection errors: exponential backoff with jitter, capped; the
  batch keeps its CallerReference, so a retry whose first attempt did reach CloudFront returns
  the existing invalidation instead of creating a second one.
- InvalidArgument: bisect the batch (`bisection.send_bisecting`) until the offending path is
  alone, set it aside with a log line naming the file it came from, send the rest. When every
  path is refused (or enough parts that it must be the request), nothing is set aside: the work
  stays planned and the distribution backs off as for a fault (`batch_refused_whole`).
- A reused CallerReference with other paths: the batch gets a fresh reference.
- AccessDenied, NoSuchDistribution, bad credentials: a clear error, health degraded, the work
  stays pending, retried after `max_backoff` (never a busy loop).

Threads: the submitter's own thread is the only writer of its `DistributionState`s. Scheduled
jobs do not poll or reconcile on their threads: they `request()` it, which sets a flag and
wakes the submitter, which runs the request between two cycles. The public `poll_status`,
`reconcile`, `probe`, `cycle` and `drain` take the submitter's lock, for callers without its
thread (the CLI, the shutdown drain once the thread has stopped).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import structlog

from invalidatord.bisection import send_bisecting
from invalidatord.contracts import CloudFront
from invalidatord.errors import (
    AccessProblem,
    CallerReferenceConflict,
    InvalidatordError,
    InvalidPaths,
    SinkError,
    TooManyInProgress,
)
from invalidatord.journal import PLANNED, SUBMITTED, BatchRecord, Journal
from invalidatord.metrics import Metrics
from invalidatord.model import InFlight, is_wildcard
from invalidatord.planner import Choice, Limits, Tree, make_plan

log = structlog.get_logger(__name__)

_FIRST_BACKOFF = 1.0
#: After a plan that sent nothing (all of it waiting for room), how long further flushes do
#: not plan again while the room stays the same: a 50,000-file burst is accepted as a flush
#: every 10,000 paths, and each re-planned up to 50,000 pending paths only to wait again
#: (12% of the daemon's samples in the throughput bench). Room freed plans at once.
REPLAN_WAIT = 1.0
#: how many pending paths the planner sees when it may collapse them into wildcards
COLLAPSE_LOOKAHEAD = 100_000
#: while work waits for room, how often our in-flight invalidations are asked about (instead
#: of every poll_interval): the sooner one is seen complete, the sooner the next wave goes
HURRY_POLL = 3.0

#: What a scheduled job may ask the submitter's thread to do on its next turn.
Request = Literal["poll", "reconcile", "probe"]


@dataclass
class DistributionState:
    """What the submitter knows of one distribution beyond the journal."""

    name: str
    id: str
    not_before: float = 0.0
    failures: int = 0
    problem: str | None = None  # set while an operator must act (access, credentials)
    unreachable: str | None = None  # set while CloudFront cannot be reached
    external: InFlight = field(default_factory=InFlight)  # others' invalidations in progress
    reconciled: bool = False  # `external` has been learnt from CloudFront at least once
    reconciled_at: float = 0.0
    waiting_for_room: bool = False  # the last plan left work waiting for in-flight room
    #: the room (paths, wildcards) a plan that sent nothing saw, and until when another plan
    #: with that same room is not made (see `_cycle_distribution`)
    deferred_room: tuple[int, int] | None = None
    replan_after: float = 0.0


class Submitter:
    def __init__(
        self,
        *,
        journal: Journal,
        cloudfront: CloudFront,
        distributions: Mapping[str, str],
        limits: Limits,
        metrics: Metrics,
        max_backoff: float = 300.0,
        completion_wait: float = 30.0,
        trees: Mapping[str, Tree] | None = None,
        hurry_poll: float = HURRY_POLL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        dry_run: bool = False,
    ) -> None:
        """`dry_run`: the CloudFront edge sends nothing (and logs `would_submit` itself), so
        no `batch_submitted` is logged: a log reader must never see a dry run's batch as sent."""
        self._dry_run = dry_run
        self._journal = journal
        self._cf = cloudfront
        self._limits = limits
        self._metrics = metrics
        self._max_backoff = max_backoff
        self._completion_wait = completion_wait
        self._trees = dict(trees or {})
        self._hurry_poll = hurry_poll
        self._next_hurry = 0.0
        self._explain: tuple[int, int] = (-1, 0)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.states = {name: DistributionState(name, did) for name, did in distributions.items()}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one cycle at a time (thread, shutdown drain, CLI)
        self._requests: set[Request] = set()
        self._requests_lock = threading.Lock()
        self.attempts = 0

    # ---- running -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def request(self, what: Request) -> None:
        """Ask the submitter's thread to poll our invalidations' status, reconcile what others
        have in flight, or probe each distribution, on its next turn (a scheduled job's way:
        the submitter's state has one writer). Requests not yet run coalesce."""
        with self._requests_lock:
            self._requests.add(what)
        self._wake.set()

    def _run_requests(self) -> None:
        with self._requests_lock:
            asked, self._requests = self._requests, set()
        if "poll" in asked:
            self.poll_status()
        if "reconcile" in asked:
            self.reconcile()
        if "probe" in asked:
            self.probe()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once its thread has ended without being asked to stop."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._idle_wait())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._run_requests()
                self.cycle()
                self._hurry()
            except Exception:  # keep submitting; the work is in the journal
                log.exception("submitter_error")
                self._stop.wait(1.0)

    def _hurry(self) -> None:
        """While work waits for room, ask about our in-flight invalidations every few seconds
        rather than every poll_interval (poll_status wakes the cycle when one completed)."""
        if not any(s.waiting_for_room for s in self.states.values()):
            return
        now = self._clock()
        if now >= self._next_hurry:
            self._next_hurry = now + self._hurry_poll
            self.poll_status()

    def _idle_wait(self) -> float:
        now = self._clock()
        waits = [s.not_before - now for s in self.states.values() if s.not_before > now]
        return max(0.05, min([1.0, *waits]))

    def drain(self, deadline: float) -> bool:
        """Submit until nothing is pending or planned, or `deadline` (monotonic) passes, or
        every distribution with work left needs an operator (access, credentials): waiting
        cannot help those. Returns True when everything was submitted.

        Run once the submitter's thread has stopped (and the scheduler with it): it polls the
        status of our invalidations itself, every `completion_wait`, so work waiting for one
        of them to complete can still go."""
        polled = time.monotonic()
        while time.monotonic() < deadline:
            self._run_requests()
            if time.monotonic() - polled >= self._completion_wait:
                self.poll_status()
                polled = time.monotonic()
            self.cycle(ignore_backoff=False)
            left = self._distributions_with_work()
            if not left:
                return True
            if all(self.states[name].problem for name in left):
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return False

    def _distributions_with_work(self) -> set[str]:
        """Distributions of this submitter with paths pending or batches planned."""
        names = set(self._journal.pending_summary()) | {
            b.distribution for b in self._journal.batches(PLANNED)
        }
        return names & set(self.states)

    # ---- one pass ----------------------------------------------------------------------------

    def cycle(self, ignore_backoff: bool = False) -> None:
        with self._lock:
            for state in self.states.values():
                if not ignore_backoff and self._clock() < state.not_before:
                    continue
                self._cycle_distribution(state)

    def _cycle_distribution(self, state: DistributionState) -> None:
        if not state.reconciled and not self._reconcile(state):
            # Until CloudFront says what others have in flight, the room left for them (the
            # headroom) is unknown: a start-up must not spend it. Retry after a backoff.
            self._backoff(state)
            return
        for record in self._journal.batches(PLANNED, state.name):
            if not self._submit(record, state):
                return
        while True:
            in_flight = self._journal.in_flight(state.name) + state.external
            room = self._limits.capacity(in_flight)
            if room.files <= 0 and room.wildcards <= 0:
                if self._others_block(state) and self._reconcile(state):
                    continue  # learnt afresh what others still have in flight
                return
            now = self._clock()
            if state.deferred_room == (room.files, room.wildcards) and now < state.replan_after:
                return  # the same room as a plan that sent nothing a moment ago
            # with a collapse policy, look at more than fits: a directory's worth of paths
            # may go as one wildcard
            wanted = room.files + room.wildcards
            tree = self._trees.get(state.name)
            # the cost model weighs all that is pending (what waits for room included)
            if tree is not None or (room.wildcards and self._limits.collapse_threshold):
                wanted = max(wanted, COLLAPSE_LOOKAHEAD)
            pending = self._journal.pending_paths(state.name, wanted)
            if not pending:
                state.waiting_for_room = False
                return
            oldest = self._journal.oldest_pending(state.name)
            the_plan = make_plan(
                state.name,
                pending,
                in_flight,
                self._limits,
                tree=tree,
                billed_this_month=self._journal.billed_this_month(now),
                waited=0.0 if oldest is None else max(0.0, now - oldest),
            )
            state.waiting_for_room = bool(the_plan.deferred)
            batches = the_plan.batches
            chosen = {c.wildcard: c for c in the_plan.choices}
            if not batches:
                if self._others_block(state) and self._reconcile(state):
                    continue
                state.deferred_room = (room.files, room.wildcards)
                state.replan_after = now + REPLAN_WAIT
                return
            state.deferred_room = None
            for batch in batches:
                # The batch's own paths; create_batch takes every pending path under one of
                # its wildcards by range, so those need not be listed.
                under = tuple(p[:-1] for p in batch.paths if is_wildcard(p))
                consumed = [
                    p for p in batch.paths if not is_wildcard(p) and not p.startswith(under)
                ]
                record = self._journal.create_batch(state.name, batch.paths, consumed)
                for p in batch.paths:
                    if p in chosen:
                        self._log_choice(state, chosen[p], record)
                if not self._submit(record, state, len(the_plan.deferred)):
                    return

    def _log_choice(self, state: DistributionState, choice: Choice, record: BatchRecord) -> None:
        """One line per wildcard decision, logged once: when its batch is planned (a batch kept
        after a failure is resent as planned, not decided again). `caller_reference` joins it
        to the batch's `batch_submitted` (or, in a dry run, `would_submit`) line."""
        log.info(
            "wildcard_chosen",
            distribution=state.name,
            wildcard=choice.wildcard,
            directory=choice.wildcard[:-1],
            reason=choice.reason,
            pending=choice.pending,
            objects=choice.objects,
            evicted=choice.evicted,
            why=choice.describe(self._limits),
            caller_reference=record.caller_reference,
        )

    def _others_block(self, state: DistributionState) -> bool:
        """Other people's invalidations fill the room and we have not asked about them for
        `completion_wait`: they may be done (reconcile_interval alone could keep us waiting
        minutes after they finished)."""
        if not (state.external.files or state.external.wildcards):
            return False
        return self._clock() - state.reconciled_at >= self._completion_wait

    def _submit(
        self,
        record: BatchRecord,
        state: DistributionState,
        waiting: int = 0,
    ) -> bool:
        """Send one planned batch, bisecting it on InvalidArgument. True = go on with the next;
        False = stop this distribution for now (backing off or waiting for completions).
        `waiting` (paths left waiting for room) goes into the batch's log line."""
        self._explain = (record.id, waiting)
        result = send_bisecting(
            record,
            send=lambda part: self._send(part, state),
            split=lambda part, exc: self._split(part, state, exc),
        )
        for part, exc in result.rejected:
            self._reject(part, state, exc)
        if result.refused_whole is not None:
            # Not this batch's paths but the request: keep it all (its parts stay planned)
            # and back off as for any fault, saying why in health.
            exc = result.refused_whole
            delay = self._backoff(state)
            state.unreachable = (
                f"{exc.code} for every path of a batch of {len(record.paths)}: {exc.message}"
            )
            log.warning(
                "batch_refused_whole",
                distribution=state.name,
                paths=len(record.paths),
                requests=result.requests,
                error=exc.message,
                retry_in=round(delay, 2),
                pending_kept=True,
            )
            return False
        return not result.stopped

    def _explained(self, record: BatchRecord) -> dict[str, object]:
        """The planner's reasons for `record`, for its log line (a bisected part has none)."""
        batch_id, waiting = self._explain
        if batch_id != record.id or not waiting:
            return {}
        return {"waiting_for_room": waiting}

    def _send(self, record: BatchRecord, state: DistributionState) -> bool:
        """One CreateInvalidation; raises InvalidPaths for `send_bisecting`."""
        self.attempts += 1
        try:
            invalidation = self._cf.create_invalidation(
                state.id, record.paths, record.caller_reference
            )
        except SinkError as exc:
            self._metrics.api_errors.labels(state.name, exc.code).inc()
            if isinstance(exc, InvalidPaths):
                raise
            return self._failed(record, state, exc)
        self._journal.mark_submitted(record.id, invalidation.id, invalidation.completed)
        now = self._clock()
        state.failures = 0
        state.problem = state.unreachable = None
        flight = record.in_flight
        self._metrics.submitted.labels(state.name).inc()
        self._metrics.paths_submitted.labels(state.name, "file").inc(flight.files)
        self._metrics.paths_submitted.labels(state.name, "wildcard").inc(flight.wildcards)
        self._metrics.to_submit.labels(state.name).observe(max(0.0, now - record.first_seen))
        self._metrics.last_success.labels(state.name).set(now)
        if self._dry_run:
            return True
        log.info(
            "batch_submitted",
            distribution=state.name,
            distribution_id=state.id,
            invalidation_id=invalidation.id,
            status=invalidation.status,
            paths=len(record.paths),
            files=flight.files,
            wildcards=flight.wildcards,
            caller_reference=record.caller_reference,
            latency=round(now - record.first_seen, 3),
            sample=list(record.paths[:5]),
            **self._explained(record),
        )
        # The canonical line shows five; `--log-level debug` shows every one.
        log.debug(
            "batch_paths",
            distribution=state.name,
            invalidation_id=invalidation.id,
            paths=list(record.paths),
        )
        return True

    def _split(
        self, record: BatchRecord, state: DistributionState, exc: InvalidPaths
    ) -> tuple[BatchRecord, BatchRecord]:
        self._journal.record_failure(record.id, f"{exc.code}: {exc.message}")
        first, second = self._journal.split(record.id)
        log.warning(
            "batch_bisected",
            distribution=state.name,
            paths=len(record.paths),
            halves=[len(first.paths), len(second.paths)],
            error=exc.message,
        )
        return first, second

    def _reject(self, record: BatchRecord, state: DistributionState, exc: InvalidPaths) -> None:
        self._journal.record_failure(record.id, f"{exc.code}: {exc.message}")
        self._journal.reject(record.id, f"{exc.code}: {exc.message}")
        self._metrics.rejected.labels(state.name).inc()
        log.error(
            "path_rejected",
            distribution=state.name,
            path=record.paths[0],
            origin=record.origins.get(record.paths[0], ""),
            error=exc.message,
        )

    def _failed(self, record: BatchRecord, state: DistributionState, exc: SinkError) -> bool:
        self._journal.record_failure(record.id, f"{exc.code}: {exc.message}")
        if isinstance(exc, CallerReferenceConflict):
            fresh = self._journal.rereference(record.id)
            log.warning(
                "caller_reference_reused",
                distribution=state.name,
                old=record.caller_reference,
                new=fresh.caller_reference,
            )
            return self._submit(fresh, state)
        if isinstance(exc, TooManyInProgress):
            ours = self._journal.in_flight(state.name)
            if ours.files or ours.wildcards:
                # Resubmit as soon as one of ours completes: the status poll wakes us.
                state.not_before = self._clock() + self._completion_wait
                log.info("too_many_in_progress", distribution=state.name, waiting="completion")
            else:
                delay = self._backoff(state)
                log.info("too_many_in_progress", distribution=state.name, retry_in=delay)
            return False
        if isinstance(exc, AccessProblem):
            state.problem = str(exc)
            state.not_before = self._clock() + self._max_backoff
            log.error(
                "cloudfront_access_problem",
                distribution=state.name,
                code=exc.code,
                error=exc.message,
                retry_in=self._max_backoff,
                pending_kept=True,
            )
            return False
        delay = self._backoff(state)
        if exc.retryable:
            state.unreachable = f"{exc.code}: {exc.message}"
        log.warning(
            "cloudfront_error",
            distribution=state.name,
            code=exc.code,
            error=exc.message,
            retryable=exc.retryable,
            retry_in=round(delay, 2),
        )
        return False

    def _backoff(self, state: DistributionState) -> float:
        state.failures += 1
        ceiling = min(self._max_backoff, _FIRST_BACKOFF * 2 ** min(state.failures - 1, 20))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        state.not_before = self._clock() + delay
        return delay

    # ---- tracking ----------------------------------------------------------------------------

    def poll_status(self) -> None:
        """Ask CloudFront about each of our InProgress invalidations."""
        with self._lock:
            completed = self._poll_status()
        if completed:
            self.wake()

    def _poll_status(self) -> int:
        completed = 0
        for record in self._journal.batches(SUBMITTED):
            state = self.states.get(record.distribution)
            if state is None or record.invalidation_id is None:
                continue
            try:
                invalidation = self._cf.get_invalidation(state.id, record.invalidation_id)
            except InvalidatordError as exc:
                log.warning("status_poll_failed", distribution=state.name, error=str(exc))
                continue
            if invalidation.completed:
                self._journal.mark_completed(record.id)
                completed += 1
                took = self._clock() - (record.submitted or self._clock())
                self._metrics.to_complete.labels(state.name).observe(max(0.0, took))
                log.info(
                    "invalidation_completed",
                    distribution=state.name,
                    invalidation_id=record.invalidation_id,
                    seconds=round(took, 1),
                )
                state.not_before = min(state.not_before, self._clock())
        return completed

    def reconcile(self) -> None:
        """Learn what else is in flight on each distribution (people, other tools)."""
        with self._lock:
            for state in self.states.values():
                self._reconcile(state)

    def probe(self) -> None:
        """Ask each distribution a cheap ListInvalidations, so health notices CloudFront
        refusing or unreachable while nothing is being submitted (a `health.WatchedCloudFront`
        remembers the outcome and logs the changes of state)."""
        with self._lock:
            for state in self.states.values():
                with contextlib.suppress(SinkError):
                    self._cf.check_distribution(state.id)

    def external(self, name: str) -> InFlight:
        """What others have in flight on the distribution, as last reconciled."""
        state = self.states.get(name)
        return state.external if state is not None else InFlight()

    def _reconcile(self, state: DistributionState) -> bool:
        """Learn what others have in flight on one distribution. False when CloudFront could
        not tell (the failure is logged)."""
        try:
            in_progress = self._cf.list_in_progress(state.id)
        except InvalidatordError as exc:
            log.warning("reconcile_failed", distribution=state.name, error=str(exc))
            return False
        ours = self._journal.known_invalidation_ids(state.name)
        # A planned batch whose CreateInvalidation took effect but whose answer was lost is
        # ours too (its resubmission returns that invalidation): known by its reference.
        refs = {b.caller_reference for b in self._journal.batches(PLANNED, state.name)}
        files = wildcards = 0
        for invalidation in in_progress:
            if invalidation.id in ours or invalidation.caller_reference in refs:
                continue
            wild = sum(1 for p in invalidation.paths if is_wildcard(p))
            wildcards += wild
            files += len(invalidation.paths) - wild
        state.external = InFlight(files, wildcards)
        state.reconciled = True
        state.reconciled_at = self._clock()
        if files or wildcards:
            log.info(
                "external_in_flight", distribution=state.name, files=files, wildcards=wildcards
            )
        return True

    def problems(self) -> dict[str, str]:
        """distribution -> why it is not healthy."""
        out: dict[str, str] = {}
        for state in self.states.values():
            reason = state.problem or (state.unreachable if state.failures >= 3 else None)
            if reason:
                out[state.name] = reason
        return out
