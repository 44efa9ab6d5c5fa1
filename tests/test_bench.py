"""`python -m bench` itself: a cheap selection of cases runs end to end and writes its JSON.
(The figures are the benchmark's business; these tests only prove the command works.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_quick_poll_and_content_cases_write_results(tmp_path: Path) -> None:
    """--quick --only poll,content measures both on real trees, writes results.json with their
    figures and the targets summary, and leaves bench/results/latest.json alone (--out)."""
    latest = REPO / "bench" / "results" / "latest.json"
    before = latest.stat().st_mtime_ns if latest.exists() else None
    out = tmp_path / "out"
    done = _bench(
        "--quick", "--only", "poll,content", "--work", str(tmp_path / "work"), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results) >= {"meta", "poll", "content", "targets"}
    assert "throughput" not in results
    poll = results["poll"]
    assert poll["files"] == 5_000
    assert poll["changes_found"] == 0  # an unchanged tree polls as no change
    content = results["content"]
    rebuilt = {mode: content[mode]["full_rebuild"] for mode in ("mtime", "content")}
    # a full rebuild: mtime invalidates every file, content only those with new bytes,
    # having read the whole tree to know it
    assert rebuilt["mtime"]["pending_paths"] == content["files"] == 2_000
    assert rebuilt["content"]["pending_paths"] == content["changed_files"] == 20
    assert rebuilt["content"]["bytes_read"] == content["tree_bytes"]
    status = {row["figure"].split(":")[0]: row["status"] for row in results["targets"]}
    assert status["compare"] == "stated"
    assert status["watcher"] == "stated"
    assert any(s == "not run" for s in status.values())
    assert len(results["meta"]["load_avg_at_start"]) == len(results["meta"]["load_avg_at_end"])
    assert "Targets (#15)" in done.stdout
    assert (latest.stat().st_mtime_ns if latest.exists() else None) == before


def test_unknown_case_is_refused_by_name(tmp_path: Path) -> None:
    """A misspelt case name stops the run before anything is measured, naming the valid ones."""
    done = _bench("--only", "latncy", "--work", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert "unknown case(s): latncy" in done.stderr
    assert "latency" in done.stderr.split("the cases:")[1]
    assert not any(tmp_path.iterdir())
