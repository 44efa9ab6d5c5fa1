"""`SqsSource` against real S3 -> SQS (direct, via SNS, via EventBridge) in a moto server.

One moto server (127.0.0.1, free port) serves the module; it is reset before every test. The
source talks to it over HTTP with boto3, exactly as the daemon does.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from structlog.testing import capture_logs

from invalidatord.errors import SourceError
from invalidatord.journal import Journal
from invalidatord.model import Change, ChangeKind
from invalidatord.sources.sqs import EXCERPT_CHARS, SqsSource
from tests.harness import Collector
from tests.waiting import wait_for

DATA = Path(__file__).parent / "data" / "s3events"
C, D = ChangeKind.CREATED, ChangeKind.DELETED


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """One moto server for the module, bound to loopback on a free port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Aws:
    url: str
    s3: Any
    sqs: Any
    sns: Any
    events: Any
    suffix: str

    def queue(self, name: str) -> tuple[str, str]:
        """Create a queue named `name` plus a suffix unique to the test (so that receivers of
        earlier tests, still finishing their last poll, never see it); return (url, arn)."""
        url = self.sqs.create_queue(QueueName=f"{name}-{self.suffix}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url, arn["Attributes"]["QueueArn"]

    def counts(self, queue_url: str) -> tuple[int, int]:
        """(visible, in flight) messages of the queue."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def notify_queue(self, bucket: str, queue_arn: str) -> None:
        self.s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
                ]
            },
        )

    def receive_all(self, queue_url: str, within: float, expect: int | None = None) -> list[str]:
        """Bodies of the messages that become visible within `within` seconds (long polls),
        returning early once `expect` bodies are in."""
        bodies: list[str] = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0 and len(bodies) < (expect or 1 << 30):
            got = self.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=max(1, min(5, int(left))),
                VisibilityTimeout=30,
            ).get("Messages", [])
            bodies.extend(m["Body"] for m in got)
        return bodies


@pytest.fixture
def aws(moto_url: str, aws_env: None) -> Aws:
    """Fresh moto state and clients with dummy credentials."""
    # the URL is our own loopback server's, never user input
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=moto_url,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )

    return Aws(
        moto_url, client("s3"), client("sqs"), client("sns"), client("events"), uuid.uuid4().hex[:8]
    )


SourceFactory = Callable[..., SqsSource]


@pytest.fixture(scope="module")
def stopped_sources(moto_url: str) -> Iterator[list[SqsSource]]:
    """Every source the module made. Each test stops its own (stop() is prompt); their
    receivers finish their last long poll in the background, and are joined here, once, before
    the server goes away: waiting for them test by test would cost a second per test."""
    sources: list[SqsSource] = []
    yield sources
    for source in sources:
        assert source.join(5), "a receiver was still polling 5 s after stop()"


@pytest.fixture
def make_source(aws: Aws, stopped_sources: list[SqsSource]) -> Iterator[SourceFactory]:
    """Builds sources on the moto server (short polls, short timeouts); stops them after."""
    made: list[SqsSource] = []

    def make(queue_url: str, sink: Callable[[Change], None], **kwargs: Any) -> SqsSource:
        client = boto3.client(
            "sqs",
            endpoint_url=aws.url,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )
        options: dict[str, Any] = {
            "wait_time": 1,
            "visibility_timeout": 30,
            "receivers": 2,
            "min_backoff": 0.1,
            "max_backoff": 0.5,
        }
        options.update(kwargs)
        source = SqsSource("assets", sink, client, queue_url=queue_url, **options)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()
    stopped_sources.extend(made)


def test_direct_notifications_arrive_as_changes_with_decoded_keys(
    aws: Aws, make_source: SourceFactory
) -> None:
    """Put, copy, multipart and delete in a bucket wired to the queue become changes with the
    decoded keys; the s3:TestEvent the wiring sent is deleted; the rest stay held."""
    url, arn = aws.queue("events")
    aws.s3.create_bucket(Bucket="site-bucket")
    aws.notify_queue("site-bucket", arn)
    sink = Collector()
    source = make_source(url, sink)
    assert not source.healthy
    source.start()
    assert source.healthy

    aws.s3.put_object(Bucket="site-bucket", Key="dir/red flower.jpg", Body=b"1")
    aws.s3.put_object(Bucket="site-bucket", Key="a+b 100%.txt", Body=b"2")
    aws.s3.put_object(Bucket="site-bucket", Key="café/日本.html", Body=b"3")
    aws.s3.copy_object(
        Bucket="site-bucket",
        Key="copy.html",
        CopySource={"Bucket": "site-bucket", "Key": "a+b 100%.txt"},
    )
    upload = aws.s3.create_multipart_upload(Bucket="site-bucket", Key="big.bin")
    part = aws.s3.upload_part(
        Bucket="site-bucket", Key="big.bin", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )
    aws.s3.complete_multipart_upload(
        Bucket="site-bucket",
        Key="big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    aws.s3.delete_object(Bucket="site-bucket", Key="dir/red flower.jpg")

    # moto sends two created events for a multipart upload: 7 messages in all
    changes = sink.wait_count(7)
    assert sink.pairs() == {
        ("dir/red flower.jpg", C),
        ("a+b 100%.txt", C),
        ("café/日本.html", C),
        ("copy.html", C),
        ("big.bin", C),
        ("dir/red flower.jpg", D),
    }
    assert all(c.source == "assets" and c.receipt for c in changes)
    assert len({c.receipt for c in changes}) == 7
    wait_for(lambda: aws.counts(url) == (0, 7), 5, what="test event deleted, 7 held")


def test_a_message_is_deleted_only_once_every_change_of_it_is_acknowledged(
    aws: Aws, make_source: SourceFactory
) -> None:
    """A two-record message stays in flight while one of its receipts is unacknowledged and is
    deleted once both are; unknown and repeated receipts change nothing."""
    url, _ = aws.queue("events")
    two = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": k}},
                }
                for k in ("one.html", "two.html")
            ]
        }
    )
    one = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "solo.html"}},
                }
            ]
        }
    )
    sink = Collector()
    source = make_source(url, sink)
    source.start()
    aws.sqs.send_message(QueueUrl=url, MessageBody=two)
    aws.sqs.send_message(QueueUrl=url, MessageBody=one)
    changes = sink.wait_count(3)
    by_path = {c.path: c.receipt for c in changes}
    assert None not in by_path.values()
    assert aws.counts(url) == (0, 2)

    source.acknowledge([by_path["one.html"] or "", by_path["one.html"] or "", "no-such-receipt"])
    source.acknowledge([by_path["solo.html"] or ""])
    # the keeper deletes in passes: once the solo message is gone, a pass has run since the
    # half-acknowledged message could have been deleted
    wait_for(lambda: aws.counts(url) == (0, 1), 5, what="the solo message deleted")
    assert aws.counts(url) == (0, 1)

    source.acknowledge([by_path["two.html"] or ""])
    wait_for(lambda: aws.counts(url) == (0, 0), 5, what="the two-record message deleted")


def test_s3_through_sns_with_and_without_raw_delivery(aws: Aws, make_source: SourceFactory) -> None:
    """Events published through SNS reach the source from an enveloped and from a raw
    subscription alike; SNS-wrapped test events are deleted."""
    enveloped_url, enveloped_arn = aws.queue("enveloped")
    raw_url, raw_arn = aws.queue("raw")
    topic = aws.sns.create_topic(Name="s3-events")["TopicArn"]
    aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=enveloped_arn)
    aws.sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=raw_arn, Attributes={"RawMessageDelivery": "true"}
    )
    aws.s3.create_bucket(Bucket="site-bucket")
    aws.s3.put_bucket_notification_configuration(
        Bucket="site-bucket",
        NotificationConfiguration={
            "TopicConfigurations": [
                {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]
        },
    )
    enveloped, raw = Collector(), Collector()
    make_source(enveloped_url, enveloped).start()
    make_source(raw_url, raw).start()

    aws.s3.put_object(Bucket="site-bucket", Key="news/hello world+.html", Body=b"1")
    aws.s3.delete_object(Bucket="site-bucket", Key="news/hello world+.html")

    expected = {("news/hello world+.html", C), ("news/hello world+.html", D)}
    enveloped.wait_count(2)
    raw.wait_count(2)
    assert enveloped.pairs() == expected
    assert raw.pairs() == expected
    wait_for(lambda: aws.counts(enveloped_url) == (0, 2), 5, what="enveloped test event deleted")
    wait_for(lambda: aws.counts(raw_url) == (0, 2), 5, what="raw test event deleted")


def test_s3_through_eventbridge(aws: Aws, make_source: SourceFactory) -> None:
    """Object Created / Object Deleted events routed by an EventBridge rule become changes, with
    the key taken verbatim."""
    url, arn = aws.queue("from-eventbridge")
    aws.s3.create_bucket(Bucket="site-bucket")
    aws.s3.put_bucket_notification_configuration(
        Bucket="site-bucket", NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    aws.events.put_rule(
        Name="s3-objects",
        EventPattern=json.dumps(
            {"source": ["aws.s3"], "detail-type": ["Object Created", "Object Deleted"]}
        ),
    )
    aws.events.put_targets(Rule="s3-objects", Targets=[{"Id": "queue", "Arn": arn}])
    sink = Collector()
    make_source(url, sink, bucket="site-bucket").start()

    aws.s3.put_object(Bucket="site-bucket", Key="img/red flower+1%.jpg", Body=b"1")
    aws.s3.delete_object(Bucket="site-bucket", Key="img/red flower+1%.jpg")

    sink.wait_count(2)
    assert sink.pairs() == {("img/red flower+1%.jpg", C), ("img/red flower+1%.jpg", D)}


def test_bucket_and_prefix_filter_and_strip(aws: Aws, make_source: SourceFactory) -> None:
    """Only the configured bucket's keys under the prefix count, with the prefix stripped;
    messages left with nothing to deliver are deleted at once."""
    url, arn = aws.queue("events")
    for bucket in ("site-bucket", "other-bucket"):
        aws.s3.create_bucket(Bucket=bucket)
        aws.notify_queue(bucket, arn)
    sink = Collector()
    source = make_source(url, sink, bucket="site-bucket", prefix="site")
    assert source.prefix == "site/"
    source.start()

    aws.s3.put_object(Bucket="site-bucket", Key="site/", Body=b"")
    aws.s3.put_object(Bucket="site-bucket", Key="site-old/a.html", Body=b"1")
    aws.s3.put_object(Bucket="site-bucket", Key="elsewhere.html", Body=b"1")
    aws.s3.put_object(Bucket="other-bucket", Key="site/b.html", Body=b"1")
    aws.s3.put_object(Bucket="site-bucket", Key="site/docs/index.html", Body=b"1")

    changes = sink.wait_count(1)
    wait_for(lambda: aws.counts(url) == (0, 1), 5, what="filtered and test messages deleted")
    assert [(c.path, c.kind) for c in sink.changes] == [("docs/index.html", C)]
    assert changes[0].path == "docs/index.html"


def test_malformed_and_unknown_messages_are_logged_kept_and_survived(
    aws: Aws, make_source: SourceFactory
) -> None:
    """Bodies that do not parse are logged with their MessageId and a short excerpt and left in
    the queue (for the redrive policy); test events are deleted; good messages still flow."""
    url, _ = aws.queue("events")
    bad_bodies = [
        "this is not json " + "x" * 400,
        (DATA / "malformed-unknown-shape.json").read_text(),
        (DATA / "malformed-sns-message-not-json.json").read_text(),
    ]
    bad_ids = {
        aws.sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"] for body in bad_bodies
    }
    aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-test-event.json").read_text())
    aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-put.json").read_text())
    sink = Collector()
    with capture_logs() as logs:
        source = make_source(url, sink, visibility_timeout=2, receivers=1)
        source.start()
        (change,) = sink.wait_count(1)
        wait_for(
            lambda: (
                {e.get("message_id") for e in logs if e["event"] == "sqs_message_malformed"}
                >= bad_ids
            ),
            5,
            what="every malformed message logged",
        )
        assert change.path == "images/2024/red flower+(1).jpg"
        assert source.healthy
        source.acknowledge([change.receipt or ""])
        source.stop()
        assert source.join(5)

    malformed = [e for e in logs if e["event"] == "sqs_message_malformed"]
    assert all(len(e["excerpt"]) <= EXCERPT_CHARS for e in malformed)
    assert all(e["reason"] and e["log_level"] == "warning" for e in malformed)
    by_id = {e["message_id"]: e for e in malformed}
    assert any(e["reason"].startswith("message body is not JSON") for e in by_id.values())
    # what is left after the visibility timeout: exactly the malformed bodies
    assert sorted(aws.receive_all(url, within=6, expect=3)) == sorted(bad_bodies)


def test_held_messages_are_kept_invisible_past_their_timeout(
    aws: Aws, make_source: SourceFactory
) -> None:
    """While its change is unacknowledged a message is not redelivered to another consumer, even
    long after its visibility timeout; after stop() it comes back."""
    url, _ = aws.queue("events")
    aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-delete.json").read_text())
    sink = Collector()
    source = make_source(url, sink, visibility_timeout=2, receivers=1)
    source.start()
    sink.wait_count(1)

    # another consumer polls for more than two timeouts' worth and must get nothing
    assert aws.receive_all(url, within=4.5) == []
    assert aws.counts(url) == (0, 1)

    source.stop()
    assert aws.receive_all(url, within=6, expect=1) == [(DATA / "aws-delete.json").read_text()]


def test_receive_errors_make_it_unhealthy_then_it_recovers(
    aws: Aws, make_source: SourceFactory
) -> None:
    """When receives fail (the queue vanished) the source logs, backs off and reports unhealthy;
    when the queue is back it recovers and delivers again."""
    url, _ = aws.queue("events")
    sink = Collector()
    with capture_logs() as logs:
        source = make_source(url, sink, receivers=1)
        source.start()
        aws.sqs.delete_queue(QueueUrl=url)
        wait_for(lambda: not source.healthy, 10, what="unhealthy while receives fail")
        assert aws.sqs.create_queue(QueueName=url.rsplit("/", 1)[1])["QueueUrl"] == url
        wait_for(lambda: source.healthy, 10, what="healthy again")
        aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-put.json").read_text())
        sink.wait_count(1)
    failed = [e for e in logs if e["event"] == "sqs_receive_failed"]
    assert failed
    assert failed[0]["code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert any(e["event"] == "sqs_receive_recovered" for e in logs)


def test_start_fails_clearly_for_a_missing_queue(aws: Aws, make_source: SourceFactory) -> None:
    """start() raises SourceError naming the queue and the AWS error when the queue is missing."""
    url = f"{aws.url}/123456789012/nope"
    source = make_source(url, Collector())
    with pytest.raises(SourceError, match=r"source 'assets': cannot read SQS queue .*/nope: "):
        source.start()
    assert not source.healthy


def test_after_stop_nothing_is_delivered_and_acknowledge_deletes_at_once(
    aws: Aws, make_source: SourceFactory
) -> None:
    """stop() ends delivery (a message arriving during the last long poll is handed back, not
    delivered), and an acknowledge after stop deletes synchronously."""
    url, _ = aws.queue("events")
    sink = Collector()
    source = make_source(url, sink, receivers=1)
    source.start()
    aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-put.json").read_text())
    (held,) = sink.wait_count(1)

    source.stop()
    assert not source.healthy
    late = (DATA / "aws-post.json").read_text()
    aws.sqs.send_message(QueueUrl=url, MessageBody=late)
    assert source.join(5)
    assert aws.receive_all(url, within=3, expect=1) == [late]
    assert sink.changes == [held]

    source.acknowledge([held.receipt or ""])
    # the held message is gone; the late one was received just above (in flight)
    assert aws.counts(url) == (0, 1)


def test_a_failing_sink_does_not_stop_the_source(aws: Aws, make_source: SourceFactory) -> None:
    """If the sink raises, the error is logged, that message is let go so it comes back, and
    other messages are still delivered (once: they stay held)."""
    url, _ = aws.queue("events")
    delivered: list[Change] = []

    def sink(change: Change) -> None:
        if change.path == "docs/old page.html":
            raise RuntimeError("sink broke")
        delivered.append(change)

    with capture_logs() as logs:
        source = make_source(url, sink, receivers=1, visibility_timeout=1)
        source.start()
        aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-delete.json").read_text())
        aws.sqs.send_message(QueueUrl=url, MessageBody=(DATA / "aws-put.json").read_text())
        wait_for(
            lambda: sum(e["event"] == "sqs_sink_failed" for e in logs) >= 2,
            10,
            what="the failed message delivered again after its timeout",
        )
    assert [c.path for c in delivered] == ["images/2024/red flower+(1).jpg"]
    assert {e["path"] for e in logs if e["event"] == "sqs_sink_failed"} == {"docs/old page.html"}
    assert any(e["event"] == "sqs_message_redelivered" for e in logs)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"min_backoff": 0}, "backoff must satisfy 0 < min <= max"),
    ],
)
def test_invalid_settings_are_refused(options: dict[str, Any], reason: str) -> None:
    """Settings SQS cannot honour raise SourceError at construction, naming the setting."""
    kwargs: dict[str, Any] = {"queue_url": "http://127.0.0.1:1/123456789012/q"}
    kwargs.update(options)
    with pytest.raises(SourceError, match=reason):
        SqsSource("assets", Collector(), object(), **kwargs)


def test_the_same_bytes_uploaded_again_are_not_a_change_under_compare_content(
    aws: Aws, make_source: SourceFactory, tmp_path: Path
) -> None:
    """With compare: content and the journal as its index, an object put again with the same
    bytes (same ETag in the event) is not delivered once the first put was acknowledged, and
    its message is deleted; new bytes and a put after a delete are delivered."""
    url, arn = aws.queue("events")
    aws.s3.create_bucket(Bucket="site-bucket")
    aws.notify_queue("site-bucket", arn)
    journal = Journal(tmp_path / "journal.sqlite")
    sink = Collector()
    source = make_source(url, sink, compare="content", index=journal)
    source.start()
    try:
        aws.s3.put_object(Bucket="site-bucket", Key="page.html", Body=b"v1")
        sink.wait("page.html", C, timeout=10)
        (first,) = sink.changes
        source.acknowledge([first.receipt or ""])
        wait_for(lambda: journal.s3_index_size("assets") == 1, 5, what="the ETag indexed")
        aws.s3.put_object(Bucket="site-bucket", Key="page.html", Body=b"v1")
        wait_for(lambda: aws.counts(url) == (0, 0), 10, what="the repeat's message deleted")
        assert len(sink.changes) == 1
        aws.s3.put_object(Bucket="site-bucket", Key="page.html", Body=b"v2")
        wait_for(lambda: sink.count == 2, 10, what="the new bytes delivered")
        assert [(c.path, c.kind) for c in sink.changes] == [("page.html", C)] * 2
    finally:
        source.stop()
        journal.close()
