"""The planner: batches within CloudFront's in-flight and per-request limits. Pure logic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invalidatord.model import Batch, InFlight, is_wildcard
from invalidatord.planner import Limits, Plan, collapse, covers, make_plan, plan

DIST = "www"


def files(n: int, prefix: str = "/f") -> list[str]:
    return [f"{prefix}{i}.html" for i in range(n)]


def test_capacity_subtracts_in_flight_and_headroom() -> None:
    """capacity = limit - headroom - in flight, per kind."""
    assert Limits().capacity(InFlight()) == InFlight(files=2900, wildcards=13)
    assert Limits().capacity(InFlight(files=900, wildcards=3)) == InFlight(2000, 10)


def test_capacity_is_never_negative() -> None:
    """Someone else's invalidations beyond our limits leave zero capacity, not a negative one."""
    assert Limits().capacity(InFlight(files=5000, wildcards=20)) == InFlight(0, 0)
    assert Limits(headroom_files=4000, headroom_wildcards=99).capacity(InFlight()) == InFlight(0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_files_in_flight": -1},
        {"max_wildcards_in_flight": -1},
        {"headroom_files": -1},
        {"headroom_wildcards": -1},
        {"max_paths_per_batch": 0},
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, int]) -> None:
    """Negative limits and empty batches are refused with a message naming the limit."""
    (name,) = kwargs
    with pytest.raises(ValueError, match=name):
        Limits(**kwargs)


def test_nothing_pending_plans_nothing() -> None:
    """No pending paths: no batches."""
    assert plan(DIST, [], InFlight(), Limits()) == []


def test_small_plan_is_one_batch_in_order_without_duplicates() -> None:
    """Duplicates collapse onto their first (oldest) occurrence; order is kept."""
    pending = ["/b.html", "/a.html", "/b.html", "/c/", "/a.html"]
    assert plan(DIST, pending, InFlight(), Limits()) == [Batch(DIST, ("/b.html", "/a.html", "/c/"))]


def test_files_beyond_capacity_stay_pending_oldest_planned_first() -> None:
    """With 2900 - 2850 = 50 file slots free, the 50 oldest are planned and the rest deferred."""
    pending = files(80)
    p = make_plan(DIST, pending, InFlight(files=2850), Limits())
    assert p.planned == tuple(pending[:50])
    assert p.deferred == tuple(pending[50:])
    assert p.covered == ()


def test_batches_split_at_max_paths_per_batch() -> None:
    """2,500 files with 1,000 per request become requests of 1000, 1000, 500, in order."""
    pending = files(2500)
    batches = plan(DIST, pending, InFlight(), Limits(max_paths_per_batch=1000))
    assert [b.files for b in batches] == [1000, 1000, 500]
    assert [p for b in batches for p in b.paths] == pending


def test_wildcards_limited_separately_from_files() -> None:
    """Wildcards use their own capacity (15 - 2 headroom - 10 in flight = 3) while files
    still fill theirs."""
    wild = [f"/w{i}/*" for i in range(5)]
    p = make_plan(DIST, [*wild, "/x.html"], InFlight(wildcards=10), Limits())
    assert p.total == InFlight(files=1, wildcards=3)
    assert p.planned == (*wild[:3], "/x.html")
    assert p.deferred == tuple(wild[3:])


def test_planned_wildcard_drops_the_paths_it_covers() -> None:
    """`/dir/*` covers `/dir/a.html` and `/dir/sub/` but not `/dir` or `/dira/x`; `/dir*`
    covers `/dira/x`."""
    pending = ["/dir/a.html", "/dir", "/dira/x", "/dir/*", "/dir/sub/", "/other.css"]
    p = make_plan(DIST, pending, InFlight(), Limits())
    assert p.planned == ("/dir", "/dira/x", "/dir/*", "/other.css")
    assert p.covered == ("/dir/a.html", "/dir/sub/")

    p2 = make_plan(DIST, ["/dira/x", "/dir*", "/dir/a.html"], InFlight(), Limits())
    assert p2.planned == ("/dir*",)
    assert p2.covered == ("/dira/x", "/dir/a.html")


