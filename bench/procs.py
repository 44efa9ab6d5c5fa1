"""Child processes the benchmark drives: the daemon, the CloudFront emulator, the comparison
watchers; and what /proc says about them (CPU seconds, peak RSS)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

Event = dict[str, Any]
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
#: When set, the folder holding the `invalidatord` package to measure (a snapshot of a git
#: revision, see run.py --rev); children find it before the editable install.
SOURCE_ENV = "BENCH_INVALIDATORD_SOURCE"

#: Every child started here, so a failed or interrupted run leaves none behind.
_CHILDREN: list[subprocess.Popen[bytes]] = []


class BenchError(RuntimeError):
    """A measurement could not be taken (a child died, a deadline passed)."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.005) -> Any:
    """The first truthy `condition()`, polled every `poll` seconds until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def aws_env() -> dict[str, str]:
    """The environment of every child: dummy credentials, no user AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - dummy, for the emulator
        AWS_DEFAULT_REGION="us-east-1",
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
        # `-m` would put the working directory (the repository) first on sys.path, ahead of
        # the snapshot `--rev` measures
        PYTHONSAFEPATH="1",
        PYTHONPATH=os.pathsep.join(p for p in (os.environ.get(SOURCE_ENV), str(REPO)) if p),
    )
    return env


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    kwargs.setdefault("env", aws_env())
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
    _CHILDREN.append(proc)
    return proc


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


def reap_all() -> None:
    """Kill every child still running, and theirs (a wrapped daemon under py-spy); a stopped
    one is continued first, so it can die."""
    for proc in _CHILDREN:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    _CHILDREN.clear()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM = peak RSS, VmRSS = RSS now)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def family(pid: int) -> list[int]:
    """`pid` and its descendants (the daemon runs its watcher in a child process)."""
    return [pid, *_descendants(pid)]


