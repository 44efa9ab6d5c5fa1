"""The CloudFront edge against the emulator: calls, translation, retries, dry run."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.credentials
import botocore.exceptions
import botocore.loaders
import botocore.session
import pytest
import structlog
from structlog.testing import capture_logs

from invalidatord.cloudfront import (
    AWS_SERVICES,
    CLOUDFRONT_OPERATIONS,
    DATA_PATH,
    Boto3CloudFront,
    DryRunCloudFront,
    cut_service_model,
    make_session,
    normalise_status,
    translate,
)
from invalidatord.contracts import CloudFront
from invalidatord.errors import (
    AccessProblem,
    CallerReferenceConflict,
    ConfigError,
    InvalidPaths,
    SinkError,
    TooManyInProgress,
)
from invalidatord.testing.cloudfront import CloudFrontEmulator


def edge(emulator: CloudFrontEmulator, **kwargs: Any) -> Boto3CloudFront:
    return Boto3CloudFront(
        make_session(None, None, None), endpoint_url=emulator.endpoint_url, **kwargs
    )


@pytest.fixture
def structlog_defaults() -> Iterator[None]:
    """structlog's default (unfiltered) configuration for this test, whatever ran before."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def test_create_get_and_list_in_progress(cloudfront: CloudFrontEmulator) -> None:
    """create, get and list_in_progress return model values with paths and normalised status."""
    cloudfront.in_progress_seconds = 3600
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    done = cf.create_invalidation(dist, ["/done.html"], "ref-done")
    cloudfront.complete_all()
    pending = cf.create_invalidation(dist, ("/a.html", "/img/*"), "ref-pending")
    assert pending.status == "InProgress"
    assert pending.paths == ("/a.html", "/img/*")
    assert pending.caller_reference == "ref-pending"
    assert pending.create_time is not None
    assert cf.get_invalidation(dist, done.id).completed
    assert cf.list_in_progress(dist) == [cf.get_invalidation(dist, pending.id)]
    cf.check_distribution(dist)
    assert cf.calls["CreateInvalidation"] == 2
    assert cf.calls["ListInvalidations"] == 2


def test_list_in_progress_pages_through_everything(cloudfront: CloudFrontEmulator) -> None:
    """With more invalidations than a page, every InProgress one is found."""
    cloudfront.in_progress_seconds = 3600
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    cf.PAGE_SIZE = 2
    early = [cf.create_invalidation(dist, [f"/old{i}"], f"old{i}").id for i in range(2)]
    cloudfront.complete_all()
    late = [cf.create_invalidation(dist, [f"/new{i}"], f"new{i}").id for i in range(3)]
    found = cf.list_in_progress(dist)
    assert [i.id for i in found] == list(reversed(late))
    assert [i.paths for i in found] == [("/new2",), ("/new1",), ("/new0",)]
    assert cf.calls["ListInvalidations"] == 3
    assert not set(early) & {i.id for i in found}


def test_list_in_progress_stops_at_the_horizon(cloudfront: CloudFrontEmulator) -> None:
    """Paging stops once a page reaches invalidations older than the horizon."""
    cloudfront.in_progress_seconds = 3600
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    cf.PAGE_SIZE = 2
    cf.IN_PROGRESS_HORIZON = -60.0  # everything counts as old
    for i in range(5):
        cf.create_invalidation(dist, [f"/{i}"], f"r{i}")
    assert len(cf.list_in_progress(dist)) == 2
    assert cf.calls["ListInvalidations"] == 1


def test_list_in_progress_of_an_empty_distribution(cloudfront: CloudFrontEmulator) -> None:
    """A distribution without invalidations (no Items element) has nothing in progress."""
    assert edge(cloudfront).list_in_progress(cloudfront.distribution_id) == []


def test_boto3_cloudfront_satisfies_the_contract(cloudfront: CloudFrontEmulator) -> None:
    """Both implementations type-check as contracts.CloudFront and resubmission is idempotent."""
    implementations: list[CloudFront] = [edge(cloudfront), DryRunCloudFront()]
    for cf in implementations:
        first = cf.create_invalidation(cloudfront.distribution_id, ["/x"], "same")
        assert cf.create_invalidation(cloudfront.distribution_id, ["/x"], "same").id == first.id