def test_covered_paths_do_not_use_file_capacity() -> None:
    """Files a planned wildcard covers are dropped even when no file capacity is left."""
    p = make_plan(DIST, ["/a/1", "/a/2", "/a/*", "/b"], InFlight(files=2900), Limits())
    assert p.planned == ("/a/*",)
    assert p.covered == ("/a/1", "/a/2")
    assert p.deferred == ("/b",)


def test_wildcard_that_does_not_fit_covers_nothing() -> None:
    """An unplanned wildcard drops nothing: the files it would cover are planned as files."""
    p = make_plan(DIST, ["/a/1", "/a/*"], InFlight(wildcards=13), Limits())
    assert p.planned == ("/a/1",)
    assert p.deferred == ("/a/*",)
    assert p.covered == ()


def test_broader_wildcard_replaces_narrower_ones_when_full() -> None:
    """With one wildcard slot, `/a/*` replaces the older `/a/x/*` and also covers `/a/y/*`
    that had not fitted."""
    limits = Limits(max_wildcards_in_flight=3, headroom_wildcards=2)
    p = make_plan(DIST, ["/a/x/*", "/a/y/*", "/a/*", "/b/*"], InFlight(), limits)
    assert p.planned == ("/a/*",)
    assert p.covered == ("/a/x/*", "/a/y/*")
    assert p.deferred == ("/b/*",)


def test_batches_carry_at_most_15_wildcards() -> None:
    """Even with a (hypothetical) larger wildcard limit, one request carries at most 15."""
    wild = [f"/w{i:02}/*" for i in range(20)]
    limits = Limits(max_wildcards_in_flight=40, headroom_wildcards=0)
    batches = plan(DIST, wild, InFlight(), limits)
    assert [b.wildcards for b in batches] == [15, 5]


def test_covers() -> None:
    """Only a wildcard covers, by prefix, and never itself."""
    assert covers("/dir/*", "/dir/a.html")
    assert covers("/dir/*", "/dir/a*")
    assert covers("/*", "/anything")
    assert not covers("/dir/*", "/dir/*")
    assert not covers("/dir/*", "/dir")
    assert not covers("/dir", "/dir/a.html")
    assert not covers("/dir/a*", "/dir/*")


# --- properties -------------------------------------------------------------------------------

