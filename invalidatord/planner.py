"""Pending URL paths + what is in flight -> invalidation batches within CloudFront's limits.

Pure and deterministic: the same arguments always give the same plan.

The rules (CLOUDFRONT.md):

- CloudFront counts file paths and wildcard paths (ending in `*`) in progress separately, per
  distribution; `Limits.capacity` is what may still be submitted after what is in flight and the
  headroom left for people invalidating by hand. A plan never exceeds it, for either kind.
- Pending paths are oldest first: older paths are planned first, and what does not fit is simply
  not planned (it stays pending for a later plan).
- A planned wildcard `/dir/*` covers every path that starts with `/dir/` (including narrower
  wildcards such as `/dir/a*`): those are dropped from the plan, never submitted twice.
- Each batch (one CreateInvalidation request) carries at most `max_paths_per_batch` file paths
  and at most 15 wildcard paths; batches keep the oldest-first order.

Cost policy (`Limits.collapse_threshold`): a wildcard is billed as one path however much it
covers, so a directory with at least that many pending paths is invalidated as `/dir/*`
instead (never `/*`: clearing the whole distribution is left to people). Deepest directories
are chosen first, which invalidates the least that did not change; when that needs more
wildcards than there is room for, sibling directories are lifted into their parent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from invalidatord.model import (
    MAX_FILE_PATHS_IN_FLIGHT,
    MAX_WILDCARD_PATHS_IN_FLIGHT,
    Batch,
    InFlight,
    is_wildcard,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-distribution limits the planner respects."""

    max_files_in_flight: int = MAX_FILE_PATHS_IN_FLIGHT
    max_wildcards_in_flight: int = MAX_WILDCARD_PATHS_IN_FLIGHT
    headroom_files: int = 100  # left for people invalidating by hand
    headroom_wildcards: int = 2
    max_paths_per_batch: int = 3000  # one request never carries more file paths than this
    #: a directory with at least this many pending paths goes as one `/dir/*`; None = never
    collapse_threshold: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_files_in_flight",
            "max_wildcards_in_flight",
            "headroom_files",
            "headroom_wildcards",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"planner limit {name} must be >= 0, got {value!r}")
        if self.collapse_threshold is not None and self.collapse_threshold < 2:
            raise ValueError(
                f"planner limit collapse_threshold must be >= 2, got {self.collapse_threshold!r}"
            )
        if self.max_paths_per_batch < 1:
            raise ValueError(
                f"planner limit max_paths_per_batch must be >= 1, got {self.max_paths_per_batch!r}"
            )

    def capacity(self, in_flight: InFlight) -> InFlight:
        """What may still be submitted while `in_flight` is in progress (never negative)."""
        files = self.max_files_in_flight - self.headroom_files - in_flight.files
        wildcards = self.max_wildcards_in_flight - self.headroom_wildcards - in_flight.wildcards
        return InFlight(files=max(0, files), wildcards=max(0, wildcards))


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan with its accounting: every distinct pending path is in exactly one of
    `planned` (in one of the batches), `covered` (dropped because a planned wildcard covers it)
    or `deferred` (did not fit; stays pending). Each tuple is oldest first."""

    batches: tuple[Batch, ...]
    covered: tuple[str, ...]
    deferred: tuple[str, ...]

    @property
    def planned(self) -> tuple[str, ...]:
        return tuple(p for b in self.batches for p in b.paths)

    @property
    def total(self) -> InFlight:
        """What the batches add to the distribution's paths in flight."""
        return InFlight(
            files=sum(b.files for b in self.batches),
            wildcards=sum(b.wildcards for b in self.batches),
        )


def covers(wildcard: str, path: str) -> bool:
    """Whether invalidating `wildcard` also invalidates `path` (a file path or a narrower
    wildcard). A path never covers itself, and only a wildcard covers anything."""
    return is_wildcard(wildcard) and path != wildcard and path.startswith(wildcard[:-1])


def plan(
    distribution: str, pending: Sequence[str], in_flight: InFlight, limits: Limits
) -> list[Batch]:
    """The batches to submit now for `distribution`; see `make_plan` for what is left out."""
    return list(make_plan(distribution, pending, in_flight, limits).batches)


