"""`python -m bench`: measure invalidatord against its yardsticks and targets.

Writes bench/results/<time>/results.json and one PNG chart per case, prints medians and ratios.
See bench/README.md for what each case measures and how.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import cases, profile, targets
from bench.procs import REPO, SOURCE_ENV, Emulator, reap_all

RESULTS = REPO / "bench" / "results"
#: Outside the repository: 100,000-file trees and code snapshots are no business of git or linters.
WORK = Path("/var/tmp/invalidatord-bench")
MAX_QUEUED_EVENTS = "/proc/sys/fs/inotify/max_queued_events"
CASES = (
    "throughput", "latency", "startup", "catchup", "alternatives", "content", "poll", "planner",
    "idle",
)  # fmt: skip
#: Run only when named (`--only idle`, `--only all`): idle is 10 minutes of a daemon doing nothing.
OPT_IN = ("idle",)
DEFAULT = tuple(c for c in CASES if c not in OPT_IN)
DOCS = REPO / "docs" / "bench"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument(
        "--only",
        "--cases",
        dest="cases",
        default="default",
        help=f"comma-separated cases of {','.join(CASES)}; 'default' (all but "
        f"{','.join(OPT_IN)}) or 'all'",
    )
    p.add_argument("--skip", default="", help="comma-separated cases to leave out")
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help="the idle case's window (600; quick 20)",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help=f"also write the charts to {DOCS.relative_to(REPO)} (the README's)",
    )
    p.add_argument("--profile", action="store_true", help="also profile with py-spy")
    p.add_argument(
        "--profile-only", action="store_true", help="only the py-spy profiles, no measurements"
    )
    p.add_argument(
        "--rev",
        default=None,
        help="measure this git revision (a snapshot of its invalidatord/), not the working tree",
    )
    p.add_argument("--work", type=Path, default=WORK, help=f"where trees are made ({WORK})")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: timestamped)")
    return p


@contextmanager
def inotify_queue(events: int) -> Iterator[dict[str, Any]]:
    """Raise fs.inotify.max_queued_events for the run where writable; restore it after."""
    info: dict[str, Any] = {"wanted": events}
    try:
        with open(MAX_QUEUED_EVENTS, encoding="ascii") as f:
            old = f.read().strip()
    except OSError:
        old = None
    info["before"] = old
    changed = False
    if old is not None and int(old) < events:
        try:
            with open(MAX_QUEUED_EVENTS, "w", encoding="ascii") as f:
                f.write(str(events))
            changed = True
        except OSError as exc:
            info["error"] = str(exc)
    info["during"] = Path(MAX_QUEUED_EVENTS).read_text().strip() if old is not None else None
    try:
        yield info
    finally:
        if changed and old is not None:
            with open(MAX_QUEUED_EVENTS, "w", encoding="ascii") as f:
                f.write(old)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def _select_source(rev: str | None, work: Path) -> dict[str, Any]:
    """The code under measurement: the working tree, or a snapshot of `rev` (other people's
    uncommitted edits then cannot break or skew a run)."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "invalidatord"))
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "", True
    if rev is None:
        return {"source": "working tree", "head": head, "dirty": dirty}
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest = work / f"src-{sha[:12]}"
    if not (dest / "invalidatord").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha, "invalidatord"], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    os.environ[SOURCE_ENV] = str(dest)
    sys.path.insert(0, str(dest))
    for name in [m for m in sys.modules if m == "invalidatord" or m.startswith("invalidatord.")]:
        del sys.modules[name]
    return {"source": f"git {sha}", "head": head, "dirty": False}


