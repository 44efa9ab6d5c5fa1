"""End to end, one test per way of deploying: `invalidatord run` as a subprocess on real files,
real symlinks and real renames, against the CloudFront emulator. Each test asserts the exact
set of paths CloudFront got for each step, with a barrier (a sentinel file written in the live
tree, waited for at CloudFront) after it: everything before the sentinel was flushed by then.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import emulator_config, make_site, received, running_daemon
from tests.waiting import wait_for

SITE = {
    "index.html": "home v1",
    "about/index.html": "about v1",
    "css/site.css": "body{}",
    "keep.html": "same in every release",
    "old.html": "removed by the next release",
    "page.html": "page v1",
}

_barriers = 0


def mark(cloudfront: CloudFrontEmulator) -> int:
    """A position in what CloudFront got, for `step`."""
    return len(cloudfront.created_paths(cloudfront.distribution_id))


def step(cloudfront: CloudFrontEmulator, live: Path, since: int) -> set[str]:
    """Write a new sentinel in the live tree, wait for it at CloudFront, and return the paths
    of the invalidations created since `since`, less the sentinels (a release that drops or
    brings back an old sentinel invalidates it too)."""
    global _barriers
    _barriers += 1
    name = f"zz-barrier-{_barriers}.txt"
    (live / name).write_text("sentinel")
    wait_for(lambda: f"/{name}" in received(cloudfront), 30, what=f"/{name} at CloudFront")
    new = cloudfront.created_paths(cloudfront.distribution_id)[since:]
    return {p for p in new if not p.startswith("/zz-barrier-")}


def release(directory: Path, files: dict[str, str]) -> Path:
    """A fresh release: every file written anew (new inode, new mtime), as a checkout does."""
    make_site(directory, files)
    return directory


def swap_link(link: Path, target: str) -> None:
    """`ln -sfn TARGET link.tmp && mv -T link.tmp link`: the link replaced in one rename."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def config(tmp_path: Path, root: Path, cloudfront: CloudFrontEmulator, **source: Any) -> Path:
    scfg = {"name": "docroot", "type": "filesystem", "root": str(root), **source}
    return emulator_config(tmp_path, root, cloudfront, extra={"sources": [scfg]})


R2 = {**{k: v for k, v in SITE.items() if k != "old.html"}, "page.html": "page v2", "new.html": "n"}
R2_DIFF = {"/page.html", "/old.html", "/new.html"}


@pytest.mark.parametrize("process", [True, False], ids=["process", "inline"])
def test_capistrano_releases_swap_rollback_and_cleanup(
    tmp_path: Path, cloudfront: CloudFrontEmulator, process: bool
) -> None:
    """`current -> releases/1` swapped to `releases/2` under compare: mtime: building the
    release beside the live one invalidates nothing; the swap invalidates exactly what
    differs (unchanged files have fresh mtimes and inodes); deleting the old release nothing;
    an edit after the swap is seen; a rollback is a diff too."""
    app = tmp_path / "app"
    release(app / "releases/1", SITE)
    current = app / "current"
    current.symlink_to("releases/1")
    cfg = config(tmp_path, current, cloudfront, compare="mtime", watcher_process=process)
    with running_daemon(cfg) as d:
        assert step(cloudfront, current, 0) == set()
        before = mark(cloudfront)
        release(app / "releases/2", R2)  # built beside the live release
        assert step(cloudfront, current, before) == set()
        before = mark(cloudfront)
        swap_link(current, "releases/2")
        swapped = d.wait_event("root_swapped")
        assert step(cloudfront, current, before) == R2_DIFF
        # removed: old.html and the two sentinels written into releases/1
        assert (swapped["added"], swapped["removed"], swapped["changed"]) == (1, 3, 1)
        assert swapped["unchanged"] == 4
        assert swapped["previous"] == str(app / "releases/1")
        assert swapped["link"] == str(current)
        before = mark(cloudfront)
        shutil.rmtree(app / "releases/1")  # the old release cleaned up
        (current / "css/site.css").write_text("body{color:red}")  # an edit in the new one
        assert step(cloudfront, current, before) == {"/css/site.css"}
        before = mark(cloudfront)
        release(app / "releases/3", {**R2, "keep.html": "changed in 3"})
        swap_link(current, "releases/3")
        assert step(cloudfront, current, before) == {"/keep.html", "/css/site.css"}
        before = mark(cloudfront)
        swap_link(current, "releases/2")  # the rollback (releases/2 has the edited css)
        assert step(cloudfront, current, before) == {"/keep.html", "/css/site.css"}
        assert len(d.find("root_swapped")) == 3
        wait_for(lambda: d.health()[0] == 200, 10, what="healthy after the swaps")


