"""Pending URL paths + what is in flight -> invalidation batches within CloudFront's limits.

Pure and deterministic: the same arguments always give the same plan.

The rules (docs/cloudfront.md):

- CloudFront counts file paths and wildcard paths (ending in `*`) in progress separately, per
  distribution; `Limits.capacity` is what may still be submitted after what is in flight and the
  headroom left for people invalidating by hand. A plan never exceeds it, for either kind.
- Pending paths are oldest first: older paths are planned first, and what does not fit is simply
  not planned (it stays pending for a later plan).
- A planned wildcard `/dir/*` covers every path that starts with `/dir/` (including narrower
  wildcards such as `/dir/a*`): those are dropped from the plan, never submitted twice.
- Each batch (one CreateInvalidation request) carries at most `max_paths_per_batch` file paths
  and at most 15 wildcard paths; batches keep the oldest-first order.

Cost model (`Limits.price_per_path`, `eviction_cost`, `max_over_invalidation`, ...), used when
the tree under the distribution is known (`tree`: how many objects exist under a URL prefix, from
the filesystem sources' index). A wildcard is billed as one path however much it covers, but it
also evicts every unchanged object under it. The planner chooses, among exact paths and
`/dir/*` (never `/*` unless `allow_root_wildcard`), the items that cover every pending path
and minimise

    price_per_path x (billed paths beyond this month's free ones) + eviction_cost x evicted

where a wildcard may be chosen only when the unchanged objects it evicts are at most
`max_over_invalidation` of the objects under it. While this month's free paths last, exact
paths cost nothing, so they win whenever they fit. Ties go to exact paths.

Room: when the chosen wildcards or exact paths do not all fit in what may still be in flight,
what does not fit waits (`Plan.deferred`) for in-flight invalidations to complete, for at most
`max_wait` (measured from the oldest pending path, `waited`); after that the paths a waiting
wildcard would have covered go as exact paths (paying for paths rather than waiting longer).

Where the tree is unknown (S3 sources, rules whose URLs do not mirror the source path), the
planner cannot tell what a wildcard would evict, so it uses the simple policy instead
(`Limits.collapse_threshold`): a directory with at least that many pending paths goes as
`/dir/*`; None = never a wildcard. Deepest directories are chosen first, which invalidates the
least that did not change; when that needs more wildcards than there is room for, sibling
directories are lifted into their parent.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

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
    #: the simple policy, used where the tree is unknown: a directory with at least this many
    #: pending paths goes as one `/dir/*`; None = never
    collapse_threshold: int | None = None
    #: False: the planner never makes a wildcard (only those asked for are sent)
    wildcards: bool = True
    # ---- the cost model (used where the tree is known) ----
    #: dollars per billed path beyond the month's free ones
    price_per_path: float = 0.005
    #: dollars one unchanged object evicted from the cache is taken to cost (origin fetches,
    #: a colder cache); the weight of eviction against billed paths
    eviction_cost: float = 0.0005
    #: the largest share of the objects under a wildcard that may be unchanged (0-1)
    max_over_invalidation: float = 0.5
    free_paths_per_month: int = 1000
    allow_root_wildcard: bool = False
    #: seconds work may wait for in-flight room before it goes as (billed) exact paths
    max_wait: float = 300.0

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
        if not 0.0 <= self.max_over_invalidation <= 1.0:
            raise ValueError(
                "planner limit max_over_invalidation must be between 0 and 1, "
                f"got {self.max_over_invalidation!r}"
            )
        for name in ("price_per_path", "eviction_cost", "max_wait", "free_paths_per_month"):
            if getattr(self, name) < 0:
                raise ValueError(f"planner limit {name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_paths_per_batch < 1:
            raise ValueError(
                f"planner limit max_paths_per_batch must be >= 1, got {self.max_paths_per_batch!r}"
            )

    def capacity(self, in_flight: InFlight) -> InFlight:
        """What may still be submitted while `in_flight` is in progress (never negative)."""
        files = self.max_files_in_flight - self.headroom_files - in_flight.files
        wildcards = self.max_wildcards_in_flight - self.headroom_wildcards - in_flight.wildcards
        return InFlight(files=max(0, files), wildcards=max(0, wildcards))


class Tree(Protocol):
    """What exists under the URL paths of one distribution (the cost model's knowledge)."""

    def count(self, prefix: str, at_most: int) -> int:
        """How many objects have a URL path starting with `prefix`; any number >= `at_most`
        when there are at least that many (an index may stop counting there)."""
        ...


class PrefixTree:
    """A `Tree` over a collection of URL paths, sorted once; each count is two bisections."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = sorted(set(paths))

    def __len__(self) -> int:
        return len(self._paths)

    def count(self, prefix: str, at_most: int) -> int:
        low = bisect.bisect_left(self._paths, prefix)
        return bisect.bisect_left(self._paths, _after(prefix), lo=low) - low


def _after(prefix: str) -> str:
    """The first string greater than every string that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


@dataclass(frozen=True, slots=True)
class Choice:
    """One wildcard in a plan and why it is there."""

    wildcard: str
    pending: int  # pending paths it covers
    objects: int  # objects known under it (-1 = unknown)
    evicted: int  # unchanged objects it evicts (-1 = unknown)
    #: "cost" (cheaper than its exact paths), "room" (the exact paths do not fit in the
    #: in-flight limits), "policy" (collapse_threshold, tree unknown), "given" (asked for)
    reason: str

    def describe(self, limits: Limits) -> str:
        if self.reason == "given":
            return f"{self.wildcard}: asked for"
        if self.reason == "policy":
            return (
                f"{self.wildcard}: {self.pending} pending paths, at least collapse_threshold "
                f"({limits.collapse_threshold}); what else it evicts is unknown"
            )
        share = self.evicted / self.objects if self.objects > 0 else 0.0
        why = (
            "cheaper than its exact paths"
            if self.reason == "cost"
            else "its exact paths do not fit in the in-flight limits"
        )
        return (
            f"{self.wildcard}: {self.pending} pending paths as 1 billed path, evicts "
            f"{self.evicted} unchanged of {self.objects} objects ({share:.0%}, "
            f"max_over_invalidation {limits.max_over_invalidation:.0%}); {why}"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan with its accounting: every distinct pending path is in exactly one of
    `planned` (in one of the batches), `covered` (dropped because a planned wildcard covers it)
    or `deferred` (did not fit, or waits for room for a wildcard; stays pending). Each tuple is
    oldest first. `choices` says why each planned wildcard is there; `free_left` is how many
    of this month's free paths were left before the plan."""

    batches: tuple[Batch, ...]
    covered: tuple[str, ...]
    deferred: tuple[str, ...]
    choices: tuple[Choice, ...] = ()
    free_left: int = 0
    price_per_path: float = 0.0
    #: some paths wait for wildcard room rather than go as billed exact paths (until max_wait)
    holding: bool = False

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

    @property
    def billed(self) -> int:
        """Paths CloudFront counts for the bill (each item of each batch)."""
        return sum(len(b.paths) for b in self.batches)

    @property
    def evicted(self) -> int:
        """Unchanged objects the wildcards evict, where known."""
        return sum(c.evicted for c in self.choices if c.evicted > 0)

    @property
    def dollars(self) -> float:
        """Estimated price of the plan after this month's free paths."""
        return round(max(0, self.billed - self.free_left) * self.price_per_path, 6)


def covers(wildcard: str, path: str) -> bool:
    """Whether invalidating `wildcard` also invalidates `path` (a file path or a narrower
    wildcard). A path never covers itself, and only a wildcard covers anything."""
    return is_wildcard(wildcard) and path != wildcard and path.startswith(wildcard[:-1])


def plan(
    distribution: str,
    pending: Sequence[str],
    in_flight: InFlight,
    limits: Limits,
    *,
    tree: Tree | None = None,
    billed_this_month: int = 0,
    waited: float = 0.0,
) -> list[Batch]:
    """The batches to submit now for `distribution`; see `make_plan` for what is left out."""
    return list(
        make_plan(
            distribution,
            pending,
            in_flight,
            limits,
            tree=tree,
            billed_this_month=billed_this_month,
            waited=waited,
        ).batches
    )


def make_plan(
    distribution: str,
    pending: Sequence[str],
    in_flight: InFlight,
    limits: Limits,
    *,
    tree: Tree | None = None,
    billed_this_month: int = 0,
    waited: float = 0.0,
) -> Plan:
    """Plan `pending` (oldest first, duplicates allowed) for `distribution` and say what
    happened to every path: planned, covered by a planned wildcard, or deferred.

    `tree` is what is known to exist under the distribution's URL paths (None = unknown: the
    simple policy applies); `billed_this_month` the paths already billed this month; `waited`
    how long (seconds) the oldest pending path has waited."""
    capacity = limits.capacity(in_flight)
    unique = list(dict.fromkeys(pending))  # first occurrence wins: keeps oldest-first order
    free_left = max(0, limits.free_paths_per_month - billed_this_month)

    given = [p for p in unique if is_wildcard(p)]
    hold: tuple[str, ...] = ()
    choices: dict[str, Choice] = {}
    if tree is None or not limits.wildcards:
        if limits.collapse_threshold is not None and limits.wildcards:
            files = [p for p in unique if not is_wildcard(p)]
            for w in collapse(files, limits.collapse_threshold, capacity.wildcards):
                choices[w] = Choice(w, 0, -1, -1, "policy")
            given += list(choices)
        chosen = _choose_wildcards(given, capacity.wildcards)
    else:
        chosen = _choose_wildcards(given, capacity.wildcards)
        taken = tuple(w[:-1] for w in chosen)
        items = [p for p in unique if p[-1:] != "*"]
        if taken:
            items = [p for p in items if not p.startswith(taken)]
        cost = _CostModel(limits, tree, free_left - len(chosen))
        made, held = cost.choose(
            items,
            files_room=capacity.files,
            wildcards_room=capacity.wildcards - len(chosen),
            may_wait=waited < limits.max_wait,
        )
        for choice in made:
            choices[choice.wildcard] = choice
        chosen |= set(choices)
        hold = tuple(w[:-1] for w in held)
    prefixes = tuple(w[:-1] for w in chosen)
    made_order = sorted(chosen - set(unique))  # made wildcards: planned before what they cover

    planned: list[str] = []
    covered: list[str] = []
    deferred: list[str] = []
    files_left = capacity.files
    for path in unique:
        if path in chosen:
            planned.append(path)
        elif prefixes and path.startswith(prefixes):
            for wildcard in made_order:
                if path.startswith(wildcard[:-1]):
                    planned.append(wildcard)
                    made_order.remove(wildcard)
                    break
            covered.append(path)
        elif is_wildcard(path) or (hold and path.startswith(hold)):
            deferred.append(path)
        elif files_left > 0:
            planned.append(path)
            files_left -= 1
        else:
            deferred.append(path)

    for w in chosen & set(unique):
        choices.setdefault(w, Choice(w, 0, -1, -1, "given"))
    in_plan = set(planned)
    batches = _pack(distribution, planned, limits.max_paths_per_batch)
    return Plan(
        batches=batches,
        covered=tuple(covered),
        deferred=tuple(deferred),
        choices=tuple(c for w, c in sorted(choices.items()) if w in in_plan),
        free_left=free_left,
        price_per_path=limits.price_per_path,
        holding=bool(hold),
    )


@dataclass(slots=True)
class _Option:
    """The cost model's answer at one price per path: its wildcards (antichain)."""

    wildcards: list[str]
    billed: int
    evicted: int


class _CostModel:
    """Chooses wildcards for the exact `items` of one plan (see the module docstring).

    Directories of the pending paths form a tree; at a price `lam` per billed path the best
    cover of each directory is either one wildcard (`lam` + eviction) or the best covers of its
    subdirectories plus its own paths exactly, whichever is cheaper (exact on a tie): one pass,
    deepest first. Free paths make the real price piecewise (0 until they run out), so the
    pass runs at a few prices between 0 and `price_per_path` and the option with the least
    real cost wins."""

    def __init__(self, limits: Limits, tree: Tree, free_left: int) -> None:
        self._limits = limits
        self._tree = tree
        self._free_left = max(0, free_left)
        self._known: dict[str, tuple[int, int] | None] = {}

    def choose(
        self, items: Sequence[str], *, files_room: int, wildcards_room: int, may_wait: bool
    ) -> tuple[list[Choice], list[str]]:
        """(the wildcards to send now, the wildcards whose paths wait for room)."""
        limits = self._limits
        n = len(items)
        if (n <= self._free_left and n <= files_room) or n < 2:
            return [], []  # exact paths are free and fit: nothing beats them
        self._count(items)
        price = limits.price_per_path
        options = [self._solve(0.0)]
        if price > 0:
            options.append(self._solve(price))
            low, high = 0.0, price
            # at full price the plan bills at least the free paths: nothing in between is
            # cheaper. Otherwise look for the price at which the free paths are just used up.
            for _ in range(10 if options[-1].billed < self._free_left else 0):
                mid = (low + high) / 2
                option = self._solve(mid)
                options.append(option)
                if option.billed > self._free_left:
                    low = mid
                else:
                    high = mid
        elif limits.eviction_cost == 0:
            options.append(self._solve(1.0))  # nothing costs money: fewest paths, fewest calls

        def fits(o: _Option) -> bool:
            return len(o.wildcards) <= wildcards_room and o.billed - len(o.wildcards) <= files_room

        def real(o: _Option) -> tuple[float, int, int]:
            over = max(0, o.billed - self._free_left)
            return (over * price + o.evicted * limits.eviction_cost, o.evicted, o.billed)

        fitting = [o for o in options if fits(o)]
        all_exact = options[0]
        cheapest = min(options, key=real)
        if fits(cheapest) or may_wait:
            best = cheapest  # what does not fit waits for room (at most max_wait)
        elif fitting:
            best = min(fitting, key=real)  # waited long enough: the cheapest that goes now
        else:
            # nothing fits now: the fewest billed paths (most wildcards) waits least overall
            best = min(options, key=lambda o: (o.billed, real(o)))
        reason = "room" if not fits(all_exact) and real(best) > real(all_exact) else "cost"
        ranked = sorted(best.wildcards, key=lambda w: (-self._pending[w], w))
        now, later = ranked[:wildcards_room], ranked[wildcards_room:]
        made = [self._choice(w, reason) for w in now]
        return made, (later if may_wait else [])

    def _choice(self, wildcard: str, reason: str) -> Choice:
        known = self._known.get(wildcard[:-1])
        objects, evicted = known if known is not None else (-1, -1)
        return Choice(wildcard, self._pending[wildcard], objects, evicted, reason)

    def _count(self, items: Sequence[str]) -> None:
        """Per directory (`/a/`, `/a/b/`): pending paths under it, pending objects (paths
        not ending in `/`: a directory URL is another name of its index file), and the paths
        directly in it."""
        urls = [p for p in items if p[:1] == "/"]  # a cache tag is never under one
        direct: Counter[str] = Counter([p[: p.rfind("/") + 1] for p in urls])
        direct_objects = direct.copy()
        direct_objects.subtract([p for p in urls if p[-1] == "/"])
        direct[""] = len(items) - len(urls)
        # a path counts in each directory above it: spread each directory's count upwards
        # (there are far fewer directories than paths)
        under: Counter[str] = Counter()
        objects: Counter[str] = Counter()
        for d, n in direct.items():
            if not d:
                continue
            m = direct_objects.get(d, 0)
            while True:
                under[d] += n
                objects[d] += m
                if d == "/":
                    break
                d = _parent(d)
        self._under, self._objects, self._direct = under, objects, direct
        self._pending = {d + "*": c for d, c in under.items()}
        self._total = len(items)
        # deepest first, so a directory's subdirectories are settled before it
        self._order = sorted(
            (
                d
                for d, c in under.items()
                if c >= 2 and (d != "/" or self._limits.allow_root_wildcard)
            ),
            key=lambda d: (-d.count("/"), d),
        )
        for d in self._order:
            self._eligible(d)

    def _eligible(self, directory: str) -> tuple[int, int] | None:
        """(objects under it, unchanged it would evict) when its wildcard is allowed."""
        if directory in self._known:
            return self._known[directory]
        bound = self._limits.max_over_invalidation
        changed = self._objects[directory]
        # more objects than this means too many unchanged ones: stop counting there
        cap = changed + int(changed * bound / (1.0 - bound)) + 1 if bound < 1.0 else 2**62
        total = max(self._tree.count(directory, cap), changed)
        unchanged = total - changed
        ok = total < cap and (total == 0 or unchanged <= bound * total)
        self._known[directory] = (total, unchanged) if ok else None
        return self._known[directory]

    def _solve(self, lam: float) -> _Option:
        weight = self._limits.eviction_cost
        best: dict[str, float] = {}
        wild: set[str] = set()
        sums: dict[str, float] = {}
        for d in self._order:
            exact = sums.get(d, 0.0) + lam * self._direct.get(d, 0)
            known = self._known[d]
            if known is not None and lam + weight * known[1] < exact:
                best[d] = lam + weight * known[1]
                wild.add(d)
            else:
                best[d] = exact
            if d != "/":
                parent = _parent(d)
                sums[parent] = sums.get(parent, 0.0) + best[d]
        chosen = [d for d in wild if not _under_any(d, wild)]
        covered = sum(self._under[d] for d in chosen)
        evicted = 0
        for d in chosen:
            known = self._known[d]
            evicted += known[1] if known else 0
        return _Option(
            wildcards=[d + "*" for d in chosen],
            billed=self._total - covered + len(chosen),
            evicted=evicted,
        )


def _under_any(directory: str, chosen: set[str]) -> bool:
    """Whether a proper ancestor of `directory` is in `chosen`."""
    d = directory
    while d != "/":
        d = _parent(d)
        if d in chosen:
            return True
    return False


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
