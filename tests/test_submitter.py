"""The submitter against the CloudFront emulator over HTTP, driven one cycle at a time with a fake
clock: limits, faults, idempotent resubmission, bisecting, tracking to Completed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
import structlog

from invalidatord.cloudfront import Boto3CloudFront, make_session
from invalidatord.journal import COMPLETED, PLANNED, REJECTED, SUBMITTED, Accepted, Journal
from invalidatord.metrics import Metrics
from invalidatord.planner import Limits
from invalidatord.submitter import Submitter
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


@pytest.fixture
def make_submitter(
    journal: Journal, cloudfront: CloudFrontEmulator, clock: FakeClock
) -> Callable[..., Submitter]:
    def make(**kwargs: object) -> Submitter:
        cf = Boto3CloudFront(
            make_session("us-east-1", None, None),
            endpoint_url=cloudfront.endpoint_url,
            max_attempts=1,  # retries are the submitter's own, on the fake clock
        )
        return Submitter(
            journal=journal,
            cloudfront=cf,
            distributions={"www": cloudfront.distribution_id},
            limits=kwargs.pop("limits", Limits()),  # type: ignore[arg-type]
            metrics=Metrics(),
            max_backoff=60.0,
            completion_wait=5.0,
            clock=clock,
            rng=random.Random(1),
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def queue(journal: Journal, paths: list[str]) -> None:
    journal.accept(Accepted("www", p, 1.0, f"docroot:{p[1:]}") for p in paths)


def creates(cloudfront: CloudFrontEmulator) -> list[object]:
    return [r for r in cloudfront.requests if r.op == "CreateInvalidation"]


def test_pending_paths_are_submitted_and_tracked_to_completed(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """One batch, then InProgress -> Completed through the status poll."""
    cloudfront.hold(True)
    queue(journal, ["/a.html", "/b.html"])
    sub = make_submitter()
    sub.cycle()
    assert sorted(cloudfront.created_paths(cloudfront.distribution_id)) == ["/a.html", "/b.html"]
    [record] = journal.batches(SUBMITTED)
    sub.poll_status()
    assert journal.batch(record.id).state == SUBMITTED
    cloudfront.complete_all()
    sub.poll_status()
    assert journal.batch(record.id).state == COMPLETED
    assert journal.pending_count() == 0


def test_in_flight_limit_less_headroom_is_never_exceeded(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """4,000 pending file paths: 2,900 go now (3,000 less 100 headroom), the rest later."""
    cloudfront.hold(True)
    paths = [f"/f{i}.html" for i in range(4000)]
    queue(journal, paths)
    sub = make_submitter()
    sub.cycle()
    sub.cycle()
    assert cloudfront.in_flight(cloudfront.distribution_id).files == 2900
    assert journal.pending_count() == 1100
    cloudfront.complete_all()
    sub.poll_status()
    sub.cycle()
    assert sorted(cloudfront.created_paths(cloudfront.distribution_id)) == sorted(paths)
    assert cloudfront.max_in_flight_seen[cloudfront.distribution_id].files <= 2900
    assert all(r.status == 201 for r in creates(cloudfront))


def test_other_peoples_invalidations_count_against_the_limit(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """2,000 paths someone else has in flight leave room for only 900 of ours."""
    cloudfront.hold(True)
    client = boto3.client("cloudfront", endpoint_url=cloudfront.endpoint_url)
    client.create_invalidation(
        DistributionId=cloudfront.distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": 2000, "Items": [f"/human{i}" for i in range(2000)]},
            "CallerReference": "by-hand",
        },
    )
    queue(journal, [f"/f{i}" for i in range(1500)])
    sub = make_submitter()
    sub.reconcile()
    sub.cycle()
    assert cloudfront.in_flight(cloudfront.distribution_id).files == 2900
    assert journal.pending_count() == 600


def test_too_many_in_progress_keeps_the_batch_and_resubmits_it_unchanged(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """TooMany: the batch stays planned, backs off, and is resubmitted with the same reference."""
    cloudfront.inject("TooManyInvalidationsInProgress", times=2)
    queue(journal, ["/a"])
    sub = make_submitter()
    sub.cycle()
    [planned] = journal.batches(PLANNED)
    sub.cycle()  # still backing off: no new request
    assert len(creates(cloudfront)) == 1
    for _ in range(2):
        clock.now += 120
        sub.cycle()
    assert journal.batch(planned.id).state in (SUBMITTED, COMPLETED)
    refs = {r.caller_reference for r in creates(cloudfront)}
    assert refs == {planned.caller_reference}
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 1


def test_a_lost_response_is_resubmitted_without_a_second_invalidation(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """CloudFront created it but the answer was lost (503 after the fact): the retry with the
    same CallerReference gets the existing invalidation back; nothing is billed twice."""
    cloudfront.inject("ServiceUnavailable", after=True, times=1)
    queue(journal, ["/a", "/b"])
    sub = make_submitter()
    sub.cycle()
    clock.now += 120
    sub.cycle()
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 1
    [record] = journal.recent(1)
    assert record.state in (SUBMITTED, COMPLETED)
    assert record.invalidation_id == cloudfront.invalidations(cloudfront.distribution_id)[0].id


def test_invalid_path_is_bisected_out_and_the_rest_sent(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """InvalidArgument on one path of 500: 499 reach CloudFront, the one is set aside and logged
    with the file it came from."""
    paths = [f"/p{i:03}.html" for i in range(500)]
    bad = paths[321]
    cloudfront.reject_path(bad)
    queue(journal, paths)
    sub = make_submitter()
    with structlog.testing.capture_logs() as logs:
        for _ in range(30):
            sub.cycle()
            if not journal.batches(PLANNED):
                break
    assert sorted(cloudfront.created_paths(cloudfront.distribution_id)) == sorted(
        set(paths) - {bad}
    )
    [rejected] = journal.batches(REJECTED)
    assert rejected.paths == (bad,)
    [line] = [e for e in logs if e["event"] == "path_rejected"]
    assert line["path"] == bad
    assert line["origin"] == f"docroot:{bad[1:]}"
    assert sub.attempts <= 2 * 10 + 2  # about two requests per halving level


def test_invalid_argument_for_every_path_keeps_the_work_and_backs_off(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """InvalidArgument for every request is the request's fault, not 64 bad paths: nothing is
    set aside, the work stays to be sent, the distribution backs off (and says why), it takes
    15 requests instead of 127, and once CloudFront accepts again every path is invalidated."""
    paths = [f"/p{i:02}.html" for i in range(64)]
    queue(journal, paths)
    cloudfront.inject("InvalidArgument")
    sub = make_submitter()
    with structlog.testing.capture_logs() as logs:
        sub.cycle()
    assert len(creates(cloudfront)) == 15  # levels of 1, 2, 4 and 8 parts
    assert journal.batches(REJECTED) == []
    kept = [p for b in journal.batches(PLANNED) for p in b.paths]
    assert sorted(kept) == paths
    state = sub.states["www"]
    assert state.not_before > clock.now
    assert "InvalidArgument" in (state.unreachable or "")
    assert [e["event"] for e in logs].count("batch_refused_whole") == 1
    assert not any(e["event"] == "path_rejected" for e in logs)

    cloudfront.clear_faults()
    for _ in range(20):
        clock.now = state.not_before + 1
        sub.cycle()
        if not journal.batches(PLANNED):
            break
    assert sorted(cloudfront.created_paths(cloudfront.distribution_id)) == paths
    assert journal.batches(REJECTED) == []


def test_caller_reference_used_for_other_paths_gets_a_fresh_one(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """InvalidationBatchAlreadyExists: the batch is resubmitted under a new reference."""
    queue(journal, ["/x"])
    ref = journal.caller_reference(1, "www", ["/x"])
    client = boto3.client("cloudfront", endpoint_url=cloudfront.endpoint_url)
    client.create_invalidation(
        DistributionId=cloudfront.distribution_id,
        InvalidationBatch={"Paths": {"Quantity": 1, "Items": ["/other"]}, "CallerReference": ref},
    )
    sub = make_submitter()
    sub.cycle()
    [record] = journal.recent(1)
    assert record.state in (SUBMITTED, COMPLETED)
    assert record.caller_reference != ref
    assert "/x" in cloudfront.created_paths(cloudfront.distribution_id)


def test_access_denied_keeps_work_and_does_not_spin(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """AccessDenied: health names the distribution, the path stays journaled, retries wait
    max_backoff instead of looping."""
    cloudfront.inject("AccessDenied")
    queue(journal, ["/a"])
    sub = make_submitter()
    for _ in range(50):
        sub.cycle()
    assert len(creates(cloudfront)) == 1
    assert "www" in sub.problems()
    assert "cloudfront:CreateInvalidation" in sub.problems()["www"]
    assert journal.batches(PLANNED)
    cloudfront.clear_faults()
    clock.now += 61
    sub.cycle()
    assert sub.problems() == {}
    assert cloudfront.created_paths(cloudfront.distribution_id) == ["/a"]


def test_throttling_and_503_storm_loses_nothing_with_bounded_attempts(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """50% Throttling and 20% 503: every path arrives, each batch in a bounded number of tries."""
    cloudfront.inject("Throttling", rate=0.5, seed=7)
    cloudfront.inject("ServiceUnavailable", rate=0.2, seed=8)
    paths = [f"/d{i // 100}/f{i}.html" for i in range(1000)]
    queue(journal, paths)
    sub = make_submitter(limits=Limits(max_paths_per_batch=100))
    for _ in range(200):
        sub.cycle()
        sub.poll_status()
        if not journal.pending_count() and not journal.batches(PLANNED):
            break
        clock.now += 61
    assert sorted(set(cloudfront.created_paths(cloudfront.distribution_id))) == sorted(paths)
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 10
    assert len(creates(cloudfront)) < 10 * 12


def test_when_others_fill_the_room_their_completion_is_noticed_within_poll_interval(
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    make_submitter: Callable[..., Submitter],
    clock: FakeClock,
) -> None:
    """Someone else's 2,900 paths block us; once theirs complete we go within completion_wait
    (5 s here), not the reconcile interval."""
    cloudfront.hold(True)
    client = boto3.client("cloudfront", endpoint_url=cloudfront.endpoint_url)
    client.create_invalidation(
        DistributionId=cloudfront.distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": 2900, "Items": [f"/human{i}" for i in range(2900)]},
            "CallerReference": "by-hand",
        },
    )
    queue(journal, ["/ours.html"])
    sub = make_submitter()
    sub.cycle()
    assert journal.pending_count() == 1
    cloudfront.complete_all()
    sub.cycle()  # asked too recently: still waiting
    assert journal.pending_count() == 1
    clock.now += 5
    sub.cycle()
    assert "/ours.html" in cloudfront.created_paths(cloudfront.distribution_id)


def test_a_big_deploy_collapses_into_one_request(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """12,000 pending paths in 60 directories with the cost policy on: one CreateInvalidation
    with one wildcard, and nothing left pending."""
    paths = [f"/deploy/d{d:02}/f{i:03}.html" for d in range(60) for i in range(200)]
    queue(journal, paths)
    sub = make_submitter(limits=Limits(collapse_threshold=100))
    sub.cycle()
    assert cloudfront.created_paths(cloudfront.distribution_id) == ["/deploy/*"]
    assert len(creates(cloudfront)) == 1
    assert journal.pending_count() == 0


def test_work_waiting_for_wildcard_room_goes_in_waves_as_completions_are_seen(
    journal: Journal, cloudfront: CloudFrontEmulator
) -> None:
    """50 fully changed folders need 50 wildcards, 13 at a time: the rest wait for room (no
    billed exact paths), and the submitter asks about its in-flight invalidations every few
    seconds by itself (no scheduled status poll here), so each wave follows a completion."""
    from invalidatord.planner import PrefixTree
    from tests.waiting import wait_for

    paths = [f"/f{f:02}/p{i:03}.html" for f in range(50) for i in range(100)]
    now = time.time()  # fresh work: well within max_wait
    journal.accept(Accepted("www", p, now, f"docroot:{p[1:]}") for p in paths)
    cloudfront.in_progress_seconds = 0.5
    cf = Boto3CloudFront(
        make_session("us-east-1", None, None), endpoint_url=cloudfront.endpoint_url
    )
    sub = Submitter(
        journal=journal,
        cloudfront=cf,
        distributions={"www": cloudfront.distribution_id},
        limits=Limits(),
        metrics=Metrics(),
        trees={"www": PrefixTree(paths)},
        hurry_poll=0.2,
    )
    sub.start()
    try:
        wanted = {f"/f{f:02}/*" for f in range(50)}
        wait_for(lambda: wanted <= set(cloudfront.created_paths(cloudfront.distribution_id)), 60)
    finally:
        sub.stop()
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == wanted
    assert cloudfront.max_in_flight_seen[cloudfront.distribution_id].wildcards <= 13


def test_a_wildcard_decision_logs_one_line_with_its_directory_and_why(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """1,900 of 2,000 objects under /docs/ changed: the submitter sends one `/docs/*` and logs
    one `wildcard_chosen` line naming the directory, the planner's reason and what it evicts,
    joined to the batch's `batch_submitted` line by its CallerReference (which no longer
    repeats the reason)."""
    from invalidatord.planner import PrefixTree

    every = [f"/docs/p{i:04}.html" for i in range(2000)]
    queue(journal, every[:1900])
    sub = make_submitter(limits=Limits(max_over_invalidation=0.1), trees={"www": PrefixTree(every)})
    with structlog.testing.capture_logs() as logs:
        sub.cycle()
        sub.cycle()  # nothing left: no decision is logged twice
    assert cloudfront.created_paths(cloudfront.distribution_id) == ["/docs/*"]
    [chosen] = [e for e in logs if e["event"] == "wildcard_chosen"]
    [submitted] = [e for e in logs if e["event"] == "batch_submitted"]
    assert {k: v for k, v in chosen.items() if k not in ("caller_reference", "log_level")} == {
        "event": "wildcard_chosen",
        "distribution": "www",
        "wildcard": "/docs/*",
        "directory": "/docs/",
        "reason": "cost",
        "pending": 1900,
        "objects": 2000,
        "evicted": 100,
        "why": "/docs/*: 1900 pending paths as 1 billed path, evicts 100 unchanged of 2000 "
        "objects (5%, max_over_invalidation 10%); cheaper than its exact paths",
    }
    assert chosen["caller_reference"] == submitted["caller_reference"]
    assert "why" not in submitted
    assert logs.index(chosen) < logs.index(submitted)


def test_exact_paths_log_no_wildcard_decision(
    journal: Journal, cloudfront: CloudFrontEmulator, make_submitter: Callable[..., Submitter]
) -> None:
    """300 of 2,000 changed under a 10% bound go as exact paths: no `wildcard_chosen` line."""
    from invalidatord.planner import PrefixTree

    every = [f"/docs/p{i:04}.html" for i in range(2000)]
    queue(journal, every[:300])
    sub = make_submitter(limits=Limits(max_over_invalidation=0.1), trees={"www": PrefixTree(every)})
    with structlog.testing.capture_logs() as logs:
        sub.cycle()
    assert len(cloudfront.created_paths(cloudfront.distribution_id)) == 300
    assert [e for e in logs if e["event"] == "wildcard_chosen"] == []
    assert [e["event"] for e in logs].count("batch_submitted") == 1


def test_work_waiting_for_room_is_not_planned_again_until_the_room_or_a_moment_changes(
    make_submitter: Callable[..., Submitter],
    journal: Journal,
    cloudfront: CloudFrontEmulator,
    clock: FakeClock,
) -> None:
    """A burst accepted flush after flush while its work waits for wildcard room: a plan that
    sent nothing is not made again for the same room within REPLAN_WAIT (each would weigh
    every pending path only to wait again); after it, or as soon as room is freed, it is."""
    from invalidatord.planner import PrefixTree
    from invalidatord.submitter import REPLAN_WAIT

    class CountingTree(PrefixTree):
        counts = 0

        def count(self, prefix: str, at_most: int) -> int:
            CountingTree.counts += 1
            return super().count(prefix, at_most)

    paths = [f"/f{f:02}/p{i:03}.html" for f in range(60) for i in range(100)]
    journal.accept(Accepted("www", p, clock.now, f"docroot:{p[1:]}") for p in paths[:4000])
    cloudfront.in_progress_seconds = 3600.0
    sub = make_submitter(trees={"www": CountingTree(paths)})
    sub.cycle()
    first = {p for r in creates(cloudfront) for p in r.paths}  # type: ignore[attr-defined]
    assert first
    assert sub.states["www"].waiting_for_room
    # the next flushes of the burst, with the room as the plan that sent nothing left it
    journal.accept(Accepted("www", p, clock.now, f"docroot:{p[1:]}") for p in paths[4000:])
    CountingTree.counts = 0
    sub.cycle()
    sub.cycle()
    assert CountingTree.counts == 0
    sent = len(creates(cloudfront))
    # a moment later it plans again (and still waits: no room)
    clock.advance(REPLAN_WAIT + 0.1)
    sub.cycle()
    assert CountingTree.counts > 0
    assert len(creates(cloudfront)) == sent
    # room freed: planned at once, within the same moment, and the next wave goes
    sub.cycle()
    CountingTree.counts = 0
    cloudfront.in_progress_seconds = 0.0
    sub.poll_status()
    sub.cycle()
    assert CountingTree.counts > 0
    assert len(creates(cloudfront)) > sent
