"""Reloads that cannot starve systemd's watchdog, and signal storms that cannot keep the
daemon running: real daemons, real signals, a real notify socket."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, emulator_config, received, running_daemon
from tests.test_metrics_health import NotifySocket, systemd_env
from tests.waiting import wait_for


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint on loopback that accepts connections and never answers: CloudFront as slow
    as it gets (botocore waits its read timeout, three times)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # never accepted: the kernel completes the handshake from the backlog
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _watching(tmp_path: Path, cloudfront: CloudFrontEmulator) -> tuple[Path, Path]:
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "index.html").write_text("home")
    config = emulator_config(tmp_path, docroot, cloudfront, quiet="100ms")
    return docroot, config


def _pings_after(notify: NotifySocket, since: float) -> list[float]:
    return [at for at, fields in notify.messages if at >= since and "WATCHDOG=1" in fields]


def test_a_reload_against_a_cloudfront_that_never_answers_keeps_the_old_daemon_working(
    tmp_path: Path, cloudfront: CloudFrontEmulator, black_hole: str
) -> None:
    """SIGHUP with a config whose CloudFront never answers: while the new config's check
    waits, the old daemon keeps watching, invalidating and pinging the watchdog (2 s here); a
    SIGTERM then abandons the reload and the daemon exits 0 at once."""
    docroot, config = _watching(tmp_path, cloudfront)
    notify = NotifySocket()
    env = systemd_env(notify, watchdog_usec=2_000_000)
    with contextlib.closing(notify), running_daemon(config, env=env) as proc:
        data = yaml.safe_load(config.read_text())
        data["aws"]["endpoint_url"] = black_hole
        config.write_text(yaml.safe_dump(data))
        proc.signal(signal.SIGHUP)
        proc.wait_event("reload_started")
        since = time.monotonic()
        (docroot / "during.html").write_text("edited during the reload")
        wait_for(lambda: "/during.html" in received(cloudfront), 20, what="/during.html")
        wait_for(lambda: time.monotonic() - since >= 6, 10, what="six seconds of reloading")
        pings = _pings_after(notify, since)
        assert len(pings) >= 6, pings
        gaps = [b - a for a, b in zip([since, *pings], pings, strict=False)]
        assert max(gaps) < 2.0, gaps
        assert proc.find("reload_done") == []
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 15
        assert proc.find("reload_abandoned")


def test_a_sighup_storm_then_sigterm_exits_promptly(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """60 SIGHUPs then SIGTERM: queued reloads coalesce (at most one runs after the one in
    progress) and SIGTERM wins over them; the daemon exits 0 within seconds."""
    _, config = _watching(tmp_path, cloudfront)
    proc: DaemonProcess
    with running_daemon(config) as proc:
        for _ in range(60):
            proc.signal(signal.SIGHUP)
        proc.signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 15
        assert len(proc.find("reload_started")) <= 2
