"""Signals, for real: `invalidatord run` as a subprocess, SIGTERM/SIGINT/SIGHUP sent to it.

SIGTERM and SIGINT stop the sources, accept and submit what is pending within
`shutdown_timeout` and exit 0; what CloudFront did not take stays in the journal and the next
start sends it. SIGHUP reloads the config: a valid one takes effect, an invalid one is rejected
with the lines `invalidatord check` prints and the old one keeps running.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from invalidatord.journal import PLANNED, Journal
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, aws_test_env, emulator_config, running_daemon, write_config
from tests.test_metrics_health import NotifySocket, systemd_env
from tests.waiting import wait_for

#: How long past `shutdown_timeout` the exit may take: stopping the watcher, the last flush,
#: interpreter shutdown.
EXIT_MARGIN = 4.0


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("home")
    return root


def received(cloudfront: CloudFrontEmulator) -> list[str]:
    return cloudfront.created_paths(cloudfront.distribution_id)


def journaled(state_dir: Path, distribution_id: str) -> set[str]:
    """Every path the journal still has to send: pending, or in a batch not yet accepted
    (rows are keyed by the CloudFront id, whatever the config calls the distribution)."""
    journal = Journal(state_dir / "journal.sqlite")
    try:
        planned = {p for b in journal.batches(PLANNED) for p in b.paths}
        return planned | set(journal.pending_paths(distribution_id, 1000))
    finally:
        journal.close()


def stop_timed(proc: DaemonProcess, sig: int = signal.SIGTERM) -> tuple[int, float]:
    """Send `sig`; return (exit code, seconds until the process was gone)."""
    started = time.monotonic()
    code = proc.stop(sig, timeout=60)
    return code, time.monotonic() - started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signals_flush_what_is_debouncing_and_exit_0(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, sig: int
) -> None:
    """Inside a 30 s quiet window the signal stops the source, accepts the change, submits it
    and exits 0, in that order."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        quiet="30s",
        max_delay="60s",
    )
    with running_daemon(config) as proc:
        (docroot / "late.html").write_text("late")
        wait_for(
            lambda: 'kind="created",source="docroot"} 1.0' in proc.get("/metrics"),
            20,
            what="the daemon to see the change",
        )
        assert received(cloudfront) == []
        code, _ = stop_timed(proc, sig)
        assert code == 0, proc.transcript()
    assert received(cloudfront) == ["/late.html"]
    order = [
        e["event"]
        for e in proc.events
        if e["event"]
        in ("signal_received", "source_stopped", "changes_accepted", "batch_submitted")
    ]
    assert order == ["signal_received", "source_stopped", "changes_accepted", "batch_submitted"]
    assert proc.find("signal_received")[0]["signal"] == signal.Signals(sig).name
    assert proc.find("daemon_stopped")[-1]["drained"] is True


