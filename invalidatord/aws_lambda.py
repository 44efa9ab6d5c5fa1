"""Lambda mode: `handler(event, context)` for an SQS event source mapping, no daemon needed.

Wiring (`deploy/template.yaml`): bucket notifications -> SQS queue (with a dead-letter queue)
-> this function. The mapping's batching window (`MaximumBatchingWindowInSeconds`, up to 300 s)
is the debounce: SQS hands over up to `BatchSize` messages at once, and each invocation makes
one CreateInvalidation per distribution for all of them.

What it does, in plain words:

- **Same config, same rules.** The config file is the daemon's (`INVALIDATORD_CONFIG`, default
  `config.yaml` in `LAMBDA_TASK_ROOT`, where the deployment package puts it next to the
  `invalidatord` package). Messages are parsed by `s3events.parse_message`, keys filtered by
  the `bucket` and `prefix` of a source of type `sqs` and mapped by its rules, then planned by
  `planner.make_plan` within CloudFront's limits. A record's source is the `sqs` source whose
  `queue_url` names the record's queue (`eventSourceARN`), or the only `sqs` source, or the one
  named by `INVALIDATORD_SOURCE`. Its other keys (`state_dir`, `debounce`, `metrics`...) do not
  apply here.
- **No journal: the state lives in SQS.** The answer is a partial batch response
  (`ReportBatchItemFailures`): a message is failed when it cannot be parsed (it fails alone),
  or when an invalidation it contributed a path to failed (every contributor of that
  distribution's batch fails). SQS makes failed messages visible again after the visibility
  timeout, and the redrive policy moves one that keeps failing to the dead-letter queue. The
  others are deleted by Lambda. An exception out of the handler (an unusable config) fails the
  whole batch.
- **Idempotent retries.** The CallerReference is a hash of the batch's paths and of the sorted
  ids of the messages that contributed them: when SQS retries the same batch, CloudFront returns
  the invalidation it already made instead of making (and billing) a second one.
- **Limits without a journal.** The function cannot know what is in flight. It plans for an
  idle distribution less the configured headroom; when CloudFront answers
  TooManyInvalidationsInProgress, that distribution's messages are failed and come back after
  the visibility timeout, which is the backoff. Paths that did not fit fail their messages too.
- **A path CloudFront refuses** (InvalidArgument) is found by bisecting the batch (the
  daemon's routine, `bisection.send_bisecting`), logged
  (`path_rejected`) and dropped; the rest is invalidated and no message fails for it (a retry
  would be refused again). When every path is refused (or so many parts that it must be the
  request: `bisection.REQUEST_REFUSED_PARTS`), nothing is dropped: the messages fail and come
  back (`batch_refused_whole`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from invalidatord import logs
from invalidatord.bisection import halves, send_bisecting
from invalidatord.config import Config, SqsSourceConfig, load_config
from invalidatord.contracts import CloudFront
from invalidatord.errors import ConfigError, InvalidPaths, SinkError
from invalidatord.factory import cloudfront_for
from invalidatord.mapping import Mapper
from invalidatord.model import Batch, InFlight, is_wildcard
from invalidatord.planner import covers, make_plan
from invalidatord.s3events import KeyFilter, MalformedMessage, excerpt, parse_message

__all__ = ["LambdaApp", "config_path", "handler"]

log = structlog.get_logger(__name__)

#: Overrides the config file's location.
CONFIG_ENV = "INVALIDATORD_CONFIG"
#: Names the source every record belongs to (otherwise chosen by the record's queue).
SOURCE_ENV = "INVALIDATORD_SOURCE"
#: The config file's name in the deployment package.
CONFIG_NAME = "config.yaml"
REFERENCE_PREFIX = "invalidatord-lambda-"

BatchResponse = dict[str, list[dict[str, str]]]


def config_path() -> Path:
    """`INVALIDATORD_CONFIG`, else `config.yaml` in `LAMBDA_TASK_ROOT`, else next to the
    package (the same place in a deployment package)."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    root = os.environ.get("LAMBDA_TASK_ROOT")
    if root:
        return Path(root) / CONFIG_NAME
    return Path(__file__).resolve().parent.parent / CONFIG_NAME


def caller_reference(message_ids: Iterable[str], paths: Iterable[str]) -> str:
    """Deterministic from what the batch is made of: the same messages with the same paths
    always give the same reference."""
    digest = hashlib.sha256()
    for part in (*sorted(set(message_ids)), "", *sorted(set(paths))):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    return REFERENCE_PREFIX + digest.hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class _Source:
    """An `sqs` source of the config as the handler uses it."""

    name: str
    keys: KeyFilter
    queue: tuple[str, str] | None  # (account, queue name) of its queue_url


