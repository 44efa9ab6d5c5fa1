"""Accepted work is keyed by the CloudFront distribution id, which a rename in the config
cannot change; work of an id the config no longer names is reported until it is sent (the id
added back) or discarded on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from invalidatord.journal import Accepted, Journal
from invalidatord.testing.cloudfront import CREATE, CloudFrontEmulator
from tests.harness import DaemonProcess, Daemons, aws_test_env, emulator_config, received
from tests.waiting import wait_for


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = aws_test_env() | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _pending_then_killed(
    tmp_path: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> tuple[Path, Path]:
    """A daemon accepts /kept.html while CloudFront refuses every create, then is killed."""
    docroot = tmp_path / "www"
    docroot.mkdir()
    config = emulator_config(tmp_path, docroot, cloudfront, quiet="100ms")
    cloudfront.inject("ServiceUnavailable", operation=CREATE)
    first = daemons.start(config)
    (docroot / "kept.html").write_text("k")
    first.wait_event("changes_accepted")
    first.stop(signal.SIGKILL)
    cloudfront.clear_faults()
    return docroot, config


def _rename(config: Path, old: str, new: str, distribution_id: str | None = None) -> None:
    data = yaml.safe_load(config.read_text())
    spec = data["distributions"].pop(old)
    if distribution_id is not None:
        spec["id"] = distribution_id
    data["distributions"][new] = spec
    config.write_text(yaml.safe_dump(data))


def test_work_pending_under_a_renamed_distribution_is_still_sent(
    tmp_path: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """`www` renamed to `site` (same id) while /kept.html is pending: the next start sends it
    (the journal used to keep it under `www`, which nothing submits, and say 0 pending)."""
    _, config = _pending_then_killed(tmp_path, cloudfront, daemons)
    _rename(config, "www", "site")
    second = daemons.start(config)
    wait_for(lambda: "/kept.html" in received(cloudfront), 30, what="/kept.html sent")
    assert second.health()[0] == 200


def test_work_of_a_removed_distribution_is_reported_until_discarded(
    tmp_path: Path, cloudfront: CloudFrontEmulator, daemons: Daemons
) -> None:
    """The distribution replaced by another id: /healthz (503, `orphaned`), the metric and
    `status` name the old id and its unsent path; `discard` drops it on purpose, and health
    is 200 again. Nothing is sent to either distribution meanwhile."""
    old_id = cloudfront.distribution_id
    new_id = cloudfront.create_distribution("replacement")
    _, config = _pending_then_killed(tmp_path, cloudfront, daemons)
    _rename(config, "www", "www", distribution_id=new_id)
    # not ready in the /healthz sense while the orphaned work waits: wait for daemon_ready
    proc = daemons.add(DaemonProcess("run", "-c", str(config)).start())
    proc.health_url = str(proc.wait_event("daemon_ready")["health"])
    wait_for(lambda: proc.health()[0] == 503, 30, what="/healthz 503")
    _, body = proc.health()
    assert body["orphaned"] == {old_id: 1}
    assert any(old_id in reason for reason in body["reasons"])
    assert proc.metric("invalidatord_orphaned_paths", distribution_id=old_id) == 1
    status = _cli("status", "-c", str(config))
    assert old_id in status.stdout
    assert "(not in config)" in status.stdout
    refused = _cli("discard", "-c", str(config), "--distribution-id", new_id)
    assert refused.returncode == 2
    assert "is configured" in refused.stderr
    done = _cli("discard", "-c", str(config), "--distribution-id", old_id)
    assert done.returncode == 0, done.stderr
    assert "discarded 1 unsent path(s)" in done.stdout
    wait_for(lambda: proc.health()[0] == 200, 30, what="/healthz 200 after the discard")
    assert received(cloudfront) == set()
    assert cloudfront.created_paths(new_id) == []


def test_a_journal_keyed_by_names_is_migrated_to_ids(tmp_path: Path) -> None:
    """A journal written before rows were keyed by id (pending rows under the config name) is
    moved to the ids of the config it is next opened with, once."""
    path = tmp_path / "journal.sqlite"
    old = Journal(path)  # no mapping: a name is its own key, as journals used to be
    old.accept([Accepted("www", "/a.html", 1.0, "docroot:a.html")])
    old.close()
    journal = Journal(path, distributions={"www": "E2EXAMPLE1"})
    try:
        assert journal.pending_paths("www", 10) == ["/a.html"]
    finally:
        journal.close()
    raw = Journal(path)
    try:
        assert raw.pending_paths("E2EXAMPLE1", 10) == ["/a.html"]
        assert raw.pending_paths("www", 10) == []
    finally:
        raw.close()
    renamed = Journal(path, distributions={"site": "E2EXAMPLE1"})
    try:
        assert renamed.pending_paths("site", 10) == ["/a.html"]
        assert renamed.orphans() == {}
    finally:
        renamed.close()