def test_too_many_in_progress_is_retryable(cloudfront: CloudFrontEmulator) -> None:
    """TooManyInvalidationsInProgress becomes TooManyInProgress, retryable, and is not retried
    by botocore (one request)."""
    cloudfront.hold(True)
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    cf.create_invalidation(dist, [f"/{i}/*" for i in range(15)], "full")
    with pytest.raises(TooManyInProgress) as excinfo:
        cf.create_invalidation(dist, ["/more/*"], "more")
    assert excinfo.value.retryable
    assert excinfo.value.code == "TooManyInvalidationsInProgress"
    assert excinfo.value.http_status == 400
    assert [r.error_code for r in cloudfront.requests][-1:] == ["TooManyInvalidationsInProgress"]
    assert len(cloudfront.requests) == 2


def test_batch_too_large_is_too_many_in_progress(cloudfront: CloudFrontEmulator) -> None:
    """BatchTooLarge (413) also becomes TooManyInProgress."""
    with pytest.raises(TooManyInProgress) as excinfo:
        edge(cloudfront).create_invalidation(
            cloudfront.distribution_id, [f"/{i}/*" for i in range(16)], "big"
        )
    assert (excinfo.value.code, excinfo.value.http_status) == ("BatchTooLarge", 413)


def test_reused_reference_with_other_paths_is_a_conflict(cloudfront: CloudFrontEmulator) -> None:
    """A CallerReference reused with other paths becomes CallerReferenceConflict."""
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    cf.create_invalidation(dist, ["/a"], "ref")
    with pytest.raises(CallerReferenceConflict) as excinfo:
        cf.create_invalidation(dist, ["/b"], "ref")
    assert not excinfo.value.retryable
    assert excinfo.value.code == "InvalidationBatchAlreadyExists"


def test_invalid_argument_about_the_reference_is_a_conflict(
    cloudfront: CloudFrontEmulator,
) -> None:
    """InvalidArgument about the caller reference becomes CallerReferenceConflict."""
    cloudfront.inject(
        "InvalidArgument",
        times=1,
        message="Your request contains a caller reference that was used for a previous "
        "invalidation batch for the same distribution.",
    )
    with pytest.raises(CallerReferenceConflict) as excinfo:
        edge(cloudfront).create_invalidation(cloudfront.distribution_id, ["/a"], "ref")
    assert excinfo.value.code == "InvalidArgument"


def test_invalid_path_is_invalid_paths(cloudfront: CloudFrontEmulator) -> None:
    """InvalidArgument about a path becomes InvalidPaths, not retryable, naming the path."""
    with pytest.raises(InvalidPaths) as excinfo:
        edge(cloudfront).create_invalidation(cloudfront.distribution_id, ["/a b.html"], "ref")
    assert not excinfo.value.retryable
    assert "/a b.html" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("CreateInvalidation", "cloudfront:CreateInvalidation"),
        ("GetInvalidation", "cloudfront:GetInvalidation"),
        ("ListInvalidations", "cloudfront:ListInvalidations"),
    ],
)
def test_access_denied_names_the_iam_action(
    cloudfront: CloudFrontEmulator, operation: str, action: str
) -> None:
    """AccessDenied becomes AccessProblem naming the distribution and the IAM action needed."""
    cf, dist = edge(cloudfront), cloudfront.distribution_id
    created = cf.create_invalidation(dist, ["/a"], "ref")
    cloudfront.inject("AccessDenied", operation=operation)
    calls = {
        "CreateInvalidation": lambda: cf.create_invalidation(dist, ["/b"], "ref2"),
        "GetInvalidation": lambda: cf.get_invalidation(dist, created.id),
        "ListInvalidations": lambda: cf.check_distribution(dist),
    }
    with pytest.raises(AccessProblem) as excinfo:
        calls[operation]()
    assert not excinfo.value.retryable
    assert action in str(excinfo.value)
    assert dist in str(excinfo.value)


def test_unknown_distribution_is_an_access_problem(cloudfront: CloudFrontEmulator) -> None:
    """check_distribution of a distribution that does not exist raises AccessProblem."""
    with pytest.raises(AccessProblem) as excinfo:
        edge(cloudfront).check_distribution("EDOESNOTEXIST")
    assert excinfo.value.code == "NoSuchDistribution"
    assert "EDOESNOTEXIST" in str(excinfo.value)


