"""The command line. The only place that turns exceptions into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import posixpath
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from invalidatord import __version__, clidocs, logs
from invalidatord.config import Config, config_warnings, default_config_path, load_config
from invalidatord.errors import AccessProblem, ConfigError, InvalidatordError
from invalidatord.journal import (
    COMPLETED,
    PLANNED,
    REJECTED,
    SUBMITTED,
    Accepted,
    BatchRecord,
    Journal,
)
from invalidatord.mapping import encode_path, normalise, path_problem
from invalidatord.metrics import FREE_PATHS_PER_MONTH, PRICE_PER_PATH
from invalidatord.planner import covers

if TYPE_CHECKING:
    from invalidatord.submitter import Submitter

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failures
EXIT_USAGE = 2  # usage and config errors

log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invalidatord",
        description="Keeps Amazon CloudFront caches fresh when the origin changes.",
    )
    parser.add_argument("--version", action="version", version=f"invalidatord {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        """A subcommand whose --help has a description and an example."""
        return sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        config = p.add_argument(
            "-c",
            "--config",
            default=None,
            help=f"config file (default: $INVALIDATORD_CONFIG or {default_config_path()})",
        )
        clidocs.mark(config, "file")
        return p

    run = with_config(
        command(
            "run",
            "run the daemon until SIGTERM/SIGINT (SIGHUP reloads the config)",
            "invalidatord run -c /etc/invalidatord/config.yaml --dry-run",
        )
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="log what would be submitted (would_submit), send nothing; safe beside a running "
        "daemon: takes no lock, writes no journal (previews against a copy of it) and serves "
        "no metrics port unless --listen is given",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="instead of log.level (debug: every path of each batch, batch_paths)",
    )
    run.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /livez here instead of metrics.listen",
    )
    chk = with_config(
        command(
            "check",
            "validate the config and print a summary (exit 2 with one line per problem); "
            "--online also asks AWS whether the credentials, distributions, queues and "
            "buckets work (exit 1 naming what failed)",
            "invalidatord check -c /etc/invalidatord/config.yaml --online",
        )
    )
    chk.add_argument(
        "--online",
        action="store_true",
        help="once the config is valid, verify it against AWS with read-only calls "
        "(GetCallerIdentity, ListInvalidations, GetDistribution, GetQueueAttributes, "
        "ListObjectsV2, HeadBucket); never receives a message nor creates an invalidation",
    )
    chk.add_argument(
        "--json", action="store_true", help="with --online: the online results as one JSON object"
    )
    mp = with_config(
        command(
            "map",
            "print the URL paths each path maps to, per distribution",
            "invalidatord map -c config.yaml about/index.html 'red flower.jpg'",
        )
    )
    mp.add_argument("--source", help="the source the paths belong to (default: the first)")
    mp.add_argument("paths", nargs="+", metavar="PATH")
    pl = with_config(
        command(
            "plan",
            "print what changes of PATHs would send, and what it costs; sends nothing",
            "invalidatord plan -c config.yaml --json products/a.html products/b.html",
        )
    )
    pl.add_argument("--source", help="the source the paths belong to (default: the first)")
    pl.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    pl.add_argument("paths", nargs="+", metavar="PATH")
    inv = with_config(
        command(
            "invalidate",
            "queue manual invalidations (a running daemon submits them, else this command)",
            "invalidatord invalidate -c config.yaml --wait --timeout 10m /index.html '/img/*'",
        )
    )
    inv.add_argument("-d", "--distribution", help="distribution name (default: every one)")
    inv.add_argument(
        "--wait", action="store_true", help="show progress until every one is Completed"
    )
    inv.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 1, saying why); default: no limit; "
        "without --wait: how long to try submitting when no daemon runs (default 60)",
    )
    inv.add_argument(
        "--raw", action="store_true", help="send the URL paths exactly as given (already encoded)"
    )
    inv.add_argument("urls", nargs="+", metavar="URL")
    st = with_config(
        command(
            "status",
            "show pending, in-flight and recent invalidations and this month's paths",
            "invalidatord status -c config.yaml --json",
        )
    )
    st.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    discard = with_config(
        command(
            "discard",
            "drop the unsent paths of a distribution id the config no longer names",
            "invalidatord discard -c config.yaml --distribution-id E2EXAMPLE12345",
        )
    )
    discard.add_argument(
        "--distribution-id", required=True, metavar="ID", help="the CloudFront id (E2...)"
    )
    emu = command(
        "emulator",
        "serve the CloudFront test double (and S3, SQS) on 127.0.0.1 to try a config",
        "invalidatord emulator --port 5000",
    )
    emu.add_argument(
        "--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000; 0: a free one)"
    )
    emu.add_argument(
        "--in-progress",
        type=_seconds,
        default=5.0,
        metavar="DURATION",
        help="how long each invalidation stays InProgress (default 5s)",
    )
    demo = command(
        "demo",
        "run the daemon on an embedded CloudFront emulator and an example site",
        "invalidatord demo --dir /tmp/site",
    )
    clidocs.mark(
        demo.add_argument(
            "--dir", help="where to create the example site (default: a temp folder)"
        ),
        "directory",
    )
    demo.add_argument(
        "--no-touch", action="store_true", help="do not edit a page by itself once ready"
    )
    comp = command(
        "completion",
        "print the shell completion script (generated from this parser with shtab)",
        "invalidatord completion bash | sudo tee "
        "/usr/share/bash-completion/completions/invalidatord",
    )
    comp.add_argument("shell", choices=clidocs.SHELLS)
    command(
        "manpage",
        "print the man page (roff, generated from this parser; needs the manpage extra)",
        "invalidatord manpage > invalidatord.1 && man -l invalidatord.1",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # `invalidatord status | head`: the reader stopped reading, which is its choice, not a
        # failure. Point stdout at /dev/null so the interpreter's final flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"invalidatord: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidatordError as exc:
        print(f"invalidatord: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _seconds(text: str) -> float:
    """A positive number of seconds, or a duration such as 90s or 5m."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    number, factor = text, 1.0
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            number, factor = text[: -len(unit)], units[unit]
            break
    try:
        value = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 90s, 5m)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


