"""The CloudFront emulator behaves like CloudFront, seen through boto3 over real HTTP."""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from invalidatord.model import InFlight
from invalidatord.testing.cloudfront import CloudFrontEmulator, path_problem
from tests.harness import FakeClock

from .conftest import EmulatorFactory

_SESSION = boto3.session.Session(
    aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
)


def client(emulator: CloudFrontEmulator) -> Any:
    """A CloudFront client that tries once, so every answer the emulator gives is visible."""
    return _SESSION.client(
        "cloudfront",
        endpoint_url=emulator.endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def create(cf: Any, dist: str, paths: list[str], ref: str) -> dict[str, Any]:
    response: dict[str, Any] = cf.create_invalidation(
        DistributionId=dist,
        InvalidationBatch={
            "Paths": {"Quantity": len(paths), "Items": paths},
            "CallerReference": ref,
        },
    )
    return response


def error_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_create_answers_in_progress_with_the_batch(cloudfront: CloudFrontEmulator) -> None:
    """CreateInvalidation answers 201, InProgress, a Location, and the paths verbatim."""
    cloudfront.in_progress_seconds = 3600
    cf = client(cloudfront)
    paths = ["/a%20b.html", "/q&a/%3Cindex%3E.html", "/img/*"]
    response = create(cf, cloudfront.distribution_id, paths, "ref-1")
    inv = response["Invalidation"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert inv["Status"] == "InProgress"
    assert inv["InvalidationBatch"] == {
        "Paths": {"Quantity": 3, "Items": paths},
        "CallerReference": "ref-1",
    }
    assert response["Location"].endswith(
        f"/distribution/{cloudfront.distribution_id}/invalidation/{inv['Id']}"
    )
    got = cf.get_invalidation(DistributionId=cloudfront.distribution_id, Id=inv["Id"])
    assert got["Invalidation"]["InvalidationBatch"]["Paths"]["Items"] == paths
    assert [i.id for i in cloudfront.invalidations(cloudfront.distribution_id)] == [inv["Id"]]
    assert cloudfront.created_paths(cloudfront.distribution_id) == paths


@pytest.mark.parametrize("op", ["create", "get", "list"])
def test_unknown_distribution_is_no_such_distribution(
    cloudfront: CloudFrontEmulator, op: str
) -> None:
    """All three operations answer 404 NoSuchDistribution for a distribution moto does not know."""
    cf = client(cloudfront)
    calls = {
        "create": lambda: create(cf, "EDOESNOTEXIST", ["/a"], "r"),
        "get": lambda: cf.get_invalidation(DistributionId="EDOESNOTEXIST", Id="I123"),
        "list": lambda: cf.list_invalidations(DistributionId="EDOESNOTEXIST"),
    }
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        calls[op]()
    assert error_of(excinfo) == ("NoSuchDistribution", 404)


def test_unknown_invalidation_is_no_such_invalidation(cloudfront: CloudFrontEmulator) -> None:
    """GetInvalidation of an id never created answers 404 NoSuchInvalidation."""
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client(cloudfront).get_invalidation(DistributionId=cloudfront.distribution_id, Id="INOPE")
    assert error_of(excinfo) == ("NoSuchInvalidation", 404)


def test_file_limit_is_counted_apart_from_wildcards(cloudfront: CloudFrontEmulator) -> None:
    """3,000 file paths fit in flight; one more is TooMany, while a wildcard still fits."""
    cloudfront.hold(True)
    cf, dist = client(cloudfront), cloudfront.distribution_id
    create(cf, dist, [f"/f/{i}.html" for i in range(2999)], "files-1")
    create(cf, dist, ["/last.html"], "files-2")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(cf, dist, ["/one-too-many.html"], "files-3")
    assert error_of(excinfo) == ("TooManyInvalidationsInProgress", 400)
    assert "file" in excinfo.value.response["Error"]["Message"]
    create(cf, dist, ["/wild/*"], "wild-1")
    assert cloudfront.in_flight(dist) == InFlight(files=3000, wildcards=1)
    assert cloudfront.max_in_flight_seen[dist] == InFlight(files=3000, wildcards=1)


def test_wildcard_limit_is_counted_apart_from_files(cloudfront: CloudFrontEmulator) -> None:
    """15 wildcard paths fit in flight; a 16th is TooMany, while file paths still fit."""
    cloudfront.hold(True)
    cf, dist = client(cloudfront), cloudfront.distribution_id
    create(cf, dist, [f"/w{i}/*" for i in range(10)], "wild-1")
    create(cf, dist, [f"/v{i}*" for i in range(5)], "wild-2")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(cf, dist, ["/a.html", "/x/*"], "wild-3")
    assert error_of(excinfo) == ("TooManyInvalidationsInProgress", 400)
    assert "wildcard" in excinfo.value.response["Error"]["Message"]
    create(cf, dist, ["/a.html"], "file-1")
    assert cloudfront.in_flight(dist) == InFlight(files=1, wildcards=15)


def test_a_batch_over_a_limit_on_its_own_is_batch_too_large(cloudfront: CloudFrontEmulator) -> None:
    """A single batch with more than 15 wildcards is 413 BatchTooLarge, whatever is in flight."""
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(client(cloudfront), cloudfront.distribution_id, [f"/{i}/*" for i in range(16)], "r")
    assert error_of(excinfo) == ("BatchTooLarge", 413)


def test_completion_frees_room_under_the_limit(cloudfront: CloudFrontEmulator) -> None:
    """Once the in-flight invalidations complete, the refused batch is accepted."""
    cloudfront.hold(True)
    cf, dist = client(cloudfront), cloudfront.distribution_id
    create(cf, dist, [f"/w{i}/*" for i in range(15)], "full")
    with pytest.raises(botocore.exceptions.ClientError):
        create(cf, dist, ["/more/*"], "more")
    cloudfront.complete_all()
    assert create(cf, dist, ["/more/*"], "more")["Invalidation"]["Status"] == "InProgress"
    assert cloudfront.in_flight(dist) == InFlight(files=0, wildcards=1)


def test_same_reference_and_paths_returns_the_existing_invalidation(
    cloudfront: CloudFrontEmulator,
) -> None:
    """Resubmitting a CallerReference with the same paths answers 201 with the same id, and
    creates nothing new."""
    cf, dist = client(cloudfront), cloudfront.distribution_id
    first = create(cf, dist, ["/a", "/b"], "same-ref")
    again = create(cf, dist, ["/a", "/b"], "same-ref")
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert again["Invalidation"]["Id"] == first["Invalidation"]["Id"]
    assert len(cloudfront.invalidations(dist)) == 1
    assert cloudfront.created_paths(dist) == ["/a", "/b"]


def test_same_reference_other_paths_is_a_conflict(cloudfront: CloudFrontEmulator) -> None:
    """Reusing a CallerReference with other paths answers 409 InvalidationBatchAlreadyExists."""
    cf, dist = client(cloudfront), cloudfront.distribution_id
    create(cf, dist, ["/a"], "ref")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(cf, dist, ["/a", "/b"], "ref")
    assert error_of(excinfo) == ("InvalidationBatchAlreadyExists", 409)
    assert len(cloudfront.invalidations(dist)) == 1


def test_reference_is_scoped_per_distribution(cloudfront: CloudFrontEmulator) -> None:
    """The same CallerReference on two distributions makes two invalidations."""
    other = cloudfront.create_distribution("second")
    cf = client(cloudfront)
    a = create(cf, cloudfront.distribution_id, ["/a"], "ref")["Invalidation"]["Id"]
    b = create(cf, other, ["/b"], "ref")["Invalidation"]["Id"]
    assert a != b
    assert cloudfront.created_paths(other) == ["/b"]


def test_in_progress_until_the_clock_says_completed(cloudfront_factory: EmulatorFactory) -> None:
    """An invalidation is InProgress until in_progress_seconds of the clock pass, then Completed
    for good (raising in_progress_seconds afterwards does not undo it)."""
    clock = FakeClock()
    emulator = cloudfront_factory(in_progress_seconds=60, clock=clock)
    cf, dist = client(emulator), emulator.distribution_id
    inv_id = create(cf, dist, ["/a"], "r")["Invalidation"]["Id"]

    def status() -> str:
        return str(cf.get_invalidation(DistributionId=dist, Id=inv_id)["Invalidation"]["Status"])

    clock.now += 59.9
    assert status() == "InProgress"
    assert emulator.in_flight(dist) == InFlight(files=1)
    clock.now += 0.1
    assert status() == "Completed"
    emulator.in_progress_seconds = 3600
    assert status() == "Completed"
    assert emulator.in_flight(dist) == InFlight()


def test_hold_stops_completion_and_complete_all_forces_it(
    cloudfront_factory: EmulatorFactory,
) -> None:
    """While held nothing completes however much time passes; complete_all completes all."""
    clock = FakeClock()
    emulator = cloudfront_factory(in_progress_seconds=10, clock=clock)
    cf, dist = client(emulator), emulator.distribution_id
    emulator.hold(True)
    create(cf, dist, ["/a"], "r1")
    create(cf, dist, ["/b"], "r2")
    clock.now += 1000
    assert {i.status for i in emulator.invalidations(dist)} == {"InProgress"}
    emulator.complete_all()
    assert {i.status for i in emulator.invalidations(dist)} == {"Completed"}
    listed = cf.list_invalidations(DistributionId=dist)["InvalidationList"]["Items"]
    assert {i["Status"] for i in listed} == {"Completed"}


def test_list_is_newest_first_and_pages(cloudfront: CloudFrontEmulator) -> None:
    """ListInvalidations lists newest first, MaxItems per page, NextMarker = last id of a page."""
    cf, dist = client(cloudfront), cloudfront.distribution_id
    ids = [create(cf, dist, [f"/{i}"], f"r{i}")["Invalidation"]["Id"] for i in range(5)]
    newest_first = list(reversed(ids))

    page1 = cf.list_invalidations(DistributionId=dist, MaxItems="2")["InvalidationList"]
    assert [i["Id"] for i in page1["Items"]] == newest_first[:2]
    assert page1["IsTruncated"] is True
    assert page1["NextMarker"] == newest_first[1]
    assert (page1["Quantity"], page1["MaxItems"], page1["Marker"]) == (2, 2, "")

    page3 = cf.list_invalidations(DistributionId=dist, MaxItems="2", Marker=newest_first[3])
    listing = page3["InvalidationList"]
    assert [i["Id"] for i in listing["Items"]] == newest_first[4:]
    assert listing["IsTruncated"] is False
    assert "NextMarker" not in listing

    paginator = cf.get_paginator("list_invalidations")
    pages = paginator.paginate(DistributionId=dist, PaginationConfig={"PageSize": 2})
    assert [i["Id"] for p in pages for i in p["InvalidationList"]["Items"]] == newest_first
    assert [i.id for i in cloudfront.invalidations(dist)] == newest_first


def test_empty_list_has_no_items(cloudfront: CloudFrontEmulator) -> None:
    """Like CloudFront, an empty listing has Quantity 0 and no Items element at all."""
    listing = client(cloudfront).list_invalidations(DistributionId=cloudfront.distribution_id)
    assert listing["InvalidationList"]["Quantity"] == 0
    assert "Items" not in listing["InvalidationList"]


BAD_PATHS = [
    "no-slash.html",
    "#tag",
    "/a*b",
    "/**",
    "/" + "a" * 4000,
    "/a b",
    "/caf\u00e9",
    "/tab\there",
    "/del\x7f",
    "/100%",
    "/a%zz",
    *(f"/a{c}b" for c in '<>"#{}|\\^~[]`'),
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_invalid_path_is_invalid_argument_naming_it(
    cloudfront: CloudFrontEmulator, path: str
) -> None:
    """A path CloudFront would refuse answers 400 InvalidArgument naming it; nothing is created."""
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(client(cloudfront), cloudfront.distribution_id, ["/fine.html", path], "r")
    assert error_of(excinfo) == ("InvalidArgument", 400)
    assert repr(path)[:40] in excinfo.value.response["Error"]["Message"]
    assert cloudfront.invalidations(cloudfront.distribution_id) == []


GOOD_PATHS = [
    "/",
    "/*",
    "/dir*",
    "/a.jpg*",
    "/a%20b%C3%A9",
    "/a+b&c=d;e:f@g,h!$'()",
    "/" + "a" * 3999,
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_valid_paths_are_accepted(path: str) -> None:
    """Paths CloudFront accepts (wildcard last, escapes, sub-delimiters, 4,000 chars) pass."""
    assert path_problem(path) is None


def test_rejected_path_fails_its_batch_only(cloudfront: CloudFrontEmulator) -> None:
    """reject_path makes any batch holding that path InvalidArgument naming it; others pass."""
    cloudfront.reject_path("/poison.html")
    cf, dist = client(cloudfront), cloudfront.distribution_id
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(cf, dist, ["/ok.html", "/poison.html"], "r1")
    assert error_of(excinfo) == ("InvalidArgument", 400)
    assert "/poison.html" in excinfo.value.response["Error"]["Message"]
    create(cf, dist, ["/ok.html"], "r2")
    cloudfront.clear_faults()
    create(cf, dist, ["/poison.html"], "r3")
    assert cloudfront.created_paths(dist) == ["/ok.html", "/poison.html"]


FAULTS = [
    ("Throttling", 400),
    ("ServiceUnavailable", 503),
    ("InternalError", 500),
    ("TooManyInvalidationsInProgress", 400),
    ("AccessDenied", 403),
    ("NoSuchDistribution", 404),
]


@pytest.mark.parametrize(("code", "status"), FAULTS)
def test_injected_fault_reaches_boto3_as_that_error(
    cloudfront: CloudFrontEmulator, code: str, status: int
) -> None:
    """Each injected code arrives in boto3 as a ClientError with that code and HTTP status, and
    is recorded; the next request is answered normally (times=1)."""
    cloudfront.inject(code, times=1)
    cf, dist = client(cloudfront), cloudfront.distribution_id
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(cf, dist, ["/a"], "r")
    assert error_of(excinfo) == (code, status)
    assert create(cf, dist, ["/a"], "r")["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert [(r.status, r.error_code) for r in cloudfront.requests] == [(status, code), (201, None)]


def test_connection_reset_drops_the_connection(cloudfront: CloudFrontEmulator) -> None:
    """ConnectionReset answers nothing: boto3 sees the connection closed, nothing is created."""
    cloudfront.inject("ConnectionReset", times=1)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        create(client(cloudfront), cloudfront.distribution_id, ["/a"], "r")
    assert cloudfront.requests[0].status is None
    assert cloudfront.requests[0].error_code == "ConnectionReset"
    assert cloudfront.invalidations(cloudfront.distribution_id) == []


@pytest.mark.parametrize("code", ["InternalError", "ConnectionReset"])
def test_fault_after_processing_loses_only_the_answer(
    cloudfront: CloudFrontEmulator, code: str
) -> None:
    """after=True creates the invalidation and then fails (or drops the connection);
    resubmitting the same reference returns that invalidation instead of a second one."""
    cloudfront.inject(code, times=1, after=True)
    cf, dist = client(cloudfront), cloudfront.distribution_id
    with pytest.raises(
        (botocore.exceptions.ClientError, botocore.exceptions.ConnectionClosedError)
    ):
        create(cf, dist, ["/a"], "r")
    [created] = cloudfront.invalidations(dist)
    assert create(cf, dist, ["/a"], "r")["Invalidation"]["Id"] == created.id
    assert len(cloudfront.invalidations(dist)) == 1


def test_fault_targets_its_operation_only(cloudfront: CloudFrontEmulator) -> None:
    """A fault injected on ListInvalidations leaves CreateInvalidation alone."""
    cloudfront.inject("AccessDenied", operation="ListInvalidations")
    cf, dist = client(cloudfront), cloudfront.distribution_id
    create(cf, dist, ["/a"], "r")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        cf.list_invalidations(DistributionId=dist)
    assert error_of(excinfo) == ("AccessDenied", 403)
    cloudfront.clear_faults()
    assert cf.list_invalidations(DistributionId=dist)["InvalidationList"]["Quantity"] == 1


def test_fault_rate_is_repeatable_with_a_seed(cloudfront: CloudFrontEmulator) -> None:
    """With a rate and a seed, the same requests fail on every run (here: half of 20, roughly)."""
    cf, dist = client(cloudfront), cloudfront.distribution_id

    def outcomes() -> list[bool]:
        cloudfront.clear_faults()
        cloudfront.inject("Throttling", rate=0.5, seed=7, operation="ListInvalidations")
        result = []
        for _ in range(20):
            try:
                cf.list_invalidations(DistributionId=dist)
                result.append(True)
            except botocore.exceptions.ClientError:
                result.append(False)
        return result

    first = outcomes()
    assert first == outcomes()
    assert 0 < first.count(False) < 20


def test_inject_refuses_what_it_cannot_do(cloudfront: CloudFrontEmulator) -> None:
    """Unknown operations, codes without a status and nonsense counts are refused up front."""
    with pytest.raises(ValueError, match="unknown operation"):
        cloudfront.inject("Throttling", operation="DeleteDistribution")
    with pytest.raises(ValueError, match="explicit status"):
        cloudfront.inject("SomethingElse")
    with pytest.raises(ValueError, match="times"):
        cloudfront.inject("Throttling", times=0)
    cloudfront.inject("SomethingElse", status=418, times=1)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        create(client(cloudfront), cloudfront.distribution_id, ["/a"], "r")
    assert error_of(excinfo) == ("SomethingElse", 418)


def test_requests_record_every_call(cloudfront: CloudFrontEmulator) -> None:
    """Every invalidation call is recorded with operation, ids, paths, reference and outcome."""
    cf, dist = client(cloudfront), cloudfront.distribution_id
    inv_id = create(cf, dist, ["/a", "/b*"], "ref")["Invalidation"]["Id"]
    cf.get_invalidation(DistributionId=dist, Id=inv_id)
    cf.list_invalidations(DistributionId=dist)
    recorded = [
        (r.op, r.distribution_id, r.paths, r.caller_reference, r.status, r.invalidation_id)
        for r in cloudfront.requests
    ]
    assert recorded == [
        ("CreateInvalidation", dist, ("/a", "/b*"), "ref", 201, inv_id),
        ("GetInvalidation", dist, (), None, 200, inv_id),
        ("ListInvalidations", dist, (), None, 200, None),
    ]


def test_concurrent_creates_respect_the_limit(cloudfront: CloudFrontEmulator) -> None:
    """Twenty threads racing for 15 wildcard slots: exactly 15 win, the rest are TooMany."""
    cloudfront.hold(True)
    dist = cloudfront.distribution_id
    results: list[str] = []
    lock = threading.Lock()

    def submit(i: int, cf: Any) -> None:
        try:
            create(cf, dist, [f"/race{i}/*"], f"race-{i}")
            outcome = "ok"
        except botocore.exceptions.ClientError as exc:
            outcome = exc.response["Error"]["Code"]
        with lock:
            results.append(outcome)

    # Clients are thread-safe once made, sessions are not: make them here.
    threads = [threading.Thread(target=submit, args=(i, client(cloudfront))) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["TooManyInvalidationsInProgress"] * 5 + ["ok"] * 15
    assert cloudfront.max_in_flight_seen[dist] == InFlight(wildcards=15)


def test_other_services_are_served_by_moto(cloudfront: CloudFrontEmulator) -> None:
    """S3 and SQS work through the same endpoint (moto answers them)."""
    s3 = _SESSION.client("s3", endpoint_url=cloudfront.endpoint_url)
    s3.create_bucket(Bucket="emulator-bucket")
    s3.put_object(Bucket="emulator-bucket", Key="a b.txt", Body=b"hello")
    assert s3.get_object(Bucket="emulator-bucket", Key="a b.txt")["Body"].read() == b"hello"
    sqs = _SESSION.client("sqs", endpoint_url=cloudfront.endpoint_url)
    url = sqs.create_queue(QueueName="emulator-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hi")
    messages = sqs.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in messages] == ["hi"]


def test_start_is_fast_and_stop_wipes_moto(cloudfront_factory: EmulatorFactory) -> None:
    """Starting an emulator takes well under a second; after the last one stops, moto's state
    is gone (the next emulator does not know the old distribution)."""
    cloudfront_factory().stop()  # moto imported and warm
    started = time.monotonic()
    emulator = CloudFrontEmulator()
    emulator.start()
    elapsed = time.monotonic() - started
    try:
        old = emulator.create_distribution("old")
    finally:
        emulator.stop()
    assert elapsed < 1.0
    with CloudFrontEmulator() as fresh:
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            client(fresh).list_invalidations(DistributionId=old)
        assert error_of(excinfo) == ("NoSuchDistribution", 404)
    assert fresh.endpoint_url.startswith("http://127.0.0.1:")