def signal_family(pid: int, sig: int) -> None:
    """Send `sig` to `pid` and every descendant (SIGSTOP must stop the watcher process too)."""
    for each in family(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, sig)


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants."""
    total = 0.0
    for each in family(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(each)
    return total


def family_peak_rss_kb(pid: int) -> int:
    """The sum of each process's peak RSS (VmHWM) over `pid` and its live descendants: an
    upper bound of their peak together."""
    total = 0
    for each in family(pid):
        with contextlib.suppress(OSError, BenchError):
            total += status_kb(each, "VmHWM")
    return total


def family_pss_kb(pid: int) -> int:
    """Proportional set size now, summed over `pid` and its live descendants: each shared
    page (libpython, the same modules) counted once across them, not once per process."""
    total = 0
    for each in family(pid):
        with (
            contextlib.suppress(OSError),
            open(f"/proc/{each}/smaps_rollup", encoding="ascii") as f,
        ):
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60
) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class JsonLines:
    """Reads a child's stream line by line on a thread; JSON objects are kept as events."""

    def __init__(self, stream: Any, keep_text: bool = False) -> None:
        self.events: list[Event] = []
        self.text: list[str] = []
        self._keep_text = keep_text
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict):
                    self.events.append(event)
                else:
                    self.text.append(line)
                self._cond.notify_all()

    def find(self, where: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [e for e in self.events if where(e)]

    def wait(
        self,
        where: Callable[[Event], bool],
        timeout: float,
        what: str,
        alive: Callable[[], bool] = lambda: True,
    ) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if where(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
                if not alive():
                    raise BenchError(f"process died waiting for {what}: {self.tail()}")
                self._cond.wait(min(left, 0.1))

    def tail(self, n: int = 15) -> str:
        with self._cond:
            lines = [json.dumps(e) for e in self.events[-n:]] + self.text[-n:]
        return "\n".join(lines)


# ---- the CloudFront emulator, in its own process -------------------------------------------


class Emulator:
    """bench/emulator_server.py: invalidatord's CloudFront emulator in a child process, so its
    CPU is charged to neither the daemon nor the benchmark. Every invalidation API call it
    answers is streamed back with its receive time (CLOCK_MONOTONIC, shared with this process)."""

    def __init__(self) -> None:
        self.proc = spawn(
            [PYTHON, "-m", "bench.emulator_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        self.requests: list[Event] = []
        self._replies: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        hello = self._reply(60)
        self.endpoint = str(hello["endpoint"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "req" in msg:
                with self._lock:
                    self.requests.append(msg["req"])
            else:
                self._replies.put(msg)

    def _reply(self, timeout: float = 30) -> Event:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError("the emulator did not answer") from None

    def command(self, **cmd: Any) -> Event:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        return self._reply()

    def new_distribution(self) -> str:
        return str(self.command(cmd="dist")["dist"])

    def hold(self, on: bool) -> None:
        self.command(cmd="hold", on=on)

    def creates(self, dist: str, since: float = 0.0) -> list[Event]:
        """Successful CreateInvalidation calls on `dist` received after `since`."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r["op"] == "CreateInvalidation"
                and r["dist"] == dist
                and r["status"] in (200, 201)
                and r["time"] > since
            ]

    def calls(self, dist: str, since: float = 0.0, until: float = float("inf")) -> list[Event]:
        with self._lock:
            return [r for r in self.requests if r["dist"] == dist and since < r["time"] <= until]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc)


# ---- the daemon -------------------------------------------------------------------------------


def write_config(
    directory: Path,
    *,
    root: Path,
    endpoint: str,
    distribution_id: str,
    quiet: float,
    max_delay: float = 30.0,
    max_pending: int = 10_000,
    poll_interval: float = 0.2,
    compare: str | None = None,
) -> Path:
    """A config for one filesystem source on `root` -> one distribution, `/{path}` for every
    file; JSON logs; periodic safety-net rescans off so none lands inside a measurement.
    `compare`: the source's (None: the default, content)."""
    cfg = {
        "state_dir": str(directory / "state"),
        "aws": {"endpoint_url": endpoint, "region": "us-east-1"},
        "distributions": {"www": {"id": distribution_id}},
        "sources": [
            {"name": "docroot", "type": "filesystem", "root": str(root), "rescan_interval": 0}
        ],
        "rules": [{"match": "**", "urls": ["/{path}"]}],
        "debounce": {"quiet": quiet, "max_delay": max_delay, "max_pending": max_pending},
        "invalidation": {"poll_interval": poll_interval, "reconcile_interval": 300},
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"format": "json", "level": "info"},
    }
    if compare is not None:
        cfg["sources"][0]["compare"] = compare  # type: ignore[index]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Daemon:
    """`python -m invalidatord run -c CFG` with its JSON log events parsed as they arrive."""

    def __init__(self, config: Path, *, wrap: list[str] | None = None) -> None:
        self.config = config
        self.started = time.monotonic()
        self.proc = spawn(
            [*(wrap or []), PYTHON, "-m", "invalidatord", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        self.log = JsonLines(self.proc.stderr)
        self.health_url = ""
        self._pid = self.proc.pid if not wrap else 0

    @property
    def pid(self) -> int:
        """The daemon's own pid (under a wrapper such as py-spy: the wrapper's child)."""
        if not self._pid:
            self._pid = wait_until(lambda: _first_child(self.proc.pid), 30, "the wrapped daemon")
        return self._pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_event(self, name: str, timeout: float = 120, **match: Any) -> Event:
        def where(e: Event) -> bool:
            return e.get("event") == name and all(e.get(k) == v for k, v in match.items())

        return self.log.wait(where, timeout, f"log event {name}", self.alive)

    def wait_ready(self, timeout: float = 120) -> float:
        """Block until GET /healthz answers 200; return the monotonic time it first did."""
        ready = self.wait_event("daemon_ready", timeout)
        self.health_url = str(ready["health"])
        return float(wait_until(self._healthy, timeout, "GET /healthz 200", poll=0.002))

    def _healthy(self) -> float | None:
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as r:  # noqa: S310
                return time.monotonic() if r.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def stop(self) -> int:
        return stop_process(self.proc)


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            kids = f.read().split()
    except OSError:
        return 0
    return int(kids[0]) if kids else 0


def covered(urls: Iterable[str], wanted: set[str]) -> set[str]:
    """The paths of `wanted` that `urls` invalidate: each one named, or under a wildcard
    (`/dir/*` covers every path starting `/dir/`; the planner collapses paths into them)."""
    named = set(urls)
    hit = wanted & named
    prefixes = tuple(u[:-1] for u in named if u.endswith("*"))
    if prefixes and len(hit) < len(wanted):
        hit |= {p for p in wanted - hit if p.startswith(prefixes)}
    return hit


def _accepted(db: sqlite3.Connection) -> str:
    """The pending rows that are accepted: a journal that stages rows (schema 3) holds some
    in windows still open, which are not (yet)."""
    staged = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'windows'").fetchone()
    return "pending WHERE staged_in NOT IN (SELECT id FROM windows)" if staged else "pending"


class JournalProbe:
    """Reads the daemon's journal from outside (WAL: readers never block the writer) to learn
    which URL paths are accepted: pending, or already in a batch."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.sqlite"
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists():
                return None
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self._db

    def max_batch_id(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute("SELECT coalesce(max(id), 0) FROM batches").fetchone()[0])

    def count(self, since_batch: int = 0) -> tuple[int, int]:
        """(pending rows plus file paths in batches after `since_batch`, wildcard paths in
        those batches): a cheap upper bound of what is accepted, while no wildcard is."""
        db = self._conn()
        if db is None:
            return 0, 0
        try:
            pending = db.execute(f"SELECT count(*) FROM {_accepted(db)}").fetchone()[0]  # noqa: S608
            files, wildcards = db.execute(
                "SELECT coalesce(sum(files), 0), coalesce(sum(wildcards), 0) FROM batches "
                "WHERE id > ? AND state != 'split'",
                (since_batch,),
            ).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0, 0
        return int(pending) + int(files), int(wildcards)

    def urls(self, since_batch: int = 0) -> set[str]:
        db = self._conn()
        if db is None:
            return set()
        found = {str(r[0]) for r in db.execute(f"SELECT path FROM {_accepted(db)}")}  # noqa: S608
        for (paths,) in db.execute(
            "SELECT paths FROM batches WHERE id > ? AND state != 'split'", (since_batch,)
        ):
            found.update(json.loads(paths))
        return found

    def pending(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute(f"SELECT count(*) FROM {_accepted(db)}").fetchone()[0])  # noqa: S608

    def in_flight_batches(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        row = db.execute("SELECT count(*) FROM batches WHERE state IN ('planned', 'submitted')")
        return int(row.fetchone()[0])

    def accepted(self, expected: set[str], since_batch: int = 0) -> bool:
        """Every URL of `expected` is accepted (the cheap count first, the set only then)."""
        files, wildcards = self.count(since_batch)
        if not wildcards and files < len(expected):
            return False
        return len(covered(self.urls(since_batch), expected)) == len(expected)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def read_json_lines(proc: subprocess.Popen[bytes]) -> JsonLines:
    assert proc.stdout is not None
    return JsonLines(proc.stdout)


def children_rusage(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for `proc` and return (exit status, CPU seconds of it and its waited children)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        os.kill(pid, sig)
