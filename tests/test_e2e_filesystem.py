"""End to end: `invalidatord run` as a subprocess on a real document root (real inotify), talking
over HTTP to the CloudFront emulator. Each test asserts the exact set of paths CloudFront got.

The "barrier" idiom: after the changes under test, touch a sentinel file and wait until CloudFront
has its path too. Everything before the sentinel was flushed by then, so comparing the exact set
proves both that the expected paths arrived and that nothing else did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from invalidatord.planner import covers
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import (
    DaemonProcess,
    barrier,
    emulator_config,
    make_site,
    received,
    running_daemon,
)
from tests.waiting import wait_for


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    make_site(
        root,
        {
            "index.html": "home",
            "about/index.html": "about",
            "css/site.css": "body{}",
            "old.html": "old",
            "img/a.png": "png",
            "page.html": "page v1",
        },
    )
    return root


@pytest.fixture
def daemon(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> Iterator[DaemonProcess]:
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
    )
    with running_daemon(config) as proc:
        yield proc


def test_first_start_records_a_baseline_and_invalidates_nothing(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """The very first start remembers the tree; only later changes are invalidated."""
    baseline = daemon.wait_event("baseline_recorded")
    assert baseline["files"] == 6
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {"/zz-sentinel.txt"}


def test_edits_creates_deletes_and_renames(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """Each kind of change becomes exactly the URL paths its rules give; index.html two."""
    (docroot / "css/site.css").write_text("body{color:red}")
    (docroot / "new.html").write_text("new")
    (docroot / "old.html").unlink()
    (docroot / "img/a.png").rename(docroot / "img/b.png")
    (docroot / "about/index.html").write_text("about v2")
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {
        "/css/site.css",
        "/new.html",
        "/old.html",
        "/img/a.png",
        "/img/b.png",
        "/about/",
        "/about/index.html",
        "/zz-sentinel.txt",
    }


def test_rsync_style_temp_file_and_rename(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """rsync writes `.page.html.Ab12Cd` and renames it over page.html: one change, page.html."""
    temp = docroot / ".page.html.Ab12Cd"
    temp.write_text("page v2")
    temp.rename(docroot / "page.html")
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {"/page.html", "/zz-sentinel.txt"}


def test_vim_style_save(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """vim's 4913 probe, `page.html~` backup and `.page.html.swp`: exactly one change."""
    probe = docroot / "4913"
    probe.write_text("")
    probe.unlink()
    swap = docroot / ".page.html.swp"
    swap.write_text("swap")
    (docroot / "page.html").rename(docroot / "page.html~")
    (docroot / "page.html").write_text("page v2")
    swap.write_text("swap 2")
    (docroot / "page.html~").unlink()
    swap.unlink()
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {"/page.html", "/zz-sentinel.txt"}


def test_special_character_names(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """File names are encoded the way CloudFront wants, raw bytes of non-UTF-8 names too."""
    names = {
        "red flower.jpg": "/red%20flower.jpg",
        "caf\u00e9.html": "/caf%C3%A9.html",  # NFC
        "cafe\u0301.html": "/cafe%CC%81.html",  # NFD: bytes as on disk, no normalisation
        "100%.txt": "/100%25.txt",
        "[x].html": "/%5Bx%5D.html",
        "a#b.html": "/a%23b.html",
        "q?.html": "/q%3F.html",
        "a+b&c=d;e.html": "/a+b&c=d;e.html",
        "~tilde.html": "/%7Etilde.html",
        "sp ace/x y.html": "/sp%20ace/x%20y.html",
    }
    for name in names:
        make_site(docroot, {name: "x"})
    with open(os.path.join(os.fsencode(docroot), b"caf\xe9-latin1.html"), "wb") as f:
        f.write(b"x")
    barrier(cloudfront, docroot)
    assert received(cloudfront) == {
        *names.values(),
        "/caf%E9-latin1.html",
        "/zz-sentinel.txt",
    }


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_checkout_of_another_branch(tmp_path: Path, cloudfront: CloudFrontEmulator) -> None:
    """A `git checkout` inside the root invalidates the files it changed, never `.git/`."""
    root = tmp_path / "repo"
    make_site(root, {"a.html": "a1", "b.html": "b1", "same.html": "same"})

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=root,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "one")
    git("checkout", "-qb", "other")
    (root / "a.html").write_text("a2")
    (root / "b.html").unlink()
    (root / "c.html").write_text("c")
    git("add", "-A")
    git("commit", "-qm", "two")
    git("checkout", "-q", "main")

    config = emulator_config(
        tmp_path,
        root,
        cloudfront,
    )
    with running_daemon(config):
        git("checkout", "-q", "other")
        barrier(cloudfront, root)
        assert received(cloudfront) == {"/a.html", "/b.html", "/c.html", "/zz-sentinel.txt"}


def test_a_burst_of_5000_files_is_a_handful_of_requests(
    daemon: DaemonProcess, cloudfront: CloudFrontEmulator, docroot: Path
) -> None:
    """5,000 new files in 50 directories reach CloudFront in at most 5 CreateInvalidation calls."""
    expected = set()
    for d in range(50):
        folder = docroot / f"deploy/d{d:02}"
        folder.mkdir(parents=True)
        for i in range(100):
            (folder / f"f{i:03}.html").write_text("x")
            expected.add(f"/deploy/d{d:02}/f{i:03}.html")
    wait_for(lambda: expected <= received(cloudfront), 60, what="all 5,000 paths")
    creates = [r for r in cloudfront.requests if r.op == "CreateInvalidation" and r.status == 201]
    assert len(creates) <= 5, [len(r.paths) for r in creates]
    assert received(cloudfront) == expected


def test_a_deploy_of_5000_files_goes_as_wildcards_only(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """With the cost model (the tree is known), 5,000 new files in 50 directories go as
    wildcards only, every file covered: `/deploy/*` for what had arrived when the first batch
    was planned (nothing unchanged under it then), per-directory wildcards for any that
    arrived later (a second `/deploy/*` would evict the first part again)."""
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        quiet="1s",
        extra={"invalidation": {"collapse_threshold": 100}},
    )
    with running_daemon(config):
        for d in range(50):
            folder = docroot / f"deploy/d{d:02}"
            folder.mkdir(parents=True)
            for i in range(100):
                (folder / f"f{i:03}.html").write_text("x")
        barrier(cloudfront, docroot)
        got = received(cloudfront) - {"/zz-sentinel.txt"}
        assert got <= {"/deploy/*"} | {f"/deploy/d{d:02}/*" for d in range(50)}
        assert all(any(covers(w, f"/deploy/d{d:02}/f000.html") for w in got) for d in range(50))
        creates = [
            r for r in cloudfront.requests if r.op == "CreateInvalidation" and r.status == 201
        ]
        assert len(creates) <= 6  # a few debounced batches, the sentinel
