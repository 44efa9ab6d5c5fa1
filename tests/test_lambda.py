"""Lambda mode: `invalidatord.aws_lambda.handler` on recorded SQS event shapes
(tests/data/lambda/, bodies taken from tests/data/s3events/), against the CloudFront emulator
over HTTP (the config's `aws.endpoint_url`), as Lambda would call it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from invalidatord.aws_lambda import caller_reference, handler
from invalidatord.errors import ConfigError
from invalidatord.testing.cloudfront import CREATE, CloudFrontEmulator

DATA = Path(__file__).parent / "data" / "lambda"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/site-events"
BUCKET = "amzn-s3-demo-bucket"

#: What sqs-s3-events.json maps to with the default rules below.
EXPECTED = {
    "/images/2024/red%20flower+(1).jpg",  # put (form-encoded key)
    "/docs/old%20page.html",  # delete
    "/site/about%20us/",  # copy, through SNS
    "/site/about%20us/index.html",
    "/logs/2024-05-02T12:34:56%20red%20flower+1.zip",  # EventBridge (key as is)
    "/a/one.html",  # the multi-record message's record of our bucket
}
RULES = [
    {"match": "**/index.html", "urls": ["/{dir}/", "/{path}"]},
    {"match": "**", "urls": ["/{path}"]},
]


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return event


def ids(event: dict[str, Any]) -> list[str]:
    return [str(r["messageId"]) for r in event["Records"]]


def failures(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def write_lambda_config(
    directory: Path,
    cloudfront: CloudFrontEmulator,
    *,
    distributions: dict[str, str] | None = None,
    sources: list[dict[str, Any]] | None = None,
    rules: list[dict[str, Any]] | None = None,
) -> Path:
    cfg = {
        "aws": {"endpoint_url": cloudfront.endpoint_url, "region": "us-east-1"},
        "distributions": {
            name: {"id": dist_id}
            for name, dist_id in (distributions or {"www": cloudfront.distribution_id}).items()
        },
        "sources": sources
        or [{"name": "site", "type": "sqs", "queue_url": QUEUE_URL, "bucket": BUCKET}],
        "rules": rules or RULES,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def configured(
    tmp_path: Path, cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The default config, named by INVALIDATORD_CONFIG."""
    path = write_lambda_config(tmp_path, cloudfront)
    monkeypatch.setenv("INVALIDATORD_CONFIG", str(path))
    return path


def creates(cloudfront: CloudFrontEmulator) -> list[Any]:
    return [r for r in cloudfront.requests if r.op == CREATE]


