"""`python -m bench planner`: invalidatord's planner against its peers' rules, by simulation.

A generated site of 100,000 pages (10 sections x 50 folders x 200 pages, URLs `/sN/fNN/pNNN.html`)
and five workloads. Each strategy turns the changed paths into the items it would send; the
same accounting counts, for all of them, billed paths (every item of every request), API calls
(CreateInvalidation requests), unchanged objects evicted (objects under a wildcard that did not
change, each counted once per event) and dollars for the month (CloudFront's 1,000 free paths,
then $0.005 a path; each single workload is taken as the month's only invalidations).

The peers, implemented from their documented behaviour:

- `per-change`: one CreateInvalidation of one path per changed object (the classic S3-event
  Lambda).
- `s3deploy`: bep/s3deploy's `normalizeInvalidationPaths`: `index.html` -> its directory; more
  than 8 paths -> cut to parent directories (`/dir/*`) level by level until at most 8 remain,
  else `/*`; one request.
- `c3`: the C3 CloudFront Cache Controller WordPress plugin: more than 100 paths -> `/*`, else
  the paths; one request.

invalidatord runs its own `planner.make_plan` with the default config (and once more with
`allow_root_wildcard: true`), in waves: what a plan leaves waiting goes in the next wave, a
minute later (each invalidation taken to complete within that minute).

The hot folder: `/s0/f00/` (200 pages) through a simulated month: every hour 20 of its pages
change (an article and the listings it appears on), and once a day all 200 are rebuilt.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from invalidatord.model import InFlight, is_wildcard
from invalidatord.planner import Limits, PrefixTree, make_plan

PRICE = 0.005
FREE = 1000
SECTIONS, FOLDERS, PAGES = 10, 50, 200
OUT = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"

Strategy = Callable[[Sequence[str], int], list[list[str]]]  # (changed, billed so far) -> requests


def site() -> list[str]:
    return [
        f"/s{s}/f{f:02}/p{p:03}.html"
        for s in range(SECTIONS)
        for f in range(FOLDERS)
        for p in range(PAGES)
    ]


def per_change(changed: Sequence[str], billed: int) -> list[list[str]]:
    return [[p] for p in changed]


def s3deploy(changed: Sequence[str], billed: int) -> list[list[str]]:
    threshold = 8
    normalized: list[str] = []
    maxlevels = 0
    for p in changed:
        maxlevels = max(maxlevels, p.count("/"))
        normalized.append(p[: -len("index.html")] if p.endswith("/index.html") else p)
    normalized = sorted(dict.fromkeys(normalized))
    if len(normalized) > threshold:
        for k in range(maxlevels, 0, -1):
            out = []
            for p in normalized:
                if p.count("/") > k:
                    parts = p.rsplit("/", 1)[0].strip("/").split("/")
                    if len(parts) > 1:
                        parts = parts[:-1]
                    p = "/" + "/".join(parts) + "/*"
                out.append(p)
            normalized = list(dict.fromkeys(out))
            if len(normalized) <= threshold:
                break
        if len(normalized) > threshold:
            return [["/*"]]
    if "/*" in normalized:
        return [["/*"]]
    return [normalized]


def c3(changed: Sequence[str], billed: int) -> list[list[str]]:
    return [["/*"]] if len(changed) > 100 else [list(changed)]


def invalidatord(limits: Limits, tree: PrefixTree) -> Strategy:
    def run(changed: Sequence[str], billed: int) -> list[list[str]]:
        requests: list[list[str]] = []
        pending = list(changed)
        waited = 0.0
        while pending:
            p = make_plan(
                "www",
                pending,
                InFlight(),
                limits,
                tree=tree,
                billed_this_month=billed,
                waited=waited,
            )
            requests += [list(b.paths) for b in p.batches]
            billed += p.billed
            pending = list(p.deferred)
            waited += 60.0
        return requests

    return run


class Accounting:
    def __init__(self, objects: Sequence[str]) -> None:
        self._sorted = sorted(objects)

    def _count(self, prefix: str, among: Sequence[str]) -> int:
        low = bisect.bisect_left(among, prefix)
        return bisect.bisect_left(among, prefix[:-1] + chr(ord(prefix[-1]) + 1), lo=low) - low

    def evicted(self, items: Sequence[str], changed: Sequence[str]) -> int:
        prefixes = sorted({w[:-1] for w in items if is_wildcard(w)})
        outer: list[str] = []
        for p in prefixes:  # a prefix inside one already taken evicts nothing more
            if not (outer and p.startswith(outer[-1])):
                outer.append(p)
        moved = sorted(set(changed))
        return sum(self._count(p, self._sorted) - self._count(p, moved) for p in outer)


def run_workload(
    events: Sequence[Sequence[str]], strategy: Strategy, acct: Accounting
) -> dict[str, Any]:
    billed = calls = evicted = 0
    for changed in events:
        requests = strategy(changed, billed)
        calls += len(requests)
        items = [p for r in requests for p in r]
        billed += len(items)
        evicted += acct.evicted(items, changed)
    return {
        "billed_paths": billed,
        "api_calls": calls,
        "evicted": evicted,
        "dollars": round(max(0, billed - FREE) * PRICE, 2),
    }


def workloads(pages: Sequence[str], rng: random.Random) -> dict[str, list[list[str]]]:
    hot = [p for p in pages if p.startswith("/s0/f00/")]
    month: list[list[str]] = []
    for hour in range(30 * 24):
        month.append(list(hot) if hour % 24 == 0 else sorted(rng.sample(hot, 20)))
    return {
        "one page": [[pages[12345]]],
        "5% of pages": [sorted(rng.sample(pages, len(pages) // 20))],
        "one section": [[p for p in pages if p.startswith("/s3/")]],
        "full redeploy": [list(pages)],
        "hot folder, a month": month,
    }


def planning_time(reps: int = 3) -> dict[str, Any]:
    """Planning 100,000 pending paths over a 1,000,000-object tree (the tree built once)."""
    rng = random.Random(7)
    objects = [
        f"/a{a:02}/b{b:03}/p{p:03}.html" for a in range(20) for b in range(500) for p in range(100)
    ]
    started = time.perf_counter()
    tree = PrefixTree(objects)
    build = time.perf_counter() - started
    pending = rng.sample(objects, 100_000)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        make_plan("www", pending, InFlight(), Limits(), tree=tree, billed_this_month=FREE)
        times.append(time.perf_counter() - started)
    return {"tree_build_s": round(build, 3), "plan_s": round(statistics.median(times), 3)}


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is no worse than b on billed paths and eviction, and better on one."""
    return (
        a["billed_paths"] <= b["billed_paths"]
        and a["evicted"] <= b["evicted"]
        and (a["billed_paths"] < b["billed_paths"] or a["evicted"] < b["evicted"])
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench planner", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT / "planner")
    parser.add_argument("--charts", type=Path, default=DOCS, help=f"where the PNG goes ({DOCS})")
    args = parser.parse_args(argv)
    pages = site()
    tree = PrefixTree(pages)
    acct = Accounting(pages)
    subjects: dict[str, Strategy] = {
        "invalidatord": invalidatord(Limits(), tree),
        "invalidatord (root allowed)": invalidatord(Limits(allow_root_wildcard=True), tree),
        "per-change": per_change,
        "s3deploy": s3deploy,
        "c3": c3,
    }
    results: dict[str, dict[str, Any]] = {}
    for name, events in workloads(pages, random.Random(12)).items():
        results[name] = {s: run_workload(events, fn, acct) for s, fn in subjects.items()}
    peers = ("per-change", "s3deploy", "c3")
    goals: dict[str, Any] = {}
    for ours in ("invalidatord", "invalidatord (root allowed)"):
        per_workload = {}
        for w, r in results.items():
            me = r[ours]
            # no peer evicts no more and bills fewer paths
            per_workload[w] = not any(
                r[p]["evicted"] <= me["evicted"] and r[p]["billed_paths"] < me["billed_paths"]
                for p in peers
            )
        better = {p: [w for w, r in results.items() if dominates(r[ours], r[p])] for p in peers}
        goals[ours] = {
            "no_more_billed_than_best_peer_at_no_more_eviction": per_workload,
            "strictly_better_on": better,
        }
    timing = planning_time()
    report = {"results": results, "goals": goals, "planning": timing}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    print(json.dumps(goals, indent=2))
    print(
        f"planning 100,000 pending over 1,000,000 objects: {timing['plan_s']} s "
        f"(tree built once in {timing['tree_build_s']} s)"
    )
    try:
        from bench.charts import planner_chart
    except ImportError as exc:  # matplotlib is in the bench extra
        print(f"no chart: {exc}")
    else:
        args.charts.mkdir(parents=True, exist_ok=True)
        planner_chart(results, args.charts / "planner.png")
        print(f"chart: {args.charts / 'planner.png'}")
    return 0


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| workload | subject | billed paths | API calls | unchanged evicted | $ for the month |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for w, r in results.items():
        for s, m in r.items():
            lines.append(
                f"| {w} | {s} | {m['billed_paths']:,} | {m['api_calls']:,} | "
                f"{m['evicted']:,} | {m['dollars']:,.2f} |"
            )
    return "\n".join(lines)
