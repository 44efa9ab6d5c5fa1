"""The one exception tree. Each exception builds its own message from structured arguments."""

from __future__ import annotations


class InvalidatordError(Exception):
    """Base of every error invalidatord raises on purpose."""


class ConfigError(InvalidatordError):
    """The config file is unusable. `problems` holds one line per problem, ready to print:
    `config.yaml:14: rules[1].distribution: unknown distribution 'nope' (known: www)`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(InvalidatordError):
    """A source cannot watch or read what it was configured to."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"source {source!r}: {reason}")


class JournalError(InvalidatordError):
    """The journal (state_dir) cannot be opened or written."""


class SinkError(InvalidatordError):
    """CloudFront refused or failed a request. `code` is the AWS error code (or a transport
    class such as `ConnectionError`); `retryable` says whether the same request may succeed
    later unchanged."""

    def __init__(
        self,
        distribution: str,
        code: str,
        message: str,
        *,
        retryable: bool,
        http_status: int | None = None,
    ) -> None:
        self.distribution = distribution
        self.code = code
        self.message = message
        self.retryable = retryable
        self.http_status = http_status
        super().__init__(f"distribution {distribution!r}: {code}: {message}")


class TooManyInProgress(SinkError):
    """TooManyInvalidationsInProgress (or BatchTooLarge): wait for in-flight work to complete."""


class InvalidPaths(SinkError):
    """InvalidArgument about the batch's paths: some path in it is unacceptable."""


class CallerReferenceConflict(SinkError):
    """The CallerReference was already used for a batch with other paths."""


class AccessProblem(SinkError):
    """AccessDenied, NoSuchDistribution, expired or missing credentials: an operator must act."""
