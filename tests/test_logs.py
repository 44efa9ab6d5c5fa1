"""Logs: one canonical line per submitted invalidation, no credential in any line, and the
JSON/console choice of `log.format: auto`.

The daemon runs as a subprocess against the CloudFront emulator; the format choice is also
checked in-process on a real pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import random
import re
import select
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from invalidatord import logs
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, aws_test_env, emulator_config, running_daemon
from tests.waiting import wait_for

_B64 = string.ascii_letters + string.digits + "/+"


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "index.html").write_text("sub")
    (root / "a.html").write_text("a")
    return root


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() is process-wide: put structlog and the root logger back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def fake_credentials(seed: int) -> dict[str, str]:
    """Credentials shaped like real ones (never valid anywhere)."""
    rng = random.Random(seed)
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(rng.choices(string.ascii_uppercase + "234567", k=16)),
        "AWS_SECRET_ACCESS_KEY": "".join(rng.choices(_B64, k=40)),
        "AWS_SESSION_TOKEN": "IQoJb3JpZ2lu" + "".join(rng.choices(_B64, k=400)),
    }


def all_lines(proc: DaemonProcess) -> list[str]:
    return [json.dumps(e, ensure_ascii=False) for e in proc.events] + proc.other_lines


# ---- the canonical line ------------------------------------------------------------------------


def test_each_submitted_invalidation_is_one_line_with_its_facts(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`batch_submitted` is logged once per invalidation CloudFront created, with the
    distribution, the invalidation id, file and wildcard counts, the CallerReference CloudFront
    got, and the latency from the first change."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        rules=[
            {"match": "**/index.html", "urls": ["/{dir}/*"]},
            {"match": "**", "urls": ["/{path}"]},
        ],
    )
    with running_daemon(config) as proc:
        changed = time.time()
        (docroot / "a.html").write_text("a2")
        (docroot / "sub" / "index.html").write_text("sub2")
        event = proc.wait_event("batch_submitted")
        assert proc.stop() == 0
    created = [r for r in cloudfront.requests if r.op == "CreateInvalidation" and r.status == 201]
    assert len(created) == 1
    assert len(proc.find("batch_submitted")) == 1
    request = created[0]
    assert event["distribution"] == "www"
    assert event["distribution_id"] == cloudfront.distribution_id
    assert event["invalidation_id"] == request.invalidation_id
    assert event["caller_reference"] == request.caller_reference
    assert set(request.paths) == {"/a.html", "/sub/*"}
    assert (event["paths"], event["files"], event["wildcards"]) == (2, 1, 1)
    assert 0.3 <= event["latency"] <= time.time() - changed  # at least the quiet window
    assert event["level"] == "info"


# ---- credentials -------------------------------------------------------------------------------


def test_no_credential_reaches_any_log_line(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """With real-looking credentials in the environment, debug logging, and CloudFront errors
    that quote them, no line of the daemon's output contains any of them."""
    creds = fake_credentials(seed=7)
    env = aws_test_env() | creds
    quoted = " ".join(creds.values())
    cloudfront.inject(
        "AccessDenied",
        times=1,
        operation="CreateInvalidation",
        message=f"User is not authorized (credentials seen: {quoted})",
    )
    cloudfront.inject(
        "InternalError", times=3, operation="GetInvalidation", message=f"boom {quoted}"
    )
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"log": {"level": "debug"}, "invalidation": {"max_backoff": "1s"}},
    )
    with running_daemon(config, env=env) as proc:
        (docroot / "a.html").write_text("a2")
        refused = proc.wait_event("cloudfront_access_problem")
        proc.wait_event("batch_submitted")
        proc.wait_event("status_poll_failed")
        proc.wait_event("invalidation_completed")
        assert proc.stop() == 0
    assert "[redacted]" in refused["error"]  # the quoting message was logged, masked
    assert proc.find("cloudfront_call", lambda e: e["level"] == "debug")  # debug was on
    lines = all_lines(proc)
    for name, secret in creds.items():
        leaks = [line for line in lines if secret in line or secret[:16] in line]
        assert not leaks, f"{name} leaked: {leaks[:3]}"


