"""gitignore-style ignore lists, compiled for the hot paths (events and tree walks)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pathspec

__all__ = [
    "GIT_LOCK",
    "Match",
    "WalkFilter",
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


@dataclass(frozen=True, slots=True)
class WalkFilter:
    """The ignore list as a sorted tree walk asks it, a directory's entries at a time: the
    same answers as `matchers(...)[1]`, with the regexes' own `match` (truthy = ignored) so
    that `filter(by_name, names)` runs in C, and with the literal start of every pattern that
    needs the whole path, so that the directories no path pattern can reach skip it."""

    by_name: Callable[[str], object] | None
    by_path: Callable[[str], object] | None
    #: every path matched by `by_path` starts with one of these; None = any path may match
    path_starts: tuple[str, ...] | None

    def paths_may_match(self, rel_dir: str) -> bool:
        """Whether `by_path` can match anything under `rel_dir` ("" or ending with "/")."""
        if self.by_path is None:
            return False
        starts = self.path_starts
        return starts is None or any(
            start.startswith(rel_dir) or rel_dir.startswith(start) for start in starts
        )


def walk_filter(spec: pathspec.GitIgnoreSpec) -> WalkFilter:
    """`matchers(spec)[1]` for `FilesystemSource.scan` (see `WalkFilter`)."""
    sources = _sources(spec)
    if sources is None:
        return WalkFilter(None, spec.match_file, None)
    names = ["^" + s[len(_ANY_DIRS) :] for s in sources if _is_name_pattern(s)]
    paths = [s for s in sources if not _is_name_pattern(s)]
    starts = [_literal_start(s) for s in paths]
    return WalkFilter(
        _compiled(names),
        _compiled(paths),
        None if None in starts else tuple(s for s in starts if s is not None),
    )


_REGEX_SPECIALS = frozenset(".^$*+?{}[]|()\\")
_QUANTIFIERS = frozenset("*+?{")


def _literal_start(source: str) -> str | None:
    """The literal text every match of the regex `source` (as pathspec writes them: "^" and
    escaped characters first) starts with; None when there is none or it cannot tell (a
    top-level alternation)."""
    depth = 0
    escaped = False
    for c in source:  # a "|" outside every group would make the start optional
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return None
    if not source.startswith("^"):
        return None
    start: list[str] = []
    i = 1
    while i < len(source):
        c = source[i]
        if c == "\\" and i + 1 < len(source) and not source[i + 1].isalnum():
            start.append(source[i + 1])
            i += 2
        elif c not in _REGEX_SPECIALS:
            start.append(c)
            i += 1
        else:
            if c in _QUANTIFIERS and start:
                start.pop()  # the character before a quantifier may be absent
            break
    return "".join(start) or None


def _compiled(sources: list[str]) -> Callable[[str], object] | None:
    if not sources:
        return None
    return re.compile("|".join("(?:" + s + ")" for s in sources)).match


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
