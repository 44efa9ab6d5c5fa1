"""What an operator meets on a bad day: every mistake gets one line and an exit code, never a
traceback. The CLI runs as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, aws_test_env, emulator_config, received, running_daemon
from tests.waiting import wait_for


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=env or aws_test_env(),
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def config_with(tmp_path: Path, **overrides: object) -> Path:
    """A minimal valid config in tmp_path (a filesystem source on tmp_path/www)."""
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    cfg: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "aws": {"endpoint_url": "http://127.0.0.1:1", "region": "us-east-1"},
        "distributions": {"www": {"id": "E2EXAMPLE12345"}},
        "sources": [
            {
                "name": "docroot",
                "type": "filesystem",
                "root": str(root),
                "ignore": [".git/", "*.tmp"],
            }
        ],
        "rules": [{"match": "**", "urls": ["/{path}"]}],
        "metrics": {"listen": None},
        "log": {"format": "json"},
    }
    cfg.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be created in: a read-only tmpfs when run as root (root ignores
    permission bits), else mode 0555."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr!r}")
        yield target
        subprocess.run(["umount", str(target)], check=True)
    else:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)


def unusable_state_dirs(tmp_path: Path, read_only: Path) -> dict[str, tuple[str, str]]:
    """name -> (state_dir, what the line must say)."""
    (tmp_path / "a-file").write_text("x")
    return {
        "proc": ("/proc/nope", "state_dir /proc/nope: cannot be created in /proc"),
        "file": (str(tmp_path / "a-file"), "not a directory"),
        "under-a-file": (str(tmp_path / "a-file" / "state"), "a-file is not a directory"),
        "read-only": (str(read_only / "state"), "cannot be created in"),
    }


@pytest.mark.parametrize("case", ["proc", "file", "under-a-file", "read-only"])
def test_run_and_check_report_a_state_dir_that_cannot_be_used(
    case: str, tmp_path: Path, read_only_dir: Path
) -> None:
    """`run` with a state_dir that cannot be created or written exits 1 with one line naming
    it; `check` reports the same line (exit 2) instead of calling the config valid."""
    state_dir, says = unusable_state_dirs(tmp_path, read_only_dir)[case]
    config = config_with(tmp_path, state_dir=state_dir)
    run = cli("run", "-c", str(config))
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"invalidatord: state_dir {state_dir}: ")
    assert says in run.stderr
    check = cli("check", "-c", str(config))
    assert check.returncode == 2, check.stdout + check.stderr
    assert "valid" not in check.stdout
    assert check.stderr == f"{config}: {run.stderr.removeprefix('invalidatord: ')}"


@pytest.mark.parametrize("command", ["invalidate", "status"])
def test_other_commands_report_an_unusable_state_dir_in_one_line(
    command: str, tmp_path: Path
) -> None:
    """`invalidate` and `status` on a state_dir that is a file: one line, exit 1."""
    (tmp_path / "a-file").write_text("x")
    config = config_with(tmp_path, state_dir=str(tmp_path / "a-file"))
    args = ["/index.html"] if command == "invalidate" else []
    result = cli(command, "-c", str(config), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "a-file" in result.stderr


# ---- map ---------------------------------------------------------------------------------------


def test_map_says_which_ignore_pattern_drops_a_path(tmp_path: Path) -> None:
    """`map` honours the source's ignore list as the daemon does: an ignored path prints no
    URL, and a line names the pattern; a path the list does not match maps as before."""
    config = config_with(tmp_path)
    result = cli("map", "-c", str(config), ".git/HEAD", "x.tmp", "a.html", "deep/.git/config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "www /a.html\n"
    assert result.stderr.splitlines() == [
        "# .git/HEAD: ignored by sources[0].ignore '.git/'",
        "# x.tmp: ignored by sources[0].ignore '*.tmp'",
        "# deep/.git/config: ignored by sources[0].ignore '.git/'",
    ]


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("", "'': an empty path"),
        ("../etc/passwd", "../etc/passwd: outside the source root"),
        ("a/../../x", "a/../../x: outside the source root"),
        ("/etc/passwd", "/etc/passwd is not under the source root"),
    ],
)
def test_map_refuses_a_path_outside_the_root_with_exit_2(
    path: str, says: str, tmp_path: Path
) -> None:
    """An empty path or one that leaves the source root is a usage error: exit 2, one line,
    and nothing printed for the good paths given with it."""
    config = config_with(tmp_path)
    result = cli("map", "-c", str(config), "a.html", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"invalidatord: {says}")
    assert result.stderr.count("\n") == 1


# ---- emulator ----------------------------------------------------------------------------------


def test_emulator_command_serves_cloudfront_sqs_and_s3_until_sigterm(tmp_path: Path) -> None:
    """`invalidatord emulator --port 0` prints an endpoint, a distribution id and the dummy
    credentials; boto3 with exactly those creates an invalidation (InProgress), an SQS queue
    and an S3 bucket there; SIGTERM stops it with exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "invalidatord", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=aws_test_env(),
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not any(line.startswith("  export ") for line in lines):
            line = proc.stdout.readline()
            assert line, f"emulator exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
        endpoint = lines[0].rsplit(" ", 1)[1]
        assert endpoint.startswith("http://127.0.0.1:")
        assert f"    endpoint_url: {endpoint}" in lines
        [dist_id] = [ln.split(": ")[1] for ln in lines if ln.startswith("      id: ")]
        exports = dict(kv.split("=") for kv in lines[-1].split()[1:])
        assert set(exports) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}

        import boto3

        session = boto3.session.Session(
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            region_name=exports["AWS_DEFAULT_REGION"],
        )
        cloudfront = session.client("cloudfront", endpoint_url=endpoint)
        made = cloudfront.create_invalidation(
            DistributionId=dist_id,
            InvalidationBatch={"Paths": {"Quantity": 1, "Items": ["/x"]}, "CallerReference": "a"},
        )
        assert made["Invalidation"]["Status"] == "InProgress"
        queue = session.client("sqs", endpoint_url=endpoint).create_queue(QueueName="events")
        assert queue["QueueUrl"].endswith("/events")
        s3 = session.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="assets")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["assets"]
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0
    assert proc.stderr is not None
    assert "emulator stopped: 1 invalidation(s) created" in proc.stderr.read()


