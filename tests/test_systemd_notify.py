"""sd_notify over real AF_UNIX datagram sockets, as systemd would receive it."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from invalidatord.systemd import Notifier, notify, watchdog_interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound at a path in tmp_path, like /run/systemd/notify."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def notify_socket(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """The path receiver, advertised in $NOTIFY_SOCKET; no watchdog in the environment."""
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return receiver


def nothing_pending(sock: socket.socket) -> bool:
    """True when no datagram is queued on `sock` (a zero-timeout poll, no waiting)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_notify_sends_one_datagram_to_a_path_socket(notify_socket: socket.socket) -> None:
    """notify() joins the fields with newlines into exactly one datagram."""
    assert notify("READY=1", "STATUS=watching 2 sources") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=watching 2 sources"
    assert nothing_pending(notify_socket)


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """`@name` in $NOTIFY_SOCKET addresses the abstract socket `\\0name`."""
    name = f"invalidatord-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert Notifier().status("draining") is True
        assert sock.recv(4096) == b"STOPPING=1"
        assert sock.recv(4096) == b"STATUS=draining"


def test_without_notify_socket_everything_is_a_quiet_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside systemd, notify() and every Notifier method return False and log nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    with capture_logs() as logs:
        assert notify("READY=1") is False
        notifier = Notifier()
        assert notifier.enabled is False
        assert notifier.watchdog_interval is None
        results = [
            notifier.ready("up"),
            notifier.status("x"),
            notifier.watchdog(),
            notifier.reloading(),
            notifier.stopping(),
        ]
        notifier.close()
    assert results == [False] * 5
    assert logs == []


def test_notifier_sends_the_lifecycle_messages_exactly(notify_socket: socket.socket) -> None:
    """ready/status/stopping produce the exact datagrams systemd parses; newlines in a status
    cannot inject fields."""
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("watching 2 sources")
    assert notifier.ready()
    assert notifier.status("catch-up scan\nREADY=1 of docroot")
    assert notifier.stopping()
    notifier.close()
    received = [notify_socket.recv(4096) for _ in range(4)]
    assert received == [
        b"READY=1\nSTATUS=watching 2 sources",
        b"READY=1",
        b"STATUS=catch-up scan READY=1 of docroot",
        b"STOPPING=1",
    ]


def test_reloading_carries_the_monotonic_timestamp(notify_socket: socket.socket) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC at the call."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_socket.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_reload_does_not_announce_a_shutdown(notify_socket: socket.socket) -> None:
    """Between RELOADING=1 and READY=1, stopping() stays silent (systemd would otherwise treat
    the reload as the service exiting); after READY=1 a real shutdown says STOPPING=1 again."""
    notifier = Notifier()
    assert notifier.reloading()
    assert notifier.stopping() is False
    assert notifier.ready("reloaded")
    assert notifier.stopping() is True
    received = [notify_socket.recv(4096) for _ in range(3)]
    assert received[0].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert received[1:] == [b"READY=1\nSTATUS=reloaded", b"STOPPING=1"]
    assert nothing_pending(notify_socket)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval_reads_usec_for_this_pid_only(
    env: dict[str, str], expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC becomes seconds; a WATCHDOG_PID of another process or garbage turns it off."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert watchdog_interval() == expected
    assert watchdog_interval(env) == expected


def test_watchdog_pings_at_most_every_quarter_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline calling watchdog() on every tick sends WATCHDOG=1 only every interval/4."""
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    now = [100.0]
    notifier = Notifier(clock=lambda: now[0])
    assert notifier.watchdog_interval == 4.0
    sent = []
    for t in (100.0, 100.5, 100.99, 101.0, 101.2, 102.5):
        now[0] = t
        sent.append(notifier.watchdog())
    assert sent == [True, False, False, True, False, True]
    assert [notify_socket.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
    assert nothing_pending(notify_socket)


def test_watchdog_is_silent_when_systemd_set_no_watchdog(notify_socket: socket.socket) -> None:
    """Without WATCHDOG_USEC, watchdog() sends nothing at all."""
    notifier = Notifier()
    assert notifier.watchdog_interval is None
    assert notifier.watchdog() is False
    assert nothing_pending(notify_socket)


def test_send_failures_are_logged_once_and_never_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nobody listening, Notifier returns False and logs one warning per outage; it
    recovers by itself once the socket appears."""
    path = tmp_path / "late.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()
    with capture_logs() as logs:
        assert notifier.ready("up") is False
        assert notifier.status("still down") is False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            assert notifier.status("back") is True
            assert sock.recv(4096) == b"STATUS=back"
        path.unlink()
        assert notifier.stopping() is False
    assert [(e["event"], e["log_level"], e["socket"]) for e in logs] == [
        ("systemd_notify_failed", "warning", str(path)),
        ("systemd_notify_failed", "warning", str(path)),
    ]
    assert all("No such file or directory" in e["error"] for e in logs)


def test_unsupported_address_disables_the_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vsock or relative address is reported once and turns the notifier off."""
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with capture_logs() as logs:
        notifier = Notifier()
        assert notifier.enabled is False
        assert notifier.ready() is False
    assert [e["event"] for e in logs] == ["systemd_notify_failed"]
    with pytest.raises(OSError, match="unsupported NOTIFY_SOCKET address 'vsock:2:1234'"):
        notify("READY=1")


def test_notify_raises_for_a_dead_socket_or_malformed_field(
    notify_socket: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The low-level notify() reports problems to its caller instead of hiding them."""
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notify("READY")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notify("STATUS=a\nREADY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    with pytest.raises(FileNotFoundError):
        notify("READY=1")


def test_datagram_comes_from_the_main_pid_through_usr_bin_env(
    notify_socket: socket.socket,
) -> None:
    """Started as `/usr/bin/env python ...` (how the unit's ExecStart runs the daemon), the
    READY=1 datagram carries the PID systemd started, which NotifyAccess=main requires."""
    env_binary = Path("/usr/bin/env")
    if not env_binary.exists():
        pytest.skip("/usr/bin/env is not present on this machine")
    notify_socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = "from invalidatord.systemd import notify; notify('READY=1', 'STATUS=child')"
    proc = subprocess.Popen([str(env_binary), sys.executable, "-c", code])
    try:
        data, ancillary, _flags, _addr = notify_socket.recvmsg(
            4096, socket.CMSG_SPACE(struct.calcsize("3i"))
        )
    finally:
        assert proc.wait(timeout=30) == 0
    assert data == b"READY=1\nSTATUS=child"
    ((level, kind, creds),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, _uid, _gid = struct.unpack("3i", creds)
    assert pid == proc.pid
