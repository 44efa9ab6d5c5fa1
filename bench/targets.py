"""Every figure of a run against its performance target (#15), as rows: figure, value, target,
status. A status is "met", "NOT MET", "stated" (a figure with no target), "not run" or
"failed". The rules are evaluated here from the medians, so the summary is one place."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Row = dict[str, str]

MET, NOT_MET, STATED, NOT_RUN, FAILED = "met", "NOT MET", "stated", "not run", "failed"


def _x(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.2f}x"


def _ms(v: float) -> str:
    return f"{v * 1000:,.0f} ms"


def _ok(cond: bool) -> str:
    return MET if cond else NOT_MET


def _throughput(tp: dict[str, Any]) -> list[Row]:
    rows = []
    for kind in ("create", "append"):
        m, rr = tp["median"][kind], tp["ratios"][kind]
        r = rr["invalidatord_vs_watchdog"]
        lost = m["invalidatord"]["lost_max"]
        rows.append(
            {
                "figure": f"events, {kind} pass: invalidatord / watchdog alone",
                "value": f"{_x(r)} ({m['invalidatord']['files_per_s']:,.0f} vs "
                f"{m['watchdog']['files_per_s']:,.0f} files/s), lost {lost}",
                "target": ">= 1.0x, none lost",
                "status": _ok(r >= 1.0 and lost == 0),
            }
        )
    m, rr = tp["median"]["append"], tp["ratios"]["append"]
    r = rr.get(
        "invalidatord_vs_inotifywait",
        m["invalidatord"]["files_per_s"] / m["inotifywait"]["files_per_s"],
    )
    rows.append(
        {
            "figure": "events, append pass: invalidatord / inotifywait (end to end)",
            "value": f"{_x(r)} ({m['inotifywait']['files_per_s']:,.0f} files/s)",
            "target": ">= 0.3x",
            "status": _ok(r >= 0.3 and m["invalidatord"]["lost_max"] == 0),
        }
    )
    if "mtime_vs_watchdog" in rr:
        rows.append(
            {
                "figure": "events, append pass: invalidatord with compare: mtime / watchdog alone",
                "value": f"{_x(rr['mtime_vs_watchdog'])} "
                f"({m['invalidatord-mtime']['files_per_s']:,.0f} files/s, no file read), "
                f"lost {m['invalidatord-mtime']['lost_max']}",
                "target": "stated",
                "status": STATED,
            }
        )
    if "reader_vs_inotifywait" in rr:
        rows.append(
            {
                "figure": "events, append pass: the watcher process alone / inotifywait",
                "value": f"{_x(rr['reader_vs_inotifywait'])} ({_x(rr['reader_vs_watchdog'])} "
                "watchdog alone)",
                "target": "stated",
                "status": STATED,
            }
        )
    return rows


def _latency(lat: dict[str, Any]) -> list[Row]:
    rows = []
    for v in lat["sizes"].values():
        n = f"{v['paths']:,}"
        rows.append(
            {
                "figure": f"latency, {n} paths: p50 over the quiet window",
                "value": _ms(v["first_p50_s"]),
                "target": "<= 100 ms",
                "status": _ok(v["first_p50_s"] <= 0.100),
            }
        )
        rows.append(
            {
                "figure": f"latency, {n} paths: p99 (n={len(v['samples_first_s'])})",
                "value": _ms(v["first_p99_s"]),
                "target": "<= 250 ms",
                "status": _ok(v["first_p99_s"] <= 0.250),
            }
        )
    return rows


def _startup(su: dict[str, Any]) -> list[Row]:
    rows = [
        {
            "figure": f"memory, {su['files']:,} files: daemon + watcher, summed peak RSS",
            "value": f"{su['daemon_peak_rss_mib']:.1f} MiB (daemon process "
            f"{su.get('daemon_main_peak_rss_mib', math.nan):.1f})",
            "target": "<= 80 MiB",
            "status": _ok(su["daemon_peak_rss_mib"] <= 80),
        },
        {
            "figure": "memory: PSS of both after the scan",
            "value": f"{su.get('daemon_pss_mib', math.nan):.1f} MiB",
            "target": "stated",
            "status": STATED,
        },
    ]
    for key, c in su["checks"].items():
        rows.append(
            {
                "figure": f"start-up, {key.replace('_', ' ')}: ready",
                "value": f"{c['ready_s']:.2f} s",
                "target": f"<= 1.5x watchdog + walk = {c['budget_s']:.2f} s (first round)",
                "status": _ok(c["met"]),
            }
        )
    return rows


def _catchup(cu: dict[str, Any]) -> list[Row]:
    rr, m = cu["ratios"], cu["median"]
    return [
        {
            "figure": f"catch-up, {cu['changed']:,} of {cu['files']:,}: rescan / in-process walk",
            "value": f"{_x(rr['rescan_vs_walk_in_process'])} ({m['rescan_s']:.2f} vs "
            f"{m['walk_s']:.2f} s)",
            "target": "<= 1.5x",
            "status": _ok(rr["rescan_vs_walk_in_process"] <= 1.5),
        },
        {
            "figure": "catch-up: exec -> all accepted / walk as a process",
            "value": f"{_x(rr['start_to_accepted_vs_walk_process'])} ({m['accepted_s']:.2f} vs "
            f"{m['walk_wall_s']:.2f} s)",
            "target": "stated",
            "status": STATED,
        },
    ]


def _idle(idle: dict[str, Any]) -> list[Row]:
    cells = []
    for name in ("daemon", "watcher"):
        if name in idle:
            v = idle[name]
            cells.append(
                f"{name} {v['cpu_s']:.2f} CPU-s ({v['cpu_pct']:.3f}%), "
                f"{v['wakeups_per_s']:.1f} wake-ups/s"
            )
    return [
        {
            "figure": f"idle, {idle['files']:,} files, {idle['seconds']:.0f} s "
            f"({idle['rescans_in_window']} rescans)",
            "value": "; ".join(cells),
            "target": "stated",
            "status": STATED,
        }
    ]


def _content(c: dict[str, Any]) -> list[Row]:
    rr, rb = c["ratios"], c["content"]["full_rebuild"]
    mib = rb["bytes_read"] / (1024 * 1024)
    return [
        {
            "figure": f"compare: content, full rebuild of {c['files']:,} files: catch-up",
            "value": f"{rb['seconds']:.2f} s = {_x(rr['content_rebuild_vs_walk'])} the walk, "
            f"{_x(rr['content_rebuild_vs_walk_read'])} walk + read; {mib:,.0f} MiB read "
            f"({_x(rr['content_rebuild_bytes_vs_tree'])} the tree); invalidates "
            f"{rb['pending_paths']:,} (mtime {c['mtime']['full_rebuild']['pending_paths']:,})",
            "target": "stated",
            "status": STATED,
        }
    ]


def _poll(p: dict[str, Any]) -> list[Row]:
    m, rr = p["median"], p["ratios"]
    return [
        {
            "figure": f"watcher: polling, one poll of {p['files']:,} unchanged files",
            "value": f"{m['poll']['seconds']:.2f} s = {_x(rr['poll_vs_walk_time'])} the walk "
            f"(CPU {_x(rr['poll_vs_walk_cpu'])}); memory grown "
            f"{m['poll']['grown_kib'] / 1024:.1f} MiB",
            "target": "stated",
            "status": STATED if p.get("changes_found", 0) == 0 else FAILED,
        }
    ]


#: case -> its rows, in the order of the summary; the label of a case not run
_RULES: list[tuple[str, Callable[[dict[str, Any]], list[Row]], str]] = [
    ("throughput", _throughput, "events: invalidatord / watchdog alone, / inotifywait"),
    ("latency", _latency, "latency, 10,000 paths: p50 <= 100 ms, p99 <= 250 ms"),
    ("startup", _startup, "memory: summed peak RSS <= 80 MiB, PSS"),
    ("catchup", _catchup, "catch-up: rescan <= 1.5x an in-process walk"),
    ("idle", _idle, "idle: CPU and wake-ups (python -m bench --only idle)"),
    ("content", _content, "compare: content: time and bytes per rebuild against a walk"),
    ("poll", _poll, "watcher: polling: time per poll against a walk"),
]


def evaluate(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for case, rule, label in _RULES:
        r = results.get(case)
        if r is None:
            rows.append({"figure": label, "value": "", "target": "", "status": NOT_RUN})
        elif "error" in r:
            rows.append({"figure": label, "value": r["error"], "target": "", "status": FAILED})
        else:
            try:
                rows.extend(rule(r))
            except (KeyError, TypeError, ZeroDivisionError) as exc:
                # a case whose shape changed must not cost the rest of the summary
                rows.append(
                    {"figure": label, "value": f"unreadable: {exc!r}", "target": "",
                     "status": FAILED}
                )  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    """Status first and the value last, so a long value does not push the columns apart."""
    heads = ("status", "figure", "target", "value")
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in heads[:-1]]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=False)) + "  value"]
    for r in rows:
        cells = [r[h].ljust(w) for h, w in zip(heads, widths, strict=False)]
        lines.append("  ".join([*cells, r["value"]]).rstrip())
    return "\n".join(lines)