_segment = st.sampled_from(["a", "b", "ab", "c.html"])
_file_path = st.lists(_segment, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
_wildcard = st.tuples(_file_path, st.sampled_from(["*", "/*"])).map(
    lambda t: (t[0] if t[1] == "*" or t[0] != "/" else "") + t[1]
)
_path = st.one_of(_file_path, _wildcard)
_limits = st.builds(
    Limits,
    max_files_in_flight=st.integers(0, 40),
    max_wildcards_in_flight=st.integers(0, 15),
    headroom_files=st.integers(0, 10),
    headroom_wildcards=st.integers(0, 3),
    max_paths_per_batch=st.integers(1, 12),
)
_in_flight = st.builds(InFlight, files=st.integers(0, 40), wildcards=st.integers(0, 6))


def _check(pending: list[str], in_flight: InFlight, limits: Limits, p: Plan) -> None:
    unique = list(dict.fromkeys(pending))
    planned = p.planned
    # none lost, none duplicated
    assert len(planned) == len(set(planned))
    assert sorted([*planned, *p.covered, *p.deferred]) == sorted(unique)
    # oldest first in every part
    for part in (planned, p.covered, p.deferred):
        assert list(part) == [x for x in unique if x in set(part)]
    # dropped only when a planned wildcard covers it
    planned_wild = [w for w in planned if is_wildcard(w)]
    for x in p.covered:
        assert any(covers(w, x) for w in planned_wild)
    # nothing planned is redundant
    for x in planned:
        assert not any(covers(w, x) for w in planned_wild)
    # no batch and no plan exceeds a limit
    cap = limits.capacity(in_flight)
    assert p.total.files <= cap.files
    assert p.total.wildcards <= cap.wildcards
    for b in p.batches:
        assert b.distribution == DIST
        assert b.paths
        assert b.files <= limits.max_paths_per_batch
        assert b.wildcards <= 15
    # whatever is deferred really did not fit
    if any(not is_wildcard(x) for x in p.deferred):
        assert p.total.files == cap.files
    if any(is_wildcard(x) for x in p.deferred):
        assert p.total.wildcards == cap.wildcards


@settings(deadline=None, max_examples=200)
@given(pending=st.lists(_path, max_size=40), in_flight=_in_flight, limits=_limits)
def test_property_every_path_accounted_for_and_no_limit_exceeded(
    pending: list[str], in_flight: InFlight, limits: Limits
) -> None:
    """Every distinct pending path is planned once, covered by a planned wildcard, or deferred;
    no batch and no plan exceeds a limit; deferring happens only when capacity is used up;
    `plan` returns exactly `make_plan`'s batches, and the same input gives the same plan."""
    p = make_plan(DIST, pending, in_flight, limits)
    _check(pending, in_flight, limits, p)
    assert plan(DIST, pending, in_flight, limits) == list(p.batches)
    assert make_plan(DIST, list(pending), in_flight, limits) == p


@settings(deadline=None, max_examples=200)
@given(pending=st.lists(_file_path, max_size=60), limits=_limits)
def test_property_repeated_planning_drains_everything(pending: list[str], limits: Limits) -> None:
    """Planning, completing the batches and planning again what is left eventually covers
    every pending path (whenever there is any capacity at all)."""
    if limits.capacity(InFlight()).files == 0:
        assert plan(DIST, pending, InFlight(), limits) == []
        return
    left = pending
    done: set[str] = set()
    for _ in range(len(pending) + 1):
        p = make_plan(DIST, left, InFlight(), limits)
        done.update(p.planned, p.covered)
        left = list(p.deferred)
        if not left:
            break
    assert done == set(pending)


def test_capacity_freed_by_a_broader_wildcard_is_used() -> None:
    """When `/a/*` replaces two narrower wildcards, the slot it frees goes to the wildcard that
    had not fitted before."""
    limits = Limits(max_wildcards_in_flight=4, headroom_wildcards=2)
    p = make_plan(DIST, ["/a/x/*", "/a/y/*", "/c/*", "/a/*"], InFlight(), limits)
    assert p.planned == ("/c/*", "/a/*")
    assert p.covered == ("/a/x/*", "/a/y/*")
    assert p.deferred == ()


_nested_wildcards = st.sampled_from(
    ["/*", "/a*", "/a/*", "/a/x/*", "/a/y/*", "/a/x/1", "/b/*", "/b/x/*", "/b/1", "/c/*"]
)


@settings(deadline=None, max_examples=200)
@given(
    pending=st.lists(_nested_wildcards, max_size=12),
    wildcard_capacity=st.integers(0, 5),
)
def test_property_nested_wildcards_use_capacity_fully(
    pending: list[str], wildcard_capacity: int
) -> None:
    """With wildcards nested in each other and little capacity, the plan still accounts for
    every path, plans nothing redundant, and defers a wildcard only when capacity is used up."""
    limits = Limits(max_wildcards_in_flight=wildcard_capacity, headroom_wildcards=0)
    _check(pending, InFlight(), limits, make_plan(DIST, pending, InFlight(), limits))


# -- the cost policy: collapsing a directory's paths into one wildcard ------------------------


def _tree(**dirs: int) -> list[str]:
    """`_tree(a_b=3)` -> /a/b/f0.html, /a/b/f1.html, /a/b/f2.html."""
    return [f"/{d.replace('_', '/')}/f{i}.html" for d, n in dirs.items() for i in range(n)]


def test_collapse_prefers_the_deepest_directories() -> None:
    """Two directories over the threshold become two narrow wildcards, not their parent's."""
    files = _tree(a_b=100, a_c=100, a_d=5)
    assert collapse(files, threshold=100, room=13) == ["/a/b/*", "/a/c/*"]


def test_collapse_counts_what_children_leave_uncovered() -> None:
    """A parent is chosen only for the paths its chosen children do not already cover."""
    assert collapse(_tree(a_b=100, a=60), threshold=100, room=13) == ["/a/b/*"]
    assert collapse(_tree(a_b=100, a=100), threshold=100, room=13) == ["/a/*"]


def test_collapse_lifts_siblings_into_their_parent_when_room_is_short() -> None:
    """50 directories of 100 files with room for 13 wildcards: one wildcard on their parent."""
    files = _tree(**{f"deploy_d{d:02}": 100 for d in range(50)})
    assert collapse(files, threshold=100, room=13) == ["/deploy/*"]


def test_collapse_never_clears_the_whole_distribution() -> None:
    """Top-level files never collapse into `/*`, however many there are."""
    assert collapse([f"/f{i}.html" for i in range(500)], threshold=100, room=13) == []


def test_collapse_below_threshold_or_without_room_is_nothing() -> None:
    """Too few paths, or no wildcard room: every path goes as itself."""
    assert collapse(_tree(a=99), threshold=100, room=13) == []
    assert collapse(_tree(a=500), threshold=100, room=0) == []


def test_plan_with_collapse_sends_the_wildcard_and_covers_its_files() -> None:
    """The wildcard is planned where its first path was; the paths it covers are `covered`;
    files elsewhere still go as files."""
    pending = [*_tree(img=150), "/index.html", "/about/"]
    p = make_plan(DIST, pending, InFlight(), Limits(collapse_threshold=100))
    assert p.planned == ("/img/*", "/index.html", "/about/")
    assert sorted(p.covered) == sorted(_tree(img=150))
    assert p.deferred == ()


def test_collapse_threshold_must_be_at_least_two() -> None:
    """A threshold of 1 would turn every file into a wildcard of its directory."""
    with pytest.raises(ValueError, match="collapse_threshold"):
        Limits(collapse_threshold=1)


@settings(deadline=None, max_examples=200)
@given(
    pending=st.lists(_path, max_size=60),
    in_flight=_in_flight,
    limits=_limits,
    threshold=st.integers(2, 6),
)
def test_property_collapse_loses_nothing_and_respects_every_limit(
    pending: list[str], in_flight: InFlight, limits: Limits, threshold: int
) -> None:
    """With a collapse policy every distinct pending path is still planned, covered by a planned
    wildcard, or deferred; a made-up wildcard is never `/*` and covers at least `threshold`
    pending files; no batch and no plan exceeds a limit."""
    limits = Limits(
        max_files_in_flight=limits.max_files_in_flight,
        max_wildcards_in_flight=limits.max_wildcards_in_flight,
        headroom_files=limits.headroom_files,
        headroom_wildcards=limits.headroom_wildcards,
        max_paths_per_batch=limits.max_paths_per_batch,
        collapse_threshold=threshold,
    )
    p = make_plan(DIST, pending, in_flight, limits)
    unique = list(dict.fromkeys(pending))
    made = [w for w in p.planned if w not in set(unique)]
    own = [x for x in p.planned if x in set(unique)]
    assert len(p.planned) == len(set(p.planned))
    assert sorted([*own, *p.covered, *p.deferred]) == sorted(unique)
    planned_wild = [w for w in p.planned if is_wildcard(w)]
    for x in p.covered:
        assert any(covers(w, x) for w in planned_wild)
    for w in made:
        assert is_wildcard(w)
        assert w != "/*"
        assert sum(1 for x in unique if not is_wildcard(x) and covers(w, x)) >= threshold
    cap = limits.capacity(in_flight)
    assert p.total.files <= cap.files
    assert p.total.wildcards <= cap.wildcards
    for b in p.batches:
        assert b.files <= limits.max_paths_per_batch
        assert b.wildcards <= 15
