"""Never lose an invalidation: `invalidatord run` as a real subprocess, killed, stopped, flooded
and refused, against the CloudFront emulator in the test process. Each test asserts the exact set
of paths CloudFront got (the "barrier" idiom of test_e2e_filesystem.py: touch a sentinel last and
wait for its path; everything before it has been flushed by then).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from invalidatord.journal import PLANNED, REJECTED, Journal
from invalidatord.testing.cloudfront import CREATE, CloudFrontEmulator
from tests.conftest import EmulatorFactory
from tests.harness import (
    DaemonProcess,
    Daemons,
    barrier,
    emulator_config,
    make_site,
    received,
)
from tests.waiting import wait_for

SITE = {
    "index.html": "home",
    "about/index.html": "about",
    "css/site.css": "body{}",
    "old.html": "old",
    "img/a.png": "png",
    "page.html": "page v1",
    "keep/untouched.html": "never changes",
}


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    make_site(root, SITE)
    return root


def creates(cloudfront: CloudFrontEmulator) -> list[Any]:
    return [r for r in cloudfront.requests if r.op == CREATE]


def change_site(docroot: Path) -> set[str]:
    """Create, modify (new size), delete, rename and add a directory; the deletion comes last.
    Returns the URL paths these changes must invalidate (index.html maps to two)."""
    (docroot / "new.html").write_text("new")
    (docroot / "page.html").write_text("page v2, longer")
    (docroot / "about/index.html").write_text("about v2")
    (docroot / "img/a.png").rename(docroot / "img/b.png")
    make_site(docroot, {"fresh/one.html": "1", "fresh/two.html": "2"})
    (docroot / "old.html").unlink()
    return {
        "/new.html",
        "/page.html",
        "/about/",
        "/about/index.html",
        "/img/a.png",
        "/img/b.png",
        "/fresh/one.html",
        "/fresh/two.html",
        "/old.html",
    }


# ---- 1. SIGKILL inside the debounce window ------------------------------------------------------


def test_sigkill_inside_the_debounce_window_loses_nothing(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """Changes still debouncing when the daemon is SIGKILLed are found by the catch-up scan of
    the next start: every changed path is invalidated, and nothing else."""
    config = emulator_config(tmp_path, docroot, cloudfront, quiet="30s", max_delay="60s")
    first = daemons.start(config)
    first.wait_event("baseline_recorded")
    expected = change_site(docroot)
    wait_for(
        lambda: first.metric("invalidatord_changes_total", source="docroot", kind="deleted") >= 1,
        20,
        what="the daemon to see the deletion (the last change)",
    )
    first.stop(signal.SIGKILL)
    assert received(cloudfront) == set()

    config = emulator_config(tmp_path, docroot, cloudfront, quiet="300ms", max_delay="5s")
    second = daemons.start(config)
    barrier(cloudfront, docroot)
    assert received(cloudfront) == expected | {"/zz-sentinel.txt"}
    second.wait_event("rescan_done", lambda e: e["prefix"] == "", timeout=10)


# ---- 2. SIGKILL between CreateInvalidation and the journal update -------------------------------


@pytest.mark.parametrize("fault", ["ServiceUnavailable", "ConnectionReset"])
def test_sigkill_after_an_unacknowledged_create_does_not_bill_twice(
    tmp_path: Path,
    docroot: Path,
    cloudfront: CloudFrontEmulator,
    daemons: Daemons,
    fault: str,
) -> None:
    """CloudFront created the invalidation but its answer was lost, and the daemon was SIGKILLed
    while backing off: the restart resubmits the batch with the same CallerReference and
    CloudFront holds exactly one invalidation for it."""
    config = emulator_config(tmp_path, docroot, cloudfront)
    first = daemons.start(config)
    cloudfront.inject(fault, after=True)
    (docroot / "a.html").write_text("a")
    (docroot / "b.html").write_text("b")
    first.wait_event("cloudfront_error")
    first.stop(signal.SIGKILL)

    [made] = cloudfront.invalidations(cloudfront.distribution_id)
    assert set(made.paths) == {"/a.html", "/b.html"}
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    try:
        [planned] = journal.batches(PLANNED)
    finally:
        journal.close()
    assert planned.caller_reference == made.caller_reference
    assert planned.invalidation_id is None  # the daemon never learnt it

    cloudfront.clear_faults()
    second = daemons.start(config)
    submitted = second.wait_event("batch_submitted")
    assert submitted["caller_reference"] == made.caller_reference
    assert submitted["invalidation_id"] == made.id
    barrier(cloudfront, docroot)
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 2  # that one + sentinel
    refs = {r.caller_reference for r in creates(cloudfront) if "/a.html" in r.paths}
    assert refs == {made.caller_reference}
    assert received(cloudfront) == {"/a.html", "/b.html", "/zz-sentinel.txt"}
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    try:
        # a.html and b.html once, and the sentinel (journaled a moment after CloudFront has it)
        wait_for(lambda: journal.billed_this_month() == 3, 10, what="3 billed paths")
        assert journal.billed_this_month() == 3
    finally:
        journal.close()


def test_sigterm_during_an_outage_keeps_the_work_for_the_next_start(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """SIGTERM while CloudFront answers only 503: the daemon still exits 0 within
    shutdown_timeout, says what it kept, and the next start submits it (one invalidation)."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"shutdown_timeout": "2s", "invalidation": {"max_backoff": "1s"}},
    )
    first = daemons.start(config)
    cloudfront.inject("ServiceUnavailable")
    (docroot / "a.html").write_text("a")
    (docroot / "b.html").write_text("b")
    first.wait_event("cloudfront_error")
    started = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0, first.transcript()
    assert time.monotonic() - started < 2 + 5  # the timeout, plus a botocore call in progress
    assert first.find("daemon_stopped")[-1]["drained"] is False
    assert received(cloudfront) == set()

    cloudfront.clear_faults()
    second = daemons.start(config)
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {"/a.html", "/b.html", "/zz-sentinel.txt"}
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 2
    second.wait_event("batch_submitted", timeout=10)


def test_pending_paths_survive_sigkill_while_others_fill_the_limit(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """Someone else's 2,950 paths in flight leave no room: accepted paths wait in the journal,
    survive a SIGKILL, and go once that invalidation completes, never over the limit."""
    cloudfront.hold(True)
    client = boto3.client("cloudfront", endpoint_url=cloudfront.endpoint_url)
    client.create_invalidation(
        DistributionId=cloudfront.distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": 2950, "Items": [f"/human/{i}" for i in range(2950)]},
            "CallerReference": "by-hand",
        },
    )
    # Others' invalidations are learnt by reconciling: often here, so the test is quick.
    config = emulator_config(
        tmp_path, docroot, cloudfront, extra={"invalidation": {"reconcile_interval": "1s"}}
    )
    first = daemons.start(config)
    first.wait_event("external_in_flight", lambda e: e["files"] == 2950)
    (docroot / "a.html").write_text("a")
    (docroot / "b.html").write_text("b")
    first.wait_event("changes_accepted", lambda e: e["urls"] == 2)
    first.stop(signal.SIGKILL)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    try:
        assert journal.pending_count() == 2
    finally:
        journal.close()
    assert len(creates(cloudfront)) == 1  # only the one made by hand

    second = daemons.start(config)
    cloudfront.hold(False)
    cloudfront.complete_all()
    barrier(cloudfront, docroot)
    ours = received(cloudfront) - {f"/human/{i}" for i in range(2950)}
    assert ours == {"/a.html", "/b.html", "/zz-sentinel.txt"}
    assert cloudfront.max_in_flight_seen[cloudfront.distribution_id].files <= 2950
    assert all(r.status == 201 for r in creates(cloudfront)), creates(cloudfront)
    # logged a moment after CloudFront has it: wait for the line rather than race it
    second.wait_event("batch_submitted", lambda e: "/a.html" in e["sample"], timeout=10)


# ---- 3. Downtime ----------------------------------------------------------------------------


