"""The journal: the single durable record (SQLite, WAL, stdlib `sqlite3`).

A change is *accepted* once its URL paths are committed to `pending` here; from then on it is
never dropped. A batch is written (state `planned`, with its CallerReference) *before*
CreateInvalidation is called, so a crash between the call and the answer resubmits the same
batch with the same reference and CloudFront answers with the existing invalidation.

    pending ──create_batch──> planned ──mark_submitted──> submitted ──mark_completed──> completed
                                 │ split (InvalidArgument, bisect) ──> two new planned batches
                                 └ reject (one path CloudFront refuses) ──> rejected

One connection per process, guarded by a lock; other processes (`invalidatord status`,
`invalidatord invalidate`) open their own and rely on WAL for concurrent readers and on
`busy_timeout` for writers. Writes are batched by the caller: one transaction per flush.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invalidatord.bisection import halves
from invalidatord.errors import JournalError
from invalidatord.model import FileStat, InFlight, S3Stamp, is_wildcard

#: 2: `fs_index.digest`, the content hash of `compare: content` and release swaps.
#: 3: staged rows: `pending.staged_in`, `windows`, `staged_index` (see `Journal.stage`).
SCHEMA_VERSION = 3

#: The state dir and every file in it belong to the daemon; its group may read them (a
#: monitoring user in the group can run `status`), nobody else. Set whatever the umask is.
STATE_DIR_MODE = 0o750
STATE_FILE_MODE = 0o640
#: Beside the journal: the marker naming its instance id (see `Journal.lost_predecessor`).
IDENTITY_SUFFIX = ".id"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    distribution TEXT NOT NULL,
    path TEXT NOT NULL,
    first_seen REAL NOT NULL,
    origin TEXT,
    staged_in INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (distribution, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS staged_index (
    staged_in INTEGER NOT NULL,
    source TEXT NOT NULL,
    path BLOB NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    inode INTEGER,
    digest BLOB,
    PRIMARY KEY (staged_in, source, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    distribution TEXT NOT NULL,
    caller_reference TEXT NOT NULL,
    paths TEXT NOT NULL,
    origins TEXT NOT NULL,
    files INTEGER NOT NULL,
    wildcards INTEGER NOT NULL,
    state TEXT NOT NULL,
    invalidation_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    first_seen REAL NOT NULL,
    created REAL NOT NULL,
    submitted REAL,
    completed REAL
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state, distribution);
CREATE TABLE IF NOT EXISTS fs_index (
    source TEXT NOT NULL,
    path BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    digest BLOB,
    PRIMARY KEY (source, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS baselines (source TEXT PRIMARY KEY, recorded REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS s3_index (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    distribution TEXT NOT NULL,
    path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    first_seen REAL NOT NULL,
    origin TEXT,
    UNIQUE (distribution, path, fingerprint)
);
CREATE TABLE IF NOT EXISTS fleet_seen (
    distribution TEXT NOT NULL,
    path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (distribution, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fleet_seen_age ON fleet_seen (seen);
"""

#: A pending row is accepted unless the window that staged it is still open (`Journal.stage`).
_VISIBLE = "staged_in NOT IN (SELECT id FROM windows)"
#: Accept a URL path: the earliest first_seen wins, and a row an open window staged is
#: accepted from now on whatever becomes of that window.
_UPSERT = (
    "INSERT INTO pending (distribution, path, first_seen, origin) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (distribution, path) "
    "DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), staged_in = 0"
)

PLANNED, SUBMITTED, COMPLETED, REJECTED, SPLIT = (
    "planned",
    "submitted",
    "completed",
    "rejected",
    "split",
)
#: planned work an operator dropped (`invalidatord discard`): kept for the record, never sent
DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch as the journal holds it."""

    id: int
    distribution: str
    caller_reference: str
    paths: tuple[str, ...]
    origins: dict[str, str]
    state: str
    invalidation_id: str | None
    attempts: int
    last_error: str | None
    first_seen: float
    created: float
    submitted: float | None
    completed: float | None

    @property
    def in_flight(self) -> InFlight:
        wild = sum(1 for p in self.paths if is_wildcard(p))
        return InFlight(len(self.paths) - wild, wild)


@dataclass(frozen=True, slots=True)
class Accepted:
    """One URL path to queue: `origin` names what it came from (source:path, or `manual`)."""

    distribution: str
    path: str
    first_seen: float
    origin: str
    #: which version of the file the change is (`model.fingerprint`); a fleet publisher's
    #: deduplication key is built from it. "" where none is known (manual, S3 sources).
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One URL path a fleet publisher has accepted and SQS has not yet taken."""

    id: int
    distribution: str
    path: str
    fingerprint: str
    first_seen: float
    origin: str


@dataclass(frozen=True, slots=True)
class FleetItem:
    """One URL path received from a fleet queue (`accepted.fingerprint` says which version)."""

    accepted: Accepted


def _key(path: str) -> bytes:
    # Index paths may carry surrogate escapes (non-UTF-8 names): store their raw bytes.
    return path.encode("utf-8", "surrogateescape")


