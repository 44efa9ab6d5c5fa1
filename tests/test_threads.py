"""Who owns which thread (daemon.py's table): CloudFront is called on the submitter's thread
only, and the scheduler, which produces work, stops before the pipeline and the drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apscheduler.schedulers.base import STATE_STOPPED

from invalidatord.config import load_config
from invalidatord.contracts import CloudFront
from invalidatord.daemon import Daemon
from invalidatord.factory import cloudfront_for
from invalidatord.model import Invalidation
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import emulator_config, make_site, received
from tests.waiting import wait_for

SHUTDOWN_TIMEOUT_SECONDS = 120
SHUTDOWN_TIMEOUT = f"{SHUTDOWN_TIMEOUT_SECONDS}s"


class ThreadRecordingCloudFront:
    """`contracts.CloudFront` around the real client, noting the thread of each call and, for
    CreateInvalidation, whether the daemon's scheduler was still running."""

    def __init__(self, inner: CloudFront) -> None:
        self.inner = inner
        self.daemon: Daemon | None = None
        self.threads: list[tuple[str, str]] = []
        self.scheduler_stopped_at_create: list[bool] = []

    def _note(self, operation: str) -> None:
        self.threads.append((operation, threading.current_thread().name))

    def create_invalidation(
        self, distribution_id: str, paths: Sequence[str], caller_reference: str
    ) -> Invalidation:
        self._note("CreateInvalidation")
        scheduler = self.daemon.scheduler if self.daemon is not None else None
        self.scheduler_stopped_at_create.append(
            scheduler is not None and scheduler.state == STATE_STOPPED
        )
        return self.inner.create_invalidation(distribution_id, paths, caller_reference)

    def get_invalidation(self, distribution_id: str, invalidation_id: str) -> Invalidation:
        self._note("GetInvalidation")
        return self.inner.get_invalidation(distribution_id, invalidation_id)

    def list_in_progress(self, distribution_id: str) -> list[Invalidation]:
        self._note("ListInvalidations")
        return self.inner.list_in_progress(distribution_id)

    def check_distribution(self, distribution_id: str) -> None:
        self._note("CheckDistribution")
        self.inner.check_distribution(distribution_id)


def _daemon(tmp_path: Path, cloudfront: CloudFrontEmulator, **kwargs: Any) -> Daemon:
    docroot = tmp_path / "site"
    make_site(docroot, {"index.html": "home"})
    cfg = load_config(emulator_config(tmp_path, docroot, cloudfront, **kwargs))
    recorder = ThreadRecordingCloudFront(cloudfront_for(cfg))
    daemon = Daemon(cfg, cloudfront=recorder)
    recorder.daemon = daemon
    return daemon


def test_scheduled_polls_and_reconciles_run_on_the_submitter_thread(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Status polls (every 200 ms here), reconciles and probes are asked for by the scheduler
    and run by the submitter, the only writer of its state: no CloudFront call is made on a
    job thread, where it could overwrite a backoff the submitter just set."""
    cloudfront.in_progress_seconds = 2.0
    daemon = _daemon(tmp_path, cloudfront)
    recorder = daemon.cloudfront.inner
    assert isinstance(recorder, ThreadRecordingCloudFront)
    daemon.start()
    try:
        (Path(daemon.cfg.sources[0].root) / "index.html").write_text("changed")  # type: ignore[union-attr]
        wait_for(lambda: "/index.html" in received(cloudfront), 15, what="/index.html sent")
        wait_for(
            lambda: any(op == "GetInvalidation" for op, _ in recorder.threads),
            15,
            what="a status poll",
        )
    finally:
        daemon.stop()
    after_start = [(op, t) for op, t in recorder.threads if t != "MainThread"]
    assert {op for op, _ in after_start} >= {"CreateInvalidation", "GetInvalidation"}
    assert {t for _, t in after_start} <= {"submitter", "drain"}, after_start


def test_the_scheduler_stops_before_the_pipeline_and_the_drain(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A change still debouncing at SIGTERM is accepted by the pipeline's stop and sent by the
    drain; by then the scheduler has stopped, so no rescan can reach the stopped pipeline and
    no job runs beside the drain (the old order stopped the scheduler last)."""
    # The drain first waits for the CloudFront call in progress (a start-up reconcile or
    # probe), then reconciles and submits: on a loaded machine that outlasted the default
    # 10 s shutdown_timeout once, and the drain gave up before /late.html. It returns as soon
    # as everything is sent, so a generous bound costs nothing when the machine is idle.
    daemon = _daemon(
        tmp_path,
        cloudfront,
        quiet="20s",
        max_delay="30s",
        extra={"shutdown_timeout": SHUTDOWN_TIMEOUT},
    )
    recorder = daemon.cloudfront.inner
    assert isinstance(recorder, ThreadRecordingCloudFront)
    daemon.start()
    try:
        root = Path(daemon.cfg.sources[0].root)  # type: ignore[union-attr]
        (root / "late.html").write_text("late")
        wait_for(
            lambda: (
                daemon.metrics.registry.get_sample_value(
                    "invalidatord_changes_total", {"source": "docroot", "kind": "created"}
                )
                or 0
            ),
            30,
            what="the change seen by the pipeline",
        )
    finally:
        stopping = time.monotonic()
        daemon.stop()
        stopped_in = time.monotonic() - stopping
    # within the bound, so the drain finished rather than gave up
    assert stopped_in < SHUTDOWN_TIMEOUT_SECONDS, stopped_in
    assert "/late.html" in received(cloudfront)
    assert recorder.scheduler_stopped_at_create == [True]
