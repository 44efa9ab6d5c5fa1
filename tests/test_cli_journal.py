"""`invalidatord invalidate` and `status` as a user runs them (real subprocesses) against the
journal, with a daemon running (it submits what the command queues) and without one (the command
submits by itself), over HTTP to the CloudFront emulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.journal import Journal
from invalidatord.testing.cloudfront import CREATE, CloudFrontEmulator
from tests.conftest import EmulatorFactory
from tests.harness import DaemonProcess, aws_test_env, emulator_config, received, running_daemon


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=aws_test_env(),
        timeout=timeout,
        check=False,
    )


def make_config(tmp_path: Path, cloudfront: CloudFrontEmulator) -> Path:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("home")
    return emulator_config(
        tmp_path,
        root,
        cloudfront,
        extra={"invalidation": {"max_backoff": "2s"}},
    )


@pytest.fixture
def config(tmp_path: Path, cloudfront: CloudFrontEmulator) -> Path:
    return make_config(tmp_path, cloudfront)


@pytest.fixture
def running(config: Path) -> Iterator[DaemonProcess]:
    with running_daemon(config) as proc:
        yield proc


def status_table(stdout: str) -> dict[str, list[str]]:
    """The per-distribution lines of `status`: name -> its columns."""
    rows: dict[str, list[str]] = {}
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("distribution "))
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cols = line.split()
        rows[cols[0]] = cols
    return rows


# ---- with a daemon running --------------------------------------------------------------------


def test_invalidate_with_a_daemon_running_is_submitted_by_the_daemon(
    config: Path, running: DaemonProcess, cloudfront: CloudFrontEmulator
) -> None:
    """The command only queues (the daemon holds the lock); the daemon submits the paths,
    encoded for CloudFront, and `status` shows the daemon and the invalidation."""
    result = cli("invalidate", "-c", str(config), "/a.html", "/b c.html")
    assert result.returncode == 0, result.stderr
    assert "queued 2 path(s) on www" in result.stdout
    assert "a running daemon will submit them" in result.stdout
    submitted = running.wait_event("batch_submitted", lambda e: "/a.html" in e["sample"])
    assert sorted(submitted["sample"]) == ["/a.html", "/b%20c.html"]
    assert received(cloudfront) == {"/a.html", "/b%20c.html"}

    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("daemon: running")
    assert submitted["invalidation_id"] in status.stdout
    assert "billed this month: 2 paths (2 of 1000 free)" in status.stdout


def test_invalidate_wait_with_a_daemon_running_shows_progress_until_completed(
    tmp_path: Path, cloudfront_factory: EmulatorFactory
) -> None:
    """`--wait` prints a progress line whenever it changes and ends once the daemon has seen
    CloudFront complete the invalidation."""
    cloudfront = cloudfront_factory(in_progress_seconds=1.5)
    config = make_config(tmp_path, cloudfront)
    with running_daemon(config):
        result = cli("invalidate", "-c", str(config), "--wait", "/w.html")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "in progress 1, completed 0" in result.stdout, lines
        assert lines[-2].endswith("completed 1"), lines
        [made] = cloudfront.invalidations(cloudfront.distribution_id)
        assert re.fullmatch(rf"www {made.id} Completed after \d+s", lines[-1]), lines
        assert made.completed


# ---- without a daemon ----------------------------------------------------------------------


def test_invalidate_without_a_daemon_submits_by_itself(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """No daemon holds the lock: the command submits the paths itself, and `status` says the
    daemon is not running and lists the invalidation in flight."""
    cloudfront.hold(True)
    result = cli("invalidate", "-c", str(config), "/a.html", "/img/*")
    assert result.returncode == 0, result.stderr
    assert "a running daemon" not in result.stdout
    assert received(cloudfront) == {"/a.html", "/img/*"}
    [made] = cloudfront.invalidations(cloudfront.distribution_id)
    assert f"www {made.id} submitted" in result.stdout

    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("daemon: not running")
    row = status_table(status.stdout)["www"]
    assert row[1] == cloudfront.distribution_id
    assert row[2] == "0"  # pending
    assert row[-1] == "1/1"  # in flight: one file, one wildcard
    assert re.search(rf"www\s+{made.id}\s+submitted\s+2 paths", status.stdout), status.stdout
    assert "billed this month: 2 paths (2 of 1000 free), estimated cost $0.00" in status.stdout


def test_invalidate_wait_without_a_daemon_polls_until_completed(
    tmp_path: Path, cloudfront_factory: EmulatorFactory
) -> None:
    """Without a daemon, `--wait` submits, polls CloudFront itself and ends at Completed."""
    cloudfront = cloudfront_factory(in_progress_seconds=1.5)
    config = make_config(tmp_path, cloudfront)
    result = cli("invalidate", "-c", str(config), "--wait", "/w.html")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "queued 1 path(s) on www"
    progress = [re.sub(r"^\[\d+s\] ", "", line) for line in lines[1:-1]]
    assert all(line.startswith("[") for line in lines[1:-1]), lines  # elapsed time first
    assert "pending 0, planned 0, in progress 1, completed 0" in progress
    assert progress[-1] == "pending 0, planned 0, in progress 0, completed 1"
    [made] = cloudfront.invalidations(cloudfront.distribution_id)
    assert re.fullmatch(rf"www {made.id} Completed after \d+s", lines[-1]), lines


def test_access_denied_without_a_daemon_fails_fast_and_keeps_the_paths(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """AccessDenied without a daemon: the command says what is wrong at once (no minute of
    retrying) and exits 1; the paths stay in the journal and `status` counts them as pending."""
    cloudfront.inject("AccessDenied")
    result = cli("invalidate", "-c", str(config), "/a.html", "/b.html", timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [e for e in result.stderr.splitlines() if e.startswith("invalidatord:")]
    assert line.startswith(
        f"invalidatord: not submitted: www: distribution '{cloudfront.distribution_id}': "
        "AccessDenied: cloudfront:CreateInvalidation is not allowed"
    ), line
    assert line.endswith(
        "the paths stay queued in "
        + str(config.parent / "state")
        + " and the daemon submits them when it runs"
    ), line
    assert len([r for r in cloudfront.requests if r.op == CREATE]) == 1

    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status_table(status.stdout)["www"][2] == "2"  # pending
    assert re.search(r"www\s+-\s+planned\s+2 paths .*AccessDenied", status.stdout), status.stdout
    assert "billed this month: 0 paths" in status.stdout


def test_work_left_on_another_distribution_does_not_hold_up_the_command(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`-d www` submits www's paths and returns at once, though paths of another distribution
    are still waiting in the journal."""
    config = make_config(tmp_path, cloudfront)
    other = cloudfront.create_distribution("another")
    config = emulator_config(
        tmp_path,
        tmp_path / "www",
        cloudfront,
        extra={"distributions": {"cdn": {"id": other}}},
        rules=[{"match": "**", "distribution": ["www", "cdn"], "urls": ["/{path}"]}],
    )
    cloudfront.inject("AccessDenied", times=1)
    stuck = cli("invalidate", "-c", str(config), "-d", "cdn", "/stuck.html", timeout=30)
    assert stuck.returncode == 1, stuck.stderr
    result = cli("invalidate", "-c", str(config), "-d", "www", "/a.html", timeout=30)
    assert result.returncode == 0, result.stderr
    assert cloudfront.created_paths(cloudfront.distribution_id) == ["/a.html"]
    assert cloudfront.created_paths(other) == []


