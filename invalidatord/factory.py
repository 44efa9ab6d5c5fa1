"""What the composition root builds, for the commands that need one part of it.

`invalidatord.daemon` wires a whole daemon from these; `invalidatord invalidate`, `status`, `map`
and Lambda mode ask here for the one part they need (a journal, a CloudFront client, a
submitter, a mapper) instead of building their own, so every part is built one way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any

from botocore.config import Config as BotoConfig

from invalidatord.cloudfront import Boto3CloudFront, DryRunCloudFront, make_session
from invalidatord.config import Config
from invalidatord.contracts import CloudFront
from invalidatord.errors import JournalError
from invalidatord.journal import Journal, make_state_dir, open_state_file
from invalidatord.mapping import Mapper
from invalidatord.metrics import Metrics
from invalidatord.planner import Limits
from invalidatord.submitter import Submitter
from invalidatord.tree import IndexTree, trees

JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "daemon.lock"


def mapper_for(cfg: Config) -> Mapper:
    return Mapper(cfg.mapping_rules())


def limits_for(cfg: Config) -> Limits:
    return cfg.invalidation.limits()


def session_for(cfg: Config, client_config: BotoConfig | None = None) -> Any:
    """The AWS session every client of the daemon uses. With `aws.role_arn`, AssumeRole goes
    to `aws.endpoint_url` too when one is set (an emulator serves STS as well), with
    `client_config` (timeouts, retries) when given."""
    return make_session(
        cfg.aws.region,
        cfg.aws.profile,
        cfg.aws.role_arn,
        sts_endpoint_url=cfg.aws.endpoint_url,
        sts_config=client_config,
    )


def client_for(cfg: Config, service: str, client_config: BotoConfig | None = None) -> Any:
    """A client of `service` (sqs, s3) with the daemon's session and endpoint;
    `client_config` (botocore's Config: timeouts, retries) for callers that need their own."""
    return session_for(cfg, client_config).client(
        service, endpoint_url=cfg.aws.endpoint_url, config=client_config
    )


def cloudfront_for(cfg: Config, dry_run: bool = False) -> CloudFront:
    if dry_run:
        return DryRunCloudFront()
    return Boto3CloudFront(session_for(cfg), endpoint_url=cfg.aws.endpoint_url)


def journal_path(cfg: Config) -> Path:
    return Path(cfg.state_dir) / JOURNAL_NAME


def open_journal(cfg: Config, dry_run: bool = False) -> Journal:
    """The journal. A dry run must not consume the real journal's pending work nor write to
    it (a daemon may be running on it): it works on an in-memory copy, read once through a
    read-only connection, so its catch-up is judged against the real index (what the daemon
    would find changed) and its pending paths are the real ones."""
    ids = {name: d.id for name, d in cfg.distributions.items()}
    if not dry_run:
        return Journal(journal_path(cfg), distributions=ids)
    real = journal_path(cfg)
    return Journal(":memory:", distributions=ids, snapshot_of=real if real.exists() else None)


def submitter_for(
    cfg: Config,
    journal: Journal,
    cloudfront: CloudFront,
    metrics: Metrics,
    distributions: list[str] | None = None,
    *,
    dry_run: bool = False,
) -> Submitter:
    """The submitter for `distributions` (config names; default: every one)."""
    names = list(cfg.distributions) if distributions is None else distributions
    return Submitter(
        journal=journal,
        cloudfront=cloudfront,
        distributions={name: cfg.distributions[name].id for name in names},
        limits=limits_for(cfg),
        metrics=metrics,
        max_backoff=cfg.invalidation.max_backoff,
        completion_wait=cfg.invalidation.poll_interval,
        trees=trees_for(cfg, journal, names),
        dry_run=dry_run,
    )


def trees_for(cfg: Config, journal: Journal, distributions: list[str]) -> dict[str, IndexTree]:
    """The planner's knowledge of what exists under each distribution's URLs, where known."""
    kinds = {source.name: source.type for source in cfg.sources}
    return trees(journal, cfg.mapping_rules(), kinds, distributions)


def state_dir_problem(state_dir: str | os.PathLike[str]) -> tuple[str, bool] | None:
    """Why the daemon could not create or write `state_dir`, as (one line, whether it holds
    for every user), or None when it can. Creates nothing that outlives the call: the test is a
    directory made and removed in the nearest existing ancestor, since permission bits alone
    say nothing for root, /proc or a read-only mount.

    A permission problem (EACCES, EPERM) may hold only for the user asking (`check` run by a
    person, the daemon by systemd's user, with StateDirectory= creating it at start), so the
    second item is False for it."""
    path = Path(state_dir)
    if path.exists() and not path.is_dir():
        return f"state_dir {state_dir}: not a directory", True
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"state_dir {state_dir}: cannot be created: {existing} is not a directory", True
    what = "cannot be written" if existing == path else "cannot be created"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".invalidatord-check-", dir=existing))
    except OSError as exc:
        where = "" if existing == path else f" in {existing}"
        line = f"state_dir {state_dir}: {what}{where}: {exc.strerror or exc}"
        return line, exc.errno not in (errno.EACCES, errno.EPERM)
    return None


class StateLock:
    """An flock on state_dir/daemon.lock: one daemon per journal. `invalidatord invalidate`
    uses it to learn whether a daemon is running (and will submit for it)."""

    def __init__(self, state_dir: Path) -> None:
        try:
            make_state_dir(state_dir)
        except OSError as exc:
            raise JournalError(
                f"state_dir {state_dir}: cannot be created: {exc.strerror or exc}"
            ) from exc
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            fd = open_state_file(self.path)
        except OSError as exc:
            raise JournalError(
                f"state_dir {self.path.parent}: cannot be written ({self.path}): "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