class UsageError(InvalidatordError):
    """A command-line mistake (exit 2)."""


#: glibc's mallopt parameter M_ARENA_MAX (malloc.h)
_M_ARENA_MAX = -8


def _fewer_malloc_arenas() -> None:
    """Two glibc malloc arenas for the daemon, not one per thread that allocates (up to 8 a
    core): memory one thread freed in its arena is not reused by another's, so each of the
    daemon's threads (pipeline, submitter, HTTP, scheduler) kept its own share: 1.0 MiB less
    peak on 100,000 files, 0.5 MiB once the ctypes import is paid. MALLOC_ARENA_MAX in the
    environment wins; without glibc's mallopt (musl, other systems) nothing changes."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or default_config_path())


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from invalidatord.demo import run_demo

        return run_demo(directory=args.dir, touch=not args.no_touch)
    if command == "emulator":
        from invalidatord.emulate import run_emulator

        return run_emulator(args.port, args.in_progress)
    if command == "completion":
        sys.stdout.write(clidocs.completion(_parser(), args.shell))
        return EXIT_OK
    if command == "manpage":
        sys.stdout.write(clidocs.manpage(_parser()))
        return EXIT_OK
    path = _config_path(args)
    cfg = load_config(path)
    if command == "check":
        if args.json and not args.online:
            raise UsageError("check: --json goes with --online")
        return _check(cfg, path, online=args.online, as_json=args.json)
    if command == "map":
        return _map(cfg, args.source, args.paths)
    if command == "plan":
        return _plan(cfg, args.source, args.paths, as_json=args.json)
    if command == "run" and args.log_level:
        cfg = cfg.model_copy(update={"log": cfg.log.model_copy(update={"level": args.log_level})})
    logs.configure(cfg.log.format, cfg.log.level)
    if command == "run":
        from invalidatord.factory import state_dir_problem
        from invalidatord.sources import registry

        # Before any watcher starts: one line, not a traceback from deep in the start-up.
        problem = None if args.dry_run else state_dir_problem(cfg.state_dir)
        if problem is not None:
            raise InvalidatordError(problem[0])

        _fewer_malloc_arenas()  # before any thread of the daemon allocates
        # the watchers add their watches on the other core while the rest is imported
        registry.prespawn(cfg.sources)
        from invalidatord import daemon

        def effective(loaded: Config) -> Config:
            if args.log_level:  # a reload keeps the command line's level
                log_cfg = loaded.log.model_copy(update={"level": args.log_level})
                loaded = loaded.model_copy(update={"log": log_cfg})
            return _with_listen(loaded, args.listen, dry_run=args.dry_run)

        cfg = effective(cfg)
        try:
            return daemon.run(
                cfg, dry_run=args.dry_run, reload=lambda: effective(load_config(path))
            )
        except AccessProblem as exc:
            from invalidatord.cloudfront import NO_CREDENTIALS, no_credentials_help

            if exc.code != NO_CREDENTIALS:
                raise
            # The one mistake boto3's own message does not help with: say where it looked.
            raise InvalidatordError(no_credentials_help(cfg.aws.profile, cfg.aws.role_arn)) from exc
    if command == "invalidate":
        return _invalidate(
            cfg, args.distribution, args.urls, raw=args.raw, wait=args.wait, timeout=args.timeout
        )
    if command == "status":
        return _status(cfg, as_json=args.json)
    if command == "discard":
        return _discard(cfg, args.distribution_id)
    raise UsageError(f"unknown command {command!r}")


def _with_listen(cfg: Config, listen: str | None, *, dry_run: bool) -> Config:
    """`cfg` with `--listen` applied. A dry run serves nothing unless asked: the configured
    port is usually the running daemon's, and a preview must be able to run beside it."""
    if listen is None and not dry_run:
        return cfg
    if listen is not None:
        from invalidatord.config import parse_listen

        try:
            parse_listen(listen)
        except ValueError as exc:
            raise UsageError(f"--listen {listen}: {exc}") from exc
    metrics = cfg.metrics.model_copy(update={"listen": listen})
    return cfg.model_copy(update={"metrics": metrics})


