"""PNG charts of a results dict (matplotlib, no display needed).

    python -m bench.charts [RESULTS.json] [--out DIR]

redraws the charts of a saved run (default bench/results/latest.json) into DIR (default
docs/bench, the charts the README shows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_COLORS = {
    "invalidatord": "#1f77b4",
    "invalidatord-mtime": "#aec7e8",
    "watchdog": "#ff7f0e",
    "reader": "#9467bd",
    "inotifywait": "#2ca02c",
}

_LABELS = {
    "reader": "watcher process alone",
    "invalidatord-mtime": "invalidatord, compare: mtime",
}


def draw_all(results: dict[str, Any], out: Path) -> list[Path]:
    drawn: list[Path] = []
    for key, fn in (
        ("throughput", _throughput),
        ("latency", _latency),
        ("startup", _startup),
        ("catchup", _catchup),
        ("alternatives", _alternatives),
        ("content", _content),
        ("poll", _poll),
        ("planner", _planner),
    ):
        if key in results and isinstance(results[key], dict) and "error" not in results[key]:
            path = out / f"{key}.png"
            fn(results[key], path)
            drawn.append(path)
    return drawn


DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"
LATEST = Path(__file__).resolve().parent / "results" / "latest.json"


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # the subjects in the order the run measured them (`cases.TP_SUBJECTS`; older results
    # have fewer)
    subjects = list(r["median"]["create"])
    width = 0.8 / len(subjects)
    for i, name in enumerate(subjects):
        xs, ys = [], []
        for j, kind in enumerate(("create", "append")):
            xs.append(j + (i - (len(subjects) - 1) / 2) * width)
            ys.append(r["median"][kind][name]["files_per_s"])
            pts = [
                s["files_per_s"] for s in r["samples"] if s["subject"] == name and s["pass"] == kind
            ]
            ax.scatter([xs[-1]] * len(pts), pts, color="black", s=8, zorder=3)
        label = _LABELS.get(name, name)
        ax.bar(xs, ys, width, label=label, color=_COLORS[name])
    ax.set_xticks([0, 1], ["create pass", "append pass"])
    ax.set_ylabel("files/s (median; dots = repetitions)")
    ax.set_yscale("log")
    ax.set_title(f"Event throughput: {r['files']:,} files in {r['dirs']:,} directories")
    ax.legend()
    _save(fig, path)


def _latency(r: dict[str, Any], path: Path) -> None:
    sizes = list(r["sizes"].values())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = [[x * 1000 for x in s["samples_first_s"]] for s in sizes]
    ax.boxplot(data, whis=(0, 100))
    ax.set_xticks(range(1, len(sizes) + 1), [f"{s['paths']:,} paths" for s in sizes])
    ax.axhline(100, color="green", linestyle="--", label="p50 target 100 ms")
    ax.axhline(250, color="red", linestyle="--", label="p99 target 250 ms")
    ax.set_ylabel("ms after the last write, less the quiet window")
    ax.set_title(f"Latency to the first CreateInvalidation (quiet {r['quiet_s']}s)")
    ax.legend()
    _save(fig, path)


def _startup(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = ["daemon_first", "daemon_restart", "import", "watchdog", "inotifywait", "walk"]
    modes = [m for m in ("warm", "cold") if m in r["median"]]
    width = 0.38
    for i, mode in enumerate(modes):
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        ys = [r["median"][mode].get(n, {}).get("ready_s", 0.0) for n in names]
        ax.bar(xs, ys, width, label=f"{mode}: ready")
        ticks = [
            (x, r["median"][mode][n]["scan_done_s"])
            for x, n in zip(xs, names, strict=True)
            if "scan_done_s" in r["median"][mode].get(n, {})
        ]
        ax.scatter(
            [x for x, _ in ticks], [y for _, y in ticks], marker="_", s=300, color="black", zorder=3
        )
    ax.set_xticks(
        range(len(names)),
        ["first start", "restart", "import only", "watchdog", "inotifywait", "walk"],
    )
    ax.set_ylabel("seconds from exec (bar: ready; tick: catch-up done)")
    ax.set_title(
        f"Start-up: {r['files']:,} files in {r['dirs']:,} dirs; "
        f"daemon peak RSS {r['daemon_peak_rss_mib']:.0f} MiB"
    )
    ax.legend()
    _save(fig, path)


def _catchup(r: dict[str, Any], path: Path) -> None:
    m = r["median"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [
        "daemon: start\n-> accepted",
        "daemon: ready",
        "daemon: rescan",
        "walk process",
        "walk",
    ]
    values = [m["accepted_s"], m["ready_s"], m["rescan_s"], m["walk_wall_s"], m["walk_s"]]
    ax.bar(labels, values, color=["#1f77b4", "#aec7e8", "#aec7e8", "#ff7f0e", "#ffbb78"])
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"Catch-up: {r['changed']:,} of {r['files']:,} files changed while stopped")
    _save(fig, path)


def _alternatives(r: dict[str, Any], path: Path) -> None:
    names = [n for n in ("invalidatord", "lambda", "cli_loop") if n in r]
    metrics = [("api_calls", "API calls"), ("billed_paths", "billed paths"),
               ("wall_s", "wall s"), ("cpu_s", "CPU s")]  # fmt: skip
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 4))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        ax.bar(
            names, [max(r[n][key], 1e-3) for n in names], color=["#1f77b4", "#d62728", "#9467bd"]
        )
        ax.set_yscale("log")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"A deploy of {r['files']:,} changed files (cli_loop extrapolated from a sample)")
    _save(fig, path)


def _content(r: dict[str, Any], path: Path) -> None:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    phases = [("first_start", "first start"), ("restart", "restart"),
              ("full_rebuild", "after a full rebuild")]  # fmt: skip
    width = 0.38
    for i, mode in enumerate(("mtime", "content")):
        xs = [j + (i - 0.5) * width for j in range(len(phases))]
        ax.bar(xs, [r[mode][p]["seconds"] for p, _ in phases], width, label=f"compare: {mode}")
    for value, label, style in ((r["walk"]["seconds"], "walk (lstat)", "--"),
                                (r["walk_read"]["seconds"], "walk + read", ":")):  # fmt: skip
        ax.axhline(value, color="black", linestyle=style, label=label)
    ax.set_xticks(range(len(phases)), [label for _, label in phases])
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"{r['files']:,} files: time")
    ax.legend(fontsize=8)
    mib = 1024 * 1024
    bars = {
        "content: bytes read\n(full rebuild)": r["content"]["full_rebuild"]["bytes_read"] / mib,
        "walk + read": r["walk_read"]["bytes_read"] / mib,
        "tree": r["tree_bytes"] / mib,
    }
    bx.bar(list(bars), list(bars.values()), color=["#ff7f0e", "#7f7f7f", "#c7c7c7"])
    bx.set_ylabel("MiB")
    bx.set_title(
        f"invalidated after the rebuild: content {r['content']['full_rebuild']['pending_paths']:,}"
        f", mtime {r['mtime']['full_rebuild']['pending_paths']:,}",
        fontsize=9,
    )
    fig.suptitle(f"compare: content against mtime ({r['changed_files']:,} files really changed)")
    _save(fig, path)


def _poll(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    m = r["median"]
    labels = ["wall", "CPU"]
    width = 0.38
    for i, (name, label) in enumerate((("poll", "watcher: polling, one poll"),
                                       ("scandir", "os.scandir walk"))):  # fmt: skip
        xs = [j + (i - 0.5) * width for j in range(len(labels))]
        ax.bar(xs, [m[name]["seconds"], m[name]["cpu_seconds"]], width, label=label)
        for s in r["samples"][name]:
            ax.scatter(xs, [s["seconds"], s["cpu_seconds"]], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("seconds (median; dots = repetitions)")
    ax.set_title(
        f"One poll of an unchanged tree: {r['files']:,} files in {r['dirs']:,} dirs "
        f"({r['ratios']['poll_vs_walk_time']:.1f}x the walk)"
    )
    ax.legend()
    _save(fig, path)


def _planner(r: dict[str, Any], path: Path) -> None:
    planner_chart(r["results"], path)


def planner_chart(results: dict[str, Any], path: Path) -> None:
    """Billed paths against unchanged objects evicted, one panel per workload."""
    colors = {
        "invalidatord": "#1f77b4",
        "invalidatord (root allowed)": "#17becf",
        "per-change": "#2ca02c",
        "s3deploy": "#ff7f0e",
        "c3": "#d62728",
    }
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4))
    for ax, (workload, r) in zip(axes, results.items(), strict=True):
        for i, (subject, m) in enumerate(r.items()):
            ax.scatter(
                max(m["billed_paths"], 1) * (1.15**i),  # nudged apart where they coincide
                m["evicted"],
                s=60,
                color=colors.get(subject, "gray"),
                label=subject,
                marker="o" if subject.startswith("invalidatord") else "s",
                alpha=0.8,
            )
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        top = max(m["evicted"] for m in r.values())
        ax.set_ylim(-0.3, max(10, top * 5))
        ax.set_xlim(0.7, max(10, max(m["billed_paths"] for m in r.values()) * 3))
        ax.set_title(workload)
        ax.set_xlabel("billed paths")
    axes[0].set_ylabel("unchanged objects evicted")
    axes[-1].legend(fontsize=7)
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=LATEST)
    parser.add_argument("--out", type=Path, default=DOCS, help=f"where the PNGs go ({DOCS})")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    drawn = draw_all(results, args.out)
    print(f"{len(drawn)} charts in {args.out}: {', '.join(p.name for p in drawn)}")
    return 0 if drawn else 1


if __name__ == "__main__":
    sys.exit(main())
