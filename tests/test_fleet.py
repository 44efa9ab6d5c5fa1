"""The parts of a fleet below the daemon: the version fingerprint, the journal's outbox and
deduplication window, the message format, and the SQS test double against moto over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from invalidatord.fleet import decode, dedup_id, encode
from invalidatord.journal import Accepted, FleetItem, Journal, OutboxEntry
from invalidatord.model import FileStat, fingerprint
from invalidatord.testing.cloudfront import CloudFrontEmulator


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_fingerprint_ignores_the_inode_and_follows_size_and_mtime() -> None:
    """Two hosts' copies of one file (other inodes) share a fingerprint; another size or mtime
    is another version; a deleted file is fingerprinted by the version the index knew."""
    here, there = FileStat(10, 5_000, 1), FileStat(10, 5_000, 99)
    assert fingerprint(here) == fingerprint(there) == "s:10:5000"
    assert fingerprint(FileStat(11, 5_000, 1)) != fingerprint(here)
    assert fingerprint(FileStat(10, 5_001, 1)) != fingerprint(here)
    assert fingerprint(None, here) == fingerprint(None, there) == "gone:s:10:5000"
    assert fingerprint(None) == "gone"


def test_dedup_id_is_the_same_for_the_same_change_and_fits_sqs() -> None:
    """The deduplication id depends on distribution, path and fingerprint only, and is at most
    SQS's 128 characters."""
    a = dedup_id("E1", "/a.html", "s:1:2")
    assert a == dedup_id("E1", "/a.html", "s:1:2")
    assert len({a, dedup_id("E2", "/a.html", "s:1:2"), dedup_id("E1", "/b.html", "s:1:2")}) == 3
    assert a != dedup_id("E1", "/a.html", "s:1:3")
    assert len(dedup_id("E1", "/" + "x" * 4000, "s:1:2")) <= 128


def test_message_round_trip_and_malformed_bodies() -> None:
    """A message decodes to what was encoded; bodies that are not fleet messages are refused
    with a reason."""
    body = encode(
        OutboxEntry(1, "www", "/a%20b.html", "s:1:2", 12.5, "docroot:a b.html"), "E1", "h1"
    )
    dist, accepted = decode(body)
    assert dist == "E1"
    assert (accepted.path, accepted.fingerprint, accepted.first_seen) == (
        "/a%20b.html",
        "s:1:2",
        12.5,
    )
    assert accepted.origin == "fleet:h1:docroot:a b.html"
    for bad in ("nope", "[]", '{"v": 2}', '{"v": 1, "distribution_id": "E1", "path": "a"}'):
        with pytest.raises(ValueError, match=r"."):
            decode(bad)


def test_outbox_keeps_one_row_per_version_until_removed(tmp_path: Path) -> None:
    """The outbox holds each (distribution, path, fingerprint) once, in order, and survives
    a reopen until its entries are removed; `pending` is untouched."""
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    rows = [
        Accepted("www", "/a", 1.0, "s:a", "s:1:1"),
        Accepted("www", "/a", 2.0, "s:a", "s:1:1"),  # the same version again
        Accepted("www", "/a", 3.0, "s:a", "s:2:2"),  # a new version
        Accepted("www", "/b", 4.0, "s:b", "s:1:1"),
    ]
    assert j.accept(rows, outbox=True) == 3
    assert j.pending_count() == 0
    j.close()
    j = Journal(path)
    entries = j.outbox_peek(10)
    assert [(e.path, e.fingerprint) for e in entries] == [
        ("/a", "s:1:1"),
        ("/a", "s:2:2"),
        ("/b", "s:1:1"),
    ]
    j.outbox_remove([entries[0].id, entries[1].id], {"fleet_sent": 2})
    assert j.outbox_summary() == (1, 4.0)
    assert j.counters()["fleet_sent"] == 2


def test_fleet_accept_drops_repeats_within_the_window_but_not_rollbacks(tmp_path: Path) -> None:
    """A path reported again with its last version inside the window is a duplicate; a
    return to an earlier version (a rollback) and a repeat after the window are queued."""
    clock = Clock()
    j = Journal(tmp_path / "j.sqlite", clock=clock)

    def item(fp: str) -> FleetItem:
        return FleetItem(Accepted("www", "/a.html", clock.now, "fleet:h", fp))

    assert j.fleet_accept([item("v1"), item("v1")], window=3600) == (1, 1)
    clock.now += 600  # another host, ten minutes later
    assert j.fleet_accept([item("v1")], window=3600) == (0, 1)
    assert j.fleet_accept([item("v2")], window=3600) == (1, 0)
    assert j.fleet_accept([item("v1")], window=3600) == (1, 0)  # rolled back
    clock.now += 3601
    assert j.fleet_accept([item("v1")], window=3600) == (1, 0)  # the window has passed
    assert j.pending_count() == 1  # one pending path: /a.html
    assert j.counters()["fleet_duplicates"] == 2


