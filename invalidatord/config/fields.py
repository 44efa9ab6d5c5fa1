"""Value types and field checks the schema is built from: durations, listen addresses, URLs,
patterns. Each check raises ValueError with a message ready to show after `file:line: key:`."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import urlsplit

import pathspec
from pydantic import BeforeValidator, Strict, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from invalidatord.mapping import check_tag_template, check_url_template, compile_match

#: A key path into the document: mapping keys and list indexes, e.g. ("sources", 0, "root").
Loc = tuple[Any, ...]

# Error types raised by our own validators; their messages are already meant for people.
ERR_INVALID = "invalid_config"
ERR_REFERENCE = "config_reference"

_DURATION_HINT = "expected a duration such as 500ms, 2s, 5m or a number of seconds"
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def describe_value(value: object) -> str:
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


# --- durations -------------------------------------------------------------------------------


def parse_duration(value: str | int | float) -> float:
    """Seconds from `500ms`, `2s`, `1.5s`, `5m`, `1h`, or a plain number of seconds (>= 0).

    Raises ValueError with a message ready to show for anything else.
    """
    if isinstance(value, bool):  # bool is an int to Python, never a duration to a person
        raise ValueError(f"{_DURATION_HINT}, got {describe_value(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{_DURATION_HINT}, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{_DURATION_HINT}, got {describe_value(value)}")
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
    raise ValueError(f"{_DURATION_HINT}, got {describe_value(value)}")


#: A duration in seconds; YAML may say `500ms`, `2s`, `1.5s`, `5m`, `1h` or a number of seconds.
Duration = Annotated[float, BeforeValidator(_to_seconds)]

#: An integer that YAML must spell as one (no `true`, no `"5"`, no `5.0`).
StrictInt = Annotated[int, Strict()]


def is_duration(metadata: Iterable[object]) -> bool:
    """Whether a field's metadata (or an Annotated's) makes it a `Duration`."""
    return any(isinstance(meta, BeforeValidator) and meta.func is _to_seconds for meta in metadata)


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def show_setting(value: object, metadata: list[Any], annotation: Any) -> str:
    """A setting as it could be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and _is_duration_field(metadata, annotation):
        return fmt_seconds(value)
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_setting(item, [], None) for item in value) + "]"
    return str(value)


def _is_duration_field(metadata: list[Any], annotation: Any) -> bool:
    if is_duration(metadata):
        return True
    # `Duration | None`: the marker sits on the union's member
    return any(
        get_origin(arg) is Annotated and is_duration(arg.__metadata__)
        for arg in get_args(annotation)
    )


# --- checks ----------------------------------------------------------------------------------


def check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def check_not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def check_positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


# SQS: long polling waits 0-20 s; a visibility timeout is 1 s to 12 hours.
SQS_MAX_WAIT = 20.0
SQS_MAX_VISIBILITY = 43200.0


# The SQS source and a fleet's queue both receive from SQS: one check of its limits.
def check_sqs_wait_time(value: float) -> float:
    if value > SQS_MAX_WAIT:
        raise ValueError(
            f"must be at most {fmt_seconds(SQS_MAX_WAIT)} (the SQS long-polling limit), "
            f"got {fmt_seconds(value)}"
        )
    return value


def check_sqs_visibility_timeout(value: float) -> float:
    if value > SQS_MAX_VISIBILITY:
        raise ValueError(f"must be at most 12h (the SQS limit), got {fmt_seconds(value)}")
    if value < 1:
        raise ValueError(f"must be at least 1s (the SQS limit), got {fmt_seconds(value)}")
    return value


def check_ignore_pattern(pattern: str) -> str:
    compile_gitignore(pattern)
    return pattern


def compile_gitignore(pattern: str) -> pathspec.GitIgnoreSpec:
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


def check_marker(marker: str) -> str:
    """A `hold_while` entry: a plain path relative to the root (looked up, not matched)."""
    if not marker.strip("/"):
        raise ValueError("empty marker path")
    if marker.startswith("/"):
        raise ValueError(f"must be relative to the root, got {marker!r}")
    if any(p in ("", ".", "..") for p in marker.rstrip("/").split("/")):
        raise ValueError(f"must be a plain path under the root (no ., .. or //), got {marker!r}")
    return marker


def check_match(pattern: str) -> str:
    try:
        compile_match(pattern)
    except re.error as exc:  # pathspec lets re.error out for some patterns, e.g. '[z-a]'
        raise ValueError(
            f"pattern {pattern!r} is not a valid gitignore pattern: {exc.msg}"
        ) from None
    return pattern


def check_template(template: str) -> str:
    check_url_template(template)
    return template


def check_tag(template: str) -> str:
    check_tag_template(template)
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


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Absolute, with `~` expanded; relative paths are taken from the config file's folder."""
    value = value.expanduser()
    if not value.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        value = Path(base) / value
    return Path(os.path.normpath(value))


def none_is_empty(value: object) -> object:
    """A section written as `debounce:` with every key commented out means its defaults."""
    return {} if value is None else value


def located(title: str, problems: Iterable[tuple[Loc, str, object]], kind: str) -> ValidationError:
    """One ValidationError carrying several problems, each at its own location below the
    model being validated (pydantic keeps these locations when a validator raises it)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
            for loc, message, value in problems
        ],
    )