def _check(cfg: Config, path: str, *, online: bool = False, as_json: bool = False) -> int:
    from invalidatord.factory import state_dir_problem

    problem = state_dir_problem(cfg.state_dir)
    if problem is not None and problem[1]:  # no user could run the daemon with it
        print(f"{path}: {problem[0]}", file=sys.stderr)
        return EXIT_USAGE
    if not as_json:
        _print_summary(cfg, path)
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    if problem is not None:
        # Maybe only for this user: systemd's StateDirectory= creates it for the daemon's.
        print(f"warning: {problem[0]} (as this user; `run` needs it writable)", file=sys.stderr)
    return _check_online(cfg, path, as_json=as_json) if online else EXIT_OK


def _check_online(cfg: Config, path: str, *, as_json: bool) -> int:
    """Each online finding as one line as soon as it is known (or, with `as_json`, all of
    them as one object); exit 1 naming what failed."""
    from invalidatord.online import FAILED, NOT_PROBED, NOT_VERIFIED, SKIPPED, online_checks

    endpoint = cfg.aws.endpoint_url or "AWS's own endpoints"
    if not as_json:
        print(f"online, against {endpoint} (region {cfg.aws.region or 'from the environment'}):")
    findings = []
    for finding in online_checks(cfg):
        findings.append(finding)
        if not as_json:
            print(f"  {finding.line()}", flush=True)
    failed = list(dict.fromkeys(f.subject for f in findings if f.outcome == FAILED))
    skipped = sum(1 for f in findings if f.outcome == SKIPPED)
    if as_json:
        _print_json(
            {
                "config": path,
                "valid": True,
                "ok": not failed,
                "failed": failed,
                "skipped": skipped,
                "checks": [f.as_dict() for f in findings],
            }
        )
    if failed:
        rest = f" ({skipped} other check(s) skipped)" if skipped else ""
        print(f"invalidatord: check --online failed: {', '.join(failed)}{rest}", file=sys.stderr)
        return EXIT_FAILURE
    if not as_json:
        unproved = sum(1 for f in findings if f.outcome in (NOT_PROBED, NOT_VERIFIED))
        print(f"online: every check passed ({unproved} not probed or not verified: see above)")
    return EXIT_OK


