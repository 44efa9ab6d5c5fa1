"""YAML -> validated, frozen config. Every problem names the file, the line and the key.

The file is composed with PyYAML first, to learn the line of every key and list item, then
constructed with the safe loader and validated with pydantic. Each pydantic error's location is
translated into a dotted key path (`sources[0].root`) and the nearest line known for it, and its
message is rewritten for people. All problems are reported at once, as lines of a `ConfigError`:

    config.yaml:14: rules[1].distribution: unknown distribution 'nope' (known: www)
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import pathspec
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from invalidatord.errors import ConfigError
from invalidatord.mapping import Rule, check_url_template, compile_match
from invalidatord.model import DEFAULT_IGNORE
from invalidatord.planner import Limits

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AwsConfig",
    "Config",
    "DebounceConfig",
    "DistributionConfig",
    "Duration",
    "FilesystemSourceConfig",
    "InvalidationConfig",
    "LogConfig",
    "MetricsConfig",
    "RuleConfig",
    "S3PollSourceConfig",
    "SourceConfig",
    "SqsSourceConfig",
    "config_warnings",
    "default_config_path",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = "/etc/invalidatord/config.yaml"
#: Environment variable that overrides DEFAULT_CONFIG_PATH (the `-c` option overrides both).
CONFIG_ENV = "INVALIDATORD_CONFIG"

#: A key path into the document: mapping keys and list indexes, e.g. ("sources", 0, "root").
Loc = tuple[Any, ...]

# Error types raised by our own validators; their messages are already meant for people.
_ERR_INVALID = "invalid_config"
_ERR_REFERENCE = "config_reference"

_DURATION_HINT = "expected a duration such as 500ms, 2s, 5m or a number of seconds"
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DISTRIBUTION_ID_RE = re.compile(r"[A-Z0-9]+")
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_CATCH_ALL_PATTERNS = frozenset({"*", "**", "**/*", "/**", "/*/**"})
# SQS: long polling waits 0-20 s; a visibility timeout is at most 12 hours.
_SQS_MAX_WAIT = 20.0
_SQS_MAX_VISIBILITY = 43200.0


# --- durations -------------------------------------------------------------------------------


def parse_duration(value: str | int | float) -> float:
    """Seconds from `500ms`, `2s`, `1.5s`, `5m`, `1h`, or a plain number of seconds (>= 0).

    Raises ValueError with a message ready to show for anything else.
    """
    if isinstance(value, bool):  # bool is an int to Python, never a duration to a person
        raise ValueError(f"{_DURATION_HINT}, got {_describe(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{_DURATION_HINT}, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{_DURATION_HINT}, got {_describe(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _to_seconds(value: object) -> float:
    if isinstance(value, timedelta):  # from Python callers
        return parse_duration(value.total_seconds())
    if isinstance(value, str | int | float):
        return parse_duration(value)
    raise ValueError(f"{_DURATION_HINT}, got {_describe(value)}")


#: A duration in seconds; YAML may say `500ms`, `2s`, `1.5s`, `5m`, `1h` or a number of seconds.
Duration = Annotated[float, BeforeValidator(_to_seconds)]

#: An integer that YAML must spell as one (no `true`, no `"5"`, no `5.0`).
StrictInt = Annotated[int, Strict()]


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


# --- small validators shared by the models ----------------------------------------------------


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _check_not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _check_ignore_pattern(pattern: str) -> str:
    _compile_gitignore(pattern)
    return pattern


def _compile_gitignore(pattern: str) -> pathspec.GitIgnoreSpec:
    """An ignore-list line as the filesystem source compiles it (negations allowed)."""
    if not pattern.strip():
        raise ValueError("empty pattern")
    try:
        spec = pathspec.GitIgnoreSpec.from_lines([pattern])
    except ValueError as exc:  # GitIgnorePatternError
        raise ValueError(f"not a valid gitignore-style pattern: {pattern!r}") from exc
    except re.error as exc:
        raise ValueError(f"not a valid gitignore-style pattern: {pattern!r} ({exc.msg})") from exc
    if not any(getattr(p, "include", None) is not None for p in spec.patterns):
        raise ValueError(
            f"pattern {pattern!r} matches nothing (a comment, a lone '/' or an unclosed '[')"
        )
    return spec


def _check_match(pattern: str) -> str:
    try:
        compile_match(pattern)
    except re.error as exc:  # pathspec lets re.error out for some patterns, e.g. '[z-a]'
        raise ValueError(
            f"pattern {pattern!r} is not a valid gitignore pattern: {exc.msg}"
        ) from None
    return pattern


def _check_template(template: str) -> str:
    check_url_template(template)
    return template


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:9464`) -> (host without brackets, port).

    Raises ValueError with a message ready to show.
    """
    hint = f"expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464, got {value!r}"
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
    if bracketed:
        host, port_text = bracketed.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {value!r}") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(hint)
        if ":" in host:
            raise ValueError(f"an IPv6 address goes in brackets, such as [::1]:9464, got {value!r}")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"not a host name or address: {host!r}")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(hint)
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def _located(title: str, problems: Iterable[tuple[Loc, str, object]], kind: str) -> ValidationError:
    """One ValidationError carrying several problems, each at its own location below the
    model being validated (pydantic keeps these locations when a validator raises it)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
            for loc, message, value in problems
        ],
    )


def _none_is_empty(value: object) -> object:
    """A section written as `debounce:` with every key commented out means its defaults."""
    return {} if value is None else value


# --- the models ------------------------------------------------------------------------------


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
        return None if value is None else _check_not_empty(value)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

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

    @field_validator("id")
    @classmethod
    def _cloudfront_id(cls, value: str) -> str:
        if not _DISTRIBUTION_ID_RE.fullmatch(value):
            raise ValueError(
                "expected a CloudFront distribution id (upper-case letters and digits, "
                f"such as E2EXAMPLE12345), got {value!r}"
            )
        return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Absolute, with `~` expanded; relative paths are taken from the config file's folder."""
    value = value.expanduser()
    if not value.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        value = Path(base) / value
    return Path(os.path.normpath(value))


