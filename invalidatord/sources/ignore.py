"""gitignore-style ignore lists, compiled for the hot paths (events and tree walks)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import pathspec

__all__ = [
    "GIT_LOCK",
    "Match",
    "deciding_pattern",
    "fence_patterns",
    "full_regex",
    "matchers",
    "with_fences",
]

Match = Callable[[str], bool]

#: Held on by every source: `git checkout`/`pull`/`reset` hold it while they rewrite the tree.
GIT_LOCK = ".git/index.lock"

_GLOB_SPECIALS = re.compile(r"([*?\[\]\\!#])")


def fence_patterns(hold_while: Sequence[str]) -> tuple[str, ...]:
    """Ignore patterns matching exactly the deploy markers (`hold_while`, relative to the
    root, plus `.git/index.lock`): a marker is never invalidated nor indexed, and its
    creation and removal are no change of the site."""
    markers = dict.fromkeys([*(m.strip("/") for m in hold_while), GIT_LOCK])
    # anchored (leading "/") and with glob characters escaped: the marker's own path only
    return tuple("/" + _GLOB_SPECIALS.sub(r"\\\1", m) for m in markers if m)


def with_fences(ignore: Sequence[str], hold_while: Sequence[str]) -> tuple[str, ...]:
    """The ignore list a source watches and scans with: the configured one, then the
    markers (last, so that no negation in `ignore` brings a marker back)."""
    return (*ignore, *fence_patterns(hold_while))


def matchers(
    spec: pathspec.GitIgnoreSpec,
) -> tuple[Match | None, tuple[Match | None, Match | None]]:
    """Functions telling whether a normalised relative path is ignored (None: never).

    Returns `full` (any path: events, `is_ignored`) and, for a walk that has already pruned
    every ignored ancestor, `(by_name, by_path)`: a path is ignored if `by_name` matches its
    last component or `by_path` matches the whole path. Directories are asked with a
    trailing "/".

    Without negations (`!pattern`) git's rule "the last matching pattern decides" reduces to
    "any pattern matches", which one alternation of the patterns' regexes answers ~3x faster
    than `GitIgnoreSpec.match_file`, and a pattern without a slash (`*.swp`, `.git/`) only
    needs the last component during a walk. With a negation, pathspec decides everything.
    """
    sources = _sources(spec)
    if sources is None:
        return spec.match_file, (None, spec.match_file)
    if not sources:
        return None, (None, None)
    names = [s[len(_ANY_DIRS) :] for s in sources if _is_name_pattern(s)]
    paths = [s for s in sources if not _is_name_pattern(s)]
    return (
        _alternation(sources),
        (_alternation(["^" + n for n in names]), _alternation(paths)),
    )


def full_regex(lines: Iterable[str]) -> str | None:
    """The one regex `matchers(...)[0]` compiles for an ignore list, as source text: what the
    watcher process is sent so that it needs `re`, not pathspec. "" = nothing is ignored;
    None = the list has a negation, which only pathspec decides."""
    sources = _sources(pathspec.GitIgnoreSpec.from_lines(lines))
    if sources is None:
        return None
    return "|".join("(?:" + s + ")" for s in sources)


def _sources(spec: pathspec.GitIgnoreSpec) -> list[str] | None:
    """Each pattern's regex source; None if any is a negation (or not a plain `re` regex)."""
    sources: list[str] = []
    for p in spec.patterns:
        if p.include is None:
            continue
        regex = getattr(p, "regex", None)
        if not p.include or not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str):
            return None
        # The directory mark is a named group in each regex; `re` refuses a name twice.
        sources.append(_NAMED_GROUP.sub("(?:", regex.pattern))
    return sources


_ANY_DIRS = "^(?:.+/)?"  # how pathspec starts the regex of a pattern without a slash
_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def _is_name_pattern(source: str) -> bool:
    rest = source[len(_ANY_DIRS) :]
    return source.startswith(_ANY_DIRS) and "/" not in rest.replace("(?:/)", "").replace("[^/]", "")


def _alternation(sources: list[str]) -> Match | None:
    if not sources:
        return None
    match = re.compile("|".join("(?:" + s + ")" for s in sources)).match
    return lambda path: match(path) is not None


def deciding_pattern(patterns: list[str], path: str) -> str | None:
    """The ignore-list line that makes `path` ignored (git's rule: the last matching pattern
    decides, so a later `!pattern` un-ignores), or None when `path` is not ignored. For people
    (`invalidatord map`), not the hot path."""
    result = pathspec.GitIgnoreSpec.from_lines(patterns).check_file(path)
    if not result.include or result.index is None:
        return None
    return patterns[result.index]
