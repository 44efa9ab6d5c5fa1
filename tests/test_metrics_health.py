"""Metrics, /healthz and the systemd notifications of a real daemon.

The daemon runs as a subprocess (`invalidatord run`) on a real document root (inotify), talking
over HTTP to the CloudFront emulator; /metrics and /healthz are read over HTTP and the systemd
notifications arrive on a real AF_UNIX datagram socket named in $NOTIFY_SOCKET. One test runs
the daemon in-process to feed it an inotify overflow the way watchdog reports one.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from invalidatord.config import load_config
from invalidatord.daemon import Daemon
from invalidatord.metrics import FAMILIES, SPARSE_FAMILIES
from invalidatord.sources.filesystem import OVERFLOW_LOGGER, OVERFLOW_MESSAGE
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import (
    DaemonProcess,
    aws_test_env,
    emulator_config,
    received,
    running_daemon,
    write_config,
)
from tests.waiting import wait_for

#: Probe CloudFront every second (the probe runs at most every reconcile_interval).
FAST_PROBE = {"invalidation": {"poll_interval": "200ms", "reconcile_interval": "1s"}}


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "css").mkdir(parents=True)
    (root / "index.html").write_text("home")
    (root / "css" / "site.css").write_text("body{}")
    return root


@pytest.fixture
def started(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> Iterator[DaemonProcess]:
    """A ready daemon on `docroot`, probing CloudFront every second."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra=FAST_PROBE,
    )
    with running_daemon(config) as proc:
        yield proc


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition: (name, labels, value)."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}`; fails the test when there is none."""
    for sample_name, sample_labels, sample_value in samples(text):
        if sample_name == name and sample_labels == labels:
            return sample_value
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def metrics_when(proc: DaemonProcess, name: str, at_least: float, **labels: str) -> str:
    """/metrics, once `name{labels}` is at least `at_least`."""

    def ready() -> str | None:
        text = proc.get("/metrics")
        return text if value(text, name, **labels) >= at_least else None

    return wait_for(ready, 15, what=f"{name}{labels} >= {at_least}")


def unhealthy_with(proc: DaemonProcess, *needles: str, timeout: float = 15) -> dict[str, Any]:
    """The /healthz body, once it is 503 with a reason containing every needle."""

    def found() -> dict[str, Any] | None:
        status, body = proc.health()
        reasons = body.get("reasons", []) if status == 503 else []
        return body if any(all(n in r for n in needles) for r in reasons) else None

    return wait_for(found, timeout, what=f"503 with a reason naming {needles}")


# ---- metrics -----------------------------------------------------------------------------------


