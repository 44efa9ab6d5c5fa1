"""Prometheus metrics (one registry per daemon, so tests can run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: CloudFront's price per path past the monthly free tier (USD), and the free tier itself.
PRICE_PER_PATH = 0.005
FREE_PATHS_PER_MONTH = 1000

_LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
_COMPLETION_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "invalidatord_"
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
            p + "api_errors", "CloudFront API errors by code", ["distribution", "code"], registry=r
        )
        self.rejected = Counter(
            p + "paths_rejected",
            "Paths CloudFront refused (set aside)",
            ["distribution"],
            registry=r,
        )
        self.pending = Gauge(
            p + "pending_paths", "Paths waiting to be submitted", ["distribution"], registry=r
        )
        self.oldest_pending = Gauge(
            p + "oldest_pending_age_seconds",
            "Age of the oldest pending path",
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
        self.billed = Gauge(p + "paths_billed_this_month", "Paths submitted this month", registry=r)
        self.cost = Gauge(
            p + "estimated_cost_this_month_usd",
            "Estimated invalidation cost this month (past the free 1,000 paths)",
            registry=r,
        )
        self.overflows = Counter(
            p + "watcher_overflows", "Inotify queue overflows", ["source"], registry=r
        )
        self.rescans = Counter(p + "rescans", "Tree rescans run", ["source", "reason"], registry=r)
        self.last_success = Gauge(
            p + "last_submission_timestamp_seconds",
            "Unix time of the last successful submission",
            ["distribution"],
            registry=r,
        )

    def set_billed(self, paths: int) -> None:
        self.billed.set(paths)
        self.cost.set(max(0, paths - FREE_PATHS_PER_MONTH) * PRICE_PER_PATH)
