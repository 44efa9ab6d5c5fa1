"""The pipeline: changes from sources -> debounce -> (catch-up diff) -> mapping -> journal.

One thread owns the debouncers; sources only put changes on a queue (`sink`), so a source's
thread never waits on the journal. A flush is accepted in one journal transaction together with
the catch-up index updates, and only then are the sources' receipts (SQS messages) acknowledged.

Durability of a change still inside the debounce window when the process dies: for filesystem
sources the catch-up index is updated only in the same transaction that accepts the change, so
the start-up catch-up scan finds every such file again; SQS messages are deleted only after the
commit, so they are redelivered.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from invalidatord import catchup, gcpause
from invalidatord.contracts import Fenced, Row, RunScanner, Source, TreeScanner
from invalidatord.debounce import Coalesced, Debouncer, Flush
from invalidatord.errors import InvalidatordError
from invalidatord.journal import Accepted, Journal
from invalidatord.mapping import Mapped, Mapper
from invalidatord.metrics import Metrics
from invalidatord.model import Change, ChangeBatch, ChangeKind, FileStat, fingerprint

log = structlog.get_logger(__name__)

#: How many queued changes one loop iteration takes before checking for due flushes.
_DRAIN_MAX = 2_000
#: Paths per journal transaction when a flush is accepted: each commit is an fsync
#: (synchronous=FULL), so a 10,000-path flush is one commit, not five (with the ASCII
#: shortcut in `_map`, measured in process at load 3-4: 196 -> 138 ms wall, 133 -> 120 ms
#: CPU, the same run's medians); a rescan of a larger tree is still chunked.
_ACCEPT_CHUNK = 10_000
#: Paths prepared per loop iteration while a window is open (~10 ms of work, so changes
#: arriving meanwhile are still taken promptly).
_PREPARE_CHUNK = 500
#: Prepared paths staged per journal transaction (or fewer, once all are prepared): each
#: commit rewrites the index pages it touched, so 500 a commit cost twice 10,000 at once.
_STAGE_CHUNK = 5_000
#: How often a held batch is looked at again (the source stops holding by itself).
_HOLD_RECHECK = 0.25


@dataclass(slots=True)
class _Prepared:
    """What accepting one changed path needs, worked out while its window is still open."""

    stat: FileStat | None  # the file now (None: gone); unused for sources without a scanner
    known: bool  # in the catch-up index (looked up only for a file that is gone)
    mapped: Mapped
    # `compare: content` read the file and found the bytes the index has: the index learns
    # its new stat, nothing is invalidated
    unchanged: bool = False
    fingerprint: str = ""  # which version of the file (`model.fingerprint`); "" = not known


@dataclass(slots=True)
class _Staged:
    """What was staged in the journal for one prepared path (`Pipeline._stage`)."""

    prepared: _Prepared  # the preparation staged: the flush's own, unless the path changed again
    first_seen: float
    urls: list[Accepted]  # the URL rows staged for it
    keys: set[tuple[str, str]]  # every (distribution, URL path) staged for it in this window
    own: bool  # every URL row staged is the window's own (none was pending already)
    kept: bool  # a change to invalidate (not one whose bytes turned out unchanged)
    indexed: bool  # an index row was staged for it


@dataclass(frozen=True, slots=True)
class DebounceSettings:
    quiet: float
    max_delay: float
    max_pending: int = 10_000


def _hashed_bytes(scanner: TreeScanner) -> int:
    hashed = getattr(scanner, "hashed", None)
    return int(getattr(hashed, "bytes", 0))


class Pipeline:
    """Owns the debouncers and turns flushes into accepted journal rows."""

    def __init__(
        self,
        *,
        sources: Mapping[str, Source],
        scanners: Mapping[str, TreeScanner],
        mapper: Mapper,
        journal: Journal,
        debounce: DebounceSettings,
        metrics: Metrics,
        on_accepted: Callable[[], None] = lambda: None,
        heartbeat: Callable[[], None] = lambda: None,
        outbox: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = dict(sources)
        self._scanners = dict(scanners)
        self._mapper = mapper
        self._journal = journal
        self._metrics = metrics
        self._on_accepted = on_accepted
        # a fleet publisher: accepted URL paths go to the journal's outbox, for SQS
        self._outbox = outbox
        self._heartbeat = heartbeat
        self._clock = clock
        self._monotonic = monotonic
        self._inbox: queue.SimpleQueue[Change | ChangeBatch] = queue.SimpleQueue()
        self._debouncers = {
            name: Debouncer(debounce.quiet, debounce.max_delay, debounce.max_pending)
            for name in self._sources
        }
        # Deploy fences: a source's batch is held (bounded by max_delay) while one of its
        # markers exists, so a deploy slower than the quiet window still goes as one batch.
        self._fences = {
            name: source.deploy_marker
            for name, source in self._sources.items()
            if isinstance(source, Fenced)
        }
        #: source -> (marker, monotonic time the hold began) while its batch is held
        self._holds: dict[str, tuple[str, float]] = {}
        #: sources whose whole tree has been rescanned at least once by this pipeline
        self._rescanned: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # receipts of flushes whose commit failed: acknowledged with the next successful one
        self._held_receipts: dict[str, list[str]] = {name: [] for name in self._sources}
        #: why the last commit of accepted changes failed (None once one succeeds): the
        #: changes wait in the debouncer, so /healthz must not say all is well meanwhile
        self.accept_problem: str | None = None
        # The quiet window is spent doing the per-path work of the accept (stat, index lookup,
        # mapping), so a flush only has the journal left to do. A path changed again after
        # it was prepared is prepared again: its stat must be the last one.
        self._prepared: dict[str, dict[str, _Prepared]] = {name: {} for name in self._sources}
        self._unprepared: dict[str, dict[str, None]] = {name: {} for name in self._sources}
        #: per source, the paths whose rows are staged in its open window
        self._staged: dict[str, dict[str, _Staged]] = {name: {} for name in self._sources}
        self._unstaged_paths: dict[str, dict[str, None]] = {name: {} for name in self._sources}
        self.accepted_paths = 0

    # Sources call these from their own threads: they must stay cheap and never block.
    def sink(self, change: Change) -> None:
        self._inbox.put(change)

    def sink_batch(self, batch: ChangeBatch) -> None:
        """Many changes of one source as one item: taken in order with `sink`'s."""
        if batch.items:
            self._inbox.put(batch)

    def start(self, first: Sequence[Callable[[], None]] = ()) -> None:
        """Start the loop. `first` runs on the pipeline thread before any change is taken
        (a first start's baseline): changes that arrive meanwhile wait in the queue, so they are
        judged against the finished baseline, exactly as if it had been recorded before."""
        # rows a window staged before this process (or its predecessor) died were never
        # accepted: forget them before anything reads the index (catch-up finds the files)
        dropped = self._journal.discard_staged()
        if dropped:
            log.warning(
                "staged_rows_discarded",
                rows=dropped,
                reason="a quiet window was open when the last run ended; its files are "
                "found again by the catch-up",
            )
        self._thread = threading.Thread(
            target=self._run, args=(tuple(first),), name="pipeline", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, then accept everything still queued or debouncing (the caller has
        stopped the sources first, so nothing new arrives)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush_all()

    @property
    def alive(self) -> bool:
        """False once its thread has ended without being asked to stop."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def pending(self) -> int:
        return sum(len(d) for d in self._debouncers.values()) + self._inbox.qsize()

    def _run(self, first: tuple[Callable[[], None], ...] = ()) -> None:
        for task in first:
            try:
                task()
            except Exception:  # logged; the next start tries again
                log.exception("startup_task_failed")
        while not self._stop.is_set():
            try:
                self.run_once(timeout=self._wait_time())
            except Exception:  # the loop must survive anything; the work stays queued
                log.exception("pipeline_error")
                self._stop.wait(1.0)
            self._heartbeat()

    def _wait_time(self) -> float:
        if any(self._unprepared.values()):
            return 0.0
        holds = self._holds
        # a held batch is looked at again within a second, to release it soon after its
        # marker goes (a marker under an ignored directory, .git/index.lock, sends no event)
        dues = [
            d.next_due(name in holds)
            if not self._holding(name)
            else self._monotonic() + _HOLD_RECHECK
            for name, d in self._debouncers.items()
        ]
        soonest = min((t for t in dues if t is not None), default=None)
        if soonest is None:
            return 1.0
        return min(1.0, max(0.0, soonest - self._monotonic()))

    def _holding(self, source: str) -> bool:
        """Whether the source asks for its batch to be held: a filesystem source whose root is
        missing holds it (bounded) until the root is back, since only then can it tell files
        deleted from a tree being replaced (`rm -rf html && mv html.new html`)."""
        return bool(getattr(self._sources.get(source), "holding", False))

    def run_once(self, timeout: float = 0.0) -> None:
        """Take what is queued (waiting up to `timeout` for the first change), then accept
        every flush that is due."""
        drained = self._drain(timeout)
        if drained:
            now = self._monotonic()
            counts: Counter[tuple[str, str]] = Counter()
            rescan = ChangeKind.RESCAN
            reattach = ChangeKind.REATTACH
            for item in drained:
                debouncer = self._debouncers.get(item.source)
                if debouncer is None:
                    log.warning("change_from_unknown_source", source=item.source)
                    continue
                if isinstance(item, ChangeBatch):
                    self._take_batch(debouncer, item, now, counts)
                    continue
                change = item
                debouncer.add(change, now)
                counts[(change.source, change.kind.value)] += 1
                if change.kind is not rescan and change.kind is not reattach:
                    self._prepared[change.source].pop(change.path, None)
                    self._unprepared[change.source][change.path] = None
            for (source, kind), n in counts.items():
                self._metrics.changes.labels(source, kind).inc(n)
        now = self._monotonic()
        flushed = False
        for name, debouncer in self._debouncers.items():
            if (
                debouncer.due(now)
                and not self._holding(name)
                and not self._held(name, debouncer, now)
            ):
                with gcpause.paused():  # a full collection mid-flush: 30-70 ms of 10,000 paths
                    self._accept(name, debouncer.flush())
                flushed = True
        if not flushed:
            self._prepare_some()

    def _take_batch(
        self,
        debouncer: Debouncer,
        batch: ChangeBatch,
        now: float,
        counts: Counter[tuple[str, str]],
    ) -> None:
        """`run_once`'s work for each change of `batch`, a burst at a time."""
        source = batch.source
        debouncer.add_batch(batch, now)
        for kind, n in Counter(kind for _, kind in batch.items).items():
            counts[(source, kind.value)] += n
        prepared = self._prepared[source]
        waiting = self._unprepared[source]
        rescan = ChangeKind.RESCAN
        reattach = ChangeKind.REATTACH
        for path, kind in batch.items:
            if kind is not rescan and kind is not reattach:
                if prepared:
                    prepared.pop(path, None)
                waiting[path] = None

    def _held(self, name: str, debouncer: Debouncer, now: float) -> bool:
        """Whether the due batch of `name` waits for a deploy to finish; logs when a hold
        begins and ends. Markers are looked for only between the quiet window and max_delay."""
        fence = self._fences.get(name)
        marker = fence() if fence is not None and debouncer.quiet_due(now) else None
        hold = self._holds.get(name)
        if marker is not None:
            if hold is None:
                self._holds[name] = (marker, now)
                log.info("batch_held", source=name, marker=marker, changes=len(debouncer))
            return True
        if hold is not None:
            del self._holds[name]
            held_for = round(now - hold[1], 3)
            if debouncer.due(now, held=True) and fence is not None and fence() is not None:
                # still there at max_delay: a deploy that failed (or forgot) to remove it
                log.warning(
                    "batch_hold_expired",
                    source=name,
                    marker=hold[0],
                    held_seconds=held_for,
                    max_delay=debouncer.max_delay,
                    changes=len(debouncer),
                )
            else:
                log.info("batch_released", source=name, marker=hold[0], held_seconds=held_for)
        return False

    def _prepare_some(self) -> None:
        for source, waiting in self._unprepared.items():
            if waiting:
                chunk = []
                for path in waiting:
                    chunk.append(path)
                    if len(chunk) == _PREPARE_CHUNK:
                        break
                for path in chunk:
                    del waiting[path]
                self._prepare(source, chunk)
                unstaged = self._unstaged_paths[source]
                unstaged.update(dict.fromkeys(chunk))
                if not waiting or len(unstaged) >= _STAGE_CHUNK:
                    self._stage(source, list(unstaged))
                    unstaged.clear()
                return

    def _prepare(self, source: str, paths: list[str]) -> None:
        ready = self._prepared[source]
        scanner = self._scanners.get(source)
        mapper = self._mapper
        if scanner is None:
            for path in paths:
                ready[path] = _Prepared(None, False, mapper.map(source, path))
            return
        if scanner.compare == "content":
            self._prepare_content(source, scanner, paths)
            return
        stat = scanner.stat
        stats = [stat(path) for path in paths]
        # whether the index knew a file matters only once it is gone (see _still_relevant)
        gone = [path for path, st in zip(paths, stats, strict=True) if st is None]
        known = self._journal.index_get(source, gone) if gone else {}
        for path, st in zip(paths, stats, strict=True):
            ready[path] = _Prepared(
                st,
                path in known,
                mapper.map(source, path),
                fingerprint=fingerprint(st, known.get(path)),
            )

    def _prepare_content(self, source: str, scanner: TreeScanner, paths: list[str]) -> None:
        """`compare: content`: each file an event named is read once, here, and its hash
        compared with the index's. The read is not skipped when the stat equals the
        index's: the event says it was written, and a same-size rewrite within one tick of
        the kernel's coarse clock keeps size, mtime and inode."""
        ready = self._prepared[source]
        mapper = self._mapper
        indexed = self._journal.index_get(source, paths)
        digest = scanner.digest
        for path in paths:
            old = indexed.get(path)
            st = digest(path)
            unchanged = (
                st is not None
                and old is not None
                and old.digest is not None
                and st.digest == old.digest
            )
            ready[path] = _Prepared(
                st,
                old is not None,
                mapper.map(source, path),
                unchanged,
                fingerprint(st, old),  # the content hash: `digest` is set
            )

    def _stage(self, source: str, paths: list[str]) -> None:
        """Write the journal rows the flush will accept for these prepared paths now, while the
        window is still open, so the flush only seals them (`Journal.stage`). A path changed
        again is staged again; what the flush does not accept after all, it unstages."""
        if self._outbox:
            return  # a fleet publisher accepts into the outbox, which is not staged
        debouncer = self._debouncers[source]
        ready = self._prepared[source]
        staged = self._staged[source]
        seen: dict[str, float] = {}
        prepared: list[tuple[str, _Prepared]] = []
        for path in paths:
            first = debouncer.first_seen(source, path)
            p = ready.get(path)
            if first is not None and p is not None:
                seen[path] = first
                prepared.append((path, p))
        keep, index_updates = (
            self._still_relevant(source, prepared) if source in self._scanners else (prepared, [])
        )
        kept = {path for path, _ in keep}
        indexed = {path for _, path, _ in index_updates}
        rows = {path: self._map(source, [(path, p)], seen.__getitem__) for path, p in keep}
        try:
            own = self._journal.stage(source, [u for r in rows.values() for u in r], index_updates)
        except InvalidatordError as exc:  # nothing lost: the flush writes what is not staged
            log.warning("stage_failed", source=source, error=str(exc))
            return
        for path, p in prepared:
            urls = rows.get(path, [])
            before = staged.get(path)
            keys = {(u.distribution, u.path) for u in urls}
            staged[path] = _Staged(
                p,
                seen[path],
                urls,
                keys | before.keys if before is not None else keys,
                own and (before is None or before.own),
                path in kept,
                path in indexed or (before is not None and before.indexed),
            )

    def _drain(self, timeout: float) -> list[Change | ChangeBatch]:
        """What is queued, in order: up to about `_DRAIN_MAX` changes (a batch counts as its
        changes), waiting up to `timeout` for the first."""
        try:
            first = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return []
        out = [first]
        taken = len(first) if isinstance(first, ChangeBatch) else 1
        get = self._inbox.get_nowait
        try:
            while taken < _DRAIN_MAX:
                item = get()
                out.append(item)
                taken += len(item) if isinstance(item, ChangeBatch) else 1
        except queue.Empty:
            pass
        return out

    def flush_all(self) -> None:
        """Accept everything queued and debouncing now, due or not (shutdown, tests)."""
        while True:
            drained = self._drain(0)
            if not drained:
                break
            now = self._monotonic()
            for item in drained:
                debouncer = self._debouncers.get(item.source)
                if debouncer is None:
                    continue
                if isinstance(item, ChangeBatch):
                    debouncer.add_batch(item, now)
                else:
                    debouncer.add(item, now)
        for name, debouncer in self._debouncers.items():
            if len(debouncer):
                self._accept(name, debouncer.flush())

    def _accept(self, source: str, flush: Flush) -> None:
        try:
            self._accept_flush(source, flush)
            if self.accept_problem is not None:
                log.info("accept_recovered", source=source)
                self.accept_problem = None
        except Exception as exc:
            self.accept_problem = f"cannot commit accepted changes: {type(exc).__name__}: {exc}"
            self._metrics.accept_failures.labels(source).inc()
            # Nothing is lost: the receipts are not acknowledged (SQS redelivers) and the
            # catch-up index was not updated (the next scan finds the files again). Put the
            # changes back so this process retries after the next quiet window.
            log.error(
                "accept_failed",
                source=source,
                error=f"{type(exc).__name__}: {exc}",
                changes=len(flush.changes),
                exc_info=not isinstance(exc, InvalidatordError),
            )
            self._held_receipts.setdefault(source, []).extend(flush.receipts)
            now = self._monotonic()
            for c in flush.changes:
                self._debouncers[source].add(Change(source, c.path, c.last_kind, c.first_seen), now)
            self._stop.wait(1.0)

    def _accept_flush(self, source: str, flush: Flush) -> None:
        started = time.monotonic()
        files: dict[str, Coalesced] = {}
        rescans: list[Coalesced] = []
        reattach: Coalesced | None = None
        for c in flush.changes:
            if c.last_kind is ChangeKind.RESCAN:
                rescans.append(c)
            elif c.last_kind is ChangeKind.REATTACH:
                reattach = c
            else:
                files[c.path] = c
        scanner = self._scanners.get(source)
        refresh: list[tuple[str, str, FileStat | None]] = []
        if scanner is not None and reattach is not None:
            # The whole new tree against the index decides; what was heard in this window
            # (the old release being deleted, files of a tree no longer watched) says
            # nothing the diff does not: every event names a change made before this scan.
            for path in files:
                self._prepared[source].pop(path, None)
                self._unprepared[source].pop(path, None)
            files = {}
            self._rescan_into(source, scanner, reattach, files, refresh, swap=True)
        elif scanner is not None and getattr(scanner, "attached", True):
            # (a root that is missing cannot be listed; its re-attach diffs the whole tree)
            for r in rescans:
                self._rescan_into(source, scanner, r, files, refresh)
        for start in range(0, len(refresh), _ACCEPT_CHUNK):
            # files whose bytes a rescan found unchanged: the index learns their new stat
            self._journal.accept([], refresh[start : start + _ACCEPT_CHUNK])
        paths = list(files)
        kept = urls = unchanged = 0
        # Commit in chunks, so a huge flush (a rescan of a large tree) never holds all its URL
        # paths in memory at once; wake the submitter only once the whole flush is in, so one
        # deploy is planned as one batch (waking it earlier splits it into several requests,
        # and into several wildcards where it would have collapsed into one).
        ready = self._prepared[source]
        waiting = self._unprepared[source]
        handled: set[str] = set()
        for start in range(0, len(paths), _ACCEPT_CHUNK):
            chunk = paths[start : start + _ACCEPT_CHUNK]
            for path in chunk:
                waiting.pop(path, None)
            todo = [p for p in chunk if p not in ready]
            if todo:
                self._prepare(source, todo)
            prepared = [(path, ready.pop(path)) for path in chunk]
            # staged as the flush would accept them: only sealed (a 10,000-path flush's
            # commit and mapping: 70-100 ms before staging, measured in the daemon)
            same, prepared = self._split_staged(source, prepared, files)
            keep, index_updates = (
                self._still_relevant(source, prepared) if scanner else (prepared, [])
            )
            accepted = self._map(source, keep, lambda p: files[p].first_seen, log_each=True)
            n_kept = len(keep) + sum(1 for st in same if st.kept)
            unchanged += len(index_updates) + sum(1 for st in same if st.indexed) - n_kept
            counts = {f"changes_accepted:{source}": n_kept}
            if self._outbox:
                self._journal.accept(accepted, index_updates, counts, outbox=True)
            else:
                last = start + _ACCEPT_CHUNK >= len(paths)
                handled.update(chunk)
                unstage, unstage_index = self._unstaged(
                    source, prepared, accepted, index_updates, handled if last else None
                )
                self._journal.seal(
                    source,
                    accepted,
                    index_updates,
                    counts,
                    unstage=unstage,
                    unstage_index=unstage_index,
                    last=last,
                )
            everything = [*accepted, *(u for st in same for u in st.urls)]
            for distribution, n in Counter(u.distribution for u in everything).items():
                self._metrics.accepted.labels(distribution).inc(n)
            kept += n_kept
            urls += len(everything)
        if not paths and not self._outbox:
            # closes a window whose paths all went (a release swap's diff decided instead)
            unstage, unstage_index = self._unstaged(source, [], [], [], handled)
            self._journal.seal(source, [], [], unstage=unstage, unstage_index=unstage_index)
        self._staged[source] = {}
        self._unstaged_paths[source].clear()
        # Only now is every change of the flush committed: the sources may forget them.
        receipts = [*self._held_receipts.pop(source, []), *flush.receipts]
        if receipts:
            self._sources[source].acknowledge(receipts)
        self.accepted_paths += urls
        log.info(
            "changes_accepted",
            source=source,
            changes=kept,
            dropped=len(files) - kept - unchanged,
            unchanged=unchanged,
            urls=urls,
            seconds=round(time.monotonic() - started, 3),
        )
        if urls:
            self._on_accepted()

    def _split_staged(
        self, source: str, prepared: list[tuple[str, _Prepared]], files: dict[str, Coalesced]
    ) -> tuple[list[_Staged], list[tuple[str, _Prepared]]]:
        """(the paths staged exactly as this flush accepts them, the others)."""
        staged = self._staged[source]
        same: list[_Staged] = []
        rest: list[tuple[str, _Prepared]] = []
        for path, p in prepared:
            st = staged.get(path)
            if (
                st is not None
                and st.prepared is p
                and st.own
                and files[path].first_seen >= st.first_seen
                and len(st.keys) == len(st.urls)  # nothing staged for it that it no longer maps to
            ):
                same.append(st)
                if p.mapped.rejected:
                    self._map(source, [(path, p)], {path: st.first_seen}.__getitem__, log_each=True)
            else:
                rest.append((path, p))
        return same, rest

    def _unstaged(
        self,
        source: str,
        rest: list[tuple[str, _Prepared]],
        accepted: list[Accepted],
        index_updates: list[tuple[str, str, FileStat | None]],
        handled: set[str] | None,
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """What the window staged that the flush does not accept: for the paths of `rest`
        (accepted otherwise than staged), their staged URL rows not in `accepted` and their
        staged index rows not in `index_updates`; with `handled` (the flush's last part),
        everything staged for a path the flush did not name at all."""
        staged = self._staged[source]
        if not staged:
            return [], []
        keys = {(u.distribution, u.path) for u in accepted}
        indexed = {path for _, path, _ in index_updates}
        rows: list[tuple[str, str]] = []
        index: list[str] = []
        for path, _ in rest:
            st = staged.get(path)
            if st is not None:
                rows += [k for k in st.keys if k not in keys]
                if st.indexed and path not in indexed:
                    index.append(path)
        if handled is not None:
            for path, st in staged.items():
                if path not in handled:
                    rows += st.keys
                    if st.indexed:
                        index.append(path)
        return rows, index

    def _still_relevant(
        self, source: str, prepared: list[tuple[str, _Prepared]]
    ) -> tuple[list[tuple[str, _Prepared]], list[tuple[str, str, FileStat | None]]]:
        """The paths worth invalidating, and the catch-up index updates that go with them."""
        keep: list[tuple[str, _Prepared]] = []
        index_updates: list[tuple[str, str, FileStat | None]] = []
        for path, p in prepared:
            if p.stat is None and not p.known:
                # Created and gone again inside one window (rsync temp files, vim's 4913
                # probe): CloudFront never saw it and the index never knew it.
                continue
            index_updates.append((source, path, p.stat))
            if not p.unchanged:
                keep.append((path, p))
        return keep, index_updates

    def _map(
        self,
        source: str,
        prepared: list[tuple[str, _Prepared]],
        first_seen_of: Callable[[str], float],
        *,
        log_each: bool = False,
    ) -> list[Accepted]:
        """The URL paths to accept; `log_each`: log those that cannot be sent (once, at the
        flush, not when they are staged)."""
        accepted: list[Accepted] = []
        for path, p in prepared:
            mapped = p.mapped
            if log_each:
                for url, reason in mapped.rejected:
                    log.warning(
                        "path_not_sendable", source=source, path=path, url=url, reason=reason
                    )
                if mapped.rule is None:
                    log.debug("change_unmatched", source=source, path=path)
            first_seen = first_seen_of(path)
            # a non-UTF-8 name carries surrogate escapes, which SQLite text cannot hold
            readable = (
                path
                if path.isascii()  # nearly every path: skips a round trip through bytes
                else path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            )
            origin = f"{source}:{readable}"
            # Without a file to fingerprint (S3 sources), each change is its own version.
            version = p.fingerprint or f"t:{first_seen!r}"
            for distribution, dist_urls in mapped.urls.items():
                for url in dist_urls:
                    accepted.append(Accepted(distribution, url, first_seen, origin, version))
        return accepted

    def _judge(
        self,
        source: str,
        differing: list[tuple[str, Row, Row]],
        same: Callable[[str, FileStat, FileStat], bool],
        now: float,
    ) -> list[Change]:
        """MODIFIED for each path whose stat differs and that `same` does not find unchanged,
        given the indexed stat with its digest, read 500 paths a query and only where the
        sizes are equal (a different size is a change without reading)."""
        changed: list[Change] = []
        for start in range(0, len(differing), 500):
            chunk = differing[start : start + 500]
            indexed = self._journal.index_get(source, [p for p, d, o in chunk if d[1] == o[1]])
            for path, disk, old in chunk:
                before = indexed.get(path) or FileStat(old[1], old[2], old[3])
                if not same(path, FileStat(disk[1], disk[2], disk[3]), before):
                    changed.append(Change(source, path, ChangeKind.MODIFIED, now))
        return changed

    def _rescan_into(
        self,
        source: str,
        scanner: TreeScanner,
        rescan: Coalesced,
        files: dict[str, Coalesced],
        refresh: list[tuple[str, str, FileStat | None]],
        *,
        swap: bool = False,
    ) -> None:
        """Diff the subtree `rescan.path` against the index into `files`. Under `compare:
        content`, and for a release swap (`swap`) always, a file whose stat differs but whose
        size does not is read and its hash compared: equal bytes are unchanged (the index
        learns the new stat through `refresh`), and the digest of a changed one is kept for
        its accept, so no file is read twice. A swap whose index has no hash compares with
        the previous tree's file while that is still there as the index knew it."""
        started = time.monotonic()
        hashed_before = _hashed_bytes(scanner)
        indexed = unchanged = 0
        ready = self._prepared[source]
        read: dict[str, FileStat] = {}
        content = swap or scanner.compare == "content"

        def index_rows() -> Iterator[tuple[str, FileStat]]:
            nonlocal indexed
            for row in self._journal.index_iter(source, rescan.path):
                indexed += 1
                yield row

        def same(path: str, disk: FileStat, old: FileStat) -> bool:
            nonlocal unchanged
            if disk == old:
                unchanged += 1
                return True
            if not content or disk.size != old.size:
                return False
            now = scanner.digest(path)
            if now is None:
                return False  # gone since the listing: its accept finds it deleted
            before = old.digest
            if before is None and swap:
                before = scanner.previous_digest(path, old)
            if before is not None and now.digest == before:
                unchanged += 1
                refresh.append((source, path, now))
                return True
            read[path] = now
            return False

        runner = scanner if not swap and isinstance(scanner, RunScanner) else None
        if runner is not None:
            # the tree and the index a directory and a page at a time: where nothing changed,
            # nothing per file in Python (1.93x the walk -> 1.4x, 100,000 files)
            differing: list[tuple[str, Row, Row]] | None = [] if content else None
            now = self._clock()
            found, indexed = catchup.diff_runs(
                source,
                runner.scan_runs(rescan.path),
                self._journal.index_pages(source, rescan.path),
                now,
                differing,
            )
            if differing:
                found += self._judge(source, differing, same, now)
                found.sort(key=lambda change: catchup.path_key(change.path))
        else:
            found = catchup.diff(
                source, scanner.scan(rescan.path), index_rows(), self._clock(), same
            )
        counts: Counter[ChangeKind] = Counter()
        for change in found:
            counts[change.kind] += 1
            if change.path not in files:
                files[change.path] = Coalesced(
                    source, change.path, frozenset({change.kind}), change.kind, rescan.first_seen
                )
                st = read.get(change.path)
                if st is not None and change.path not in ready:
                    ready[change.path] = _Prepared(st, True, self._mapper.map(source, change.path))
        if runner is not None:  # every path in both listings is unchanged or MODIFIED
            unchanged = indexed - counts[ChangeKind.DELETED] - counts[ChangeKind.MODIFIED]
        self._metrics.rescans.labels(source, "subtree" if rescan.path else "tree").inc()
        fields = {
            "source": source,
            "indexed": indexed,
            "added": counts[ChangeKind.CREATED],
            "removed": counts[ChangeKind.DELETED],
            "changed": counts[ChangeKind.MODIFIED],
            "unchanged": unchanged,
            "bytes_read": _hashed_bytes(scanner) - hashed_before,
            "seconds": round(time.monotonic() - started, 3),
        }
        if swap:
            swapped = getattr(scanner, "swap", None)
            log.info("root_swapped", **fields, **(swapped() if callable(swapped) else {}))
        else:
            # `watcher: polling` rescans the root every poll_interval: after the first, a line
            # per poll that finds nothing would drown the log
            quiet = not found and not rescan.path and source in self._rescanned
            self._rescanned.add(source)
            (log.debug if quiet else log.info)(
                "rescan_done", prefix=rescan.path, changes=len(found), **fields
            )
