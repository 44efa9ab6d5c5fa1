"""Health that tells the truth: a journal that cannot commit and paths CloudFront refused are
reported by /healthz, the metrics and `status`, through a real daemon on a real (full) disk."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import aws_test_env, emulator_config, received, running_daemon
from tests.waiting import wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (root only; skipped where mounting is refused)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the filesystem holding `directory` to the last byte; returns the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_turns_health_503_and_the_changes_go_once_there_is_room(
    tmp_path: Path, small_disk: Path, cloudfront: CloudFrontEmulator
) -> None:
    """With state_dir on a full disk, accepting changes fails: /healthz answers 503 naming
    the journal, `invalidatord_journal_writable` is 0 and the failures are counted (the old
    daemon said 200 and `pending: 0`). Once there is room the same changes are invalidated
    and health is 200 again."""
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "index.html").write_text("home")
    config = emulator_config(
        tmp_path, docroot, cloudfront, quiet="100ms", extra={"state_dir": str(small_disk)}
    )
    with running_daemon(config) as proc:
        filler = _fill(small_disk)
        names = [f"page-{i:04d}-{'x' * 80}.html" for i in range(1500)]
        for name in names:
            (docroot / name).write_text("new")
        wait_for(lambda: proc.health()[0] == 503, 30, what="/healthz 503")
        _, body = proc.health()
        assert body["journal"].startswith("cannot commit accepted changes")
        assert any(r.startswith("journal: ") for r in body["reasons"])
        assert proc.metric("invalidatord_journal_writable") == 0
        assert proc.metric("invalidatord_accept_failures_total", source="docroot") >= 1
        filler.unlink()
        wait_for(lambda: proc.health()[0] == 200, 30, what="/healthz 200 again")
        wait_for(
            lambda: {f"/{n}" for n in names} <= received(cloudfront), 60, what="every page sent"
        )
        assert proc.metric("invalidatord_journal_writable") == 1
        assert proc.find("accept_recovered")


def test_paths_cloudfront_refused_are_counted_in_health_metrics_and_status(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A path CloudFront answers InvalidArgument for is set aside: /healthz's `set_aside`,
    `invalidatord_paths_set_aside` and `invalidatord status` count it (it used to vanish
    from every count), while its neighbour is sent."""
    docroot = tmp_path / "www"
    docroot.mkdir()
    config = emulator_config(tmp_path, docroot, cloudfront, quiet="100ms")
    cloudfront.reject_path("/bad.html")
    with running_daemon(config) as proc:
        (docroot / "bad.html").write_text("b")
        (docroot / "good.html").write_text("g")
        wait_for(lambda: proc.find("path_rejected"), 30, what="the rejection")
        wait_for(lambda: "/good.html" in received(cloudfront), 30, what="/good.html sent")
        wait_for(lambda: proc.health()[1].get("set_aside") == 1, 15, what="set_aside 1")
        assert proc.metric("invalidatord_paths_set_aside", distribution="www") == 1
        done = subprocess.run(
            [sys.executable, "-m", "invalidatord", "status", "-c", str(config)],
            capture_output=True,
            text=True,
            env=aws_test_env() | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
            timeout=60,
            check=True,
        )
        assert "set aside" in done.stdout
        assert "www: 1 path(s)" in done.stdout
