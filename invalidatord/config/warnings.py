"""Likely mistakes in a valid config: reported by `check` and at start-up, never refused."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from invalidatord.config.fields import Loc
from invalidatord.config.linemap import join, line_of
from invalidatord.config.schema import Config, FilesystemSourceConfig, SqsSourceConfig
from invalidatord.errors import ConfigError

__all__ = ["config_warnings"]

_CATCH_ALL_PATTERNS = frozenset({"*", "**", "**/*", "/**", "/*/**"})


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

    found += _overlapping_roots(cfg)

    if cfg._filename is None:
        return [join(path, message) for path, message in found]
    located = sorted(
        ((line_of(path, cfg._lines), join(path, message)) for path, message in found),
        key=lambda warning: warning[0],
    )
    return [f"{cfg._filename}:{line}: {text}" for line, text in located]


def _overlapping_roots(cfg: Config) -> list[tuple[Loc, str]]:
    """Two filesystem sources watching the same tree (or one inside the other) see every
    change twice: twice the watches, and both sources' rules apply."""
    found: list[tuple[Loc, str]] = []
    roots = [
        (i, source)
        for i, source in enumerate(cfg.sources)
        if isinstance(source, FilesystemSourceConfig)
    ]
    for i, source in roots:
        for j, other in roots:
            if j == i:
                continue
            if source.root == other.root and j < i:
                message = f"same root as sources[{j}] ({other.name!r}): changes are seen twice"
            elif source.root != other.root and source.root.is_relative_to(other.root):
                message = (
                    f"is inside the root of sources[{j}] ({other.name!r}): "
                    "changes under it are seen twice"
                )
            else:
                continue
            found.append((("sources", i, "root"), message))
    return found


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