def _unkey(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


_IndexRow = tuple[str, bytes, int, int, int, bytes | None]
_INDEX_INSERT = (
    "INSERT OR REPLACE INTO fs_index (source, path, size, mtime_ns, inode, digest) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def _index_row(source: str, path: str, st: FileStat) -> _IndexRow:
    return (source, _key(path), st.size, st.mtime_ns, st.inode, st.digest)


_STAGED_INSERT = "INSERT OR REPLACE INTO staged_index VALUES (?, ?, ?, ?, ?, ?, ?)"


def _staged_rows(
    window: int, index_updates: Iterable[tuple[str, str, FileStat | None]]
) -> Iterator[tuple[object, ...]]:
    """`staged_index` rows; a file that is gone has no size."""
    for source, path, st in index_updates:
        if st is None:
            yield (window, source, _key(path), None, None, None, None)
        else:
            yield (window, source, _key(path), st.size, st.mtime_ns, st.inode, st.digest)


def _migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring a journal written by an older version up to `SCHEMA_VERSION`, in the opening
    transaction (all or nothing). A new journal is created at the current version by
    `_SCHEMA`; one from a newer version is refused rather than half understood."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path}: schema version {version} was written by a newer invalidatord "
            f"(this one reads up to {SCHEMA_VERSION}); upgrade, or move the state_dir aside"
        )
    if version < 2:
        # CREATE TABLE IF NOT EXISTS kept the old fs_index: add the digest column. Rows
        # keep NULL (not known) until their file is next read.
        columns = {r[1] for r in db.execute("PRAGMA table_info(fs_index)")}
        if "digest" not in columns:
            db.execute("ALTER TABLE fs_index ADD COLUMN digest BLOB")
    if version < 3:
        # every row of an older journal is accepted: staged_in 0 is no window
        columns = {r[1] for r in db.execute("PRAGMA table_info(pending)")}
        if "staged_in" not in columns:
            db.execute("ALTER TABLE pending ADD COLUMN staged_in INTEGER NOT NULL DEFAULT 0")
    if version < SCHEMA_VERSION:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _wildcard_range(wildcard: str) -> tuple[str, str]:
    """The text range of the paths a wildcard `/dir/*` covers: from `/dir/` up to the next
    string that does not start with it (URL paths are encoded ASCII)."""
    prefix = wildcard[:-1]
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\x7f"


def make_state_dir(path: Path) -> None:
    """Create `path` and its missing parents `STATE_DIR_MODE`, whatever the umask. A directory
    that exists already is left as its owner set it."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=STATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, STATE_DIR_MODE)  # mkdir's mode passes through the umask


def open_state_file(path: Path, flags: int = os.O_RDWR) -> int:
    """Open (creating it `STATE_FILE_MODE`) a file of the state dir; one left more open by an
    older version or another umask loses what it grants beyond that mode."""
    fd = os.open(path, flags | os.O_CREAT, STATE_FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & ~STATE_FILE_MODE:
            os.fchmod(fd, mode & STATE_FILE_MODE)
    except PermissionError:
        pass  # not ours to change: it works as it is
    except BaseException:
        os.close(fd)
        raise
    return fd


class Journal:
    """The durable record. Thread-safe within a process; safe across processes (WAL)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        distributions: Mapping[str, str] | None = None,
        snapshot_of: str | os.PathLike[str] | None = None,
    ):
        """`distributions`: config name -> CloudFront id. Rows are keyed by the id, which a
        rename in the config cannot change; the journal's methods take and return names, and
        an id no configured name maps to is reported by `orphans()`. Without it (tests, tools)
        a name is its own key.

        `snapshot_of` (with path ":memory:"): start from a copy of that journal, read through
        a read-only connection and never written (a dry run's preview of the real state)."""
        self.path = str(path)
        self._clock = clock
        self._ids: dict[str, str] = dict(distributions or {})
        self._names: dict[str, str] = {}
        for name, distribution_id in self._ids.items():
            self._names.setdefault(distribution_id, name)
        self._lock = threading.RLock()
        #: Why the latest write failed, or None once one succeeds (liveness reads it).
        self.write_error: str | None = None
        #: source -> the id of its open staging window (`stage`)
        self._open: dict[str, int] = {}
        #: staged index rows of sealed windows may wait to be applied (checked once at open)
        self._unapplied = True
        try:
            if self.path != ":memory:":
                make_state_dir(Path(self.path).parent)
                # SQLite creates its WAL and SHM with the database file's mode: create that
                # first, private. Left-overs of a crash are tightened the same way.
                for name in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
                    if name == self.path or os.path.exists(name):
                        os.close(open_state_file(Path(name)))
            self._db = sqlite3.connect(
                self.path, timeout=30, check_same_thread=False, isolation_level=None
            )
            if snapshot_of is not None:
                source = sqlite3.connect(
                    f"{Path(snapshot_of).resolve().as_uri()}?mode=ro", uri=True, timeout=30
                )
                try:
                    source.backup(self._db)
                finally:
                    source.close()
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed flush survives power loss too; commits are one per flush.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            # 512 KiB, not SQLite's default 2 MiB: a first start's baseline and a catch-up's
            # index updates fill the writer's cache with pages written once (the OS caches the
            # file). 2.1 MiB less peak memory on 100,000 files; a 10,000-path accept took the
            # same time (156 against 173 ms, medians of 9, within noise).
            self._db.execute("PRAGMA cache_size=-512")
            with self._tx() as db:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                _migrate(db, self.path)
                # oldest first, and whether accepted, from the index alone (it replaces the
                # (distribution, first_seen) index of schema 2)
                db.execute("DROP INDEX IF EXISTS pending_age")
                db.execute(
                    "CREATE INDEX IF NOT EXISTS pending_order "
                    "ON pending (distribution, first_seen, staged_in)"
                )
                created = db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (uuid.uuid4().hex,)
                ).rowcount
                self.instance = db.execute(
                    "SELECT value FROM meta WHERE key = 'instance'"
                ).fetchone()[0]
                if distributions is not None:
                    self._key_by_id(db)
            if created:
                self._checkpoint("PASSIVE")  # never waits: others may have it open
            # Reads get a connection of their own: under WAL they never wait for a long write
            # (a first start's baseline of a large tree must not hold up GET /healthz).
            # An in-memory journal has only the one database, so it shares the writer's.
            if self.path == ":memory:":
                self._reader, self._read_lock = self._db, self._lock
            else:
                self._reader = sqlite3.connect(
                    self.path, timeout=30, check_same_thread=False, isolation_level=None
                )
                self._reader.execute("PRAGMA busy_timeout=30000")
                # A catch-up reads the whole index once, in order: SQLite's default 2 MiB
                # page cache would fill with pages never read again (the OS caches the file);
                # 256 KiB: 1.3 MiB less peak memory after a restart on 100,000 files.
                self._reader.execute("PRAGMA cache_size=-256")
                self._read_lock = threading.RLock()
            self._inode: tuple[int, int] | None = None
            if self.path != ":memory:":
                st = os.stat(self.path)
                self._inode = (st.st_dev, st.st_ino)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc

    def _key_by_id(self, db: sqlite3.Connection) -> None:
        """Journals written before rows were keyed by distribution id hold config names:
        move them to the ids the current config gives those names (once; marked in meta)."""
        if db.execute("SELECT 1 FROM meta WHERE key = 'keyed_by'").fetchone():
            return
        for name, distribution_id in self._ids.items():
            if name == distribution_id:
                continue
            db.execute(
                "UPDATE OR REPLACE pending SET distribution = ? WHERE distribution = ?",
                (distribution_id, name),
            )
            db.execute(
                "UPDATE batches SET distribution = ? WHERE distribution = ?",
                (distribution_id, name),
            )
        db.execute("INSERT INTO meta VALUES ('keyed_by', 'distribution_id')")

    def _k(self, name: str) -> str:
        """The stored key of a distribution: its CloudFront id."""
        return self._ids.get(name, name)

    def _n(self, key: object) -> str:
        """The config name of a stored key (the id itself when no name maps to it)."""
        return self._names.get(str(key), str(key))

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._read_lock:
            self._reader.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.write_error = str(exc)
                raise JournalError(f"journal {self.path}: {exc}") from exc
            self.write_error = None

    def writable(self) -> str | None:
        """None while the journal can be written; else why not (one line): the latest write
        failed, or the file is gone or replaced (a process writing to a deleted inode records
        nothing the next start will read). Cheap: no write, no lock."""
        if self.write_error is not None:
            return f"journal {self.path}: the latest write failed: {self.write_error}"
        if self.path == ":memory:":
            return None
        try:
            on_disk = os.stat(self.path)
        except OSError as exc:
            return f"journal {self.path}: {exc.strerror or exc}"
        if self._inode is not None and (on_disk.st_dev, on_disk.st_ino) != self._inode:
            return f"journal {self.path}: the file was replaced since the daemon opened it"
        if not os.access(self.path, os.W_OK) or not os.access(
            os.path.dirname(self.path) or ".", os.W_OK
        ):
            return f"journal {self.path}: not writable"
        return None

    @contextmanager
    def _durable(self, durable: bool) -> Iterator[None]:
        """With False, the commits inside (under the write lock) do not wait for the disk:
        WAL with synchronous=NORMAL, which a crash or power loss cannot corrupt, only roll
        back; the next FULL commit makes them durable with it. For rows that are not
        accepted until a later commit (`stage`): 3 ms less per commit."""
        if durable:
            yield
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    # ---- accepting changes -------------------------------------------------------------------

    def accept(
        self,
        urls: Iterable[Accepted],
        index_updates: Iterable[tuple[str, str, FileStat | None]] = (),
        counts: dict[str, int] | None = None,
        *,
        outbox: bool = False,
    ) -> int:
        """Commit URL paths to `pending` (the earliest first_seen wins) together with the catch-up
        index updates (None = the file is gone) in one transaction. Returns rows added.
        With `outbox` (a fleet publisher) they go to the outbox instead, one row per
        (distribution, path, fingerprint), for the publisher to hand to SQS."""
        if index_updates:
            self.apply_sealed()  # an older staged row must not overwrite these
        with self._tx() as db:
            before = db.total_changes
            if outbox:
                db.executemany(
                    "INSERT OR IGNORE INTO outbox "
                    "(distribution, path, fingerprint, first_seen, origin) VALUES (?, ?, ?, ?, ?)",
                    (
                        (self._k(u.distribution), u.path, u.fingerprint, u.first_seen, u.origin)
                        for u in urls
                    ),
                )
            else:
                db.executemany(
                    _UPSERT,
                    ((self._k(u.distribution), u.path, u.first_seen, u.origin) for u in urls),
                )
            added = db.total_changes - before
            gone: list[tuple[str, bytes]] = []
            present: list[_IndexRow] = []
            for source, path, st in index_updates:
                if st is None:
                    gone.append((source, _key(path)))
                else:
                    present.append(_index_row(source, path, st))
            if gone:
                db.executemany("DELETE FROM fs_index WHERE source = ? AND path = ?", gone)
            if present:
                db.executemany(_INDEX_INSERT, present)
            for name, value in (counts or {}).items():
                db.execute(
                    "INSERT INTO counters VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, value),
                )
        return added

    # ---- staged rows: the accept of a flush written during its quiet window -----------------
    #
    # A flush's rows are written while its quiet window is still open (`stage`), in a window
    # the `windows` table names: its pending rows carry the window's id in `staged_in`, and
    # nothing reads them as accepted while the window is open; its index rows wait in
    # `staged_index`. The flush's commit (`seal`) writes only what differs from what was
    # staged and closes the window: one transaction, nearly constant in time, that accepts
    # the pending rows and the index rows together, as `accept` would have. The index rows
    # are copied into `fs_index` afterwards (`apply_sealed`), before any other index read or
    # write of this process, and at the next start. A window still open when the process
    # dies accepted nothing: the next start forgets its rows (`discard_staged`), and the
    # catch-up finds its files again, as it would have before staging.

    def stage(
        self,
        source: str,
        urls: Sequence[Accepted],
        index_updates: Sequence[tuple[str, str, FileStat | None]],
    ) -> bool:
        """Write rows of `source`'s next flush ahead of it, in its open window (opened here
        if none is). A path staged again replaces its index row; a URL path already pending
        is left as it is. True when every URL row is this window's own: otherwise the
        caller must pass those URLs to `seal` again (it upserts them, as `accept` would)."""
        self.apply_sealed()
        window = self._open.get(source)
        with self._lock, self._durable(False), self._tx() as db:
            if window is None:
                cur = db.execute("INSERT INTO windows (source) VALUES (?)", (source,))
                wid = int(cur.lastrowid or 0)
            else:
                wid = window
            before = db.total_changes
            db.executemany(
                "INSERT INTO pending (distribution, path, first_seen, origin, staged_in) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (distribution, path) DO NOTHING",
                ((self._k(u.distribution), u.path, u.first_seen, u.origin, wid) for u in urls),
            )
            own = db.total_changes - before == len(urls)
            db.executemany(_STAGED_INSERT, _staged_rows(wid, index_updates))
        self._open[source] = wid
        return own

    def seal(
        self,
        source: str,
        urls: Sequence[Accepted],
        index_updates: Sequence[tuple[str, str, FileStat | None]],
        counts: dict[str, int] | None = None,
        *,
        unstage: Iterable[tuple[str, str]] = (),
        unstage_index: Iterable[str] = (),
        last: bool = True,
    ) -> None:
        """Accept the flush of `source`: what `stage` wrote, plus `urls` and `index_updates`
        (what it did not stage, or staged otherwise), less what it staged that the flush does
        not accept after all: the URL rows `unstage` ((distribution, path)) and the index
        rows of the paths `unstage_index`. A flush too large for one transaction comes in
        several calls, `last` only on the final one: the window closes (its rows are accepted)
        only then. Without an open window this is `accept`."""
        wid = self._open.get(source)
        if wid is None:
            if urls or index_updates or counts:
                self.accept(urls, index_updates, counts)
            return
        with self._tx() as db:
            db.executemany(
                _UPSERT, ((self._k(u.distribution), u.path, u.first_seen, u.origin) for u in urls)
            )
            db.executemany(_STAGED_INSERT, _staged_rows(wid, index_updates))
            db.executemany(
                "DELETE FROM pending WHERE distribution = ? AND path = ? AND staged_in = ?",
                ((self._k(d), p, wid) for d, p in unstage),
            )
            db.executemany(
                "DELETE FROM staged_index WHERE staged_in = ? AND source = ? AND path = ?",
                ((wid, source, _key(p)) for p in unstage_index),
            )
            self._count(db, counts)
            if last:
                db.execute("DELETE FROM windows WHERE id = ?", (wid,))
        if last:
            del self._open[source]
            self._unapplied = True

    def apply_sealed(self) -> None:
        """Copy the index rows of sealed windows into `fs_index` (cheap when there are none)."""
        if not self._unapplied:
            return
        with self._tx() as db:
            windows = db.execute(
                f"SELECT DISTINCT staged_in FROM staged_index WHERE {_VISIBLE} ORDER BY 1"  # noqa: S608
            ).fetchall()
            for (wid,) in windows:  # in order: a later window's row wins
                db.execute(
                    "DELETE FROM fs_index WHERE (source, path) IN (SELECT source, path "
                    "FROM staged_index WHERE staged_in = ? AND size IS NULL)",
                    (wid,),
                )
                db.execute(
                    "INSERT OR REPLACE INTO fs_index SELECT source, path, size, mtime_ns, inode, "
                    "digest FROM staged_index WHERE staged_in = ? AND size IS NOT NULL",
                    (wid,),
                )
                db.execute("DELETE FROM staged_index WHERE staged_in = ?", (wid,))
        self._unapplied = False

    def discard_staged(self) -> int:
        """Forget every open window's rows: they were never accepted. Only for the process
        that owns the state dir (the daemon, holding its lock), as it starts: another
        process would drop the rows of a running daemon's open window. Returns the pending
        rows dropped."""
        with self._tx() as db:
            dropped = db.execute(
                "DELETE FROM pending WHERE staged_in IN (SELECT id FROM windows)"
            ).rowcount
            db.execute("DELETE FROM staged_index WHERE staged_in IN (SELECT id FROM windows)")
            db.execute("DELETE FROM windows")
        self._open.clear()
        self._unapplied = True
        self.apply_sealed()
        return int(dropped)

    # ---- a fleet: the publisher's outbox, the invalidator's deduplication window -------------

    def outbox_peek(self, limit: int) -> list[OutboxEntry]:
        """The oldest `limit` entries of the outbox, in the order they were accepted."""
        rows = self._read(
            "SELECT id, distribution, path, fingerprint, first_seen, origin FROM outbox "
            "ORDER BY id LIMIT ?",
            (limit,),
        )
        return [
            OutboxEntry(int(i), self._n(d), str(p), str(f), float(t), str(o or ""))
            for i, d, p, f, t, o in rows
        ]

    def outbox_remove(self, ids: Sequence[int], counts: dict[str, int] | None = None) -> None:
        """SQS took these entries: they leave the outbox (one transaction)."""
        with self._tx() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids))
            self._count(db, counts)

    def outbox_summary(self) -> tuple[int, float | None]:
        """(entries in the outbox, first_seen of the oldest)."""
        row = self._read("SELECT count(*), min(first_seen) FROM outbox")[0]
        return int(row[0]), None if row[1] is None else float(row[1])

    def fleet_accept(self, items: Sequence[FleetItem], window: float) -> tuple[int, int]:
        """Queue the URL paths received from a fleet queue, except duplicates, and remember what
        was queued, in one transaction (the messages are deleted only after it). A duplicate is
        a path whose last queued version, within the last `window` seconds, has the same
        fingerprint: another host reporting the same deploy. A path going back to an earlier
        version (a rollback) is not one: its last version differs. Returns (queued, duplicates).
        """
        now = self._clock()
        queued = duplicates = 0
        with self._tx() as db:
            db.execute("DELETE FROM fleet_seen WHERE seen < ?", (now - window,))
            for item in items:
                u = item.accepted
                key = self._k(u.distribution)
                last = db.execute(
                    "SELECT fingerprint FROM fleet_seen WHERE distribution = ? AND path = ?",
                    (key, u.path),
                ).fetchone()
                if last is not None and last[0] == u.fingerprint:
                    duplicates += 1
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO fleet_seen VALUES (?, ?, ?, ?)",
                    (key, u.path, u.fingerprint, now),
                )
                db.execute(
                    _UPSERT,
                    (key, u.path, u.first_seen, u.origin),
                )
                queued += 1
            self._count(db, {"fleet_received": queued + duplicates, "fleet_duplicates": duplicates})
        return queued, duplicates

    @staticmethod
    def _count(db: sqlite3.Connection, counts: dict[str, int] | None) -> None:
        for name, value in (counts or {}).items():
            db.execute(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, value),
            )

    def pending_paths(self, distribution: str, limit: int) -> list[str]:
        """Up to `limit` pending paths of one distribution, oldest first."""
        rows = self._read(
            f"SELECT path FROM pending WHERE distribution = ? AND {_VISIBLE} "  # noqa: S608
            "ORDER BY first_seen, path LIMIT ?",
            (self._k(distribution), limit),
        )
        return [str(r[0]) for r in rows]

    def oldest_pending(self, distribution: str) -> float | None:
        """first_seen of the oldest pending path of one distribution (None: none pending)."""
        row = self._read(
            f"SELECT min(first_seen) FROM pending WHERE distribution = ? AND {_VISIBLE}",  # noqa: S608
            (distribution,),
        )[0]
        return None if row[0] is None else float(row[0])

    def pending_summary(self) -> dict[str, tuple[int, float]]:
        """distribution -> (pending paths, first_seen of the oldest)."""
        rows = self._read(
            f"SELECT distribution, count(*), min(first_seen) FROM pending WHERE {_VISIBLE} "  # noqa: S608
            "GROUP BY distribution"
        )
        return {self._n(d): (int(n), float(t)) for d, n, t in rows}

    def unsent_summary(self) -> dict[str, tuple[int, float]]:
        """distribution -> (paths accepted and not yet submitted, first_seen of the oldest).
        Counts the paths of planned batches as well as queued ones: while CloudFront refuses
        or is unreachable, the paths wait in a planned batch, and to a reader they are as
        unsent as the queued ones. One read, for /healthz, the gauges, STATUS= and `status`."""
        rows = self._read(
            "SELECT distribution, sum(n), min(t) FROM ("  # noqa: S608 - no user text
            " SELECT distribution, count(*) AS n, min(first_seen) AS t FROM pending"
            f" WHERE {_VISIBLE} GROUP BY distribution"
            " UNION ALL"
            " SELECT distribution, files + wildcards, first_seen FROM batches WHERE state = ?"
            ") GROUP BY distribution",
            (PLANNED,),
        )
        return {self._n(d): (int(n), float(t)) for d, n, t in rows if n}

    def orphans(self) -> dict[str, int]:
        """CloudFront id -> paths accepted and not yet submitted for a distribution no name in
        the config maps to any more (removed, or its id changed). Empty without a mapping."""
        if not self._ids:
            return {}
        rows = self._read(
            f"SELECT distribution, count(*) FROM pending WHERE {_VISIBLE} "  # noqa: S608
            "GROUP BY distribution UNION ALL "
            "SELECT distribution, sum(files + wildcards) FROM batches WHERE state = ? "
            "GROUP BY distribution",
            (PLANNED,),
        )
        out: dict[str, int] = {}
        for key, count in rows:
            if str(key) not in self._names and count:
                out[str(key)] = out.get(str(key), 0) + int(count)
        return out

    def discard(self, distribution_id: str) -> int:
        """Drop every pending path and planned batch of `distribution_id` (an explicit
        operator decision: `invalidatord discard`). Returns the paths dropped."""
        with self._tx() as db:
            planned = db.execute(
                "SELECT coalesce(sum(files + wildcards), 0) FROM batches "
                "WHERE distribution = ? AND state = ?",
                (distribution_id, PLANNED),
            ).fetchone()[0]
            cur = db.execute(
                f"DELETE FROM pending WHERE distribution = ? AND {_VISIBLE}",  # noqa: S608
                (distribution_id,),
            )
            db.execute(
                "UPDATE batches SET state = ?, last_error = 'discarded by the operator' "
                "WHERE distribution = ? AND state = ?",
                (DISCARDED, distribution_id, PLANNED),
            )
        return int(cur.rowcount) + int(planned)

    def pending_count(self) -> int:
        return int(self._read(f"SELECT count(*) FROM pending WHERE {_VISIBLE}")[0][0])  # noqa: S608

    # ---- batches -----------------------------------------------------------------------------

    def caller_reference(self, batch_id: int, distribution: str, paths: Sequence[str]) -> str:
        """Deterministic from the persisted batch: the same batch always gets the same reference
        (so a resubmission can never create a second invalidation); the journal's instance id
        keeps a wiped-and-recreated journal from reusing an old reference for other paths."""
        digest = hashlib.sha256("\n".join([distribution, *sorted(paths)]).encode()).hexdigest()
        return f"invalidatord-{self.instance[:8]}-{batch_id}-{digest[:16]}"

    def create_batch(
        self, distribution: str, paths: Sequence[str], consumed: Sequence[str]
    ) -> BatchRecord:
        """Move `consumed` pending paths (the batch's own and those its wildcards cover) into a
        new planned batch, atomically. Every other pending path a wildcard of the batch covers
        goes too: the invalidation will cover it (the planner may have seen only some of them)."""
        now = self._clock()
        name, distribution = distribution, self._k(distribution)
        wanted = set(paths)
        ranges = [_wildcard_range(p) for p in paths if is_wildcard(p)]
        with self._tx() as db:
            rows: list[Any] = []
            # the rows named (the origins are only the batch's own paths'); under a wildcard
            # only the oldest first_seen matters, which SQLite finds without handing Python
            # every row (a 10,000-path deploy under 10 wildcards: 20 -> 8 ms in process)
            named = list(dict.fromkeys([*paths, *consumed]))
            for start in range(0, len(named), 500):
                chunk = named[start : start + 500]
                rows += db.execute(
                    f"SELECT path, first_seen, origin FROM pending "  # noqa: S608 - placeholders
                    f"WHERE distribution = ? AND path IN ({','.join('?' * len(chunk))}) "
                    f"AND {_VISIBLE}",
                    (distribution, *chunk),
                ).fetchall()
            seen = [float(r[1]) for r in rows]
            for low, high in ranges:
                oldest = db.execute(
                    "SELECT min(first_seen) FROM pending "  # noqa: S608 - no user text
                    f"WHERE distribution = ? AND path >= ? AND path < ? AND {_VISIBLE}",
                    (distribution, low, high),
                ).fetchone()[0]
                if oldest is not None:
                    seen.append(float(oldest))
            first_seen = min(seen, default=now)
            origins = {str(r[0]): str(r[2] or "") for r in rows if r[0] in wanted}
            batch_id = self._insert_batch(db, name, paths, origins, first_seen, now)
            db.executemany(
                f"DELETE FROM pending WHERE distribution = ? AND path = ? AND {_VISIBLE}",  # noqa: S608
                ((distribution, p) for p in consumed),
            )
            for low, high in ranges:
                db.execute(
                    "DELETE FROM pending "  # noqa: S608 - no user text
                    f"WHERE distribution = ? AND path >= ? AND path < ? AND {_VISIBLE}",
                    (distribution, low, high),
                )
        return self.batch(batch_id)

    def _insert_batch(
        self,
        db: sqlite3.Connection,
        distribution: str,
        paths: Sequence[str],
        origins: dict[str, str],
        first_seen: float,
        now: float,
    ) -> int:
        distribution = self._k(distribution)
        wild = sum(1 for p in paths if is_wildcard(p))
        cur = db.execute(
            "INSERT INTO batches (distribution, caller_reference, paths, origins, files, "
            "wildcards, state, first_seen, created) VALUES (?, '', ?, ?, ?, ?, ?, ?, ?)",
            (
                distribution,
                json.dumps(list(paths)),
                json.dumps(origins),
                len(paths) - wild,
                wild,
                PLANNED,
                first_seen,
                now,
            ),
        )
        batch_id = int(cur.lastrowid or 0)
        db.execute(
            "UPDATE batches SET caller_reference = ? WHERE id = ?",
            (self.caller_reference(batch_id, distribution, paths), batch_id),
        )
        return batch_id

    def _record(self, row: Any) -> BatchRecord:
        return _record(row, self._n)

    def batch(self, batch_id: int) -> BatchRecord:
        rows = self._read(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,))  # noqa: S608
        if not rows:
            raise JournalError(f"journal {self.path}: no batch {batch_id}")
        return self._record(rows[0])

    def batches(
        self, state: str, distribution: str | None = None, limit: int = 1_000_000
    ) -> list[BatchRecord]:
        if distribution is None:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM batches WHERE state = ? ORDER BY id LIMIT ?",  # noqa: S608
                (state, limit),
            )
        else:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM batches "  # noqa: S608
                "WHERE state = ? AND distribution = ? ORDER BY id LIMIT ?",
                (state, self._k(distribution), limit),
            )
        return [self._record(r) for r in rows]

    def recent(self, limit: int = 20) -> list[BatchRecord]:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM batches WHERE state != ? ORDER BY id DESC LIMIT ?",  # noqa: S608
            (SPLIT, limit),
        )
        return [self._record(r) for r in rows]

    def mark_submitted(self, batch_id: int, invalidation_id: str, completed: bool) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, invalidation_id = ?, submitted = ?, "
                "attempts = attempts + 1, last_error = NULL, completed = ? WHERE id = ?",
                (
                    COMPLETED if completed else SUBMITTED,
                    invalidation_id,
                    now,
                    now if completed else None,
                    batch_id,
                ),
            )

    def mark_completed(self, batch_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, completed = ? WHERE id = ? AND state = ?",
                (COMPLETED, self._clock(), batch_id, SUBMITTED),
            )

    def record_failure(self, batch_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:500], batch_id),
            )

    def split(self, batch_id: int) -> tuple[BatchRecord, BatchRecord]:
        """Replace a planned batch by its two halves (bisecting an InvalidArgument)."""
        old = self.batch(batch_id)
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE batches SET state = ? WHERE id = ?", (SPLIT, batch_id))
            ids = [
                self._insert_batch(
                    db,
                    old.distribution,
                    part,
                    {p: old.origins.get(p, "") for p in part},
                    old.first_seen,
                    now,
                )
                for part in halves(old.paths)
            ]
        return self.batch(ids[0]), self.batch(ids[1])

    def reject(self, batch_id: int, error: str) -> None:
        """CloudFront refuses this (single-path) batch: set it aside, never retried."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, last_error = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (REJECTED, error[:500], batch_id),
            )

    def rereference(self, batch_id: int) -> BatchRecord:
        """The reference was used elsewhere with other paths: give the batch a new one."""
        old = self.batch(batch_id)
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET caller_reference = ? WHERE id = ?",
                (f"{old.caller_reference}-r{old.attempts + 1}", batch_id),
            )
        return self.batch(batch_id)

    def in_flight(self, distribution: str) -> InFlight:
        """Paths of our own invalidations still InProgress on the distribution."""
        row = self._read(
            "SELECT coalesce(sum(files), 0), coalesce(sum(wildcards), 0) FROM batches "
            "WHERE state = ? AND distribution = ?",
            (SUBMITTED, self._k(distribution)),
        )[0]
        return InFlight(int(row[0]), int(row[1]))

    def set_aside_summary(self) -> dict[str, int]:
        """distribution -> paths CloudFront refused (InvalidArgument) and that stay set aside."""
        rows = self._read(
            "SELECT distribution, sum(files + wildcards) FROM batches WHERE state = ? "
            "GROUP BY distribution",
            (REJECTED,),
        )
        return {self._n(d): int(n) for d, n in rows}

    def in_flight_summary(self) -> dict[str, InFlight]:
        """distribution -> `in_flight(distribution)`, every distribution in one read."""
        rows = self._read(
            "SELECT distribution, sum(files), sum(wildcards) FROM batches WHERE state = ? "
            "GROUP BY distribution",
            (SUBMITTED,),
        )
        return {self._n(d): InFlight(int(f), int(w)) for d, f, w in rows}

    def known_invalidation_ids(self, distribution: str) -> set[str]:
        rows = self._read(
            "SELECT invalidation_id FROM batches WHERE distribution = ? "
            "AND invalidation_id IS NOT NULL",
            (self._k(distribution),),
        )
        return {str(r[0]) for r in rows}

    def billed_this_month(self, now: float | None = None) -> int:
        """Paths submitted since the start of this calendar month (UTC), each batch once."""
        t = time.gmtime(self._clock() if now is None else now)
        start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
        row = self._read(
            "SELECT coalesce(sum(files + wildcards), 0) FROM batches "
            "WHERE submitted >= ? AND state IN (?, ?)",
            (start, SUBMITTED, COMPLETED),
        )[0]
        return int(row[0])

    def counters(self) -> dict[str, int]:
        return {str(n): int(v) for n, v in self._read("SELECT name, value FROM counters")}

    # ---- the catch-up index ------------------------------------------------------------------

    def index_iter(
        self, source: str, prefix: str = "", *, page: int = 2_000
    ) -> Iterator[tuple[str, FileStat]]:
        """The indexed files of `source` that are `prefix` itself or under `prefix/` ("" =
        all), in the byte order of their UTF-8 (surrogateescape) paths, the order of
        `TreeScanner.scan`. Read `page` rows at a time by key, so memory stays one page and
        no cursor stays open between pages (other reads and writes go on meanwhile)."""
        self.apply_sealed()
        top = prefix.strip("/")
        upper: tuple[bytes, ...] = ()
        if top:
            exact = _key(top)
            rows = self._read(
                "SELECT size, mtime_ns, inode, digest FROM fs_index WHERE source = ? AND path = ?",
                (source, exact),
            )
            for size, mtime_ns, inode, digest in rows:
                yield top, FileStat(size, mtime_ns, inode, 0, digest)
            low, upper = exact + b"/", (exact + b"0",)  # b"0" sorts right after b"/"
        else:
            low = b""
        cond = "AND path < ? " if upper else ""
        # each row is (path, FileStat's fields): tuple.__new__ builds the FileStat in C
        select = (
            "SELECT path, size, mtime_ns, inode, 0, digest FROM fs_index WHERE source = ? AND path"
        )
        first = f"{select} >= ? {cond}ORDER BY path LIMIT ?"
        more = f"{select} > ? {cond}ORDER BY path LIMIT ?"
        args = (*upper, page)
        new = tuple.__new__
        rows = self._read(first, (source, low, *args))
        while rows:
            for row in rows:
                yield row[0].decode("utf-8", "surrogateescape"), new(FileStat, row[1:])
            if len(rows) < page:
                return
            rows = self._read(more, (source, rows[-1][0], *args))

    def index_pages(
        self, source: str, prefix: str = "", *, page: int = 2_000
    ) -> Iterator[list[tuple[bytes, int, int, int]]]:
        """What `index_iter` yields, in the same order, as pages of rows (path key, size,
        mtime_ns, inode): `contracts.Row`, the shape `catchup.diff_runs` compares, straight
        from SQLite without a Python step per row."""
        top = prefix.strip("/")
        upper: tuple[bytes, ...] = ()
        if top:
            exact = _key(top)
            rows = self._read(
                "SELECT path, size, mtime_ns, inode FROM fs_index WHERE source = ? AND path = ?",
                (source, exact),
            )
            if rows:
                yield rows
            low, upper = exact + b"/", (exact + b"0",)  # b"0" sorts right after b"/"
        else:
            low = b""
        cond = "AND path < ? " if upper else ""
        select = "SELECT path, size, mtime_ns, inode FROM fs_index WHERE source = ? AND path"
        first = f"{select} >= ? {cond}ORDER BY path LIMIT ?"
        more = f"{select} > ? {cond}ORDER BY path LIMIT ?"
        args = (*upper, page)
        rows = self._read(first, (source, low, *args))
        while rows:
            yield rows
            if len(rows) < page:
                return
            rows = self._read(more, (source, rows[-1][0], *args))

    def index_count(self, source: str, prefix: str, at_most: int) -> int:
        """How many indexed files of `source` have a path starting with `prefix` (text, not
        only a directory: `docs` counts `docs.html` too), counting no further than `at_most`:
        a range scan of the primary key that stops there, so the planner's question "would
        this wildcard evict too much?" costs at most `at_most` rows."""
        low = _key(prefix)
        args: tuple[object, ...] = (source, low)
        cond = ""
        if low:
            cond = "AND path < ? "
            args += (low[:-1] + bytes([low[-1] + 1]) if low[-1] < 255 else low + b"\xff",)
        row = self._read(
            "SELECT count(*) FROM (SELECT 1 FROM fs_index "  # noqa: S608 - no user text
            f"WHERE source = ? AND path >= ? {cond}LIMIT ?)",
            (*args, max(0, at_most)),
        )[0]
        return int(row[0])

    def index_get(self, source: str, paths: Iterable[str]) -> dict[str, FileStat]:
        """The indexed stat of each of `paths` that is in the index."""
        self.apply_sealed()
        result: dict[str, FileStat] = {}
        keys = [_key(p) for p in paths]
        for start in range(0, len(keys), 500):  # one query per 500 paths, not one per path
            chunk = keys[start : start + 500]
            rows = self._read(
                "SELECT path, size, mtime_ns, inode, digest FROM fs_index "  # noqa: S608
                f"WHERE source = ? AND path IN ({','.join('?' * len(chunk))})",
                (source, *chunk),
            )
            for raw, size, mtime_ns, inode, digest in rows:
                result[_unkey(bytes(raw))] = FileStat(size, mtime_ns, inode, 0, digest)
        return result

    # ---- identity -----------------------------------------------------------------------

    @property
    def identity_path(self) -> Path:
        """The marker beside the journal naming its `instance`: it survives a journal that
        is deleted, truncated or lost its WAL, and tells such a journal from a first start."""
        return Path(f"{self.path}{IDENTITY_SUFFIX}")

    def lost_predecessor(self) -> str | None:
        """The instance id of the journal this one replaced (the marker beside it names
        another), or None: the same journal, or a first start (then the marker is written)."""
        if self.path == ":memory:":
            return None
        try:
            named = self.identity_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            self.adopt_identity()
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalError(f"cannot read {self.identity_path}: {exc}") from exc
        return None if named == self.instance else (named or "unreadable")

    def adopt_identity(self) -> None:
        """Name this journal in the marker (once a lost predecessor has been dealt with)."""
        if self.path == ":memory:":
            return
        marker = self.identity_path
        fresh = marker.with_name(marker.name + ".new")
        try:
            fd = open_state_file(fresh, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, f"{self.instance}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(fresh, marker)
        except OSError as exc:
            raise JournalError(f"cannot write {marker}: {exc}") from exc

    def mark_baseline_empty(self, source: str) -> None:
        """Record an empty baseline for `source`: its next catch-up diff finds every file
        CREATED. What a journal that replaced a lost one does instead of a first start."""
        self.apply_sealed()
        with self._tx() as db:
            db.execute("DELETE FROM fs_index WHERE source = ?", (source,))
            db.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?)", (source, self._clock()))
        self._checkpoint()

    def baseline_recorded(self, source: str) -> bool:
        return bool(self._read("SELECT 1 FROM baselines WHERE source = ?", (source,)))

    def record_baseline(self, source: str, entries: Iterable[tuple[str, FileStat]]) -> int:
        """The very first start: remember the tree as it is and invalidate nothing."""
        self.apply_sealed()
        count = 0
        with self._tx() as db:
            db.execute("DELETE FROM fs_index WHERE source = ?", (source,))

            def rows() -> Iterator[_IndexRow]:
                nonlocal count
                for path, st in entries:
                    count += 1
                    yield _index_row(source, path, st)

            db.executemany(_INDEX_INSERT, rows())
            db.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?)", (source, self._clock()))
        self._checkpoint()
        return count

    def _checkpoint(self, mode: str = "FULL") -> None:
        """Move the WAL into the database file: what a first start records (the instance id,
        a baseline) must not be lost with a WAL, or the next start would pass for a first."""
        with self._lock:
            self._db.execute(f"PRAGMA wal_checkpoint({mode})")

    # ---- the S3 index (s3-poll sources) ------------------------------------------------------
    #
    # Keys are TEXT compared with SQLite's BINARY collation, i.e. by their UTF-8 bytes: the
    # order in which ListObjectsV2 returns them, so a listing can be merged against ranges of
    # the index page by page. A baseline is complete once `s3_baseline_done` has run; one that
    # was interrupted is started again from scratch.

    def s3_baseline(self, source: str) -> tuple[str, str] | None:
        """(bucket, prefix) of the source's complete baseline, None if there is none."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (_s3_marker(source),))
        if not rows:
            return None
        recorded = json.loads(str(rows[0][0]))
        return str(recorded["bucket"]), str(recorded["prefix"])

    def s3_baseline_start(self, source: str) -> None:
        """Forget the source's index and baseline: a new baseline is about to be written."""
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (_s3_marker(source),))
            db.execute("DELETE FROM s3_index WHERE source = ?", (source,))

    def s3_baseline_done(self, source: str, bucket: str, prefix: str) -> None:
        """Mark the baseline written with `s3_index_apply` since `s3_baseline_start` complete."""
        value = json.dumps({"bucket": bucket, "prefix": prefix, "recorded": self._clock()})
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_s3_marker(source), value))

    def s3_index_apply(self, source: str, updates: Iterable[tuple[str, S3Stamp | None]]) -> None:
        """Record each key's stamp (None = the object is gone), in one transaction."""
        with self._tx() as db:
            for key, stamp in updates:
                if stamp is None:
                    db.execute("DELETE FROM s3_index WHERE source = ? AND key = ?", (source, key))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO s3_index VALUES (?, ?, ?, ?)",
                        (source, key, stamp.etag, stamp.last_modified),
                    )

    def s3_index_range(
        self, source: str, after: str | None, upto: str | None, limit: int
    ) -> list[tuple[str, S3Stamp]]:
        """Up to `limit` indexed keys k with `after` < k <= `upto` (None = unbounded), in
        ListObjectsV2 order (UTF-8 bytes)."""
        sql = "SELECT key, etag, last_modified FROM s3_index WHERE source = ?"
        args: list[object] = [source]
        if after is not None:
            sql += " AND key > ?"
            args.append(after)
        if upto is not None:
            sql += " AND key <= ?"
            args.append(upto)
        rows = self._read(f"{sql} ORDER BY key LIMIT ?", (*args, limit))
        return [(str(k), S3Stamp(str(e), float(t))) for k, e, t in rows]

    def s3_index_get(self, source: str, keys: Iterable[str]) -> dict[str, S3Stamp]:
        """The indexed stamp of each of `keys` that is in the S3 index."""
        result: dict[str, S3Stamp] = {}
        wanted = list(keys)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._read(
                "SELECT key, etag, last_modified FROM s3_index "  # noqa: S608 - placeholders
                f"WHERE source = ? AND key IN ({','.join('?' * len(chunk))})",
                (source, *chunk),
            )
            for key, etag, last_modified in rows:
                result[str(key)] = S3Stamp(str(etag), float(last_modified))
        return result

    def s3_index_size(self, source: str) -> int:
        return int(self._read("SELECT count(*) FROM s3_index WHERE source = ?", (source,))[0][0])


def _s3_marker(source: str) -> str:
    return f"s3_baseline:{source}"


_COLUMNS = (
    "id, distribution, caller_reference, paths, origins, state, invalidation_id, attempts, "
    "last_error, first_seen, created, submitted, completed"
)


def _record(row: Any, name: Callable[[object], str] = str) -> BatchRecord:
    (bid, dist, ref, paths, origins, state, inv, attempts, err, first, created, sub, done) = row
    return BatchRecord(
        id=int(bid),
        distribution=name(dist),
        caller_reference=str(ref),
        paths=tuple(json.loads(str(paths))),
        origins=dict(json.loads(str(origins))),
        state=str(state),
        invalidation_id=None if inv is None else str(inv),
        attempts=int(attempts),
        last_error=None if err is None else str(err),
        first_seen=float(first),
        created=float(created),
        submitted=None if sub is None else float(sub),
        completed=None if done is None else float(done),
    )
