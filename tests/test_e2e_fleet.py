"""A fleet end to end: `invalidatord run` publishers on identical document roots and invalidators,
each a real subprocess, through a FIFO queue on the emulator (moto's SQS behind the layer that
deduplicates as SQS does) to the CloudFront test double.

Deploys are copied into each root as rsync -a does: written beside the target, mtime set, then
renamed into place, so every host has the same size and mtime for the same file.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, Daemons, emulator_config, make_site
from tests.waiting import wait_for

#: The mtime every deployed file gets (as the release's build would give it).
RELEASE_MTIME_NS = 1_700_000_000_123_456_789


@pytest.fixture
def queue_url(cloudfront: CloudFrontEmulator) -> str:
    sqs = boto3.client(
        "sqs",
        endpoint_url=cloudfront.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    return str(
        sqs.create_queue(
            QueueName="invalidatord.fifo",
            Attributes={"FifoQueue": "true", "VisibilityTimeout": "30"},
        )["QueueUrl"]
    )


def publisher_config(
    tmp_path: Path, name: str, cloudfront: CloudFrontEmulator, queue_url: str
) -> tuple[Path, Path]:
    """(config, document root) of one publisher host."""
    host = tmp_path / name
    root = host / "www"
    root.mkdir(parents=True)
    fleet = {"role": "publisher", "queue_url": queue_url}
    return emulator_config(host, root, cloudfront, extra={"fleet": fleet}), root


def invalidator_config(
    tmp_path: Path, name: str, cloudfront: CloudFrontEmulator, queue_url: str, **extra: Any
) -> Path:
    host = tmp_path / name
    host.mkdir(parents=True)
    fleet = {
        "role": "invalidator",
        "queue_url": queue_url,
        "wait_time": "1s",
        # a receive whose answer is lost under load comes back soon
        "visibility_timeout": "5s",
        "dedup_window": "1h",
    }
    return emulator_config(
        host, host, cloudfront, max_delay="1s", extra={"sources": [], "fleet": fleet, **extra}
    )


def deploy(
    release: Path, roots: list[Path], delete: tuple[str, ...] = (), mtime_ns: int = RELEASE_MTIME_NS
) -> None:
    """Copy every file of `release` into each root as rsync -a does (a temporary file, the
    release's mtime, a rename), and delete `delete` from each root."""
    files = [p for p in sorted(release.rglob("*")) if p.is_file()]
    for root in roots:
        for src in files:
            rel = src.relative_to(release)
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.parent / f".{target.name}.tmp"
            shutil.copy2(src, temp)
            os.utime(temp, ns=(mtime_ns, mtime_ns))
            os.rename(temp, target)
        for rel_name in delete:
            (root / rel_name).unlink()


def invalidated(cloudfront: CloudFrontEmulator) -> Counter[str]:
    """How many times CloudFront was asked to invalidate each path."""
    return Counter(cloudfront.created_paths(cloudfront.distribution_id))


def wait_invalidated(
    cloudfront: CloudFrontEmulator, expected: set[str], daemon: DaemonProcess, timeout: float = 40
) -> None:
    try:
        wait_for(lambda: set(invalidated(cloudfront)) >= expected, timeout)
    except AssertionError:
        raise AssertionError(
            f"waited {timeout}s for {sorted(expected - set(invalidated(cloudfront)))}; "
            f"the invalidator said:\n{daemon.transcript()}"
        ) from None


SITE = {
    "index.html": "home v1",
    "about.html": "about v1",
    "docs/index.html": "docs v1",
    "old.html": "to be removed",
}
RELEASE = {
    "index.html": "home v2",
    "docs/a.html": "new page",
    "docs/index.html": "docs v2",
    "css/site.css": "body{}",
    "img/logo.png": "png",
}
RELEASE_URLS = {
    "/",
    "/index.html",
    "/docs/a.html",
    "/docs/",
    "/docs/index.html",
    "/css/site.css",
    "/img/logo.png",
    "/old.html",
}


def test_three_publishers_one_invalidator_invalidate_each_change_once(
    tmp_path: Path, cloudfront: CloudFrontEmulator, queue_url: str, daemons: Daemons
) -> None:
    """Three hosts receiving the same deploy (and one deleting the same file) give one
    invalidation of each URL; a change on one host only is invalidated; a host deploying the
    same release after SQS has forgotten the deduplication ids (ten minutes later) sends its
    messages, and the invalidator's window drops every one of them."""
    site = tmp_path / "site"
    make_site(site, SITE)
    release = tmp_path / "release"
    make_site(release, RELEASE)
    hosts = [publisher_config(tmp_path, name, cloudfront, queue_url) for name in "abc"]
    roots = [root for _, root in hosts]
    deploy(
        site, roots, mtime_ns=RELEASE_MTIME_NS - 86_400 * 10**9
    )  # the identical starting point: each first start's baseline
    invalidator = daemons.start(invalidator_config(tmp_path, "inv", cloudfront, queue_url))
    publishers = [daemons.start(config) for config, _ in hosts]

    deploy(release, roots[:2], delete=("old.html",))
    (roots[1] / "only-b.html").write_text("one host")
    wait_invalidated(cloudfront, RELEASE_URLS | {"/only-b.html"}, invalidator)
    on_time = len(cloudfront.sqs.sends)

    # The third host deploys ten minutes later: past SQS's five minutes, inside fleet.dedup_window.
    cloudfront.sqs.advance(600)
    deploy(release, roots[2:], delete=("old.html",))
    wait_for(lambda: publishers[2].metric("invalidatord_fleet_messages_sent_total") >= 8, 30)
    (roots[2] / "late-sentinel.html").write_text("after the late deploy")
    wait_invalidated(cloudfront, {"/late-sentinel.html"}, invalidator)
    delivered = len(cloudfront.sqs.delivered())
    try:
        wait_for(
            lambda: invalidator.metric("invalidatord_fleet_messages_received_total") >= delivered,
            40,
        )
    except AssertionError:
        got = invalidator.metric("invalidatord_fleet_messages_received_total")
        trouble = [
            e
            for e in invalidator.events
            if e.get("event", "").startswith("fleet_") and e.get("event") != "fleet_received"
        ]
        raise AssertionError(
            f"{delivered} delivered, {got} received; {trouble}; {cloudfront.sqs.sends}\n"
            + invalidator.transcript(80)
        ) from None

    counts = invalidated(cloudfront)
    assert set(counts) == RELEASE_URLS | {"/only-b.html", "/late-sentinel.html"}
    assert all(n == 1 for n in counts.values()), counts
    duplicates = invalidator.metric("invalidatord_fleet_duplicates_total")
    assert duplicates == len(RELEASE_URLS)  # the late host's whole deploy
    sends = cloudfront.sqs.sends
    figures = {
        "urls_changed_per_host": len(RELEASE_URLS),
        "entries_sent": len(sends),
        "entries_sent_on_time": on_time,
        "suppressed_by_sqs": sum(1 for e in sends if e.duplicate),
        "delivered_to_queue": delivered,
        "dropped_by_invalidator_window": int(duplicates),
        "paths_invalidated": sum(counts.values()),
    }
    print("fleet figures:", figures)
    # hosts a and b: 8 + 8 (+1 on b); c: 8 + 1
    assert figures["entries_sent"] == 3 * len(RELEASE_URLS) + 2
    assert figures["suppressed_by_sqs"] == len(RELEASE_URLS)
    for proc in [invalidator, *publishers]:
        assert proc.stop() == 0


def test_publisher_keeps_changes_while_sqs_is_down_and_through_a_sigkill(
    tmp_path: Path, cloudfront: CloudFrontEmulator, queue_url: str, daemons: Daemons
) -> None:
    """While SQS cannot be reached the publisher keeps its changes in the outbox and says so
    (/healthz 503 naming the queue, the outbox gauge); SIGKILLed then, its restart sends them
    once SQS answers again, and they are invalidated."""
    config, root = publisher_config(tmp_path, "a", cloudfront, queue_url)
    make_site(root, {"index.html": "v1"})
    invalidator = daemons.start(invalidator_config(tmp_path, "inv", cloudfront, queue_url))
    publisher = daemons.start(config)

    cloudfront.sqs.outage = True
    make_site(root, {"down/one.html": "1", "down/two.html": "2"})
    wait_for(lambda: publisher.metric("invalidatord_fleet_outbox_paths") == 2, 30)
    _status, body = wait_for(
        lambda: (h := publisher.health())[0] == 503 and h, 30, what="/healthz 503"
    )
    assert "cannot send to" in " ".join(body["reasons"])
    assert "2 URL paths kept in the outbox" in " ".join(body["reasons"])
    publisher.kill()

    restarted = daemons.add(DaemonProcess("run", "-c", str(config)).start())
    restarted.health_url = str(restarted.wait_event("daemon_ready")["health"])
    cloudfront.sqs.outage = False
    wait_invalidated(cloudfront, {"/down/one.html", "/down/two.html"}, invalidator)
    wait_for(lambda: restarted.health()[0] == 200, 30, what="/healthz 200 again")
    assert restarted.metric("invalidatord_fleet_outbox_paths") == 0
    assert invalidated(cloudfront) == Counter({"/down/one.html": 1, "/down/two.html": 1})
    assert restarted.stop(signal.SIGTERM) == 0


def test_two_invalidators_stay_within_the_limits_and_lose_nothing(
    tmp_path: Path, cloudfront_factory: Any, daemons: Daemons
) -> None:
    """Two invalidators consuming one queue for one distribution, with invalidations kept in
    progress: every path published is invalidated, CloudFront never holds more than its
    limits, and what it refused (TooManyInvalidationsInProgress) was sent again later."""
    cloudfront: CloudFrontEmulator = cloudfront_factory(in_progress_seconds=1.0)
    sqs = boto3.client("sqs", endpoint_url=cloudfront.endpoint_url, region_name="us-east-1")
    url = str(sqs.create_queue(QueueName="two.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"])
    config, root = publisher_config(tmp_path, "a", cloudfront, url)
    # Wildcards (15 in flight at most) make the limit reachable with few paths.
    wild = {"invalidation": {"collapse_threshold": 2, "headroom_wildcards": 0}}
    invalidators = [
        daemons.start(invalidator_config(tmp_path, name, cloudfront, url, **wild))
        for name in ("inv1", "inv2")
    ]
    daemons.start(config)
    files = {f"d{i:02}/{name}.html": "x" for i in range(24) for name in ("a", "b")}
    make_site(root, files)

    def covered() -> set[str]:
        paths = set(invalidated(cloudfront))
        prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))
        return {f for f in files if f"/{f}" in paths or f"/{f}".startswith(prefixes)}

    try:
        wait_for(lambda: covered() == set(files), 60)
    except AssertionError:
        missing = sorted(set(files) - covered())
        raise AssertionError(
            f"not invalidated: {missing}\n" + "\n".join(i.transcript(20) for i in invalidators)
        ) from None
    seen = cloudfront.max_in_flight_seen.get(cloudfront.distribution_id)
    assert seen is not None
    assert seen.wildcards <= 15
    assert seen.files <= 3000
    received = sum(i.metric("invalidatord_fleet_messages_received_total") for i in invalidators)
    assert received >= len(files)
    print(
        "two invalidators:",
        {
            "received": [
                i.metric("invalidatord_fleet_messages_received_total") for i in invalidators
            ],
            "max_wildcards_in_flight": seen.wildcards,
            "refused": sum(
                1 for r in cloudfront.requests if r.error_code == "TooManyInvalidationsInProgress"
            ),
            "invalidations": sum(
                1
                for r in cloudfront.requests
                if r.op == "CreateInvalidation" and r.error_code is None
            ),
        },
    )
