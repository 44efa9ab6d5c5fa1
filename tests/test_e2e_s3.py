"""S3 origins end to end: `invalidatord run` as a real subprocess with a `type: sqs` source,
against the emulator endpoint, where moto delivers the bucket's events to SQS directly,
through SNS and through EventBridge. Each test asserts the exact CloudFront paths received.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, Daemons, emulator_config
from tests.waiting import wait_for

BUCKET = "site-bucket"
DATA = Path(__file__).parent / "data" / "s3events"


@dataclass
class Aws:
    """Clients on the emulator endpoint and the test's queue."""

    s3: Any
    sqs: Any
    sns: Any
    events: Any
    queue_url: str
    queue_arn: str

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) messages of the queue."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def notify_queue(self, bucket: str) -> None:
        self.s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self.queue_arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    }
                ]
            },
        )


@pytest.fixture
def aws(cloudfront: CloudFrontEmulator) -> Aws:
    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=cloudfront.endpoint_url,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )

    sqs = client("sqs")
    url = sqs.create_queue(QueueName="site-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return Aws(client("s3"), sqs, client("sns"), client("events"), url, arn)


def sqs_config(
    tmp_path: Path,
    cloudfront: CloudFrontEmulator,
    aws: Aws,
    *,
    quiet: str = "300ms",
    max_delay: str = "2s",
    **source: Any,
) -> Path:
    """A config with one `type: sqs` source on the test's queue (`source` adds to it)."""
    return emulator_config(
        tmp_path,
        tmp_path,
        cloudfront,
        quiet=quiet,
        max_delay=max_delay,
        extra={
            "sources": [
                {
                    "name": "assets",
                    "type": "sqs",
                    "queue_url": aws.queue_url,
                    "wait_time": "1s",
                    "visibility_timeout": "2s",
                    **source,
                }
            ]
        },
    )


def received(cloudfront: CloudFrontEmulator) -> list[str]:
    return cloudfront.created_paths(cloudfront.distribution_id)


def wait_paths(
    cloudfront: CloudFrontEmulator, daemon: DaemonProcess, expected: set[str], timeout: float = 30
) -> None:
    try:
        wait_for(lambda: set(received(cloudfront)) >= expected, timeout)
    except AssertionError:
        raise AssertionError(
            f"waited {timeout}s for {sorted(expected)} at CloudFront, "
            f"got {sorted(set(received(cloudfront)))}; the daemon said:\n{daemon.transcript()}"
        ) from None


def multipart(s3: Any, bucket: str, key: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    part = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"data"
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )


def test_direct_notifications_with_awkward_keys_give_exact_paths(
    tmp_path: Path, cloudfront: CloudFrontEmulator, aws: Aws, daemons: Daemons
) -> None:
    """Keys with spaces, `+`, `%`, non-ASCII letters and nested folders, a delete and a
    multipart upload reach CloudFront as exactly their encoded paths; every message is
    deleted once its paths are journaled."""
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.s3.put_object(Bucket=BUCKET, Key="old page.html", Body=b"old")  # before the wiring
    aws.notify_queue(BUCKET)
    daemon = daemons.start(sqs_config(tmp_path, cloudfront, aws, bucket=BUCKET))

    for key in (
        "docs/red flower.jpg",
        "a+b=c&d.html",
        "100% off.html",
        "café/日本語.html",
        "deep/nested/folder/index.html",
        "tilde~[1].css",
    ):
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=b"1")
    multipart(aws.s3, BUCKET, "media/big file.bin")
    aws.s3.delete_object(Bucket=BUCKET, Key="old page.html")

    expected = {
        "/docs/red%20flower.jpg",
        "/a+b=c&d.html",
        "/100%25%20off.html",
        "/caf%C3%A9/%E6%97%A5%E6%9C%AC%E8%AA%9E.html",
        "/deep/nested/folder/",
        "/deep/nested/folder/index.html",
        "/tilde%7E%5B1%5D.css",
        "/media/big%20file.bin",
        "/old%20page.html",
    }
    wait_paths(cloudfront, daemon, expected)
    wait_for(lambda: aws.counts() == (0, 0), 15, what="every message deleted")
    assert set(received(cloudfront)) == expected
    assert daemon.health()[0] == 200