def test_a_refused_path_ends_the_wait_with_exit_1(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A path CloudFront refuses (InvalidArgument) never completes: `--wait` reports it with
    the reason, still waits for the others, and exits 1 instead of waiting forever."""
    result = cli("invalidate", "-c", str(config), "--raw", "--wait", "/ok.html", "/a b", timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    refused = [e for e in result.stderr.splitlines() if e.startswith("invalidatord:")]
    assert refused == [
        "invalidatord: CloudFront refused /a b on www: InvalidArgument: Invalid invalidation "
        "path '/a b': character ' ' must be percent-encoded."
    ], result.stderr
    assert "completed 1, refused 1" in result.stdout
    assert received(cloudfront) == {"/ok.html"}


def test_status_of_a_fresh_journal(config: Path, tmp_path: Path) -> None:
    """Nothing submitted yet: status still prints every section."""
    Journal(tmp_path / "state" / "journal.sqlite").close()
    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status_table(status.stdout)["www"][2:] == ["0", "-", "0/0"]
    assert "(none yet)" in status.stdout
    assert "billed this month: 0 paths (0 of 1000 free), estimated cost $0.00" in status.stdout


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index.html"], "'index.html': a URL path starts with '/'"),
        (["-d", "nope", "/a.html"], "unknown distribution 'nope' (known: www)"),
        ([""], "'': an empty path"),
        (["/ok.html", "/a*b.html"], "'/a*b.html': '*' is allowed only as the last character"),
        (["/*/x"], "'/*/x': '*' is allowed only as the last character"),
        (["/" + "a" * 4000], "'/aaaa"),
        (["/" + "é" * 1500], "'/ééé"),
    ],
    ids=[
        "no-leading-slash",
        "unknown-distribution",
        "empty",
        "star-inside",
        "star-in-a-directory",
        "too-long",
        "too-long-once-encoded",
    ],
)
def test_bad_input_exits_2_with_one_line_and_queues_nothing(
    config: Path, cloudfront: CloudFrontEmulator, args: list[str], message: str
) -> None:
    """A path CloudFront would refuse (no leading `/`, empty, `*` not last, over 4,000
    characters once encoded) or an unknown `-d`: exit 2, one line,
    nothing queued, nothing sent."""
    result = cli("invalidate", "-c", str(config), *args)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"invalidatord: {message}"), line
    assert result.stdout == ""
    status = cli("status", "-c", str(config))
    assert "no journal at" in status.stdout  # nothing queued: not even a journal made
    assert cloudfront.requests == []


# ---- --wait --timeout ----------------------------------------------------------------------


def test_wait_timeout_gives_up_saying_the_invalidation_is_still_in_progress(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """An invalidation CloudFront keeps InProgress: `--wait --timeout 2` ends with exit 1 after
    about that long and says what it was still waiting for; the path is not lost."""
    cloudfront.hold(True)
    result = cli("invalidate", "-c", str(config), "--wait", "--timeout", "2", "/h.html")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [e for e in result.stderr.splitlines() if e.startswith("invalidatord:")]
    assert re.fullmatch(
        r"invalidatord: gave up after [23]s \(--timeout\): 1 invalidation\(s\) still InProgress "
        r"at CloudFront; nothing is lost: .*",
        line,
    ), line
    assert received(cloudfront) == {"/h.html"}


def test_wait_timeout_names_an_unreachable_endpoint(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """With the CloudFront endpoint gone and no daemon, `--wait --timeout 3` ends with exit 1
    in one line saying the endpoint could not be reached, and the path stays queued."""
    config = make_config(tmp_path, cloudfront)
    cloudfront.stop()
    result = cli("invalidate", "-c", str(config), "--wait", "--timeout", "3", "/u.html")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [e for e in result.stderr.splitlines() if e.startswith("invalidatord:")]
    assert line.startswith("invalidatord: not submitted: www: CloudFront unreachable"), line
    assert "stay queued" in line
    status = cli("status", "-c", str(config))
    assert status_table(status.stdout)["www"][2] == "1"


def test_wait_timeout_is_checked_as_a_duration() -> None:
    """`--timeout` takes seconds or a duration; anything else is a usage error (exit 2)."""
    result = cli("invalidate", "--wait", "--timeout", "soon", "/a.html")
    assert result.returncode == 2
    assert "--timeout: not a duration: 'soon'" in result.stderr


# ---- status for scripts --------------------------------------------------------------------


def test_status_json_of_a_stopped_daemon_marks_its_figures_as_of_the_last_write(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`status --json` is one JSON object with the table's figures; with no daemon running it
    carries the journal's last write as `as_of`, and the text output says "figures as of"."""
    cloudfront.hold(True)
    assert cli("invalidate", "-c", str(config), "/a.html", "/img/*").returncode == 0
    result = cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    journal = config.parent / "state" / "journal.sqlite"
    assert report["daemon"] == {"running": False, "state_dir": str(config.parent / "state")}
    assert report["as_of"] == max(
        os.stat(f"{journal}{s}").st_mtime for s in ("", "-wal") if os.path.exists(f"{journal}{s}")
    )
    www = report["distributions"]["www"]
    assert (www["id"], www["pending"], www["in_flight"]) == (
        cloudfront.distribution_id,
        0,
        {"files": 1, "wildcards": 1},
    )
    [made] = report["recent"]
    assert (made["state"], made["paths"]) == ("submitted", 2)
    assert report["billed_this_month"] == 2
    text = cli("status", "-c", str(config)).stdout.splitlines()
    assert text[1].startswith("figures as of "), text


def test_status_json_of_a_running_daemon_is_current(running: DaemonProcess, config: Path) -> None:
    """With a daemon running, `status --json` says so and its figures are of now."""
    result = cli("status", "-c", str(config), "--json")
    report = json.loads(result.stdout)
    assert report["daemon"]["running"] is True
    assert "figures as of" not in cli("status", "-c", str(config)).stdout


def test_status_creates_no_state_dir_and_says_there_is_no_journal(
    config: Path, tmp_path: Path
) -> None:
    """`status` on a state_dir that does not exist creates nothing and says there is no
    journal yet (exit 0); --json says `journal: null`."""
    result = cli("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"no journal at {tmp_path / 'state' / 'journal.sqlite'}" in result.stdout
    assert json.loads(cli("status", "-c", str(config), "--json").stdout)["journal"] is None
    assert not (tmp_path / "state").exists()


def test_status_into_a_closed_pipe_prints_no_traceback(
    config: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`status | head` where the reader has gone: no BrokenPipeError traceback, exit 0."""
    assert cli("invalidate", "-c", str(config), "/a.html").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE for certain
    try:
        result = subprocess.run(
            [sys.executable, "-m", "invalidatord", "status", "-c", str(config)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=aws_test_env(),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")
