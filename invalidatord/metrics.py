"""Prometheus metrics (one registry per daemon, so tests can run several in one process).

Every family is listed in `FAMILIES` with its labels; `deploy/grafana-dashboard.json` and
`deploy/alerts.yml` query only these. `Metrics.declare` creates the labelled series of the
configured sources and distributions at zero, so a family is on /metrics from the first scrape
(an alert on `increase(...)` needs the zero before the first overflow or error, not after).

Who records what: the pipeline counts changes, accepted paths and rescans; the submitter counts
submissions, submitted paths, rejected paths and the errors of CreateInvalidation, and observes
both histograms; the daemon counts the errors of every other CloudFront call, watcher overflows
(from each filesystem source's own count) and sets every gauge (`Daemon.refresh_gauges`, on
each scrape and every few seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from invalidatord import __version__
from invalidatord.model import ChangeKind

#: CloudFront's price per path past the monthly free tier (USD), and the free tier itself.
PRICE_PER_PATH = 0.005
FREE_PATHS_PER_MONTH = 1000

_LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
_COMPLETION_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600)

#: Path kinds as CloudFront counts them against its in-flight limits.
PATH_KINDS = ("file", "wildcard")
#: Why a tree was rescanned: the whole root ("tree": start-up catch-up, overflow, periodic
#: safety net) or one directory ("subtree": a directory created, deleted or moved).
RESCAN_REASONS = ("tree", "subtree")

#: Every family on /metrics (the name Prometheus shows) -> its labels.
FAMILIES: dict[str, tuple[str, ...]] = {
    "invalidatord_build_info": ("version", "commit"),
    "invalidatord_changes_total": ("source", "kind"),
    "invalidatord_paths_accepted_total": ("distribution",),
    "invalidatord_invalidations_submitted_total": ("distribution",),
    "invalidatord_paths_submitted_total": ("distribution", "kind"),
    "invalidatord_paths_rejected_total": ("distribution",),
    "invalidatord_api_errors_total": ("distribution", "code"),
    "invalidatord_pending_paths": ("distribution",),
    "invalidatord_oldest_pending_age_seconds": ("distribution",),
    "invalidatord_paths_in_flight": ("distribution", "kind"),
    "invalidatord_change_to_submit_seconds": ("distribution",),
    "invalidatord_submit_to_complete_seconds": ("distribution",),
    "invalidatord_paths_billed_this_month": (),
    "invalidatord_estimated_cost_this_month_usd": (),
    "invalidatord_watcher_overflows_total": ("source",),
    "invalidatord_watcher_restarts_total": ("source",),
    "invalidatord_rescans_total": ("source", "reason"),
    "invalidatord_last_submission_timestamp_seconds": ("distribution",),
    "invalidatord_source_healthy": ("source",),
    "invalidatord_source_root_missing": ("source",),
    "invalidatord_root_swaps_total": ("source",),
    "invalidatord_distribution_healthy": ("distribution",),
    "invalidatord_healthy": (),
    "invalidatord_accept_failures_total": ("source",),
    "invalidatord_journal_writable": (),
    "invalidatord_journal_lost": (),
    "invalidatord_paths_set_aside": ("distribution",),
    "invalidatord_orphaned_paths": ("distribution_id",),
}


#: Families with series only while there is something to report: their labels are not known
#: from the config (a distribution id the config no longer names).
SPARSE_FAMILIES = frozenset({"invalidatord_orphaned_paths"})


def build_commit() -> str:
    """The git commit this code is: $INVALIDATORD_COMMIT (set by a packager or an image
    build), else read from the checkout the package runs from (no git binary needed), else
    "unknown" (an installed wheel)."""
    commit = os.environ.get("INVALIDATORD_COMMIT", "").strip()
    if commit:
        return commit
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()] if common.exists() else [])
        for root in roots:
            if (root / ref).exists():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
    except (OSError, IndexError):
        pass
    return "unknown"


class Metrics:
    """The daemon's metric families, in their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "invalidatord_"
        self.build_info = Gauge(
            p + "build_info",
            "Always 1; the version and the git commit are labels",
            ["version", "commit"],
            registry=r,
        )
        self.build_info.labels(__version__, build_commit()).set(1)
        self.changes = Counter(
            p + "changes", "Changes seen, per source and kind", ["source", "kind"], registry=r
        )
        self.accepted = Counter(
            p + "paths_accepted", "URL paths committed to the journal", ["distribution"], registry=r
        )
        self.submitted = Counter(
            p + "invalidations_submitted", "Invalidations created", ["distribution"], registry=r
        )
        self.paths_submitted = Counter(
            p + "paths_submitted",
            "Paths submitted, files vs wildcards",
            ["distribution", "kind"],
            registry=r,
        )
        self.api_errors = Counter(
            p + "api_errors",
            "Failed CloudFront API calls (after botocore's retries) by error code",
            ["distribution", "code"],
            registry=r,
        )
        self.rejected = Counter(
            p + "paths_rejected",
            "Paths CloudFront refused (set aside)",
            ["distribution"],
            registry=r,
        )
        self.pending = Gauge(
            p + "pending_paths",
            "Paths accepted and not yet submitted (queued or in a batch still being sent)",
            ["distribution"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            p + "oldest_pending_age_seconds",
            "Age of the oldest change whose paths are not yet submitted (0 when none)",
            ["distribution"],
            registry=r,
        )
        self.in_flight = Gauge(
            p + "paths_in_flight",
            "Paths in progress on CloudFront (ours and others')",
            ["distribution", "kind"],
            registry=r,
        )
        self.to_submit = Histogram(
            p + "change_to_submit_seconds",
            "From the first change of a batch to its submission",
            ["distribution"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.to_complete = Histogram(
            p + "submit_to_complete_seconds",
            "From submission to Completed",
            ["distribution"],
            buckets=_COMPLETION_BUCKETS,
            registry=r,
        )
        self.billed = Gauge(
            p + "paths_billed_this_month", "Paths submitted this calendar month (UTC)", registry=r
        )
        self.cost = Gauge(
            p + "estimated_cost_this_month_usd",
            "Estimated invalidation cost this month (past the free 1,000 paths)",
            registry=r,
        )
        self.overflows = Counter(
            p + "watcher_overflows",
            "Inotify queue overflows (each one is followed by a full rescan)",
            ["source"],
            registry=r,
        )
        self.watcher_restarts = Counter(
            p + "watcher_restarts",
            "Watcher processes that ended unasked and were replaced (each followed by a rescan)",
            ["source"],
            registry=r,
        )
        self.rescans = Counter(
            p + "rescans", "Tree rescans run (tree = whole root)", ["source", "reason"], registry=r
        )
        self.last_success = Gauge(
            p + "last_submission_timestamp_seconds",
            "Unix time of the last successful submission",
            ["distribution"],
            registry=r,
        )
        self.source_healthy = Gauge(
            p + "source_healthy",
            "1 while the source watches or receives as configured",
            ["source"],
            registry=r,
        )
        self.root_missing = Gauge(
            p + "source_root_missing",
            "1 while a filesystem source's root does not exist (it re-attaches when it is back)",
            ["source"],
            registry=r,
        )
        self.root_swaps = Counter(
            p + "root_swaps",
            "Times a filesystem source's root was replaced (renamed, recreated, relinked)",
            ["source"],
            registry=r,
        )
        self.distribution_healthy = Gauge(
            p + "distribution_healthy",
            "1 while CloudFront answers for the distribution with these credentials",
            ["distribution"],
            registry=r,
        )
        self.healthy = Gauge(p + "healthy", "1 when GET /healthz answers 200", registry=r)
        self.accept_failures = Counter(
            p + "accept_failures",
            "Flushes the journal could not commit (full disk, read-only); retried, never lost",
            ["source"],
            registry=r,
        )
        self.journal_writable = Gauge(
            p + "journal_writable",
            "0 while the last commit of accepted changes failed, 1 otherwise",
            registry=r,
        )
        self.journal_writable.set(1)
        self.journal_lost = Gauge(
            p + "journal_lost",
            "1 when this run started on a new journal where the state dir had another one "
            "(deleted or lost): every file of every tree source was treated as changed",
            registry=r,
        )
        self.orphaned = Gauge(
            p + "orphaned_paths",
            "Unsent paths of a distribution id no distribution in the config has any more",
            ["distribution_id"],
            registry=r,
        )
        self.set_aside = Gauge(
            p + "paths_set_aside",
            "Paths CloudFront refused (InvalidArgument), kept in the journal, never sent",
            ["distribution"],
            registry=r,
        )
        # a fleet (fleet: in the config): publishers' outbox, invalidators' deduplication
        self.fleet_outbox = Gauge(
            p + "fleet_outbox_paths",
            "URL paths a fleet publisher has accepted and SQS has not yet taken",
            registry=r,
        )
        self.fleet_sent = Counter(
            p + "fleet_messages_sent", "Messages SQS accepted from this publisher", registry=r
        )
        self.fleet_send_errors = Counter(
            p + "fleet_send_errors",
            "Failed SendMessageBatch calls (after botocore's retries) by error code",
            ["code"],
            registry=r,
        )
        self.fleet_received = Counter(
            p + "fleet_messages_received", "Fleet messages read by this invalidator", registry=r
        )
        self.fleet_duplicates = Counter(
            p + "fleet_duplicates",
            "Fleet messages found duplicates within fleet.dedup_window (nothing queued)",
            registry=r,
        )

    def declare(
        self,
        *,
        distributions: Iterable[str],
        sources: Iterable[str],
        tree_sources: Iterable[str] = (),
    ) -> None:
        """Create every labelled series whose labels are known from the config, at zero.
        `tree_sources` are the sources that can overflow and be rescanned (filesystem)."""
        for source in sources:
            for kind in ChangeKind:
                self.changes.labels(source, kind.value)
            self.source_healthy.labels(source)
            self.accept_failures.labels(source)
        for source in tree_sources:
            self.overflows.labels(source)
            self.watcher_restarts.labels(source)
            self.root_missing.labels(source)
            self.root_swaps.labels(source)
            for reason in RESCAN_REASONS:
                self.rescans.labels(source, reason)
        for name in distributions:
            self.accepted.labels(name)
            self.submitted.labels(name)
            self.rejected.labels(name)
            self.pending.labels(name)
            self.oldest_pending.labels(name)
            self.to_submit.labels(name)
            self.to_complete.labels(name)
            self.distribution_healthy.labels(name)
            self.set_aside.labels(name)
            for path_kind in PATH_KINDS:
                self.paths_submitted.labels(name, path_kind)
                self.in_flight.labels(name, path_kind)

    def forget(self, *, distributions: Iterable[str], sources: Iterable[str]) -> None:
        """Drop the gauges of distributions and sources no longer configured (after a reload):
        a gauge left behind would report a stale value forever. Counters stay, as counters do."""
        keep_d, keep_s = set(distributions), set(sources)
        for gauge in (
            self.pending,
            self.oldest_pending,
            self.last_success,
            self.in_flight,
            self.set_aside,
        ):
            _remove_unless(gauge, 0, keep_d)
        _remove_unless(self.distribution_healthy, 0, keep_d)
        _remove_unless(self.source_healthy, 0, keep_s)
        _remove_unless(self.root_missing, 0, keep_s)

    def set_billed(self, paths: int) -> None:
        self.billed.set(paths)
        self.cost.set(max(0, paths - FREE_PATHS_PER_MONTH) * PRICE_PER_PATH)


def _remove_unless(gauge: Gauge, position: int, keep: set[str]) -> None:
    for labels in list(gauge._metrics):  # prometheus_client offers no public listing
        if labels[position] not in keep:
            gauge.remove(*labels)