def _print_summary(cfg: Config, path: str) -> None:
    print(f"{path}: valid")
    print(f"  state_dir: {cfg.state_dir}")
    for name, dist in cfg.distributions.items():
        print(f"  distribution {name}: {dist.id}")
    for source in cfg.sources:
        print(f"  source {source.describe()}")
    if cfg.fleet is not None:
        if not cfg.sources:
            print("  source (none: the fleet queue is the only source of work)")
        print(f"  fleet: {cfg.fleet.describe()}")
    for i, rule in enumerate(cfg.mapping_rules()):
        targets = ", ".join(rule.distributions)
        urls = ", ".join(rule.urls) if rule.urls else "(ignored)"
        scope = f" [source {rule.source}]" if rule.source else ""
        print(f"  rule {i}: {rule.match}{scope} -> {urls} on {targets}")
    print(f"  debounce: quiet {cfg.debounce.quiet:g}s, max delay {cfg.debounce.max_delay:g}s")


def _source_paths(cfg: Config, source: str | None, paths: Sequence[str]) -> tuple[str, list[str]]:
    """(the source's name, `paths` relative to its root): as `map` and `plan` take them.
    Every path is checked before any is used: a script gets all or nothing."""
    names = [s.name for s in cfg.sources]
    if not names:
        raise UsageError("the config has no sources to map paths of (a fleet invalidator)")
    source = source or names[0]
    if source not in names:
        raise UsageError(f"unknown source {source!r} (known: {', '.join(names)})")
    root = getattr(cfg.sources[names.index(source)], "root", None)
    return source, [_relative(raw, root) for raw in paths]


def _relative(raw: str, root: str | None) -> str:
    """`raw` as a path relative to the source root (`root` None: an S3 key, taken as is
    without its leading slashes). Raises UsageError for an empty path or one outside the root."""
    if not raw.strip():
        raise UsageError(f"{raw!r}: an empty path (give a path relative to the source root)")
    if root is None:
        return raw.lstrip("/")
    if os.path.isabs(raw):
        try:
            return Path(raw).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError as exc:
            raise UsageError(f"{raw} is not under the source root {root}") from exc
    rel = posixpath.normpath(raw)
    if rel == ".." or rel.startswith("../"):
        raise UsageError(f"{raw}: outside the source root {root} (a path relative to it)")
    if rel == ".":
        raise UsageError(f"{raw!r}: the source root itself, not a file under it")
    return rel


def _plan(cfg: Config, source: str | None, paths: Sequence[str], *, as_json: bool) -> int:
    """What the daemon would send for changes of `paths` now (against the journal's index,
    in-flight invalidations and this month's billed paths); sends nothing."""
    from invalidatord.factory import journal_path, limits_for, mapper_for, trees_for
    from invalidatord.planner import make_plan

    source, rels = _source_paths(cfg, source, paths)
    mapper = mapper_for(cfg)
    wanted: dict[str, list[str]] = {name: [] for name in cfg.distributions}
    for rel in rels:
        mapped = mapper.map(source, rel)
        for dist, urls in mapped.urls.items():
            wanted[dist].extend(urls)
        for url, reason in mapped.rejected:
            print(f"# {rel}: not sendable: {url[:80]}... ({reason})", file=sys.stderr)
    where = journal_path(cfg)
    # no journal yet (the daemon never ran): nothing billed, nothing in flight, tree unknown
    journal = Journal(where if where.exists() else ":memory:")
    limits = limits_for(cfg)
    report: dict[str, Any] = {}
    try:
        trees = trees_for(cfg, journal, list(cfg.distributions))
        billed = journal.billed_this_month()
        for dist, url_paths in wanted.items():
            if not url_paths:
                continue
            p = make_plan(
                dist,
                url_paths,
                journal.in_flight(dist),
                limits,
                tree=trees.get(dist),
                billed_this_month=billed,
            )
            report[dist] = {
                "items": list(p.planned),
                "batches": [list(b.paths) for b in p.batches],
                "billed_paths": p.billed,
                "wildcards": p.total.wildcards,
                "evicted_unchanged": p.evicted,
                "estimated_dollars": p.dollars,
                "free_paths_left": p.free_left,
                "waiting_for_room": list(p.deferred),
                "tree_known": dist in trees,
                "why": [c.describe(limits) for c in p.choices],
            }
    finally:
        journal.close()
    if as_json:
        print(json.dumps({"distributions": report}, indent=2))
        return EXIT_OK
    for dist, r in report.items():
        print(
            f"{dist}: {len(r['items'])} items in {len(r['batches'])} request(s), "
            f"{r['billed_paths']} billed paths ({r['wildcards']} wildcards), "
            f"evicts {r['evicted_unchanged']} unchanged objects, "
            f"estimated ${r['estimated_dollars']:.3f} "
            f"({r['free_paths_left']} free paths left this month)"
        )
        if not r["tree_known"]:
            print("  tree unknown: the simple policy (collapse_threshold) decides")
        for line in r["why"]:
            print(f"  why {line}")
        for item in r["items"]:
            print(f"  {item}")
        if r["waiting_for_room"]:
            print(f"  {len(r['waiting_for_room'])} paths would wait for in-flight room")
    return EXIT_OK