def _default_ignore() -> list[str]:
    return list(DEFAULT_IGNORE)


class FilesystemSourceConfig(_Model):
    """A document root on this machine, watched with inotify (or by polling) and rescanned."""

    name: str
    type: Literal["filesystem"]
    #: must be an existing directory; relative paths are taken from the config file's folder
    root: Path
    #: gitignore-style patterns, relative to root
    ignore: list[Annotated[str, AfterValidator(_check_ignore_pattern)]] = Field(
        default_factory=_default_ignore
    )
    watcher: Literal["auto", "inotify", "polling"] = "auto"
    #: how often the polling watcher looks
    poll_interval: Duration = 5.0
    #: run the watcher in a process of its own (a second core for bursts); false = in-process
    watcher_process: bool = True
    #: the safety-net full rescan; None (or 0) = off
    rescan_interval: Duration | None = 600.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_not_empty(value)

    @field_validator("root")
    @classmethod
    def _root(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve_path(value, info)
        if not value.exists():
            raise ValueError(f"does not exist: {value}")
        if not value.is_dir():
            raise ValueError(f"is not a directory: {value}")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value

    @field_validator("rescan_interval")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return value or None


class SqsSourceConfig(_Model):
    """S3 event notifications (direct, through SNS, or through EventBridge) read from SQS."""

    name: str
    type: Literal["sqs"]
    queue_url: str
    #: only events of this bucket
    bucket: str | None = None
    #: only keys under it; stripped from the path
    prefix: str = ""
    #: long-polling wait of one ReceiveMessage call (0-20 s)
    wait_time: Duration = 20.0
    visibility_timeout: Duration = 60.0
    #: threads receiving from the queue
    receivers: StrictInt = Field(default=2, ge=1, le=10)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_not_empty(value)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if value is None else _check_not_empty(value)

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("wait_time")
    @classmethod
    def _wait_time(cls, value: float) -> float:
        if value > _SQS_MAX_WAIT:
            raise ValueError(
                f"must be at most {_fmt_seconds(_SQS_MAX_WAIT)} (the SQS long-polling limit), "
                f"got {_fmt_seconds(value)}"
            )
        return value

    @field_validator("visibility_timeout")
    @classmethod
    def _visibility_timeout(cls, value: float) -> float:
        if value > _SQS_MAX_VISIBILITY:
            raise ValueError(f"must be at most 12h (the SQS limit), got {_fmt_seconds(value)}")
        return value


class S3PollSourceConfig(_Model):
    """A bucket (or a prefix of one) listed every `interval` and compared with the previous
    listing: for buckets without event notifications, or as a safety net beside them."""

    name: str
    type: Literal["s3-poll"]
    bucket: str
    #: only keys under it; stripped from the path ("" = every key)
    prefix: str = ""
    #: time between the end of one listing and the start of the next
    interval: Duration = 300.0

    @field_validator("name", "bucket")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        return _check_not_empty(value)

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value


#: One entry of `sources`, told apart by its `type` key.
SourceConfig = Annotated[
    FilesystemSourceConfig | SqsSourceConfig | S3PollSourceConfig, Field(discriminator="type")
]


def _distribution_names(value: object) -> str | list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _check_not_empty(value)
    if isinstance(value, list):
        if not value:
            raise ValueError("must name at least one distribution (or leave the key out)")
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected distribution names, got {_describe(item)} in the list")
        return list(value)
    raise ValueError(f"expected a distribution name or a list of names, got {_describe(value)}")


class RuleConfig(_Model):
    """Which URLs to invalidate, on which distributions, when a path matching `match` changes.

    Rules are tried in order; the first whose pattern (and `source`, if set) matches wins.
    """

    #: gitignore-style glob on the path relative to the source root
    match: Annotated[str, AfterValidator(_check_match)]
    #: a name, a list of names, or None (= the one configured distribution);
    #: `Config.rule_distributions(i)` resolves it
    distribution: Annotated[str | list[str] | None, PlainValidator(_distribution_names)] = None
    #: templates over {path} {dir} {name} {stem} {ext}; [] = matched, invalidate nothing
    urls: list[Annotated[str, AfterValidator(_check_template)]]
    #: apply only to this source
    source: str | None = None


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
                f"must not be longer than max_delay ({_fmt_seconds(self.max_delay)}), "
                f"got {_fmt_seconds(self.quiet)}"
            )
            raise _located("DebounceConfig", [(("quiet",), message, self.quiet)], _ERR_INVALID)
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
    #: a directory with at least this many changed paths pending is invalidated as one
    #: `/dir/*` (billed as one path, fewer requests; also invalidates its unchanged files);
    #: None = always send each path
    collapse_threshold: StrictInt | None = Field(default=100, ge=2)

    def limits(self) -> Limits:
        """The planner's limits under this config."""
        return Limits(
            headroom_files=self.headroom_files,
            headroom_wildcards=self.headroom_wildcards,
            collapse_threshold=self.collapse_threshold,
        )

    @field_validator("poll_interval", "reconcile_interval", "max_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value


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


class Config(_Model):
    """The whole, validated config. Build it with `load_config` (which locates every problem
    in the file) or directly from Python values (tests)."""

    #: the journal lives here; relative paths are taken from the config file's folder
    state_dir: Path = Path("/var/lib/invalidatord")
    aws: AwsConfig = Field(default_factory=AwsConfig)
    distributions: dict[str, DistributionConfig] = Field(min_length=1)
    sources: list[SourceConfig] = Field(min_length=1)
    rules: list[RuleConfig] = Field(default_factory=_default_rules)
    debounce: DebounceConfig = Field(default_factory=DebounceConfig)
    invalidation: InvalidationConfig = Field(default_factory=InvalidationConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    #: how long SIGTERM waits for the pipeline to flush
    shutdown_timeout: Duration = 10.0
    #: the file this was loaded from (set by `load_config`, never read from YAML)
    source_path: Path | None = Field(default=None, exclude=True)

    # Where each key was in the file, for warnings that name a line.
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)
    _filename: str | None = PrivateAttr(default=None)

    @field_validator("aws", "debounce", "invalidation", "metrics", "log", mode="before")
    @classmethod
    def _empty_section(cls, value: object) -> object:
        return _none_is_empty(value)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)

    @model_validator(mode="after")
    def _check_references(self) -> Config:
        problems = _reference_problems(
            self.distributions,
            [{"name": source.name} for source in self.sources],
            [{"distribution": r.distribution, "source": r.source} for r in self.rules],
            rules_given="rules" in self.model_fields_set,
        )
        if problems:
            raise _located("Config", problems, _ERR_REFERENCE)
        return self

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
        """The rules as `invalidatord.mapping.Mapper` takes them, distributions resolved."""
        return tuple(
            Rule(
                match=rule.match,
                distributions=self.rule_distributions(i),
                urls=tuple(rule.urls),
                source=rule.source,
            )
            for i, rule in enumerate(self.rules)
        )

    def source(self, name: str) -> FilesystemSourceConfig | SqsSourceConfig | S3PollSourceConfig:
        """The source called `name`; KeyError if there is none."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


def _reference_problems(
    distributions: object, sources: object, rules: object, *, rules_given: bool
) -> list[tuple[Loc, str, object]]:
    """Names that must agree across sections: duplicate source names, the distribution and
    source each rule names. Works on raw YAML data as well as on validated values, so these
    problems are reported even when other parts of the file are invalid."""
    problems: list[tuple[Loc, str, object]] = []
    dist_names = (
        sorted(k for k in distributions if isinstance(k, str))
        if isinstance(distributions, Mapping)
        else None
    )
    known_dists = ", ".join(dist_names or ())
    source_names: dict[str, int] | None = None
    if isinstance(sources, list):
        source_names = {}
        for i, source in enumerate(sources):
            name = source.get("name") if isinstance(source, Mapping) else None
            if not isinstance(name, str):
                continue
            if name in source_names:
                where = f"sources[{source_names[name]}]"
                problems.append(
                    (("sources", i, "name"), f"duplicate source name {name!r} (also {where})", name)
                )
            else:
                source_names[name] = i
    several = dist_names is not None and len(dist_names) > 1
    if not rules_given:
        if several:
            message = (
                "required when more than one distribution is configured, because the default "
                f"rule names no distribution (known: {known_dists})"
            )
            problems.append((("rules",), message, None))
        return problems
    if not isinstance(rules, list):
        return problems
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            continue
        named = rule.get("distribution")
        if named is None:
            if several:
                message = (
                    f"required when more than one distribution is configured (known: {known_dists})"
                )
                problems.append((("rules", i, "distribution"), message, None))
        elif dist_names is not None and dist_names:
            candidates: list[tuple[Loc, object]] = (
                [(("rules", i, "distribution"), named)]
                if not isinstance(named, list)
                else [(("rules", i, "distribution", j), n) for j, n in enumerate(named)]
            )
            for loc, name in candidates:
                if isinstance(name, str) and name not in dist_names:
                    message = f"unknown distribution {name!r} (known: {known_dists})"
                    problems.append((loc, message, name))
        source = rule.get("source")
        if isinstance(source, str) and source_names is not None and source not in source_names:
            known = ", ".join(sorted(source_names))
            problems.append(
                (("rules", i, "source"), f"unknown source {source!r} (known: {known})", source)
            )
    return problems


# --- loading ---------------------------------------------------------------------------------


def default_config_path() -> str:
    """`$INVALIDATORD_CONFIG` if set and not empty, else DEFAULT_CONFIG_PATH."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file at `path`.

    Raises ConfigError whose `problems` are one line each, `FILE:LINE: KEY.PATH: message`.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                f"{file}: cannot read the config file: not UTF-8 text "
                f"({exc.reason} at byte {exc.start})"
            ]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the config file: {exc.strerror or exc}"]) from None
    absolute = file.absolute()
    return _load(text, str(file), absolute.parent, absolute)


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse and validate config YAML given as text. `filename` is used in messages;
    relative paths are taken from `base_dir` (default: the current directory)."""
    return _load(text, filename, base_dir, None)


def _load(text: str, filename: str, base_dir: Path | None, source_path: Path | None) -> Config:
    def fail(problems: list[tuple[int, str]]) -> ConfigError:
        ordered = sorted(dict.fromkeys(problems), key=lambda problem: problem[0])
        return ConfigError([f"{filename}:{line}: {message}" for line, message in ordered])

    try:
        data, lines, problems = _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise fail([_yaml_problem(exc, text)]) from None
    if data is None:
        raise fail([(1, "the file is empty; a config needs at least distributions: and sources:")])
    if not isinstance(data, dict):
        message = (
            "the top level must be a mapping of keys such as distributions: and sources:, "
            f"got {_describe(data)}"
        )
        raise fail([(lines.get((), 1), message)])
    if "source_path" in data:  # set from the file's location, never read from the file
        path: Loc = ("source_path",)
        problems.append((lines[path], _join(path, _unknown_key("source_path", Config))))
        data = {k: v for k, v in data.items() if k != "source_path"}

    context = {"base_dir": base_dir}
    try:
        cfg = Config.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for error in errors:
            path, message = _translate(error, data)
            if error["type"] == "invalid_key":  # the line of the key itself, below `path`
                line = _line_of((*path, error["loc"][-1]), lines)
            else:
                line = _line_of(path, lines)
            problems.append((line, _join(path, message)))
        if not any(error["type"] == _ERR_REFERENCE for error in errors):
            # Config's own cross-check runs only when every field is valid: run it on the raw
            # data so these problems are reported together with the others.
            for path, message, _value in _reference_problems(
                data.get("distributions"),
                data.get("sources"),
                data.get("rules"),
                rules_given="rules" in data,
            ):
                problems.append((_line_of(path, lines), _join(path, message)))
        raise fail(problems) from None
    if problems:
        raise fail(problems)
    if source_path is not None:
        cfg = cfg.model_copy(update={"source_path": source_path})
    cfg._lines = lines
    cfg._filename = filename
    return cfg


def _parse_yaml(text: str) -> tuple[object, dict[Loc, int], list[tuple[int, str]]]:
    """The document's data, the line (1-based) of each key and list item, and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        problems: list[tuple[int, str]] = []
        # Walk before constructing: construction rewrites merge keys (<<) in place.
        _walk_lines(loader, node, (), lines, problems, set())
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, lines, problems


