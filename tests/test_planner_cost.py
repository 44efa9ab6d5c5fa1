"""The planner's cost model: billed paths against evicted unchanged objects. Pure logic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from invalidatord.model import InFlight, is_wildcard
from invalidatord.planner import Limits, Plan, PrefixTree, covers, make_plan

DIST = "www"


def folder(n: int, name: str = "/docs/") -> list[str]:
    return [f"{name}p{i:05}.html" for i in range(n)]


def covered_by(plan: Plan, path: str) -> bool:
    return path in plan.planned or any(covers(w, path) for w in plan.planned)


# ---- the README's worked examples -----------------------------------------------------------


def test_readme_300_of_2000_under_a_tight_bound_go_as_exact_paths() -> None:
    """README: 300 changed of 2,000 in one folder, max_over_invalidation 0.1 -> 300 exact paths
    (a wildcard would evict 1,700 unchanged objects, 85%)."""
    tree = PrefixTree(folder(2000))
    p = make_plan(DIST, folder(300), InFlight(), Limits(max_over_invalidation=0.1), tree=tree)
    assert p.billed == 300
    assert p.total.wildcards == 0
    assert not p.deferred
    assert p.evicted == 0
    assert p.dollars == 0.0


def test_readme_1900_of_2000_go_as_one_wildcard() -> None:
    """README: 1,900 of 2,000 -> `/docs/*`, 1 billed path, 100 unchanged evicted (5%)."""
    tree = PrefixTree(folder(2000))
    p = make_plan(DIST, folder(1900), InFlight(), Limits(max_over_invalidation=0.1), tree=tree)
    assert p.planned == ("/docs/*",)
    assert p.evicted == 100
    assert p.choices[0].reason == "cost"
    assert "evicts 100 unchanged of 2000 objects" in p.choices[0].describe(Limits())


def test_readme_free_paths_make_exact_paths_win() -> None:
    """README: 800 of 1,000 in a folder with the month's 1,000 free paths unused -> 800 exact
    paths (free, evict nothing); with the free paths spent -> one wildcard."""
    tree = PrefixTree(folder(1000))
    free = make_plan(DIST, folder(800), InFlight(), Limits(), tree=tree)
    assert free.billed == 800
    assert free.total.wildcards == 0
    assert free.dollars == 0.0
    spent = make_plan(DIST, folder(800), InFlight(), Limits(), tree=tree, billed_this_month=1000)
    assert spent.planned == ("/docs/*",)
    assert spent.evicted == 200
    assert spent.dollars == 0.005


def test_readme_a_deploy_of_50_folders_waits_for_wildcard_room() -> None:
    """README: 50 folders of 100 new files (5,000 paths): 13 wildcards go now, the rest wait
    for room (no exact path billed for them) until max_wait; after it they go as exact paths."""
    pending = [p for f in range(50) for p in folder(100, f"/f{f:02}/")]
    tree = PrefixTree([*pending, *(f"/f{f:02}/old.html" for f in range(50))])
    early = make_plan(DIST, pending, InFlight(), Limits(), tree=tree, waited=10)
    assert early.total == InFlight(files=0, wildcards=13)
    assert early.holding
    assert len(early.deferred) == 3700
    late = make_plan(DIST, pending, InFlight(), Limits(max_wait=60), tree=tree, waited=61)
    assert late.total == InFlight(files=2900, wildcards=13)
    assert not late.holding


def test_the_root_wildcard_only_when_allowed() -> None:
    """A full redeploy goes as `/*` only with allow_root_wildcard; otherwise per directory."""
    site = [p for f in range(5) for p in folder(500, f"/s{f}/")]
    tree = PrefixTree(site)
    assert make_plan(DIST, site, InFlight(), Limits(), tree=tree).planned == tuple(
        f"/s{f}/*" for f in range(5)
    )
    allowed = make_plan(DIST, site, InFlight(), Limits(allow_root_wildcard=True), tree=tree)
    assert allowed.planned == ("/*",)


# ---- properties -----------------------------------------------------------------------------

_segment = st.sampled_from(["a", "b", "c", "d"])
_name = st.sampled_from(["x.html", "y.css", "z", "index.html", ""])
_url = st.builds(
    lambda dirs, name: "/" + "".join(d + "/" for d in dirs) + name,
    st.lists(_segment, max_size=3),
    _name,
)
_limits = st.builds(
    Limits,
    headroom_files=st.integers(0, 2999),
    headroom_wildcards=st.integers(0, 14),
    max_paths_per_batch=st.integers(1, 3000),
    max_over_invalidation=st.floats(0.0, 1.0),
    free_paths_per_month=st.integers(0, 50),
    eviction_cost=st.sampled_from([0.0, 0.0001, 0.01]),
    allow_root_wildcard=st.booleans(),
    max_wait=st.sampled_from([0.0, 300.0]),
)
_in_flight = st.builds(InFlight, files=st.integers(0, 3100), wildcards=st.integers(0, 16))


@settings(max_examples=300, deadline=None)
@given(
    pending=st.lists(_url, max_size=60),
    extra=st.lists(_url, max_size=60),
    in_flight=_in_flight,
    limits=_limits,
    billed=st.integers(0, 60),
    waited=st.sampled_from([0.0, 1000.0]),
)
def test_cost_model_properties(
    pending: list[str],
    extra: list[str],
    in_flight: InFlight,
    limits: Limits,
    billed: int,
    waited: float,
) -> None:
    """Every pending path is planned, covered or deferred, exactly once; limits and
    max_over_invalidation are never exceeded; `*` only last, never `/*` unless allowed;
    the same input gives the same plan."""
    tree = PrefixTree([*pending, *extra])
    args = dict(tree=tree, billed_this_month=billed, waited=waited)
    p = make_plan(DIST, pending, in_flight, limits, **args)  # type: ignore[arg-type]
    assert p == make_plan(DIST, list(pending), in_flight, limits, **args)  # type: ignore[arg-type]
    unique = set(pending)
    accounted = [*set(p.planned) & unique, *p.covered, *p.deferred]
    assert sorted(accounted) == sorted(unique)
    for path in p.covered:
        assert any(covers(w, path) for w in p.planned)
    room = limits.capacity(in_flight)
    assert p.total.files <= room.files
    assert p.total.wildcards <= room.wildcards
    for path in p.planned:
        assert "*" not in path[:-1]
        if path == "/*":
            assert limits.allow_root_wildcard
    for c in p.choices:
        assert c.objects >= 0
        assert c.evicted <= limits.max_over_invalidation * c.objects + 1e-9
        assert c.evicted == c.objects - sum(
            1 for x in unique if covers(c.wildcard, x) and not x.endswith("/")
        )
    for batch in p.batches:
        assert batch.files <= limits.max_paths_per_batch
        assert batch.wildcards <= 15
        assert all(is_wildcard(x) or x in unique for x in batch.paths)


@settings(max_examples=100, deadline=None)
@given(pending=st.lists(_url, min_size=1, max_size=40), extra=st.lists(_url, max_size=40))
def test_exact_paths_while_free_paths_last_and_they_fit(
    pending: list[str], extra: list[str]
) -> None:
    """With enough free paths left and room for every path, nothing is a wildcard."""
    p = make_plan(DIST, pending, InFlight(), Limits(), tree=PrefixTree([*pending, *extra]))
    assert p.total.wildcards == 0
    assert p.evicted == 0
    assert not p.deferred
    assert set(p.planned) == set(pending)