def test_sns_and_eventbridge_routes_give_the_same_paths(
    tmp_path: Path, cloudfront: CloudFrontEmulator, aws: Aws, daemons: Daemons
) -> None:
    """Events of one bucket through SNS (enveloped) and of another through an EventBridge
    rule land in the same queue and give the paths their keys map to, the EventBridge key
    taken as it is."""
    topic = aws.sns.create_topic(Name="s3-events")["TopicArn"]
    aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=aws.queue_arn)
    aws.s3.create_bucket(Bucket="via-sns")
    aws.s3.put_bucket_notification_configuration(
        Bucket="via-sns",
        NotificationConfiguration={
            "TopicConfigurations": [
                {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]
        },
    )
    aws.s3.create_bucket(Bucket="via-eventbridge")
    aws.s3.put_object(Bucket="via-eventbridge", Key="eb/gone.html", Body=b"old")  # unwired yet
    aws.s3.put_bucket_notification_configuration(
        Bucket="via-eventbridge", NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    aws.events.put_rule(
        Name="s3-objects",
        EventPattern=json.dumps(
            {"source": ["aws.s3"], "detail-type": ["Object Created", "Object Deleted"]}
        ),
    )
    aws.events.put_targets(Rule="s3-objects", Targets=[{"Id": "queue", "Arn": aws.queue_arn}])
    daemon = daemons.start(sqs_config(tmp_path, cloudfront, aws))

    aws.s3.put_object(Bucket="via-sns", Key="sns/hello world+1.html", Body=b"1")
    aws.s3.delete_object(Bucket="via-sns", Key="sns/hello world+1.html")
    aws.s3.put_object(Bucket="via-eventbridge", Key="eb/red flower+1%.jpg", Body=b"1")
    multipart(aws.s3, "via-eventbridge", "eb/ünï/index.html")
    aws.s3.delete_object(Bucket="via-eventbridge", Key="eb/gone.html")

    expected = {
        "/sns/hello%20world+1.html",
        "/eb/red%20flower+1%25.jpg",
        "/eb/%C3%BCn%C3%AF/",
        "/eb/%C3%BCn%C3%AF/index.html",
        "/eb/gone.html",
    }
    wait_paths(cloudfront, daemon, expected)
    wait_for(lambda: aws.counts() == (0, 0), 15, what="every message deleted")
    assert set(received(cloudfront)) == expected


def test_bad_messages_are_survived_and_left_in_the_queue(
    tmp_path: Path, cloudfront: CloudFrontEmulator, aws: Aws, daemons: Daemons
) -> None:
    """A body that is not JSON and a JSON body of unknown shape are logged and left for the
    redrive policy; the S3 test event is deleted; the daemon stays healthy and the good
    messages around them are invalidated."""
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.notify_queue(BUCKET)  # moto sends an s3:TestEvent now
    bad = {
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)["MessageId"]: body
        for body in (
            "this is not json {",
            (DATA / "malformed-unknown-shape.json").read_text(encoding="utf-8"),
        )
    }
    daemon = daemons.start(sqs_config(tmp_path, cloudfront, aws))
    aws.s3.put_object(Bucket=BUCKET, Key="good one.html", Body=b"1")

    wait_paths(cloudfront, daemon, {"/good%20one.html"})
    wait_for(
        lambda: {e["message_id"] for e in daemon.find("sqs_message_malformed")} >= set(bad),
        15,
        what="both malformed messages logged",
    )
    assert daemon.health()[0] == 200
    assert daemon.stop() == 0
    assert set(received(cloudfront)) == {"/good%20one.html"}

    # Once their visibility timeout (2 s) has passed, exactly the bad ones are still there.
    left: dict[str, str] = {}

    def collect() -> bool:
        got = aws.sqs.receive_message(
            QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        left.update({m["MessageId"]: m["Body"] for m in got})
        return len(left) >= len(bad)

    wait_for(collect, 15, what="the malformed messages visible again")
    assert left == bad


def test_sigkill_after_receiving_before_committing_redelivers_and_invalidates(
    tmp_path: Path, cloudfront: CloudFrontEmulator, aws: Aws, daemons: Daemons
) -> None:
    """Killed while the change sits in a long quiet window (seen, not committed), the daemon
    never deleted the message: after its visibility timeout it comes back to the restarted
    daemon, which invalidates it."""
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.notify_queue(BUCKET)
    first = daemons.start(sqs_config(tmp_path, cloudfront, aws, quiet="60s", max_delay="120s"))
    aws.s3.put_object(Bucket=BUCKET, Key="news/today.html", Body=b"1")
    wait_for(
        lambda: first.metric("invalidatord_changes_total", source="assets", kind="created") >= 1,
        15,
        what="the change seen by the first daemon",
    )
    first.stop(signal.SIGKILL)
    assert received(cloudfront) == []
    assert aws.counts() == (0, 1)  # held by the dead daemon until its timeout runs out

    second = daemons.start(sqs_config(tmp_path, cloudfront, aws))
    wait_paths(cloudfront, second, {"/news/today.html"})
    wait_for(lambda: aws.counts() == (0, 0), 15, what="the message deleted after the commit")
    assert received(cloudfront) == ["/news/today.html"]
    assert second.find("sqs_message_malformed") == []


def test_s3_poll_source_baselines_polls_and_survives_stops_and_a_sigkill(
    tmp_path: Path, cloudfront: CloudFrontEmulator, aws: Aws, daemons: Daemons
) -> None:
    """A `type: s3-poll` source: the first start records what is there and invalidates
    nothing; changes between polls are invalidated; a change made while the daemon was
    stopped is found by the poll at start; one seen but not committed when the daemon was
    SIGKILLed is found again after the restart."""
    aws.s3.create_bucket(Bucket=BUCKET)
    for key in ("site/keep.html", "site/old.html", "elsewhere.html"):
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=b"v1")
    source = {"name": "static", "type": "s3-poll", "bucket": BUCKET, "prefix": "site/"}

    def start(quiet: str = "300ms") -> DaemonProcess:
        config = emulator_config(
            tmp_path,
            tmp_path,
            cloudfront,
            quiet=quiet,
            max_delay="120s",
            extra={"sources": [{**source, "interval": "300ms"}]},
        )
        return daemons.start(config)

    daemon = start()
    daemon.wait_event("s3_baseline_recorded", lambda e: e["objects"] == 2)
    aws.s3.put_object(Bucket=BUCKET, Key="site/new page.html", Body=b"1")
    aws.s3.delete_object(Bucket=BUCKET, Key="site/old.html")
    aws.s3.put_object(Bucket=BUCKET, Key="elsewhere.html", Body=b"v2")  # outside the prefix
    wait_paths(cloudfront, daemon, {"/new%20page.html", "/old.html"})
    assert daemon.stop() == 0

    aws.s3.put_object(Bucket=BUCKET, Key="site/while stopped.html", Body=b"1")
    daemon = start(quiet="60s")
    daemon.wait_event("s3_poll_done", lambda e: e["created"] == 1)
    wait_for(
        lambda: daemon.metric("invalidatord_changes_total", source="static") >= 1,
        15,
        what="the change seen, inside its quiet window",
    )
    daemon.stop(signal.SIGKILL)
    assert "/while%20stopped.html" not in received(cloudfront)

    daemon = start()
    wait_paths(cloudfront, daemon, {"/while%20stopped.html"})
    assert sorted(received(cloudfront)) == [
        "/new%20page.html",
        "/old.html",
        "/while%20stopped.html",
    ]
    assert daemon.find("s3_baseline_recorded") == []
