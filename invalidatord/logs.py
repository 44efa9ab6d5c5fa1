"""structlog, configured once: JSON when not on a terminal (systemd, containers), console on one.

Secrets never reach a log line. Three layers, because one alone leaks:

- by key: the value of any key naming a credential (`secret`, `token`, `password`...) is masked;
- by value: the AWS credentials this process was given in its environment
  (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and anything registered
  with `register_secret` are masked wherever they appear, whatever their shape;
- by shape: anything that looks like an access key id, a secret access key, an STS session
  token or a SigV4 signature is masked.

The masking runs on the rendered line, after exceptions are formatted: a traceback or an error
message quoting a credential is masked like everything else.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|authorization|signature", re.I)
_SECRET_VALUE = re.compile(
    r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b"  # access key ids (and role/user ids)
    r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"  # secret access keys (see below)
    r"|\b(?:FwoGZX|IQoJb3JpZ2lu)[A-Za-z0-9/+=]{20,}"  # STS session tokens (old and new)
    r"|Signature=[0-9a-f]{64}"
)
#: Environment variables whose values are credentials (masked by value at `configure`).
SECRET_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)
#: Shorter values are not masked by value: "testing" is a credential only in tests, and masking
#: a short common word everywhere would garble the log.
_MIN_SECRET_LENGTH = 12

_registered: set[str] = set()
_registered_lock = threading.Lock()
_registered_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a log line from now on (if it is long enough to be
    a credential rather than a word)."""
    global _registered_pattern
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _registered_lock:
        if value in _registered:
            return
        _registered.add(value)
        # longest first, so a token containing another registered value is masked whole
        alternatives = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(re.escape(v) for v in alternatives))


def _secret_shape(match: re.Match[str]) -> str:
    text = match.group(0)
    # A secret access key is 40 random base64 characters, so it mixes upper and lower case
    # letters and digits; a git commit id or a 40-character file name usually does not.
    if len(text) == 40 and not (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() for c in text)
    ):
        return text
    return REDACTED


def scrub(text: str) -> str:
    """`text` with every registered credential and every credential-shaped string masked."""
    pattern = _registered_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _SECRET_VALUE.sub(_secret_shape, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credentials by key name, by registered value and by shape."""
    for key in list(event):
        if _SECRET_KEY.search(key) and key != "event":
            event[key] = REDACTED
        else:
            event[key] = _scrub(event[key])
    return event


def _console(renderer: Callable[..., Any]) -> Callable[..., Any]:
    """The console renderer, with the URL paths first (`_paths_first`)."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        return renderer(logger, name, _paths_first(logger, name, event))

    return render


def _scrubbed(renderer: Callable[..., Any]) -> Callable[..., Any]:
    """The renderer, with its output masked too: whatever an object's repr or a formatted
    traceback adds after `redact` ran is masked on the final line."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        out = renderer(logger, name, event)
        return scrub(out) if isinstance(out, str) else out

    return render


#: In console format these keys come first, in this order: a person reading a terminal looks
#: for what was invalidated, not for the caller_reference (JSON keeps structlog's order).
CONSOLE_FIRST = ("paths", "sample", "path", "urls", "url", "distribution", "source")


def _paths_first(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor (console only): CONSOLE_FIRST keys ahead of the others."""
    first = {key: event.pop(key) for key in CONSOLE_FIRST if key in event}
    rest = dict(event)
    event.clear()
    event.update(first)
    event.update(rest)
    return event


def wants_console(stream: Any) -> bool:
    """`auto` means console on a terminal, JSON otherwise (systemd's journal, containers)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def configure(
    format: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: Any = None,
) -> Literal["json", "console"]:
    """Configure structlog and route the standard library's logging (watchdog, botocore) through
    the same renderer, at WARNING and above for libraries. Returns the format chosen (`auto`
    resolved). Safe to call again (a reload with another level or format)."""
    stream = stream or sys.stderr
    for name in SECRET_ENVIRONMENT:
        register_secret(os.environ.get(name))
    auto: Literal["json", "console"] = "console" if wants_console(stream) else "json"
    chosen = auto if format == "auto" else format
    renderer: Any = _scrubbed(
        structlog.processors.JSONRenderer()
        if chosen == "json"
        else _console(structlog.dev.ConsoleRenderer(colors=wants_console(stream), sort_keys=False))
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    return chosen
