"""Shared fixtures: a sealed AWS environment and the faithful CloudFront emulator.

- `aws_env`: dummy credentials, region us-east-1, no profile, empty credential and config
  files, no instance metadata lookups. Nothing a test does can reach a real AWS account.
- `cloudfront`: a started `CloudFrontEmulator` (127.0.0.1, free port) with one distribution,
  `cloudfront.distribution_id`; stopped after the test. Its `endpoint_url` also serves S3, SQS,
  SNS, EventBridge and STS (moto). About 50 ms per test once moto is imported.
- `cloudfront_factory`: `cloudfront_factory(in_progress_seconds=..., clock=...)` makes more
  emulators like that (each with one distribution); all are stopped after the test.
- `daemons`: a `tests.harness.Daemons`; `daemons.start(config)` starts `invalidatord run` and
  waits until it is ready; every daemon it started is SIGKILLed after the test. (One daemon for
  a block or a fixture: `with tests.harness.running_daemon(config) as proc:`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import Daemons

#: Environment variables that could point boto3 at real credentials or endpoints.
_AWS_LEAKS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CA_BUNDLE",
    "MOTO_ACCOUNT_ID",
)

EmulatorFactory = Callable[..., CloudFrontEmulator]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Dummy credentials (`testing`), region us-east-1, and nothing real to fall back on."""
    import os

    for name in list(os.environ):
        if name in _AWS_LEAKS or name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    empty: Path = tmp_path_factory.mktemp("aws")
    (empty / "credentials").write_text("")
    (empty / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Loopback-only machines would wait for 169.254.169.254 to time out.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def cloudfront_factory(aws_env: None) -> Iterator[EmulatorFactory]:
    """Makes started emulators, each with one distribution; stops them all afterwards."""
    made: list[CloudFrontEmulator] = []

    def make(**kwargs: Any) -> CloudFrontEmulator:
        emulator = CloudFrontEmulator(**kwargs)
        made.append(emulator)
        emulator.start()
        emulator.create_distribution("test distribution")
        return emulator

    yield make
    for emulator in reversed(made):
        emulator.stop()


@pytest.fixture
def cloudfront(cloudfront_factory: EmulatorFactory) -> CloudFrontEmulator:
    """A started emulator with one distribution (`cloudfront.distribution_id`)."""
    return cloudfront_factory()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Starts ready daemons (`daemons.start(config)`); SIGKILLs those still running afterwards."""
    started = Daemons()
    yield started
    started.kill_all()
