"""Run `invalidatord` as a real subprocess: JSON logs parsed as they arrive, readiness from
GET /healthz, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal as signals
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from invalidatord.model import Change, ChangeKind
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.waiting import wait_for

Event = dict[str, Any]


class FakeClock:
    """A clock (`time.time` or `time.monotonic` stand-in) that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Collector:
    """A thread-safe change sink that keeps every change delivered to it.

    `hide`: changes whose path starts with it are left out of `changes`, `paths` and `pairs`
    (markers a test writes to know a watcher has caught up), though `has` and `wait` see them.
    """

    def __init__(self, hide: str | None = None) -> None:
        self._lock = threading.Lock()
        self._changes: list[Change] = []
        self._hide = hide

    def __call__(self, change: Change) -> None:
        with self._lock:
            self._changes.append(change)

    @property
    def changes(self) -> list[Change]:
        with self._lock:
            hide = self._hide
            return [c for c in self._changes if hide is None or not c.path.startswith(hide)]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._changes)

    def paths(self, *kinds: ChangeKind) -> set[str]:
        return {c.path for c in self.changes if not kinds or c.kind in kinds}

    def pairs(self) -> set[tuple[str, ChangeKind]]:
        return {(c.path, c.kind) for c in self.changes}

    def take(self) -> list[Change]:
        """What arrived since the last take."""
        with self._lock:
            taken, self._changes = self._changes, []
        return taken

    def mark(self) -> int:
        """A position for `has`/`wait(since=...)`: only changes delivered after it count."""
        with self._lock:
            return len(self._changes)

    def has(self, path: str, *kinds: ChangeKind, since: int = 0) -> bool:
        with self._lock:
            return any(
                c.path == path and (not kinds or c.kind in kinds) for c in self._changes[since:]
            )

    def wait(self, path: str, *kinds: ChangeKind, since: int = 0, timeout: float = 5.0) -> None:
        """Until `path` arrives (as one of `kinds`, if given) after `since`."""
        wait_for(
            lambda: self.has(path, *kinds, since=since),
            timeout,
            what=f"{path!r} {kinds or 'any'}",
        )

    def wait_count(self, n: int, timeout: float = 10.0) -> list[Change]:
        """Until at least `n` changes arrived; all of them."""
        wait_for(lambda: self.count >= n, timeout, what=f"{n} changes delivered")
        return self.changes


def write_config(
    directory: Path,
    *,
    root: Path,
    endpoint: str,
    distribution_id: str,
    quiet: str = "300ms",
    max_delay: str = "5s",
    extra: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
) -> Path:
    """A config for one filesystem source on `root` and one distribution `www`."""
    cfg: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "aws": {"endpoint_url": endpoint, "region": "us-east-1"},
        "distributions": {"www": {"id": distribution_id}},
        "sources": [{"name": "docroot", "type": "filesystem", "root": str(root)}],
        "rules": rules
        or [
            {"match": "**/index.html", "urls": ["/{dir}/", "/{path}"]},
            {"match": "**", "urls": ["/{path}"]},
        ],
        "debounce": {"quiet": quiet, "max_delay": max_delay},
        # per-path tests by default; collapsing into wildcards has tests of its own
        "invalidation": {
            "poll_interval": "200ms",
            "reconcile_interval": "5s",
            "collapse_threshold": None,
        },
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"format": "json", "level": "info"},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def emulator_config(
    directory: Path, root: Path, cloudfront: CloudFrontEmulator, **kwargs: Any
) -> Path:
    """`write_config` for `root` against the emulator's endpoint and distribution."""
    return write_config(
        directory,
        root=root,
        endpoint=cloudfront.endpoint_url,
        distribution_id=cloudfront.distribution_id,
        **kwargs,
    )


REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIGS = sorted((REPO / "config").glob("*.yaml"))
#: the document root every shipped config names: absolute, so a copy in /etc means the same
SHIPPED_ROOT = "/var/www/html"


def installed_config(name: str, directory: Path) -> Path:
    """config/`name` as an operator's host has it: the same text, with its document root
    (SHIPPED_ROOT, which this machine need not have) standing for a copy of examples/docroot
    under `directory`. Only `root:` values change; the test sees everything else as shipped."""
    import shutil

    text = (REPO / "config" / name).read_text(encoding="utf-8")
    docroot = directory / "www"
    if not docroot.exists():
        shutil.copytree(REPO / "examples" / "docroot", docroot)
    installed = directory / name
    installed.write_text(
        text.replace(f"root: {SHIPPED_ROOT}", f"root: {docroot}"), encoding="utf-8"
    )
    return installed