def _walk_lines(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[int, str]],
    active: set[int],
) -> None:
    if id(node) in active:  # a recursive alias: the structure repeats, its lines do not
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                where = _render((*path, key))
                problems.append((line, f"{where}: duplicate key (first at line {first_line[key]})"))
            else:
                first_line[key] = line
            lines[(*path, key)] = line
            _walk_lines(loader, value_node, (*path, key), lines, problems, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk_lines(loader, item, (*path, i), lines, problems, active)
    active.discard(id(node))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "cannot parse"
        return line, f"invalid YAML: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return line, f"invalid YAML: unacceptable character #x{character:04x}: {exc.reason}"
    return 1, f"invalid YAML: {' '.join(str(exc).split())}"


def _line_of(path: Loc, lines: Mapping[Loc, int]) -> int:
    """The line of `path`, or of its nearest ancestor in the file (a missing key: its parent)."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def _render(path: Loc) -> str:
    """("sources", 0, "root") -> "sources[0].root"."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out


def _join(path: Loc, message: str) -> str:
    where = _render(path)
    return f"{where}: {message}" if where else message


def _describe(value: object) -> str:
    """A value as a person would name it in "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# --- pydantic errors -> located messages ------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(arg) for arg in get_args(tp) if arg is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged(tp: Any) -> dict[object, type[BaseModel]]:
    """For a union of models told apart by `type`: tag -> model. Empty for anything else."""
    members = _union_members(tp)
    if len(members) < 2 or not all(_is_model(m) for m in members):
        return {}
    tags: dict[object, type[BaseModel]] = {}
    for member in members:
        field = member.model_fields.get("type")
        if field is not None:
            for tag in get_args(field.annotation):
                tags[tag] = member
    return tags


def _step(tp: Any, part: object, node: object) -> Any:
    """The type found at `part` below a value of type `tp` (None when unknown)."""
    members = _union_members(tp)
    tags = _tagged(tp)
    if tags:
        tag = node.get("type") if isinstance(node, Mapping) else None
        members = [tags[tag]] if tag in tags else []
    for member in members:
        if _is_model(member):
            field = member.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                return field.annotation
        elif get_origin(member) is list and isinstance(part, int):
            return get_args(member)[0]
        elif get_origin(member) is dict:
            return get_args(member)[1]
    return None


def _child(node: object, part: object) -> object:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _walk_types(loc: Sequence[object], data: object) -> tuple[Loc, Any, object]:
    """Follow a pydantic `loc` down Config: the key path without union tags (pydantic puts
    `filesystem` in `sources.0.filesystem.root`), the type there, and the raw value there."""
    path: list[object] = []
    tp: Any = Config
    node = data
    for part in loc:
        tags = _tagged(tp)
        if tags and part in tags and isinstance(node, Mapping) and node.get("type") == part:
            tp = tags[part]
            continue
        tp = _step(tp, part, node)
        node = _child(node, part)
        path.append(part)
    return tuple(path), tp, node


def _model_keys(model: Any) -> list[str]:
    if not _is_model(model):
        return []
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _unknown_key(key: object, model: Any) -> str:
    expected = _model_keys(model)
    hint = f" (expected one of: {', '.join(expected)})" if expected else ""
    return f"unknown key {key!r}{hint}"


def _bounds(model_path: Loc, data: object) -> tuple[object, object]:
    """The (lower, upper) bounds declared on the integer field at `model_path`."""
    lower: object = None
    upper: object = None
    if model_path:
        _, parent, parent_node = _walk_types(model_path[:-1], data)
        members = _union_members(parent)
        tags = _tagged(parent)
        if tags and isinstance(parent_node, Mapping) and parent_node.get("type") in tags:
            members = [tags[parent_node["type"]]]
        for member in members:
            field = member.model_fields.get(model_path[-1]) if _is_model(member) else None
            for meta in field.metadata if field is not None else ():
                lower = getattr(meta, "ge", lower)
                upper = getattr(meta, "le", upper)
    return lower, upper


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "list_type": "a list",
    "path_type": "a path",
}


def _translate(error: Mapping[str, Any], data: object) -> tuple[Loc, str]:
    """A pydantic error -> (key path, message for people)."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    path, tp, _node = _walk_types(error["loc"], data)
    if kind == "missing":
        return path, "required key missing"
    if kind == "extra_forbidden":
        _, parent, _ = _walk_types(error["loc"][:-1], data)
        models = [m for m in _union_members(parent) if _is_model(m)]
        return path, _unknown_key(path[-1], models[0] if len(models) == 1 else None)
    if kind == "invalid_key":
        return path[:-1], f"key {path[-1]!r} is not a string"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        tags = ", ".join(str(tag) for tag in _tagged(tp))
        if kind == "union_tag_not_found":
            if not isinstance(value, Mapping):
                return path, f"expected a mapping of keys, got {_describe(value)}"
            return (*path, "type"), f"required key missing (expected one of: {tags})"
        return (*path, "type"), f"unknown type {ctx.get('tag')!r} (expected one of: {tags})"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return path, str(ctx["error"])
    if kind in (_ERR_INVALID, _ERR_REFERENCE):
        return path, str(error["msg"])
    if kind in _TYPE_NAMES:
        return path, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        return path, f"expected {ctx.get('expected')}, got {_describe(value)}"
    if kind in ("too_short", "string_too_short"):
        return path, "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal"):
        lower, upper = _bounds(path, data)
        if lower is not None and upper is not None:
            return path, f"must be between {lower} and {upper}, got {_describe(value)}"
        if kind == "greater_than_equal":
            return path, f"must be at least {ctx.get('ge')}, got {_describe(value)}"
        return path, f"must be at most {ctx.get('le')}, got {_describe(value)}"
    message = str(error["msg"])
    return path, message[:1].lower() + message[1:]