def test_changes_made_while_stopped_are_invalidated_on_start(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """Stopped with SIGTERM, the tree changes (files created, modified, deleted, renamed, a
    directory removed): the next start invalidates exactly those, unchanged files are not."""
    config = emulator_config(tmp_path, docroot, cloudfront)
    first = daemons.start(config)
    first.wait_event("baseline_recorded")
    assert first.stop(signal.SIGTERM) == 0, first.transcript()

    expected = change_site(docroot)
    (docroot / "css/site.css").unlink()
    (docroot / "css").rmdir()
    expected.add("/css/site.css")

    second = daemons.start(config)
    barrier(cloudfront, docroot)
    assert received(cloudfront) == expected | {"/zz-sentinel.txt"}
    assert not second.find("baseline_recorded")


# ---- 4. inotify queue overflow ----------------------------------------------------------------

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def _writable(path: Path) -> bool:
    try:
        with path.open("r+"):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _writable(MAX_QUEUED), reason=f"{MAX_QUEUED} is not writable (needs root, no container)"
)
def test_inotify_overflow_loses_no_change(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """With a 64-event kernel queue, 3,000 new files in 30 watched directories (written while
    the daemon is stopped, so nothing drains the queue) overflow it for sure; the rescan that
    follows still invalidates every change, nothing else, and the daemon still watches every
    directory afterwards, including one made during the overflow."""
    for d in range(30):
        (docroot / f"burst/d{d:02}").mkdir(parents=True)
    config = emulator_config(tmp_path, docroot, cloudfront)
    original = MAX_QUEUED.read_text().strip()
    proc = daemons.add(DaemonProcess("run", "-c", str(config)))
    try:
        MAX_QUEUED.write_text("64")
        proc.start()
        # The queue size is fixed when the daemon's inotify instance is made: restore the
        # machine's value as soon as the source watches, not only at the end.
        proc.wait_event("source_watching")
    finally:
        MAX_QUEUED.write_text(original)
    proc.wait_ready()

    expected = {"/page.html", "/old.html", "/burst/new/f.html"}
    # Files in new directories raise no event until the directory is watched, so the burst
    # goes into directories the daemon already watches; stopped, it reads none of them.
    proc.signal_all(signal.SIGSTOP)
    try:
        (docroot / "page.html").write_text("page v2, longer")
        for d in range(30):
            for i in range(100):
                (docroot / f"burst/d{d:02}/f{i:03}.html").write_text("x")
                expected.add(f"/burst/d{d:02}/f{i:03}.html")
        make_site(docroot, {"burst/new/f.html": "made during the overflow"})
        (docroot / "old.html").unlink()
    finally:
        proc.signal_all(signal.SIGCONT)
    proc.wait_event("watcher_overflow")
    wait_for(lambda: expected <= received(cloudfront), 60, what="every changed path")
    # Still watching every directory, the one made during the overflow too.
    barrier(cloudfront, docroot, name="burst/new/zz-late.html")
    assert received(cloudfront) == expected | {"/burst/new/zz-late.html"}
    assert proc.metric("invalidatord_watcher_overflows_total") >= 1


# ---- 5. Faults ------------------------------------------------------------------------------


def _storm(
    tmp_path: Path,
    docroot: Path,
    cloudfront: CloudFrontEmulator,
    daemons: Daemons,
    dirs: int,
    per_dir: int,
) -> dict[str, Any]:
    """Throttling (50%), 503 (20%), TooMany for a while and slow completion, while
    `dirs * per_dir` new files arrive. Returns the figures the callers assert and report."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"invalidation": {"max_backoff": "2s"}},
    )
    proc = daemons.start(config)
    started = time.monotonic()
    cloudfront.inject("TooManyInvalidationsInProgress", times=4)
    # one of each for certain (the seeded rates below depend on how many requests timing makes)
    cloudfront.inject("Throttling", times=1)
    cloudfront.inject("ServiceUnavailable", times=1)
    cloudfront.inject("Throttling", rate=0.5, seed=11, operation="*")
    cloudfront.inject("ServiceUnavailable", rate=0.2, seed=12, operation="*")
    expected = set()
    for d in range(dirs):
        folder = docroot / f"deploy/d{d:02}"
        folder.mkdir(parents=True)
        for i in range(per_dir):
            (folder / f"f{i:03}.html").write_text("x")
            expected.add(f"/deploy/d{d:02}/f{i:03}.html")
    wait_for(lambda: expected <= received(cloudfront), 120, what="every path at CloudFront")
    took = time.monotonic() - started
    barrier(cloudfront, docroot, timeout=60)
    assert received(cloudfront) == expected | {"/zz-sentinel.txt"}
    dist = cloudfront.distribution_id
    seen = cloudfront.max_in_flight_seen[dist]
    assert seen.files <= 3000 - 100, seen  # CloudFront's limit less the default headroom
    assert seen.wildcards <= 15, seen
    # The emulator records a request just after creating its invalidation: let it catch up.
    wait_for(
        lambda: (
            len([r for r in creates(cloudfront) if r.status == 201])
            >= len(cloudfront.invalidations(dist))
        ),
        5,
        what="the emulator to record every request",
    )
    requests = creates(cloudfront)
    answers: dict[str, int] = {}  # every operation's answers: the faults hit polls too
    for r in cloudfront.requests:
        key = f"{r.op}:{r.error_code or r.status}"
        answers[key] = answers.get(key, 0) + 1
    faults = {k.split(":")[1] for k in answers}
    assert {"Throttling", "ServiceUnavailable", "TooManyInvalidationsInProgress"} <= faults, answers
    assert proc.proc is not None
    assert proc.proc.poll() is None, proc.transcript()  # still running
    return {
        "seconds": round(took, 1),
        "create_requests": len(requests),
        "invalidations": len(cloudfront.invalidations(dist)),
        "answers": answers,
        "max_in_flight": seen,
    }


def test_fault_storm_loses_nothing_with_bounded_attempts(
    tmp_path: Path, cloudfront_factory: EmulatorFactory, daemons: Daemons, docroot: Path
) -> None:
    """1,000 new files in 10 directories through throttling, 503s, TooMany and invalidations
    that stay InProgress for 2 s: all arrive, within the limits, in a bounded number of requests."""
    cloudfront = cloudfront_factory(in_progress_seconds=2.0)
    figures = _storm(tmp_path, docroot, cloudfront, daemons, dirs=10, per_dir=100)
    print(f"fault storm, 1,000 files: {figures}")
    assert figures["create_requests"] <= 60, figures


@pytest.mark.slow
def test_fault_storm_of_4000_files_loses_nothing_with_bounded_attempts(
    tmp_path: Path, cloudfront_factory: EmulatorFactory, daemons: Daemons, docroot: Path
) -> None:
    """4,000 new files in 40 directories through throttling, 503s, TooMany and invalidations
    that stay InProgress for 3 s: all arrive, never more than 2,900 files in flight, in a
    bounded number of requests."""
    cloudfront = cloudfront_factory(in_progress_seconds=3.0)
    figures = _storm(tmp_path, docroot, cloudfront, daemons, dirs=40, per_dir=100)
    print(f"fault storm, 4,000 files: {figures}")
    assert figures["create_requests"] <= 80, figures


# ---- 6. One path CloudFront refuses ------------------------------------------------------------


def test_one_refused_path_of_500_is_set_aside_and_the_rest_sent(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """InvalidArgument on one path of a 500-path batch: the other 499 reach CloudFront, the one
    is logged (`path_rejected`, naming the file) and the daemon keeps running."""
    config = emulator_config(tmp_path, docroot, cloudfront)
    proc = daemons.start(config)
    cloudfront.reject_path("/batch/p321.html")
    folder = docroot / "batch"
    folder.mkdir()
    for i in range(500):
        (folder / f"p{i:03}.html").write_text("x")
    rejected = proc.wait_event("path_rejected")
    assert rejected["path"] == "/batch/p321.html"
    assert rejected["origin"] == "docroot:batch/p321.html"
    assert rejected["distribution"] == "www"
    barrier(cloudfront, docroot)
    expected = {f"/batch/p{i:03}.html" for i in range(500)} - {"/batch/p321.html"}
    assert received(cloudfront) == expected | {"/zz-sentinel.txt"}
    assert len(proc.find("path_rejected")) == 1
    assert proc.health()[0] == 200
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    try:
        # the sentinel reaches CloudFront a moment before the daemon journals its answer
        wait_for(lambda: not journal.batches(PLANNED), 10, what="no batch left planned")
        assert journal.pending_count() == 0
        [set_aside] = journal.batches(REJECTED)
        assert set_aside.paths == ("/batch/p321.html",)
    finally:
        journal.close()