@dataclass
class _Planned:
    """URL paths of one distribution, oldest first, each with the messages it came from."""

    paths: dict[str, set[str]] = field(default_factory=dict)

    def add(self, url: str, message_id: str) -> None:
        self.paths.setdefault(url, set()).add(message_id)

    def contributors(self, urls: Iterable[str]) -> set[str]:
        return {m for url in urls for m in self.paths.get(url, ())}


class LambdaApp:
    """The handler's work, built once per container from one config."""

    def __init__(self, cfg: Config, cloudfront: CloudFront, *, source: str | None = None) -> None:
        self.cfg = cfg
        self.cloudfront = cloudfront
        self.mapper = Mapper(cfg.mapping_rules())
        self.limits = cfg.invalidation.limits()
        self.sources = [
            _Source(s.name, KeyFilter.of(s.bucket, s.prefix), _queue_of_url(s.queue_url))
            for s in cfg.sources
            if isinstance(s, SqsSourceConfig)
        ]
        if source is not None:
            chosen = [s for s in self.sources if s.name == source]
            if not chosen:
                names = ", ".join(s.name for s in self.sources) or "none"
                raise ConfigError(
                    [f"{SOURCE_ENV}={source!r}: no source of type sqs by that name ({names})"]
                )
            self.sources = chosen
        if not self.sources:
            raise ConfigError(["sources: Lambda mode needs a source of type sqs"])
        self.forced = source is not None

    def handle(self, event: Mapping[str, Any]) -> BatchResponse:
        """Process one SQS batch; the partial batch response names the messages to retry."""
        records = event.get("Records") or []
        order: dict[str, int] = {}
        failed: set[str] = set()
        planned: dict[str, _Planned] = {}
        for record in records:
            message_id = str(record.get("messageId") or "")
            if not message_id:
                log.error("lambda_record_unusable", keys=sorted(record)[:8])
                continue
            order.setdefault(message_id, len(order))
            if not self._collect(record, message_id, planned):
                failed.add(message_id)
        for distribution in self.cfg.distributions:
            if distribution in planned:
                failed |= self._invalidate(distribution, planned[distribution])
        log.info(
            "lambda_batch_done",
            messages=len(records),
            failed=len(failed),
            distributions=sorted(planned),
        )
        in_order = sorted(failed, key=order.__getitem__)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in in_order]}

    # -- messages -> URL paths -------------------------------------------------------------

    def _collect(
        self, record: Mapping[str, Any], message_id: str, planned: dict[str, _Planned]
    ) -> bool:
        """Map one record's events into `planned`; False when the message must be retried."""
        body = record.get("body")
        receive_count = (record.get("attributes") or {}).get("ApproximateReceiveCount")
        try:
            events = parse_message(body if isinstance(body, str) else "")
        except MalformedMessage as exc:
            log.warning(
                "lambda_message_malformed",
                message_id=message_id,
                reason=str(exc),
                excerpt=excerpt(body),
                receive_count=receive_count,
            )
            return False
        if not events:
            return True
        source = self._source_for(str(record.get("eventSourceARN") or ""))
        if source is None:
            log.error(
                "lambda_no_source",
                message_id=message_id,
                queue=record.get("eventSourceARN"),
                hint=f"name the source in {SOURCE_ENV} or give it this queue's queue_url",
            )
            return False
        for event in events:
            path, why = source.keys.path_of(event.bucket, event.key)
            if path is None:
                log.debug(
                    "lambda_event_ignored",
                    message_id=message_id,
                    source=source.name,
                    bucket=event.bucket,
                    key=event.key,
                    reason=why,
                )
                continue
            mapped = self.mapper.map(source.name, path)
            for url, reason in mapped.rejected:
                log.warning(
                    "path_not_sendable", source=source.name, path=path, url=url, reason=reason
                )
            for distribution, urls in mapped.urls.items():
                target = planned.setdefault(distribution, _Planned())
                for url in urls:
                    target.add(url, message_id)
        return True

    def _source_for(self, arn: str) -> _Source | None:
        if self.forced or len(self.sources) == 1:
            return self.sources[0]
        queue = _queue_of_arn(arn)
        return next((s for s in self.sources if queue and s.queue == queue), None)

    # -- URL paths -> CloudFront -----------------------------------------------------------

    def _invalidate(self, distribution: str, planned: _Planned) -> set[str]:
        """Invalidate one distribution's paths; return the messages to retry."""
        plan = make_plan(distribution, list(planned.paths), InFlight(), self.limits)
        failed = planned.contributors(plan.deferred)
        if plan.deferred:
            log.warning(
                "lambda_paths_deferred",
                distribution=distribution,
                paths=len(plan.deferred),
                messages=len(failed),
            )
        for batch in plan.batches:
            wildcards = [p for p in batch.paths if is_wildcard(p)]
            covered = [p for p in plan.covered if any(covers(w, p) for w in wildcards)]
            contributors = planned.contributors([*batch.paths, *covered])
            if not self._submit(distribution, batch.paths, contributors):
                failed |= contributors
        return failed

    def _submit(self, distribution: str, paths: tuple[str, ...], messages: set[str]) -> bool:
        """CreateInvalidation for `paths`, bisecting on InvalidArgument; False when a part of
        it failed (its messages are retried)."""
        failed = False

        def send(batch: Batch) -> bool:
            nonlocal failed
            failed |= not self._send(batch, messages)
            return True  # every other half is still worth sending

        def split(batch: Batch, exc: InvalidPaths) -> tuple[Batch, Batch]:
            first, second = halves(batch.paths)
            log.warning(
                "batch_bisected",
                distribution=distribution,
                paths=len(batch.paths),
                halves=[len(first), len(second)],
                error=exc.message,
            )
            return Batch(distribution, first), Batch(distribution, second)

        result = send_bisecting(Batch(distribution, paths), send=send, split=split)
        if result.refused_whole is not None:
            # The request, not its paths: fail the messages, SQS retries them later.
            log.warning(
                "batch_refused_whole",
                distribution=distribution,
                paths=len(paths),
                requests=result.requests,
                messages=len(messages),
                error=result.refused_whole.message,
            )
            return False
        for batch, exc in result.rejected:
            # a retry would be refused again: drop the path, keep the message
            log.error(
                "path_rejected", distribution=distribution, path=batch.paths[0], error=exc.message
            )
        return not failed

    def _send(self, batch: Batch, messages: set[str]) -> bool:
        """One CreateInvalidation; raises InvalidPaths, False when it failed otherwise."""
        distribution, paths = batch.distribution, batch.paths
        distribution_id = self.cfg.distributions[distribution].id
        reference = caller_reference(messages, paths)
        try:
            invalidation = self.cloudfront.create_invalidation(distribution_id, paths, reference)
        except InvalidPaths:
            raise
        except SinkError as exc:
            log.warning(
                "lambda_invalidation_failed",
                distribution=distribution,
                distribution_id=distribution_id,
                code=exc.code,
                error=exc.message,
                retryable=exc.retryable,
                paths=len(paths),
                messages=len(messages),
            )
            return False
        log.info(
            "batch_submitted",
            distribution=distribution,
            distribution_id=distribution_id,
            invalidation_id=invalidation.id,
            status=invalidation.status,
            paths=len(paths),
            messages=len(messages),
            caller_reference=reference,
        )
        return True


