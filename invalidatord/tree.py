"""What exists under a distribution's URL paths, as the planner's cost model asks: the
filesystem sources' catch-up index in the journal (DESIGN: "the index is the truth about the
tree").

A URL prefix maps back to a prefix of source paths only where the rules mirror the source
path: every template of every rule feeding the distribution starts with `/{path}` or `/{dir}`
(so `/docs/` holds what `docs/` holds). Anything else (an S3 source, a template such as
`/static/{name}`) makes the tree unknown, and the planner uses the simple policy
(`collapse_threshold`) for that distribution. A file counts once even when it has two URLs
(`/docs/` and `/docs/index.html`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from invalidatord.journal import Journal
from invalidatord.mapping import Rule


class IndexTree:
    """A planner `Tree` over the indexed files of some filesystem sources."""

    def __init__(self, journal: Journal, sources: Sequence[str]) -> None:
        self._journal = journal
        self._sources = tuple(sources)

    def count(self, prefix: str, at_most: int) -> int:
        # URL paths are CloudFront-encoded; the index holds names as they are on disk
        raw = unquote(prefix, errors="surrogateescape").lstrip("/")
        total = 0
        for source in self._sources:
            total += self._journal.index_count(source, raw, at_most - total)
            if total >= at_most:
                break
        return total


def _mirrors(template: str) -> bool:
    return template.startswith(("/{path}", "/{dir}"))


def trees(
    journal: Journal,
    rules: Sequence[Rule],
    kinds: Mapping[str, str],
    distributions: Sequence[str],
) -> dict[str, IndexTree]:
    """distribution -> its tree, for the distributions whose tree is known. `kinds` maps each
    source name to its type (`filesystem`, `sqs`, `s3-poll`)."""
    feeding: dict[str, set[str]] = {d: set() for d in distributions}
    unknown: set[str] = set()
    for rule in rules:
        if not rule.urls:
            continue
        sources = [rule.source] if rule.source else list(kinds)
        for d in rule.distributions:
            if d not in feeding:
                continue
            if not all(_mirrors(t) for t in rule.urls):
                unknown.add(d)
            for name in sources:
                feeding[d].add(name)
                if kinds.get(name) != "filesystem":
                    unknown.add(d)
    return {
        d: IndexTree(journal, sorted(names))
        for d, names in feeding.items()
        if names and d not in unknown
    }
