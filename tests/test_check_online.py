"""`invalidatord check --online`: the config's AWS settings asked of AWS itself (the CloudFront
test double, and moto's SQS, S3 and STS behind it, over HTTP on loopback), the CLI as a real
subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import aws_test_env


def check_online(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", "check", "--online", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        env=env or aws_test_env(),
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def client(cloudfront: CloudFrontEmulator, service: str) -> Any:
    """The test's own client (set-up and inspection), with the `aws_env` dummy credentials."""
    return boto3.client(service, endpoint_url=cloudfront.endpoint_url, region_name="us-east-1")


def online_config(
    tmp_path: Path,
    cloudfront: CloudFrontEmulator,
    *,
    distribution_id: str | None = None,
    queue_url: str,
    bucket: str,
    fleet_queue_url: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """A config with every kind of source (filesystem, sqs, s3-poll), one distribution, and a
    fleet invalidator's queue when `fleet_queue_url` is given."""
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "aws": {"endpoint_url": endpoint or cloudfront.endpoint_url, "region": "us-east-1"},
        "distributions": {"www": {"id": distribution_id or cloudfront.distribution_id}},
        "sources": [
            {"name": "docroot", "type": "filesystem", "root": str(root)},
            {"name": "uploads", "type": "sqs", "queue_url": queue_url},
            {"name": "static", "type": "s3-poll", "bucket": bucket, "prefix": "site"},
        ],
        "rules": [{"match": "**", "urls": ["/{path}"]}],
        "metrics": {"listen": None},
    }
    if fleet_queue_url is not None:
        cfg["fleet"] = {"role": "invalidator", "queue_url": fleet_queue_url}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture
def resources(cloudfront: CloudFrontEmulator) -> dict[str, str]:
    """A real SQS queue holding one message, a FIFO fleet queue, and a bucket with a key under
    the prefix `site/`, all in moto behind the emulator."""
    sqs = client(cloudfront, "sqs")
    queue_url = sqs.create_queue(QueueName="uploads-events")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    fleet_url = sqs.create_queue(
        QueueName="invalidatord.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    s3 = client(cloudfront, "s3")
    s3.create_bucket(Bucket="example-static")
    s3.put_object(Bucket="example-static", Key="site/index.html", Body=b"<h1>hi</h1>")
    return {"queue_url": queue_url, "fleet_queue_url": fleet_url, "bucket": "example-static"}


def lines_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The online lines (after the offline summary), without their indentation."""
    out = result.stdout.split("online, against ", 1)[1].splitlines()[1:]
    return [line.strip() for line in out if line.startswith("  ")]


def test_all_ok_is_exit_0_with_one_line_per_check_and_changes_nothing(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """Against a distribution, queue, fleet queue and bucket that exist: every check is ok or
    says it was not probed, exit 0; the queue's message is still there and receivable at once
    (nothing was received, so nothing is hidden from the daemon), and no invalidation was made."""
    config = online_config(tmp_path, cloudfront, **resources)
    result = check_online(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    dist = f"distribution www ({cloudfront.distribution_id})"
    lines = lines_of(result)
    assert lines[0].startswith("credentials: GetCallerIdentity: ok: arn:aws:")
    assert lines[0].endswith("(account 123456789012)")
    expected_ok = [
        f"{dist}: ListInvalidations: ok: ",
        f"{dist}: GetDistribution: ok: enabled, status Deployed, ",
        "source uploads (sqs): GetQueueAttributes: ok: ",
        "source static (s3-poll): ListObjectsV2: ok: s3://example-static/site/: "
        "s3:ListBucket allowed; keys under it",
        "source static (s3-poll): HeadBucket: ok: s3://example-static: exists",
        "fleet queue (invalidator): GetQueueAttributes: ok: ",
    ]
    for start in expected_ok:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert f"{dist}: CreateInvalidation, GetInvalidation: not probed: " in "\n".join(lines)
    receive = "source uploads (sqs): sqs:ReceiveMessage, DeleteMessage, ChangeMessageVisibility"
    assert any(line.startswith(f"{receive}: not probed: ") for line in lines), lines
    assert all(": ok: " in line or ": not probed: " in line for line in lines), lines
    assert "online: every check passed" in result.stdout
    assert {r.op for r in cloudfront.requests} == {"ListInvalidations"}
    sqs = client(cloudfront, "sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=resources["queue_url"], AttributeNames=["All"])[
        "Attributes"
    ]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    got = sqs.receive_message(QueueUrl=resources["queue_url"], WaitTimeSeconds=0)
    assert [m["Body"] for m in got.get("Messages", [])] == ["{}"]


def test_json_gives_the_same_checks_as_one_object(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """`--online --json`: stdout is one JSON object (no summary), ok true, each check with
    subject, check, outcome and detail."""
    config = online_config(tmp_path, cloudfront, **resources)
    result = check_online(config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["failed"] == []
    outcomes = {(c["subject"], c["check"]): c["outcome"] for c in report["checks"]}
    assert outcomes[("credentials", "GetCallerIdentity")] == "ok"
    assert outcomes[("source static (s3-poll)", "HeadBucket")] == "ok"
    assert set(outcomes.values()) == {"ok", "not probed"}


def test_a_distribution_that_does_not_exist_is_exit_1_naming_it(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """An id with no distribution behind it: its line says NoSuchDistribution and what to
    check, the rest still pass, and exit 1 names the distribution."""
    config = online_config(tmp_path, cloudfront, distribution_id="E2NOSUCHDIST12", **resources)
    result = check_online(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "distribution www (E2NOSUCHDIST12): ListInvalidations: FAILED: NoSuchDistribution: "
        in result.stdout
    )
    assert "no distribution E2NOSUCHDIST12 in account 123456789012" in result.stdout
    assert "source uploads (sqs): GetQueueAttributes: ok" in result.stdout
    assert result.stderr.splitlines()[-1] == (
        "invalidatord: check --online failed: distribution www (E2NOSUCHDIST12)"
    )
    assert "Traceback" not in result.stderr


def test_a_queue_that_does_not_exist_is_exit_1_naming_the_source(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """A queue URL with no queue: its line has SQS's error code and the key to fix."""
    missing = resources["queue_url"].replace("uploads-events", "no-such-queue")
    config = online_config(tmp_path, cloudfront, **(resources | {"queue_url": missing}))
    result = check_online(config)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [ln for ln in lines_of(result) if "FAILED" in ln]
    assert line.startswith(f"source uploads (sqs): GetQueueAttributes: FAILED: {missing}: ")
    assert "NonExistentQueue" in line or "QueueDoesNotExist" in line
    assert "no such queue: check sources[1].queue_url" in line
    assert result.stderr.splitlines()[-1] == (
        "invalidatord: check --online failed: source uploads (sqs)"
    )


def test_a_bucket_that_does_not_exist_is_exit_1_naming_the_source(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """A bucket that is not there: both the listing and HeadBucket say so, exit 1."""
    config = online_config(tmp_path, cloudfront, **(resources | {"bucket": "no-such-bucket"}))
    result = check_online(config)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [ln for ln in lines_of(result) if "FAILED" in ln]
    assert failed == [
        "source static (s3-poll): ListObjectsV2: FAILED: s3://no-such-bucket/site/: "
        "NoSuchBucket: The specified bucket does not exist; no such bucket: "
        "check sources[2].bucket",
        "source static (s3-poll): HeadBucket: FAILED: s3://no-such-bucket: 404: Not Found; "
        "no such bucket: check sources[2].bucket",
    ]
    assert result.stderr.splitlines()[-1] == (
        "invalidatord: check --online failed: source static (s3-poll)"
    )


def test_access_denied_names_the_iam_action_to_grant(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """CloudFront refusing ListInvalidations (AccessDenied): the line names the actions to
    grant and the distribution's ARN."""
    cloudfront.inject("AccessDenied", operation="ListInvalidations")
    config = online_config(tmp_path, cloudfront, **resources)
    result = check_online(config)
    assert result.returncode == 1, result.stdout + result.stderr
    arn = f"arn:aws:cloudfront::123456789012:distribution/{cloudfront.distribution_id}"
    assert (
        f"ListInvalidations: FAILED: AccessDenied: User is not authorized to perform this "
        f"operation; grant cloudfront:ListInvalidations (and CreateInvalidation, "
        f"GetInvalidation) on {arn}"
    ) in result.stdout


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_endpoint_fails_fast_with_one_clear_line(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """aws.endpoint_url on a closed port: the credentials line says AWS could not be reached
    and which setting to check, the other checks are skipped (not each retried), exit 1
    within seconds."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    config = online_config(tmp_path, cloudfront, endpoint=endpoint, **resources)
    started = time.monotonic()
    result = check_online(config)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 20, took  # interpreter start included; the calls themselves fail at once
    lines = lines_of(result)
    assert lines[0] == (
        f"credentials: GetCallerIdentity: FAILED: EndpointConnectionError: Could not connect "
        f'to the endpoint URL: "{endpoint}/"; AWS could not be reached: check '
        "aws.endpoint_url (if set), the network, a proxy (HTTPS_PROXY) or a VPC endpoint"
    )
    assert all(": all: skipped: needs working credentials" in line for line in lines[1:])
    assert len(lines) == 5  # credentials, the distribution, two AWS sources, the fleet queue
    assert result.stderr.splitlines()[-1] == (
        "invalidatord: check --online failed: credentials (4 other check(s) skipped)"
    )
    assert "Traceback" not in result.stderr


def test_no_credentials_says_which_ways_were_tried_as_run_does(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """No credentials by any way (no AWS_* keys, empty credential and config files, instance
    metadata off): the credentials line is `run`'s line for the same mistake, exit 1, and
    nothing reached the endpoint's CloudFront."""
    empty = tmp_path / "aws"
    empty.mkdir()
    (empty / "credentials").write_text("")
    (empty / "config").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    config = online_config(tmp_path, cloudfront, **resources)
    result = check_online(config, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    first = lines_of(result)[0]
    assert first.startswith(
        "credentials: GetCallerIdentity: FAILED: no AWS credentials found: tried "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE, "
        f"{empty / 'credentials'} and {empty / 'config'}, "
    )
    assert "LoadCredential=" in first
    assert cloudfront.requests == []
    assert "Traceback" not in result.stderr


def test_json_without_online_is_a_usage_error(tmp_path: Path) -> None:
    """`check --json` alone: exit 2 with one line (the offline summary has no JSON form)."""
    root = tmp_path / "www"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "distributions": {"www": {"id": "E2EXAMPLE12345"}},
                "sources": [{"name": "d", "type": "filesystem", "root": str(root)}],
                "rules": [{"match": "**", "urls": ["/{path}"]}],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "invalidatord", "check", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        env=aws_test_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "invalidatord: check: --json goes with --online\n"


def test_with_a_role_the_credentials_line_is_the_assumed_role(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """With aws.role_arn the checks run as the role, assumed as the daemon assumes it (session
    name invalidatord): the credentials line shows the assumed-role ARN."""
    config = online_config(tmp_path, cloudfront, **resources)
    cfg = yaml.safe_load(config.read_text())
    cfg["aws"]["role_arn"] = "arn:aws:iam::123456789012:role/invalidatord"
    config.write_text(yaml.safe_dump(cfg))
    result = check_online(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines_of(result)[0] == (
        "credentials: GetCallerIdentity: ok: assumed aws.role_arn, "
        "arn:aws:sts::123456789012:assumed-role/invalidatord/invalidatord "
        "(account 123456789012)"
    )


def test_a_fleet_publisher_is_not_asked_about_cloudfront(
    tmp_path: Path, cloudfront: CloudFrontEmulator, resources: dict[str, str]
) -> None:
    """A fleet publisher never calls CloudFront, so neither does its check: its distribution
    is "not probed", and no CloudFront request reaches the double."""
    config = online_config(tmp_path, cloudfront, **resources)
    cfg = yaml.safe_load(config.read_text())
    cfg["fleet"] = {"role": "publisher", "queue_url": resources["fleet_queue_url"]}
    config.write_text(yaml.safe_dump(cfg))
    result = check_online(config)
    assert result.returncode == 0, result.stdout + result.stderr
    dist = f"distribution www ({cloudfront.distribution_id})"
    assert f"{dist}: all: not probed: a fleet publisher never calls CloudFront" in result.stdout
    assert "fleet queue (publisher): sqs:SendMessage: not probed: " in result.stdout
    assert cloudfront.requests == []