def _map(cfg: Config, source: str | None, paths: Sequence[str]) -> int:
    from invalidatord.factory import mapper_for
    from invalidatord.sources.ignore import deciding_pattern

    source, rels = _source_paths(cfg, source, paths)
    index = [s.name for s in cfg.sources].index(source)
    ignore: list[str] = list(getattr(cfg.sources[index], "ignore", None) or [])
    mapper = mapper_for(cfg)
    for rel in rels:
        pattern = deciding_pattern(ignore, rel) if ignore else None
        if pattern is not None:
            print(f"# {rel}: ignored by sources[{index}].ignore {pattern!r}", file=sys.stderr)
            continue
        mapped = mapper.map(source, rel)
        if mapped.rule is None:
            print(f"# {rel}: no rule matches", file=sys.stderr)
        elif not mapped.urls:
            print(
                f"# {rel}: matched rule {mapped.rule}, which invalidates nothing", file=sys.stderr
            )
        for dist, urls in mapped.urls.items():
            for url in urls:
                print(f"{dist} {url}")
        for url, reason in mapped.rejected:
            print(f"# {rel}: not sendable: {url[:80]}... ({reason})", file=sys.stderr)
    return EXIT_OK


def _invalidate(
    cfg: Config,
    distribution: str | None,
    urls: Sequence[str],
    *,
    raw: bool,
    wait: bool,
    timeout: float | None = None,
) -> int:
    from invalidatord.factory import StateLock, cloudfront_for, open_journal, submitter_for
    from invalidatord.health import WatchedCloudFront
    from invalidatord.metrics import Metrics

    names = list(cfg.distributions)
    if distribution is not None and distribution not in names:
        raise UsageError(f"unknown distribution {distribution!r} (known: {', '.join(names)})")
    targets = [distribution] if distribution else names
    paths: list[str] = []
    # Checked as CloudFront would, all before anything is queued: a path it refuses would only
    # come back as a rejected batch, minutes later, from the daemon.
    for url in urls:
        path = url
        if url.startswith("/") and not raw:
            star = url.endswith("*")
            path = encode_path(normalise(url[:-1] if star else url)) + ("*" if star else "")
        problem = path_problem(path)
        if problem is not None:
            shown = url if len(url) <= 60 else url[:57] + "..."
            raise UsageError(f"{shown!r}: {problem}")
        paths.append(path)
    started = time.monotonic()
    journal = open_journal(cfg)
    queued = time.time()
    if cfg.fleet is not None and cfg.fleet.role == "publisher":
        # A publisher never calls CloudFront: the fleet's invalidator submits them. Each manual
        # request is its own version, so neither SQS nor the invalidator drops a repeat of it.
        version = f"manual:{queued!r}"
        try:
            journal.accept(
                (Accepted(d, p, queued, "manual", version) for d in targets for p in paths),
                outbox=True,
            )
        finally:
            journal.close()
        print(
            f"queued {len(paths)} path(s) on {', '.join(targets)} in the fleet outbox; "
            f"the publisher sends them to {cfg.fleet.queue_url} (at once if it is running)"
        )
        return EXIT_OK
    journal.accept(Accepted(d, p, queued, "manual") for d in targets for p in paths)
    print(f"queued {len(paths)} path(s) on {', '.join(targets)}")
    lock = StateLock(Path(cfg.state_dir))
    own = lock.acquire()  # no daemon running: submit them ourselves
    submitter = None
    try:
        if own:
            metrics = Metrics()
            # Watched, so a failure says whether CloudFront refused or could not be reached.
            cloudfront = WatchedCloudFront(
                cloudfront_for(cfg), {t: cfg.distributions[t].id for t in targets}, metrics
            )
            submitter = submitter_for(cfg, journal, cloudfront, metrics, targets)
            submitter.reconcile()
            limit = timeout if timeout is not None else max(60.0, cfg.shutdown_timeout)
            if not submitter.drain(started + limit):
                # Nothing is lost (the paths stay in the journal), but nothing was sent either:
                # say why, and that the daemon will send them when it runs.
                problems = {**cloudfront.problems(), **submitter.problems()}
                why = "; ".join(f"{t}: {problems[t]}" for t in targets if t in problems) or (
                    f"CloudFront did not accept them within {limit:g}s"
                )
                print(
                    f"invalidatord: not submitted: {why}; the paths stay queued in "
                    f"{cfg.state_dir} and the daemon submits them when it runs",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        else:
            print("a running daemon will submit them")
        wanted = set(paths)
        if wait:
            deadline = None if timeout is None else started + timeout
            return _wait(cfg, journal, targets, wanted, queued, submitter, started, deadline)
        records = _batches_of(journal, targets, wanted, queued)
        for record in records:
            print(f"{record.distribution} {record.invalidation_id or '-'} {record.state}")
        return _report_rejected(records)
    finally:
        if own:
            lock.release()
        journal.close()


def _batches_of(
    journal: Journal, targets: Sequence[str], paths: set[str], since: float
) -> list[BatchRecord]:
    """The batches made (at or after `since`) from `paths`: holding one of them, or a wildcard
    that covers one (the planner drops a path a planned wildcard covers), oldest first."""
    records = [
        r
        for r in journal.recent(1000)
        if r.created >= since
        and r.distribution in targets
        and any(p in paths or any(covers(p, q) for q in paths) for p in r.paths)
    ]
    return records[::-1]


def _report_rejected(records: Sequence[BatchRecord]) -> int:
    rejected = [r for r in records if r.state == REJECTED]
    for r in rejected:
        print(
            f"invalidatord: CloudFront refused {r.paths[0]} on {r.distribution}: {r.last_error}",
            file=sys.stderr,
        )
    return EXIT_FAILURE if rejected else EXIT_OK


def _wait(
    cfg: Config,
    journal: Journal,
    targets: Sequence[str],
    paths: set[str],
    since: float,
    submitter: Submitter | None,
    started: float,
    deadline: float | None,
) -> int:
    """Show progress (with the time since the command started) until every batch made from
    `paths` is Completed or refused (CloudFront never completes a refused path, so that ends
    the wait too, with exit 1), or until `deadline` (monotonic), when it says why it gave up."""
    interval = max(1.0, min(cfg.invalidation.poll_interval, 10.0))
    last = ""
    while True:
        records = _batches_of(journal, targets, paths, since)
        # Only our own paths: on a busy site other paths are always pending.
        waiting = sum(1 for t in targets for p in journal.pending_paths(t, 1_000_000) if p in paths)
        states = [r.state for r in records]
        line = (
            f"pending {waiting}, planned {states.count(PLANNED)}, "
            f"in progress {states.count(SUBMITTED)}, completed {states.count(COMPLETED)}"
        )
        if states.count(REJECTED):
            line += f", refused {states.count(REJECTED)}"
        if line != last:
            print(f"[{_elapsed(time.monotonic() - started)}] {line}", flush=True)
            last = line
        if records and not waiting and all(s in (COMPLETED, REJECTED) for s in states):
            for r in records:
                if r.state == COMPLETED:
                    took = f" after {_elapsed(r.completed - since)}" if r.completed else ""
                    print(f"{r.distribution} {r.invalidation_id} Completed{took}")
            return _report_rejected(records)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            why = _why_not_done(cfg, targets, records, waiting, submitter)
            print(
                f"invalidatord: gave up after {_elapsed(now - started)} (--timeout): {why}; "
                "nothing is lost: the paths stay in the journal and are submitted",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if submitter is not None:
            submitter.cycle()
            submitter.poll_status()
        pause = interval if deadline is None else max(0.0, min(interval, deadline - now))
        time.sleep(pause)


def _elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _why_not_done(
    cfg: Config,
    targets: Sequence[str],
    records: Sequence[BatchRecord],
    waiting: int,
    submitter: Submitter | None,
) -> str:
    """One line: what the wait was still waiting for, and the cause when one is known (our
    own submitter's problems, the batches' last errors, or a running daemon's /healthz)."""
    causes: list[str] = []
    if submitter is not None:
        problems = submitter.problems()
        causes += [f"{t}: {problems[t]}" for t in targets if t in problems]
    else:
        causes += _daemon_reasons(cfg)
    causes += sorted({f"{r.distribution}: {r.last_error}" for r in records if r.last_error})
    in_progress = sum(1 for r in records if r.state == SUBMITTED)
    if waiting:
        what = f"{waiting} path(s) not submitted yet"
    elif in_progress:
        what = f"{in_progress} invalidation(s) still InProgress at CloudFront"
    else:
        what = "no invalidation made yet"
    return what + (f" ({'; '.join(causes[:3])})" if causes else "")


def _daemon_reasons(cfg: Config) -> list[str]:
    """The reasons a running daemon's /healthz gives, when its address is known; [] else."""
    import json
    import urllib.error
    import urllib.request

    address = cfg.metrics.address
    if address is None or address[1] == 0:
        return []
    host = address[0]
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{address[1]}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read() or b"{}")
    except (OSError, ValueError) as exc:
        return [f"the daemon's {url} did not answer: {exc}"]
    return [str(r) for r in body.get("reasons", [])]


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _daemon_running(state_dir: Path) -> bool:
    """Whether a daemon holds state_dir's lock, creating nothing: no lock file means none
    ever ran there."""
    from invalidatord.factory import LOCK_NAME

    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def _last_written(journal_file: Path) -> float:
    """When the journal (or its WAL) was last written: what a stopped daemon's figures are
    as of."""
    times = []
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            times.append(os.stat(f"{journal_file}{suffix}").st_mtime)
    return max(times, default=0.0)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _status(cfg: Config, *, as_json: bool = False) -> int:
    from invalidatord.factory import journal_path, open_journal

    state_dir = Path(cfg.state_dir)
    journal_file = journal_path(cfg)
    if state_dir.exists() and not state_dir.is_dir():
        raise InvalidatordError(f"state_dir {state_dir}: not a directory")
    running = _daemon_running(state_dir)
    now = time.time()
    if not journal_file.exists():
        # Opening it would create it (and state_dir): a status must not change anything.
        if as_json:
            _print_json(
                {"daemon": {"running": running, "state_dir": str(state_dir)}, "journal": None}
            )
        else:
            print(
                f"daemon: {'running' if running else 'not running'} (state_dir {state_dir})\n"
                f"no journal at {journal_file}: no daemon has run with this state_dir yet "
                "(nothing pending, nothing submitted)"
            )
        return EXIT_OK
    as_of = None if running else _last_written(journal_file)
    journal = open_journal(cfg)
    try:
        report = _status_report(cfg, journal, now)
    finally:
        journal.close()
    report["daemon"] = {"running": running, "state_dir": str(state_dir)}
    report["journal"] = str(journal_file)
    report["as_of"] = as_of if as_of is not None else now
    if as_json:
        _print_json(report)
    else:
        _print_status(report, now, stale=as_of is not None)
    return EXIT_OK


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=2, sort_keys=True))


