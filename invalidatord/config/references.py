"""Names that must agree across sections of the config: source names are unique, and each
rule names distributions and a source that exist. One check, run by `Config` on its input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from invalidatord.config.fields import ERR_INVALID, ERR_REFERENCE, Loc

__all__ = ["merged", "reference_problems"]


def merged(exc: ValidationError, problems: list[tuple[Loc, str, object]]) -> ValidationError:
    """`exc`'s errors followed by `problems`, as one ValidationError."""
    details: list[InitErrorDetails] = []
    for error in exc.errors(include_url=False):
        kind: str | PydanticCustomError = error["type"]
        if kind in (ERR_INVALID, ERR_REFERENCE):
            kind = PydanticCustomError(error["type"], error["msg"])
        detail = InitErrorDetails(type=kind, loc=error["loc"], input=error["input"])
        if "ctx" in error:
            detail["ctx"] = error["ctx"]
        details.append(detail)
    for loc, message, value in problems:
        details.append(
            InitErrorDetails(type=PydanticCustomError(ERR_REFERENCE, message), loc=loc, input=value)
        )
    return ValidationError.from_exception_data(exc.title, details)


def _get(item: object, key: str) -> object:
    """`key` of a section item given as YAML data or as a model (Python callers)."""
    if isinstance(item, Mapping):
        return item.get(key)
    if isinstance(item, BaseModel):
        return getattr(item, key, None)
    return None


def reference_problems(data: Mapping[Any, Any]) -> list[tuple[Loc, str, object]]:
    """Names that must agree across sections: duplicate source names, the distribution and
    source each rule names. Reads the input (YAML data, or models from Python callers), so
    these problems are reported even when other parts of the file are invalid."""
    distributions = data.get("distributions")
    sources = data.get("sources")
    rules = data.get("rules")
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
            name = _get(source, "name")
            if not isinstance(name, str):
                continue
            if name in source_names:
                where = f"sources[{source_names[name]}]"
                problems.append(
                    (("sources", i, "name"), f"duplicate source name {name!r} (also {where})", name)
                )
            else:
                source_names[name] = i
    fleet = data.get("fleet")
    invalidator = _get(fleet, "role") == "invalidator" if fleet is not None else False
    if not invalidator:
        # Only a fleet invalidator has work without sources of its own (the fleet queue's).
        if "sources" not in data:
            problems.append((("sources",), "required key missing", None))
        elif sources == []:
            message = (
                "must not be empty "
                "(only a fleet invalidator, fleet.role: invalidator, may have no sources)"
            )
            problems.append((("sources",), message, sources))
    several = dist_names is not None and len(dist_names) > 1
    if "rules" not in data:
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
        if not isinstance(rule, Mapping | BaseModel):
            continue
        named = _get(rule, "distribution")
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
        tags = _get(rule, "tags")
        if tags and isinstance(distributions, Mapping):
            targets = (
                [named]
                if isinstance(named, str)
                else list(named)
                if isinstance(named, list)
                else list(distributions)
            )
            lacking = [
                n
                for n in targets
                if isinstance(n, str)
                and n in distributions
                and not _get(distributions[n], "cache_tags")
            ]
            if lacking:
                message = (
                    f"cache tags need distributions with cache_tags: true; "
                    f"{', '.join(sorted(lacking))} has none"
                )
                problems.append((("rules", i, "tags"), message, tags))
        source = _get(rule, "source")
        if isinstance(source, str) and source_names is not None and source not in source_names:
            known = ", ".join(sorted(source_names))
            problems.append(
                (("rules", i, "source"), f"unknown source {source!r} (known: {known})", source)
            )
    return problems