def make_plan(
    distribution: str, pending: Sequence[str], in_flight: InFlight, limits: Limits
) -> Plan:
    """Plan `pending` (oldest first, duplicates allowed) for `distribution` and say what
    happened to every path: planned, covered by a planned wildcard, or deferred."""
    capacity = limits.capacity(in_flight)
    unique = list(dict.fromkeys(pending))  # first occurrence wins: keeps oldest-first order

    given = [p for p in unique if is_wildcard(p)]
    if limits.collapse_threshold is not None:
        files = [p for p in unique if not is_wildcard(p)]
        given += collapse(files, limits.collapse_threshold, capacity.wildcards)
    chosen = _choose_wildcards(given, capacity.wildcards)
    prefixes = tuple(w[:-1] for w in chosen)
    made = sorted(chosen - set(unique))  # collapsed wildcards: planned before what they cover

    planned: list[str] = []
    covered: list[str] = []
    deferred: list[str] = []
    files_left = capacity.files
    for path in unique:
        if path in chosen:
            planned.append(path)
        elif prefixes and path.startswith(prefixes):
            for wildcard in made:
                if path.startswith(wildcard[:-1]):
                    planned.append(wildcard)
                    made.remove(wildcard)
                    break
            covered.append(path)
        elif is_wildcard(path):
            deferred.append(path)
        elif files_left > 0:
            planned.append(path)
            files_left -= 1
        else:
            deferred.append(path)

    batches = _pack(distribution, planned, limits.max_paths_per_batch)
    return Plan(batches=batches, covered=tuple(covered), deferred=tuple(deferred))


def _parent(directory: str) -> str:
    """`/a/b/` -> `/a/`; `/a/` -> `/`."""
    return directory[: directory.rstrip("/").rfind("/") + 1]


def collapse(files: Sequence[str], threshold: int, room: int) -> list[str]:
    """Wildcards `/dir/*` for directories holding at least `threshold` of `files` (file URL
    paths), at most `room` of them, none inside another, never `/*`; in the order of the first
    path each covers."""
    if room <= 0:
        return []
    counts: Counter[str] = Counter()
    for path in files:
        i = path.find("/", 1)
        while i != -1:
            counts[path[: i + 1]] += 1
            i = path.find("/", i + 1)
    candidates = sorted(
        (d for d, n in counts.items() if n >= threshold), key=lambda d: (-d.count("/"), d)
    )
    chosen: list[str] = []
    taken: Counter[str] = Counter()  # paths under a directory already covered by chosen ones
    for directory in candidates:  # deepest first
        newly = counts[directory] - taken[directory]
        if newly < threshold:
            continue
        chosen = [c for c in chosen if not c.startswith(directory)]
        chosen.append(directory)
        ancestor = _parent(directory)
        while ancestor != "/":
            taken[ancestor] += newly
            ancestor = _parent(ancestor)
        taken[directory] = counts[directory]
    while len(chosen) > room:
        # lift the siblings that share a parent into it (the deepest such parent first)
        parents = Counter(_parent(c) for c in chosen if _parent(c) != "/")
        best = max(parents.items(), key=lambda kv: (kv[1], kv[0].count("/"), kv[0]), default=None)
        if best is None or best[1] < 2:
            break
        chosen = [c for c in chosen if not c.startswith(best[0])] + [best[0]]
    if len(chosen) > room:
        chosen = sorted(chosen, key=lambda d: (-counts[d], d))[:room]
    first: dict[str, int] = {}
    for index, path in enumerate(files):
        for directory in chosen:
            if directory not in first and path.startswith(directory):
                first[directory] = index
        if len(first) == len(chosen):
            break
    return [d + "*" for d in sorted(chosen, key=lambda d: first.get(d, 0))]


def _choose_wildcards(wildcards: Iterable[str], capacity: int) -> set[str]:
    """At most `capacity` wildcards, oldest first, none covered by another chosen one.

    A wildcard covered by one already chosen costs nothing more; a wildcard that covers chosen
    ones replaces them (so it fits even when the capacity is used up). When such a replacement
    frees capacity, the wildcards that did not fit before get another pass, oldest first. Every
    pass but the last chooses a new, uncovered wildcard, so the loop ends.
    """
    chosen: dict[str, None] = {}
    todo = list(wildcards)
    while todo:
        skipped: list[str] = []
        for w in todo:
            if w in chosen or any(covers(c, w) for c in chosen):
                continue
            narrower = [c for c in chosen if covers(w, c)]
            if narrower or len(chosen) < capacity:
                for c in narrower:
                    del chosen[c]
                chosen[w] = None
            else:
                skipped.append(w)
        if len(chosen) >= capacity:
            break
        todo = skipped
    return set(chosen)


def _pack(distribution: str, paths: Sequence[str], max_files: int) -> tuple[Batch, ...]:
    """Cut `paths` (in order) into batches of at most `max_files` file paths and at most
    CloudFront's 15 wildcard paths each."""
    batches: list[Batch] = []
    current: list[str] = []
    files = wildcards = 0
    for path in paths:
        wild = is_wildcard(path)
        if (wild and wildcards >= MAX_WILDCARD_PATHS_IN_FLIGHT) or (
            not wild and files >= max_files
        ):
            batches.append(Batch(distribution, tuple(current)))
            current, files, wildcards = [], 0, 0
        current.append(path)
        if wild:
            wildcards += 1
        else:
            files += 1
    if current:
        batches.append(Batch(distribution, tuple(current)))
    return tuple(batches)