@pytest.fixture
def fifo(cloudfront: CloudFrontEmulator) -> tuple[Any, str]:
    sqs = boto3.client("sqs", endpoint_url=cloudfront.endpoint_url, region_name="us-east-1")
    url = sqs.create_queue(QueueName="t.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    return sqs, str(url)


def _drain(sqs: Any, url: str) -> list[str]:
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages") or []
        if not messages:
            return bodies
        for m in messages:
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_sqs_double_remembers_deduplication_ids_for_five_minutes(
    cloudfront: CloudFrontEmulator, fifo: tuple[Any, str]
) -> None:
    """A deduplication id sent again after its message was deleted is still a duplicate (moto
    alone would deliver it) and answered with the first message's id; five minutes later
    (the double's clock moved) it is delivered again."""
    sqs, url = fifo
    entry = {"Id": "0", "MessageBody": "one", "MessageGroupId": "g", "MessageDeduplicationId": "d1"}
    first = sqs.send_message_batch(QueueUrl=url, Entries=[entry])["Successful"][0]["MessageId"]
    assert _drain(sqs, url) == ["one"]
    again = sqs.send_message_batch(
        QueueUrl=url, Entries=[entry, {**entry, "Id": "1", "MessageDeduplicationId": "d2"}]
    )
    assert {s["Id"]: s["MessageId"] for s in again["Successful"]}["0"] == first
    assert _drain(sqs, url) == ["one"]  # only d2's
    single = sqs.send_message(
        QueueUrl=url, MessageBody="one", MessageGroupId="g", MessageDeduplicationId="d1"
    )
    assert single["MessageId"] == first
    cloudfront.sqs.advance(300)
    sqs.send_message(
        QueueUrl=url, MessageBody="one", MessageGroupId="g", MessageDeduplicationId="d1"
    )
    assert _drain(sqs, url) == ["one"]
    assert [e.duplicate for e in cloudfront.sqs.sends] == [False, True, False, True, False]


def test_sqs_double_outage_refuses_every_call(
    cloudfront: CloudFrontEmulator, fifo: tuple[Any, str]
) -> None:
    """During an `outage` SQS calls fail with ServiceUnavailable (after botocore's retries)."""
    from botocore.config import Config
    from botocore.exceptions import ClientError

    _, url = fifo
    sqs = boto3.client(
        "sqs",
        endpoint_url=cloudfront.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    cloudfront.sqs.outage = True
    with pytest.raises(ClientError, match="ServiceUnavailable"):
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    cloudfront.sqs.outage = False
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_manual_invalidate_on_a_publisher_goes_to_the_outbox(tmp_path: Path) -> None:
    """`invalidatord invalidate` on a publisher queues the paths in the fleet outbox (for the
    invalidator to submit) and calls nothing: the endpoint given does not even exist."""
    from tests.harness import write_config
    from tests.test_cli import cli

    (tmp_path / "www").mkdir()
    config = write_config(
        tmp_path,
        root=tmp_path / "www",
        endpoint="http://127.0.0.1:9",  # nothing listens: any AWS call would fail
        distribution_id="E2EXAMPLE12345",
        extra={"fleet": {"role": "publisher", "queue_url": "https://sqs.example/1/q.fifo"}},
    )
    result = cli("invalidate", "-c", str(config), "/a b.html", "/img/*")
    assert result.returncode == 0, result.stderr
    assert "in the fleet outbox" in result.stdout
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    entries = journal.outbox_peek(10)
    assert [e.path for e in entries] == ["/a%20b.html", "/img/*"]
    assert all(e.fingerprint.startswith("manual:") for e in entries)
    assert journal.pending_count() == 0


def test_sqs_double_lets_one_of_two_concurrent_sends_of_an_id_through(
    cloudfront: CloudFrontEmulator, fifo: tuple[Any, str]
) -> None:
    """Hosts sending the same deduplication ids at the same moment: each id is delivered once."""
    import threading

    sqs, url = fifo
    entries = [
        {
            "Id": str(i),
            "MessageBody": f"m{i}",
            "MessageGroupId": "g",
            "MessageDeduplicationId": f"d{i}",
        }
        for i in range(10)
    ]
    start = threading.Barrier(4)

    def send() -> None:
        start.wait()
        sqs.send_message_batch(QueueUrl=url, Entries=entries)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cloudfront.sqs.delivered()) == 10
    assert sum(1 for e in cloudfront.sqs.sends if e.duplicate) == 30
