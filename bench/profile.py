"""Profiles of the daemon under the throughput drain and the catch-up scan, with py-spy.

py-spy samples the live process from outside (no code change, no tracing overhead inside;
`--nonblocking`: the daemon is never paused to be sampled).
Its raw output is "frame;frame;... count" per distinct stack; this module folds it into the
hot spots: self samples per function (the leaf frame) and inclusive samples (any frame of the
stack), and samples per thread.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import tree
from bench.cases import TP_POLL, TP_QUIET, Ctx, StartTree, _urls, _wait_accepted, ensure_queue
from bench.procs import (
    REPO,
    SOURCE_ENV,
    BenchError,
    Daemon,
    JournalProbe,
    signal_family,
    spawn,
    wait_until,
    write_config,
)

RATE = 250  # samples per second
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    venv = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "py-spy"
    found = shutil.which("py-spy") or (str(venv) if venv.exists() else None)
    if found is None:
        from bench.procs import PYTHON

        candidate = Path(PYTHON).parent / "py-spy"
        found = str(candidate) if candidate.exists() else None
    return found


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `file.py:func` (lines folded: function granularity)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "invalidatord" in parts:
        parts = parts[parts.index("invalidatord") :]
    else:
        parts = parts[-1:]
    return f"{'/'.join(parts)}:{m.group('func')}"


# A leaf frame on one of these source lines is a thread blocked in C (a lock, a queue, a
# select): py-spy cannot always tell such a thread idle, so the fold does.
_WAITING = re.compile(
    r"\.wait\(|\.get\([^)]*timeout|\.acquire\(|\.join\(|select\(|\.poll\(|\.sleep\("
    r"|accept\(|serve_forever"
)
_THREAD = re.compile(r"^thread \(\d+\): ?")


def _source_line(file: str, line: int, roots: list[Path]) -> str:
    for root in roots:
        candidate = root / file
        if candidate.is_file():
            return linecache.getline(str(candidate), line)
    return ""


def _roots() -> list[Path]:
    import sysconfig

    roots = [Path(os.environ[SOURCE_ENV])] if os.environ.get(SOURCE_ENV) else []
    roots += [REPO, Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]
    return roots


def is_waiting(leaf: str, roots: list[Path]) -> bool:
    m = _FRAME.match(leaf.strip())
    if not m or not m.group("line"):
        return False
    return bool(_WAITING.search(_source_line(m.group("file"), int(m.group("line")), roots)))


def fold(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self, inclusive and per-thread sample counts from py-spy's raw output, leaving out the
    samples of threads blocked waiting (counted apart as `waiting_samples`)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = waiting = 0
    roots = _roots()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        count = int(m.group("count"))
        frames = m.group("stack").split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = _THREAD.sub("", frames[0])
            thread = "(unnamed: the main thread while importing)" if thread == frames[0] else thread
            frames = frames[1:]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        if is_waiting(frames[-1], roots):
            waiting += count
            continue
        threads[thread] += count
        total += count
        names = [_short(f) for f in frames]
        self_c[names[-1]] += count
        for name in set(names):
            incl[name] += count

    def table(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "share": round(v / total, 3) if total else 0.0}
            for k, v in c.most_common(top)
        ]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "rate_hz": RATE,
        "self": table(self_c),
        "inclusive": table(incl),
        "threads": table(threads),
    }


def _record_pid(spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    return spawn(
        [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
         "--threads", "--subprocesses", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _finish(spy_proc: subprocess.Popen[bytes], out: Path) -> None:
    spy_proc.send_signal(signal.SIGINT)
    spy_proc.wait(60)
    wait_until(out.exists, 30, "py-spy output")


def profile_throughput(ctx: Ctx, spy: str) -> dict[str, Any]:
    """One create pass and one append pass of the throughput drain, sampled from SIGCONT until
    every path is accepted."""
    s = ctx.sizes
    base = ctx.work / "profile-throughput"
    root = base / "root"
    shutil.rmtree(base, ignore_errors=True)
    rels = tree.layout(s.tp_files, s.tp_dirs)
    tree.make_dirs(root, rels)
    results: dict[str, Any] = {}
    ctx.emulator.hold(True)
    try:
        for kind in ("create", "append"):
            ensure_queue(ctx)
            dist = ctx.emulator.new_distribution()
            directory = base / f"daemon-{kind}"
            cfg = write_config(
                directory, root=root, endpoint=ctx.emulator.endpoint, distribution_id=dist,
                quiet=TP_QUIET, max_delay=30, poll_interval=TP_POLL,
            )  # fmt: skip
            daemon = Daemon(cfg)
            probe = JournalProbe(directory / "state")
            out = ctx.out / f"profile-throughput-{kind}.txt"
            try:
                daemon.wait_ready()
                daemon.wait_event("baseline_recorded")  # as the measured drain does
                if daemon.log.find(lambda e: e.get("event") == "watcher_overflow"):
                    raise BenchError("the kernel queue overflowed before the profile started")
                signal_family(daemon.proc.pid, signal.SIGSTOP)
                if kind == "create":
                    tree.write_files(root, rels, tree.page(1))
                else:
                    tree.append_files(root, rels, b"<!-- appended -->\n")
                signal_family(daemon.proc.pid, signal.SIGCONT)
                t0 = time.monotonic()
                spy_proc = _record_pid(spy, daemon.proc.pid, out)
                _wait_accepted(probe, _urls(rels), 0)
                drain = time.monotonic() - t0
                _finish(spy_proc, out)
            finally:
                probe.close()
                daemon.stop()
            results[kind] = {"drain_s": round(drain, 3), "raw": out.name, **fold(out)}
            ctx.say(f"profiled throughput {kind}: {results[kind]['samples']} samples")
    finally:
        ctx.emulator.hold(False)
    return results


def profile_catchup(ctx: Ctx, st: StartTree, spy: str) -> dict[str, Any]:
    """A daemon start under py-spy, from exec until the catch-up scan's changes are accepted."""
    probe = JournalProbe(st.state)
    if not (st.state / "journal.sqlite").exists():
        d = Daemon(st.config)
        d.wait_ready()
        d.stop()
    n = max(1, round(len(st.rels) * ctx.sizes.catchup_fraction))
    changed = random.Random(1000).sample(st.rels, n)
    tree.append_files(st.root, changed, b"<!-- profiled -->\n")
    tree.prewarm(st.root)
    since = probe.max_batch_id()
    out = ctx.out / "profile-catchup.txt"
    # --nonblocking: py-spy then never ptrace-stops the daemon, which otherwise may miss the
    # SIGTERM sent to end the run (seen with py-spy 0.4.3: the daemon stays in tracing stop).
    wrapper = [spy, "record", "--rate", str(RATE), "--format", "raw", "--threads",
               "--nonblocking", "--output", str(out), "--"]  # fmt: skip
    daemon = Daemon(st.config, wrap=wrapper)
    try:
        daemon.wait_ready()
        _wait_accepted(probe, _urls(changed), since)
        accepted = time.monotonic() - daemon.started
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.proc.wait(120)
    finally:
        probe.close()
        if daemon.proc.poll() is None:
            # the daemon first: once py-spy is gone it would be re-parented and out of reach
            with contextlib.suppress(ProcessLookupError, BenchError):
                os.kill(daemon.pid, signal.SIGKILL)
            daemon.stop()
    if not out.exists():
        raise BenchError("py-spy wrote no profile for the catch-up run")
    result = {"accepted_s": round(accepted, 3), "raw": out.name, **fold(out)}
    ctx.say(f"profiled catch-up: {result['samples']} samples")
    return result