@pytest.mark.parametrize(
    "code",
    [
        "InvalidClientTokenId",
        "ExpiredToken",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
    ],
)
def test_refused_credentials_are_an_access_problem(
    cloudfront: CloudFrontEmulator, code: str
) -> None:
    """Credential errors from AWS become AccessProblem, not retryable."""
    cloudfront.inject(code, status=403, operation="*")
    with pytest.raises(AccessProblem) as excinfo:
        edge(cloudfront).check_distribution(cloudfront.distribution_id)
    assert (excinfo.value.code, excinfo.value.retryable) == (code, False)


def test_missing_credentials_are_an_access_problem(
    cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials at all (NoCredentialsError) becomes AccessProblem; nothing is sent."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AccessProblem) as excinfo:
        edge(cloudfront).check_distribution(cloudfront.distribution_id)
    assert excinfo.value.code == "NoCredentialsError"
    assert cloudfront.requests == []


def test_partial_credentials_are_an_access_problem(
    cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An access key without its secret (PartialCredentialsError) becomes AccessProblem."""
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AccessProblem) as excinfo:
        edge(cloudfront).check_distribution(cloudfront.distribution_id)
    assert excinfo.value.code == "PartialCredentialsError"


def test_persistent_throttling_is_retried_then_retryable(cloudfront: CloudFrontEmulator) -> None:
    """Throttling is retried by botocore up to max_attempts (visible in the emulator), then
    surfaces as a retryable SinkError; the call is counted once."""
    cloudfront.inject("Throttling")
    cf = edge(cloudfront, max_attempts=2)
    with pytest.raises(SinkError) as excinfo:
        cf.create_invalidation(cloudfront.distribution_id, ["/a"], "ref")
    assert type(excinfo.value) is SinkError
    assert (excinfo.value.code, excinfo.value.retryable) == ("Throttling", True)
    assert [r.error_code for r in cloudfront.requests] == ["Throttling", "Throttling"]
    assert cf.calls["CreateInvalidation"] == 1


@pytest.mark.parametrize(("code", "status"), [("ServiceUnavailable", 503), ("InternalError", 500)])
def test_persistent_5xx_is_retryable(
    cloudfront: CloudFrontEmulator, code: str, status: int
) -> None:
    """5xx answers are retried by botocore, then surface as a retryable SinkError."""
    cloudfront.inject(code, operation="*")
    with pytest.raises(SinkError) as excinfo:
        edge(cloudfront, max_attempts=2).check_distribution(cloudfront.distribution_id)
    assert (excinfo.value.code, excinfo.value.http_status, excinfo.value.retryable) == (
        code,
        status,
        True,
    )
    assert len(cloudfront.requests) == 2


def test_transient_errors_are_retried_to_success(cloudfront: CloudFrontEmulator) -> None:
    """A Throttling then a 503 are retried by botocore; the third attempt creates the
    invalidation, once."""
    cloudfront.inject("Throttling", times=1)
    cloudfront.inject("ServiceUnavailable", times=1)
    cf = edge(cloudfront)
    created = cf.create_invalidation(cloudfront.distribution_id, ["/a"], "ref")
    assert [(r.status, r.error_code) for r in cloudfront.requests] == [
        (400, "Throttling"),
        (503, "ServiceUnavailable"),
        (201, None),
    ]
    assert [i.id for i in cloudfront.invalidations(cloudfront.distribution_id)] == [created.id]


def test_lost_answer_is_retried_into_the_same_invalidation(cloudfront: CloudFrontEmulator) -> None:
    """A 500 after the invalidation was created is retried with the same CallerReference and
    answered with that invalidation: no duplicate."""
    cloudfront.inject("InternalError", times=1, after=True)
    created = edge(cloudfront).create_invalidation(cloudfront.distribution_id, ["/a"], "ref")
    assert [i.id for i in cloudfront.invalidations(cloudfront.distribution_id)] == [created.id]
    assert len(cloudfront.requests) == 2


def test_connection_reset_is_retryable(cloudfront: CloudFrontEmulator) -> None:
    """A dropped connection (ConnectionClosedError) becomes a retryable SinkError."""
    cloudfront.inject("ConnectionReset", operation="*")
    with pytest.raises(SinkError) as excinfo:
        edge(cloudfront, max_attempts=1).check_distribution(cloudfront.distribution_id)
    assert (excinfo.value.code, excinfo.value.retryable) == ("ConnectionClosedError", True)


def test_connection_refused_is_retryable(aws_env: None) -> None:
    """Nothing listening on the endpoint (EndpointConnectionError) is a retryable SinkError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cf = Boto3CloudFront(
        make_session(None, None, None), endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1
    )
    with pytest.raises(SinkError) as excinfo:
        cf.check_distribution("E123")
    assert (excinfo.value.code, excinfo.value.retryable) == ("EndpointConnectionError", True)


def test_read_timeout_is_retryable(aws_env: None) -> None:
    """An endpoint that accepts but never answers (ReadTimeoutError) is a retryable SinkError."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cf = Boto3CloudFront(
            make_session(None, None, None),
            endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            read_timeout=0.2,
            max_attempts=1,
        )
        with pytest.raises(SinkError) as excinfo:
            cf.check_distribution("E123")
    assert (excinfo.value.code, excinfo.value.retryable) == ("ReadTimeoutError", True)


def test_other_client_errors_are_not_retryable(cloudfront: CloudFrontEmulator) -> None:
    """An error code with no special meaning (NoSuchInvalidation) is a plain, final SinkError."""
    with pytest.raises(SinkError) as excinfo:
        edge(cloudfront).get_invalidation(cloudfront.distribution_id, "INOPE")
    assert type(excinfo.value) is SinkError
    assert (excinfo.value.code, excinfo.value.retryable) == ("NoSuchInvalidation", False)


def client_error(code: str, message: str, operation: str, status: int = 400) -> Exception:
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("err", "kind", "retryable"),
    [
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), SinkError, True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), SinkError, True),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), SinkError, True),
        (botocore.exceptions.NoCredentialsError(), AccessProblem, False),
        (
            botocore.exceptions.PartialCredentialsError(provider="env", cred_var="x"),
            AccessProblem,
            False,
        ),
        (client_error("AccessDenied", "no", "AssumeRole", 403), AccessProblem, False),
        (client_error("ExpiredToken", "old", "CreateInvalidation", 400), AccessProblem, False),
        (client_error("Weird", "what", "CreateInvalidation", 502), SinkError, True),
        (client_error("Weird", "what", "CreateInvalidation", 400), SinkError, False),
        (ValueError("bug"), SinkError, False),
    ],
)
def test_translate_classifies_every_failure(err: Exception, kind: type, retryable: bool) -> None:
    """translate maps each failure to the right SinkError class and retryability."""
    translated = translate(err, "E123")
    assert type(translated) is kind
    assert translated.retryable is retryable
    assert translated.distribution == "E123"


def test_assume_role_denied_names_sts_assume_role() -> None:
    """AccessDenied from AssumeRole says sts:AssumeRole is the missing permission."""
    translated = translate(client_error("AccessDenied", "nope", "AssumeRole", 403), "E123")
    assert "sts:AssumeRole" in str(translated)


def test_status_is_normalised() -> None:
    """moto's "COMPLETED" and CloudFront's "Completed" read the same; unknown ones pass through."""
    assert normalise_status("COMPLETED") == "Completed"
    assert normalise_status("InProgress") == "InProgress"
    assert normalise_status("IN_PROGRESS") == "InProgress"
    assert normalise_status("Weird") == "Weird"


def test_role_is_assumed_with_refreshable_credentials(cloudfront: CloudFrontEmulator) -> None:
    """With role_arn, calls are signed with the role's credentials (session "invalidatord"),
    which refresh themselves."""
    role = "arn:aws:iam::123456789012:role/invalidator"
    session = make_session("us-east-1", None, role, sts_endpoint_url=cloudfront.endpoint_url)
    credentials = session.get_credentials()
    assert isinstance(credentials, botocore.credentials.RefreshableCredentials)
    assert credentials.get_frozen_credentials().access_key != "testing"
    sts = session.client("sts", endpoint_url=cloudfront.endpoint_url)
    arn = sts.get_caller_identity()["Arn"]
    assert arn == "arn:aws:sts::123456789012:assumed-role/invalidator/invalidatord"
    cf = Boto3CloudFront(session, endpoint_url=cloudfront.endpoint_url)
    cf.check_distribution(cloudfront.distribution_id)


def test_profile_is_used(cloudfront: CloudFrontEmulator, tmp_path: Any, monkeypatch: Any) -> None:
    """A named profile's credentials are the ones the session signs with."""
    creds = tmp_path / "credentials"
    creds.write_text("[site]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    session = make_session("us-east-1", "site", None)
    assert session.get_credentials().get_frozen_credentials().access_key == "AKIDPROFILE"


def test_unknown_profile_is_a_config_error(aws_env: None) -> None:
    """A profile that does not exist is a ConfigError naming aws.profile, not a botocore error."""
    with pytest.raises(ConfigError, match=r"aws\.profile: no AWS profile named 'nope'"):
        make_session(None, "nope", None)


def test_no_credentials_in_logs(
    cloudfront: CloudFrontEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    structlog_defaults: None,
) -> None:
    """Successful and failing calls log events, and none of them holds a credential."""
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIDLOGTEST0000000001",
        "AWS_SECRET_ACCESS_KEY": "secretLOGTEST/0123456789abcdefghijklmnopq",
        "AWS_SESSION_TOKEN": "tokenLOGTEST0123456789",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO)
    cf, dist = edge(cloudfront, max_attempts=1), cloudfront.distribution_id
    with capture_logs() as events:
        cf.create_invalidation(dist, ["/a"], "ref")
        cloudfront.inject("AccessDenied", operation="*")
        with pytest.raises(AccessProblem):
            cf.check_distribution(dist)
        DryRunCloudFront().create_invalidation(dist, ["/b"], "ref")
    assert {e["event"] for e in events} >= {"cloudfront_call", "cloudfront_call_failed"}
    logged = repr(events) + caplog.text
    for value in secrets.values():
        assert value not in logged
    assert "Authorization" not in logged
    assert "Signature=" not in logged


def test_dry_run_sends_nothing(cloudfront: CloudFrontEmulator, structlog_defaults: None) -> None:
    """DryRunCloudFront logs would_submit with the paths, answers Completed, and no
    request reaches CloudFront."""
    dry = DryRunCloudFront()
    with capture_logs() as events:
        made = dry.create_invalidation(cloudfront.distribution_id, ["/a", "/b*"], "ref")
    assert made.completed
    assert made.paths == ("/a", "/b*")
    assert dry.get_invalidation(cloudfront.distribution_id, made.id) == made
    assert dry.list_in_progress(cloudfront.distribution_id) == []
    dry.check_distribution(cloudfront.distribution_id)
    [event] = events
    assert event["event"] == "would_submit"
    assert event["paths"] == ["/a", "/b*"]
    assert event["distribution_id"] == cloudfront.distribution_id
    assert cloudfront.requests == []
    assert dry.calls["CreateInvalidation"] == 1


def test_user_agent_names_invalidatord(cloudfront: CloudFrontEmulator) -> None:
    """Requests carry "invalidatord/<version>" in the user agent."""
    from invalidatord import __version__

    cf = edge(cloudfront)
    seen: list[str] = []
    cf._get_client().meta.events.register(
        "before-send.cloudfront.*",
        lambda request, **_: seen.append(request.headers["User-Agent"].decode()),
    )
    cf.check_distribution(cloudfront.distribution_id)
    assert f"invalidatord/{__version__}" in seen[0]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"])
def test_session_resolves_endpoints_as_botocore_does(aws_env: None, region: str) -> None:
    """The session's endpoint data, cut down to the services the daemon uses, resolves each of
    them (URL, partition, signing region and name) exactly as botocore's full data does; a
    service outside the cut still gets a client."""
    ours = make_session(region, None, None)
    full = botocore.session.get_session()
    for service in sorted(AWS_SERVICES):
        a = ours.client(service)
        b = full.create_client(service, region_name=region)
        assert (a.meta.endpoint_url, a.meta.partition) == (b.meta.endpoint_url, b.meta.partition)
        assert a._request_signer._region_name == b._request_signer._region_name
        assert a._request_signer._signing_name == b._request_signer._signing_name
    assert ours.client("sns").meta.service_model.service_name == "sns"


def _reached(model: dict[str, Any], operation: str) -> dict[str, Any]:
    """The operation's definition and every shape its input and output reach, undocumented:
    what a client needs of the model to call it. Error shapes are left out (the errors any
    operation names are checked apart)."""
    cut = cut_service_model({**model, "shapes": {
        k: v for k, v in model["shapes"].items() if not v.get("exception")
    }, "operations": {operation: {
        k: v for k, v in model["operations"][operation].items() if k != "errors"
    }}}, frozenset({operation}))  # fmt: skip
    return {"operation": cut["operations"][operation], "shapes": cut["shapes"]}


def test_the_shipped_cloudfront_model_matches_the_installed_botocore(aws_env: None) -> None:
    """invalidatord/data/botocore holds CloudFront's model cut to the daemon's operations.
    Against the installed botocore's model at the same API version: each of the operations
    and every shape it reaches are the same, and every error those operations name is
    there. Compared this way, not as whole files, so that a botocore release adding
    unrelated CloudFront features does not fail the test; one that changes what these
    operations send or receive does, and `scripts/cut-cloudfront-model` writes the cut
    again. Nothing else lies under the data path."""
    loader = botocore.loaders.Loader()  # botocore's own data only
    version = loader.determine_latest_version("cloudfront", "service-2")
    full = loader.load_service_model("cloudfront", "service-2", version)
    shipped_path = Path(DATA_PATH, "cloudfront", version, "service-2.json")
    assert shipped_path.exists(), f"no cut model for CloudFront API version {version}"
    shipped = json.loads(shipped_path.read_text())
    assert set(shipped["operations"]) == CLOUDFRONT_OPERATIONS
    for operation in sorted(CLOUDFRONT_OPERATIONS):
        assert _reached(shipped, operation) == _reached(full, operation), operation
        named = {e["shape"] for e in full["operations"][operation].get("errors", ())}
        assert named <= set(shipped["shapes"]), (operation, named - set(shipped["shapes"]))
    assert sorted(p.relative_to(DATA_PATH) for p in Path(DATA_PATH).rglob("*.*")) == [
        Path("cloudfront", version, "service-2.json")
    ]


def test_the_cloudfront_client_has_the_three_operations_and_every_error(
    cloudfront: CloudFrontEmulator,
) -> None:
    """The edge's client is made from the cut model: the daemon's three operations, each
    of CloudFront's modeled errors as an exception class (TooManyInvalidationsInProgress,
    NoSuchDistribution, ...), and it works against the emulator; a client of another
    session still has the whole API."""
    cf = edge(cloudfront)
    cf.check_distribution(cloudfront.distribution_id)
    client = cf._get_client()
    model = client.meta.service_model
    assert set(model.operation_names) == CLOUDFRONT_OPERATIONS
    full = botocore.session.get_session().get_service_model("cloudfront")
    assert {s.name for s in model.error_shapes} == {s.name for s in full.error_shapes}
    assert issubclass(
        client.exceptions.TooManyInvalidationsInProgress, botocore.exceptions.ClientError
    )
    other = make_session(None, None, None).client("cloudfront")
    assert "GetDistribution" in other.meta.service_model.operation_names


def test_cut_service_model_keeps_what_the_operations_reach() -> None:
    """Only the named operations, every shape they reach through members, lists and maps,
    every error shape, no documentation; an operation the model lacks is a KeyError."""
    model = {
        "metadata": {"apiVersion": "1"},
        "operations": {
            "Keep": {"input": {"shape": "In"}, "output": {"shape": "Out"}, "documentation": "d"},
            "Drop": {"input": {"shape": "Unused"}},
        },
        "shapes": {
            "In": {"type": "structure", "members": {"L": {"shape": "List"}}},
            "List": {"type": "list", "member": {"shape": "Map"}},
            "Map": {"type": "map", "key": {"shape": "S"}, "value": {"shape": "S"}},
            "S": {"type": "string", "documentation": "text"},
            "Out": {"type": "structure", "members": {}},
            "Unused": {"type": "structure", "members": {"X": {"shape": "S"}}},
            "Oops": {"type": "structure", "members": {}, "exception": True},
        },
    }
    cut = cut_service_model(model, frozenset({"Keep"}))
    assert list(cut["operations"]) == ["Keep"]
    assert sorted(cut["shapes"]) == ["In", "List", "Map", "Oops", "Out", "S"]
    assert "documentation" not in json.dumps(cut)
    assert cut["metadata"] == {"apiVersion": "1"}
    with pytest.raises(KeyError):
        cut_service_model(model, frozenset({"Nope"}))