# -- the entry point ----------------------------------------------------------------------------

_app_lock = threading.Lock()
_app: tuple[tuple[str, int, str | None], LambdaApp] | None = None


def handler(event: Mapping[str, Any], context: Any) -> BatchResponse:
    """The Lambda entry point (`invalidatord.aws_lambda.handler`)."""
    return _current_app().handle(event)


def _current_app() -> LambdaApp:
    """The app for the config file as it is now: built on the first invocation of a container
    and again only when the file (or `INVALIDATORD_SOURCE`) changes."""
    global _app
    path = config_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc.strerror})"]) from exc
    key = (str(path), mtime, os.environ.get(SOURCE_ENV) or None)
    with _app_lock:
        if _app is not None and _app[0] == key:
            return _app[1]
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("lambda_config_invalid", problem=problem)
            raise
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda: JSON lines to CloudWatch
            logs.configure(cfg.log.format, cfg.log.level)
        app = LambdaApp(cfg, cloudfront_for(cfg), source=key[2])
        _app = (key, app)
        return app


def _queue_of_url(url: str) -> tuple[str, str] | None:
    """(account, queue name) of `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    return (parts[-2], parts[-1]) if len(parts) >= 2 else None


def _queue_of_arn(arn: str) -> tuple[str, str] | None:
    """(account, queue name) of `arn:aws:sqs:REGION:ACCOUNT:NAME`."""
    parts = arn.split(":")
    return (parts[4], parts[5]) if len(parts) == 6 and parts[2] == "sqs" else None
