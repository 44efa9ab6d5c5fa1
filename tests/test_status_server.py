"""The metrics/health HTTP server under slow clients, over real sockets on 127.0.0.1: idle
connections are dropped after a timeout, and only a bounded number are served at once."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from invalidatord.health import StatusServer
from invalidatord.metrics import Metrics
from tests.waiting import wait_for

IDLE = 0.5
MAX_CONNECTIONS = 8
HALF_OPEN = 200


class Healthy:
    """The least a daemon must answer: healthy, no gauges to refresh."""

    def __init__(self) -> None:
        self.metrics = Metrics()

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok"}

    def refresh_gauges(self) -> None:
        pass


@pytest.fixture
def server() -> Iterator[StatusServer]:
    status = StatusServer(
        "127.0.0.1:0",
        ("127.0.0.1", 0),
        Healthy(),
        idle_timeout=IDLE,
        max_connections=MAX_CONNECTIONS,
    )
    yield status
    status.close()


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def test_half_open_connections_are_bounded_and_dropped_when_idle(server: StatusServer) -> None:
    """200 connections that never send a byte hold at most `max_connections` threads, every
    one of them is closed by the server within the idle timeout (plus slack), and the server
    answers /healthz afterwards with its thread count back where it started."""
    threads_before = threading.active_count()
    socks: list[socket.socket] = []
    try:
        for _ in range(HALF_OPEN):
            sock = socket.create_connection(server.address, timeout=5)
            sock.setblocking(False)
            socks.append(sock)
        wait_for(
            lambda: threading.active_count() <= threads_before + MAX_CONNECTIONS,
            5,
            what="connection threads within the bound",
        )
        assert threading.active_count() <= threads_before + MAX_CONNECTIONS
        assert server.refused > 0  # some closed on accept (slots free up as idle ones time out)
        open_socks = list(socks)

        def all_closed() -> bool:
            open_socks[:] = [s for s in open_socks if not closed_by_server(s)]
            return not open_socks

        wait_for(all_closed, IDLE * 4 + 5, what="every idle connection closed by the server")
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    with urllib.request.urlopen(server.health_url, timeout=5) as answer:  # noqa: S310
        assert answer.status == 200
    wait_for(
        lambda: threading.active_count() <= threads_before,
        5,
        what="the connection threads gone",
    )