def _check_filter() -> None:
    import importlib

    from bench.watchdog_alone import EVENT_FILTER

    # where the filter lives in the code measured (it moved with the watcher process)
    modules = ("watchdog_observer", "watcher", "filesystem")
    for module in (f"invalidatord.sources.{name}" for name in modules):
        try:
            _INOTIFY_EVENTS = importlib.import_module(module)._INOTIFY_EVENTS
            break
        except (ImportError, AttributeError):
            continue
    else:
        raise SystemExit("cannot find invalidatord's inotify event filter")
    if set(EVENT_FILTER) != set(_INOTIFY_EVENTS):
        raise SystemExit("bench/watchdog_alone.py's EVENT_FILTER no longer matches invalidatord's")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _selected(only: str, skip: str) -> list[str] | str:
    """The cases to run, in their order, or an error message."""
    names = {c.strip() for c in only.split(",") if c.strip()}
    if names == {"default"}:
        names = set(DEFAULT)
    elif names == {"all"}:
        names = set(CASES)
    skipped = {c.strip() for c in skip.split(",") if c.strip()}
    unknown = (names | skipped) - set(CASES)
    if unknown:
        return f"unknown case(s): {', '.join(sorted(unknown))}; the cases: {', '.join(CASES)}"
    return [c for c in CASES if c in names and c not in skipped]


