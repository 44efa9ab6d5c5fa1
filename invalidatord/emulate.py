"""`invalidatord emulator`: the CloudFront test double on its own, to try a real config
without AWS.

It serves CloudFront's invalidation API the way the tests see it (invalidations stay
InProgress for a while, the in-flight limits, path checks, idempotent CallerReference) and,
through moto on the same endpoint, S3, SQS and STS for the `sqs` and `s3-poll` sources and
`aws.role_arn`. Only on 127.0.0.1; state is in memory and ends with the process.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading

from invalidatord import logs
from invalidatord.errors import InvalidatordError

#: Credentials the emulator accepts (any would do): printed for the user to export, so the
#: daemon under test never sees real ones.
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def run_emulator(port: int, in_progress_seconds: float) -> int:
    """Serve until SIGINT/SIGTERM; exit 0. Raises InvalidatordError (exit 1) when moto is
    missing or the port is taken."""
    try:
        from invalidatord.testing.cloudfront import CloudFrontEmulator
    except ImportError as exc:  # moto is the optional `demo` extra
        raise InvalidatordError(
            f"the emulator needs moto: pip install 'invalidatord[demo]' ({exc})"
        ) from exc
    logs.configure("auto", "warning")  # the emulator's own debug lines are for tests
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    # werkzeug reports a taken port itself (two lines, then SystemExit): ask first.
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    except OSError as exc:
        raise InvalidatordError(
            f"emulator: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
            "(choose another with --port, or --port 0 for a free one)"
        ) from exc
    emulator = CloudFrontEmulator(in_progress_seconds=in_progress_seconds)
    endpoint = emulator.start(port)
    try:
        distribution_id = emulator.create_distribution("invalidatord emulator")
        exports = " ".join(f"{k}={v}" for k, v in DUMMY_ENV.items())
        print(
            f"CloudFront emulator (and S3, SQS, STS) on {endpoint}\n"
            f"\n"
            f"In the config:\n"
            f"  aws:\n"
            f"    endpoint_url: {endpoint}\n"
            f"  distributions:\n"
            f"    www:\n"
            f"      id: {distribution_id}\n"
            f"\n"
            f"In the shell that runs invalidatord (dummy credentials the emulator accepts):\n"
            f"  export {exports}\n"
            f"\n"
            f"Invalidations stay InProgress for {in_progress_seconds:g}s. State is in memory only. "
            f"Ctrl-C stops it.",
            flush=True,
        )
        stop.wait()
        made = emulator.invalidations(distribution_id)
        print(f"emulator stopped: {len(made)} invalidation(s) created", file=sys.stderr)
    finally:
        emulator.stop()
    return 0
