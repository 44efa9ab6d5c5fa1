"""`S3PollSource` against moto's S3 on the emulator endpoint, over HTTP, with a real journal.

Polls are driven with `poll()` where the test needs to decide when a listing happens, and by
the source's own thread where the timer is what is tested. Faults are injected with botocore's
own event hooks on the client (`before-call` raises, `after-call` rewrites the parsed answer).
Bulk listings (2,000 keys here, 100,000 marked slow) fill the bucket through moto's backend in
this process, then list it from a separate process that reports its time and peak memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from structlog.testing import capture_logs

from invalidatord.errors import SourceError
from invalidatord.journal import Journal
from invalidatord.model import Change, ChangeKind
from invalidatord.sources.s3poll import PollResult, S3PollSource
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import Collector, aws_test_env
from tests.waiting import wait_for

C, M, D = ChangeKind.CREATED, ChangeKind.MODIFIED, ChangeKind.DELETED
BUCKET = "site-bucket"


def pairs(changes: list[Change]) -> set[tuple[str, ChangeKind]]:
    return {(c.path, c.kind) for c in changes}


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def s3(cloudfront: CloudFrontEmulator) -> Any:
    """A client for the test's own puts and deletes, with the bucket created."""
    client = s3_client(cloudfront.endpoint_url)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


SourceFactory = Callable[..., S3PollSource]


@pytest.fixture
def make_source(
    cloudfront: CloudFrontEmulator, journal: Journal
) -> Iterator[Callable[..., S3PollSource]]:
    """Builds sources on the emulator's S3 (each with its own client); stops them after."""
    made: list[S3PollSource] = []

    def make(sink: Callable[[Change], None], **kwargs: Any) -> S3PollSource:
        options: dict[str, Any] = {"bucket": BUCKET, "interval": 3600, "min_backoff": 0.05}
        options.update(kwargs)
        client = options.pop("client", None) or s3_client(cloudfront.endpoint_url)
        index = options.pop("index", journal)
        source = S3PollSource("static", sink, client, index, **options)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()
    for source in made:
        assert source.join(5), "a poller was still listing 5 s after stop()"


def put(s3: Any, *keys: str, body: bytes = b"v1") -> None:
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def ack(source: S3PollSource, changes: list[Change]) -> None:
    source.acknowledge([c.receipt or "" for c in changes])