# --- warnings --------------------------------------------------------------------------------


def config_warnings(cfg: Config) -> list[str]:
    """Likely mistakes in a valid config, one line each (located like errors when the config
    was loaded from a file). Not errors: the daemon runs as told."""
    found: list[tuple[Loc, str]] = []

    address = cfg.metrics.address
    if address is not None and not _is_loopback(address[0]):
        found.append(
            (
                ("metrics", "listen"),
                f"{address[0]} is reachable from other machines, and /metrics and /healthz "
                "have no authentication",
            )
        )
    if cfg.debounce.quiet == 0:
        found.append(
            (("debounce", "quiet"), "0 submits every change on its own, without batching bursts")
        )
    if not cfg.rules:
        found.append((("rules",), "no rules: no change is ever invalidated"))

    catch_alls: list[tuple[int, str | None]] = []
    for i, rule in enumerate(cfg.rules):
        shadow = next((j for j, scope in catch_alls if scope is None or scope == rule.source), None)
        if shadow is not None:
            found.append(
                (
                    ("rules", i),
                    f"unreachable: rules[{shadow}] (match {cfg.rules[shadow].match!r}) "
                    "already matches every path",
                )
            )
        if rule.match.strip() in _CATCH_ALL_PATTERNS:
            catch_alls.append((i, rule.source))

    used = {name for i in range(len(cfg.rules)) for name in _safe_rule_distributions(cfg, i)}
    first_with_id: dict[str, str] = {}
    for name, distribution in cfg.distributions.items():
        if name not in used:
            found.append((("distributions", name), "no rule applies to this distribution"))
        if distribution.id in first_with_id:
            other = first_with_id[distribution.id]
            found.append(
                (("distributions", name, "id"), f"same CloudFront id as distributions.{other}")
            )
        else:
            first_with_id[distribution.id] = name

    for i, source in enumerate(cfg.sources):
        if isinstance(source, FilesystemSourceConfig):
            if source.root == Path("/"):
                found.append(
                    (("sources", i, "root"), "watches the whole filesystem; is that intended?")
                )
                continue
            if not os.access(source.root, os.R_OK | os.X_OK):
                found.append(
                    (("sources", i, "root"), f"{source.root} is not readable by this user")
                )
            if cfg.state_dir.is_relative_to(source.root):
                found.append(
                    (
                        ("state_dir",),
                        f"is inside the root of source {source.name!r}: "
                        "journal writes would be seen as changes",
                    )
                )
        elif isinstance(source, SqsSourceConfig) and source.wait_time == 0:
            found.append(
                (("sources", i, "wait_time"), "0 turns long polling off: many more SQS requests")
            )

    if cfg._filename is None:
        return [_join(path, message) for path, message in found]
    located = sorted(
        ((_line_of(path, cfg._lines), _join(path, message)) for path, message in found),
        key=lambda warning: warning[0],
    )
    return [f"{cfg._filename}:{line}: {text}" for line, text in located]


def _safe_rule_distributions(cfg: Config, i: int) -> tuple[str, ...]:
    try:
        return cfg.rule_distributions(i)
    except ConfigError:
        return tuple(cfg.distributions)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