def test_a_batch_becomes_one_invalidation_with_the_exact_paths(
    configured: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Direct, SNS-wrapped and EventBridge S3 events in one batch give one CreateInvalidation
    with exactly their encoded paths; the test event and the other bucket's record add
    nothing, and no message fails."""
    with capture_logs() as logs:
        response = handler(load("sqs-s3-events.json"), None)
    assert response == {"batchItemFailures": []}
    (request,) = creates(cloudfront)
    assert set(request.paths) == EXPECTED
    assert len(request.paths) == len(EXPECTED)
    assert request.caller_reference is not None
    assert request.caller_reference.startswith("invalidatord-lambda-")
    (submitted,) = [e for e in logs if e["event"] == "batch_submitted"]
    assert submitted["distribution"] == "www"
    assert submitted["messages"] == 5  # every message that contributed a path


def test_a_retried_batch_gets_the_existing_invalidation(
    configured: Path, cloudfront: CloudFrontEmulator
) -> None:
    """The same batch delivered again (an SQS retry) sends the same CallerReference, and
    CloudFront answers with the invalidation it already made: nothing new, nothing billed."""
    event = load("sqs-s3-events.json")
    assert handler(event, None) == {"batchItemFailures": []}
    assert handler(copy.deepcopy(event), None) == {"batchItemFailures": []}
    first, second = creates(cloudfront)
    assert first.caller_reference == second.caller_reference
    assert first.invalidation_id == second.invalidation_id
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 1


def test_malformed_messages_fail_alone(configured: Path, cloudfront: CloudFrontEmulator) -> None:
    """Not-JSON, an unknown shape and an SNS envelope around not-JSON are reported for retry
    (each logged with its id); the test event is not; the good messages are invalidated."""
    event = load("sqs-malformed.json")
    with capture_logs() as logs:
        response = handler(event, None)
    every = ids(event)
    assert failures(response) == [every[1], every[2], every[4]]
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == {
        "/images/2024/red%20flower+(1).jpg",
        "/docs/old%20page.html",
    }
    logged = [e for e in logs if e["event"] == "lambda_message_malformed"]
    assert [e["message_id"] for e in logged] == [every[1], every[2], every[4]]
    assert logged[0]["receive_count"] == "3"
    assert logged[0]["reason"].startswith("message body is not JSON")
    assert all(len(e["excerpt"]) <= 80 for e in logged)


def test_a_failed_distribution_fails_exactly_its_contributors_and_the_retry_completes(
    tmp_path: Path, cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two distributions and CloudFront refusing the first request (www), the messages
    that contributed a path to www are failed, including one that also fed `assets`; the
    messages only `assets` needed succeed. Retrying the failed ones completes www."""
    assets_id = cloudfront.create_distribution("assets")
    path = write_lambda_config(
        tmp_path,
        cloudfront,
        distributions={"www": cloudfront.distribution_id, "assets": assets_id},
        rules=[
            {"match": "images/**", "distribution": "assets", "urls": ["/{path}"]},
            {"match": "docs/**", "distribution": ["www", "assets"], "urls": ["/{path}"]},
            {"match": "**", "distribution": "www", "urls": ["/{path}"]},
        ],
    )
    monkeypatch.setenv("INVALIDATORD_CONFIG", str(path))
    event = load("sqs-s3-events.json")
    _put, delete, sns, eventbridge, multi, _test_event = ids(event)
    cloudfront.inject("TooManyInvalidationsInProgress", times=1)

    with capture_logs() as logs:
        response = handler(event, None)

    assert failures(response) == [delete, sns, eventbridge, multi]
    assert set(cloudfront.created_paths(assets_id)) == {
        "/images/2024/red%20flower+(1).jpg",
        "/docs/old%20page.html",
    }
    assert cloudfront.created_paths(cloudfront.distribution_id) == []
    (failed,) = [e for e in logs if e["event"] == "lambda_invalidation_failed"]
    assert (failed["distribution"], failed["code"], failed["messages"]) == (
        "www",
        "TooManyInvalidationsInProgress",
        4,
    )

    retry = {"Records": [r for r in event["Records"] if r["messageId"] in failures(response)]}
    assert handler(retry, None) == {"batchItemFailures": []}
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == {
        "/docs/old%20page.html",
        "/site/about%20us/index.html",
        "/logs/2024-05-02T12:34:56%20red%20flower+1.zip",
        "/a/one.html",
    }


def test_a_path_cloudfront_refuses_is_dropped_and_the_rest_invalidated(
    configured: Path, cloudfront: CloudFrontEmulator
) -> None:
    """InvalidArgument naming one path: the batch is bisected down to it, it is logged and
    dropped, every other path is invalidated, and no message fails (a retry cannot help)."""
    cloudfront.reject_path("/a/one.html")
    with capture_logs() as logs:
        response = handler(load("sqs-s3-events.json"), None)
    assert response == {"batchItemFailures": []}
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == EXPECTED - {"/a/one.html"}
    (rejected,) = [e for e in logs if e["event"] == "path_rejected"]
    assert rejected["path"] == "/a/one.html"
    assert any(e["event"] == "batch_bisected" for e in logs)


def test_invalid_argument_for_every_path_fails_the_messages_instead_of_dropping_them(
    configured: Path, cloudfront: CloudFrontEmulator
) -> None:
    """InvalidArgument for every request is the request's fault: no path is dropped, every
    message that contributed a path fails (SQS retries it), and it is logged once."""
    cloudfront.inject("InvalidArgument")
    event = load("sqs-s3-events.json")
    with capture_logs() as logs:
        response = handler(event, None)
    assert cloudfront.created_paths(cloudfront.distribution_id) == []
    assert not any(e["event"] == "path_rejected" for e in logs)
    assert [e["event"] for e in logs].count("batch_refused_whole") == 1
    assert failures(response)  # every contributor, at the least
    assert set(failures(response)) <= set(ids(event))


def test_the_record_queue_picks_the_source_and_its_bucket(
    tmp_path: Path, cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two sqs sources, each record is read as the source whose queue_url names the
    record's queue (its bucket filter and source-scoped rules apply); a record from a queue
    no source names fails."""
    path = write_lambda_config(
        tmp_path,
        cloudfront,
        sources=[
            {"name": "site", "type": "sqs", "queue_url": QUEUE_URL, "bucket": BUCKET},
            {
                "name": "other",
                "type": "sqs",
                "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/other-events",
                "bucket": "other-bucket",
                "prefix": "a",
            },
        ],
        rules=[{"match": "**", "source": "other", "urls": ["/other/{path}"]}, *RULES],
    )
    monkeypatch.setenv("INVALIDATORD_CONFIG", str(path))
    multi = load("sqs-s3-events.json")["Records"][4]
    records = []
    for queue in ("site-events", "other-events", "unknown-events"):
        record = copy.deepcopy(multi)
        record["messageId"] = f"id-{queue}"
        record["eventSourceARN"] = f"arn:aws:sqs:us-east-1:123456789012:{queue}"
        records.append(record)
    with capture_logs() as logs:
        response = handler({"Records": records}, None)
    assert failures(response) == ["id-unknown-events"]
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == {
        "/a/one.html",
        "/other/two.html",
    }
    assert any(e["event"] == "lambda_no_source" for e in logs)


def test_the_config_is_found_in_the_task_root(
    tmp_path: Path, cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without INVALIDATORD_CONFIG the handler reads config.yaml from LAMBDA_TASK_ROOT."""
    write_lambda_config(tmp_path, cloudfront)
    monkeypatch.delenv("INVALIDATORD_CONFIG", raising=False)
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    assert handler(load("sqs-s3-events.json"), None) == {"batchItemFailures": []}
    assert set(cloudfront.created_paths(cloudfront.distribution_id)) == EXPECTED


def test_an_unusable_config_fails_the_whole_batch(
    tmp_path: Path, cloudfront: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config that does not load raises (Lambda then retries the whole batch) after logging
    each located problem; so does a missing file, and a config without an sqs source."""
    path = tmp_path / "config.yaml"
    path.write_text("distributions: {www: {id: nope}}\nsources: []\n", encoding="utf-8")
    monkeypatch.setenv("INVALIDATORD_CONFIG", str(path))
    with capture_logs() as logs, pytest.raises(ConfigError):
        handler(load("sqs-s3-events.json"), None)
    problems = [e["problem"] for e in logs if e["event"] == "lambda_config_invalid"]
    assert any(p.startswith(f"{path}:1: distributions.www.id") for p in problems)

    monkeypatch.setenv("INVALIDATORD_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        handler(load("sqs-s3-events.json"), None)

    write_lambda_config(
        tmp_path,
        cloudfront,
        sources=[{"name": "b", "type": "s3-poll", "bucket": BUCKET}],
    )
    monkeypatch.setenv("INVALIDATORD_CONFIG", str(path))
    with pytest.raises(ConfigError, match="Lambda mode needs a source of type sqs"):
        handler(load("sqs-s3-events.json"), None)
    assert creates(cloudfront) == []


def test_caller_reference_depends_on_the_set_of_messages_and_paths() -> None:
    """The reference ignores order and repeats, and changes with any message or path."""
    ref = caller_reference(["m2", "m1"], ["/b", "/a"])
    assert ref == caller_reference(["m1", "m2", "m1"], ["/a", "/b"])
    assert ref != caller_reference(["m1"], ["/a", "/b"])
    assert ref != caller_reference(["m1", "m2"], ["/a"])
    assert len(ref) <= 128