def test_what_cloudfront_refuses_stays_journaled_and_the_next_start_sends_it(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """CloudFront failing every submission: SIGTERM still exits 0 within shutdown_timeout,
    the path stays in the journal, and the next start submits it once CloudFront recovers."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"shutdown_timeout": "2s"},
    )
    cloudfront.inject("ServiceUnavailable", operation="CreateInvalidation")
    with running_daemon(config) as proc:
        (docroot / "kept.html").write_text("kept")
        proc.wait_event("cloudfront_error")
        code, took = stop_timed(proc)
        assert code == 0, proc.transcript()
        assert took < 2 + EXIT_MARGIN, took
    stopped = proc.find("daemon_stopped")[-1]
    assert stopped["drained"] is False
    assert stopped["pending_kept"] == 1
    assert journaled(tmp_path / "state", cloudfront.distribution_id) == {"/kept.html"}
    assert received(cloudfront) == []

    cloudfront.clear_faults()
    with running_daemon(config):
        wait_for(lambda: received(cloudfront) == ["/kept.html"], 20, what="the resubmission")


class LossyProxy:
    """A TCP proxy on 127.0.0.1 in front of the emulator. `swallow = True` keeps forwarding
    requests (CloudFront acts on them) but drops every answer: the daemon's call hangs until
    its read timeout, as with a network that lost the response."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self.swallow = False
        self.swallowed = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and self.swallow:
                    with self._lock:
                        self.swallowed += 1
                    continue
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture
def proxy(cloudfront: CloudFrontEmulator) -> Iterator[LossyProxy]:
    lossy = LossyProxy(cloudfront.endpoint_url)
    yield lossy
    lossy.close()


def test_a_lost_answer_cannot_hold_the_exit_and_the_resubmission_is_not_a_second_invalidation(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator, proxy: LossyProxy
) -> None:
    """CloudFront creates the invalidation but its answer is lost (botocore would wait 30 s per
    attempt): SIGTERM abandons the call at shutdown_timeout and exits 0; the batch stays
    journaled with its CallerReference, so the next start gets the same invalidation back
    instead of creating a second one."""
    config = write_config(
        tmp_path,
        root=docroot,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        extra={"shutdown_timeout": "2s"},
    )
    with running_daemon(config) as proc:
        proxy.swallow = True
        (docroot / "once.html").write_text("once")
        wait_for(lambda: received(cloudfront) == ["/once.html"], 20, what="the creation")
        wait_for(lambda: proxy.swallowed, 10, what="the answer to be lost")
        code, took = stop_timed(proc)
        assert code == 0, proc.transcript()
        assert took < 2 + EXIT_MARGIN, took
    assert proc.find("drain_abandoned")
    assert journaled(tmp_path / "state", cloudfront.distribution_id) == {"/once.html"}

    proxy.swallow = False
    with running_daemon(config) as again:
        submitted = again.wait_event("batch_submitted")
    creations = [r for r in cloudfront.requests if r.op == "CreateInvalidation" and r.status == 201]
    assert len(creations) == 2  # the lost one and the resubmission...
    assert {r.invalidation_id for r in creations} == {submitted["invalidation_id"]}  # ...one id
    assert len(cloudfront.invalidations(cloudfront.distribution_id)) == 1


# ---- SIGHUP ------------------------------------------------------------------------------------


def rewrite(config: Path, **changes: Any) -> None:
    data = yaml.safe_load(config.read_text())
    data.update(changes)
    config.write_text(yaml.safe_dump(data))


@pytest.fixture
def running(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> Iterator[tuple[DaemonProcess, Path, NotifySocket]]:
    """A ready daemon (rule: every path -> /{path}) with a systemd notify socket."""
    notify = NotifySocket()
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        rules=[{"match": "**", "urls": ["/{path}"]}],
    )
    with contextlib.closing(notify), running_daemon(config, env=systemd_env(notify)) as proc:
        yield proc, config, notify


def test_sighup_with_a_valid_config_changes_the_urls_of_the_next_change(
    running: tuple[DaemonProcess, Path, NotifySocket], cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """A new rule takes effect after SIGHUP; the health URL and the counters carry over, and
    systemd hears RELOADING=1 then READY=1, never STOPPING=1."""
    proc, config, notify = running
    (docroot / "before.html").write_text("1")
    wait_for(lambda: "/before.html" in received(cloudfront), 20, what="the first change")
    health_url = proc.health_url
    rewrite(config, rules=[{"match": "**", "urls": ["/v2/{path}"]}])
    proc.signal(signal.SIGHUP)
    proc.wait_event("reload_done")
    assert proc.health()[0] == 200
    (docroot / "after.html").write_text("2")
    wait_for(lambda: "/v2/after.html" in received(cloudfront), 20, what="the new rule")
    assert "/after.html" not in received(cloudfront)
    assert proc.wait_ready() == health_url
    metrics = proc.get("/metrics")
    assert 'invalidatord_paths_accepted_total{distribution="www"} 2.0' in metrics
    fields = notify.fields()
    reloading = next(i for i, f in enumerate(fields) if f.startswith("RELOADING=1"))
    assert "READY=1" in fields[reloading + 1 :]
    assert "STOPPING=1" not in fields
    assert proc.stop() == 0


def test_sighup_with_an_invalid_config_is_rejected_with_checks_messages(
    running: tuple[DaemonProcess, Path, NotifySocket], cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """An invalid config is logged as `reload_rejected`, one event per line `check` prints;
    the old config keeps running (same rules, healthy, never stopped)."""
    proc, config, notify = running
    rewrite(config, rules=[{"match": "**", "distribution": "nope", "urls": ["/x/{nope}"]}])
    check = subprocess.run(
        [sys.executable, "-m", "invalidatord", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env=aws_test_env(),
        check=False,
        timeout=60,
    )
    assert check.returncode == 2
    expected = check.stderr.strip().splitlines()
    assert len(expected) >= 2  # the unknown distribution and the unknown template variable
    proc.signal(signal.SIGHUP)
    proc.wait_event("reload_kept_old_config")
    assert [e["problem"] for e in proc.find("reload_rejected")] == expected
    assert not proc.find("reload_started")
    assert proc.health()[0] == 200
    (docroot / "still.html").write_text("old rules")
    wait_for(lambda: "/still.html" in received(cloudfront), 20, what="the old rule")
    fields = notify.fields()
    reloading = next(i for i, f in enumerate(fields) if f.startswith("RELOADING=1"))
    assert "READY=1" in fields[reloading + 1 :]  # systemd learns the reload is over
    assert "STOPPING=1" not in fields
    assert proc.stop() == 0


def test_sighup_with_an_alias_bomb_is_rejected_and_the_daemon_keeps_running(
    running: tuple[DaemonProcess, Path, NotifySocket], cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """A "billion laughs" config sent with SIGHUP is one `reload_rejected` line; the daemon
    neither dies nor stalls (it used to exit 1 with a MemoryError) and the old rules run."""
    proc, config, _notify = running
    bomb = ['x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 9)}]" for n in range(1, 9)]
    config.write_text(config.read_text() + "\n".join(bomb) + "\n")
    proc.signal(signal.SIGHUP)
    proc.wait_event("reload_kept_old_config")
    (rejected,) = proc.find("reload_rejected")
    assert "invalid YAML: aliases expand to more than 100000 values" in rejected["problem"]
    assert proc.health()[0] == 200
    (docroot / "after-bomb.html").write_text("old rules")
    wait_for(lambda: "/after-bomb.html" in received(cloudfront), 20, what="the old rule")
    assert proc.stop() == 0


def test_sighup_with_a_config_that_cannot_start_keeps_the_old_one(
    running: tuple[DaemonProcess, Path, NotifySocket], cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """A config that loads but cannot start (its distribution does not exist) is logged as
    `reload_failed` and the old config is started again."""
    proc, config, _ = running
    rewrite(config, distributions={"www": {"id": "ENOSUCHDISTRIBUTION"}})
    proc.signal(signal.SIGHUP)
    failed = proc.wait_event("reload_failed")
    assert "NoSuchDistribution" in failed["error"]
    proc.wait_event("reload_kept_old_config")
    wait_for(lambda: proc.health()[0] == 200, 20, what="the old config to be back")
    (docroot / "back.html").write_text("x")
    wait_for(lambda: "/back.html" in received(cloudfront), 20, what="the old config at work")
    assert proc.stop() == 0
