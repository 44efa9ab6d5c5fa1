"""structlog, configured once: JSON when not on a terminal (systemd, containers), console on one.

Secrets never reach a log line: `redact` masks values of keys that name credentials and anything
shaped like an AWS access key, secret or session token, wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|authorization|signature", re.I)
_SECRET_VALUE = re.compile(
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # access key ids
    r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"  # secret access keys
    r"|\bFwoGZX[A-Za-z0-9/+=]{20,}"  # session tokens
    r"|Signature=[0-9a-f]{64}"
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub("[redacted]", value)
    if isinstance(value, dict):
        return {
            k: "[redacted]" if _SECRET_KEY.search(str(k)) else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credentials by key name and by shape."""
    for key in list(event):
        if _SECRET_KEY.search(key) and key != "event":
            event[key] = "[redacted]"
        else:
            event[key] = _scrub(event[key])
    return event


def configure(
    format: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: Any = None,
) -> None:
    """Configure structlog and route the standard library's logging (watchdog, botocore) through
    the same renderer, at WARNING and above for libraries."""
    stream = stream or sys.stderr
    if format == "auto":
        format = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
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