def _status_report(cfg: Config, journal: Journal, now: float) -> dict[str, Any]:
    """What `status` shows, as plain values (the --json output)."""
    # Paths in a planned batch are not sent yet either (CloudFront refused or could not be
    # reached): to the reader they are as pending as the queued ones.
    summary = journal.unsent_summary()
    set_aside = journal.set_aside_summary()
    distributions: dict[str, Any] = {}
    for name, dist in cfg.distributions.items():
        count, oldest = summary.get(name, (0, now))
        flight = journal.in_flight(name)
        distributions[name] = {
            "id": dist.id,
            "pending": count,
            "oldest_pending_age_seconds": round(now - oldest, 3) if count else None,
            "in_flight": {"files": flight.files, "wildcards": flight.wildcards},
            "set_aside": set_aside.get(name, 0),
        }
    orphans = dict(sorted(journal.orphans().items()))
    recent = [
        {
            "distribution": r.distribution,
            "invalidation_id": r.invalidation_id,
            "state": r.state,
            "paths": len(r.paths),
            "created": r.created,
            "submitted": r.submitted,
            "completed": r.completed,
            "last_error": r.last_error,
        }
        for r in journal.recent(20)
    ]
    billed = journal.billed_this_month(now)
    return {
        "distributions": distributions,
        # unsent paths of distribution ids the config no longer names (kept, not sent)
        "not_in_config": orphans,
        "recent": recent,
        "billed_this_month": billed,
        "free_paths_per_month": FREE_PATHS_PER_MONTH,
        "estimated_cost_usd": round(max(0, billed - FREE_PATHS_PER_MONTH) * PRICE_PER_PATH, 2),
    }