def test_tracebacks_and_library_records_are_masked_too(restore_logging: None) -> None:
    """A credential in an exception message (traceback included) or in a record of a library
    logger is masked; a git commit id and a CallerReference are not."""
    creds = fake_credentials(seed=11)
    for value in creds.values():
        logs.register_secret(value)
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    log = structlog.get_logger("test")
    try:
        raise RuntimeError(f"signing with {creds['AWS_SECRET_ACCESS_KEY']}")
    except RuntimeError:
        log.exception("call_failed", commit="0123456789abcdef0123456789abcdef01234567")
    logging.getLogger("botocore.credentials").warning("refreshing %s", creds["AWS_SESSION_TOKEN"])
    log.info("batch_submitted", caller_reference="invalidatord-1a2b3c4d-7-0123456789abcdef")
    out = stream.getvalue()
    for secret in creds.values():
        assert secret not in out
    events = [json.loads(line) for line in out.splitlines()]
    assert "[redacted]" in events[0]["exception"]
    assert "Traceback" in events[0]["exception"]
    assert events[0]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert events[1]["event"] == "refreshing [redacted]"
    assert events[2]["caller_reference"] == "invalidatord-1a2b3c4d-7-0123456789abcdef"


# ---- JSON or console ---------------------------------------------------------------------------


def test_auto_is_console_on_a_terminal_and_json_otherwise(restore_logging: None) -> None:
    """`auto` renders for people on a real terminal and as JSON lines into a pipe."""
    main, replica = pty.openpty()
    try:
        with open(replica, "w", closefd=False) as terminal:
            assert logs.configure("auto", "info", stream=terminal) == "console"
            structlog.get_logger("t").info("hello_terminal", answer=42)
            terminal.flush()
        seen = os.read(main, 65536).decode()
    finally:
        os.close(main)
        os.close(replica)
    assert "hello_terminal" in seen
    assert "answer" in seen
    assert not seen.lstrip().startswith("{")

    read_end, write_end = os.pipe()
    with open(write_end, "w") as pipe:
        assert logs.configure("auto", "info", stream=pipe) == "json"
        structlog.get_logger("t").info("hello_pipe", answer=42)
    with open(read_end) as reader:
        event = json.loads(reader.readline())
    assert event["event"] == "hello_pipe"
    assert event["answer"] == 42


def test_the_daemon_logs_for_people_on_a_terminal_and_json_into_a_pipe(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`invalidatord run` with `log.format: auto` writes console lines when its stderr is a
    terminal, and JSON lines when it is a pipe."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"log": {"format": "auto"}},
    )
    main, replica = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "invalidatord", "run", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=replica,
        env=aws_test_env(),
    )
    os.close(replica)
    seen = ""
    try:

        def read_until_ready() -> bool:
            nonlocal seen
            while select.select([main], [], [], 0.05)[0]:
                seen += os.read(main, 65536).decode(errors="replace")
            return "daemon_ready" in seen

        wait_for(read_until_ready, 30, what="daemon_ready on the terminal")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", seen)
    lines = [line for line in plain.splitlines() if line.strip()]
    assert any("daemon_ready" in line and "[info" in line for line in lines), lines
    assert not any(line.lstrip().startswith("{") for line in lines), lines

    piped = DaemonProcess("run", "-c", str(config)).start()
    try:
        ready: dict[str, Any] = piped.wait_event("daemon_ready")
        assert ready["level"] == "info"
        assert piped.stop() == 0
    finally:
        piped.kill()
    assert not [line for line in piped.other_lines if line.strip()]


# ---- what a person reads first -------------------------------------------------------------


def test_console_lines_show_the_url_paths_before_the_other_keys(restore_logging: None) -> None:
    """In console format the paths (and the sample of a batch) come right after the event
    name, before caller_reference and the rest; JSON keeps every key."""
    stream = io.StringIO()
    logs.configure("console", "info", stream=stream)
    structlog.get_logger("test").info(
        "batch_submitted",
        caller_reference="invalidatord-1a2b-7-0123",
        distribution="www",
        invalidation_id="I1",
        paths=2,
        sample=["/a.html", "/img/*"],
    )
    line = stream.getvalue()
    keys = re.findall(r"(\w+)=", line.split("batch_submitted", 1)[1])
    assert keys == ["paths", "sample", "distribution", "caller_reference", "invalidation_id"]


def test_debug_level_lists_every_path_of_a_batch(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`run --log-level debug`: batch_submitted keeps its five-path sample, and batch_paths
    lists every path of the batch."""
    config = emulator_config(tmp_path, docroot, cloudfront)
    proc = DaemonProcess("run", "-c", str(config), "--log-level", "debug").start()
    try:
        proc.wait_ready()
        for i in range(7):
            (docroot / f"p{i}.html").write_text(str(i))
        submitted = proc.wait_event("batch_submitted", lambda e: e["paths"] == 7)
        listed = proc.wait_event(
            "batch_paths", lambda e: e["invalidation_id"] == submitted["invalidation_id"]
        )
    finally:
        assert proc.stop() == 0
    assert len(submitted["sample"]) == 5
    assert sorted(listed["paths"]) == [f"/p{i}.html" for i in range(7)]
    assert listed["level"] == "debug"