def _meta(sizes: cases.Sizes, reps: int, queue: dict[str, Any]) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for pkg in ("invalidatord", "watchdog", "boto3", "moto", "structlog", "pathspec"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": _loadavg(),
        "reps": reps,
        "sizes": sizes.__dict__,
        "inotify_max_queued_events": queue,
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = cases.QUICK if args.quick else cases.FULL
    if args.idle_seconds is not None:
        sizes = dataclasses.replace(sizes, idle_seconds=args.idle_seconds)
    reps = args.reps or (1 if args.quick else 3)
    wanted = _selected(args.cases, args.skip)
    if isinstance(wanted, str):
        print(wanted, file=sys.stderr)
        return 2
    if args.profile_only:
        wanted = []
    if not shutil.which("inotifywait") and ("throughput" in wanted or "startup" in wanted):
        print("inotifywait is missing: apt-get install inotify-tools", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    source = _select_source(args.rev, args.work)
    _check_filter()
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    results: dict[str, Any] = {}
    # create passes queue 2 events per file; leave room for the largest tree.
    queue_events = max(1 << 20, 4 * sizes.tp_files)
    with inotify_queue(queue_events) as queue:
        results["meta"] = _meta(sizes, reps, queue)
        results["meta"]["code"] = source
        emulator = Emulator()
        ctx = cases.Ctx(
            work=args.work,
            out=out,
            sizes=sizes,
            reps=reps,
            emulator=emulator,
            queue_events=queue_events,
        )
        try:
            st: cases.StartTree | None = None

            def start_tree() -> cases.StartTree:
                nonlocal st
                st = st or cases.StartTree(ctx)
                return st

            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "throughput": lambda: cases.throughput(ctx),
                "latency": lambda: cases.latency(ctx),
                "startup": lambda: cases.startup(ctx, start_tree()),
                "catchup": lambda: cases.catchup(ctx, start_tree()),
                "alternatives": lambda: cases.alternatives(ctx),
                "content": lambda: cases.content(ctx),
                "poll": lambda: cases.poll(ctx, start_tree()),
                "planner": lambda: cases.planner(ctx),
                "idle": lambda: cases.idle(ctx, start_tree()),
            }
            for name in CASES:
                if name not in wanted:
                    continue
                t0, load0 = time.monotonic(), _loadavg()
                ctx.say(f"case {name} (load average {load0[0]:.2f})")
                try:
                    results[name] = steps[name]()
                except Exception as exc:
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    reap_all_but(emulator)
                results[name]["bench_seconds"] = round(time.monotonic() - t0, 1)
                results[name]["load_avg"] = {"start": load0, "end": _loadavg()}
            if "alternatives" in results and "error" not in results["alternatives"]:
                results["alternatives"]["ratios"] = cases.summarise_alternatives(
                    results["alternatives"]
                )
            if args.profile or args.profile_only:
                results["profile"] = _profile(ctx, start_tree)
        finally:
            emulator.close()
            reap_all()
    results["meta"]["notes"] = ctx.notes
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["load_avg_at_end"] = _loadavg()
    results["targets"] = targets.evaluate(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    drawn = _charts(results, out, args.docs)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if out.resolve().parent == RESULTS.resolve():  # a run elsewhere (--out) is not "the last"
        shutil.copy(out / "results.json", RESULTS / "latest.json")
    print(report(results))
    print(f"\nresults: {out / 'results.json'}; charts: {', '.join(drawn) or 'none'}")
    return 0


def _charts(results: dict[str, Any], out: Path, docs: bool) -> list[str]:
    """The PNGs into the results folder, and with --docs into docs/bench too. Without
    matplotlib (not in the test extra) the run still stands: the JSON has every figure."""
    try:
        from bench import charts
    except ImportError as exc:
        results["meta"]["notes"].append(f"no charts: {exc} (.venv/bin/pip install -e '.[bench]')")
        return []
    drawn = [str(p.relative_to(out)) for p in charts.draw_all(results, out)]
    if docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        drawn += [str(p.relative_to(REPO)) for p in charts.draw_all(results, DOCS)]
    return drawn


def reap_all_but(emulator: Emulator) -> None:
    """After a failed case: end the children it left (not the shared emulator)."""
    from bench import procs

    keep = emulator.proc
    for proc in list(procs._CHILDREN):
        if proc is not keep and proc.poll() is None:
            procs.stop_process(proc, signal.SIGKILL, timeout=10)
    procs._CHILDREN[:] = [keep]


def _profile(ctx: cases.Ctx, start_tree: Callable[[], cases.StartTree]) -> dict[str, Any]:
    spy = profile.py_spy()
    if spy is None:
        return {"error": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    result: dict[str, Any] = {}
    try:
        result["throughput"] = profile.profile_throughput(ctx, spy)
        result["catchup"] = profile.profile_catchup(ctx, start_tree(), spy)
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


# ---- the printed report -------------------------------------------------------------------------


def _f(x: Any, unit: str = "", digits: int = 2) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}{unit}"
    return f"{x:,}{unit}"


def _met(ok: Any) -> str:
    return "MET" if ok else "NOT MET"


def report(r: dict[str, Any]) -> str:
    meta = r["meta"]
    lines = [
        f"invalidatord benchmark ({meta['reps']} reps; medians); load average "
        f"{_load(meta.get('load_avg_at_start'))} at the start, "
        f"{_load(meta.get('load_avg_at_end'))} at the end ({meta.get('cpus')} CPUs)"
    ]
    tp = r.get("throughput")
    if tp and "error" not in tp:
        lines.append(
            f"\n1. Event throughput, {tp['files']:,} files in {tp['dirs']:,} dirs "
            f"(daemon quiet {tp['daemon_quiet_s']}s subtracted)"
        )
        for kind, m in tp["median"].items():
            cells = ", ".join(
                f"{n} {_f(v['files_per_s'], '/s', 0)} (cpu {_f(v['cpu_s'], 's')}, "
                f"lost {v['lost_max']})"
                for n, v in m.items()
            )
            lines.append(f"   {kind:6}: {cells}")
            rr = tp["ratios"][kind]
            lines.append(
                f"           invalidatord/watchdog {_f(rr['invalidatord_vs_watchdog'], 'x')}, "
                f"watchdog/inotifywait {_f(rr['watchdog_vs_inotifywait'], 'x')}"
            )
            if "reader_vs_inotifywait" in rr:
                lines.append(
                    "           invalidatord/inotifywait "
                    f"{_f(rr['invalidatord_vs_inotifywait'], 'x')}, watcher process alone: "
                    f"{_f(rr['reader_vs_inotifywait'], 'x')} inotifywait, "
                    f"{_f(rr['reader_vs_watchdog'], 'x')} watchdog"
                )
        lines.append(f"   target {tp['target']['rule']}: {_met(tp['target']['met'])}")
    lat = r.get("latency")
    if lat and "error" not in lat:
        lines.append(
            f"\n2. Latency, last write -> first CreateInvalidation - quiet {lat['quiet_s']}s"
        )
        for v in lat["sizes"].values():
            lines.append(
                f"   {v['paths']:>6,} paths: p50 {_f(v['first_p50_s'] * 1000, ' ms', 0)}, "
                f"p99 {_f(v['first_p99_s'] * 1000, ' ms', 0)} (n={len(v['samples_first_s'])}); "
                f"all submitted p50 {_f(v['all_p50_s'] * 1000, ' ms', 0)}"
            )
        lines.append(f"   target: {_met(lat['target']['met'])}")
    su = r.get("startup")
    if su and "error" not in su:
        lines.append(f"\n3. Start-up, {su['files']:,} files in {su['dirs']:,} dirs (s from exec)")
        for mode, m in su["median"].items():
            cells = ", ".join(
                f"{n} {_f(v['ready_s'])}"
                + (f" (scan done {_f(v['scan_done_s'])})" if "scan_done_s" in v else "")
                for n, v in m.items()
            )
            lines.append(f"   {mode}: {cells}")
        for key, c in su["checks"].items():
            lines.append(
                f"   {key}: ready {_f(c['ready_s'])}s vs budget {_f(c['budget_s'])}s "
                f"({_f(c['ratio_to_watchdog'], 'x')} watchdog): {_met(c['met'])}"
            )
        lines.append(
            f"   daemon peak RSS {_f(su['daemon_peak_rss_mib'], ' MiB', 1)} (target 80): "
            f"{_met(su['target']['rss_met'])}; of which the daemon process "
            f"{_f(su.get('daemon_main_peak_rss_mib'), ' MiB', 1)}; PSS of both after the scan "
            f"{_f(su.get('daemon_pss_mib'), ' MiB', 1)}"
        )
    cu = r.get("catchup")
    if cu and "error" not in cu:
        m = cu["median"]
        lines.append(
            f"\n4. Catch-up, {cu['changed']:,} of {cu['files']:,} files changed while stopped"
        )
        lines.append(
            f"   start -> accepted {_f(m['accepted_s'])}s (ready {_f(m['ready_s'])}s, rescan "
            f"{_f(m['rescan_s'])}s); walk process {_f(m['walk_wall_s'])}s "
            f"(walk {_f(m['walk_s'])}s)"
        )
        rr = cu["ratios"]
        lines.append(
            f"   ratio {_f(rr['start_to_accepted_vs_walk_process'], 'x')} the walk process "
            f"(rescan {_f(rr['rescan_vs_walk_in_process'], 'x')} the in-process walk): "
            f"{_met(cu['target']['met'])}"
        )
    alt = r.get("alternatives")
    if alt and "error" not in alt:
        lines.append(f"\n5. A deploy of {alt['files']:,} changed files")
        for name in ("invalidatord", "lambda", "lambda_in_flight_limit", "cli_loop"):
            v = alt.get(name)
            if not v:
                continue
            extra = f", refused {v['refused']}" if "refused" in v else ""
            lines.append(
                f"   {name:23} calls {_f(v['api_calls'])} (create {_f(v['create_calls'])}), "
                f"billed {_f(v['billed_paths'])}, wall {_f(v['wall_s'])}s, "
                f"cpu {_f(v['cpu_s'])}s{extra}"
            )
        if "real_aws_cli" in alt:
            v = alt["real_aws_cli"]
            lines.append(
                f"   real aws CLI: {_f(v['per_call_ms'], ' ms', 0)}/call "
                f"(cpu {_f(v['cpu_per_call_ms'], ' ms', 0)}) over {v['calls']} calls"
            )
        for name, rr in alt.get("ratios", {}).items():
            lines.append(
                f"   {name} vs invalidatord: {_f(rr['api_calls_x'], 'x', 0)} calls, "
                f"{_f(rr['billed_paths_x'], 'x', 0)} billed paths, "
                f"{_f(rr['wall_x'], 'x')} wall, {_f(rr['cpu_x'], 'x')} cpu"
            )
    ct = r.get("content")
    if ct and "error" not in ct:
        lines.append(
            f"\n6. compare: content against mtime, {ct['files']:,} files "
            f"({ct['tree_bytes'] / 2**20:,.0f} MiB; a full rebuild with {ct['changed_files']:,} "
            "really changed)"
        )
        for mode in ("mtime", "content"):
            cells = ", ".join(
                f"{phase.replace('_', ' ')} {_f(v['seconds'])}s "
                f"(read {v['bytes_read'] / 2**20:,.0f} MiB, pending {v['pending_paths']:,})"
                for phase, v in ct[mode].items()
            )
            lines.append(f"   {mode:7}: {cells}")
        rr = ct["ratios"]
        lines.append(
            f"   walk {_f(ct['walk']['seconds'])}s, walk + read {_f(ct['walk_read']['seconds'])}s;"
            f" content's rebuild {_f(rr['content_rebuild_vs_walk'], 'x')} the walk, "
            f"{_f(rr['content_rebuild_vs_walk_read'], 'x')} walk + read; first start "
            f"{_f(rr['content_first_start_vs_walk_read'], 'x')} walk + read"
        )
    po = r.get("poll")
    if po and "error" not in po:
        m = po["median"]
        lines.append(
            f"\n7. One poll of watcher: polling, {po['files']:,} unchanged files in "
            f"{po['dirs']:,} dirs"
        )
        lines.append(
            f"   poll {_f(m['poll']['seconds'])}s (cpu {_f(m['poll']['cpu_seconds'])}s, memory "
            f"grown {m['poll']['grown_kib'] / 1024:.1f} MiB, changes found {po['changes_found']});"
            f" walk {_f(m['scandir']['seconds'])}s: "
            f"{_f(po['ratios']['poll_vs_walk_time'], 'x')} the walk"
        )
    pl = r.get("planner")
    if pl and "error" not in pl:
        t = pl.get("planning", {})
        lines.append(
            f"\n8. Planner (simulation): planning 100,000 pending over 1,000,000 objects "
            f"{t.get('plan_s')}s; workloads: {', '.join(pl.get('results', {}))}"
        )
    idle = r.get("idle")
    if idle and "error" not in idle:
        lines.append(
            f"\n9. Idle, {idle['files']:,} files for {idle['seconds']:.0f}s "
            f"({idle['rescans_in_window']} rescans; load {_load(idle.get('loadavg'))} -> "
            f"{_load(idle.get('loadavg_end'))})"
        )
        for name in ("daemon", "watcher"):
            if name in idle:
                v = idle[name]
                lines.append(
                    f"   {name}: {v['cpu_s']:.2f} CPU-s ({v['cpu_pct']:.3f}% of a core), "
                    f"{v['wakeups_per_s']:.1f} wake-ups/s"
                )
    prof = r.get("profile")
    if prof and "error" not in prof:
        lines.append("\nProfiles (py-spy, self samples share; top 8)")
        for label, p in [(f"throughput {k}", v) for k, v in prof["throughput"].items()] + [
            ("catch-up", prof["catchup"])
        ]:
            lines.append(f"   {label} ({p['samples']} samples):")
            for row in p["self"][:8]:
                lines.append(f"      {row['share'] * 100:5.1f}%  {row['function']}")
    for name in CASES:
        if name in r and "error" in r[name]:
            lines.append(f"\n{name}: FAILED: {r[name]['error']}")
    if r.get("targets"):
        lines.append("\nTargets (#15)")
        lines.append(targets.table(r["targets"]))
    if meta.get("notes"):
        lines.append("\nnotes: " + "; ".join(meta["notes"]))
    lines.append(
        f"\ntotal {meta.get('seconds', 0):.0f}s; load average "
        f"{_load(meta.get('load_avg_at_start'))} at the start, "
        f"{_load(meta.get('load_avg_at_end'))} at the end"
    )
    return "\n".join(lines)


def _load(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "n/a"
