"""End to end: fs.inotify.max_user_watches reached while the daemon runs. A deploy adds more
directories than watches are left; the daemon names the sysctl, covers the new directories by
rescans (so every change under them is still invalidated), says so in /healthz, and watches
them once the limit allows.

The limit is machine-wide (per user): the test lowers it to this user's current usage plus a
small margin, for as few seconds as it can, and always restores it. Set
INVALIDATORD_SKIP_SYSCTL_TESTS=1 to skip it on a machine where that must not happen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import emulator_config, make_site, received, running_daemon
from tests.waiting import wait_for

MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
_MARGIN = 5
_NEW_DIRS = 30


def _watches_in_use(uid: int) -> int:
    """inotify watches held by processes of `uid` (the limit is per user), from fdinfo."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    total += sum(1 for line in info if line.startswith("inotify wd:"))
    return total


@pytest.fixture
def watch_limit() -> Iterator[Path]:
    """The sysctl file, writable, restored to its value whatever happens."""
    if os.environ.get("INVALIDATORD_SKIP_SYSCTL_TESTS"):
        pytest.skip("INVALIDATORD_SKIP_SYSCTL_TESTS is set")
    try:
        original = MAX_USER_WATCHES.read_text()
        MAX_USER_WATCHES.write_text(original)
    except OSError as exc:
        pytest.skip(
            f"cannot write {MAX_USER_WATCHES} ({exc.strerror}): needs root, not in a container"
        )
    try:
        yield MAX_USER_WATCHES
    finally:
        MAX_USER_WATCHES.write_text(original)


def test_directories_added_past_the_watch_limit_are_still_covered(
    tmp_path: Path, cloudfront: CloudFrontEmulator, watch_limit: Path
) -> None:
    """With the limit lowered to usage + 5, a deploy adds 30 directories: one log line names
    fs.inotify.max_user_watches, its value and the value needed; /healthz reports the source
    not fully watching; every file under the new directories (including one written while
    they were unwatched) is invalidated; once the limit is restored they are watched again
    and a later file there is invalidated too."""
    original = int(watch_limit.read_text())
    root = tmp_path / "www"
    make_site(root, {"home.html": "home"})
    extra = {
        "sources": [
            {"name": "docroot", "type": "filesystem", "root": str(root), "poll_interval": "500ms"}
        ]
    }
    config = emulator_config(tmp_path, root, cloudfront, quiet="100ms", extra=extra)
    want = {f"/d{i:02d}/page.html" for i in range(_NEW_DIRS)} | {"/d29/late.html"}
    with running_daemon(config) as daemon:
        daemon.wait_event("baseline_recorded")
        lowered = _watches_in_use(os.getuid()) + _MARGIN
        try:
            watch_limit.write_text(str(lowered))
            for i in range(_NEW_DIRS):
                make_site(root, {f"d{i:02d}/page.html": f"page {i}"})
            limit = daemon.wait_event("inotify_watch_limit", timeout=15)
            # Other processes of this user may free watches at any time (a daemon of an
            # earlier test still exiting): hold the limit at what is in use now, so the new
            # directories stay unwatched while the rescans are proven.
            watch_limit.write_text(str(_watches_in_use(os.getuid())))
            (root / "d29/late.html").write_text("written while unwatched")
            # health is sampled (the watcher process reports twice a second)
            status, body = wait_for(
                lambda: (h := daemon.health())[0] == 503 and h, 10, what="/healthz 503"
            )
            wait_for(
                lambda: "/d29/late.html" in received(cloudfront),
                15,
                what="a file in an unwatched directory, found by its rescan",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.transcript()}") from None
        finally:
            watch_limit.write_text(str(original))
        assert limit["sysctl"] == "fs.inotify.max_user_watches"
        assert limit["current"] == lowered
        assert limit["needed"] > lowered
        assert "fs.inotify.max_user_watches" in limit["message"]
        assert status == 503
        assert "not fully watching" in str(body), body
        wait_for(lambda: received(cloudfront) >= want, 20, what="every new page at CloudFront")
        daemon.wait_event("inotify_watch_restored", timeout=15)
        wait_for(lambda: daemon.health()[0] == 200, 10, what="/healthz 200 again")
        (root / "d29/after.html").write_text("watched again")
        wait_for(lambda: "/d29/after.html" in received(cloudfront), 20, what="a later change")
    assert received(cloudfront) == want | {"/d29/after.html"}