def test_git_sync_worktree_swap_with_the_old_worktree_deleted(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """git-sync's `html -> .worktrees/<sha>` swapped by rename and the old worktree deleted
    right after: under compare: content the index's hashes decide, so exactly the changed,
    added and removed pages are invalidated, and the deletion of the old worktree none."""
    top = tmp_path / "git"
    release(top / ".worktrees/aaaa", SITE)
    html = top / "html"
    html.symlink_to(".worktrees/aaaa")
    with running_daemon(config(tmp_path, html, cloudfront, compare="content")) as d:
        d.wait_event("baseline_recorded")
        assert step(cloudfront, html, 0) == set()
        before = mark(cloudfront)
        release(top / ".worktrees/bbbb", R2)
        swap_link(html, ".worktrees/bbbb")
        shutil.rmtree(top / ".worktrees/aaaa")
        assert step(cloudfront, html, before) == R2_DIFF
        before = mark(cloudfront)
        (html / "index.html").write_text("home v3")
        assert step(cloudfront, html, before) == {"/", "/index.html"}


@pytest.mark.parametrize("process", [True, False], ids=["process", "inline"])
def test_a_plain_root_swapped_by_mv(
    tmp_path: Path, cloudfront: CloudFrontEmulator, process: bool
) -> None:
    """`mv html html.old && mv html.new html` under compare: mtime: exactly what differs
    (bytes compared with html.old, found wherever it went), and later edits are seen."""
    html = tmp_path / "html"
    release(html, SITE)
    cfg = config(tmp_path, html, cloudfront, compare="mtime", watcher_process=process)
    with running_daemon(cfg) as d:
        assert step(cloudfront, html, 0) == set()
        before = mark(cloudfront)
        release(tmp_path / "html.new", R2)
        html.rename(tmp_path / "html.old")
        (tmp_path / "html.new").rename(html)
        d.wait_event("root_swapped")
        assert step(cloudfront, html, before) == R2_DIFF
        before = mark(cloudfront)
        (tmp_path / "html.old" / "page.html").write_text("the old tree is not served")
        (html / "about/index.html").write_text("about v2")
        assert step(cloudfront, html, before) == {"/about/", "/about/index.html"}


def test_a_plain_root_deleted_then_replaced_reports_the_gap(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`rm -rf html && mv html.new html` under compare: content: while the root is missing
    /healthz is 503 naming it and the gauge says so; once it is back, exactly what differs
    is invalidated (not every page), health is 200 again and later edits are seen."""
    html = tmp_path / "html"
    release(html, SITE)
    with running_daemon(config(tmp_path, html, cloudfront, compare="content")) as d:
        d.wait_event("baseline_recorded")
        assert step(cloudfront, html, 0) == set()
        before = mark(cloudfront)
        release(tmp_path / "html.new", R2)
        shutil.rmtree(html)

        def missing() -> bool:
            code, body = d.health()
            return code == 503 and "is missing" in body.get("sources", {}).get("docroot", "")

        wait_for(missing, 10, what="/healthz naming the missing root")
        assert d.metric("invalidatord_source_root_missing", source="docroot") == 1
        # Not a wait for a condition: the gap itself, made longer than the quiet window
        # (300 ms), during which the deletions must be held, not flushed.
        time.sleep(0.5)
        (tmp_path / "html.new").rename(html)
        d.wait_event("source_root_returned")
        assert step(cloudfront, html, before) == R2_DIFF
        wait_for(lambda: d.health()[0] == 200, 10, what="healthy again")
        before = mark(cloudfront)
        (html / "new.html").write_text("n2")
        assert step(cloudfront, html, before) == {"/new.html"}


def test_a_static_site_rebuild_invalidates_only_what_changed(
    tmp_path: Path, cloudfront: CloudFrontEmulator
) -> None:
    """A generator rewrites all 500 pages by temp file + rename (new inode, new mtime, as
    rsync does) with 3 changed, 1 added, 1 deleted: under compare: content exactly those
    five are invalidated."""
    html = tmp_path / "public"
    pages = {f"posts/p{i:03}.html": f"post {i}" for i in range(500)}
    release(html, pages)
    with running_daemon(config(tmp_path, html, cloudfront, compare="content")) as d:
        d.wait_event("baseline_recorded")
        assert step(cloudfront, html, 0) == set()
        before = mark(cloudfront)
        rebuilt = dict(pages)
        for i in (7, 250, 499):
            rebuilt[f"posts/p{i:03}.html"] = f"post {i} edited"
        del rebuilt["posts/p100.html"]
        rebuilt["posts/p500.html"] = "post 500"
        for rel, text in rebuilt.items():
            target = html / rel
            temp = target.with_name(f".{target.name}.Ab12Cd")
            temp.write_text(text)
            temp.rename(target)
        (html / "posts/p100.html").unlink()
        assert step(cloudfront, html, before) == {
            "/posts/p007.html",
            "/posts/p250.html",
            "/posts/p499.html",
            "/posts/p100.html",
            "/posts/p500.html",
        }
        accepted = d.find("changes_accepted", lambda e: e.get("unchanged", 0) > 0)
        assert sum(e["unchanged"] for e in accepted) == 496
