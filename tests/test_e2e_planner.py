"""The cost model end to end: a daemon subprocess, real files, the CloudFront test double."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import barrier, emulator_config, make_site, received, running_daemon

DOCS = {f"docs/p{i:04}.html": "v1" for i in range(2000)}


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


def _creates(cloudfront: CloudFrontEmulator) -> list[tuple[str, ...]]:
    return [
        tuple(r.paths)
        for r in cloudfront.requests
        if r.op == "CreateInvalidation" and r.status == 201
    ]


def test_300_of_2000_in_a_folder_go_as_exact_paths(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """Under max_over_invalidation 0.1 a wildcard over 300 changed of 2,000 files would evict
    85% unchanged objects: the 300 go as exact paths, no wildcard."""
    make_site(docroot, DOCS)
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        quiet="1s",
        extra={"invalidation": {"max_over_invalidation": 0.1, "collapse_threshold": 100}},
    )
    with running_daemon(config):
        for i in range(300):
            (docroot / f"docs/p{i:04}.html").write_text("v2")
        barrier(cloudfront, docroot)
        expected = {f"/docs/p{i:04}.html" for i in range(300)}
        assert received(cloudfront) == expected | {"/zz-sentinel.txt"}


def test_1900_of_2000_in_a_folder_go_as_one_wildcard(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """1,900 changed of 2,000 (5% unchanged, under the 0.1 bound) are more than the month's
    1,000 free paths: one `/docs/*` (1 billed path) is cheaper, and the daemon logs why."""
    make_site(docroot, DOCS)
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        quiet="2s",
        # one batch of all 1,900 even when writing them takes longer than the default 5 s
        # under load (the decision asserted is about all of them at once)
        max_delay="60s",
        extra={"invalidation": {"max_over_invalidation": 0.1, "collapse_threshold": 100}},
    )
    with running_daemon(config) as proc:
        for i in range(1900):
            (docroot / f"docs/p{i:04}.html").write_text("v2")
        barrier(cloudfront, docroot)
        assert received(cloudfront) == {"/docs/*", "/zz-sentinel.txt"}
        line = proc.wait_event("wildcard_chosen", lambda e: e["wildcard"] == "/docs/*")
        assert (line["directory"], line["reason"], line["evicted"]) == ("/docs/", "cost", 100)
        assert line["why"] == (
            "/docs/*: 1900 pending paths as 1 billed path, evicts 100 unchanged of 2000 "
            "objects (5%, max_over_invalidation 10%); cheaper than its exact paths"
        )
        sent = proc.wait_event("batch_submitted", lambda e: "/docs/*" in e["sample"])
        assert sent["caller_reference"] == line["caller_reference"]


def test_plan_prints_what_the_daemon_then_sends(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """`invalidatord plan` (no daemon needed, nothing sent) shows the items, billed paths and
    eviction for 1,900 changes; the running daemon then sends exactly those items."""
    make_site(docroot, DOCS)
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        quiet="2s",
        extra={"invalidation": {"max_over_invalidation": 0.1, "collapse_threshold": 100}},
    )
    changed = [f"docs/p{i:04}.html" for i in range(1900)]
    with running_daemon(config):
        out = subprocess.run(
            [sys.executable, "-m", "invalidatord", "plan", "-c", str(config), "--json", *changed],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        www = json.loads(out.stdout)["distributions"]["www"]
        assert www["items"] == ["/docs/*"]
        assert (www["billed_paths"], www["evicted_unchanged"], www["free_paths_left"]) == (
            1,
            100,
            1000,
        )
        assert _creates(cloudfront) == []  # plan sent nothing
        for rel in changed:
            (docroot / rel).write_text("v2")
        barrier(cloudfront, docroot)
        assert received(cloudfront) == {*www["items"], "/zz-sentinel.txt"}
