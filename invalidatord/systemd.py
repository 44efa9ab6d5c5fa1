"""The systemd notification protocol (sd_notify), in the standard library only.

systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket)
and, when `WatchdogSec=` is set, the ping deadline in `$WATCHDOG_USEC` (for the process in
`$WATCHDOG_PID`, when that is set). A message is newline-separated `KEY=VALUE` fields sent as
one datagram. Outside systemd (a terminal, a container) `$NOTIFY_SOCKET` is unset and every call
here is a no-op that returns False.

Protocol: https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

#: A send waits at most this long: a stuck service manager must not stall the pipeline.
SEND_TIMEOUT = 1.0


def _socket_address(raw: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as an AF_UNIX address. `@name` is an abstract socket (leading NUL)."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd 253+ may also hand out `vsock:CID:PORT` (for VMs); a daemon in a VM guest under a
    # host's systemd is not a setup invalidatord supports.
    raise OSError(f"unsupported NOTIFY_SOCKET address {raw!r}: expected a path or @abstract name")


def _message(fields: tuple[str, ...]) -> bytes:
    for field in fields:
        if "=" not in field or "\n" in field:
            raise ValueError(f"sd_notify field must be one KEY=VALUE line, got {field!r}")
    return "\n".join(fields).encode()


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=watching 2 sources") to the service manager.

    Returns False when `$NOTIFY_SOCKET` is unset (not run by systemd), True once the datagram
    is sent. Raises OSError when the socket is set but unusable, ValueError for a malformed field.
    Opens a socket per call: for repeated messages use `Notifier`.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    data = _message(fields)
    address = _socket_address(raw)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT)
        sock.sendto(data, address)
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog deadline in seconds from `$WATCHDOG_USEC`, or None when the watchdog is off
    for this process (unset, not a positive integer, or `$WATCHDOG_PID` names another process).
    Ping at least every half of it."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """The daemon's line to systemd: one reused socket, thread-safe, never raises.

    Every method returns True when a datagram was sent and False otherwise (no `$NOTIFY_SOCKET`,
    or the send failed). The first failure is logged as `systemd_notify_failed`; later failures
    stay quiet until a send succeeds again, so a broken socket does not flood the log.
    """

    def __init__(
        self,
        socket_address: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`socket_address` defaults to `$NOTIFY_SOCKET`; `environ` defaults to `os.environ`
        (read once, here)."""
        env = os.environ if environ is None else environ
        raw = socket_address if socket_address is not None else env.get("NOTIFY_SOCKET", "")
        self._raw = raw
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._address: str | bytes | None = None
        self._failing = False
        self._reloading = False
        self._last_ping: float | None = None
        self.watchdog_interval: float | None = watchdog_interval(env) if raw else None
        """Seconds systemd waits for a ping before it restarts the service; None when off."""
        if raw:
            try:
                self._address = _socket_address(raw)
            except OSError as exc:
                self._log_failure(exc)

    @property
    def enabled(self) -> bool:
        """True when systemd gave this process a usable notification socket."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup finished: sources watch and CloudFront answered (also sent after a reload)."""
        self._reloading = False
        if status is None:
            return self._send("READY=1")
        return self._send("READY=1", _status_field(status))

    def status(self, text: str) -> bool:
        """A one-line human status shown by `systemctl status` (newlines become spaces)."""
        return self._send(_status_field(text))

    def reloading(self) -> bool:
        """A reload (SIGHUP) began; send `ready()` when it is done. MONOTONIC_USEC is what
        systemd 253+ needs to match the two; older versions ignore it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._reloading = True
        return self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """Keep-alive from the pipeline loop. Call it as often as convenient: it sends only
        when the watchdog is on, at most once per quarter of the interval."""
        if self.watchdog_interval is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval / 4:
            return False
        sent = self._send("WATCHDOG=1")
        if sent:
            self._last_ping = now
        return sent

    def stopping(self) -> bool:
        """Shutdown began (SIGTERM): systemd shows "deactivating" while the daemon flushes.

        Not sent between `reloading()` and `ready()`: systemd takes STOPPING=1 as "the service
        is exiting" (as if it had sent SIGTERM) and kills it after TimeoutStopSec, so a reload
        that stops and restarts the pipeline must not say it."""
        if self._reloading and self.enabled:
            log.debug("systemd_stopping_skipped_during_reload")
            return False
        return self._send("STOPPING=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, *fields: str) -> bool:
        if self._address is None:
            return False
        data = _message(fields)
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(SEND_TIMEOUT)
                # sendto, not connect: a path socket is looked up afresh on every send, so a
                # `systemctl daemon-reexec` that recreates it does not strand us.
                self._sock.sendto(data, self._address)
            except OSError as exc:
                self._log_failure(exc)
                return False
            self._failing = False
        return True

    def _log_failure(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("systemd_notify_failed", socket=self._raw, error=str(exc))


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())