def test_first_poll_records_a_baseline_and_invalidates_nothing(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """Started on an empty journal, the source's first poll (on its own thread) lists the
    bucket into the index and delivers nothing; a poll after it finds nothing either."""
    put(s3, "index.html", "css/site.css", "img/a b.png")
    sink = Collector()
    source = make_source(sink)
    with capture_logs() as logs:
        source.start()
        assert source.healthy
        wait_for(lambda: source.last_poll, 10, what="the baseline recorded")
    assert source.last_poll == PollResult(listed=3, seconds=source.last_poll.seconds, baseline=True)
    (event,) = [e for e in logs if e["event"] == "s3_baseline_recorded"]
    assert event["objects"] == 3
    assert journal.s3_baseline("static") == (BUCKET, "")
    assert journal.s3_index_size("static") == 3
    assert source.poll().changes == 0
    assert sink.take() == []


def test_creates_overwrites_and_deletes_between_polls_become_changes(
    s3: Any, make_source: SourceFactory
) -> None:
    """Keys new to the index are created, keys with another ETag modified, keys gone deleted,
    each once, with the key decoded exactly; once acknowledged they are not reported again."""
    put(s3, "index.html", "old.html", "keep.html", "page.html")
    sink = Collector()
    source = make_source(sink)
    assert source.poll().baseline

    put(s3, "new/red flower+1 100%.html", "café/日本.html", "a/b/c/deep.css")
    put(s3, "page.html", body=b"v2")
    s3.delete_object(Bucket=BUCKET, Key="old.html")
    result = source.poll()
    changes = sink.take()
    assert pairs(changes) == {
        ("new/red flower+1 100%.html", C),
        ("café/日本.html", C),
        ("a/b/c/deep.css", C),
        ("page.html", M),
        ("old.html", D),
    }
    assert (result.created, result.modified, result.deleted, result.listed) == (3, 1, 1, 6)
    assert len({c.receipt for c in changes}) == 5
    assert all(c.source == "static" and c.receipt for c in changes)

    ack(source, changes)
    assert source.poll().changes == 0
    assert sink.take() == []


def test_unacknowledged_changes_are_held_once_and_found_again_after_a_crash(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """A change not yet acknowledged is not reported by the next poll of the same process, but
    a new process on the same journal (a crash before the commit) reports it again; after the
    acknowledgement the index holds it and nobody reports it."""
    put(s3, "a.html", "b.html")
    first = Collector()
    crashed = make_source(first)
    crashed.poll()
    put(s3, "a.html", body=b"v2")
    s3.delete_object(Bucket=BUCKET, Key="b.html")
    crashed.poll()
    lost = first.take()
    assert pairs(lost) == {("a.html", M), ("b.html", D)}
    assert crashed.poll().changes == 0  # still awaiting acknowledgement: not reported twice
    crashed.stop()  # the pipeline never committed them: nothing is acknowledged

    second = Collector()
    restarted = make_source(second)
    assert restarted.poll().changes == 2
    again = second.take()
    assert pairs(again) == pairs(lost)
    ack(crashed, lost)  # receipts of another process are unknown here: ignored
    ack(restarted, again)
    assert restarted.poll().changes == 0
    assert journal.s3_index_size("static") == 1


def test_a_change_superseded_before_its_acknowledgement_is_reported_again(
    s3: Any, make_source: SourceFactory
) -> None:
    """An object overwritten again while its first change waits is reported with the new
    state; acknowledging both in any order leaves the index at the newest state."""
    put(s3, "a.html")
    sink = Collector()
    source = make_source(sink)
    source.poll()
    put(s3, "a.html", body=b"v2")
    source.poll()
    put(s3, "a.html", body=b"v3")
    source.poll()
    older, newer = sink.take()
    assert (older.kind, newer.kind) == (M, M)
    source.acknowledge([newer.receipt or "", older.receipt or ""])
    assert source.poll().changes == 0


def test_create_then_delete_before_the_acknowledgement_ends_deleted(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """A key created and deleted again between polls (its creation still unacknowledged) is
    reported deleted by a later poll, and the index ends without it."""
    sink = Collector()
    source = make_source(sink)
    source.poll()
    put(s3, "flash.html")
    source.poll()
    s3.delete_object(Bucket=BUCKET, Key="flash.html")
    ack(source, sink.take())
    source.poll()
    (gone,) = sink.take()
    assert (gone.path, gone.kind) == ("flash.html", D)
    ack(source, [gone])
    assert journal.s3_index_size("static") == 0


def test_prefix_is_a_directory_and_is_stripped(s3: Any, make_source: SourceFactory) -> None:
    """With prefix `site`, only keys under `site/` count, as paths without it; `site/` itself
    and `site-old/` never do."""
    sink = Collector()
    source = make_source(sink, prefix="site")
    assert source.prefix == "site/"
    source.poll()
    put(s3, "site/", "site-old/a.html", "elsewhere.html", "site/docs/index.html", "site/a.css")
    source.poll()
    changes = sink.take()
    assert pairs(changes) == {("docs/index.html", C), ("a.css", C)}
    ack(source, changes)
    s3.delete_object(Bucket=BUCKET, Key="site/a.css")
    s3.delete_object(Bucket=BUCKET, Key="site/")
    source.poll()
    assert pairs(sink.take()) == {("a.css", D)}


def test_a_new_bucket_or_prefix_records_a_new_baseline(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """When the config points a source at another prefix (or bucket), the old index is
    replaced by a baseline of the new one: nothing is reported created or deleted."""
    put(s3, "a/1.html", "b/2.html", "b/3.html")
    sink = Collector()
    make_source(sink, prefix="a").poll()
    moved = make_source(sink, prefix="b")
    with capture_logs() as logs:
        result = moved.poll()
    assert result.baseline
    assert result.listed == 2
    assert sink.take() == []
    assert journal.s3_baseline("static") == (BUCKET, "b/")
    (event,) = [e for e in logs if e["event"] == "s3_baseline_recorded"]
    assert event["replaced"] == f"s3://{BUCKET}/a/"


def test_an_interrupted_baseline_is_started_over(
    cloudfront: CloudFrontEmulator, s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """A baseline whose listing fails halfway is not complete: the next poll records the whole
    baseline again and reports nothing."""
    put(s3, *(f"k{i}.html" for i in range(5)))
    client = s3_client(cloudfront.endpoint_url)
    calls = {"n": 0}

    def fail_second_page(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise EndpointConnectionError(endpoint_url="http://injected.invalid/")

    client.meta.events.register("before-call.s3.ListObjectsV2", fail_second_page)
    sink = Collector()
    source = make_source(sink, client=client, page_size=2)
    with pytest.raises(EndpointConnectionError):
        source.poll()
    assert journal.s3_baseline("static") is None
    assert journal.s3_index_size("static") == 2  # the first page, not marked complete

    result = source.poll()
    assert result.baseline
    assert result.listed == 5
    assert journal.s3_index_size("static") == 5
    assert sink.take() == []


def test_background_polls_deliver_and_survive_listing_errors(
    cloudfront: CloudFrontEmulator, s3: Any, make_source: SourceFactory
) -> None:
    """Started on an existing baseline, the source polls at once and then every interval; a
    failing listing makes it unhealthy and logs why, and the next good one recovers."""
    put(s3, "a.html")
    sink = Collector()
    make_source(sink).poll()  # the baseline, recorded by an earlier run
    put(s3, "while-stopped.html")
    client = s3_client(cloudfront.endpoint_url)
    failing = threading.Event()

    def maybe_fail(**_: Any) -> None:
        if failing.is_set():
            raise EndpointConnectionError(endpoint_url="http://injected.invalid/")

    client.meta.events.register("before-call.s3.ListObjectsV2", maybe_fail)
    with capture_logs() as logs:
        source = make_source(sink, client=client, interval=0.1)
        source.start()
        wait_for(lambda: sink.count >= 1, 10, what="the change made while stopped")
        assert pairs(sink.take()) == {("while-stopped.html", C)}
        failing.set()
        wait_for(lambda: not source.healthy, 10, what="unhealthy while listings fail")
        failing.clear()
        put(s3, "later.html")
        wait_for(lambda: sink.count >= 1, 10, what="a change after the recovery")
        wait_for(lambda: source.healthy, 10, what="healthy again")
    assert pairs(sink.take()) == {("later.html", C)}
    failed = [e for e in logs if e["event"] == "s3_poll_failed"]
    assert failed
    assert failed[0]["code"] == "EndpointConnectionError"
    assert failed[0]["retry_in"] <= 0.1
    assert any(e["event"] == "s3_poll_recovered" for e in logs)


def test_start_fails_clearly_for_a_missing_bucket(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """A bucket that does not exist is a SourceError naming it, on the first start and on a
    start with a baseline alike."""
    with pytest.raises(SourceError, match=r"cannot list s3://nope-bucket/: NoSuchBucket"):
        make_source(Collector(), bucket="nope-bucket").start()
    make_source(Collector()).poll()  # the baseline of the real bucket, from an earlier run
    s3.delete_bucket(Bucket=BUCKET)
    source = make_source(Collector())
    with pytest.raises(SourceError, match=rf"cannot list s3://{BUCKET}/: NoSuchBucket"):
        source.start()
    assert not source.healthy
    assert journal.s3_baseline("static") == (BUCKET, "")


def test_an_unordered_listing_is_refused_without_reporting_anything_wrong(
    cloudfront: CloudFrontEmulator, s3: Any, make_source: SourceFactory
) -> None:
    """A listing whose keys are not in ascending order (an S3-compatible store that does not
    sort) fails the poll instead of reporting wrong deletions."""
    put(s3, "a.html", "b.html", "c.html")
    client = s3_client(cloudfront.endpoint_url)
    make_source(Collector()).poll()

    def reverse(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Contents"] = list(reversed(parsed.get("Contents", [])))

    client.meta.events.register("after-call.s3.ListObjectsV2", reverse)
    sink = Collector()
    with pytest.raises(SourceError, match="must come in ascending UTF-8 order"):
        make_source(sink, client=client).poll()
    assert sink.take() == []


def test_after_stop_nothing_is_delivered_and_acknowledge_still_records(
    s3: Any, make_source: SourceFactory, journal: Journal
) -> None:
    """A poll after stop() delivers nothing (its changes stay for the next start), while
    acknowledging what was delivered before the stop still updates the index."""
    sink = Collector()
    source = make_source(sink)
    source.poll()
    put(s3, "one.html")
    source.poll()
    before = sink.take()
    source.stop()
    put(s3, "two.html")
    with pytest.raises(SourceError, match="stopped"):
        source.poll()
    assert sink.take() == []
    ack(source, before)
    assert [k for k, _ in journal.s3_index_range("static", None, None, 10)] == ["one.html"]


def test_invalid_settings_are_refused(journal: Journal) -> None:
    """An oversized page is a SourceError naming it (bucket and interval are the config's)."""
    for kwargs, reason in (({"bucket": "b", "page_size": 1001}, "page_size must be 1-1000"),):
        with pytest.raises(SourceError, match=reason):
            S3PollSource("static", Collector(), None, journal, **kwargs)


# --- large listings, in a process of their own -------------------------------------------------

POLLER = """
import json, sys, time, tracemalloc
import boto3
from invalidatord.journal import Journal
from invalidatord.sources.s3poll import S3PollSource

def status_kib(field):  # VmHWM/VmRSS: this process's own (ru_maxrss is inherited over fork)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

endpoint, bucket, journal_path = sys.argv[1:4]
counts = {}
def sink(change):
    counts[change.kind.value] = counts.get(change.kind.value, 0) + 1
    source.acknowledge([change.receipt])
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
journal = Journal(journal_path)
source = S3PollSource("bulk", sink, client, journal, bucket=bucket)
client.list_buckets()  # load the S3 model and connect before measuring
rss_before = status_kib("VmRSS")
tracemalloc.start()
started, cpu = time.monotonic(), time.process_time()
result = source.poll()
seconds, cpu = time.monotonic() - started, time.process_time() - cpu
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({
    "baseline": result.baseline, "listed": result.listed, "counts": counts,
    "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_bytes": peak,
    "rss_before_kib": rss_before, "rss_peak_kib": status_kib("VmHWM"),
    "indexed": journal.s3_index_size("bulk"),
}))
"""


def run_poller(endpoint: str, bucket: str, journal_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", POLLER, endpoint, bucket, str(journal_path)],
        capture_output=True,
        text=True,
        env=aws_test_env(),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def bulk_listing(cloudfront: CloudFrontEmulator, tmp_path: Path, n: int) -> dict[str, Any]:
    """Fill a bucket with `n` keys (through moto's backend: n HTTP PUTs would take minutes),
    baseline it from another process, change 30 keys, poll again from yet another process
    (a restart): return both reports."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    s3_client(cloudfront.endpoint_url).create_bucket(Bucket="bulk")
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(n):
        backend.put_object("bulk", f"dir{i % 97:02d}/file-{i:07d}.html", b"x")
    journal_path = tmp_path / "bulk.sqlite"
    baseline = run_poller(cloudfront.endpoint_url, "bulk", journal_path)
    for i in range(10):
        backend.put_object("bulk", f"new/file-{i}.html", b"new")
        backend.put_object("bulk", f"dir{i % 97:02d}/file-{i:07d}.html", b"changed")
        backend.delete_object("bulk", f"dir{(n - 1 - i) % 97:02d}/file-{n - 1 - i:07d}.html")
    poll = run_poller(cloudfront.endpoint_url, "bulk", journal_path)
    return {"baseline": baseline, "poll": poll}


def check_bulk(reports: dict[str, Any], n: int) -> None:
    baseline, poll = reports["baseline"], reports["poll"]
    assert baseline["baseline"]
    assert (baseline["listed"], baseline["indexed"], baseline["counts"]) == (n, n, {})
    assert not poll["baseline"]
    assert poll["listed"] == n
    assert poll["counts"] == {"created": 10, "modified": 10, "deleted": 10}
    assert poll["indexed"] == n
    # streamed: a poll holds about one page, not the listing (n keys as Python objects
    # would take well over 100 bytes each)
    for report in (baseline, poll):
        assert report["peak_bytes"] < 8 * 1024 * 1024, report
        assert report["rss_peak_kib"] - report["rss_before_kib"] < 64 * 1024, report


def test_a_2000_key_bucket_is_baselined_and_diffed_in_bounded_memory(
    cloudfront: CloudFrontEmulator, tmp_path: Path
) -> None:
    """2,000 keys (two pages): the baseline indexes them all and reports nothing; 10 created,
    10 overwritten and 10 deleted keys are exactly what the next poll reports."""
    check_bulk(bulk_listing(cloudfront, tmp_path, 2000), 2000)


@pytest.mark.slow
def test_a_100000_key_bucket_is_polled_in_bounded_memory(
    cloudfront: CloudFrontEmulator, tmp_path: Path
) -> None:
    """100,000 keys: the same exact changes, with the same memory bound as 2,000 keys (the
    listing is never held); the figures are printed for the record."""
    reports = bulk_listing(cloudfront, tmp_path, 100_000)
    print("\n100k poll figures:", json.dumps(reports, indent=1))
    check_bulk(reports, 100_000)


@pytest.mark.parametrize(("compare", "reported"), [("content", False), ("mtime", True)])
def test_the_same_bytes_uploaded_again(
    s3: Any, make_source: SourceFactory, compare: str, reported: bool
) -> None:
    """An object uploaded again with the same bytes keeps its ETag and gets a new
    LastModified: under compare: content it is not a change, under compare: mtime it is."""
    put(s3, "page.html")
    sink = Collector()
    source = make_source(sink, compare=compare)
    assert source.poll().baseline
    before = s3.head_object(Bucket=BUCKET, Key="page.html")["LastModified"]
    wait_for(
        lambda: (
            put(s3, "page.html")  # type: ignore[func-returns-value]
            or s3.head_object(Bucket=BUCKET, Key="page.html")["LastModified"] > before
        ),
        10,
        what="a LastModified later than the first upload's (S3 keeps whole seconds)",
    )
    assert (source.poll().modified == 1) is reported
    assert pairs(sink.take()) == ({("page.html", M)} if reported else set())
