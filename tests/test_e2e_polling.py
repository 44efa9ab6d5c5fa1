"""End to end: `watcher: polling` (NFS/EFS, overlay filesystems). `invalidatord run` as a
subprocess polls a real document root by diffing it against the catch-up index; the CloudFront
emulator gets exactly the paths created, modified and deleted between two polls."""

from __future__ import annotations

import os
from pathlib import Path

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import emulator_config, make_site, received, running_daemon
from tests.waiting import wait_for


def test_polling_finds_creates_modifies_and_deletes_between_polls(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Changes made between polls (a same-size rewrite, a create in a new folder, a delete,
    a rename) are invalidated exactly, and nothing unchanged is; the watcher is "polling"."""
    root = tmp_path / "www"
    files = {f"d{i}/p{j}.html": f"page {i}.{j}" for i in range(20) for j in range(25)}
    make_site(root, files)
    extra = {
        "sources": [
            {
                "name": "docroot",
                "type": "filesystem",
                "root": str(root),
                "watcher": "polling",
                "poll_interval": "300ms",
            }
        ]
    }
    config = emulator_config(tmp_path, root, cloudfront, quiet="100ms", extra=extra)
    with running_daemon(config) as daemon:
        assert daemon.wait_event("source_started")["watcher"] == "polling"
        assert daemon.wait_event("baseline_recorded")["files"] == 500
        (root / "d3/p7.html").write_text("page 3.X")  # same size: mtime/ctime tell
        (root / "d19/p0.html").unlink()
        (root / "new").mkdir()
        (root / "new/fresh.html").write_text("fresh")
        os.rename(root / "d5/p5.html", root / "d5/moved.html")
        want = {
            "/d3/p7.html",
            "/d19/p0.html",
            "/new/fresh.html",
            "/d5/p5.html",
            "/d5/moved.html",
        }
        wait_for(lambda: received(cloudfront) >= want, 20, what="the changes at CloudFront")
        # a second round after that proves nothing else was found in between
        (root / "d0/p0.html").write_text("page 0.X")
        wait_for(lambda: "/d0/p0.html" in received(cloudfront), 20, what="the second round")
        assert daemon.find("watcher_overflow") == []
    assert received(cloudfront) == want | {"/d0/p0.html"}