def _print_status(report: dict[str, Any], now: float, *, stale: bool) -> None:
    daemon = report["daemon"]
    print(
        f"daemon: {'running' if daemon['running'] else 'not running'} "
        f"(state_dir {daemon['state_dir']})"
    )
    if stale:
        # Nobody polls CloudFront while no daemon runs: "in flight" is what it last knew.
        print(
            f"figures as of {_utc(report['as_of'])} (the journal's last write); in-flight "
            "invalidations may have completed since"
        )
    print("\ndistribution   id                 pending  oldest  in flight (files/wildcards)")
    for name, d in report["distributions"].items():
        age = d["oldest_pending_age_seconds"]
        oldest = _age(age) if age is not None else "-"
        flight = d["in_flight"]
        print(
            f"{name:<14} {d['id']:<18} {d['pending']:>7}  {oldest:>6}"
            f"  {flight['files']}/{flight['wildcards']}"
        )
    for orphan, count in report["not_in_config"].items():
        print(
            f"{'(not in config)':<14} {orphan:<18} {count:>7}  kept: add the id back under "
            f"any name to send them, or `invalidatord discard --distribution-id {orphan}`"
        )
    set_aside = {n: d["set_aside"] for n, d in report["distributions"].items() if d["set_aside"]}
    if set_aside:
        # never sent: CloudFront answered InvalidArgument (the log's path_rejected names each)
        counts = ", ".join(f"{n}: {c} path(s)" for n, c in sorted(set_aside.items()))
        print(f"\nset aside (CloudFront refused them; see path_rejected in the log): {counts}")
    print("\nrecent invalidations")
    if not report["recent"]:
        print("  (none yet)")
    for r in report["recent"]:
        age = _age(now - (r["submitted"] or r["created"]))
        took = (
            f" in {_age(r['completed'] - r['submitted'])}"
            if r["completed"] and r["submitted"]
            else ""
        )
        error = f"  {r['last_error']}" if r["last_error"] and r["state"] != COMPLETED else ""
        print(
            f"  {r['distribution']:<12} {r['invalidation_id'] or '-':<16} {r['state']:<10}"
            f"{r['paths']:>6} paths  {age:>5} ago{took}{error}"
        )
    billed = report["billed_this_month"]
    print(
        f"\nbilled this month: {billed} paths "
        f"({min(billed, FREE_PATHS_PER_MONTH)} of {FREE_PATHS_PER_MONTH} free), "
        f"estimated cost ${report['estimated_cost_usd']:.2f} "
        "(this daemon only; the free tier is per AWS account)"
    )


def _discard(cfg: Config, distribution_id: str) -> int:
    """Drop the unsent work of a distribution id no configured distribution has any more."""
    from invalidatord.factory import open_journal

    configured = {d.id: name for name, d in cfg.distributions.items()}
    if distribution_id in configured:
        raise UsageError(
            f"distribution id {distribution_id} is configured (as {configured[distribution_id]!r}):"
            " its paths will be sent; remove it from the config first to discard them"
        )
    journal = open_journal(cfg)
    try:
        orphans = journal.orphans()
        if distribution_id not in orphans:
            known = ", ".join(sorted(orphans)) or "none"
            raise UsageError(
                f"no unsent paths for distribution id {distribution_id} (orphaned ids: {known})"
            )
        dropped = journal.discard(distribution_id)
    finally:
        journal.close()
    log.warning("paths_discarded", distribution_id=distribution_id, paths=dropped)
    print(f"discarded {dropped} unsent path(s) of distribution id {distribution_id}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