def test_every_family_appears_with_its_labels_after_a_real_run(
    started: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """After real changes, one refused path and completions, every family in FAMILIES is on
    /metrics with exactly its labels, and the values say what happened."""
    cloudfront.reject_path("/bad.html")
    (docroot / "a.html").write_text("a")
    (docroot / "bad.html").write_text("bad")
    (docroot / "sub").mkdir()
    (docroot / "sub" / "b.html").write_text("b")
    wait_for(lambda: {"/a.html", "/sub/b.html"} <= received(cloudfront), 20, what="submissions")
    started.wait_event("path_rejected")
    started.wait_event("invalidation_completed")
    text = metrics_when(
        started, "invalidatord_submit_to_complete_seconds_count", 1, distribution="www"
    )
    assert value(text, "invalidatord_pending_paths", distribution="www") == 0

    for family, labels in FAMILIES.items():
        if family in SPARSE_FAMILIES:
            continue  # tests/test_distribution_keys.py shows it with its label
        found = [
            sample_labels
            for name, sample_labels, _ in samples(text)
            if name in (family, family + "_count")
        ]
        assert found, f"{family} has no samples"
        for sample_labels in found:
            assert set(sample_labels) == set(labels), (family, sample_labels)

    www = {"distribution": "www"}
    assert value(text, "invalidatord_changes_total", source="docroot", kind="created") >= 3
    assert value(text, "invalidatord_paths_accepted_total", **www) == 3
    assert value(text, "invalidatord_invalidations_submitted_total", **www) >= 1
    assert value(text, "invalidatord_paths_submitted_total", **www, kind="file") >= 2
    assert value(text, "invalidatord_paths_submitted_total", **www, kind="wildcard") == 0
    assert value(text, "invalidatord_paths_rejected_total", **www) == 1
    assert value(text, "invalidatord_api_errors_total", **www, code="InvalidArgument") >= 1
    assert value(text, "invalidatord_oldest_pending_age_seconds", **www) == 0
    assert value(text, "invalidatord_change_to_submit_seconds_count", **www) >= 1
    assert value(text, "invalidatord_submit_to_complete_seconds_count", **www) >= 1
    assert value(text, "invalidatord_paths_billed_this_month") >= 2
    assert value(text, "invalidatord_estimated_cost_this_month_usd") == 0  # inside the free tier
    assert value(text, "invalidatord_rescans_total", source="docroot", reason="subtree") >= 1
    assert value(text, "invalidatord_watcher_overflows_total", source="docroot") == 0
    last = value(text, "invalidatord_last_submission_timestamp_seconds", **www)
    assert abs(time.time() - last) < 60
    assert value(text, "invalidatord_healthy") == 1
    assert value(text, "invalidatord_source_healthy", source="docroot") == 1
    assert value(text, "invalidatord_distribution_healthy", **www) == 1


def test_pending_and_oldest_age_count_paths_waiting_for_cloudfront(
    started: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """While CloudFront fails every submission the paths wait in a planned batch: they still
    count as pending, the oldest age grows, and the errors are counted by code."""
    cloudfront.inject("ServiceUnavailable", operation="CreateInvalidation")
    (docroot / "late.html").write_text("late")
    started.wait_event("cloudfront_error")

    www = {"distribution": "www"}
    text = metrics_when(started, "invalidatord_oldest_pending_age_seconds", 1, **www)
    assert value(text, "invalidatord_pending_paths", **www) == 1
    assert value(text, "invalidatord_api_errors_total", **www, code="ServiceUnavailable") >= 1


def test_a_start_up_catch_up_is_a_rescan_not_an_overflow(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """The catch-up scan of a restart is counted as a tree rescan and never as an overflow."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
    )
    with running_daemon(config) as first:
        first.wait_event("baseline_recorded")
        assert first.stop() == 0
    (docroot / "index.html").write_text("home v2")  # changed while no daemon watched
    with running_daemon(config) as second:
        wait_for(lambda: "/index.html" in received(cloudfront), 20, what="the catch-up")
        text = second.get("/metrics")
        assert value(text, "invalidatord_rescans_total", source="docroot", reason="tree") == 1
        assert value(text, "invalidatord_watcher_overflows_total", source="docroot") == 0


def test_an_inotify_overflow_is_counted_from_the_source(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """watchdog reports a kernel queue overflow only as a WARNING on its logger: the daemon
    counts it once, from the source, and the rescan it causes is counted as a tree rescan.
    (The watcher runs in-process here, so the WARNING can be raised from this test.)"""
    path = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
    )
    raw = yaml.safe_load(path.read_text())
    raw["sources"][0]["watcher_process"] = False
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    daemon = Daemon(cfg)
    daemon.start()
    try:
        registry = daemon.metrics.registry
        logging.getLogger(OVERFLOW_LOGGER).warning(OVERFLOW_MESSAGE)
        wait_for(
            lambda: registry.get_sample_value(
                "invalidatord_rescans_total", {"source": "docroot", "reason": "tree"}
            ),
            10,
            what="the overflow's rescan",
        )
        daemon.refresh_gauges()
        overflows = registry.get_sample_value(
            "invalidatord_watcher_overflows_total", {"source": "docroot"}
        )
        assert overflows == 1
    finally:
        daemon.stop()


# ---- /healthz ----------------------------------------------------------------------------------


def test_health_is_200_with_a_json_body_while_watching_and_cloudfront_answers(
    started: DaemonProcess,
) -> None:
    """A ready daemon answers 200 with status, phase, each source and each distribution."""
    status, body = started.health()
    assert status == 200
    assert body["status"] == "ok"
    assert body["phase"] == "ready"
    assert body["sources"] == {"docroot": "ok"}
    assert body["distributions"] == {"www": "ok"}
    assert body["pending"] == 0
    assert "reasons" not in body


def test_access_denied_makes_health_503_naming_the_distribution_until_it_is_fixed(
    started: DaemonProcess, cloudfront: CloudFrontEmulator
) -> None:
    """CloudFront refusing the credentials turns health 503 with a reason naming the
    distribution and the code, while nothing is being submitted; it recovers by itself."""
    cloudfront.inject("AccessDenied", operation="*")
    body = unhealthy_with(started, "distribution 'www'", "AccessDenied")
    assert body["distributions"]["www"].startswith("ListInvalidations: AccessDenied")
    assert body["sources"] == {"docroot": "ok"}
    cloudfront.clear_faults()
    wait_for(lambda: started.health()[0] == 200, 15, what="health back to 200")
    started.wait_event("distribution_healthy")


def test_an_unreachable_cloudfront_makes_health_503_naming_the_distribution(
    started: DaemonProcess, cloudfront: CloudFrontEmulator
) -> None:
    """With the CloudFront endpoint gone, health is 503 and says the distribution is
    unreachable."""
    cloudfront.stop()
    body = unhealthy_with(started, "distribution 'www'", "unreachable", timeout=30)
    assert "EndpointConnectionError" in body["distributions"]["www"]


def test_a_vanished_root_makes_health_503_naming_the_source(
    started: DaemonProcess, docroot: Path
) -> None:
    """Deleting the document root: health is 503 naming the source and the missing root,
    the root-missing gauge is 1; recreating it makes both well again."""
    shutil.rmtree(docroot)
    body = unhealthy_with(started, "source 'docroot'")
    assert f"root {docroot} is missing" in body["sources"]["docroot"]
    assert body["distributions"] == {"www": "ok"}
    assert started.metric("invalidatord_source_root_missing", source="docroot") == 1
    docroot.mkdir()
    wait_for(lambda: started.health()[0] == 200, 10, what="healthy again")
    assert started.metric("invalidatord_source_root_missing", source="docroot") == 0
    assert started.metric("invalidatord_root_swaps_total", source="docroot") == 1


def test_liveness_stays_200_while_cloudfront_is_unreachable_and_the_root_is_gone(
    started: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """/livez says whether the process works, not whether CloudFront or the root are there:
    with CloudFront unreachable and the root deleted /healthz is 503 and /livez stays 200."""
    assert started.health("/livez") == (200, {"status": "ok", "phase": "ready"})
    cloudfront.stop()
    shutil.rmtree(docroot)
    unhealthy_with(started, "distribution 'www'", "unreachable", timeout=30)
    unhealthy_with(started, "source 'docroot'")
    assert started.health("/livez") == (200, {"status": "ok", "phase": "ready"})


def test_liveness_is_503_once_the_journal_file_is_removed(
    started: DaemonProcess, tmp_path: Path
) -> None:
    """Deleting the journal under a running daemon (what it writes would be lost at the next
    start) makes /livez 503 naming the journal file."""
    journal = tmp_path / "state" / "journal.sqlite"
    journal.unlink()
    status, body = started.health("/livez")
    assert status == 503
    assert body["status"] == "failing"
    assert [p for p in body["problems"] if str(journal) in p] == body["problems"]
    assert len(body["problems"]) == 1


# ---- systemd -----------------------------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's /run/systemd/notify: every datagram is
    kept, in arrival order, with the time it arrived."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: tmp_path can be longer.
        self._dir = tempfile.mkdtemp(prefix="ntfy")
        self.path = str(Path(self._dir) / "s")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def fields(self) -> list[str]:
        """Every field received, in order (a datagram's fields stay together)."""
        with self._lock:
            return [f for _, fields in self.messages for f in fields]

    def first(self, field: str) -> float | None:
        """When the first datagram with `field` (or a field starting with it) arrived."""
        with self._lock:
            for at, fields in self.messages:
                if any(f == field or f.startswith(field) for f in fields):
                    return at
        return None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def systemd_env(notify: NotifySocket, watchdog_usec: int | None = None) -> dict[str, str]:
    env = aws_test_env()
    env["NOTIFY_SOCKET"] = notify.path
    env.pop("WATCHDOG_PID", None)
    env.pop("WATCHDOG_USEC", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def test_ready_status_watchdog_and_stopping_arrive_in_order(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, notify_socket: NotifySocket
) -> None:
    """READY=1 (with STATUS=) comes once the source watches: a file written the moment it
    arrives is invalidated. WATCHDOG=1 pings follow (never before READY=1) and STOPPING=1 is
    the last word after SIGTERM."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
    )
    proc = DaemonProcess(
        "run", "-c", str(config), env=systemd_env(notify_socket, watchdog_usec=1_000_000)
    ).start()
    try:
        wait_for(lambda: notify_socket.first("READY=1"), 30, what="READY=1")
        (docroot / "right-after-ready.html").write_text("x")
        wait_for(lambda: "/right-after-ready.html" in received(cloudfront), 20, what="the change")
        wait_for(lambda: notify_socket.fields().count("WATCHDOG=1") >= 2, 10, what="two pings")
        assert proc.stop() == 0, proc.transcript()
    finally:
        proc.kill()
    fields = notify_socket.fields()
    ready = fields.index("READY=1")
    stopping = fields.index("STOPPING=1")
    pings = [i for i, f in enumerate(fields) if f == "WATCHDOG=1"]
    statuses = [i for i, f in enumerate(fields) if f.startswith("STATUS=")]
    assert ready < min(pings), fields
    assert max(pings) < stopping, fields
    assert min(statuses) == ready + 1, fields  # STATUS= rides along with READY=1
    assert fields[ready + 1] == "STATUS=0 paths pending, 0 in flight"
    assert stopping == len(fields) - 1, fields
    assert fields.count("READY=1") == 1


@pytest.mark.parametrize(
    ("fault", "code"),
    [("AccessDenied", "AccessDenied"), ("missing", "NoSuchDistribution")],
)
def test_a_refusing_preflight_exits_1_with_one_line_naming_the_distribution(
    tmp_path: Path,
    docroot: Path,
    cloudfront: CloudFrontEmulator,
    notify_socket: NotifySocket,
    fault: str,
    code: str,
) -> None:
    """AccessDenied or NoSuchDistribution at start: exit 1, one plain line naming the
    distribution (config name and id) and the code, no traceback, and never READY=1."""
    distribution_id = cloudfront.distribution_id
    if fault == "missing":
        distribution_id = "ENOSUCHDISTRIBUTION"
    else:
        cloudfront.inject(fault, operation="ListInvalidations")
    config = write_config(
        tmp_path, root=docroot, endpoint=cloudfront.endpoint_url, distribution_id=distribution_id
    )
    proc = DaemonProcess("run", "-c", str(config), env=systemd_env(notify_socket)).start()
    try:
        assert proc.proc is not None
        assert proc.proc.wait(30) == 1
        wait_for(lambda: proc.other_lines, 5, what="the error line")
    finally:
        proc.kill()
    lines = [line for line in proc.other_lines if line.strip()]
    assert len(lines) == 1, proc.transcript()
    line = lines[0]
    assert line.startswith("invalidatord: distribution 'www': " + code), line
    assert distribution_id in line
    assert "Traceback" not in proc.transcript()
    assert proc.find("preflight_failed", lambda e: e["distribution"] == "www")
    assert "READY=1" not in notify_socket.fields()
    assert json.dumps(proc.events)  # every other line was a JSON log event


def test_a_busy_metrics_port_exits_1_with_one_line(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """When metrics.listen is taken, the daemon says so in one line and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = emulator_config(
            tmp_path,
            docroot,
            cloudfront,
            extra={"metrics": {"listen": listen}},
        )
        proc = DaemonProcess("run", "-c", str(config)).start()
        try:
            assert proc.proc is not None
            assert proc.proc.wait(30) == 1
            wait_for(lambda: proc.other_lines, 5, what="the error line")
        finally:
            proc.kill()
    assert [line for line in proc.other_lines if line.strip()] == [
        f"invalidatord: metrics.listen {listen}: cannot serve /metrics and /healthz there: "
        "Address already in use"
    ]
