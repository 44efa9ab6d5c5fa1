"""End to end: deploy fences (`hold_while`, `.git/index.lock`). `invalidatord run` as a
subprocess on a real document root, a deploy written file by file more slowly than the quiet
window, and the CloudFront emulator counting the CreateInvalidation requests it gets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import emulator_config, make_site, received, running_daemon
from tests.waiting import wait_for

#: files of the deploy, written `_GAP` seconds apart: 1.8 s in all, six quiet windows
_PAGES = [f"releases/page{i}.html" for i in range(7)]
_GAP = 0.3
_QUIET = "200ms"


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    make_site(root, {"index.html": "home", "releases/old.html": "old", ".git/HEAD": "ref"})
    return root


def _deploy(root: Path) -> None:
    for rel in _PAGES:
        (root / rel).write_text(f"v2 of {rel}")
        time.sleep(_GAP)  # the point of the test: a deploy slower than the quiet window


def _created(cloudfront: CloudFrontEmulator) -> list[tuple[str, ...]]:
    return [inv.paths for inv in cloudfront.invalidations(cloudfront.distribution_id)]


@pytest.mark.parametrize("marker", [".deploying", ".git/index.lock"])
def test_a_fenced_deploy_goes_as_one_request(
    tmp_path: Path, cloudfront: CloudFrontEmulator, marker: str
) -> None:
    """While the marker exists (a `hold_while` path, or git's index lock with no config at
    all), a deploy spread over many quiet windows is held and sent as one CreateInvalidation
    of exactly its pages; the marker's own path is never sent."""
    root = _site(tmp_path)
    extra = {"sources": [{"name": "docroot", "type": "filesystem", "root": str(root)}]}
    if marker == ".deploying":
        extra["sources"][0]["hold_while"] = [".deploying"]
    config = emulator_config(tmp_path, root, cloudfront, quiet=_QUIET, max_delay="30s", extra=extra)
    with running_daemon(config) as daemon:
        daemon.wait_event("baseline_recorded")
        (root / marker).write_text("")
        _deploy(root)
        held = daemon.wait_event("batch_held")
        assert held["marker"] == marker
        assert _created(cloudfront) == []  # everything written so far is still held
        (root / marker).unlink()
        want = {f"/{p}" for p in _PAGES}
        wait_for(lambda: received(cloudfront) >= want, 15, what="the deploy at CloudFront")
        daemon.wait_event("batch_released")
        # a later edit proves that nothing else was waiting (and that edits flow again)
        (root / "index.html").write_text("home v2")
        wait_for(lambda: len(_created(cloudfront)) == 2, 15, what="the later edit")
        first, second = reversed(_created(cloudfront))
    assert set(first) == want
    assert set(second) == {"/", "/index.html"}


def test_without_a_marker_the_same_deploy_goes_as_several_requests(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """The comparison that shows what the fence buys: the same slow deploy with no marker
    becomes one request per quiet window (more than one), and every page still arrives."""
    root = _site(tmp_path)
    extra = {
        "sources": [
            {
                "name": "docroot",
                "type": "filesystem",
                "root": str(root),
                "hold_while": [".deploying"],
            }
        ]
    }
    config = emulator_config(tmp_path, root, cloudfront, quiet=_QUIET, max_delay="30s", extra=extra)
    with running_daemon(config) as daemon:
        daemon.wait_event("baseline_recorded")
        _deploy(root)
        want = {f"/{p}" for p in _PAGES}
        wait_for(lambda: received(cloudfront) >= want, 15, what="the deploy at CloudFront")
        requests = _created(cloudfront)
        assert not daemon.find("batch_held")
    assert len(requests) > 1
    assert {p for paths in requests for p in paths} == want
    print(f"spread deploy of {len(_PAGES)} files without a fence: {len(requests)} requests")


def test_a_stale_marker_holds_no_longer_than_max_delay(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A marker a failed deploy left behind delays a change by max_delay, not forever: the
    change is sent after max_delay with a warning naming the marker, and the marker itself
    is never invalidated."""
    root = _site(tmp_path)
    extra = {
        "sources": [
            {
                "name": "docroot",
                "type": "filesystem",
                "root": str(root),
                "hold_while": [".deploying"],
            }
        ]
    }
    config = emulator_config(tmp_path, root, cloudfront, quiet=_QUIET, max_delay="3s", extra=extra)
    with running_daemon(config) as daemon:
        daemon.wait_event("baseline_recorded")
        (root / ".deploying").write_text("left behind")
        started = time.monotonic()
        (root / "index.html").write_text("home v2")
        wait_for(lambda: received(cloudfront), 15, what="the held change at CloudFront")
        waited = time.monotonic() - started
        expired = daemon.wait_event("batch_hold_expired")
        (root / ".deploying").write_text("touched again")
        (root / "releases/old.html").write_text("old v2")
        wait_for(lambda: len(_created(cloudfront)) == 2, 15, what="the second held change")
    assert expired["marker"] == ".deploying"
    assert 2.5 <= waited < 3.0 + 4.0, waited  # held (not sent after the 0.2 s quiet), bounded
    assert received(cloudfront) == {"/", "/index.html", "/releases/old.html"}