def make_site(root: Path, files: dict[str, str]) -> None:
    """Write `files` (relative path -> text) under `root`, creating folders."""
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def received(cloudfront: CloudFrontEmulator) -> set[str]:
    """Every path CloudFront has been asked to invalidate on the emulator's distribution."""
    return set(cloudfront.created_paths(cloudfront.distribution_id))


def barrier(
    cloudfront: CloudFrontEmulator,
    docroot: Path,
    name: str = "zz-sentinel.txt",
    timeout: float = 30,
) -> None:
    """Touch a sentinel file and wait until CloudFront has its path: every change made before
    it was flushed by then, so an exact comparison of `received` also proves nothing else came."""
    (docroot / name).write_text("sentinel")
    wait_for(lambda: f"/{name}" in received(cloudfront), timeout, what=f"/{name} at CloudFront")


def aws_test_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    return env


class DaemonProcess:
    """`python -m invalidatord ARGS` with its stderr parsed into events."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or aws_test_env()
        self.events: list[Event] = []
        self.other_lines: list[str] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_url: str | None = None

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invalidatord", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stderr, self.proc.stdout)
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _drain_output(self) -> None:
        """Once the process has exited, read what it wrote to the end, so `find` after `stop`
        sees every line."""
        for reader in getattr(self, "_readers", []):
            reader.join(timeout=10)

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._lock:
                if isinstance(event, dict) and "event" in event:
                    self.events.append(event)
                else:
                    self.other_lines.append(line)

    def find(self, name: str, where: Callable[[Event], bool] = lambda e: True) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name and where(e)]

    def wait_event(
        self, name: str, where: Callable[[Event], bool] = lambda e: True, timeout: float = 30
    ) -> Event:
        def found() -> Event | None:
            self._check_alive(name)
            hits = self.find(name, where)
            return hits[-1] if hits else None

        hit = wait_for(found, timeout, what=f"log event {name}")
        assert hit is not None
        return hit

    def _check_alive(self, waiting_for: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode} while waiting for {waiting_for}:\n"
                + self.transcript()
            )

    def wait_ready(self, timeout: float = 30) -> str:
        ready = self.wait_event("daemon_ready", timeout=timeout)
        self.health_url = str(ready["health"])
        wait_for(lambda: self.health()[0] == 200, timeout, what="GET /healthz 200")
        return self.health_url

    def health(self, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of GET `path` (/healthz, /livez); (0, {}) if unreachable."""
        assert self.health_url is not None
        url = self.health_url.rsplit("/", 1)[0] + path
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except OSError:
            return 0, {}

    def get(self, path: str) -> str:
        assert self.health_url is not None
        url = self.health_url.rsplit("/", 1)[0] + path
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` in GET /metrics whose labels include `labels`."""
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def signal_all(self, sig: int) -> None:
        """Send `sig` to the daemon and its children (the watcher process): SIGSTOP stops
        the watching too, as a stopped machine would."""
        assert self.proc is not None
        for pid in [*_children(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
            self._drain_output()
            return code
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not stop in time:\n" + self.transcript()) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._drain_output()

    def transcript(self, last: int = 60) -> str:
        with self._lock:
            lines = [json.dumps(e) for e in self.events[-last:]] + self.other_lines[-last:]
        return "\n".join(lines)


@contextlib.contextmanager
def running_daemon(config: Path, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """`invalidatord run -c CONFIG` started and ready (`wait_ready`); SIGKILLed on the way out
    if it is still running. The one place tests start a daemon that has to come up."""
    proc = DaemonProcess("run", "-c", str(config), env=env).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


class Daemons:
    """The daemons a test started, for tests that start more than one (a restart, a second
    start); `kill_all` SIGKILLs each one still running. The `daemons` fixture of conftest.py."""

    def __init__(self) -> None:
        self.started: list[DaemonProcess] = []

    def add(self, proc: DaemonProcess) -> DaemonProcess:
        """Track `proc`, a daemon the test starts its own way."""
        self.started.append(proc)
        return proc

    def start(self, config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        """`invalidatord run -c CONFIG`, tracked, then waited on until ready."""
        proc = self.add(DaemonProcess("run", "-c", str(config), env=env).start())
        proc.wait_ready()
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (from /proc; empty when gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids
