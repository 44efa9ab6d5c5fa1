"""The config file's schema: one pydantic model per section, frozen, unknown keys refused.

Field checks live in `fields.py`; the cross-section check (names that must agree between
`distributions`, `sources` and `rules`) is `references.py`, run once by `Config`.
To add a key, add a field (with a `#:` comment saying what it does) and, if its values need a
check, a `field_validator` here; `load_config` locates its errors without more work. To add a
source type, add its model below and put it in `SourceConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from invalidatord.config import references
from invalidatord.config.fields import (
    ERR_INVALID,
    ERR_REFERENCE,
    Duration,
    Loc,
    StrictInt,
    check_ignore_pattern,
    check_marker,
    check_match,
    check_not_empty,
    check_positive,
    check_sqs_visibility_timeout,
    check_sqs_wait_time,
    check_tag,
    check_template,
    check_url,
    describe_value,
    fmt_seconds,
    located,
    none_is_empty,
    parse_listen,
    resolve_path,
    show_setting,
)
from invalidatord.errors import ConfigError
from invalidatord.mapping import Rule
from invalidatord.model import DEFAULT_IGNORE
from invalidatord.planner import Limits

_DISTRIBUTION_ID_RE = re.compile(r"[A-Z0-9]+")
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AwsConfig(_Model):
    """How to reach AWS. Everything optional: the standard boto3 credential chain applies."""

    region: str | None = "us-east-1"
    profile: str | None = None
    #: e.g. http://127.0.0.1:5000 for an emulator
    endpoint_url: str | None = None
    #: assumed before any call
    role_arn: str | None = None

    @field_validator("region", "profile")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        return None if value is None else check_not_empty(value)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("role_arn")
    @classmethod
    def _arn(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN_RE.fullmatch(value):
            raise ValueError(
                f"expected an IAM role ARN such as arn:aws:iam::123456789012:role/NAME, "
                f"got {value!r}"
            )
        return value


class DistributionConfig(_Model):
    """One CloudFront distribution, known to rules by its config name."""

    id: str
    #: the distribution has CloudFront's CacheTagConfig: rules may send `#tag` items to it
    cache_tags: bool = False

    @field_validator("id")
    @classmethod
    def _cloudfront_id(cls, value: str) -> str:
        if not _DISTRIBUTION_ID_RE.fullmatch(value):
            raise ValueError(
                "expected a CloudFront distribution id (upper-case letters and digits, "
                f"such as E2EXAMPLE12345), got {value!r}"
            )
        return value


# --- sources ---------------------------------------------------------------------------------


class _SourceModel(_Model):
    """What every source has: a name (unique; rules may name it) and a `type` (in each model)."""

    #: the keys `describe` shows first, as where the source looks
    _WHERE: ClassVar[tuple[str, ...]] = ()

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_not_empty(value)

    def where(self) -> str:
        """Where this source looks, in a few words (a path, a URL, s3://bucket/prefix)."""
        return " ".join(str(getattr(self, key)) for key in self._WHERE)

    def describe(self) -> str:
        """One line with every setting, for `check`: `NAME (TYPE): WHERE; key: value, ...`."""
        fields = type(self).model_fields
        rest = [
            f"{key}: {show_setting(getattr(self, key), field.metadata, field.annotation)}"
            for key, field in fields.items()
            if key not in ("name", "type", *self._WHERE)
        ]
        head = f"{self.name} ({getattr(self, 'type', '?')}): {self.where()}"
        return f"{head}; {', '.join(rest)}" if rest else head


def _default_ignore() -> list[str]:
    return list(DEFAULT_IGNORE)


class FilesystemSourceConfig(_SourceModel):
    """A document root on this machine, watched with inotify (or by polling) and rescanned."""

    _WHERE = ("root",)

    type: Literal["filesystem"]
    #: must be an existing directory; relative paths are taken from the config file's folder
    root: Path
    #: gitignore-style patterns, relative to root
    ignore: list[Annotated[str, AfterValidator(check_ignore_pattern)]] = Field(
        default_factory=_default_ignore
    )
    watcher: Literal["auto", "inotify", "polling"] = "auto"
    #: how often the polling watcher looks
    poll_interval: Duration = 5.0
    #: run the watcher in a process of its own (a second core for bursts); false = in-process
    watcher_process: bool = True
    #: the safety-net full rescan; None (or 0) = off
    rescan_interval: Duration | None = 600.0
    #: what makes a file changed: its size, mtime or inode ("mtime"), or its bytes
    #: ("content": hashed with XXH3-128, read once per change; README says what it costs)
    compare: Literal["mtime", "content"] = "content"
    #: deploy markers relative to root: while one exists the batch is held (max_delay at most)
    hold_while: list[Annotated[str, AfterValidator(check_marker)]] = Field(default_factory=list)

    @field_validator("root")
    @classmethod
    def _root(cls, value: Path, info: ValidationInfo) -> Path:
        value = resolve_path(value, info)
        if not value.exists():
            raise ValueError(f"does not exist: {value}")
        if not value.is_dir():
            raise ValueError(f"is not a directory: {value}")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        return check_positive(value)

    @field_validator("rescan_interval")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return value or None


class SqsSourceConfig(_SourceModel):
    """S3 event notifications (direct, through SNS, or through EventBridge) read from SQS."""

    _WHERE = ("queue_url",)

    type: Literal["sqs"]
    queue_url: str
    #: only events of this bucket
    bucket: str | None = None
    #: only keys under it; stripped from the path
    prefix: str = ""
    #: long-polling wait of one ReceiveMessage call (0-20 s)
    wait_time: Duration = 20.0
    #: how long a received message stays invisible before the heartbeat extends it (1s-12h)
    visibility_timeout: Duration = 60.0
    #: threads receiving from the queue
    receivers: StrictInt = Field(default=2, ge=1, le=10)
    #: "content": an object created with the ETag its key already had (the same bytes
    #: uploaded again) is not a change; "mtime": every event is
    compare: Literal["mtime", "content"] = "content"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if value is None else check_not_empty(value)

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("wait_time")
    @classmethod
    def _wait_time(cls, value: float) -> float:
        return check_sqs_wait_time(value)

    @field_validator("visibility_timeout")
    @classmethod
    def _visibility_timeout(cls, value: float) -> float:
        return check_sqs_visibility_timeout(value)


class S3PollSourceConfig(_SourceModel):
    """A bucket (or a prefix of one) listed every `interval` and compared with the previous
    listing: for buckets without event notifications, or as a safety net beside them."""

    _WHERE = ("bucket", "prefix")

    type: Literal["s3-poll"]
    bucket: str
    #: only keys under it; stripped from the path ("" = every key)
    prefix: str = ""
    #: time between the end of one listing and the start of the next
    interval: Duration = 300.0
    #: "content": a key is changed only when its ETag is (the same bytes uploaded again are
    #: not a change); "mtime": when its ETag or LastModified is
    compare: Literal["mtime", "content"] = "content"

    @field_validator("bucket")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        return check_not_empty(value)

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        return check_positive(value)

    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.lstrip('/')}"


#: One entry of `sources`, told apart by its `type` key.
SourceConfig = Annotated[
    FilesystemSourceConfig | SqsSourceConfig | S3PollSourceConfig, Field(discriminator="type")
]


# --- rules and the other sections ------------------------------------------------------------


def _distribution_names(value: object) -> str | list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return check_not_empty(value)
    if isinstance(value, list):
        if not value:
            raise ValueError("must name at least one distribution (or leave the key out)")
        for item in value:
            if not isinstance(item, str):
                raise ValueError(
                    f"expected distribution names, got {describe_value(item)} in the list"
                )
        return list(value)
    raise ValueError(
        f"expected a distribution name or a list of names, got {describe_value(value)}"
    )


class RuleConfig(_Model):
    """Which URLs to invalidate, on which distributions, when a path matching `match` changes.

    Rules are tried in order; the first whose pattern (and `source`, if set) matches wins.
    """

    #: gitignore-style glob on the path relative to the source root
    match: Annotated[str, AfterValidator(check_match)]
    #: a name, a list of names, or None (= the one configured distribution);
    #: `Config.rule_distributions(i)` resolves it
    distribution: Annotated[str | list[str] | None, PlainValidator(_distribution_names)] = None
    #: templates over {path} {dir} {name} {stem} {ext}; [] = matched, invalidate nothing
    urls: list[Annotated[str, AfterValidator(check_template)]]
    #: apply only to this source
    source: str | None = None
    #: cache tag templates (same fields as urls), sent as `#tag` items; only to distributions
    #: with `cache_tags: true`
    tags: list[Annotated[str, AfterValidator(check_tag)]] = []


def _default_rules() -> list[RuleConfig]:
    return [RuleConfig(match="**", urls=["/{path}"])]


class DebounceConfig(_Model):
    """When a batch is due: after `quiet` without changes, or when the oldest pending change
    is `max_delay` old, whichever comes first."""

    quiet: Duration = 2.0
    max_delay: Duration = 30.0
    #: pending paths held before a batch is forced out
    max_pending: StrictInt = Field(default=10000, ge=1)

    @model_validator(mode="after")
    def _quiet_within_max_delay(self) -> DebounceConfig:
        if self.quiet > self.max_delay:
            message = (
                f"must not be longer than max_delay ({fmt_seconds(self.max_delay)}), "
                f"got {fmt_seconds(self.quiet)}"
            )
            raise located("DebounceConfig", [(("quiet",), message, self.quiet)], ERR_INVALID)
        return self


class InvalidationConfig(_Model):
    """How much of CloudFront's in-flight limits to leave free, and how often to look."""

    #: file paths (of 3,000 in flight) left for invalidations made by hand
    headroom_files: StrictInt = Field(default=100, ge=0, le=2999)
    #: wildcard paths (of 15 in flight) left for invalidations made by hand
    headroom_wildcards: StrictInt = Field(default=2, ge=0, le=14)
    #: how often InProgress invalidations are checked
    poll_interval: Duration = 30.0
    #: how often the journal is reconciled with CloudFront's list of invalidations
    reconcile_interval: Duration = 300.0
    #: the longest wait between retries when CloudFront keeps refusing
    max_backoff: Duration = 300.0
    #: the simple policy, used only where the tree under a distribution is unknown (S3
    #: sources, URLs that do not mirror the source path): a directory with at least this many
    #: changed paths pending goes as one `/dir/*`; None = always send each path (no wildcard
    #: is ever made, the cost model included)
    collapse_threshold: StrictInt | None = Field(default=100, ge=2)
    #: the largest share of the objects under a wildcard that may be unchanged (0-1)
    max_over_invalidation: float = Field(default=0.5, ge=0.0, le=1.0)
    #: CloudFront's free paths a month (per AWS account)
    free_paths_per_month: StrictInt = Field(default=1000, ge=0)
    #: dollars per path beyond the free ones
    price_per_path: float = Field(default=0.005, ge=0.0)
    #: dollars one unchanged object evicted from the cache is taken to cost
    eviction_cost: float = Field(default=0.0005, ge=0.0)
    #: whether `/*` may be chosen when (nearly) everything changed
    allow_root_wildcard: bool = False
    #: how long work may wait for in-flight room (for a wildcard) before it goes as exact paths
    max_wait: Duration = 300.0

    def limits(self) -> Limits:
        """The planner's limits under this config."""
        return Limits(
            headroom_files=self.headroom_files,
            headroom_wildcards=self.headroom_wildcards,
            collapse_threshold=self.collapse_threshold,
            # null has always meant "send every path as itself": no wildcard at all
            wildcards=self.collapse_threshold is not None,
            max_over_invalidation=self.max_over_invalidation,
            free_paths_per_month=self.free_paths_per_month,
            price_per_path=self.price_per_path,
            eviction_cost=self.eviction_cost,
            allow_root_wildcard=self.allow_root_wildcard,
            max_wait=self.max_wait,
        )

    @field_validator("max_wait")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("poll_interval", "reconcile_interval", "max_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        return check_positive(value)


class MetricsConfig(_Model):
    """Where GET /metrics (Prometheus) and GET /healthz are served; None = off."""

    listen: str | None = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, the host without IPv6 brackets; None when metrics are off."""
        return None if self.listen is None else parse_listen(self.listen)


class LogConfig(_Model):
    """Log format (auto: console on a terminal, JSON otherwise) and level."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class FleetConfig(_Model):
    """A fleet of origins sharing one set of invalidations through an SQS FIFO queue:
    publishers (the origin hosts) send their URL changes to it instead of CloudFront, one or
    two invalidators take them from it and submit them."""

    role: Literal["publisher", "invalidator"]
    #: the FIFO queue (its name ends in `.fifo`)
    queue_url: str
    #: how long an invalidator drops a path reported again with the same version (other hosts
    #: finishing the same deploy later); SQS itself deduplicates only for 5 minutes
    dedup_window: Duration = 3600.0
    #: an invalidator's long-polling wait of one ReceiveMessage call (0-20 s)
    wait_time: Duration = 20.0
    #: how long a received message stays invisible to the other invalidator (1s-12h)
    visibility_timeout: Duration = 60.0

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        check_url(value)
        if not value.rstrip("/").endswith(".fifo"):
            raise ValueError(
                f"must be an SQS FIFO queue (its name ends in .fifo; order and deduplication "
                f"depend on it), got {value!r}"
            )
        return value

    @field_validator("dedup_window")
    @classmethod
    def _dedup_window(cls, value: float) -> float:
        return check_positive(value)

    @field_validator("wait_time")
    @classmethod
    def _wait_time(cls, value: float) -> float:
        return check_sqs_wait_time(value)

    @field_validator("visibility_timeout")
    @classmethod
    def _visibility_timeout(cls, value: float) -> float:
        return check_sqs_visibility_timeout(value)

    def describe(self) -> str:
        """One line for `check`."""
        if self.role == "publisher":
            return f"publisher to {self.queue_url} (CloudFront is never called)"
        return (
            f"invalidator from {self.queue_url}; dedup_window {fmt_seconds(self.dedup_window)}, "
            f"wait_time {fmt_seconds(self.wait_time)}, "
            f"visibility_timeout {fmt_seconds(self.visibility_timeout)}"
        )


class Config(_Model):
    """The whole, validated config. Build it with `load_config` (which locates every problem
    in the file) or directly from Python values (tests)."""

    #: the journal lives here; relative paths are taken from the config file's folder
    state_dir: Path = Path("/var/lib/invalidatord")
    aws: AwsConfig = Field(default_factory=AwsConfig)
    distributions: dict[str, DistributionConfig] = Field(min_length=1)
    #: may be empty only for a fleet invalidator (references.reference_problems checks it)
    sources: list[SourceConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=_default_rules)
    debounce: DebounceConfig = Field(default_factory=DebounceConfig)
    invalidation: InvalidationConfig = Field(default_factory=InvalidationConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    #: how long SIGTERM waits for the pipeline to flush
    shutdown_timeout: Duration = 10.0
    #: a fleet of origins (publisher or invalidator); None = a single daemon
    fleet: FleetConfig | None = None
    #: the file this was loaded from (set by `load_config`, never read from YAML)
    source_path: Path | None = Field(default=None, exclude=True)

    # Where each key was in the file, for warnings that name a line.
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)
    _filename: str | None = PrivateAttr(default=None)

    @field_validator("aws", "debounce", "invalidation", "metrics", "log", mode="before")
    @classmethod
    def _empty_section(cls, value: object) -> object:
        return none_is_empty(value)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @model_validator(mode="wrap")
    @classmethod
    def _check_references(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        """The cross-section check, on the input, so its problems are reported together with
        those of the fields even when some fields are invalid."""
        if not isinstance(data, Mapping):
            return handler(data)
        problems = references.reference_problems(data)
        try:
            cfg = handler(data)
        except ValidationError as exc:
            if not problems:
                raise
            raise references.merged(exc, problems) from None
        if problems:
            raise located("Config", problems, ERR_REFERENCE)
        return cfg

    def rule_distributions(self, i: int) -> tuple[str, ...]:
        """The names of the distributions rule `i` applies to, in order, without repeats."""
        named = self.rules[i].distribution
        if named is None:
            if len(self.distributions) != 1:
                raise ConfigError(
                    [
                        f"rules[{i}].distribution: required when more than one distribution is "
                        f"configured (known: {', '.join(sorted(self.distributions))})"
                    ]
                )
            return (next(iter(self.distributions)),)
        if isinstance(named, str):
            return (named,)
        return tuple(dict.fromkeys(named))

    def mapping_rules(self) -> tuple[Rule, ...]:
        """The rules as `invalidatord.mapping.Mapper` takes them, distributions resolved.
        The one place rules are built from the config."""
        return tuple(
            Rule(
                match=rule.match,
                distributions=self.rule_distributions(i),
                urls=tuple(rule.urls),
                source=rule.source,
                tags=tuple(rule.tags),
            )
            for i, rule in enumerate(self.rules)
        )

    def source(self, name: str) -> FilesystemSourceConfig | SqsSourceConfig | S3PollSourceConfig:
        """The source called `name`; KeyError if there is none."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)