def test_emulator_on_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A port already in use: one line naming it and what to do, exit 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("emulator", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == (
        f"invalidatord: emulator: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with --port, or --port 0 for a free one)\n"
    )


# ---- credentials -------------------------------------------------------------------------------


def no_credentials_env() -> dict[str, str]:
    """An environment where boto3 finds no credentials by any way (instance metadata off: it
    is not on loopback)."""
    env = {
        k: v
        for k, v in aws_test_env().items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def test_run_without_credentials_says_which_ways_were_tried_and_exits_1(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """No credentials at all (against the emulator, so nothing else can fail): `run` exits 1
    with one line naming the ways tried, the files it read, and what to do under systemd."""
    root = tmp_path / "www"
    root.mkdir()
    config = emulator_config(tmp_path, root, cloudfront)
    result = subprocess.run(
        [sys.executable, "-m", "invalidatord", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        env=no_credentials_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("invalidatord:")]
    assert line.startswith("invalidatord: no AWS credentials found: tried AWS_ACCESS_KEY_ID/")
    for named in (os.devnull, "AWS_WEB_IDENTITY_TOKEN_FILE", "instance role", "LoadCredential="):
        assert named in line, line
    assert "Traceback" not in result.stderr
    assert cloudfront.requests == []


def test_a_credentials_file_named_by_the_environment_is_enough(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """The systemd drop-in's way (LoadCredential= puts a credentials file in %d and
    AWS_SHARED_CREDENTIALS_FILE names it): with nothing else, the daemon comes up."""
    root = tmp_path / "www"
    root.mkdir()
    config = emulator_config(tmp_path, root, cloudfront)
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir(mode=0o700)
    (creds_dir / "aws").write_text(
        "[default]\naws_access_key_id = fromfile\naws_secret_access_key = fromfile\n"
    )
    env = no_credentials_env() | {"AWS_SHARED_CREDENTIALS_FILE": str(creds_dir / "aws")}
    with running_daemon(config, env=env) as proc:
        assert proc.health()[0] == 200
    assert {r.op for r in cloudfront.requests} >= {"ListInvalidations"}


# ---- dry run -----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dry_run_previews_catch_up_beside_a_daemon_and_leaves_the_work_to_it(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`run --dry-run` on a config whose daemon is stopped: its catch-up, judged against the
    real journal's index, logs `would_submit` for exactly the file changed meanwhile, never
    batch_submitted or Completed, and writes nothing to the journal. The real daemon, started
    beside it on the configured metrics port, still finds and submits that file itself."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.html").write_text("a")
    (root / "b.html").write_text("b")
    port = free_port()
    config = emulator_config(
        tmp_path, root, cloudfront, extra={"metrics": {"listen": f"127.0.0.1:{port}"}}
    )
    with running_daemon(config):
        pass  # the first start records the baseline
    (root / "b.html").write_text("b, changed while stopped")
    journal = tmp_path / "state" / "journal.sqlite"
    before = journal.read_bytes()

    dry = DaemonProcess("run", "-c", str(config), "--dry-run").start()
    try:
        ready = dry.wait_event("daemon_ready")
        assert ready["dry_run"] is True
        assert ready["health"] is None  # no port: the configured one belongs to the daemon
        [preview] = [dry.wait_event("would_submit")]
        assert preview["paths"] == ["/b.html"]
        assert journal.read_bytes() == before
        with running_daemon(config) as real:
            real.wait_event("batch_submitted")
            assert received(cloudfront) == {"/b.html"}
            (root / "c.html").write_text("c")
            dry.wait_event("would_submit", lambda e: e["paths"] == ["/c.html"])
            wait_for(lambda: "/c.html" in received(cloudfront), 30, what="/c.html sent")
    finally:
        assert dry.stop() == 0
    logged = {e["event"] for e in dry.events}
    assert not logged & {"batch_submitted", "invalidation_completed"}
    assert not [e for e in dry.events if "Completed" in str(e)]
    assert received(cloudfront) == {"/b.html", "/c.html"}


def test_dry_run_serves_metrics_only_when_asked(tmp_path: Path) -> None:
    """`--dry-run --listen 127.0.0.1:0` serves /livez; a bad --listen is exit 2."""
    config = config_with(tmp_path)
    bad = cli("run", "-c", str(config), "--dry-run", "--listen", "nope")
    assert bad.returncode == 2
    assert bad.stderr.startswith("invalidatord: --listen nope: ")
    dry = DaemonProcess("run", "-c", str(config), "--dry-run", "--listen", "127.0.0.1:0").start()
    try:
        dry.health_url = str(dry.wait_event("daemon_ready")["health"])
        assert dry.health("/livez")[0] == 200
    finally:
        assert dry.stop() == 0


def test_build_info_names_the_version_and_the_commit(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """invalidatord_build_info carries the version and the commit ($INVALIDATORD_COMMIT, as an
    image build sets it)."""
    from invalidatord import __version__

    root = tmp_path / "www"
    root.mkdir()
    config = emulator_config(tmp_path, root, cloudfront)
    env = aws_test_env() | {"INVALIDATORD_COMMIT": "0123abc"}
    with running_daemon(config, env=env) as proc:
        assert proc.metric("invalidatord_build_info", version=__version__, commit="0123abc") == 1


@pytest.mark.parametrize(
    "command",
    ["run", "check", "map", "plan", "invalidate", "status", "discard", "emulator", "demo"],
)
def test_every_command_help_has_a_description_and_an_example(command: str) -> None:
    """`invalidatord COMMAND --help` describes the command and shows an example of it."""
    result = cli(command, "--help")
    assert result.returncode == 0
    usage, description, *_ = result.stdout.split("\n\n")
    assert usage.startswith(f"usage: invalidatord {command}")
    assert description.endswith(".")
    assert f"example:\n  invalidatord {command} " in result.stdout
